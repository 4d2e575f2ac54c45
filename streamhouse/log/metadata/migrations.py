"""Schema migrations of the metadata store, applied in order of ``version``, each exactly once.

One list for every backend. The SQL is dialect-neutral (``TEXT``, ``INTEGER``, ``BIGINT``, no
``AUTOINCREMENT``, no foreign keys, no reserved words as names) so SQLite and PostgreSQL run
the same text; what differs between them is spelled once, in a :class:`Dialect`.
A store records what it applied in ``schema_migrations``; never edit a released migration,
append a new one. A store whose newest migration is newer than this build's is refused.

Tables (one row per ...):

- ``topics``: topic. ``config`` is a JSON object of string to string; ``topic_id`` a UUID string.
- ``partitions``: (topic, partition_id). ``high_watermark`` is the next offset to assign;
  ``max_timestamp`` the largest record timestamp committed so far (-1 when empty).
- ``segments``: index row, one per (topic, partition_id, base_offset): the byte range
  ``[byte_position, byte_position + byte_length)`` of object ``object_key`` holds offsets
  ``[base_offset, last_offset]``. ``running_max_timestamp`` is the largest ``max_timestamp`` of
  this row and every earlier row of the partition at commit time: it never decreases along the
  partition, so "first segment with max_timestamp >= t" is an index seek instead of a scan.
- ``group_offsets``: (group_id, topic, partition_id) committed consumer offset.
- ``catalog``: SQL object, keyed by ``name_key`` (the lower-cased name); ``name`` keeps the case.
- ``counters``: named monotonically increasing counter (``producer_id``).
- ``deleted_objects``: segment object no index row names any more (retention dropped its
  last row) since ``unreferenced_ms``; it is deleted from the object store after a grace
  period, so a fetch or query that read the index before still finds it.
- ``agents``: ``serve`` process sharing the store (an agent), keyed by ``agent_id``: the
  address clients reach it at, its zone and agent group, and the store-clock milliseconds of
  its start and last heartbeat. A clean stop deletes the row; a killed agent's row stays,
  and readers drop it once its heartbeat is older than the TTL.
- ``leases``: named work one agent does at a time (``leases.py``): its holder, fencing
  ``epoch`` and expiry in store-clock milliseconds.
- ``producer_sequences``: idempotent producer on a partition, keyed by (topic, partition_id,
  producer_id): its epoch, the last sequence number indexed, and its last five batches as
  ``first:last:base_offset`` items joined by ``,`` (oldest first), checked and written by
  every segment commit that holds a batch of it.
- ``query_checkpoints``: continuous query (``query_name``): the checkpoint in the object store
  it resumes from (``checkpoints.py``), recorded under its lease's fencing ``epoch``, with the
  source offsets it holds (a JSON object: topic -> partition -> offset).
- ``scram_credentials``: (user_name, mechanism) SASL credential (``kafka/scram.py``): salt,
  iteration count, StoredKey and ServerKey (base64), never the password.
- ``transactions``: transactional producer (``transactional_id``): its producer id and epoch,
  the state of its transaction (``transactions.py``), its timeout and the store-clock
  milliseconds its ongoing transaction started (-1 when none is).
- ``transaction_partitions``: partition in an open transaction, keyed by (transactional_id,
  topic, partition_id): ``first_offset`` is the partition's high watermark when it joined, at
  or below the transaction's first record there; the smallest of a partition is its last
  stable offset.
- ``transaction_offsets``: consumer offset committed inside an open transaction
  (TxnOffsetCommit), keyed by (transactional_id, group_id, topic, partition_id); it moves to
  ``group_offsets`` when the transaction commits.
- ``aborted_transactions``: aborted transaction on a partition, keyed by (topic,
  partition_id, last_offset): the producer id, the first offset and the offset of its ABORT
  marker (``last_offset``), which read_committed fetches list.
- ``acls``: Kafka ACL binding (``security/acl.py``), every column part of the key; the
  numbers are Kafka's (resource type, pattern type, operation, permission). Every change of
  an ACL or a SCRAM credential also bumps the ``security`` row of ``counters``, which agents
  poll to reload their copies.
- ``broker_configs``: dynamic broker config (Kafka's AlterConfigs of a BROKER resource), keyed
  by (broker_name, config_name): ``broker_name`` is a broker id in decimal, or ``''`` for the
  cluster-wide default (:mod:`streamhouse.kafka.broker_config`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from streamhouse.errors import StorageError

logger = logging.getLogger(__name__)

BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " applied_ms BIGINT NOT NULL)"
)
"""Creates the table that records applied migrations; safe to run every time."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change: ``statements`` run in one transaction, then ``version`` is recorded."""

    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial catalog",
        (
            "CREATE TABLE topics ("
            " name TEXT PRIMARY KEY,"
            " topic_id TEXT NOT NULL UNIQUE,"
            " partitions INTEGER NOT NULL,"
            " config TEXT NOT NULL,"
            " created_ms BIGINT NOT NULL)",
            "CREATE TABLE partitions ("
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " log_start_offset BIGINT NOT NULL,"
            " high_watermark BIGINT NOT NULL,"
            " max_timestamp BIGINT NOT NULL,"
            " PRIMARY KEY (topic, partition_id))",
            "CREATE TABLE segments ("
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " base_offset BIGINT NOT NULL,"
            " last_offset BIGINT NOT NULL,"
            " object_key TEXT NOT NULL,"
            " byte_position BIGINT NOT NULL,"
            " byte_length BIGINT NOT NULL,"
            " min_timestamp BIGINT NOT NULL,"
            " max_timestamp BIGINT NOT NULL,"
            " running_max_timestamp BIGINT NOT NULL,"
            " record_count BIGINT NOT NULL,"
            " crc BIGINT NOT NULL,"
            " PRIMARY KEY (topic, partition_id, base_offset))",
            "CREATE INDEX segments_by_last_offset ON segments (topic, partition_id, last_offset)",
            "CREATE INDEX segments_by_running_max_timestamp"
            " ON segments (topic, partition_id, running_max_timestamp, base_offset)",
            "CREATE INDEX segments_by_object_key ON segments (object_key)",
            "CREATE TABLE group_offsets ("
            " group_id TEXT NOT NULL,"
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " committed_offset BIGINT NOT NULL,"
            " metadata TEXT NOT NULL,"
            " commit_ms BIGINT NOT NULL,"
            " PRIMARY KEY (group_id, topic, partition_id))",
            "CREATE INDEX group_offsets_by_topic ON group_offsets (topic)",
            "CREATE TABLE catalog ("
            " name_key TEXT PRIMARY KEY,"
            " name TEXT NOT NULL,"
            " kind TEXT NOT NULL,"
            " sql_text TEXT NOT NULL,"
            " created_ms BIGINT NOT NULL)",
            "CREATE TABLE counters (name TEXT PRIMARY KEY, counter_value BIGINT NOT NULL)",
            "INSERT INTO counters (name, counter_value) VALUES ('producer_id', 0)",
        ),
    ),
    Migration(
        2,
        "objects awaiting deletion",
        (
            "CREATE TABLE deleted_objects ("
            " object_key TEXT PRIMARY KEY,"
            " unreferenced_ms BIGINT NOT NULL)",
        ),
    ),
    Migration(
        3,
        "agents",
        (
            "CREATE TABLE agents ("
            " agent_id TEXT PRIMARY KEY,"
            " host TEXT NOT NULL,"
            " port INTEGER NOT NULL,"
            " zone TEXT NOT NULL,"
            " agent_group TEXT NOT NULL,"
            " started_ms BIGINT NOT NULL,"
            " heartbeat_ms BIGINT NOT NULL)",
        ),
    ),
    Migration(
        4,
        "leases",
        (
            "CREATE TABLE leases ("
            " name TEXT PRIMARY KEY,"
            " holder TEXT NOT NULL,"
            " epoch BIGINT NOT NULL,"
            " expires_ms BIGINT NOT NULL)",
        ),
    ),
    Migration(
        5,
        "producer sequences",
        (
            "CREATE TABLE producer_sequences ("
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " producer_id BIGINT NOT NULL,"
            " producer_epoch INTEGER NOT NULL,"
            " last_sequence BIGINT NOT NULL,"
            " recent_batches TEXT NOT NULL,"
            " updated_ms BIGINT NOT NULL,"
            " PRIMARY KEY (topic, partition_id, producer_id))",
        ),
    ),
    Migration(
        6,
        "query checkpoints",
        (
            "CREATE TABLE query_checkpoints ("
            " query_name TEXT PRIMARY KEY,"
            " checkpoint_id TEXT NOT NULL,"
            " epoch BIGINT NOT NULL,"
            " positions TEXT NOT NULL,"
            " written_ms BIGINT NOT NULL)",
        ),
    ),
    Migration(
        7,
        "scram credentials",
        (
            "CREATE TABLE scram_credentials ("
            " user_name TEXT NOT NULL,"
            " mechanism TEXT NOT NULL,"
            " salt TEXT NOT NULL,"
            " iterations INTEGER NOT NULL,"
            " stored_key TEXT NOT NULL,"
            " server_key TEXT NOT NULL,"
            " updated_ms BIGINT NOT NULL,"
            " PRIMARY KEY (user_name, mechanism))",
        ),
    ),
    Migration(
        8,
        "transactions",
        (
            "CREATE TABLE transactions ("
            " transactional_id TEXT PRIMARY KEY,"
            " producer_id BIGINT NOT NULL,"
            " producer_epoch INTEGER NOT NULL,"
            " state TEXT NOT NULL,"
            " timeout_ms BIGINT NOT NULL,"
            " started_ms BIGINT NOT NULL,"
            " updated_ms BIGINT NOT NULL)",
            "CREATE TABLE transaction_partitions ("
            " transactional_id TEXT NOT NULL,"
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " producer_id BIGINT NOT NULL,"
            " first_offset BIGINT NOT NULL,"
            " PRIMARY KEY (transactional_id, topic, partition_id))",
            "CREATE INDEX transaction_partitions_by_partition"
            " ON transaction_partitions (topic, partition_id, first_offset)",
            "CREATE TABLE transaction_offsets ("
            " transactional_id TEXT NOT NULL,"
            " group_id TEXT NOT NULL,"
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " committed_offset BIGINT NOT NULL,"
            " metadata TEXT NOT NULL,"
            " PRIMARY KEY (transactional_id, group_id, topic, partition_id))",
            "CREATE TABLE aborted_transactions ("
            " topic TEXT NOT NULL,"
            " partition_id INTEGER NOT NULL,"
            " last_offset BIGINT NOT NULL,"
            " producer_id BIGINT NOT NULL,"
            " first_offset BIGINT NOT NULL,"
            " PRIMARY KEY (topic, partition_id, last_offset))",
        ),
    ),
    Migration(
        9,
        "acls",
        (
            "CREATE TABLE acls ("
            " resource_type INTEGER NOT NULL,"
            " resource_name TEXT NOT NULL,"
            " pattern_type INTEGER NOT NULL,"
            " principal TEXT NOT NULL,"
            " host TEXT NOT NULL,"
            " operation INTEGER NOT NULL,"
            " permission INTEGER NOT NULL,"
            " PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host,"
            " operation, permission))",
            "INSERT INTO counters (name, counter_value) VALUES ('security', 0)",
        ),
    ),
    Migration(
        10,
        "dynamic broker configs",
        (
            "CREATE TABLE broker_configs ("
            " broker_name TEXT NOT NULL,"
            " config_name TEXT NOT NULL,"
            " config_value TEXT NOT NULL,"
            " updated_ms BIGINT NOT NULL,"
            " PRIMARY KEY (broker_name, config_name))",
        ),
    ),
)
"""Every migration, ascending by version with no gaps."""

