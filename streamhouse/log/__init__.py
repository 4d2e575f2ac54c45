"""The integrated log: topics of partitions of records, stored as segment objects.

>>> import tempfile
>>> from streamhouse.config import Settings
>>> log = Log.open(Settings.load(data_dir=tempfile.mkdtemp()))
>>> log.create_topic("events", partitions=4).partitions
4
>>> log.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import pyarrow.compute as pc

from streamhouse.config import Settings
from streamhouse.errors import (
    CorruptRecordError,
    InvalidRecordError,
    RecordTooLargeError,
    StorageError,
    StreamHouseError,
    UnknownPartitionError,
    UnknownTopicError,
)
from streamhouse.log import compaction_notes
from streamhouse.log.compaction import CompactionReport, compact, compactor_id
from streamhouse.log.key_compaction import is_compacted
from streamhouse.log.metadata import (
    Metadata,
    PartitionOffsets,
    SegmentRow,
    TopicInfo,
    open_metadata,
    sqlite_path,
)
from streamhouse.log.metadata.cache import CachedMetadata
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.objectstore import ObjectStore, open_object_store
from streamhouse.log.reader import FetchResult, LogReader, ObjectCache
from streamhouse.log.records import BatchHeader, decode_batches, split_batches, verify_crc
from streamhouse.log.records.header import stamp_log_append_time
from streamhouse.log.retention import RetentionReport, enforce_retention
from streamhouse.log.segment import SEGMENT_PREFIX
from streamhouse.log.sequence_notes import delete_notes
from streamhouse.log.topic_config import check_config_name, validate_topic_config
from streamhouse.log.writer import CommitHook, LogWriter

__all__ = ["FetchResult", "Log", "PartitionOffsets", "TopicInfo"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = "max.message.bytes"
TIMESTAMP_TYPE = "message.timestamp.type"
LOG_APPEND_TIME = "LogAppendTime"

TOPIC_CACHE_SECONDS = 1.0
"""How long the produce path trusts a topic's cached partition count and config.

