"""The produce path: buffer appends across partitions, flush one segment object, then acknowledge.

Durability contract: an append's future resolves only after the segment object holding it is
durable in the object store (fsync + atomic rename locally, a completed PUT on S3) AND its index
rows are committed in the metadata store. A flush happens ``linger_ms`` after the first pending
append or as soon as ``max_bytes`` are pending, whichever comes first.

Offsets are assigned at flush time by re-stamping each batch's ``baseOffset`` (bytes 0-7, outside
the CRC): no record is decoded on this path. One flusher thread owns offset assignment, so
concurrent producers are safe and offsets are contiguous. Another process writing the same
partitions is fenced by the metadata store (a commit must start at the high watermark): the
loser reloads the high watermarks, re-stamps its batches, writes a new object and commits again
(up to ``COMMIT_ATTEMPTS`` times); its first object is deleted as an orphan. If the object store
or the commit fails otherwise, every append of that flush fails, nothing is acknowledged, and
the next flush starts again from the committed high watermarks.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import count

from streamhouse.errors import StorageError, StreamHouseError, UnknownPartitionError
from streamhouse.log.metadata import Metadata, PartitionOffsets
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import BatchHeader
from streamhouse.log.segment import SegmentBuilder, SegmentEntry, segment_key

log = logging.getLogger(__name__)

CommitListener = Callable[[str, int, int], None]
"""Called after each commit with (topic, partition, new high watermark)."""

_OFFSET = struct.Struct(">q")

COMMIT_ATTEMPTS = 8
"""Tries per flush when another process commits to the same partitions in between."""


@dataclass(slots=True)
class _Append:
    topic: str
    partition: int
    data: bytes
    headers: list[tuple[int, BatchHeader]]  # (start position in data, header)
    future: Future[int] = field(default_factory=Future)


class LogWriter:
    """Buffers appends from any thread and flushes them as one segment object at a time."""

    def __init__(
        self,
        store: ObjectStore,
        metadata: Metadata,
        *,
        linger_ms: float = 5.0,
        max_bytes: int = 8 * 1024 * 1024,
        on_segment: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._linger = linger_ms / 1000.0
        self._max_bytes = max_bytes
        self._on_segment = on_segment
        self._listeners: list[CommitListener] = []
        self._pending: list[_Append] = []
        self._pending_bytes = 0
        self._first_pending_at = 0.0
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._sequence = count(time.time_ns() // 1000)
        self._thread = threading.Thread(target=self._run, name="streamhouse-flusher", daemon=True)
        self._thread.start()

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def append(
        self, topic: str, partition: int, data: bytes, headers: list[tuple[int, BatchHeader]]
    ) -> Future[int]:
        """Queue validated batches; the future resolves to the first batch's base offset."""
        item = _Append(topic, partition, data, headers)
        with self._cond:
            if self._closed:
                raise StorageError("the log is closed")
            if not self._pending:
                self._first_pending_at = time.monotonic()
            self._pending.append(item)
            self._pending_bytes += len(data)
            self._cond.notify()
        return item.future

    def forget(self, topic: str) -> None:
        """Drop cached offsets of a deleted or re-created topic."""
        with self._cond:
            for key in [k for k in self._next_offsets if k[0] == topic]:
                del self._next_offsets[key]

    def flush(self) -> None:
        """Block until everything appended so far is flushed (or failed)."""
        with self._cond:
            futures = [item.future for item in self._pending]
            self._first_pending_at = 0.0  # flush now
            self._cond.notify()
        for fut in futures:
            fut.exception()

    def close(self) -> None:
        self.flush()
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._pending:
                        wait = self._first_pending_at + self._linger - time.monotonic()
                        if wait <= 0 or self._pending_bytes >= self._max_bytes or self._closed:
                            break
                        self._cond.wait(wait)
                    elif self._closed:
                        return
                    else:
                        self._cond.wait()
                batch, self._pending = self._pending, []
                self._pending_bytes = 0
            self._flush(batch)

    def _flush(self, appends: list[_Append]) -> None:
        """Flush ``appends`` as one object; every future is resolved or failed on return."""
        try:
            self._flush_appends(appends)
        except Exception as exc:  # the flusher thread must never die with producers waiting
            log.exception("flush failed")
            error = (
                exc if isinstance(exc, StreamHouseError) else StorageError(f"flush failed: {exc}")
            )
            for item in appends:
                if not item.future.done():
                    item.future.set_exception(error)

    def _flush_appends(self, appends: list[_Append]) -> None:
        by_partition: dict[tuple[str, int], list[_Append]] = {}
        for item in appends:
            by_partition.setdefault((item.topic, item.partition), []).append(item)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            built = self._build(by_partition)
            if built is None:
                return
            data, entries, resolved, assigned = built
            object_key = segment_key(next(self._sequence))
            try:
                self._store.put(object_key, data)
                self._metadata.commit_segment(object_key, entries)
            except Exception as exc:
                for key in assigned:
                    self._next_offsets.pop(key, None)
                stale = self._abandon(object_key, entries)
                if stale and attempt < COMMIT_ATTEMPTS:
                    # Another process committed to one of these partitions since we read its
                    # high watermark: re-stamp from the new high watermarks and write again.
                    log.info("segment %s is stale (attempt %d); retrying", object_key, attempt)
                    time.sleep(random.uniform(0, 0.005 * attempt))
                    continue
                log.error("flush of %s failed: %s", object_key, exc)
                error = exc if isinstance(exc, StreamHouseError) else StorageError(str(exc))
                for item, _ in resolved:
                    item.future.set_exception(error)
                return
            self._acknowledge(object_key, data, resolved, assigned)
            return

    def _build(
        self, by_partition: dict[tuple[str, int], list[_Append]]
    ) -> (
        tuple[bytes, list[SegmentEntry], list[tuple[_Append, int]], dict[tuple[str, int], int]]
        | None
    ):
        """Stamp offsets from the current high watermarks and encode one segment object.

        Appends to partitions that cannot be written (unknown ones) are failed and dropped from
        ``by_partition``; ``None`` if nothing is left to write.
        """
        builder = SegmentBuilder()
        assigned: dict[tuple[str, int], int] = {}
        resolved: list[tuple[_Append, int]] = []
        for key, items in list(by_partition.items()):
            try:
                next_offset = self._next_offset(key)
            except StreamHouseError as exc:
                for item in items:
                    item.future.set_exception(exc)
                del by_partition[key]
                continue
            base = next_offset
            parts: list[bytes] = []
            min_ts, max_ts, records = None, None, 0
            for item in items:
                buf = bytearray(item.data)
                resolved.append((item, next_offset))
                for start, header in item.headers:
                    _OFFSET.pack_into(buf, start, next_offset)
                    next_offset += header.last_offset_delta + 1
                    records += header.record_count
                    lo, hi = header.base_timestamp, header.max_timestamp
                    min_ts = lo if min_ts is None else min(min_ts, lo)
                    max_ts = hi if max_ts is None else max(max_ts, hi)
                parts.append(bytes(buf))
            builder.add(
                key[0],
                key[1],
                b"".join(parts),
                base_offset=base,
                last_offset=next_offset - 1,
                min_timestamp=min_ts if min_ts is not None else -1,
                max_timestamp=max_ts if max_ts is not None else -1,
                record_count=records,
            )
            assigned[key] = next_offset
        if not assigned:
            return None
        data, entries = builder.build()
        return data, entries, resolved, assigned

    def _abandon(self, object_key: str, entries: list[SegmentEntry]) -> bool:
        """Clean up after a failed put or commit; True if the commit lost a race (stale offsets).

        The object is deleted (best effort) only when the index provably does not reference it:
        a commit is all or nothing, so looking at the first entry's partition suffices.
        """
        first = entries[0]
        try:
            rows = self._metadata.segments(
                first.topic, first.partition, from_offset=first.base_offset, limit=1
            )
        except StreamHouseError as exc:
            log.warning("cannot tell whether %s was committed; leaving it: %s", object_key, exc)
            return False
        if rows and rows[0].object_key == object_key:  # committed after all
            return False
        try:
            self._store.delete(object_key)
        except StreamHouseError as exc:
            log.warning("cannot delete orphan segment object %s: %s", object_key, exc)
        offsets: dict[str, dict[int, PartitionOffsets]] = {}
        for topic in {e.topic for e in entries}:
            try:
                offsets[topic] = self._metadata.partition_offsets(topic)
            except StreamHouseError:  # deleted meanwhile, or the store is failing: not a race
                offsets[topic] = {}
        return any(
            e.partition in offsets[e.topic]
            and offsets[e.topic][e.partition].high_watermark != e.base_offset
            for e in entries
        )

    def _acknowledge(
        self,
        object_key: str,
        data: bytes,
        resolved: list[tuple[_Append, int]],
        assigned: dict[tuple[str, int], int],
    ) -> None:
        if self._on_segment is not None:
            try:
                self._on_segment(object_key, data)
            except Exception:  # a cache failure must not fail a durable produce
                log.exception("segment callback failed")
        self._next_offsets.update(assigned)
        for item, offset in resolved:
            item.future.set_result(offset)
        for (topic, partition), high_watermark in assigned.items():
            for listener in self._listeners:
                try:
                    listener(topic, partition, high_watermark)
                except Exception:  # a listener must not break the produce path
                    log.exception("commit listener failed")

    def _next_offset(self, key: tuple[str, int]) -> int:
        cached = self._next_offsets.get(key)
        if cached is not None:
            return cached
        offsets = self._metadata.partition_offsets(key[0])
        if key[1] not in offsets:
            raise UnknownPartitionError(key[0], key[1])
        value = offsets[key[1]].high_watermark
        self._next_offsets[key] = value
        return value
