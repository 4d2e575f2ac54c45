"""A local columnar cache of decoded runs: a repeat query reads Arrow, not Kafka records and JSON.

A run (one index row: one partition's batches in one segment object) decoded for a scan, its
JSON values parsed with the fields the query reads and its metadata columns added, is written
as an Arrow IPC file under ``<data_dir>/scan-cache``, keyed by the index row (object key,
position, length, CRC-32C, base offset: a run re-sequenced by a metadata rebuild is another
entry) and the parse schema. The next scan of that run with that schema reads the file instead
of the object.

A file holds the run's columns as uncompressed Arrow IPC, written straight to the file (no
copy of the run in memory first; its CRC-32C is then taken over the bytes as they lie in the
page cache), less the columns a few numbers give back: the partition (one per run), offsets
that run one by one (all but where transaction markers or compaction left gaps) and keys
that are all null (as most producers send) are kept in the file's schema metadata and made
again on reading: 40% fewer bytes to write and read for a run of two value columns. Cold,
the write costs a third of what it did (0.12 CPU s for 64 runs of 62,500 records, against
0.25-0.49 written to a growing buffer first).

The cache is only a cache: deleting it loses nothing. Each file ends with the CRC-32C of its
Arrow bytes; a file that fails it, or does not read as Arrow, is deleted and its run decoded
again from the object. Runs with damage or with values that do not fit the schema are not
cached (their errors and rejected rows come from decoding). The files are bounded by
``scan_cache_bytes``, the least recently used going first (by default a quarter of the disk
space free where the cache lives, counting what it already holds, at most 64 GiB: a fixed
1 GiB held 427 of the 1,025 runs of a 64M-record topic, 2.4 GB decoded); several processes may share the
directory (writes go to a temporary name and are renamed into place).

A scan never evicts runs it reads itself: a topic larger than the cache would otherwise push
out, run by run, what the next scan reads first, and a repeat would find nothing (a
64M-record repeat scan found 0 of 1,025 runs and took longer than the cold one). Once a
scan's own runs fill the cache it adds no more, so a repeat reads what fits from the cache
and decodes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import threading
from collections import OrderedDict
from collections.abc import Collection
from pathlib import Path

import crc32c
import numpy as np
import pyarrow as pa

from streamhouse.errors import ConfigError
from streamhouse.log.metadata import SegmentRow

log = logging.getLogger(__name__)

FORMAT = "3"  # part of every key: a change of what is cached makes old files unreachable
_TRAILER = struct.Struct("<I4s")
_MAGIC = b"SHc1"
DISK_SHARE = 0.25  # the default bound: this share of the disk space free for the cache...
DEFAULT_CAP = 64 << 30  # ...at most this


def parse_cache_bytes(value: object) -> int:
    """Bytes of a ``scan_cache_bytes`` setting: a number of bytes or a size (``4GB``)."""
    from streamhouse.sql.memory import parse_memory_limit

    text = str(value).strip()
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif text.isdigit():
        size = int(text)
    elif text.endswith("%"):
        raise ConfigError(f"scan_cache_bytes {value!r}: write bytes or a size such as '4GB'")
    else:
        try:
            size = parse_memory_limit(text)
        except ConfigError:
            raise ConfigError(
                f"scan_cache_bytes {value!r} is not a size: write bytes or a size such as '4GB'"
            ) from None
    if size < 0:
        raise ConfigError(f"scan_cache_bytes {value!r} is negative (0 turns the cache off)")
    return size


def default_capacity(directory: Path) -> int:
    """The cache's bound when none is set: ``DISK_SHARE`` of the space free on the disk of
    ``directory`` plus what the cache already holds there (so it does not shrink as it
    fills), at most ``DEFAULT_CAP``."""
    held = 0
    with contextlib.suppress(OSError):
        held = sum(e.stat().st_size for e in os.scandir(directory) if e.name.endswith(".arrow"))
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        free = shutil.disk_usage(place).free
    except OSError:
        return 0
    return min(DEFAULT_CAP, int((free + held) * DISK_SHARE))


class ColumnarCache:
    """Decoded runs as Arrow IPC files in ``directory``, at most ``capacity`` bytes."""

    def __init__(self, directory: Path, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self._files: OrderedDict[str, int] | None = None  # name -> size, least recent first
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.damaged = 0

    @staticmethod
    def key(row: SegmentRow, schema: pa.Schema | None, variant: str = "") -> str:
        """The file name of ``row``'s run parsed with ``schema`` (None: values as text);
        ``variant`` tells apart decodings of one run that keep different records (its
        aborted transactions left out, or not)."""
        text = "|".join(
            map(
                str,
                (
                    FORMAT,
                    row.object_key,
                    row.partition,
                    row.position,
                    row.length,
                    row.crc,
                    row.base_offset,
                    "text" if schema is None else schema.to_string(show_schema_metadata=False),
                    *((variant,) if variant else ()),
                ),
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:40] + ".arrow"

    def _index(self) -> OrderedDict[str, int]:
        if self._files is None:
            found = []
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                for entry in os.scandir(self.directory):
                    if entry.name.endswith(".arrow") and entry.is_file():
                        stat = entry.stat()
                        found.append((stat.st_mtime, entry.name, stat.st_size))
            except OSError as exc:  # e.g. a read-only data directory: queries go on uncached
                log.warning(
                    "columnar cache %s is not usable, queries read objects: %s", self.directory, exc
                )
                self.capacity = 0
            self._files = OrderedDict((name, size) for _, name, size in sorted(found))
            self._size = sum(self._files.values())
        return self._files

    def get(self, key: str) -> pa.Table | None:
        """The cached table of ``key``, or None (not cached, or damaged: then deleted)."""
        with self._lock:
            files = self._index()
            if key not in files:
                self.misses += 1
                return None
            files.move_to_end(key)
        path = self.directory / key
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # evicted by another process
            self._forget(key)
            with self._lock:
                self.misses += 1
            return None
        table = _decode(data)
        if table is None:
            log.warning("columnar cache file %s is damaged: decoding its run again", path)
            self._forget(key, delete=True)
            with self._lock:
                self.damaged += 1
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        with contextlib.suppress(OSError):  # recently used, for the next process's listing
            os.utime(path)
        return table

    def put(self, key: str, table: pa.Table, keep: Collection[str] = ()) -> None:
        """Cache ``table`` as ``key``, evicting the least recently used files but not those
        of ``keep`` (the runs the caller's scan reads); not at all if those leave no room."""
        stored = _stored(table)
        size = _ipc_size(stored) + _TRAILER.size
        with self._lock:
            files = self._index()
            kept = sum(files.get(k, 0) for k in keep if k != key)
        if kept + size > self.capacity:
            return
        path = self.directory / key
        temporary = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}")
        try:
            with (
                pa.OSFile(str(temporary), "wb") as sink,  # (no GIL taken while it writes)
                pa.ipc.new_file(sink, stored.schema) as writer,
            ):
                writer.write_table(stored)
            with temporary.open("r+b") as out:  # the bytes just written, from the page cache
                with mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as written:
                    crc = crc32c.crc32c(written)
                out.seek(0, os.SEEK_END)
                out.write(_TRAILER.pack(crc, _MAGIC))
            os.replace(temporary, path)
        except (OSError, ValueError) as exc:  # a full or read-only disk: the query goes on uncached
            log.warning("columnar cache: cannot write %s: %s", path, exc)
            temporary.unlink(missing_ok=True)
            return
        evicted: list[str] = []
        with self._lock:
            files = self._index()
            self._size += size - files.pop(key, 0)
            files[key] = size
            for name in list(files):  # least recently used first
                if self._size <= self.capacity:
                    break
                if name == key or name in keep:
                    continue
                self._size -= files.pop(name)
                evicted.append(name)
        for name in evicted:
            (self.directory / name).unlink(missing_ok=True)

    def _forget(self, key: str, delete: bool = False) -> None:
        with self._lock:
            files = self._index()
            self._size -= files.pop(key, 0)
        if delete:
            (self.directory / key).unlink(missing_ok=True)