LATEST_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL of two backends, spelled once.

    ``param`` is the driver's placeholder (sqlite3 ``?``, psycopg ``%s``); ``now_ms`` the
    store's wall clock in milliseconds, as SQL; ``serialize`` runs
    first in the migration transaction so that two processes opening one fresh store at once
    apply each migration once (SQLite's ``BEGIN IMMEDIATE`` does that by itself).
    ``byte_order`` follows a text column to sort it byte by byte whatever the database's locale
    (SQLite always does); ``for_update`` follows a ``SELECT`` whose rows a write transaction
    locks (a SQLite write transaction locks the whole file from its ``BEGIN IMMEDIATE``);
    ``index_hints`` says whether the planner takes ``INDEXED BY`` (see :meth:`indexed_by`).
    """

    name: str
    param: str
    now_ms: str
    serialize: tuple[str, ...] = ()
    byte_order: str = ""
    for_update: str = ""
    index_hints: bool = False

    def indexed_by(self, index: str) -> str:
        """The clause that makes the planner read through ``index``, where it takes one.

        >>> SQLITE.indexed_by("segments_by_last_offset"), POSTGRESQL.indexed_by("x")
        (' INDEXED BY segments_by_last_offset', '')
        """
        return f" INDEXED BY {index}" if self.index_hints else ""

    def sql(self, text: str) -> str:
        """``text`` with its ``?`` placeholders in this dialect's style.

        >>> POSTGRESQL.sql("SELECT name FROM topics WHERE name = ?")
        'SELECT name FROM topics WHERE name = %s'
        """
        return text if self.param == "?" else text.replace("?", self.param)


SQLITE = Dialect(
    "sqlite",
    "?",
    "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
    index_hints=True,
)
POSTGRESQL = Dialect(
    "postgresql",
    "%s",
    "(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    # One lock for every schema of the database: migrations are rare and short.
    serialize=("SELECT pg_advisory_xact_lock(7387617889248309554)",),
    # Byte order, as SQLite sorts text: "sorted by name" must not depend on the locale.
    byte_order=' COLLATE "C"',
    for_update=" FOR UPDATE",
)


class SqlConnection(Protocol):
    """The part of a DB-API connection (sqlite3, psycopg) that :func:`migrate` uses."""

    def execute(self, sql: str, params: Sequence[object] = ..., /) -> Iterable[tuple]: ...


def migrate(conn: SqlConnection, dialect: Dialect, store: str) -> list[Migration]:
    """Apply the migrations ``conn`` lacks, inside the caller's transaction; return them.

    ``StorageError`` if the store has a migration newer than :data:`LATEST_VERSION` (it was
    created or upgraded by a newer StreamHouse); ``store`` names it in messages.
    """
    for statement in dialect.serialize:
        conn.execute(statement)
    conn.execute(BOOTSTRAP)
    applied = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise StorageError(
            f"metadata store {store} has schema version {newest}, newer than the"
            f" {LATEST_VERSION} this StreamHouse knows: upgrade StreamHouse"
        )
    done = []
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        for statement in migration.statements:
            conn.execute(statement)
        conn.execute(
            dialect.sql(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)"
            ),
            (migration.version, migration.name, time.time_ns() // 1_000_000),
        )
        logger.info(
            "metadata store %s: applied migration %d (%s)", store, migration.version, migration.name
        )
        done.append(migration)
    return done
