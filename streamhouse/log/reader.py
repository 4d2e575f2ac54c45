"""The fetch path: find a partition's batches by offset through the segment index, read them from
segment objects through an LRU block cache, and hand them back byte-for-byte.

The cache holds whole segment objects (they are small: one flush each) keyed by object key, with
a byte budget. The writer puts each new object into the cache as it is committed, so tailing
consumers never touch the object store.

Runs are handed out as zero-copy views of the cached objects after their CRC-32C is checked,
re-stamped (a copy) where the metadata store sequenced them at other offsets than they were
written with;
:meth:`LogReader.scan` reads many partitions at once, each object once, for SQL scans.

Damage is contained: a run that fails its checksum (or is cut short) raises
:class:`~streamhouse.errors.DamagedRangeError` for its own offset range only. A fetch returns
the batches before it; a scan either fails on it or, when asked, leaves it out and lists it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import crc32c

from streamhouse.errors import DamagedRangeError, OffsetOutOfRangeError
from streamhouse.log.metadata import Metadata, PartitionOffsets, SegmentRow
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import first_base_offset, read_header, shift_offsets

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Whole record batches starting at the one holding the requested offset."""

    records: bytes
    high_watermark: int
    log_start_offset: int


class ObjectCache:
    """An LRU of segment objects bounded by total bytes; thread-safe."""

    def __init__(self, store: ObjectStore, capacity_bytes: int) -> None:
        self._store = store
        self._capacity = capacity_bytes
        self._objects: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes:
        with self._lock:
            data = self._objects.get(key)
            if data is not None:
                self._objects.move_to_end(key)
                self.hits += 1
                return data
            self.misses += 1
        data = self._store.get(key)
        self.put(key, data)
        return data

    def read(self, key: str) -> bytes:
        """An object from the cache if there, else from the store without caching it: a
        scan passing through a whole topic does not push out what fetches read again."""
        with self._lock:
            data = self._objects.get(key)
            if data is not None:
                self.hits += 1
                return data
            self.misses += 1
        return self._store.get(key)

    def run(self, row: SegmentRow) -> bytes:
        """The bytes of ``row``'s run: its object's if cached, else the run's range alone from
        the store (not cached)."""
        with self._lock:
            data = self._objects.get(row.object_key)
            if data is not None:
                self._objects.move_to_end(row.object_key)
                self.hits += 1
                return data
            self.misses += 1
        return self._store.get(row.object_key, row.position, row.position + row.length)

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self._capacity:
            return
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None:
                self._size -= len(old)
            self._objects[key] = data
            self._size += len(data)
            while self._size > self._capacity:
                _, evicted = self._objects.popitem(last=False)
                self._size -= len(evicted)

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None:
                self._size -= len(old)


