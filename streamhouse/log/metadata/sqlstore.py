"""What every SQL metadata store does the same way: the reads of the catalog and the one-statement
writes, written once over a :class:`~streamhouse.log.metadata.migrations.Dialect`.

:class:`SqlMetadata` is the base of :class:`~streamhouse.log.metadata.sqlite.SQLiteMetadata`
and :class:`~streamhouse.log.metadata.postgres.PostgresMetadata`. A store says how it hands out
connections (:meth:`SqlMetadata._reader`, :meth:`SqlMetadata._snapshot`,
:meth:`SqlMetadata._statement`: each a context manager that turns driver errors into
``StorageError`` naming the store and ``action``); the SQL here is written with ``?``
placeholders and the dialect's spellings, and runs unchanged on both.
"""

from __future__ import annotations

import json
import logging
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ClassVar, Self

from streamhouse.errors import LogError, UnknownPartitionError, UnknownTopicError
from streamhouse.log.metadata import (
    CatalogEntry,
    GroupOffset,
    PartitionOffsets,
    SegmentRow,
    TopicInfo,
    leases,
)
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.migrations import Dialect
from streamhouse.log.metadata.rules import (
    DUE_OBJECTS,
    OLDEST_ROW_WITHIN_BYTES,
    SEGMENT_SELECT_COLUMNS,
    changed_config,
    config_json,
    topic_config,
)
from streamhouse.log.metadata.transactions import TransactionStore
from streamhouse.security.acl import (
    AclBinding,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)
from streamhouse.security.scram import ScramCredential

logger = logging.getLogger(__name__)

BULK_SEGMENT_PARTITIONS = 4
"""Above this many partitions, :meth:`SqlMetadata.segments_of_partitions` reads the topic's rows
in one statement; at or below, a partition at a time (each a seek on the index)."""

TOPIC_COLUMNS = "name, partitions, config, topic_id, created_ms"
"""The ``topics`` columns in the order :meth:`SqlMetadata._topic_from_row` reads them."""

Connection = Any
"""A DB-API connection of the store's driver (``sqlite3.Connection``, ``psycopg.Connection``):
``execute(sql, params)`` returns a cursor with ``fetchone``/``fetchall``/``rowcount``."""


