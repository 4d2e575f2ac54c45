"""The fetch path: find a partition's batches by offset through the segment index, read them from
segment objects through an LRU block cache, and hand them back byte-for-byte.

The cache holds whole segment objects (they are small: one flush each) keyed by object key, with
a byte budget. The writer puts each new object into the cache as it is committed, so tailing
consumers never touch the object store.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from streamhouse.errors import OffsetOutOfRangeError, UnknownPartitionError
from streamhouse.log.metadata import Metadata, PartitionOffsets, SegmentRow
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import read_header
from streamhouse.log.segment import check_entry

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

    def __init__(self, metadata: Metadata, cache: ObjectCache) -> None:
        self._metadata = metadata
        self._cache = cache

    def offsets(self, topic: str, partition: int) -> PartitionOffsets:
        offsets = self._metadata.partition_offsets(topic)
        if partition not in offsets:
            raise UnknownPartitionError(topic, partition)
        return offsets[partition]

    def run_bytes(self, row: SegmentRow) -> bytes:
        """The verified bytes of one indexed run of batches."""
        data = self._cache.get(row.object_key)
        return check_entry(data, row, row.object_key)

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int) -> FetchResult:
        """Batches from the one holding ``offset``, up to ``max_bytes`` (at least one batch)."""
        bounds = self.offsets(topic, partition)
        if offset < bounds.log_start_offset or offset > bounds.high_watermark:
            raise OffsetOutOfRangeError(
                f"offset {offset} of {topic}-{partition} is outside "
                f"[{bounds.log_start_offset}, {bounds.high_watermark}]"
            )
        if offset == bounds.high_watermark:
            return FetchResult(b"", bounds.high_watermark, bounds.log_start_offset)
        out: list[bytes] = []
        size = 0
        for row in self._rows_from(topic, partition, offset):
            run = self.run_bytes(row)
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


def _skip_to(run: bytes, offset: int) -> int:
    """Position of the batch in ``run`` that holds ``offset`` (batches are whole)."""
    pos = 0
    view = memoryview(run)
    while pos < len(run):
        header = read_header(view, pos)
        if header.base_offset + header.last_offset_delta >= offset:
            return pos
        pos += header.size
    return pos


def _trim(run: bytes, max_bytes: int, *, at_least_one: bool = True) -> bytes:
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
