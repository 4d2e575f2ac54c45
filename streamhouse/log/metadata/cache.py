"""The metadata cache: what the produce and fetch paths read on every request, in memory.

:class:`CachedMetadata` wraps any :class:`~streamhouse.log.metadata.Metadata` and answers from
memory:

- topics (``get_topic``, ``list_topics``) for ``topic_ttl_s``, forgotten at once when this
  process changes them;
- high watermarks (``partition_offset(s)``), and the segment index of each partition read, as
  a sorted list of rows with their base offsets beside them: a lookup by offset is a
  ``bisect`` (O(log n)). Commits of this process extend them as they happen; commits of other
  processes arrive through the backend's *commit feed* (PostgreSQL ``LISTEN``/``NOTIFY``,
  SQLite polling ``PRAGMA data_version`` every ``sqlite.POLL_S``), which raises the high
  watermarks, tells the listeners (a long-polling Kafka fetch wakes) and lets the next lookup
  read just the new index rows.

While the feed is down (not yet connected, or its connection was lost), high watermarks and
index rows are read from the store as if there were no cache, and everything cached is
forgotten when it comes back (notifications may have been missed). Retention in another
process moves log start offsets and drops index rows without a commit, so all offsets and
index rows are read afresh every ``REFRESH_S`` (10 s, well inside the 60 s an unreferenced
object is kept); this process's own ``delete_records`` forgets the topic's at once. High
watermarks only grow
in the cache, so a slow read never moves one back. Writes, groups, the SQL catalog and
producer ids go straight to the store.

A topic deleted or created again by another process is noticed when its entry expires (its
topic id changed): until then, up to ``topic_ttl_s``, this process may answer with the old one.

Hit rates: :attr:`CachedMetadata.stats`, logged at INFO every ``STATS_LOG_S`` of use and at
close.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from streamhouse.log.metadata import (
    AgentInfo,
    CatalogEntry,
    Commit,
    CommitFeed,
    CommitThen,
    FlushedSegment,
    GroupOffset,
    Metadata,
    PartitionOffsets,
    ProducerBatch,
    SegmentEntryLike,
    SegmentRow,
    TopicInfo,
)
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome
from streamhouse.log.metadata.transactions import TransactionStore
from streamhouse.security.acl import AclBinding
from streamhouse.security.scram import ScramCredential

logger = logging.getLogger(__name__)

TOPIC_TTL_S = 1.0
"""How long a topic (its partition count, its config) is answered from memory."""
MAX_INDEX_ROWS = 500_000
"""Index rows held in memory over all partitions; the least recently read partitions go."""
STATS_LOG_S = 60.0
REFRESH_S = 10.0
"""High watermarks and index rows are all read again from the store this often: retention in
another process (``delete_records``) moves log start offsets and drops index rows without a
commit to hear, and their objects go ``object_delete_delay_s`` (60 s) later."""


@dataclass(slots=True)
class _Index:
    """The index rows of one partition from ``start`` on, each one right after the other."""

    start: int  # every row with last_offset >= start is here, up to `end`
    rows: list[SegmentRow] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)  # rows[i].base_offset, for bisect

    @property
    def end(self) -> int:
        """One past the last offset held."""
        return self.rows[-1].last_offset + 1 if self.rows else self.start

    def extend(self, rows: Sequence[SegmentRow]) -> None:
        for row in rows:  # rows of a partition never overlap
            if row.last_offset >= self.end:
                if row.base_offset < self.end:
                    # Compaction elsewhere replaced rows held here by one reaching past them:
                    # it holds their offsets too, so it takes their place.
                    del self.rows[bisect.bisect_left(self.bases, row.base_offset) :]
                    del self.bases[len(self.rows) :]
                self.rows.append(row)
                self.bases.append(row.base_offset)

    def select(
        self, from_offset: int, to_offset: int | None, limit: int | None
    ) -> list[SegmentRow]:
        i = max(bisect.bisect_right(self.bases, from_offset) - 1, 0)
        if i < len(self.rows) and self.rows[i].last_offset < from_offset:
            i += 1
        j = len(self.rows) if to_offset is None else bisect.bisect_left(self.bases, to_offset)
        if limit is not None:
            j = min(j, i + limit)
        return self.rows[i:j]


@dataclass(slots=True)
class CacheStats:
    """Lookups answered from memory (hits) and from the store (misses), by kind."""

    topic_hits: int = 0
    topic_misses: int = 0
    offset_hits: int = 0
    offset_misses: int = 0
    index_hits: int = 0
    index_misses: int = 0
    remote_commits: int = 0  # partition commits heard through the feed (any process)

    @property
    def hit_rate(self) -> float:
        hits = self.topic_hits + self.offset_hits + self.index_hits
        total = hits + self.topic_misses + self.offset_misses + self.index_misses
        return hits / total if total else 1.0


class CachedMetadata:
    """A :class:`~streamhouse.log.metadata.Metadata` answering reads from memory (see module)."""

    def __init__(
        self,
        inner: Metadata,
        *,
        topic_ttl_s: float = TOPIC_TTL_S,
        max_index_rows: int = MAX_INDEX_ROWS,
    ) -> None:
        self.inner = inner
        self._topic_ttl = topic_ttl_s
        self._max_rows = max_index_rows
        self._lock = threading.Lock()
        self._topics: dict[str, tuple[float, TopicInfo | None]] = {}
        self._topic_list: tuple[float, list[TopicInfo]] | None = None
        # The id of each topic whose offsets and index rows are cached: a topic deleted and
        # created again (by any process) is a new topic, and nothing cached of it holds.
        self._topic_ids: dict[str, str | None] = {}
        self._offsets: dict[tuple[str, int], PartitionOffsets] = {}
        self._indexes: OrderedDict[tuple[str, int], _Index] = OrderedDict()
        self._rows = 0
        self._live = False
        self._listeners: list[Callable[[str, int, int], None]] = []
        self.stats = CacheStats()
        self._logged_at = self._refreshed_at = time.monotonic()
        self._feed: CommitFeed | None = inner.commit_feed(self._heard, self._set_live)

    def add_listener(self, listener: Callable[[str, int, int], None]) -> None:
        """Call ``listener(topic, partition, high_watermark)`` for commits of other processes."""
        self._listeners.append(listener)

    @property
    def live(self) -> bool:
        """True while the commit feed hears every commit (high watermarks are cached)."""
        return self._live

    # -- the feed ------------------------------------------------------------------------------

    def _set_live(self, live: bool) -> None:
        with self._lock:
            self._live = live
            self._forget_offsets()

    def _forget_offsets(self) -> None:
        """Forget every high watermark and index row (with ``_lock`` held)."""
        self._offsets.clear()
        self._indexes.clear()
        self._rows = 0
        self._refreshed_at = time.monotonic()

    def _refresh(self) -> None:
        """Forget offsets and index rows read more than ``REFRESH_S`` ago."""
        if time.monotonic() - self._refreshed_at > REFRESH_S:
            with self._lock:
                self._forget_offsets()

    def _heard(self, commits: list[Commit]) -> None:
        raised = []
        with self._lock:
            for topic, partition, log_start, high_watermark in commits:
                key = (topic, partition)
                known = self._offsets.get(key)
                if log_start >= 0 and (known is None or log_start > known.log_start_offset):
                    # delete_records elsewhere: index rows below it are gone
                    index = self._indexes.pop(key, None)
                    self._rows -= len(index.rows) if index is not None else 0
                    if known is not None:
                        known = PartitionOffsets(log_start, known.high_watermark)
                        self._offsets[key] = known
                if known is not None and known.high_watermark < high_watermark:
                    self._offsets[key] = PartitionOffsets(known.log_start_offset, high_watermark)
                    raised.append((topic, partition, high_watermark))
                elif known is None:
                    raised.append((topic, partition, high_watermark))
            self.stats.remote_commits += len(raised)
        for commit in raised:
            for listener in self._listeners:
                try:
                    listener(*commit)
                except Exception:  # a listener must not stop the feed
                    logger.exception("commit listener failed")

    # -- topics --------------------------------------------------------------------------------

    def _forget_topic(self, name: str) -> None:
        with self._lock:
            self._topics.pop(name, None)
            self._topic_ids.pop(name, None)
            self._topic_list = None
            for key in [k for k in self._offsets if k[0] == name]:
                del self._offsets[key]
            for key in [k for k in self._indexes if k[0] == name]:
                self._rows -= len(self._indexes.pop(key).rows)

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        self._forget_topic(name)
        try:
            return self.inner.create_topic(name, partitions, config)
        finally:
            self._forget_topic(name)

    def delete_topic(self, name: str) -> list[str]:
        try:
            return self.inner.delete_topic(name)
        finally:
            self._forget_topic(name)

    def get_topic(self, name: str) -> TopicInfo | None:
        now = time.monotonic()
        cached = self._topics.get(name)
        if cached is not None and cached[0] > now:
            self.stats.topic_hits += 1
            return cached[1]
        self.stats.topic_misses += 1
        info = self.inner.get_topic(name)
        if self._topic_ids.get(name) != (info.topic_id if info else None):
            self._forget_topic(name)  # deleted or re-created elsewhere: its offsets are stale
            self._topic_ids[name] = info.topic_id if info else None
        self._topics[name] = (now + self._topic_ttl, info)
        return info

    def list_topics(self) -> list[TopicInfo]:
        now = time.monotonic()
        cached = self._topic_list
        if cached is not None and cached[0] > now:
            self.stats.topic_hits += 1
            return list(cached[1])
        self.stats.topic_misses += 1
        topics = self.inner.list_topics()
        self._topic_list = (now + self._topic_ttl, topics)
        return list(topics)

    def set_partitions(self, name: str, count: int) -> TopicInfo:
        try:
            return self.inner.set_partitions(name, count)
        finally:
            self._forget_topic(name)

    def set_topic_config(self, name: str, config: Mapping[str, str]) -> TopicInfo:
        try:
            return self.inner.set_topic_config(name, config)
        finally:
            self._forget_topic(name)

    def update_topic_config(self, name: str, changes: Mapping[str, str | None]) -> TopicInfo:
        try:
            return self.inner.update_topic_config(name, changes)
        finally:
            self._forget_topic(name)

    # -- offsets -------------------------------------------------------------------------------

    def _remember(self, topic: str, partition: int, offsets: PartitionOffsets) -> PartitionOffsets:
        """Cache ``offsets`` unless a higher high watermark is known already; the newer one."""
        key = (topic, partition)
        with self._lock:
            if not self._live:
                return offsets
            known = self._offsets.get(key)
            if known is not None and known.high_watermark >= offsets.high_watermark:
                return known
            self._offsets[key] = offsets
            return offsets

    def partition_offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        self._refresh()
        info = self.get_topic(topic)  # forgets a deleted or re-created topic's offsets
        if info is not None and self._live:
            found = {p: self._offsets.get((topic, p)) for p in range(info.partitions)}
            if all(found.values()):
                self.stats.offset_hits += 1
                return found  # type: ignore[return-value]
        self.stats.offset_misses += 1
        offsets = self.inner.partition_offsets(topic)
        return {p: self._remember(topic, p, o) for p, o in offsets.items()}

    def partition_offset(self, topic: str, partition: int) -> PartitionOffsets:
        self._refresh()
        self.get_topic(topic)  # forgets a deleted or re-created topic's offsets
        found = self._offsets.get((topic, partition)) if self._live else None
        if found is not None:
            self.stats.offset_hits += 1
            return found
        return self.fresh_offset(topic, partition)

    def fresh_offset(self, topic: str, partition: int) -> PartitionOffsets:
        """The partition's offsets read from the store (and cached)."""
        self.stats.offset_misses += 1
        return self._remember(topic, partition, self.inner.partition_offset(topic, partition))

    # -- the segment index ---------------------------------------------------------------------

    def commit_segment(
        self,
        object_key: str,
        entries: Sequence[SegmentEntryLike],
        producer_batches: Sequence[ProducerBatch] = (),
        *,
        fence: Lease | None = None,
        then: CommitThen | None = None,
    ) -> list[int]:
        entries = list(entries)
        bases = self.inner.commit_segment(
            object_key, entries, producer_batches, fence=fence, then=then
        )
        self._committed(object_key, entries, bases)
        self._log_stats()
        return bases

    def commit_segments(self, segments: Sequence[FlushedSegment]) -> list[list[int]]:
        segments = [
            FlushedSegment(s.object_key, list(s.entries), s.producer_batches, s.then)
            for s in segments
        ]
        bases = self.inner.commit_segments(segments)
        for segment, assigned in zip(segments, bases, strict=True):
            self._committed(segment.object_key, segment.entries, assigned)
        self._log_stats()
        return bases

    def _committed(
        self, object_key: str, entries: Sequence[SegmentEntryLike], bases: list[int]
    ) -> None:
        """Advance the cached high watermarks and extend the cached indexes by a commit."""
        with self._lock:
            for entry, base in zip(entries, bases, strict=True):
                key = (entry.topic, entry.partition)
                last = base + entry.last_offset - entry.base_offset
                known = self._offsets.get(key)
                if known is not None and known.high_watermark <= last:
                    self._offsets[key] = PartitionOffsets(known.log_start_offset, last + 1)
                index = self._indexes.get(key)
                if index is not None and index.end == base:
                    index.extend([_row(object_key, entry, base, last)])
                    self._rows += 1

    def is_indexed(self, object_key: str) -> bool:
        return self.inner.is_indexed(object_key)

    def restore_segments(self, rows: Sequence[SegmentRow], *, producer_id_floor: int = 0) -> None:
        try:
            self.inner.restore_segments(rows, producer_id_floor=producer_id_floor)
        finally:
            self._set_live(self._live)  # forget everything cached

    def segments(
        self,
        topic: str,
        partition: int,
        from_offset: int = 0,
        to_offset: int | None = None,
        *,
        limit: int | None = None,
    ) -> list[SegmentRow]:
        key = (topic, partition)
        self._refresh()
        self.get_topic(topic)  # forgets a deleted or re-created topic's index
        index = self._index(key, from_offset)
        if index is None:
            self.stats.index_misses += 1
            index = _Index(from_offset)
            index.extend(self.inner.segments(topic, partition, from_offset))
            self._keep(key, index, [])
        return self._select(key, index, from_offset, to_offset, limit)

    def segments_of_partitions(
        self, topic: str, ranges: Mapping[int, tuple[int, int | None]]
    ) -> dict[int, list[SegmentRow]]:
        self._refresh()
        self.get_topic(topic)
        if not self._live:
            return self.inner.segments_of_partitions(topic, ranges)
        indexes = self._load(topic, {p: start for p, (start, _) in ranges.items()})
        return {
            p: self._select((topic, p), indexes[p], start, end)
            for p, (start, end) in ranges.items()
        }

    def warm(self, topic: str, from_offsets: Mapping[int, int]) -> None:
        self._refresh()
        info = self.get_topic(topic)
        if self._live and info is not None:  # partitions the topic lacks: nothing to keep
            self._load(topic, {p: o for p, o in from_offsets.items() if 0 <= p < info.partitions})

    def _load(self, topic: str, from_offsets: Mapping[int, int]) -> dict[int, _Index]:
        """The cached index of each partition from its offset on, those missing read from
        the store in one statement; every partition's offsets cached too (one statement if
        any is missing), so that what follows reads nothing a partition at a time."""
        with self._lock:
            offsets_missing = any((topic, p) not in self._offsets for p in from_offsets)
        if offsets_missing:
            self.partition_offsets(topic)
        indexes = {p: self._index((topic, p), start) for p, start in from_offsets.items()}
        missing = {p: (start, None) for p, start in from_offsets.items() if indexes[p] is None}
        if missing:
            fetched = self.inner.segments_of_partitions(topic, missing)
            for partition, (start, _) in missing.items():
                self.stats.index_misses += 1
                index = indexes[partition] = _Index(start)
                self._keep((topic, partition), index, fetched[partition])
        return indexes  # type: ignore[return-value]

    def _index(self, key: tuple[str, int], from_offset: int) -> _Index | None:
        """``key``'s cached index if it holds every row from ``from_offset`` on."""
        with self._lock:
            index = self._indexes.get(key) if self._live else None
            if index is None or from_offset < index.start:
                return None
            self._indexes.move_to_end(key)
            return index

    def _select(
        self,
        key: tuple[str, int],
        index: _Index,
        from_offset: int,
        to_offset: int | None,
        limit: int | None = None,
    ) -> list[SegmentRow]:
        """``index``'s rows in the range, extended first by rows other processes committed."""
        topic, partition = key
        high_watermark = self.partition_offset(topic, partition).high_watermark
        if index.end < high_watermark and (to_offset is None or index.end < to_offset):
            self.stats.index_misses += 1  # other processes committed: read just their rows
            rows = self.inner.segments(topic, partition, index.end)
            if rows and rows[0].base_offset > index.end and index.rows:
                # The rows from its end on were deleted (DeleteRecords or retention elsewhere,
                # heard after this index was taken): what it holds is below the log start too.
                # Read the partition again rather than answer around the hole.
                index = _Index(from_offset)
                rows = self.inner.segments(topic, partition, from_offset)
            self._keep(key, index, rows)
        else:
            self.stats.index_hits += 1
        with self._lock:
            return index.select(from_offset, to_offset, limit)

    def _keep(self, key: tuple[str, int], index: _Index, rows: list[SegmentRow]) -> None:
        """Extend ``index`` by ``rows`` and keep it as ``key``'s (unless the feed is down)."""
        with self._lock:
            before = len(index.rows)
            if not self._live:
                index.extend(rows)
                return
            index.extend(rows)
            current = self._indexes.get(key)
            if current is not index:
                if current is not None:
                    self._rows -= len(current.rows)
                self._indexes[key] = index
                before = 0
            self._rows += len(index.rows) - before
            while self._rows > self._max_rows and len(self._indexes) > 1:
                _, evicted = self._indexes.popitem(last=False)
                self._rows -= len(evicted.rows)

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        try:
            return self.inner.delete_records(topic, offsets)
        finally:
            self._forget_topic(topic)  # log starts moved, index rows dropped

    def replace_segments(self, swap: SegmentSwap, lease: Lease) -> SwapOutcome:
        key = (swap.new.topic, swap.new.partition)
        try:
            return self.inner.replace_segments(swap, lease)
        finally:
            with self._lock:  # the partition's rows changed: read them afresh
                index = self._indexes.pop(key, None)
                self._rows -= len(index.rows) if index is not None else 0

    def oldest_row_within_bytes(self, topic: str, partition: int, max_bytes: int) -> int | None:
        return self.inner.oldest_row_within_bytes(topic, partition, max_bytes)

    def due_objects(self, unreferenced_before_ms: int) -> list[str]:
        return self.inner.due_objects(unreferenced_before_ms)

    def forget_objects(self, keys: Sequence[str]) -> None:
        try:
            self.inner.forget_objects(keys)
        finally:
            with self._lock:  # cached rows may name the deleted objects (rows another
                self._indexes.clear()  # process's compaction replaced): read them afresh
                self._rows = 0

    def forget_producers(self, idle_before_ms: int) -> int:
        return self.inner.forget_producers(idle_before_ms)

    def segment_for_timestamp(
        self, topic: str, partition: int, timestamp_ms: int
    ) -> SegmentRow | None:
        return self.inner.segment_for_timestamp(topic, partition, timestamp_ms)

    # -- passed through ------------------------------------------------------------------------

    def commit_group_offsets(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], tuple[int, str]],
        lease: Lease | None = None,
    ) -> None:
        self.inner.commit_group_offsets(group, offsets, lease)

    def group_offsets(self, group: str) -> dict[tuple[str, int], GroupOffset]:
        return self.inner.group_offsets(group)

    def list_groups(self) -> list[str]:
        return self.inner.list_groups()

    def delete_group(self, group: str) -> None:
        self.inner.delete_group(group)

    def delete_group_offsets(self, group: str, partitions: Iterable[tuple[str, int]]) -> None:
        self.inner.delete_group_offsets(group, partitions)

    def put_catalog(
        self, entry_name: str, kind: str, sql: str, *, replace: bool = False
    ) -> CatalogEntry:
        return self.inner.put_catalog(entry_name, kind, sql, replace=replace)

    def get_catalog(self, name: str) -> CatalogEntry | None:
        return self.inner.get_catalog(name)

    def list_catalog(self) -> list[CatalogEntry]:
        return self.inner.list_catalog()

    def drop_catalog(self, name: str) -> bool:
        return self.inner.drop_catalog(name)

    def put_credentials(self, user: str, credentials: Sequence[ScramCredential]) -> None:
        self.inner.put_credentials(user, credentials)

    def get_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        return self.inner.get_credential(user, mechanism)

    def list_credentials(self) -> list[tuple[str, str, int]]:
        return self.inner.list_credentials()

    def delete_credentials(self, user: str) -> bool:
        return self.inner.delete_credentials(user)

    @property
    def transactions(self) -> TransactionStore:
        return self.inner.transactions

    def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        self.inner.create_acls(bindings)

    def list_acls(self) -> list[AclBinding]:
        return self.inner.list_acls()

    def delete_acls(self, bindings: Sequence[AclBinding]) -> None:
        self.inner.delete_acls(bindings)

    def broker_config(self, broker: str) -> dict[str, str]:
        return self.inner.broker_config(broker)

    def alter_broker_config(
        self, broker: str, changes: Mapping[str, str | None], *, replace: bool = False
    ) -> dict[str, str]:
        return self.inner.alter_broker_config(broker, changes, replace=replace)

    def security_version(self) -> int:
        return self.inner.security_version()

    def next_producer_id(self) -> int:
        return self.inner.next_producer_id()

    def register_agent(self, agent_id: str, host: str, port: int, zone: str, group: str) -> None:
        self.inner.register_agent(agent_id, host, port, zone, group)

    def heartbeat_agent(self, agent_id: str) -> bool:
        return self.inner.heartbeat_agent(agent_id)

    def deregister_agent(self, agent_id: str) -> None:
        self.inner.deregister_agent(agent_id)

    def list_agents(self) -> list[AgentInfo]:
        return self.inner.list_agents()

    def forget_agents(self, silent_for_ms: int) -> int:
        return self.inner.forget_agents(silent_for_ms)

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> Lease | None:
        return self.inner.acquire_lease(name, holder, ttl_ms)

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        return self.inner.renew_lease(lease, ttl_ms)

    def release_lease(self, lease: Lease) -> None:
        self.inner.release_lease(lease)

    def list_leases(self, prefix: str = "") -> list[Lease]:
        return self.inner.list_leases(prefix)

    def record_query_checkpoint(self, lease: Lease, checkpoint: QueryCheckpoint) -> None:
        self.inner.record_query_checkpoint(lease, checkpoint)

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        return self.inner.list_query_checkpoints()

    def query_checkpoint(self, query: str) -> str | None:
        return self.inner.query_checkpoint(query)

    def close(self) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        self._log_stats(force=True)
        self.inner.close()

    def __repr__(self) -> str:
        return f"CachedMetadata({self.inner!r})"

    def _log_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._logged_at < STATS_LOG_S:
            return
        self._logged_at = now
        s = self.stats
        logger.info(
            "metadata cache: %.1f%% hits (topics %d/%d, offsets %d/%d, index %d/%d);"
            " %d partition commit(s) heard through the feed; %d index row(s) held",
            100 * s.hit_rate,
            s.topic_hits, s.topic_hits + s.topic_misses,
            s.offset_hits, s.offset_hits + s.offset_misses,
            s.index_hits, s.index_hits + s.index_misses,
            s.remote_commits, self._rows,
        )  # fmt: skip


def _row(object_key: str, entry: SegmentEntryLike, base: int, last: int) -> SegmentRow:
    return SegmentRow(
        object_key, entry.topic, entry.partition, base, last, entry.position, entry.length,
        entry.min_timestamp, entry.max_timestamp, entry.record_count, entry.crc,
    )  # fmt: skip
