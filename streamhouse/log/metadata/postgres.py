"""The PostgreSQL metadata store: one catalog that every process naming the database shares.

Selected by a ``postgresql://`` (or ``postgres://``) URL, in libpq's URI syntax; tables live in
the first schema of the connection's ``search_path`` (``?options=-csearch_path%3Dname`` picks
another, which must exist). Connections come from a pool (psycopg 3, ``psycopg_pool``) and run
in autocommit mode: a read is one statement, a write an explicit transaction.

Offsets are sequenced in the commit transaction: :meth:`PostgresMetadata.commit_segment` locks
the rows of the partitions it touches (``SELECT ... FOR UPDATE``, in one order so two commits
never deadlock), gives each entry its partition's high watermark as base offset and advances
it, all before ``COMMIT``. Two processes committing to one partition are serialized on its row:
offsets stay dense, ordered and free of duplicates, and neither retries nor rewrites anything.
Every ``psycopg.Error`` surfaces as :class:`~streamhouse.errors.StorageError` naming the store
(its URL without a password).
"""

from __future__ import annotations

import logging
import re
import select
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from streamhouse.errors import (
    LogError,
    SqlError,
    StorageError,
    TopicExistsError,
    UnknownTopicError,
)
from streamhouse.log.metadata import (
    AgentInfo,
    CatalogEntry,
    Commit,
    CommitThen,
    FlushedSegment,
    ProducerBatch,
    SegmentEntryLike,
    SegmentRow,
    TopicInfo,
    checkpoints,
    leases,
    transactions,
    validate_topic_name,
)
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.feed import FeedThread
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.migrations import POSTGRESQL, migrate
from streamhouse.log.metadata.rules import (
    FORGET_PRODUCERS,
    MARK_UNREFERENCED,
    PRODUCER_COLUMNS,
    PRODUCER_UPSERT,
    SEGMENT_INSERT_COLUMNS,
    ProducerState,
    SegmentCommit,
    check_catalog_entry,
    check_partition_count,
    check_producer_batches,
    config_json,
    now_ms,
    plan_delete_records,
    plan_restore,
    plan_segment_commit,
    producer_keys,
    producer_rows,
    topic_config,
)
from streamhouse.log.metadata.sqlstore import TOPIC_COLUMNS, SqlMetadata
from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome, swap_segments

logger = logging.getLogger(__name__)

POOL_SIZE = 8
"""Most connections one process holds open (the writer, the committer, readers, the server)."""
CONNECT_TIMEOUT_S = 10
"""How long opening the store waits for the server before it fails."""

COMMIT_CHANNEL = "streamhouse_commits"
"""Each commit and ``delete_records`` notifies this channel with lines of
``topic<TAB>partition<TAB>log start<TAB>high watermark`` (log start -1: unchanged)."""
_NOTIFY_BYTES = 7000  # PostgreSQL refuses payloads of 8000 bytes or more
# Connection exceptions (08) and operator intervention (57P: shutdown, pg_terminate_backend,
# idle_session_timeout): the server is closing this connection.
_CLOSING_SQLSTATES = ("08", "57P")
_LISTEN_POLL_S = 0.25  # how often the feed looks up from waiting, to see if it must stop

