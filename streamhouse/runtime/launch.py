"""Turn a ``.sql`` file (or text) into a running continuous query.

A file holds any number of DDL statements (``CREATE STREAM ...``: one the catalog holds already,
declared the same, is a no-op, so the file runs again after a restart; ``CREATE TEMPORARY ...``
declares an object of the query's session only), ``SET 'option' =
'value';`` lines (see :mod:`.options`) and exactly one continuous statement: ``SELECT``,
``INSERT INTO sink SELECT``, ``CREATE MATERIALIZED VIEW v AS SELECT``, or a statement set
(``EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END;``): one query with a sink per
INSERT, one read of the sources and one checkpoint (see :mod:`.branch`). The query's name (its
state directory, its dead-letter topic) is the view's name, else the file's stem, else given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.log.metadata import CatalogEntry
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.options import QueryOptions, set_options
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.runtime.task_state import parallel_states
from streamhouse.sql.declarations import created_name, declaration_difference
from streamhouse.sql.engine import Engine
from streamhouse.sql.parse import DIALECT, sql_error
from streamhouse.sql.session import is_temporary
from streamhouse.sql.statement_set import StatementSet, parse_with_sets

log = logging.getLogger(__name__)

_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def is_materialized_view(statement: exp.Expr) -> bool:
    if (
        not isinstance(statement, exp.Create)
        or (statement.args.get("kind") or "").upper() != "VIEW"
    ):
        return False
    properties = statement.args.get("properties")
    return properties is not None and any(
        isinstance(p, exp.MaterializedProperty) for p in properties.expressions
    )


def read_source(sql_or_path: str | Path) -> tuple[str, str | None]:
    """(SQL text, default name): a path to an existing file is read, anything else is SQL."""
    candidate = Path(sql_or_path) if not isinstance(sql_or_path, Path) else sql_or_path
    text = str(sql_or_path)
    looks_like_path = isinstance(sql_or_path, Path) or (
        "\n" not in text and len(text) < 4096 and text.strip().lower().endswith(".sql")
    )
    if looks_like_path:
        if not candidate.is_file():
            raise SqlError(f"query file {candidate} does not exist")
        try:
            return candidate.read_text(encoding="utf-8"), candidate.stem
        except UnicodeDecodeError as exc:
            raise SqlError(f"query file {candidate} is not UTF-8 (byte {exc.start})") from None
    return text, None


def _check_same(existing: CatalogEntry, statement: exp.Create, source: str) -> None:
    """Refuse ``statement`` if it declares ``existing`` (the catalog's entry) differently."""
    difference = declaration_difference(existing.sql, statement)
    if difference is not None:
        raise sql_error(
            f"{source}: {existing.kind} {existing.name!r} differs from the catalog's: "
            f"{difference} (DROP it first, or declare it with CREATE OR REPLACE)",
            statement.this,
        )


def _declare(engine: Engine, statement: exp.Expr, source: str) -> None:
    """Run one DDL statement of a query file.

    A plain ``CREATE`` of an object the catalog holds already, declared the same, is a no-op:
    the file's DDL is part of the query's definition, so running the file again (a restart of
    ``serve --queries``) resumes the query instead of failing on its own declarations.
    """
    if (
        isinstance(statement, exp.Create)
        and not is_temporary(statement)  # the query's session declares it anew at each start
        and not statement.args.get("replace")
        and not statement.args.get("exists")
    ):
        existing = engine.log.metadata.get_catalog(created_name(statement))
        if existing is not None:
            _check_same(existing, statement, source)
            log.info("%s: %s %s is declared already", source, existing.kind, existing.name)
            return
    engine.statement(statement)


@dataclass(frozen=True)
class QueryFile:
    """A query file (or text) read and parsed: its SET options, its DDL statements, its one
    continuous statement and the name the query runs under."""

    source: str  # how messages name it
    settings: dict[str, Any]
    declarations: list[exp.Expr]
    statement: exp.Expr | StatementSet
    name: str

    @classmethod
    def read(cls, sql_or_path: str | Path, name: str | None = None) -> QueryFile:
        """Parse ``sql_or_path``: ``SqlError`` unless it holds exactly one continuous statement."""
        text, default_name = read_source(sql_or_path)
        source = f"query file {sql_or_path}" if default_name is not None else "query"
        settings: dict[str, Any] = {}
        continuous: list[exp.Expr | StatementSet] = []
        declarations: list[exp.Expr] = []
        for statement in parse_with_sets(text):
            if isinstance(statement, StatementSet):
                continuous.append(statement)
            elif isinstance(statement, exp.Set):
                settings.update(set_options(statement))
            elif isinstance(statement, exp.Insert | exp.Query) or is_materialized_view(statement):
                continuous.append(statement)
            else:
                declarations.append(statement)
        if len(continuous) != 1:
            where = continuous[1] if len(continuous) > 1 else None
            if where is None:
                raise SqlError(
                    "no continuous statement (SELECT, INSERT INTO or CREATE MATERIALIZED VIEW)"
                    " found"
                )
            if isinstance(where, StatementSet):
                raise SqlError(
                    "a query file holds one continuous statement (or one statement set)",
                    where.line,
                    where.column,
                )
            raise sql_error(
                "a query file holds one continuous statement (several INSERTs: put them in"
                " EXECUTE STATEMENT SET BEGIN ... END)",
                where,
            )
        statement = continuous[0]
        if is_materialized_view(statement):
            name = name or statement.this.name
        name = _NAME.sub("_", name or default_name or "query")
        return cls(source, settings, declarations, statement, name)


def declared(engine: Engine, query_file: QueryFile) -> Engine:
    """A session of ``engine`` of the query's own, with the file's DDL run in it."""
    engine = engine.session()
    for declaration in query_file.declarations:
        _declare(engine, declaration, query_file.source)
    return engine


def start_query(
    engine: Engine,
    sql_or_path: str | Path | QueryFile,
    *,
    name: str | None = None,
    state_root: Path,
    options: dict[str, Any] | None = None,
    on_results: Callable[[pa.Table], None] | None = None,
    start: bool = True,
    fence: Lease | None = None,
) -> ContinuousQuery:
    """Run the DDL and SET lines of ``sql_or_path``, then start its continuous statement.

    With ``fence`` (the query's lease), the query restores the checkpoint recorded under it
    and writes only while it is held. The file's temporary objects live in a session of the
    query's own, which starts from ``engine``'s."""
    query_file = (
        sql_or_path if isinstance(sql_or_path, QueryFile) else QueryFile.read(sql_or_path, name)
    )
    source = query_file.source
    engine = declared(engine, query_file)
    statement = query_file.statement
    if is_materialized_view(statement):
        view = statement.this.name
        existing = engine.log.metadata.get_catalog(view)
        if existing is None:
            engine.log.metadata.put_catalog(view, "view", statement.sql(dialect=DIALECT))
        else:
            _check_same(existing, statement, source)
    query_options = QueryOptions().with_options({**query_file.settings, **(options or {})})
    rescaled = state_root.exists() and bool(parallel_states(state_root, query_file.name))
    if query_options.parallelism > 1 or rescaled:  # rescaled: state of a parallel run
        from streamhouse.runtime.parallel import ParallelQuery

        if fence is not None or is_materialized_view(statement):
            raise SqlError(
                "parallelism > 1 runs queries of one process (not views, not agents) yet"
            )
        parallel = ParallelQuery(
            engine.log.settings,
            engine.log,
            query_file,
            state_root,
            query_options,
            dict(options or {}),
            query_options.parallelism,
            on_results,
            engine._resolve,
        )
        if start:
            parallel.start()
        return parallel  # type: ignore[return-value]
    query = ContinuousQuery(
        engine.log,
        engine._resolve,
        statement,
        query_file.name,
        state_root / query_file.name,
        query_options,
        on_results=on_results,
        fence=fence,
    )
    if start:
        query.start()
    return query
