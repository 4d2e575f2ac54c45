"""The produce path: buffer appends across partitions, flush one segment object, then acknowledge.

Durability contract: an append's future resolves only after the segment object holding it is
durable in the object store (fsync + atomic rename locally, a completed PUT on S3) AND its index
rows are committed in the metadata store. A flush happens ``linger_ms`` after the first pending
append or as soon as ``max_bytes`` are pending, whichever comes first.

Offsets are assigned at flush time by re-stamping each batch's ``baseOffset`` (bytes 0-7, outside
the CRC): no record is decoded on this path. One flusher thread owns offset assignment, so
concurrent producers are safe and offsets are contiguous. If the object store or the commit
fails, every append of that flush fails, nothing is acknowledged, and the next flush starts
again from the committed high watermarks.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import count

from streamhouse.errors import StorageError, StreamHouseError, UnknownPartitionError
from streamhouse.log.metadata import Metadata
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import BatchHeader
from streamhouse.log.segment import SegmentBuilder, segment_key

log = logging.getLogger(__name__)

CommitListener = Callable[[str, int, int], None]
"""Called after each commit with (topic, partition, new high watermark)."""

_OFFSET = struct.Struct(">q")


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
        by_partition: dict[tuple[str, int], list[_Append]] = {}
        for item in appends:
            by_partition.setdefault((item.topic, item.partition), []).append(item)
        builder = SegmentBuilder()
        assigned: dict[tuple[str, int], int] = {}
        resolved: list[tuple[_Append, int]] = []
        failed: list[tuple[_Append, BaseException]] = []
        for key, items in by_partition.items():
            try:
                next_offset = self._next_offset(key)
            except StreamHouseError as exc:
                failed.extend((item, exc) for item in items)
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
        for item, exc in failed:
            item.future.set_exception(exc)
        if not assigned:
            return
        object_key = segment_key(next(self._sequence))
        try:
            data, entries = builder.build()
            self._store.put(object_key, data)
            self._metadata.commit_segment(object_key, entries)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the producers
            log.error("flush of %s failed: %s", object_key, exc)
            for key in assigned:
                self._next_offsets.pop(key, None)
            error = exc if isinstance(exc, StreamHouseError) else StorageError(str(exc))
            for item, _ in resolved:
                item.future.set_exception(error)
            return
        if self._on_segment is not None:
            self._on_segment(object_key, data)
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
