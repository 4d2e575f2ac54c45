"""The metadata store: the catalog of the log (topics, partition offsets, the segment index,
consumer group offsets, SQL catalog entries, producer ids).

One protocol, :class:`Metadata`; SQLite (:mod:`.sqlite`) is the default implementation,
PostgreSQL (:mod:`.postgres`) the one several processes share. Every method is safe to call
from several threads at once.

>>> from streamhouse.config import Settings
>>> import tempfile
>>> md = open_metadata(Settings(data_dir=tempfile.mkdtemp()))
>>> md.create_topic("events", partitions=2).partitions
2
>>> md.close()
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from streamhouse.errors import ConfigError, LogError

if TYPE_CHECKING:
    from streamhouse.config import Settings
    from streamhouse.log.metadata.checkpoints import QueryCheckpoint
    from streamhouse.log.metadata.leases import Lease
    from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome
    from streamhouse.log.metadata.transactions import TransactionStore
    from streamhouse.security.acl import AclBinding
    from streamhouse.security.scram import ScramCredential

__all__ = [
    "CATALOG_KINDS",
    "AgentInfo",
    "CatalogEntry",
    "Commit",
    "CommitFeed",
    "FlushedSegment",
    "GroupOffset",
    "Metadata",
    "PartitionOffsets",
    "ProducerBatch",
    "SegmentEntryLike",
    "SegmentRow",
    "TopicInfo",
    "open_metadata",
    "sqlite_path",
    "validate_topic_name",
]

CATALOG_KINDS = frozenset({"stream", "table", "view", "query"})
"""The kinds of entry the SQL catalog holds."""

MAX_TOPIC_NAME_LENGTH = 249
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")


@dataclass(frozen=True, slots=True)
class TopicInfo:
    """A topic: its partition count, its config (string to string) and a stable UUID string."""

    name: str
    partitions: int
    config: dict[str, str]
    topic_id: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """One index row: bytes ``[position, position + length)`` of ``object_key`` hold the
    batches of offsets ``[base_offset, last_offset]`` of one partition."""

    object_key: str
    topic: str
    partition: int
    base_offset: int
    last_offset: int
    position: int
    length: int
    min_timestamp: int
    max_timestamp: int
    record_count: int
    crc: int


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """``log_start_offset`` is the first readable offset, ``high_watermark`` the next to assign."""

    log_start_offset: int
    high_watermark: int


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A named SQL object: ``kind`` is one of :data:`CATALOG_KINDS`, ``sql`` its definition."""

    name: str
    kind: str
    sql: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class GroupOffset:
    """A consumer group's committed offset of one partition, with the client's metadata string."""

    offset: int
    metadata: str
    commit_ms: int


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """A ``serve`` process sharing the store: clients reach it at ``host:port``.

    ``heartbeat_age_ms`` is how long ago, by the store's clock when it was read, the agent
    last heartbeat: readers compare it with their TTL, so the clocks of the agents never
    need to agree.
    """

    agent_id: str
    host: str
    port: int
    zone: str
    group: str
    started_ms: int
    heartbeat_ms: int
    heartbeat_age_ms: int


class SegmentEntryLike(Protocol):
    """What :meth:`Metadata.commit_segment` reads of each entry (``log.segment.SegmentEntry``)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def base_offset(self) -> int: ...
    @property
    def last_offset(self) -> int: ...
    @property
    def position(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def min_timestamp(self) -> int: ...
    @property
    def max_timestamp(self) -> int: ...
    @property
    def record_count(self) -> int: ...
    @property
    def crc(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ProducerBatch:
    """A batch of an idempotent producer inside a segment commit: it lies in entry number
    ``entry`` of the commit, ``delta`` offsets after the entry's first, and holds sequence
    numbers ``first_sequence`` to ``last_sequence`` (modulo 2**31) of that producer on the
    entry's partition; both are -1 for a transaction marker, which carries an epoch only."""

    entry: int
    delta: int
    producer_id: int
    producer_epoch: int
    first_sequence: int
    last_sequence: int