# Index rows as one column array per field (the order of SEGMENT_INSERT_COLUMNS).
_INSERT_SEGMENTS = (
    f"INSERT INTO segments ({SEGMENT_INSERT_COLUMNS})"
    " SELECT * FROM unnest(%s::text[], %s::integer[], %s::bigint[], %s::bigint[],"
    " %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::bigint[])"
)
_READ_PRODUCERS = (
    "SELECT s.topic, s.partition_id, s.producer_id, s.producer_epoch, s.last_sequence,"
    " s.recent_batches FROM producer_sequences AS s"
    " JOIN unnest(%s::text[], %s::integer[], %s::bigint[]) AS k (topic, partition_id, producer_id)"
    " ON s.topic = k.topic AND s.partition_id = k.partition_id AND s.producer_id = k.producer_id"
)
_WRITE_PRODUCERS = (
    f"INSERT INTO producer_sequences ({PRODUCER_COLUMNS})"
    " SELECT * FROM unnest(%s::text[], %s::integer[], %s::bigint[], %s::integer[],"
    f" %s::bigint[], %s::text[], %s::bigint[]){PRODUCER_UPSERT}"
)
_TOPIC_COLUMNS = "name, partitions, config, topic_id, created_ms"
# Byte order, as SQLite sorts text: the protocol's "sorted by name" must not depend on the
# database's locale.
_BYTE_ORDER = 'COLLATE "C"'


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs.

    >>> redacted("postgresql://sh:secret@db.internal:5432/meta?sslmode=require")
    'postgresql://sh:***@db.internal:5432/meta?sslmode=require'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def notify_payloads(commits: Sequence[Commit]) -> list[str]:
    r"""``commits`` as ``NOTIFY`` payloads of at most ``_NOTIFY_BYTES`` each.

    >>> notify_payloads([("t", 0, -1, 10), ("t", 1, 2, 3)])
    ['t\t0\t-1\t10\nt\t1\t2\t3']
    """
    payloads, lines, size = [], [], 0
    for topic, partition, log_start, high_watermark in commits:
        line = f"{topic}\t{partition}\t{log_start}\t{high_watermark}"
        if lines and size + len(line) >= _NOTIFY_BYTES:
            payloads.append("\n".join(lines))
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
    if lines:
        payloads.append("\n".join(lines))
    return payloads


def parse_payload(payload: str) -> list[Commit]:
    """The commits of one ``NOTIFY`` payload (see :func:`notify_payloads`)."""
    commits = []
    for line in payload.splitlines():
        topic, partition, log_start, high_watermark = line.split("\t")
        commits.append((topic, int(partition), int(log_start), int(high_watermark)))
    return commits


def array_literal(values: Sequence[object]) -> str:
    r"""``values`` (all ``int`` or all ``str``) as a PostgreSQL array literal, for a
    ``%s::bigint[]`` or ``%s::text[]`` parameter.

    Built by ``str.join``: psycopg dumps a list element by element in Python (a regular
    expression per string), which cost a 330-partition commit about 8 ms of the GIL.

    >>> array_literal([1, -2]), array_literal(['a"b', "c\\d", "e"]), array_literal([])
    ('{1,-2}', '{"a\\"b","c\\\\d","e"}', '{}')
    """
    if not values or not isinstance(values[0], str):
        return "{" + ",".join(map(str, values)) + "}"
    quoted = {
        value: '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for value in set(values)  # type: ignore[arg-type]
    }
    return "{" + ",".join(map(quoted.__getitem__, values)) + "}"


def _array_columns(rows: Sequence[Sequence[object]]) -> list[str]:
    """The columns of ``rows`` as array literals, for ``unnest(%s::type[], ...)``."""
    return [array_literal(column) for column in zip(*rows, strict=True)]


def _one_line(exc: psycopg.Error) -> str:
    """The server's primary message (no query excerpt, no hint), or the client's, on one line."""
    text = exc.diag.message_primary if exc.diag is not None else None
    return re.sub(r"\s+", " ", text or str(exc)).strip()


class _ClosedByServer(Exception):
    """A pooled connection the server had closed, found at a commit's first round trip."""


def _check_connection(conn: psycopg.Connection) -> None:
    """The pool's check of a connection it hands out: a round trip only if the server wrote to
    the idle connection (an idle one in autocommit is sent nothing unless it is being closed:
    ``FATAL`` on shutdown, ``pg_terminate_backend``, ``idle_session_timeout``, then EOF).
    ``ConnectionPool.check_connection`` made that round trip every time, one of the seven a
    commit took."""
    if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
        ConnectionPool.check_connection(conn)


