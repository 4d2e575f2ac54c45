"""The SQLite metadata store: one file, WAL mode, ``synchronous=FULL``.

Each thread gets its own connection (readers run concurrently under WAL); write transactions
are serialized by a lock and start with ``BEGIN IMMEDIATE``, so a read-check-write inside one
(the fencing in :meth:`SQLiteMetadata.commit_segment`) is atomic, also against other processes
opening the same file (they wait up to ``busy_timeout_s``). Every ``sqlite3.Error`` surfaces as
:class:`~streamhouse.errors.StorageError` naming the file.

The store remembers the identity (device, inode) of the file it opened. Every write
transaction and every new connection first checks that the path still names that file: a
store whose file was deleted or replaced underneath it refuses to write (``StorageError``, one
ERROR log line) instead of committing into a file nobody will open again.

>>> import tempfile, pathlib
>>> md = SQLiteMetadata(pathlib.Path(tempfile.mkdtemp()) / "metadata.sqlite3")
>>> md.create_topic("clicks", partitions=3).partitions
3
>>> md.partition_offsets("clicks")[0]
PartitionOffsets(log_start_offset=0, high_watermark=0)
>>> md.close()
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import quote

from streamhouse.errors import (
    LogError,
    SqlError,
    StorageError,
    TopicExistsError,
    UnknownTopicError,
)
from streamhouse.log.metadata import (
    CATALOG_KINDS,
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
from streamhouse.log.metadata.migrations import SQLITE, migrate
from streamhouse.log.metadata.rules import (
    FORGET_PRODUCERS,
    MARK_UNREFERENCED,
    PRODUCER_COLUMNS,
    PRODUCER_UPSERT,
    SEGMENT_INSERT_COLUMNS,
    ProducerKey,
    ProducerState,
    check_producer_batches,
    plan_delete_records,
    plan_restore,
    plan_segment_commit,
    producer_keys,
    producer_rows,
)
from streamhouse.log.metadata.rules import now_ms as _now_ms
from streamhouse.log.metadata.rules import topic_config as _config_dict
from streamhouse.log.metadata.sqlstore import SqlMetadata
from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome, swap_segments

logger = logging.getLogger(__name__)

_PARTITIONS_BY_KEY = 500
"""A commit reads the partitions it touches by primary key, this many per statement."""
_PRODUCERS_BY_KEY = 300
"""A commit reads the producer states it checks by primary key, this many per statement."""
POLL_S = 0.04
"""How often the commit feed asks whether another connection committed (``data_version``)."""


class SQLiteMetadata(SqlMetadata):
    """The :class:`~streamhouse.log.metadata.Metadata` protocol on a SQLite file."""

    dialect = SQLITE

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._registry_lock = threading.Lock()  # guards _connections and _closed
        self._write_lock = threading.Lock()  # one write transaction at a time in this process
        self._local = threading.local()
        self._connections: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._closed = False
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._lost: str | None = None  # why the file is no longer ours, once noticed
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"metadata store {self.path}: cannot create directory {self.path.parent}: {exc}"
            ) from exc
        try:
            mode = self._journal_mode_wal()
            if str(mode).lower() != "wal":
                logger.warning("metadata store %s: journal mode is %s, not WAL", self.path, mode)
            self._identity = self._file_identity()
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _journal_mode_wal(self) -> str:
        """Switch the file to WAL (a no-op once it is). The switch needs the file to itself,
        and SQLite answers "database is locked" at once, without waiting, to a connection
        that would otherwise deadlock with another one opening the file at the same moment:
        that is tried again, for up to ``busy_timeout_s``."""
        deadline = time.monotonic() + self._busy_timeout_s
        pause = 0.001
        while True:
            try:
                with self._storage_errors("open"):
                    return str(self._connection().execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except StorageError as exc:
                busy = isinstance(exc.__cause__, sqlite3.OperationalError) and (
                    "locked" in str(exc.__cause__)
                )
                if not busy or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- connections and transactions ---------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise StorageError(f"metadata store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._registry_lock:
            if self._closed:
                raise StorageError(f"metadata store {self.path} is closed")
            for ident, (thread, old) in list(self._connections.items()):
                if not thread.is_alive():  # a finished thread's connection
                    old.close()
                    del self._connections[ident]
            if self._identity is not None:
                self._check_identity()
            with self._storage_errors("open"):
                conn = sqlite3.connect(
                    # Only the first connection may create the file; later ones must find it.
                    f"file:{quote(str(self.path))}?mode={'rwc' if self._identity is None else 'rw'}",
                    uri=True,
                    timeout=self._busy_timeout_s,
                    isolation_level=None,  # autocommit; transactions are explicit
                    check_same_thread=False,  # so close() may close every thread's connection
                )
                conn.execute("PRAGMA synchronous=FULL")
            self._connections[threading.get_ident()] = (threading.current_thread(), conn)
        self._local.conn = conn
        self._local.synchronous = "FULL"
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"metadata store {self.path}: cannot stat it: {exc}") from exc
        return st.st_dev, st.st_ino

    def _check_identity(self) -> None:
        """Raise ``StorageError`` unless the path still names the file this store opened."""
        if self._lost is None:
            now = self._file_identity()
            if now == self._identity:
                return
            self._lost = "was deleted" if now is None else "was replaced by another file"
            logger.error(
                "metadata store %s %s while in use: refusing every write from now on; stop"
                " this process and run `streamhouse fsck --rebuild-metadata`",
                self.path,
                self._lost,
            )
        raise StorageError(
            f"metadata store {self.path} {self._lost} while in use; nothing more is written"
            " (stop the process and run `streamhouse fsck --rebuild-metadata`)"
        )

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StorageError(f"metadata store {self.path}: cannot {action}: {exc}") from exc

    @contextmanager
    def _transaction(self, action: str, *, lazy: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed if the block returns, rolled back if it raises.
        ``lazy``: see :meth:`_lazy_transaction`."""
        conn = self._connection()
        with self._write_lock, self._storage_errors(action):
            self._synchronous(conn, "NORMAL" if lazy else "FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                self._check_identity()  # last thing before COMMIT: a file gone gets nothing
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        logger.exception("metadata store %s: rollback failed", self.path)
                raise
            conn.execute("COMMIT")

    def _synchronous(self, conn: sqlite3.Connection, level: str) -> None:
        """Set this thread's connection to ``synchronous=level`` unless it is already (a
        thread that makes lazy commits one after the other sets it once)."""
        if getattr(self._local, "synchronous", "FULL") != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._local.synchronous = level

    def _lazy_transaction(self, action: str) -> AbstractContextManager[sqlite3.Connection]:
        """:meth:`_transaction` at ``synchronous=NORMAL``: in WAL mode its COMMIT appends to the
        WAL without an fsync, and the next ``FULL`` commit's fsync covers it. The setting is
        the connection's (this thread's own), and stays until a durable transaction here."""
        return self._transaction(action, lazy=True)

    @contextmanager
    def _reader(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._storage_errors(action):
            yield self._connection()

    def _statement(self, action: str) -> AbstractContextManager[sqlite3.Connection]:
        return self._transaction(action)

    @contextmanager
    def _snapshot(self, action: str) -> Iterator[sqlite3.Connection]:
        """A connection for reads that need one consistent snapshot."""
        conn = self._connection()
        with self._storage_errors(action):
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction("apply schema migrations") as conn:
            migrate(conn, SQLITE, str(self.path))

    @property
    def schema_version(self) -> int:
        """The newest migration applied to this store."""
        with self._storage_errors("read the schema version"):
            row = self._connection().execute("SELECT max(version) FROM schema_migrations")
            return int(row.fetchone()[0] or 0)

    def close(self) -> None:
        """Close every thread's connection; later calls raise ``StorageError``."""
        with self._write_lock, self._registry_lock:
            if self._closed:
                return
            self._closed = True
            for _, conn in self._connections.values():
                try:
                    conn.close()
                except sqlite3.Error:
                    logger.exception("metadata store %s: close failed", self.path)
            self._connections.clear()

    def __repr__(self) -> str:
        return f"SQLiteMetadata({str(self.path)!r})"

    # -- topics ------------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        validate_topic_name(name)
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise LogError(f"topic {name!r}: partition count must be >= 1, got {partitions!r}")
        info = TopicInfo(name, partitions, _config_dict(config), str(uuid.uuid4()), _now_ms())
        with self._transaction(f"create topic {name!r}") as conn:
            if self._read_topic(conn, name) is not None:
                raise TopicExistsError(name)
            conn.execute(
                "INSERT INTO topics (name, topic_id, partitions, config, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, info.topic_id, partitions, json.dumps(info.config, sort_keys=True),
                 info.created_ms),
            )  # fmt: skip
            self._add_partitions(conn, name, 0, partitions)
        logger.info("created topic %r with %d partition(s)", name, partitions)
        return info

    @staticmethod
    def _add_partitions(conn: sqlite3.Connection, topic: str, start: int, stop: int) -> None:
        conn.executemany(
            "INSERT INTO partitions (topic, partition_id, log_start_offset, high_watermark,"
            " max_timestamp) VALUES (?, ?, 0, 0, -1)",
            ((topic, p) for p in range(start, stop)),
        )

    def delete_topic(self, name: str) -> list[str]:
        with self._transaction(f"delete topic {name!r}") as conn:
            if self._read_topic(conn, name) is None:
                raise UnknownTopicError(name)
            keys = [
                key
                for (key,) in conn.execute(
                    "SELECT DISTINCT object_key FROM segments WHERE topic = ?", (name,)
                )
            ]
            for table in ("segments", "partitions", "group_offsets", "producer_sequences"):
                conn.execute(f"DELETE FROM {table} WHERE topic = ?", (name,))
            for statement in transactions.FORGET_TOPIC:
                conn.execute(statement, (name,))
            conn.execute("DELETE FROM topics WHERE name = ?", (name,))
            orphaned = [
                key
                for key in keys
                if conn.execute(
                    "SELECT 1 FROM segments WHERE object_key = ? LIMIT 1", (key,)
                ).fetchone()
                is None
            ]
        logger.info("deleted topic %r; %d object(s) unreferenced", name, len(orphaned))
        return sorted(orphaned)

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
        entries = list(entries)
        if not entries:
            return []
        with self._transaction(f"commit segment {object_key!r}") as conn:
            if fence is not None:
                self._check_fence(conn, fence, f"commit of segment {object_key!r}")
            bases = self._commit_in(conn, object_key, entries, producer_batches)
            if then is not None:
                then(conn, bases)
        logger.debug("committed segment %r with %d index row(s)", object_key, len(entries))
        return bases

    def commit_segments(self, segments: Sequence[FlushedSegment]) -> list[list[int]]:
        written = [s for s in segments if s.entries]
        if not written:
            return [[] for _ in segments]
        with self._transaction(f"commit {len(written)} segment(s)") as conn:
            assigned = []
            for segment in written:
                bases = self._commit_in(
                    conn, segment.object_key, segment.entries, segment.producer_batches
                )
                if segment.then is not None:
                    segment.then(conn, bases)
                assigned.append(bases)
        by_segment = iter(assigned)
        return [next(by_segment) if s.entries else [] for s in segments]

    def _commit_in(
        self,
        conn: sqlite3.Connection,
        object_key: str,
        entries: Sequence[SegmentEntryLike],
        producer_batches: Sequence[ProducerBatch],
    ) -> list[int]:
        """Index one object's ``entries`` in the open transaction of ``conn``."""
        # One read of every partition involved, then one executemany per table: a flush
        # commits a row per partition, and a statement per row costs more than the rows.
        current: dict[tuple[str, int], tuple[int, int]] = {}
        by_topic: dict[str, set[int]] = {}
        for entry in entries:
            by_topic.setdefault(entry.topic, set()).add(entry.partition)
        for topic, wanted in by_topic.items():
            keys = sorted(wanted)
            for i in range(0, len(keys), _PARTITIONS_BY_KEY):  # by primary key, in chunks
                chunk = keys[i : i + _PARTITIONS_BY_KEY]
                sql = (
                    "SELECT partition_id, high_watermark, max_timestamp FROM partitions"
                    f" WHERE topic = ? AND partition_id IN ({', '.join('?' * len(chunk))})"
                )
                for partition, high_watermark, max_timestamp in conn.execute(sql, (topic, *chunk)):
                    current[(topic, partition)] = (high_watermark, max_timestamp)
        plan = plan_segment_commit(
            object_key, entries, current, lambda t: self._read_topic(conn, t) is not None
        )
        conn.executemany(
            "UPDATE partitions SET high_watermark = ?, max_timestamp = ?"
            " WHERE topic = ? AND partition_id = ?",
            ((hw, ts, t, p) for (t, p), (hw, ts) in plan.partitions.items()),
        )
        conn.executemany(
            f"INSERT INTO segments ({SEGMENT_INSERT_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            plan.rows,
        )
        if producer_batches:
            states = self._producer_states(conn, producer_keys(entries, producer_batches))
            changed = check_producer_batches(entries, plan.bases, producer_batches, states)
            conn.executemany(
                f"INSERT INTO producer_sequences ({PRODUCER_COLUMNS})"
                f" VALUES (?, ?, ?, ?, ?, ?, ?){PRODUCER_UPSERT}",
                producer_rows(changed),
            )
        return plan.bases

    @staticmethod
    def _producer_states(
        conn: sqlite3.Connection, keys: Sequence[ProducerKey]
    ) -> dict[ProducerKey, ProducerState]:
        """The stored states of ``keys``, a statement per :data:`_PRODUCERS_BY_KEY` of them (a
        join with their list, which SQLite reads by primary key; a row-value ``IN`` would
        scan the table)."""
        states: dict[ProducerKey, ProducerState] = {}
        for i in range(0, len(keys), _PRODUCERS_BY_KEY):
            chunk = keys[i : i + _PRODUCERS_BY_KEY]
            sql = (
                f"WITH k (t, p, pid) AS (VALUES {', '.join(['(?, ?, ?)'] * len(chunk))})"
                " SELECT s.topic, s.partition_id, s.producer_id, s.producer_epoch,"
                " s.last_sequence, s.recent_batches FROM k CROSS JOIN producer_sequences s"
                " ON s.topic = k.t AND s.partition_id = k.p AND s.producer_id = k.pid"
            )
            for t, p, pid, *state in conn.execute(sql, [v for key in chunk for v in key]):
                states[(t, p, pid)] = ProducerState.decode(*state)
        return states

    def restore_segments(self, rows: Sequence[SegmentRow], *, producer_id_floor: int = 0) -> None:
        with self._transaction(f"restore {len(rows)} index row(s)") as conn:
            known = set(conn.execute("SELECT topic, partition_id FROM partitions").fetchall())
            plan = plan_restore(rows, known)
            conn.executemany(
                f"INSERT INTO segments ({SEGMENT_INSERT_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                plan.rows,
            )
            conn.executemany(
                "UPDATE partitions SET log_start_offset = ?, high_watermark = ?, max_timestamp = ?"
                " WHERE topic = ? AND partition_id = ?",
                [(*bounds, topic, p) for (topic, p), bounds in plan.partitions.items()],
            )
            conn.execute(
                "UPDATE counters SET counter_value = max(counter_value, ?) WHERE name = 'producer_id'",
                (producer_id_floor,),
            )
        logger.info("restored %d index row(s) of %d partition(s)", len(rows), len(plan.partitions))

    def commit_feed(
        self, on_commits: Callable[[list[Commit]], None], on_live: Callable[[bool], None]
    ) -> FeedThread:
        """Poll ``PRAGMA data_version`` every ``POLL_S`` on a connection of the feed's own; when
        another connection (of any process) has committed, read every partition's offsets and
        report those that rose."""

        def follow(stopping: threading.Event) -> None:
            conn = sqlite3.connect(
                f"file:{quote(str(self.path))}?mode=ro",
                uri=True,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                version, known = None, {}
                read = (
                    "SELECT topic, partition_id, log_start_offset, high_watermark FROM partitions"
                )
                while not stopping.is_set():
                    now = conn.execute("PRAGMA data_version").fetchone()[0]
                    if now != version:
                        rows = conn.execute(read).fetchall()
                        if version is None:
                            on_live(True)
                        else:
                            rose = [
                                (t, p, start if start > old[0] else -1, hw)
                                for t, p, start, hw in rows
                                if (old := known.get((t, p), (-1, -1)))[0] < start or old[1] < hw
                            ]
                            if rose:
                                on_commits(rose)
                        version = now
                        known = {(t, p): (start, hw) for t, p, start, hw in rows}
                    stopping.wait(POLL_S)
            finally:
                conn.close()

        return FeedThread(str(self.path), follow, on_live)

    # -- retention -----------------------------------------------------------------------------

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        with self._transaction(f"delete records of {topic!r}") as conn:
            current = {
                p: (start, hw)
                for p, start, hw in conn.execute(
                    "SELECT partition_id, log_start_offset, high_watermark FROM partitions"
                    " WHERE topic = ?",
                    (topic,),
                )
            }
            starts = plan_delete_records(topic, offsets, current)
            advanced = [(s, topic, p) for p, s in starts.items() if s > current[p][0]]
            conn.executemany(
                "UPDATE partitions SET log_start_offset = ? WHERE topic = ? AND partition_id = ?",
                advanced,
            )
            keys: set[str] = set()
            for start, _, partition in advanced:
                where = " FROM segments WHERE topic = ? AND partition_id = ? AND last_offset < ?"
                params = (topic, partition, start)
                keys.update(
                    key for (key,) in conn.execute("SELECT DISTINCT object_key" + where, params)
                )
                conn.execute("DELETE" + where, params)
            now = _now_ms()
            conn.executemany(MARK_UNREFERENCED, [(key, now, key) for key in sorted(keys)])
        return starts

    def forget_objects(self, keys: Sequence[str]) -> None:
        with self._transaction(f"forget {len(keys)} deleted object(s)") as conn:
            conn.executemany(
                "DELETE FROM deleted_objects WHERE object_key = ?", [(key,) for key in keys]
            )

    def forget_producers(self, idle_before_ms: int) -> int:
        with self._transaction("forget idle producers") as conn:
            return conn.execute(FORGET_PRODUCERS, (idle_before_ms,)).rowcount

    # -- compaction ----------------------------------------------------------------------------

    def replace_segments(self, swap: SegmentSwap, lease: Lease) -> SwapOutcome:
        new = swap.new
        with self._transaction(f"swap index rows of {new.topic}/{new.partition}") as conn:
            return swap_segments(conn, SQLITE, swap, lease)

    # -- consumer groups ---------------------------------------------------------------------

    def commit_group_offsets(
        self,
        group: str,
        offsets: Mapping[tuple[str, int], tuple[int, str]],
        lease: Lease | None = None,
    ) -> None:
        """Store ``(topic, partition) -> (offset, metadata)`` for ``group`` in one transaction.

        Topics are not checked here; ``delete_topic`` removes their offsets."""
        now = _now_ms()
        rows = [
            (group, topic, partition, offset, metadata or "", now)
            for (topic, partition), (offset, metadata) in offsets.items()
        ]
        with self._transaction(f"commit offsets of group {group!r}") as conn:
            if (
                lease is not None
                and not conn.execute(
                    leases.sql(leases.HOLDS, SQLITE), (lease.name, lease.holder, lease.epoch)
                ).fetchone()
            ):
                raise leases.refused(lease, f"commit of group {group!r} offsets")
            conn.executemany(
                "INSERT INTO group_offsets (group_id, topic, partition_id, committed_offset,"
                " metadata, commit_ms) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET"
                " committed_offset = excluded.committed_offset,"
                " metadata = excluded.metadata, commit_ms = excluded.commit_ms",
                rows,
            )

    # -- the SQL catalog ---------------------------------------------------------------------

    def put_catalog(
        self, entry_name: str, kind: str, sql: str, *, replace: bool = False
    ) -> CatalogEntry:
        if kind not in CATALOG_KINDS:
            raise SqlError(
                f"unknown catalog kind {kind!r}: expected one of {', '.join(sorted(CATALOG_KINDS))}"
            )
        if not entry_name:
            raise SqlError("a catalog entry needs a name")
        entry = CatalogEntry(entry_name, kind, sql, _now_ms())
        key = entry_name.lower()
        with self._transaction(f"store {kind} {entry_name!r}") as conn:
            existing = conn.execute(
                "SELECT name, kind FROM catalog WHERE name_key = ?", (key,)
            ).fetchone()
            if existing is not None and not replace:
                raise SqlError(f"{existing[1]} {existing[0]!r} already exists")
            conn.execute(
                "INSERT INTO catalog (name_key, name, kind, sql_text, created_ms)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name_key) DO UPDATE SET name = excluded.name,"
                " kind = excluded.kind, sql_text = excluded.sql_text,"
                " created_ms = excluded.created_ms",
                (key, entry.name, entry.kind, entry.sql, entry.created_ms),
            )
        return entry

    # -- producer ids ------------------------------------------------------------------------

    def next_producer_id(self) -> int:
        with self._transaction("allocate a producer id") as conn:
            conn.execute(
                "UPDATE counters SET counter_value = counter_value + 1 WHERE name = 'producer_id'"
            )
            (value,) = conn.execute(
                "SELECT counter_value FROM counters WHERE name = 'producer_id'"
            ).fetchone()
        return int(value)

    # -- agents ------------------------------------------------------------------------------

    def register_agent(self, agent_id: str, host: str, port: int, zone: str, group: str) -> None:
        now = _now_ms()
        with self._transaction(f"register agent {agent_id!r}") as conn:
            conn.execute(
                "INSERT INTO agents (agent_id, host, port, zone, agent_group, started_ms,"
                " heartbeat_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (agent_id) DO UPDATE SET host = excluded.host,"
                " port = excluded.port, zone = excluded.zone,"
                " agent_group = excluded.agent_group, started_ms = excluded.started_ms,"
                " heartbeat_ms = excluded.heartbeat_ms",
                (agent_id, host, port, zone, group, now, now),
            )

    def heartbeat_agent(self, agent_id: str) -> bool:
        with self._transaction(f"heartbeat of agent {agent_id!r}") as conn:
            cursor = conn.execute(
                "UPDATE agents SET heartbeat_ms = ? WHERE agent_id = ?", (_now_ms(), agent_id)
            )
            return cursor.rowcount > 0

    def list_agents(self) -> list[AgentInfo]:
        with self._storage_errors("list agents"):
            rows = (
                self._connection()
                .execute(
                    "SELECT agent_id, host, port, zone, agent_group, started_ms, heartbeat_ms"
                    " FROM agents ORDER BY agent_id"
                )
                .fetchall()
            )
        now = _now_ms()
        return [AgentInfo(*row, heartbeat_age_ms=now - row[6]) for row in rows]

    def forget_agents(self, silent_for_ms: int) -> int:
        with self._transaction("forget silent agents") as conn:
            cursor = conn.execute(
                "DELETE FROM agents WHERE heartbeat_ms < ?", (_now_ms() - silent_for_ms,)
            )
            return cursor.rowcount

    @staticmethod
    def _check_fence(conn: sqlite3.Connection, lease: Lease, what: str) -> None:
        if conn.execute(leases.fence(SQLITE), leases.fence_params(lease)).fetchone() is None:
            raise leases.refused(lease, what)

    # -- query checkpoints -------------------------------------------------------------------

    def record_query_checkpoint(self, lease: Lease, checkpoint: QueryCheckpoint) -> None:
        with self._transaction(f"record checkpoint of query {checkpoint.query!r}") as conn:
            self._check_fence(conn, lease, checkpoints.describe(checkpoint))
            conn.execute(
                leases.sql(checkpoints.RECORD, SQLITE),
                checkpoints.record_params(lease, checkpoint),
            )

    def list_query_checkpoints(self) -> list[QueryCheckpoint]:
        with self._storage_errors("list query checkpoints"):
            rows = self._connection().execute(leases.sql(checkpoints.LIST, SQLITE)).fetchall()
        return [QueryCheckpoint.of(row) for row in rows]

    def query_checkpoint(self, query: str) -> str | None:
        with self._storage_errors(f"read checkpoint of query {query!r}"):
            row = (
                self._connection()
                .execute(leases.sql(checkpoints.LATEST, SQLITE), (query,))
                .fetchone()
            )
        return None if row is None else str(row[0])
