"""The state of one continuous query, in RocksDB (rocksdict, raw mode, column families).

Column families and their key layouts (all integers big-endian; signed millisecond times are
stored offset by 2**63 so byte order equals time order):

``windows``
    ``u64(window_end) | u64(window_start) | u32(run)`` -> Arrow IPC stream of the partial
    aggregates one micro-batch added to that window (a run), one row per group key; runs are
    merged when the window closes (a 16-byte key without a run reads as run 0). Iterating in
    key order visits windows by end time, so the windows a watermark closes are a prefix.
``sessions``
    ``b"open"`` -> Arrow IPC stream of every open session: group keys, ``window_start``,
    ``window_end`` (last event + gap) and partial aggregates.
``joins``
    ``side | u64(max event time) | u64(sequence)`` -> Arrow IPC stream of buffered join input
    rows (``side`` is ``b"L"`` or ``b"R"``; for window joins ``side | u64(window_end) |
    u64(window_start)``). Key order puts the oldest rows first, so expiry deletes a prefix.
``meta``
    ``b"source/" + u32(partition)`` -> u64 next source offset to read;
    ``b"event_time/" + u32(partition)`` -> u64 max event time seen in that partition;
    ``b"sink/" + u32(partition)`` -> u64 records this query has written to that sink partition;
    ``b"pending"`` -> JSON end offsets of a micro-batch whose output may be partly written;
    ``b"counters"`` -> JSON counters (rows in, rows out, late rows, rejected rows).

A micro-batch is one atomic, synced ``WriteBatch``: state, source offsets and sink progress move
together, so every committed micro-batch is a checkpoint.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from streamhouse.errors import StorageError

log = logging.getLogger(__name__)

COLUMN_FAMILIES = ("windows", "sessions", "joins", "meta")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_BIAS = 1 << 63


def time_key(ms: int) -> bytes:
    """An order-preserving 8-byte key for a signed millisecond time."""
    return _U64.pack(ms + _BIAS)


def time_from_key(key: bytes) -> int:
    return _U64.unpack(key)[0] - _BIAS


def window_key(start: int, end: int) -> bytes:
    return time_key(end) + time_key(start)


def window_from_key(key: bytes) -> tuple[int, int]:
    """(start, end) of a ``windows`` key."""
    return time_from_key(key[8:16]), time_from_key(key[:8])


def partition_key(prefix: bytes, partition: int) -> bytes:
    return prefix + _U32.pack(partition)


def encode_table(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


class StateStore:
    """One RocksDB database per continuous query; one process may open it at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(
                str(self.path),
                _options(),
                column_families={name: Options(raw_mode=True) for name in COLUMN_FAMILIES},
            )
        except Exception as exc:  # rocksdict raises plain Exceptions (e.g. the LOCK is held)
            raise StorageError(f"cannot open query state at {self.path}: {exc}") from None
        self._cf = {name: self._db.get_column_family(name) for name in COLUMN_FAMILIES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._sync = WriteOptions()
        self._sync.sync = True

    # -- reads --------------------------------------------------------------------------------

    def get(self, family: str, key: bytes) -> bytes | None:
        return self._cf[family].get(key)

    def items(self, family: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        yield from self._cf[family].items(from_key=start) if start else self._cf[family].items()

    def get_int(self, key: bytes) -> int | None:
        value = self._cf["meta"].get(key)
        return None if value is None else _U64.unpack(value)[0]

    def get_json(self, key: bytes) -> Any:
        value = self._cf["meta"].get(key)
        return None if value is None else json.loads(value)

    def size_bytes(self) -> int:
        """Estimated live bytes of state (window and session column families)."""
        total = 0
        for name in ("windows", "sessions", "joins"):
            for prop in ("rocksdb.estimate-live-data-size", "rocksdb.cur-size-all-mem-tables"):
                value = self._cf[name].property_int_value(prop)
                total += value or 0
        return total

    # -- writes -------------------------------------------------------------------------------

    def batch(self) -> StateBatch:
        return StateBatch(self)

    def commit(self, batch: StateBatch) -> None:
        """Apply ``batch`` atomically and durably."""
        try:
            self._db.write(batch.write_batch, self._sync)
        except Exception as exc:
            raise StorageError(f"cannot commit query state at {self.path}: {exc}") from None

    def checkpoint(self, directory: Path) -> None:
        """A consistent hard-link copy of the state in ``directory`` (which must not exist)."""
        Checkpoint(self._db).create_checkpoint(str(directory))

    def close(self) -> None:
        for family in self._cf.values():
            family.close()
        self._cf.clear()
        self._handles.clear()
        self._db.close()


class StateBatch:
    """Writes that become visible together when committed."""

    def __init__(self, store: StateStore) -> None:
        self._handles = store._handles
        self.write_batch = WriteBatch(raw_mode=True)

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.write_batch.put(key, value, self._handles[family])

    def delete(self, family: str, key: bytes) -> None:
        self.write_batch.delete(key, self._handles[family])

    def put_int(self, key: bytes, value: int) -> None:
        self.put("meta", key, _U64.pack(value))

    def put_json(self, key: bytes, value: Any) -> None:
        self.put("meta", key, json.dumps(value).encode())


class StateView:
    """One operator's share of a query's state: every key it reads or writes is prefixed.

    A query whose plan nests operators (a join over a windowed aggregate, say) gives each its own
    prefix, so their keys never meet in a column family.
    """

    def __init__(self, store: StateStore, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix

    def get(self, family: str, key: bytes) -> bytes | None:
        return self.store.get(family, self.prefix + key)

    def items(self, family: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        n = len(self.prefix)
        for key, value in self.store.items(family, self.prefix + (start or b"")):
            if not key.startswith(self.prefix):
                return
            yield key[n:], value

    def size_bytes(self) -> int:
        return self.store.size_bytes()


class ScopedBatch:
    """A :class:`StateBatch` seen through a :class:`StateView`'s prefix."""

    def __init__(self, batch: StateBatch, prefix: bytes) -> None:
        self.batch = batch
        self.prefix = prefix

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.batch.put(family, self.prefix + key, value)

    def delete(self, family: str, key: bytes) -> None:
        self.batch.delete(family, self.prefix + key)


class TableState:
    """Operator state kept as one Arrow table under one key of the ``sessions`` column family.

    Changes are staged during a micro-batch (:meth:`stage` also writes them into the batch) and
    become :attr:`committed` when the batch is (:meth:`commit`); :meth:`rollback` drops them.
    """

    def __init__(self, store: StateStore | StateView, key: bytes) -> None:
        self.key = key
        stored = store.get("sessions", key)
        self.committed: pa.Table | None = decode_table(stored) if stored else None
        self._staged: pa.Table | None = None
        self._dirty = False

    @property
    def current(self) -> pa.Table | None:
        """The table as of what this micro-batch has staged so far."""
        return self._staged if self._dirty else self.committed

    @property
    def rows(self) -> int:
        return self.committed.num_rows if self.committed is not None else 0

    def stage(self, table: pa.Table, batch: StateBatch | ScopedBatch) -> None:
        self._staged, self._dirty = table, True
        batch.put("sessions", self.key, encode_table(table))

    def commit(self) -> None:
        if self._dirty:
            self.committed, self._staged, self._dirty = self._staged, None, False

    def rollback(self) -> None:
        self._staged, self._dirty = None, False