CommitThen = Callable[[Any, Sequence[int]], None]
"""What a segment commit runs in its transaction after indexing the segment: given the store's
connection and the base offsets assigned to the entries; if it raises, nothing is committed."""


@dataclass(frozen=True, slots=True)
class FlushedSegment:
    """One segment object put by a flush, to be indexed: its entries and the batches of
    idempotent producers in them (see :meth:`Metadata.commit_segment`)."""

    object_key: str
    entries: Sequence[SegmentEntryLike]
    producer_batches: Sequence[ProducerBatch] = ()
    then: CommitThen | None = None


Commit = tuple[str, int, int, int]
"""(topic, partition, log start offset, high watermark) after a commit or a ``delete_records``;
the log start is -1 where it did not change (a commit)."""


class CommitFeed(Protocol):
    """What :meth:`Metadata.commit_feed` started; :meth:`stop` ends its thread."""

    def stop(self) -> None: ...


class Metadata(Protocol):
    """The catalog of the log. Failures of the store itself raise ``StorageError``."""

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        """Create a topic; ``TopicExistsError`` if it exists, ``LogError`` for a bad name/count."""
        ...

    def delete_topic(self, name: str) -> list[str]:
        """Remove a topic, its partitions, index rows and group offsets; ``UnknownTopicError``.

        Returns the object keys no index row references any more (the caller deletes them)."""
        ...

    def get_topic(self, name: str) -> TopicInfo | None:
        """The topic, or ``None``."""
        ...

    def list_topics(self) -> list[TopicInfo]:
        """Every topic, sorted by name."""
        ...

    def set_partitions(self, name: str, count: int) -> TopicInfo:
        """Grow a topic to ``count`` partitions; ``LogError`` if that would shrink it."""
        ...

    def set_topic_config(self, name: str, config: Mapping[str, str]) -> TopicInfo:
        """Replace the topic's whole config with ``config``."""
        ...

    def update_topic_config(self, name: str, changes: Mapping[str, str | None]) -> TopicInfo:
        """Set the keys of ``changes`` to their values (``None``: remove the key) and keep the
        others, in one transaction; ``UnknownTopicError``."""
        ...

    def partition_offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        """Log start and high watermark of every partition; ``UnknownTopicError``."""
        ...

    def partition_offset(self, topic: str, partition: int) -> PartitionOffsets:
        """Log start and high watermark of one partition (one row read, however many the topic
        has); ``UnknownTopicError``/``UnknownPartitionError``."""
        ...

    def commit_segment(
        self,
        object_key: str,
        entries: Sequence[SegmentEntryLike],
        producer_batches: Sequence[ProducerBatch] = (),
        *,
        fence: Lease | None = None,
        then: CommitThen | None = None,
    ) -> list[int]:
        """Index ``entries`` of one object and advance each high watermark, all or nothing.

        With ``fence``, only while that lease is held, checked in the same transaction:
        ``FencedError`` and nothing indexed otherwise.

        The store sequences offsets: each entry is indexed at its partition's high watermark
        (entries of one partition one after the other), whatever base offset it was written
        with; returns the base offset assigned to each entry, in order. Several writers
        committing to one partition are serialized, never refused.
        ``UnknownTopicError``/``UnknownPartitionError`` for unknown partitions.

        ``producer_batches`` are checked against the sequence state of their producers in the
        same transaction (see ``rules.check_producer_batches``), which they then advance; if
        any is a duplicate or out of order, nothing is committed and
        ``RefusedBatchesError`` says which.

        ``then`` runs in the same transaction, after the indexing (see :data:`CommitThen`);
        only the SQLite store runs one (a store shared by agents refuses it)."""
        ...

    def commit_segments(self, segments: Sequence[FlushedSegment]) -> list[list[int]]:
        """Group commit: index several objects in one transaction, as :meth:`commit_segment`
        would one after the other (the entries of each later object follow those of the
        earlier ones in their partitions), all or nothing; returns each object's base
        offsets. ``RefusedBatchesError`` (its verdicts indexed by the producer batches of the
        first object with a refused one) and nothing committed if any batch is refused."""
        ...

    def is_indexed(self, object_key: str) -> bool:
        """True if an index row names ``object_key`` (its commit happened)."""
        ...

    def restore_segments(self, rows: Sequence[SegmentRow], *, producer_id_floor: int = 0) -> None:
        """Index ``rows`` as given, in one transaction: a rebuild from segment footers.

        Each partition with rows gets its lowest base offset as log start and one past its
        highest last offset as high watermark; rows may leave gaps but must not overlap
        (``LogError``). Producer ids handed out afterwards are above ``producer_id_floor``.
        The topics and partitions must exist (``UnknownPartitionError``)."""
        ...

    def segments(
        self,
        topic: str,
        partition: int,
        from_offset: int = 0,
        to_offset: int | None = None,
        *,
        limit: int | None = None,
    ) -> list[SegmentRow]:
        """Rows with ``last_offset >= from_offset`` (and ``base_offset < to_offset``), by offset."""
        ...

    def segments_of_partitions(
        self, topic: str, ranges: Mapping[int, tuple[int, int | None]]
    ) -> dict[int, list[SegmentRow]]:
        """:meth:`segments` of each partition of ``ranges`` (partition -> (from offset, to
        offset)), read from the store at once rather than a partition at a time."""
        ...

    def warm(self, topic: str, from_offsets: Mapping[int, int]) -> None:
        """Make the reads of these partitions from these offsets that follow read nothing a
        partition at a time: a cache loads what it lacks of them at once; a store does
        nothing."""
        ...

    def segment_for_timestamp(
        self, topic: str, partition: int, timestamp_ms: int
    ) -> SegmentRow | None:
        """The first row (lowest offset) whose ``max_timestamp >= timestamp_ms``, or ``None``."""
        ...

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Advance each partition's log start offset to ``offsets[partition]`` (-1: the high
        watermark; never backwards) and drop the index rows wholly below it, in one transaction.

        Objects no index row names any more are queued (see :meth:`due_objects`). Returns the
        new log start of each partition; ``OffsetOutOfRangeError`` for an offset above the high
        watermark, ``UnknownTopicError``/``UnknownPartitionError``; all or nothing."""
        ...

    def oldest_row_within_bytes(self, topic: str, partition: int, max_bytes: int) -> int | None:
        """Base offset of the oldest index row that retention by ``max_bytes`` keeps (a row goes
        only if the rows after it hold at least ``max_bytes``); ``None`` if it keeps none."""
        ...

    def due_objects(self, unreferenced_before_ms: int) -> list[str]:
        """Queued object keys unreferenced since at most ``unreferenced_before_ms`` that no
        index row names (the caller deletes them, then calls :meth:`forget_objects`)."""
        ...

    def forget_objects(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` from the deletion queue (their objects are gone)."""
        ...

    def forget_producers(self, idle_before_ms: int) -> int:
        """Forget the sequence state of producers on partitions they last wrote to before
        ``idle_before_ms`` (as Kafka's ``producer.id.expiration.ms``); how many states."""
        ...

    def replace_segments(self, swap: SegmentSwap, lease: Lease) -> SwapOutcome:
        """Replace the index rows ``swap.old`` by ``swap.new`` in one transaction, if ``lease``
        is still held and the rows are all still there; old objects no row names any more are
        queued (see :mod:`~streamhouse.log.metadata.swaps`)."""
        ...

    def commit_group_offsets(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], tuple[int, str]],
        lease: Lease | None = None,
    ) -> None:
        """Store ``(topic, partition) -> (offset, metadata)`` for ``group`` in one transaction;
        with ``lease`` (the group coordinator's), only while it still holds it: else nothing
        is stored and ``FencedError`` is raised (a coordinator paused past its lease)."""
        ...

    def group_offsets(self, group: str) -> dict[tuple[str, int], GroupOffset]:
        """The group's committed offsets (empty for an unknown group)."""
        ...

    def list_groups(self) -> list[str]:
        """Groups with committed offsets, sorted."""
        ...

    def delete_group(self, group: str) -> None:
        """Forget the group's committed offsets (no error if it has none)."""
        ...

    def delete_group_offsets(self, group: str, partitions: Iterable[tuple[str, int]]) -> None:
        """Forget the group's committed offsets of these ``(topic, partition)``s (Kafka's
        OffsetDelete); partitions without one are skipped."""
        ...

    def put_catalog(
        self, entry_name: str, kind: str, sql: str, *, replace: bool = False
    ) -> CatalogEntry:
        """Store a SQL object; ``SqlError`` if the name (any case) exists and not ``replace``."""
        ...

    def get_catalog(self, name: str) -> CatalogEntry | None:
        """The entry of that name, compared case-insensitively, or ``None``."""
        ...

    def list_catalog(self) -> list[CatalogEntry]:
        """Every entry, sorted by lower-cased name."""
        ...

    def drop_catalog(self, name: str) -> bool:
        """Remove the entry; ``False`` if there was none."""
        ...

    def put_credentials(self, user: str, credentials: Sequence[ScramCredential]) -> None:
        """Replace ``user``'s SASL credentials (one per mechanism) with ``credentials``."""
        ...

    def get_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """``user``'s credential for ``mechanism``, or ``None``."""
        ...

    def list_credentials(self) -> list[tuple[str, str, int]]:
        """``(user, mechanism, iterations)`` of every credential, by user and mechanism."""
        ...

    def delete_credentials(self, user: str) -> bool:
        """Remove every credential of ``user``; ``False`` if there was none."""
        ...

    @property
    def transactions(self) -> TransactionStore:
        """The state of Kafka transactions (see :mod:`~streamhouse.log.metadata.transactions`)."""
        ...

    def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Store ACL bindings (one already stored is kept once)."""
        ...

    def list_acls(self) -> list[AclBinding]:
        """Every ACL binding, in no set order."""
        ...

    def delete_acls(self, bindings: Sequence[AclBinding]) -> None:
        """Remove these ACL bindings (those not stored are skipped)."""
        ...

    def broker_config(self, broker: str) -> dict[str, str]:
        """The dynamic configs stored for ``broker`` (a broker id in decimal, or ``""``: the
        cluster-wide default), name -> value."""
        ...

    def alter_broker_config(
        self, broker: str, changes: Mapping[str, str | None], *, replace: bool = False
    ) -> dict[str, str]:
        """Set (a value) or remove (``None``) dynamic configs of ``broker`` in one transaction,
        first removing every other one if ``replace``; the configs it has now."""
        ...

    def security_version(self) -> int:
        """A number every change of an ACL or a SCRAM credential increases: a reader of either
        reloads its copy when it moved."""
        ...

    def next_producer_id(self) -> int:
        """A new producer id (1, 2, ...), never handed out before, even across restarts."""
        ...

    def register_agent(self, agent_id: str, host: str, port: int, zone: str, group: str) -> None:
        """Record (or replace) the agent ``agent_id`` with a heartbeat of now."""
        ...

    def heartbeat_agent(self, agent_id: str) -> bool:
        """Set the agent's heartbeat to now; ``False`` if it is not registered (any more)."""
        ...

    def deregister_agent(self, agent_id: str) -> None:
        """Forget the agent (no error if it is not registered)."""
        ...

    def list_agents(self) -> list[AgentInfo]:
        """Every registered agent, live or not (see ``heartbeat_age_ms``), by ``agent_id``."""
        ...

    def forget_agents(self, silent_for_ms: int) -> int:
        """Deregister the agents whose last heartbeat is more than ``silent_for_ms`` old (by
        the store's clock); how many."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> Lease | None:
        """Hold ``name`` for ``ttl_ms`` (store clock): the lease when ``holder`` now holds it
        (its epoch unchanged when it renews a live lease of its own, raised otherwise), ``None``
        while another holder's lease is live. See :mod:`~streamhouse.log.metadata.leases`."""
        ...

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        """Extend ``lease`` by ``ttl_ms`` from now; ``False`` once it expired or was taken over
        (the holder then stops the work and may :meth:`acquire_lease` again)."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give ``lease`` up at once (nothing happens if it was taken over meanwhile)."""
        ...

    def list_leases(self, prefix: str = "") -> list[Lease]:
        """Every lease whose name starts with ``prefix``, live or expired, by name."""
        ...

    def record_query_checkpoint(self, lease: Lease, checkpoint: QueryCheckpoint) -> None:
        """Record ``checkpoint`` as the one its query resumes from, at ``lease``'s epoch,
        only while ``lease`` is held (``FencedError`` otherwise). See
        :mod:`~streamhouse.log.metadata.checkpoints`."""
        ...

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        """Every query's recorded checkpoint, by query name."""
        ...

    def query_checkpoint(self, query: str) -> str | None:
        """The id of the checkpoint ``query`` resumes from, ``None`` before its first."""
        ...

    def commit_feed(
        self, on_commits: Callable[[list[Commit]], None], on_live: Callable[[bool], None]
    ) -> CommitFeed:
        """Start telling of commits by any process: ``on_commits`` is called from a thread of
        the feed's own with the partitions whose high watermark or log start offset rose
        (``delete_records``, retention); ``on_live(True)`` once
        the feed hears every commit, ``on_live(False)`` whenever it may miss some."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise ``StorageError``."""
        ...