class LogReader:
    """Reads stored batches of one partition by offset."""

    def __init__(
        self,
        metadata: Metadata,
        cache: ObjectCache,
        *,
        fresh_offset: Callable[[str, int], PartitionOffsets] | None = None,
    ) -> None:
        self._metadata = metadata
        self._cache = cache
        # Reads a partition's offsets from the store itself, when the (cached) ones the
        # metadata gave do not admit a fetch: another process may have committed since.
        self._fresh_offset = fresh_offset or metadata.partition_offset

    def offsets(self, topic: str, partition: int) -> PartitionOffsets:
        return self._metadata.partition_offset(topic, partition)

    def run_bytes(self, row: SegmentRow) -> bytes:
        """The verified bytes of one indexed run of batches."""
        return bytes(self.run_view(row))

    def run_view(self, row: SegmentRow, data: bytes | None = None) -> memoryview:
        """The verified bytes of one indexed run, with the offsets the index gives them.

        A view of its object (no copy) when the batches were written with the offsets the
        metadata store assigned at commit; else a copy re-stamped by the difference (only each
        batch's baseOffset changes). ``data`` is the whole object if the caller holds it
        already; else it comes from the cache.
        """
        if data is None:
            data = self._cache.get(row.object_key)
        run = _check_run(data, row)
        written = first_base_offset(run)
        if written != row.base_offset:
            run = memoryview(shift_offsets(run, row.base_offset - written))
        return run

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int) -> FetchResult:
        """Batches from the one holding ``offset``, up to ``max_bytes`` (at least one batch).

        They end before a damaged run; a fetch from inside one raises its
        :class:`~streamhouse.errors.DamagedRangeError`.
        """
        bounds = self.offsets(topic, partition)
        if offset < bounds.log_start_offset or offset > bounds.high_watermark:
            bounds = self._fresh_offset(topic, partition)
        if offset < bounds.log_start_offset or offset > bounds.high_watermark:
            raise OffsetOutOfRangeError(
                f"offset {offset} of {topic}-{partition} is outside "
                f"[{bounds.log_start_offset}, {bounds.high_watermark}]"
            )
        if offset == bounds.high_watermark:
            return FetchResult(b"", bounds.high_watermark, bounds.log_start_offset)
        out: list[memoryview] = []
        size = 0
        for row in self._rows_from(topic, partition, offset):
            try:
                run = self.run_view(row)
            except DamagedRangeError:
                if out:  # the batches before the damaged range; the next fetch meets it
                    break
                raise
            if row.base_offset < offset:
                run = run[_skip_to(run, offset) :]
            room = max_bytes - size
            if len(run) <= room:
                out.append(run)
                size += len(run)
                if size < max_bytes:
                    continue
            else:
                part = _trim(run, room, at_least_one=not out)
                if part:
                    out.append(part)
            break
        return FetchResult(b"".join(out), bounds.high_watermark, bounds.log_start_offset)

    def _rows_from(self, topic: str, partition: int, offset: int) -> Iterator[SegmentRow]:
        """Index rows from the one holding ``offset`` on, a page at a time."""
        while True:
            rows = self._metadata.segments(topic, partition, from_offset=offset, limit=16)
            yield from rows
            if len(rows) < 16:
                return
            offset = rows[-1].last_offset + 1

    def runs(
        self, topic: str, partition: int, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[SegmentRow, bytes]]:
        """Every indexed run of a partition overlapping offsets [start, end)."""
        for row in self._metadata.segments(topic, partition, from_offset=start, to_offset=end):
            yield row, self.run_bytes(row)

    def scan(
        self,
        topic: str,
        partitions: Sequence[int],
        start_offsets: Mapping[int, int] | None = None,
        end_offsets: Mapping[int, int | None] | None = None,
        damaged: list[DamagedRangeError] | None = None,
    ) -> list[tuple[SegmentRow, memoryview]]:
        """The runs of many partitions overlapping ``[start, end)``, partition by partition.

        Every object is read once (a segment holds runs of many partitions, so reading the
        partitions one after the other would fetch each object once per partition, again and
        again when they outgrow the cache). A partition's first run is trimmed to start at the
        batch holding its start offset; runs are zero-copy views of their objects.

        A damaged run raises its :class:`~streamhouse.errors.DamagedRangeError`; if ``damaged``
        is a list, it is left out and its error appended there instead.
        """
        start_offsets = start_offsets or {}
        rows = self._rows(topic, partitions, start_offsets, end_offsets or {})
        return self.read_runs(rows, start_offsets, damaged)

    def _rows(
        self,
        topic: str,
        partitions: Sequence[int],
        start_offsets: Mapping[int, int],
        end_offsets: Mapping[int, int | None],
    ) -> list[SegmentRow]:
        """The index rows of the partitions' runs overlapping ``[start, end)``, in order."""
        return [
            row
            for partition in partitions
            for row in self._metadata.segments(
                topic,
                partition,
                from_offset=start_offsets.get(partition, 0),
                to_offset=end_offsets.get(partition),
            )
        ]

    def scan_as_written(
        self,
        topic: str,
        partitions: Sequence[int],
        start_offsets: Mapping[int, int],
        end_offsets: Mapping[int, int],
    ) -> list[tuple[SegmentRow, memoryview, int]]:
        """:meth:`scan`, each run as its object holds it (checked, never re-stamped: no copy)
        with what to add to its batches' written base offsets for the offsets the index gave
        them. For a reader that takes the offsets from there (an exchange's: its runs are
        appended by several processes at once, so most were written at other offsets). A run
        of an object not in the cache is read alone (an exchange's object holds a run for
        every task, each read by one task: the others' are not read)."""
        rows = self._rows(topic, partitions, start_offsets, end_offsets)
        out = []
        for row in rows:
            run = _check_run(self._cache.run(row), row)
            delta = row.base_offset - first_base_offset(run)
            start = start_offsets.get(row.partition, 0)
            if row.base_offset < start:
                run = run[_skip_to(run, start - delta) :]
            if len(run):
                out.append((row, run, delta))
        return out

    def read_runs(
        self,
        rows: Sequence[SegmentRow],
        start_offsets: Mapping[int, int],
        damaged: list[DamagedRangeError] | None = None,
        counter: ReadCounter | None = None,
        *,
        cache: bool = True,
    ) -> list[tuple[SegmentRow, memoryview]]:
        """The runs of index ``rows`` (in their order), each object read once (kept in the
        cache unless ``cache`` is false); a partition's run is trimmed to start at the batch
        holding its start offset. Damage as in :meth:`scan`; every object read is counted in
        ``counter``."""
        get = self._cache.get if cache else self._cache.read
        objects = {key: get(key) for key in sorted({r.object_key for r in rows})}
        if counter is not None:
            counter.add(len(objects), sum(len(data) for data in objects.values()))
        out = []
        for row in rows:
            try:
                run = self.run_view(row, objects[row.object_key])
            except DamagedRangeError as exc:
                if damaged is None:
                    raise
                damaged.append(exc)
                continue
            start = start_offsets.get(row.partition, 0)
            if row.base_offset < start:
                run = run[_skip_to(run, start) :]
            if len(run):
                out.append((row, run))
        return out