class PostgresMetadata(SqlMetadata):
    """The :class:`~streamhouse.log.metadata.Metadata` protocol on a PostgreSQL database."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, schema: str | None = None) -> None:
        """``schema``: the store lives in this schema, not the first of the URL's search_path
        (``fsck --rebuild-metadata`` builds a store beside the one it replaces)."""
        self.url = url
        self.name = redacted(url) + (f" (schema {schema})" if schema else "")
        self._closed = False
        self._connect_kwargs: dict[str, object] = {"connect_timeout": CONNECT_TIMEOUT_S}
        if schema is not None:
            quoted = '"' + schema.replace('"', '""') + '"'  # a name of any case
            self._connect_kwargs["options"] = f"-csearch_path={quoted}"
        with self._storage_errors("open"):
            try:
                with psycopg.connect(url, **self._connect_kwargs) as conn, conn.transaction():
                    migrate(conn, POSTGRESQL, self.name)
            except psycopg.errors.InvalidSchemaName as exc:  # e.g. a search_path of a typo
                raise StorageError(
                    f"metadata store {self.name}: cannot open: {_one_line(exc)} (no schema of"
                    " the search_path exists: create it first, or name one that does)"
                ) from exc
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True, **self._connect_kwargs},
                # A connection the server dropped (restart, failover, idle timeout) is
                # replaced when it is next taken, instead of failing that call.
                check=_check_connection,
                name=f"streamhouse-metadata-{uuid.uuid4().hex[:8]}",
                open=True,
            )
        try:
            with self._storage_errors("open"):
                self._pool.wait(timeout=CONNECT_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    # -- connections and transactions ---------------------------------------------------------

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StorageError(
                f"metadata store {self.name}: cannot {action}: {_one_line(exc)}"
            ) from exc

    @contextmanager
    def _connection(self, action: str) -> Iterator[psycopg.Connection]:
        """A pooled connection in autocommit mode: each statement is its own transaction."""
        if self._closed:
            raise StorageError(f"metadata store {self.name} is closed")
        with self._storage_errors(action), self._pool.connection() as conn:
            yield conn

    def _reader(self, action: str) -> AbstractContextManager[psycopg.Connection]:
        return self._connection(action)

    def _statement(self, action: str) -> AbstractContextManager[psycopg.Connection]:
        return self._connection(action)  # autocommit: the statement is its own transaction

    @contextmanager
    def _transaction(self, action: str) -> Iterator[psycopg.Connection]:
        """A write transaction: committed if the block returns, rolled back if it raises."""
        with self._connection(action) as conn, conn.transaction():
            yield conn

    @contextmanager
    def _lazy_transaction(self, action: str) -> Iterator[psycopg.Connection]:
        """:meth:`_transaction` with ``synchronous_commit = off``: its COMMIT does not wait for
        the WAL flush, which the next synchronous commit's flush covers."""
        with self._transaction(action) as conn:
            conn.execute("SET LOCAL synchronous_commit = off")
            yield conn

    @property
    def schema_version(self) -> int:
        """The newest migration applied to this store."""
        with self._connection("read the schema version") as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0) if row else 0

    def close(self) -> None:
        """Close the pool; later calls raise ``StorageError``."""
        if self._closed:
            return
        self._closed = True
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __repr__(self) -> str:
        return f"PostgresMetadata({self.name!r})"

    # -- topics ------------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        validate_topic_name(name)
        check_partition_count(name, partitions)
        info = TopicInfo(name, partitions, topic_config(config), str(uuid.uuid4()), now_ms())
        with self._transaction(f"create topic {name!r}") as conn:
            inserted = conn.execute(
                f"INSERT INTO topics ({TOPIC_COLUMNS}) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (name, partitions, config_json(info.config), info.topic_id, info.created_ms),
            ).rowcount
            if not inserted:
                raise TopicExistsError(name)
            self._add_partitions(conn, name, 0, partitions)
        logger.info("created topic %r with %d partition(s)", name, partitions)
        return info

    @staticmethod
    def _add_partitions(conn: psycopg.Connection, topic: str, start: int, stop: int) -> None:
        conn.execute(
            "INSERT INTO partitions (topic, partition_id, log_start_offset, high_watermark,"
            " max_timestamp) SELECT %s, p, 0, 0, -1 FROM generate_series(%s::integer, %s::integer) AS p",
            (topic, start, stop - 1),
        )

    def delete_topic(self, name: str) -> list[str]:
        with self._transaction(f"delete topic {name!r}") as conn:
            if self._read_topic(conn, name, lock=True) is None:
                raise UnknownTopicError(name)
            # Lock its partitions in commit_segment's order, so a concurrent commit waits.
            conn.execute(
                "SELECT 1 FROM partitions WHERE topic = %s ORDER BY partition_id FOR UPDATE",
                (name,),
            )
            deleted = conn.execute(
                "DELETE FROM segments WHERE topic = %s RETURNING object_key", (name,)
            ).fetchall()
            keys = sorted({key for (key,) in deleted})
            for table in ("partitions", "group_offsets", "producer_sequences"):
                conn.execute(f"DELETE FROM {table} WHERE topic = %s", (name,))
            for statement in transactions.FORGET_TOPIC:
                conn.execute(self._sql(statement), (name,))
            conn.execute("DELETE FROM topics WHERE name = %s", (name,))
            still_used = conn.execute(
                "SELECT DISTINCT object_key FROM segments WHERE object_key = ANY(%s)", (keys,)
            ).fetchall()
        orphaned = sorted(set(keys) - {key for (key,) in still_used})
        logger.info("deleted topic %r; %d object(s) unreferenced", name, len(orphaned))
        return orphaned

    # -- the segment index -------------------------------------------------------------------

    def commit_segment(
        self,
        object_key: str,
        entries: Sequence[SegmentEntryLike],
        producer_batches: Sequence[ProducerBatch] = (),
        *,
        fence: Lease | None = None,
        then: CommitThen | None = None,
    ) -> list[int]:
        """Index ``entries`` of one object at their partitions' high watermarks and advance
        them, all or nothing; returns the base offset assigned to each entry.

        The sequence states of the producers of ``producer_batches`` are read in the first
        round trip, after the lock (the partitions' locks guard them too), and written in the
        second: idempotence costs no round trip.

        The partitions' rows stay locked from the read to ``COMMIT``: a concurrent commit to
        one of them waits, then continues after this one. Four statements however many
        partitions the flush holds (the last notifies :data:`COMMIT_CHANNEL`), sent in
        pipeline mode: ``BEGIN`` and the lock in one round trip, the writes and ``COMMIT`` in a
        second. It returns once the server has answered ``COMMIT`` (the WAL flushed, with
        ``synchronous_commit`` on), and raises if any statement failed.

        A connection found closed by the server at the first round trip (the pool's check
        makes no round trip of its own) is replaced and the commit made again on another:
        ``COMMIT`` was not sent yet, so nothing of it can have been committed.

        With ``fence``, the lease is checked (and its row share-locked) in the first round
        trip: ``FencedError`` and nothing committed unless it is still held."""
        entries = list(entries)
        if not entries:
            return []
        _refuse_then(then)
        return self._commit_retrying(
            [FlushedSegment(object_key, entries, producer_batches)], fence
        )[0]

    def commit_segments(self, segments: Sequence[FlushedSegment]) -> list[list[int]]:
        """Several objects in the transaction and the two round trips of one
        :meth:`commit_segment`: the partitions of all of them locked at once."""
        written = [s for s in segments if s.entries]
        for segment in written:
            _refuse_then(segment.then)
        bases = iter(self._commit_retrying(written, None) if written else [])
        return [next(bases) if s.entries else [] for s in segments]

    def _commit_retrying(
        self, segments: list[FlushedSegment], fence: Lease | None
    ) -> list[list[int]]:
        for _ in range(POOL_SIZE):  # each pooled connection may have been closed
            try:
                return self._commit_segments(segments, fence)
            except _ClosedByServer:
                continue
        return self._commit_segments(segments, fence)

    def _commit_segments(
        self, segments: list[FlushedSegment], fence: Lease | None
    ) -> list[list[int]]:
        keys = sorted({(e.topic, e.partition) for s in segments for e in s.entries})
        producers = sorted(
            {k for s in segments for k in producer_keys(s.entries, s.producer_batches)}
        )
        what = f"commit segment {segments[0].object_key!r}"
        if len(segments) > 1:
            what = f"commit {len(segments)} segments from {segments[0].object_key!r}"
        with self._connection(what) as conn:
            try:
                # BEGIN and COMMIT as statements, not conn.transaction(): in a pipeline that
                # syncs on entering and leaving, two round trips more.
                with conn.pipeline():
                    try:
                        conn.execute("BEGIN")
                        held = _fence(conn, fence) if fence is not None else None
                        locking = conn.execute(
                            "SELECT p.topic, p.partition_id, p.high_watermark, p.max_timestamp"
                            " FROM partitions AS p"
                            " JOIN unnest(%s::text[], %s::integer[]) AS k (topic, partition_id)"
                            " ON p.topic = k.topic AND p.partition_id = k.partition_id"
                            f" ORDER BY p.topic{POSTGRESQL.byte_order}, p.partition_id"
                            " FOR UPDATE OF p",
                            _array_columns(keys),
                        )
                        reading = (
                            conn.execute(_READ_PRODUCERS, _array_columns(producers))
                            if producers
                            else None
                        )
                        locked = locking.fetchall()  # one round trip for both
                        states = {
                            (t, p, pid): ProducerState.decode(*state)
                            for t, p, pid, *state in (reading.fetchall() if reading else ())
                        }
                    except psycopg.OperationalError as exc:
                        if conn.broken or (exc.sqlstate or "").startswith(_CLOSING_SQLSTATES):
                            raise _ClosedByServer from exc
                        raise
                    if held is not None and fence is not None and held.fetchone() is None:
                        raise leases.refused(fence, f"commit of segment {segments[0].object_key!r}")
                    plans = self._write_commit(conn, segments, locked, states)
                    committed = conn.execute("COMMIT")
                # Leaving the pipeline waited for every result and raised the first error.
                if committed.statusmessage != "COMMIT":
                    raise StorageError(
                        f"metadata store {self.name}: {what}:"
                        f" the server answered {committed.statusmessage!r} to COMMIT"
                    )
            except BaseException:
                if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
        logger.debug("%s: %d index row(s)", what, sum(len(s.entries) for s in segments))
        return [plan.bases for plan in plans]

    def _write_commit(
        self,
        conn: psycopg.Connection,
        segments: list[FlushedSegment],
        locked: list[tuple[str, int, int, int]],
        states: dict[tuple[str, int, int], ProducerState],
    ) -> list[SegmentCommit]:
        """Queue a commit's writes: the partitions' new high watermarks, the index rows, the
        producers' sequence states, and the notification of :data:`COMMIT_CHANNEL` (delivered
        when the transaction commits). ``RefusedBatchesError`` before any write is queued if a
        producer batch may not be indexed. Each object's entries follow the previous one's."""
        current = {(t, p): (hw, ts) for t, p, hw, ts in locked}
        plans, rows, changed = [], [], {}
        for segment in segments:
            plan = plan_segment_commit(
                segment.object_key,
                segment.entries,
                current,
                lambda t: self._read_topic(conn, t) is not None,
            )
            judged = check_producer_batches(
                segment.entries, plan.bases, segment.producer_batches, {**states, **changed}
            )
            changed.update(judged)
            current.update(plan.partitions)
            rows.extend(plan.rows)
            plans.append(plan)
        if changed:
            conn.execute(_WRITE_PRODUCERS, _array_columns(producer_rows(changed)))
        advanced = [(t, p, hw, ts) for (t, p), (hw, ts) in current.items()]
        conn.execute(
            "UPDATE partitions AS p SET high_watermark = u.high_watermark,"
            " max_timestamp = u.max_timestamp"
            " FROM unnest(%s::text[], %s::integer[], %s::bigint[], %s::bigint[])"
            " AS u (topic, partition_id, high_watermark, max_timestamp)"
            " WHERE p.topic = u.topic AND p.partition_id = u.partition_id",
            _array_columns(advanced),
        )
        conn.execute(_INSERT_SEGMENTS, _array_columns(rows))
        conn.execute(
            "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
            (
                COMMIT_CHANNEL,
                array_literal(notify_payloads([(t, p, -1, hw) for t, p, hw, _ in advanced])),
            ),
        )
        return plans

    def restore_segments(self, rows: Sequence[SegmentRow], *, producer_id_floor: int = 0) -> None:
        with self._transaction(f"restore {len(rows)} index row(s)") as conn:
            known = {
                (t, p)
                for t, p in conn.execute("SELECT topic, partition_id FROM partitions").fetchall()
            }
            plan = plan_restore(rows, known)
            if plan.rows:
                conn.execute(
                    _INSERT_SEGMENTS,
                    [list(column) for column in zip(*plan.rows, strict=True)],
                )
                bounds = [(t, p, *b) for (t, p), b in plan.partitions.items()]
                conn.execute(
                    "UPDATE partitions AS p SET log_start_offset = u.log_start_offset,"
                    " high_watermark = u.high_watermark, max_timestamp = u.max_timestamp"
                    " FROM unnest(%s::text[], %s::integer[], %s::bigint[], %s::bigint[],"
                    " %s::bigint[]) AS u (topic, partition_id, log_start_offset, high_watermark,"
                    " max_timestamp)"
                    " WHERE p.topic = u.topic AND p.partition_id = u.partition_id",
                    [list(column) for column in zip(*bounds, strict=True)],
                )
            conn.execute(
                "UPDATE counters SET counter_value = GREATEST(counter_value, %s)"
                " WHERE name = 'producer_id'",
                (producer_id_floor,),
            )
        logger.info("restored %d index row(s) of %d partition(s)", len(rows), len(plan.partitions))

    def commit_feed(
        self, on_commits: Callable[[list[Commit]], None], on_live: Callable[[bool], None]
    ) -> FeedThread:
        """``LISTEN`` to :data:`COMMIT_CHANNEL` on a connection of the feed's own (not pooled):
        every commit of any process is heard as soon as it commits."""

        def follow(stopping: threading.Event) -> None:
            with psycopg.connect(self.url, autocommit=True, **self._connect_kwargs) as conn:
                conn.execute(f"LISTEN {COMMIT_CHANNEL}")
                on_live(True)
                while not stopping.is_set():
                    for notify in conn.notifies(timeout=_LISTEN_POLL_S):
                        on_commits(parse_payload(notify.payload))

        return FeedThread(self.name, follow, on_live)

    # -- retention -----------------------------------------------------------------------------

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """As in SQLite; the topic's partition rows are locked in commit_segment's order."""
        with self._transaction(f"delete records of {topic!r}") as conn:
            rows = conn.execute(
                "SELECT partition_id, log_start_offset, high_watermark FROM partitions"
                " WHERE topic = %s ORDER BY partition_id FOR UPDATE",
                (topic,),
            ).fetchall()
            current = {p: (start, hw) for p, start, hw in rows}
            starts = plan_delete_records(topic, offsets, current)
            advanced = [(p, s) for p, s in starts.items() if s > current[p][0]]
            if advanced:
                partitions, new_starts = (list(column) for column in zip(*advanced, strict=True))
                conn.execute(
                    "UPDATE partitions AS p SET log_start_offset = u.start"
                    " FROM unnest(%s::integer[], %s::bigint[]) AS u (partition_id, start)"
                    " WHERE p.topic = %s AND p.partition_id = u.partition_id",
                    (partitions, new_starts, topic),
                )
                deleted = conn.execute(
                    "DELETE FROM segments AS s"
                    " USING unnest(%s::integer[], %s::bigint[]) AS u (partition_id, start)"
                    " WHERE s.topic = %s AND s.partition_id = u.partition_id"
                    " AND s.last_offset < u.start RETURNING s.object_key",
                    (partitions, new_starts, topic),
                ).fetchall()
                now = now_ms()
                with conn.cursor() as cursor:
                    cursor.executemany(
                        POSTGRESQL.sql(MARK_UNREFERENCED),
                        [(key, now, key) for key in sorted({key for (key,) in deleted})],
                    )
                changed = [(topic, p, start, current[p][1]) for p, start in advanced]
                conn.execute(  # other processes' caches drop these index rows
                    "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
                    (COMMIT_CHANNEL, notify_payloads(changed)),
                )
        return starts

    def forget_objects(self, keys: Sequence[str]) -> None:
        with self._transaction(f"forget {len(keys)} deleted object(s)") as conn:
            conn.execute("DELETE FROM deleted_objects WHERE object_key = ANY(%s)", (list(keys),))

    def forget_producers(self, idle_before_ms: int) -> int:
        with self._connection("forget idle producers") as conn:
            return conn.execute(POSTGRESQL.sql(FORGET_PRODUCERS), (idle_before_ms,)).rowcount

    # -- compaction ----------------------------------------------------------------------------

    def replace_segments(self, swap: SegmentSwap, lease: Lease) -> SwapOutcome:
        """As in SQLite; the partition row is locked first, as delete_records and
        commit_segment lock it, so a swap and retention never interleave."""
        new = swap.new
        with self._transaction(f"swap index rows of {new.topic}/{new.partition}") as conn:
            conn.execute(
                "SELECT 1 FROM partitions WHERE topic = %s AND partition_id = %s FOR UPDATE",
                (new.topic, new.partition),
            )
            return swap_segments(conn, POSTGRESQL, swap, lease)

    # -- consumer groups ---------------------------------------------------------------------

    def commit_group_offsets(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], tuple[int, str]],
        lease: Lease | None = None,
    ) -> None:
        """Store ``(topic, partition) -> (offset, metadata)`` for ``group`` in one transaction,
        fenced by ``lease`` in the same statement (no round trip more).

        Topics are not checked here; ``delete_topic`` removes their offsets."""
        if not offsets:
            return
        now = now_ms()
        rows = [
            (group, topic, partition, offset, metadata or "", now)
            for (topic, partition), (offset, metadata) in offsets.items()
        ]
        params: list[object] = [list(column) for column in zip(*rows, strict=True)]
        fence = ""
        if lease is not None:
            fence = f" WHERE EXISTS ({leases.sql(leases.HOLDS, POSTGRESQL)})"
            params += [lease.name, lease.holder, lease.epoch]
        with self._transaction(f"commit offsets of group {group!r}") as conn:
            stored = conn.execute(
                "INSERT INTO group_offsets (group_id, topic, partition_id, committed_offset,"
                " metadata, commit_ms) SELECT * FROM unnest(%s::text[], %s::text[],"
                f" %s::integer[], %s::bigint[], %s::text[], %s::bigint[]){fence}"
                " ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET"
                " committed_offset = excluded.committed_offset,"
                " metadata = excluded.metadata, commit_ms = excluded.commit_ms",
                params,
            ).rowcount
            if lease is not None and not stored:
                raise leases.refused(lease, f"commit of group {group!r} offsets")

    # -- the SQL catalog ---------------------------------------------------------------------

    def put_catalog(
        self, entry_name: str, kind: str, sql: str, *, replace: bool = False
    ) -> CatalogEntry:
        check_catalog_entry(entry_name, kind)
        entry = CatalogEntry(entry_name, kind, sql, now_ms())
        key = entry_name.lower()
        with self._transaction(f"store {kind} {entry_name!r}") as conn:
            # One statement decides, so two processes storing one name cannot both succeed.
            stored = conn.execute(
                "INSERT INTO catalog (name_key, name, kind, sql_text, created_ms)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (name_key) DO UPDATE SET name = excluded.name,"
                " kind = excluded.kind, sql_text = excluded.sql_text,"
                " created_ms = excluded.created_ms WHERE %s",
                (key, entry.name, entry.kind, entry.sql, entry.created_ms, replace),
            ).rowcount
            if not stored:
                existing = conn.execute(
                    "SELECT name, kind FROM catalog WHERE name_key = %s", (key,)
                ).fetchone()
                raise SqlError(f"{existing[1]} {existing[0]!r} already exists")
        return entry

    # -- producer ids ------------------------------------------------------------------------

    def next_producer_id(self) -> int:
        with self._connection("allocate a producer id") as conn:
            row = conn.execute(
                "UPDATE counters SET counter_value = counter_value + 1"
                " WHERE name = 'producer_id' RETURNING counter_value"
            ).fetchone()
        if row is None:
            raise StorageError(f"metadata store {self.name}: the producer id counter is missing")
        return int(row[0])

    # -- agents ------------------------------------------------------------------------------
    # Heartbeats are stamped and aged by the database's clock, so agents' clocks never matter.

    def register_agent(self, agent_id: str, host: str, port: int, zone: str, group: str) -> None:
        with self._connection(f"register agent {agent_id!r}") as conn:
            conn.execute(
                "INSERT INTO agents (agent_id, host, port, zone, agent_group, started_ms,"
                f" heartbeat_ms) VALUES (%s, %s, %s, %s, %s, {_STORE_NOW_MS}, {_STORE_NOW_MS})"
                " ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host,"
                " port = excluded.port, zone = excluded.zone,"
                " agent_group = excluded.agent_group, started_ms = excluded.started_ms,"
                " heartbeat_ms = excluded.heartbeat_ms",
                (agent_id, host, port, zone, group),
            )

    def heartbeat_agent(self, agent_id: str) -> bool:
        with self._connection(f"heartbeat of agent {agent_id!r}") as conn:
            cursor = conn.execute(
                f"UPDATE agents SET heartbeat_ms = {_STORE_NOW_MS} WHERE agent_id = %s",
                (agent_id,),
            )
            return cursor.rowcount > 0

    def list_agents(self) -> list[AgentInfo]:
        with self._connection("list agents") as conn:
            rows = conn.execute(
                "SELECT agent_id, host, port, zone, agent_group, started_ms, heartbeat_ms,"
                f" {_STORE_NOW_MS} - heartbeat_ms FROM agents"
                f" ORDER BY agent_id{POSTGRESQL.byte_order}"
            ).fetchall()
        return [AgentInfo(*row) for row in rows]

    def forget_agents(self, silent_for_ms: int) -> int:
        with self._connection("forget silent agents") as conn:
            cursor = conn.execute(
                f"DELETE FROM agents WHERE heartbeat_ms < {_STORE_NOW_MS} - %s", (silent_for_ms,)
            )
            return cursor.rowcount

    # -- query checkpoints -------------------------------------------------------------------

    def record_query_checkpoint(self, lease: Lease, checkpoint: QueryCheckpoint) -> None:
        with self._transaction(f"record checkpoint of query {checkpoint.query!r}") as conn:
            if _fence(conn, lease).fetchone() is None:
                raise leases.refused(lease, checkpoints.describe(checkpoint))
            conn.execute(
                leases.sql(checkpoints.RECORD, POSTGRESQL),
                checkpoints.record_params(lease, checkpoint),
            )

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        with self._connection("list query checkpoints") as conn:
            rows = conn.execute(leases.sql(checkpoints.LIST, POSTGRESQL)).fetchall()
        return [QueryCheckpoint.of(row) for row in rows]

    def query_checkpoint(self, query: str) -> str | None:
        with self._connection(f"read checkpoint of query {query!r}") as conn:
            row = conn.execute(leases.sql(checkpoints.LATEST, POSTGRESQL), (query,)).fetchone()
        return None if row is None else str(row[0])


def _fence(conn: psycopg.Connection, lease: Lease) -> psycopg.Cursor:
    """Check ``lease`` inside the open transaction (its row share-locked until the end).

    A holder paused in the middle of the transaction (SIGSTOP) would keep that lock, and so
    the lease from being taken over, for as long as it is paused: the server ends the session
    instead once the transaction has idled for the lease's TTL (its commit then fails)."""
    conn.execute(
        "SELECT set_config('idle_in_transaction_session_timeout', %s, true)",
        (str(max(1000, lease.remaining_ms)),),
    )
    return conn.execute(leases.fence(POSTGRESQL), leases.fence_params(lease))


_STORE_NOW_MS = POSTGRESQL.now_ms
"""The database's wall clock in milliseconds, as SQL."""


def _refuse_then(then: CommitThen | None) -> None:
    """Statements run inside a commit are SQLite's alone: the commits here are pipelined in
    two round trips, with no place for them (nothing is committed)."""
    if then is not None:
        raise LogError("a segment commit with statements of its own needs the SQLite store")