def validate_topic_name(name: str) -> None:
    """Raise ``LogError`` unless ``name`` is a legal Kafka topic name.

    >>> validate_topic_name("orders.v1_eu-west")
    >>> validate_topic_name("..")
    Traceback (most recent call last):
    ...
    streamhouse.errors.LogError: invalid topic name '..': '.' and '..' are not allowed
    """
    if not isinstance(name, str) or not name:
        raise LogError(f"invalid topic name {name!r}: it must be a non-empty string")
    if name in (".", ".."):
        raise LogError(f"invalid topic name {name!r}: '.' and '..' are not allowed")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise LogError(
            f"invalid topic name {name[:20]!r}...: {len(name)} characters,"
            f" at most {MAX_TOPIC_NAME_LENGTH} allowed"
        )
    if not _TOPIC_NAME.fullmatch(name):
        raise LogError(
            f"invalid topic name {name!r}: only ASCII letters, digits, '.', '_' and '-' are allowed"
        )


POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
"""URL prefixes that select the PostgreSQL backend."""


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite file ``settings.metadata`` names, ``None`` for PostgreSQL.

    ``None`` means ``<data_dir>/metadata.sqlite3``; ``sqlite:///relative/path`` and
    ``sqlite:////absolute/path`` name another SQLite file; ``postgresql://user@host:5432/db``
    (or ``postgres://``, any libpq URI) a PostgreSQL database. ``ConfigError`` for other URLs.
    """
    url = settings.metadata
    if url is None:
        return Path(settings.data_dir) / "metadata.sqlite3"
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ConfigError(f"metadata URL {url!r} names no file")
        return Path(path)
    if url.startswith(POSTGRESQL_SCHEMES):
        return None
    raise ConfigError(
        f"metadata URL {url!r} is not supported: use sqlite:///path or"
        " postgresql://user@host:5432/database (or leave it unset for SQLite in the data directory)"
    )


def open_metadata(settings: Settings) -> Metadata:
    """Open the metadata store ``settings.metadata`` names (see :func:`sqlite_path`)."""
    path = sqlite_path(settings)
    if path is None:
        from streamhouse.log.metadata.postgres import PostgresMetadata  # psycopg only when used

        return PostgresMetadata(str(settings.metadata))
    from streamhouse.log.metadata.sqlite import SQLiteMetadata

    return SQLiteMetadata(path)