class ReadCounter:
    """How many segment objects, and bytes of them, a scan read (from the cache or the
    store); thread-safe."""

    def __init__(self) -> None:
        self.objects = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def add(self, objects: int, size: int) -> None:
        with self._lock:
            self.objects += objects
            self.bytes += size


def _check_run(data: bytes, row: SegmentRow) -> memoryview:
    """The run of ``row`` in ``data`` (its whole object, or just the run), if its CRC-32C matches."""
    run = memoryview(data)
    if len(run) != row.length:  # a whole object is always longer than any of its runs
        run = run[row.position : row.position + row.length]
    if len(run) != row.length:
        raise _damaged(row, f"run truncated: {len(run)} of {row.length} bytes")
    if crc32c.crc32c(run) != row.crc:
        raise _damaged(row, "checksum mismatch in the run")
    return run


def _damaged(row: SegmentRow, reason: str) -> DamagedRangeError:
    return DamagedRangeError(
        row.topic, row.partition, row.base_offset, row.last_offset, row.object_key, reason
    )


def _skip_to(run: bytes | memoryview, offset: int) -> int:
    """Position of the batch in ``run`` that holds ``offset`` (batches are whole)."""
    pos = 0
    view = memoryview(run)
    while pos < len(run):
        header = read_header(view, pos)
        if header.base_offset + header.last_offset_delta >= offset:
            return pos
        pos += header.size
    return pos


def _trim(
    run: bytes | memoryview, max_bytes: int, *, at_least_one: bool = True
) -> bytes | memoryview:
    """The longest prefix of whole batches within ``max_bytes`` (one batch when at_least_one)."""
    pos = 0
    view = memoryview(run)
    while pos < len(run):
        size = read_header(view, pos).size
        if pos + size > max_bytes:
            if pos == 0 and at_least_one:
                pos = size
            break
        pos += size
    return run[:pos]