def _ipc_size(table: pa.Table) -> int:
    """The bytes of ``table`` as an Arrow IPC file (its buffers are not copied to count)."""
    counter = pa.MockOutputStream()
    with pa.ipc.new_file(counter, table.schema) as writer:
        writer.write_table(table)
    return counter.size()


_DERIVED = ("_offset", "_partition", "_key")  # columns that may be stored as numbers
_METADATA_KEY = b"streamhouse.derived"
_SCHEMA_KEY = b"streamhouse.schema"


def _stored(table: pa.Table) -> pa.Table:
    """``table`` as it is stored: without the columns of :data:`_DERIVED` that are all null
    or integers ``first + i * step`` (``step`` 0 or 1: a run's partition, its offsets), which
    its schema metadata gives back (with the table's own schema)."""
    derived: dict[str, list[int] | None] = {}
    for name in _DERIVED:
        if name not in table.column_names or table.schema.get_field_index(name) < 0:
            continue
        column = table[name]
        if column.null_count == len(column):
            derived[name] = None
        elif pa.types.is_integer(column.type) and column.null_count == 0 and len(column):
            values = column.to_numpy().astype(np.int64, copy=False)
            first, step = int(values[0]), int(values[-1] != values[0])
            if np.array_equal(values, _sequence(len(values), first, step)):
                derived[name] = [first, step]
    if not derived:
        return table
    metadata = {
        _METADATA_KEY: json.dumps(derived).encode(),
        _SCHEMA_KEY: table.schema.serialize().to_pybytes(),
    }
    return table.drop_columns(list(derived)).replace_schema_metadata(metadata)


def _sequence(n: int, first: int, step: int) -> np.ndarray:
    return np.full(n, first, np.int64) if step == 0 else np.arange(first, first + n, dtype=np.int64)


def _restored(table: pa.Table) -> pa.Table:
    """The table :func:`_stored` stored as ``table``."""
    metadata = table.schema.metadata or {}
    if _METADATA_KEY not in metadata:
        return table
    derived = json.loads(metadata[_METADATA_KEY])
    schema = pa.ipc.read_schema(pa.py_buffer(metadata[_SCHEMA_KEY]))
    n = table.num_rows
    columns = []
    for field in schema:
        if field.name not in derived:
            columns.append(table[field.name])
        elif (numbers := derived[field.name]) is None:
            columns.append(pa.nulls(n, field.type))
        else:
            columns.append(pa.array(_sequence(n, *numbers)).cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _decode(data: bytes) -> pa.Table | None:
    """The table of a cache file, or None if its trailer or checksum or Arrow is wrong."""
    if len(data) < _TRAILER.size:
        return None
    crc, magic = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    body = memoryview(data)[: len(data) - _TRAILER.size]
    if magic != _MAGIC or crc32c.crc32c(body) != crc:
        return None
    try:
        return _restored(pa.ipc.open_file(pa.py_buffer(body)).read_all())
    except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError):
        return None