Changes made through this :class:`Log` take effect at once; changes by another process
sharing the metadata store within this many seconds."""

SplitBatches = list[tuple[int, int, BatchHeader]]
"""``(start, end, header)`` of each batch, as :func:`~streamhouse.log.records.split_batches`."""


def _refuse_lost_metadata(
    store: ObjectStore, problem: str, still: Callable[[], bool] = lambda: True
) -> None:
    """Raise ``StorageError`` if ``store`` holds segment objects and ``still()`` says the
    ``problem`` persists (then it means data loss)."""
    keys = store.list(SEGMENT_PREFIX)
    if keys and still():
        raise StorageError(
            f"{problem} but the object store holds {len(keys)} segment object(s), e.g. {keys[0]}:"
            " refusing to open the data as an empty log; run `streamhouse fsck"
            " --rebuild-metadata` to rebuild the metadata from the objects"
        )


@dataclass(frozen=True, slots=True)
class _ProduceTarget:
    """What the produce path checks of a topic, as cached (see :meth:`Log._produce_target`)."""

    expiry: float  # time.monotonic() after which it is read again
    info: TopicInfo
    limit: int  # max.message.bytes
    compacted: bool  # a batch without keys is refused
    stamps_time: bool  # message.timestamp.type=LogAppendTime


class Log:
    """One process's view of the log: the write path, the read path and the catalog."""

    def __init__(self, settings: Settings, store: ObjectStore, metadata: Metadata) -> None:
        self.settings = settings
        self.store = store
        self.metadata = CachedMetadata(metadata)
        metadata = self.metadata
        self.cache = ObjectCache(store, settings.cache_bytes)
        self.writer = LogWriter(
            store,
            metadata,
            linger_ms=settings.linger_ms,
            linger_when_idle=settings.linger_when_idle,
            max_bytes=settings.max_flush_bytes,
            on_segment=self.cache.put,
        )
        self.reader = LogReader(metadata, self.cache, fresh_offset=metadata.fresh_offset)
        self._topics: dict[str, _ProduceTarget] = {}
        self.compactor = compactor_id()  # this process's name as a holder of compaction leases

    @classmethod
    def open(cls, settings: Settings) -> Log:
        """Open the stores; ``StorageError`` if the metadata is missing or empty while the
        object store holds segment objects (the metadata was lost: it is never started afresh
        over existing data)."""
        store = open_object_store(settings)
        try:
            path = sqlite_path(settings)  # None: PostgreSQL, where nothing is a file
            existed = path is None or path.exists()
            if not existed:
                _refuse_lost_metadata(store, f"metadata store {path} is missing")
            metadata = open_metadata(settings)
            try:
                if existed and not metadata.list_topics():
                    # Asked again after the listing: another process may be creating its first
                    # topic and object in this new data dir right now.
                    _refuse_lost_metadata(
                        store,
                        f"metadata store {path or repr(metadata)} holds no topics",
                        still=lambda: not metadata.list_topics(),
                    )
            except BaseException:
                metadata.close()
                raise
        except BaseException:
            store.close()
            raise
        return cls(settings, store, metadata)

    # -- topics -----------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        """``InvalidConfigError`` for a config Kafka does not define or the log refuses."""
        config = validate_topic_config(config)
        self.writer.forget(name)
        self._topics.pop(name, None)
        return self.metadata.create_topic(name, partitions, config)

    def delete_topic(self, name: str) -> None:
        self.writer.flush()
        self._topics.pop(name, None)
        orphans = self.metadata.delete_topic(name)
        self._topics.pop(name, None)
        self.writer.forget(name)
        for key in orphans:
            self.cache.discard(key)
            self.store.delete(key)
        delete_notes(self.store, orphans)
        compaction_notes.delete_notes(self.store, orphans)

    def get_topic(self, name: str) -> TopicInfo | None:
        return self.metadata.get_topic(name)

    def topic(self, name: str) -> TopicInfo:
        info = self.metadata.get_topic(name)
        if info is None:
            raise UnknownTopicError(name)
        return info

    def list_topics(self) -> list[TopicInfo]:
        return self.metadata.list_topics()

    def topic_infos(self, names: Iterable[str] | None) -> list[TopicInfo]:
        """The topics ``names`` (``None``: every topic); ``UnknownTopicError`` for one that
        does not exist."""
        return self.metadata.list_topics() if names is None else [self.topic(n) for n in names]

    def set_partitions(self, name: str, count: int) -> TopicInfo:
        try:
            return self.metadata.set_partitions(name, count)
        finally:
            self._topics.pop(name, None)

    def set_topic_config(self, name: str, config: Mapping[str, str]) -> TopicInfo:
        """Replace the topic's whole config (checked as :meth:`create_topic` does)."""
        config = validate_topic_config(config)
        try:
            return self.metadata.set_topic_config(name, config)
        finally:
            self._topics.pop(name, None)

    def alter_topic_config(self, name: str, changes: Mapping[str, str | None]) -> TopicInfo:
        """Set the configs ``changes`` names to its values, and back to their defaults where the
        value is ``None``; the others stay (one metadata transaction). ``InvalidConfigError``
        changes nothing."""
        for key in changes:
            check_config_name(key)
        validate_topic_config({k: v for k, v in changes.items() if v is not None})
        try:
            return self.metadata.update_topic_config(name, changes)
        finally:
            self._topics.pop(name, None)

    # -- retention --------------------------------------------------------------------------

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Delete the records of each partition before ``offsets[partition]`` (-1: all): the
        log start offset moves there (never back). Returns the new log start offsets;
        ``OffsetOutOfRangeError`` above the high watermark. Objects are deleted later, by
        :meth:`enforce_retention`, after the grace period."""
        return self.metadata.delete_records(topic, offsets)

    def enforce_retention(self, topics: Iterable[str] | None = None) -> RetentionReport:
        """One retention pass now (see :mod:`streamhouse.log.retention`)."""
        return enforce_retention(self, topics)

    def compact(self, topics: Iterable[str] | None = None) -> CompactionReport:
        """One compaction pass now (see :mod:`streamhouse.log.compaction`)."""
        return compact(self, topics, holder=self.compactor)

    # -- produce ----------------------------------------------------------------------------

    def max_message_bytes(self, info: TopicInfo) -> int:
        value = info.config.get(MAX_MESSAGE_BYTES)
        return int(value) if value else self.settings.max_message_bytes

    def append(
        self,
        topic: str,
        partition: int,
        batches: bytes | memoryview,
        split: SplitBatches | None = None,
        fence: Lease | None = None,
    ) -> Future[int]:
        """Append client batches; the future resolves to the first batch's base offset once durable.

        ``split`` is ``split_batches(batches)`` if the caller has it already. With ``fence``
        the batches are committed only while that lease is held (``FencedError`` otherwise).
        """
        batches, headers = self._validate(topic, partition, batches, split)
        data = batches if isinstance(batches, bytes) else bytes(batches)
        return self.writer.append(topic, partition, data, headers, fence)

    def append_together(
        self,
        topic: str,
        batches: Mapping[int, bytes | bytearray],
        fence: Lease | None = None,
        keyed: bool = False,
        *,
        framed_here: bool = False,
    ) -> dict[int, Future[int]]:
        """:meth:`append` to several partitions of ``topic`` (partition -> batches), queued at
        once: an idle writer flushes them in one object instead of the first alone. ``keyed``:
        the caller built the batches and every record has a key, so a compacted topic need not
        decompress them to look for a record without one.

        ``framed_here``: batches this process framed itself (their CRC-32C computed just now),
        not checked again; given as a ``bytearray``, each is the writer's from here on,
        stamped with its offsets in place rather than copied (an exchange record is
        megabytes)."""
        appends = []
        for partition, data in batches.items():
            stamped, headers = self._validate(
                topic, partition, data, None, verified=framed_here, keyed=keyed
            )
            if not (framed_here and isinstance(stamped, bytearray)):
                stamped = bytes(stamped)
            appends.append((topic, partition, stamped, headers))
        futures = self.writer.append_together(appends, fence)
        return dict(zip(batches, futures, strict=True))

    def append_async(
        self,
        topic: str,
        partition: int,
        batches: bytes | memoryview,
        split: SplitBatches | None = None,
        *,
        urgent: bool = False,
        now_ms: int | None = None,
    ) -> asyncio.Future[int]:
        """:meth:`append` from a running event loop, with an asyncio future resolved on it.

        ``batches`` may be a view of a request frame (no copy): it must not change until the
        future is resolved. ``urgent`` flushes without lingering (a transaction marker).
        ``now_ms`` is the log-append time to stamp (default: now) where the topic wants one.
        """
        batches, headers = self._validate(topic, partition, batches, split, now_ms)
        return self.writer.append_async(topic, partition, batches, headers, urgent=urgent)

    def append_early(
        self,
        topic: str,
        partition: int,
        batches: bytes | memoryview,
        split: SplitBatches | None,
        on_loss: Callable[[], None],
        now_ms: int | None = None,
    ) -> tuple[asyncio.Future[int], int | None]:
        """:meth:`append_async` of a transactional batch answered before it is durable:
        ``(future, base offset reserved)``, the offset ``None`` if it cannot be reserved now
        (answer once durable then); see :meth:`LogWriter.append_early`."""
        batches, headers = self._validate(topic, partition, batches, split, now_ms)
        return self.writer.append_early(topic, partition, batches, headers, on_loss)

    def append_hooked(
        self, appends: Sequence[tuple[str, int, bytes]], hook: CommitHook
    ) -> list[asyncio.Future[int] | StreamHouseError]:
        """:meth:`append_async` of batches to several partitions, flushed at once in one object
        whose commit runs ``hook`` (see :data:`~streamhouse.log.writer.CommitHook`): each
        partition's future, or the error that refused its batches (an unknown partition)."""
        refused: list[StreamHouseError | None] = []
        valid = []
        checked: dict[int, SplitBatches] = {}  # id of data -> its batches, CRCs verified
        for topic, partition, data in appends:
            split = checked.get(id(data))  # the same batches to several partitions (markers)
            verified = split is not None  # are split and verified once
            try:
                split = split_batches(data) if split is None else split
                validated = self._validate(topic, partition, data, split, verified=verified)
            except StreamHouseError as exc:
                refused.append(exc)
                continue
            checked[id(data)] = split
            valid.append((topic, partition, *validated))
            refused.append(None)
        futures = iter(self.writer.append_hooked(valid, hook) if valid else [])
        return [next(futures) if error is None else error for error in refused]

    def stamps_append_time(self, topic: str) -> bool:
        """Whether appends to the topic carry the log-append time (``message.timestamp.type``
        ``LogAppendTime``); False for a topic that does not exist."""
        try:
            return self._produce_target(topic).stamps_time
        except UnknownTopicError:
            return False

    def _produce_target(self, topic: str) -> _ProduceTarget:
        """The topic as produce checks it (cached up to ``TOPIC_CACHE_SECONDS``)."""
        now = time.monotonic()
        cached = self._topics.get(topic)
        if cached is not None and cached.expiry > now:
            # a lookup the metadata cache would otherwise have answered: counted as its hit
            self.metadata.stats.topic_hits += 1
            return cached
        info = self.topic(topic)
        target = _ProduceTarget(
            now + TOPIC_CACHE_SECONDS,
            info,
            self.max_message_bytes(info),
            is_compacted(info.config),
            info.config.get(TIMESTAMP_TYPE) == LOG_APPEND_TIME,
        )
        self._topics[topic] = target
        return target

    def _validate(
        self,
        topic: str,
        partition: int,
        batches: bytes | memoryview,
        split: SplitBatches | None,
        now_ms: int | None = None,
        *,
        verified: bool = False,
        keyed: bool = False,
    ) -> tuple[bytes | memoryview | bytearray, list[tuple[int, BatchHeader]]]:
        """The batches to append (stamped with the log-append time where the topic's
        ``message.timestamp.type`` is ``LogAppendTime``, as Kafka's broker does) and each
        one's start and header; the errors Kafka gives for batches it refuses. ``verified``:
        the CRCs of these very bytes were checked already; ``keyed``: the records are known to
        have keys (see :meth:`append_together`)."""
        target = self._produce_target(topic)
        if not 0 <= partition < target.info.partitions:
            raise UnknownPartitionError(topic, partition)
        headers = []
        split = split_batches(batches) if split is None else split
        limit = target.limit
        for start, end, header in split:
            if end - start > limit:
                raise RecordTooLargeError(
                    f"batch of {end - start} bytes exceeds max.message.bytes={limit} of {topic!r}"
                )
            if not verified and not verify_crc(batches, start, end):
                raise CorruptRecordError(f"record batch at byte {start} fails its CRC-32C")
            headers.append((start, header))
        if not headers:
            raise CorruptRecordError("no record batch in the produce request")
        if (
            not keyed
            and target.compacted
            and decode_batches(batches, verify=False)["key"].null_count
        ):
            raise InvalidRecordError(  # Kafka's words
                f"Compacted topic cannot accept message without key in topic partition"
                f" {topic}-{partition}."
            )
        if target.stamps_time:
            now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
            batches = stamp_log_append_time(batches, split, now_ms)
            headers = [(start, header) for start, _, header in split_batches(batches)]
        return batches, headers

    def flush(self) -> None:
        self.writer.flush()

    def add_listener(self, listener: Callable[[str, int, int], None]) -> None:
        """Call ``listener(topic, partition, high_watermark)`` after commits of this process
        (from the committer thread) and of others (from the metadata cache's feed)."""
        self.writer.add_listener(listener)
        self.metadata.add_listener(listener)

    def announce(self, keys: Iterable[tuple[str, int]]) -> None:
        """Tell this process's commit listeners that the last stable offsets of ``keys``
        moved (a transaction ended here), as after a commit there: readers waiting for
        them look again."""
        high: dict[tuple[str, int], int] = {}
        for topic, partition in set(keys):
            try:
                high[(topic, partition)] = self.metadata.partition_offset(
                    topic, partition
                ).high_watermark
            except (UnknownTopicError, UnknownPartitionError):  # gone: nobody waits on it
                continue
        self.writer.announce(high)

    # -- fetch ------------------------------------------------------------------------------

    def offsets(self, topic: str, partition: int) -> PartitionOffsets:
        return self.reader.offsets(topic, partition)

    def fetch(
        self, topic: str, partition: int, offset: int, max_bytes: int = 1 << 20
    ) -> FetchResult:
        return self.reader.fetch(topic, partition, offset, max_bytes)

    def offset_for_timestamp(
        self, topic: str, partition: int, timestamp_ms: int
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record at or above the log start offset whose
        timestamp is >= ``timestamp_ms``."""
        start = self.offsets(topic, partition).log_start_offset  # raises for unknown ones
        row = self.metadata.segment_for_timestamp(topic, partition, timestamp_ms)
        if row is None:
            return None
        found = self._first_at_or_after(row, timestamp_ms, start)
        if found is None and row.base_offset < start:
            # The row holding the log start had matches only below it (DeleteRecords inside
            # a row): the next row with a match, if any (rare: one index read).
            later = self.metadata.segments(topic, partition, row.last_offset + 1)
            row = next((r for r in later if r.max_timestamp >= timestamp_ms), None)
            found = None if row is None else self._first_at_or_after(row, timestamp_ms, start)
        return found

    def _first_at_or_after(
        self, row: SegmentRow, timestamp_ms: int, start: int
    ) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record of ``row`` at or after ``timestamp_ms`` and
        at or above offset ``start``."""
        table = decode_batches(self.reader.run_bytes(row))
        ts = pc.cast(table["timestamp"], "int64")
        mask = pc.and_(pc.greater_equal(ts, timestamp_ms), pc.greater_equal(table["offset"], start))
        offsets, stamps = table["offset"].filter(mask), ts.filter(mask)
        if not len(offsets):  # max_timestamp promised one; the batch headers disagree
            return None
        return offsets[0].as_py(), stamps[0].as_py()

    def close(self) -> None:
        """Flush what is pending, then release the metadata and object stores."""
        try:
            self.writer.close()
        finally:
            self.metadata.close()
            self.store.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