class SqlMetadata:
    """The reads (and one-statement writes) of the ``Metadata`` protocol in SQL."""

    dialect: ClassVar[Dialect]

    # -- connections: each store spells these ------------------------------------------------

    def _reader(self, action: str) -> AbstractContextManager[Connection]:
        """A connection for one read statement."""
        raise NotImplementedError

    def _snapshot(self, action: str) -> AbstractContextManager[Connection]:
        """A connection for reads that should see one state (by default as :meth:`_reader`)."""
        return self._reader(action)

    def _statement(self, action: str) -> AbstractContextManager[Connection]:
        """A connection for one write statement, committed when the block returns."""
        raise NotImplementedError

    def _transaction(self, action: str) -> AbstractContextManager[Connection]:
        """A write transaction: committed if the block returns, rolled back if it raises."""
        raise NotImplementedError

    def _lazy_transaction(self, action: str) -> AbstractContextManager[Connection]:
        """A write transaction whose COMMIT does not wait for the disk (the default: it
        does). A crash of this process keeps it; a power loss may lose it, but only together
        with every later commit: it is durable once any later :meth:`_transaction` is (the
        store's log is written in order). For changes nobody is told are final on their own.
        """
        return self._transaction(action)

    def _add_partitions(self, conn: Connection, topic: str, start: int, stop: int) -> None:
        """Insert the empty partitions ``[start, stop)`` of ``topic``."""
        raise NotImplementedError

    def _sql(self, text: str) -> str:
        return self.dialect.sql(text)

    @property
    def transactions(self) -> TransactionStore:
        """The state of Kafka transactions in this store."""
        store = self.__dict__.get("_transaction_store")
        if store is None:
            store = self.__dict__["_transaction_store"] = TransactionStore(
                self._transaction,
                self._lazy_transaction,
                self._reader,
                self._sql,
                self.dialect.now_ms,
                self.dialect.for_update,
            )
        return store

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- topics ------------------------------------------------------------------------------

    @staticmethod
    def _topic_from_row(row: tuple[str, int, str, str, int]) -> TopicInfo:
        name, partitions, config, topic_id, created_ms = row
        return TopicInfo(name, partitions, json.loads(config), topic_id, created_ms)

    def _read_topic(self, conn: Connection, name: str, *, lock: bool = False) -> TopicInfo | None:
        """The topic ``name``; ``lock`` (inside a write transaction) locks its row until then."""
        sql = f"SELECT {TOPIC_COLUMNS} FROM topics WHERE name = ?"
        if lock:
            sql += self.dialect.for_update
        row = conn.execute(self._sql(sql), (name,)).fetchone()
        return None if row is None else self._topic_from_row(row)

    def get_topic(self, name: str) -> TopicInfo | None:
        with self._reader(f"read topic {name!r}") as conn:
            return self._read_topic(conn, name)

    def list_topics(self) -> list[TopicInfo]:
        with self._reader("list topics") as conn:
            rows = conn.execute(
                f"SELECT {TOPIC_COLUMNS} FROM topics ORDER BY name{self.dialect.byte_order}"
            ).fetchall()
        return [self._topic_from_row(row) for row in rows]

    def set_partitions(self, name: str, count: int) -> TopicInfo:
        if isinstance(count, bool) or not isinstance(count, int):
            raise LogError(f"topic {name!r}: partition count must be an integer, got {count!r}")
        with self._transaction(f"set partitions of {name!r}") as conn:
            info = self._read_topic(conn, name, lock=True)
            if info is None:
                raise UnknownTopicError(name)
            if count < info.partitions:
                raise LogError(
                    f"topic {name!r} has {info.partitions} partitions; cannot shrink to {count}"
                )
            if count == info.partitions:
                return info
            conn.execute(
                self._sql("UPDATE topics SET partitions = ? WHERE name = ?"), (count, name)
            )
            self._add_partitions(conn, name, info.partitions, count)
        logger.info("topic %r grown from %d to %d partitions", name, info.partitions, count)
        return TopicInfo(name, count, info.config, info.topic_id, info.created_ms)

    def set_topic_config(self, name: str, config: Mapping[str, str]) -> TopicInfo:
        checked = topic_config(config)  # refused before the topic is looked at
        return self._write_topic_config(f"set config of {name!r}", name, lambda _: checked)

    def update_topic_config(self, name: str, changes: Mapping[str, str | None]) -> TopicInfo:
        return self._write_topic_config(
            f"update config of {name!r}", name, lambda old: changed_config(old, changes)
        )

    def _write_topic_config(
        self, action: str, name: str, new: Callable[[dict[str, str]], Mapping[str, str]]
    ) -> TopicInfo:
        """Replace the config of topic ``name`` by ``new(its config)``, checked."""
        with self._transaction(action) as conn:
            info = self._read_topic(conn, name, lock=True)
            if info is None:
                raise UnknownTopicError(name)
            config = topic_config(new(info.config))
            conn.execute(
                self._sql("UPDATE topics SET config = ? WHERE name = ?"),
                (config_json(config), name),
            )
        return TopicInfo(name, info.partitions, config, info.topic_id, info.created_ms)

    def partition_offsets(self, topic: str) -> dict[int, PartitionOffsets]:
        with self._reader(f"read offsets of {topic!r}") as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT partition_id, log_start_offset, high_watermark FROM partitions"
                    " WHERE topic = ? ORDER BY partition_id"
                ),
                (topic,),
            ).fetchall()
        if not rows:  # every topic has at least one partition
            raise UnknownTopicError(topic)
        return {p: PartitionOffsets(start, hw) for p, start, hw in rows}

    def partition_offset(self, topic: str, partition: int) -> PartitionOffsets:
        with self._reader(f"read offsets of {topic!r}") as conn:
            row = conn.execute(
                self._sql(
                    "SELECT log_start_offset, high_watermark FROM partitions"
                    " WHERE topic = ? AND partition_id = ?"
                ),
                (topic, partition),
            ).fetchone()
        if row is None:
            self.partition_offsets(topic)  # UnknownTopicError if the topic is unknown
            raise UnknownPartitionError(topic, partition)
        return PartitionOffsets(*row)

    # -- the segment index -------------------------------------------------------------------

    def is_indexed(self, object_key: str) -> bool:
        with self._reader(f"look up object {object_key!r}") as conn:
            row = conn.execute(
                self._sql("SELECT 1 FROM segments WHERE object_key = ? LIMIT 1"), (object_key,)
            ).fetchone()
        return row is not None

    def segments(
        self,
        topic: str,
        partition: int,
        from_offset: int = 0,
        to_offset: int | None = None,
        *,
        limit: int | None = None,
    ) -> list[SegmentRow]:
        """Rows with ``last_offset >= from_offset`` (and ``base_offset < to_offset``), ordered
        by offset; at most ``limit`` rows. Unknown topics and partitions have no rows."""
        # Rows of a partition never overlap (commit_segment sequences them), so base and last
        # offsets rise together: seek the first row with last_offset >= from_offset on its
        # index, then read a primary-key range from that row's base offset (up to to_offset).
        index = self.dialect.indexed_by("segments_by_last_offset")
        sql = (
            f"SELECT {SEGMENT_SELECT_COLUMNS} FROM segments"
            " WHERE topic = ? AND partition_id = ? AND base_offset >= ("
            f"  SELECT base_offset FROM segments{index}"
            "  WHERE topic = ? AND partition_id = ? AND last_offset >= ?"
            "  ORDER BY last_offset LIMIT 1)"
        )
        params: list[object] = [topic, partition, topic, partition, from_offset]
        if to_offset is not None:
            sql += " AND base_offset < ?"
            params.append(to_offset)
        sql += " ORDER BY base_offset"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._reader(f"read segments of {topic}/{partition}") as conn:
            rows = conn.execute(self._sql(sql), params).fetchall()
        return [SegmentRow(*row) for row in rows]

    def segments_of_partitions(
        self, topic: str, ranges: Mapping[int, tuple[int, int | None]]
    ) -> dict[int, list[SegmentRow]]:
        if len(ranges) <= BULK_SEGMENT_PARTITIONS:
            return {p: self.segments(topic, p, start, end) for p, (start, end) in ranges.items()}
        # One read of the topic's rows from the lowest start on (ordered by the primary key),
        # kept per partition by its own range: one round trip instead of one per partition.
        lowest = min(start for start, _ in ranges.values())
        found: dict[int, list[SegmentRow]] = {p: [] for p in ranges}
        with self._reader(f"read segments of {topic}") as conn:
            rows = conn.execute(
                self._sql(
                    f"SELECT {SEGMENT_SELECT_COLUMNS} FROM segments"
                    " WHERE topic = ? AND last_offset >= ? ORDER BY partition_id, base_offset"
                ),
                (topic, lowest),
            ).fetchall()
        for values in rows:
            row = SegmentRow(*values)
            wanted = ranges.get(row.partition)
            if wanted is None or row.last_offset < wanted[0]:
                continue
            if wanted[1] is None or row.base_offset < wanted[1]:
                found[row.partition].append(row)
        return found

    def warm(self, topic: str, from_offsets: Mapping[int, int]) -> None:
        """Nothing: the store caches nothing (:class:`CachedMetadata` does)."""

    def segment_for_timestamp(
        self, topic: str, partition: int, timestamp_ms: int
    ) -> SegmentRow | None:
        index = self.dialect.indexed_by("segments_by_running_max_timestamp")
        with self._snapshot(f"find timestamp {timestamp_ms} in {topic}/{partition}") as conn:
            row = conn.execute(
                self._sql(
                    f"SELECT {SEGMENT_SELECT_COLUMNS} FROM segments{index}"
                    " WHERE topic = ? AND partition_id = ? AND running_max_timestamp >= ?"
                    " ORDER BY running_max_timestamp, base_offset LIMIT 1"
                ),
                (topic, partition, timestamp_ms),
            ).fetchone()
            if row is None:
                return None
            found = SegmentRow(*row)
            if found.max_timestamp >= timestamp_ms:
                return found
            # The row that raised the running maximum is gone (retention); every row before
            # `found` has max_timestamp < timestamp_ms, so scan forward from it.
            row = conn.execute(
                self._sql(
                    f"SELECT {SEGMENT_SELECT_COLUMNS} FROM segments"
                    " WHERE topic = ? AND partition_id = ? AND base_offset > ?"
                    " AND max_timestamp >= ? ORDER BY base_offset LIMIT 1"
                ),
                (topic, partition, found.base_offset, timestamp_ms),
            ).fetchone()
        return None if row is None else SegmentRow(*row)

    # -- retention -----------------------------------------------------------------------------

    def oldest_row_within_bytes(self, topic: str, partition: int, max_bytes: int) -> int | None:
        with self._reader(f"measure {topic}/{partition}") as conn:
            row = conn.execute(
                self._sql(OLDEST_ROW_WITHIN_BYTES), (topic, partition, max_bytes)
            ).fetchone()
        return None if row is None else row[0]

    def due_objects(self, unreferenced_before_ms: int) -> list[str]:
        with self._reader("list objects awaiting deletion") as conn:
            rows = conn.execute(self._sql(DUE_OBJECTS), (unreferenced_before_ms,)).fetchall()
        return [key for (key,) in rows]

    # -- consumer groups ---------------------------------------------------------------------

    def group_offsets(self, group: str) -> dict[tuple[str, int], GroupOffset]:
        with self._reader(f"read offsets of group {group!r}") as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT topic, partition_id, committed_offset, metadata, commit_ms"
                    " FROM group_offsets WHERE group_id = ?"
                    f" ORDER BY topic{self.dialect.byte_order}, partition_id"
                ),
                (group,),
            ).fetchall()
        return {(t, p): GroupOffset(o, m, ms) for t, p, o, m, ms in rows}

    def list_groups(self) -> list[str]:
        with self._reader("list groups") as conn:
            rows = conn.execute(
                f"SELECT DISTINCT group_id{self.dialect.byte_order} FROM group_offsets ORDER BY 1"
            ).fetchall()
        return [group for (group,) in rows]

    def delete_group(self, group: str) -> None:
        with self._statement(f"delete group {group!r}") as conn:
            conn.execute(self._sql("DELETE FROM group_offsets WHERE group_id = ?"), (group,))

    def delete_group_offsets(self, group: str, partitions: Iterable[tuple[str, int]]) -> None:
        sql = self._sql(
            "DELETE FROM group_offsets WHERE group_id = ? AND topic = ? AND partition_id = ?"
        )
        with self._statement(f"delete offsets of group {group!r}") as conn:
            for topic, partition in partitions:  # one statement per partition an admin names
                conn.execute(sql, (group, topic, partition))

    # -- the SQL catalog ---------------------------------------------------------------------

    def get_catalog(self, name: str) -> CatalogEntry | None:
        with self._reader(f"read catalog entry {name!r}") as conn:
            row = conn.execute(
                self._sql(
                    "SELECT name, kind, sql_text, created_ms FROM catalog WHERE name_key = ?"
                ),
                (name.lower(),),
            ).fetchone()
        return None if row is None else CatalogEntry(*row)

    def list_catalog(self) -> list[CatalogEntry]:
        with self._reader("list the catalog") as conn:
            rows = conn.execute(
                "SELECT name, kind, sql_text, created_ms FROM catalog"
                f" ORDER BY name_key{self.dialect.byte_order}"
            ).fetchall()
        return [CatalogEntry(*row) for row in rows]

    def drop_catalog(self, name: str) -> bool:
        with self._statement(f"drop catalog entry {name!r}") as conn:
            cursor = conn.execute(
                self._sql("DELETE FROM catalog WHERE name_key = ?"), (name.lower(),)
            )
            return cursor.rowcount > 0

    # -- SASL credentials --------------------------------------------------------------------

    def put_credentials(self, user: str, credentials: Sequence[ScramCredential]) -> None:
        with self._transaction(f"store credentials of user {user!r}") as conn:
            conn.execute(self._sql("DELETE FROM scram_credentials WHERE user_name = ?"), (user,))
            conn.execute(_BUMP_SECURITY)
            for c in credentials:
                conn.execute(
                    self._sql(
                        "INSERT INTO scram_credentials (user_name, mechanism, salt, iterations,"
                        f" stored_key, server_key, updated_ms) VALUES (?, ?, ?, ?, ?, ?,"
                        f" {self.dialect.now_ms})"
                    ),
                    (user, c.mechanism, _b64(c.salt), c.iterations, _b64(c.stored_key),
                     _b64(c.server_key)),
                )  # fmt: skip

    def get_credential(self, user: str, mechanism: str) -> ScramCredential | None:
        with self._reader(f"read credential of user {user!r}") as conn:
            row = conn.execute(
                self._sql(
                    "SELECT salt, iterations, stored_key, server_key FROM scram_credentials"
                    " WHERE user_name = ? AND mechanism = ?"
                ),
                (user, mechanism),
            ).fetchone()
        if row is None:
            return None
        salt, iterations, stored_key, server_key = row
        return ScramCredential(
            user, mechanism, b64decode(salt), iterations, b64decode(stored_key),
            b64decode(server_key),
        )  # fmt: skip

    def list_credentials(self) -> list[tuple[str, str, int]]:
        with self._reader("list credentials") as conn:
            rows = conn.execute(
                "SELECT user_name, mechanism, iterations FROM scram_credentials"
                f" ORDER BY user_name{self.dialect.byte_order}, mechanism"
            ).fetchall()
        return [(user, mechanism, iterations) for user, mechanism, iterations in rows]

    def delete_credentials(self, user: str) -> bool:
        with self._transaction(f"delete credentials of user {user!r}") as conn:
            cursor = conn.execute(
                self._sql("DELETE FROM scram_credentials WHERE user_name = ?"), (user,)
            )
            conn.execute(_BUMP_SECURITY)
            return cursor.rowcount > 0

    # -- ACLs --------------------------------------------------------------------------------

    def create_acls(self, bindings: Sequence[AclBinding]) -> None:
        with self._transaction(f"create {len(bindings)} ACL(s)") as conn:
            for b in bindings:
                conn.execute(
                    self._sql(
                        f"INSERT INTO acls ({_ACL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING"
                    ),
                    _acl_row(b),
                )
            conn.execute(_BUMP_SECURITY)

    def list_acls(self) -> list[AclBinding]:
        with self._reader("list ACLs") as conn:
            rows = conn.execute(f"SELECT {_ACL_COLUMNS} FROM acls").fetchall()
        return [
            AclBinding(ResourceType(t), name, PatternType(pt), principal, host,
                       AclOperation(op), AclPermission(perm))
            for t, name, pt, principal, host, op, perm in rows
        ]  # fmt: skip

    def delete_acls(self, bindings: Sequence[AclBinding]) -> None:
        with self._transaction(f"delete {len(bindings)} ACL(s)") as conn:
            for b in bindings:
                conn.execute(
                    self._sql(
                        "DELETE FROM acls WHERE resource_type = ? AND resource_name = ?"
                        " AND pattern_type = ? AND principal = ? AND host = ? AND operation = ?"
                        " AND permission = ?"
                    ),
                    _acl_row(b),
                )
            conn.execute(_BUMP_SECURITY)

    def security_version(self) -> int:
        with self._reader("read the security version") as conn:
            row = conn.execute(
                "SELECT counter_value FROM counters WHERE name = 'security'"
            ).fetchone()
        return 0 if row is None else int(row[0])

    # -- dynamic broker configs --------------------------------------------------------------

    def broker_config(self, broker: str) -> dict[str, str]:
        with self._reader(f"read the dynamic configs of broker {broker!r}") as conn:
            rows = conn.execute(
                self._sql(_BROKER_CONFIG),
                (broker,),
            ).fetchall()
        return dict(rows)

    def alter_broker_config(
        self, broker: str, changes: Mapping[str, str | None], *, replace: bool = False
    ) -> dict[str, str]:
        with self._transaction(f"alter the dynamic configs of broker {broker!r}") as conn:
            if replace:
                conn.execute(
                    self._sql("DELETE FROM broker_configs WHERE broker_name = ?"), (broker,)
                )
            for name, value in changes.items():
                if value is None:
                    conn.execute(
                        self._sql(
                            "DELETE FROM broker_configs WHERE broker_name = ? AND config_name = ?"
                        ),
                        (broker, name),
                    )
                    continue
                conn.execute(
                    self._sql(
                        "INSERT INTO broker_configs"
                        " (broker_name, config_name, config_value, updated_ms)"
                        f" VALUES (?, ?, ?, {self.dialect.now_ms})"
                        " ON CONFLICT (broker_name, config_name) DO UPDATE"
                        " SET config_value = excluded.config_value, updated_ms = excluded.updated_ms"
                    ),
                    (broker, name, value),
                )
            rows = conn.execute(
                self._sql(_BROKER_CONFIG),
                (broker,),
            ).fetchall()
        return dict(rows)

    # -- agents ------------------------------------------------------------------------------

    def deregister_agent(self, agent_id: str) -> None:
        with self._statement(f"deregister agent {agent_id!r}") as conn:
            conn.execute(self._sql("DELETE FROM agents WHERE agent_id = ?"), (agent_id,))

    # -- leases ------------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> Lease | None:
        with self._statement(f"acquire lease {name!r}") as conn:
            row = conn.execute(
                leases.sql(leases.ACQUIRE, self.dialect), (name, holder, leases.check_ttl(ttl_ms))
            ).fetchone()
        return None if row is None else Lease(*row)

    def renew_lease(self, lease: Lease, ttl_ms: int) -> bool:
        with self._statement(f"renew lease {lease.name!r}") as conn:
            cursor = conn.execute(
                leases.sql(leases.RENEW, self.dialect),
                (leases.check_ttl(ttl_ms), lease.name, lease.holder, lease.epoch),
            )
            return cursor.rowcount > 0

    def release_lease(self, lease: Lease) -> None:
        with self._statement(f"release lease {lease.name!r}") as conn:
            conn.execute(
                leases.sql(leases.RELEASE, self.dialect), (lease.name, lease.holder, lease.epoch)
            )

    def list_leases(self, prefix: str = "") -> list[Lease]:
        with self._reader("list leases") as conn:
            rows = conn.execute(
                leases.sql(leases.LIST, self.dialect), leases.prefix_bounds(prefix)
            ).fetchall()
        return [Lease(*row) for row in rows]


_ACL_COLUMNS = "resource_type, resource_name, pattern_type, principal, host, operation, permission"
_BROKER_CONFIG = "SELECT config_name, config_value FROM broker_configs WHERE broker_name = ?"
_BUMP_SECURITY = "UPDATE counters SET counter_value = counter_value + 1 WHERE name = 'security'"


def _acl_row(b: AclBinding) -> tuple[object, ...]:
    return (int(b.resource_type), b.resource_name, int(b.pattern_type), b.principal, b.host,
            int(b.operation), int(b.permission))  # fmt: skip


def _b64(data: bytes) -> str:
    return b64encode(data).decode()
