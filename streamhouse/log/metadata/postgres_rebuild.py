"""Replacing a PostgreSQL metadata store by one rebuilt from the objects (``fsck
--rebuild-metadata``), as the SQLite rebuild replaces its file: never in place, the old one kept.

The store of a URL is the StreamHouse tables in the first schema of its ``search_path`` (the
*target*). :func:`rebuild_postgres_store` builds a fresh store in a schema of its own
(``<target>_rebuild_<pid>``), then, in one transaction, moves the target's StreamHouse tables
into ``<target>_replaced_<UTC time>`` and the fresh ones into the target, and drops the empty
build schema. Other tables of the target schema are left where they are. A process that had
the old store open keeps its connections, but finds the new tables at its next statement:
every process using the store must be stopped first, and the rebuild refuses while any agent
(``streamhouse serve``) of the store is alive.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from streamhouse.errors import StorageError
from streamhouse.log.metadata.migrations import POSTGRESQL
from streamhouse.log.metadata.postgres import CONNECT_TIMEOUT_S, PostgresMetadata, redacted

log = logging.getLogger(__name__)

_MAX_IDENTIFIER = 63  # PostgreSQL truncates longer names (NAMEDATALEN - 1)


def _schema_name(base: str, suffix: str) -> str:
    return base[: _MAX_IDENTIFIER - len(suffix)] + suffix


def target_schema(conn: psycopg.Connection, url: str) -> str:
    """The schema the store of ``url`` lives in; ``StorageError`` if none exists."""
    (schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
    if schema is None:
        raise StorageError(f"metadata store {redacted(url)}: no schema of its search_path exists")
    return str(schema)


def live_agents(conn: psycopg.Connection, schema: str, ttl_s: float) -> list[str]:
    """The agents of the store in ``schema`` whose heartbeat is younger than ``ttl_s``."""
    if conn.execute("SELECT to_regclass(%s)", (f'"{schema}".agents',)).fetchone() == (None,):
        return []
    rows = conn.execute(
        sql.SQL(
            f"SELECT agent_id FROM {{}}.agents WHERE heartbeat_ms > {POSTGRESQL.now_ms} - %s"
            " ORDER BY agent_id"
        ).format(sql.Identifier(schema)),
        (int(ttl_s * 1000),),
    ).fetchall()
    return [agent for (agent,) in rows]


def refuse_if_in_use(url: str, *, agent_ttl_s: float) -> None:
    """``StorageError`` if a live agent uses the store of ``url`` (or it cannot be reached)."""
    with _errors(url, "look for live agents"), _connect(url) as conn:
        _refuse_live_agents(conn, url, target_schema(conn, url), agent_ttl_s)


def _refuse_live_agents(conn: psycopg.Connection, url: str, schema: str, ttl_s: float) -> None:
    agents = live_agents(conn, schema, ttl_s)
    if agents:
        raise StorageError(
            f"metadata store {redacted(url)} is in use by {len(agents)} live agent(s)"
            f" ({', '.join(agents)}): stop every process using it (e.g. `streamhouse serve`)"
            " before rebuilding its metadata"
        )


def rebuild_postgres_store(
    url: str, fill: Callable[[PostgresMetadata], None], *, agent_ttl_s: float
) -> str | None:
    """Build a fresh store with ``fill`` and put it in place of the store of ``url``.

    Returns the schema the old StreamHouse tables were moved to, ``None`` if there were none.
    Nothing of the old store changes unless the whole rebuild succeeds.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()).lower()
    with _errors(url, "rebuild"), _connect(url) as conn:
        target = target_schema(conn, url)
        build = _schema_name(target, f"_rebuild_{os.getpid()}")
        drop_build = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(build))
        conn.execute(drop_build)  # a leftover of an interrupted rebuild: nobody uses it
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(build)))
        try:
            with PostgresMetadata(url, schema=build) as fresh:
                fill(fresh)
            with conn.transaction():
                _refuse_live_agents(conn, url, target, agent_ttl_s)
                aside = _swap(conn, target, build, stamp)
        except BaseException:
            if not conn.broken:
                conn.execute(drop_build)
            raise
    log.info("rebuilt metadata store %s; the old tables are in schema %s", redacted(url), aside)
    return aside


def _swap(conn: psycopg.Connection, target: str, build: str, stamp: str) -> str | None:
    def tables(schema: str) -> list[str]:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (schema,)
        ).fetchall()
        return [name for (name,) in rows]

    fresh = tables(build)
    old = sorted(set(tables(target)) & set(fresh))
    aside = None
    if old:
        taken = {name for (name,) in conn.execute("SELECT nspname FROM pg_namespace")}
        aside = _schema_name(target, f"_replaced_{stamp}")
        n = 1
        while aside in taken:
            n += 1
            aside = _schema_name(target, f"_replaced_{stamp}_{n}")
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(aside)))
        for name in old:
            _move(conn, target, name, aside)
    for name in fresh:
        _move(conn, build, name, target)
    conn.execute(sql.SQL("DROP SCHEMA {}").format(sql.Identifier(build)))
    return aside


def _move(conn: psycopg.Connection, source: str, table: str, schema: str) -> None:
    conn.execute(
        sql.SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
            sql.Identifier(source), sql.Identifier(table), sql.Identifier(schema)
        )
    )


@contextmanager
def _errors(url: str, action: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise StorageError(f"metadata store {redacted(url)}: cannot {action}: {exc}") from exc


def _connect(url: str) -> psycopg.Connection:
    with _errors(url, "connect"):
        return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
