"""The output columns of a bounded query: what ``*`` means, and duplicate output names.

Two rewrites of the query before DataFusion plans it:

- :func:`declared_stars`: ``*`` (and ``t.*``) over a stream is its declared columns, as in
  Flink; the metadata columns (``_offset``, ``_partition``, ...) are there only where the query
  names them, so ``SELECT *, _offset FROM t`` has one ``_offset``, as ``SELECT *, ctid`` has in
  PostgreSQL.
- :func:`distinct_outputs`: DataFusion refuses two output columns of one name
  (``SELECT a, a``; ``SELECT *, a``). PostgreSQL and DuckDB return both, so every later
  duplicate is aliased to a name of our own for DataFusion and named back in the result.

>>> from streamhouse.sql.parse import parse
>>> query, names = distinct_outputs(parse("SELECT a, b AS a, c FROM t")[0], lambda s: [])
>>> query.sql(), names
('SELECT a, b AS "__output_1", c FROM t', {'__output_1': 'a'})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa
import sqlglot
from sqlglot import exp

OUTPUT_ALIAS = "__output_{}"


def declared_stars(
    query: exp.Query, schemas: Mapping[str, pa.Schema], hidden: frozenset[str]
) -> exp.Query:
    """``query`` with each ``*`` or ``t.*`` over streams (``schemas``, by name) spelled out as
    their columns other than ``hidden``; stars over subqueries, CTEs or USING joins stay."""
    query = query.copy()
    for select in query.find_all(exp.Select):
        sources = _sources(select, schemas)
        if sources is None:
            continue
        projections: list[exp.Expr] = []
        for projection in select.expressions:
            stars = _star_sources(projection, sources)
            if stars is None:
                projections.append(projection)
                continue
            projections += [
                exp.column(name, table=alias)
                for alias in stars
                for name in sources[alias].names
                if name not in hidden
            ]
        select.set("expressions", projections)
    return query


def declared_stars_sql(sql: str, schemas: Mapping[str, pa.Schema], hidden: frozenset[str]) -> str:
    """:func:`declared_stars` over DataFusion SQL text (a continuous query's node), which is
    returned as it is unless it has a ``*`` and names a ``hidden`` column.

    >>> declared_stars_sql('SELECT *, "_offset" FROM "t"', {"t": pa.schema([("a", pa.int64()),
    ...     ("_offset", pa.int64())])}, frozenset({"_offset"}))
    'SELECT "t"."a", "_offset" FROM "t"'
    """
    if "*" not in sql or not any(name in sql for name in hidden):
        return sql
    query = sqlglot.parse_one(sql, read="postgres")
    if not isinstance(query, exp.Query):
        return sql
    return declared_stars(query, schemas, hidden).sql(dialect="postgres", identify=True)


def _sources(select: exp.Select, schemas: Mapping[str, pa.Schema]) -> dict[str, pa.Schema] | None:
    """The streams ``select`` reads, by alias, in FROM and JOIN order; None when one of its
    sources is not a stream (a subquery, a CTE, a table function) or a join merges columns."""
    from_ = select.args.get("from_")
    if from_ is None:
        return None
    joins = select.args.get("joins") or []
    if any(j.args.get("using") or j.args.get("method") for j in joins):
        return None  # USING / NATURAL joins fold their key columns together in `*`
    sources: dict[str, pa.Schema] = {}
    for item in [from_.this, *(j.this for j in joins)]:
        if not isinstance(item, exp.Table) or item.name not in schemas or item.args.get("db"):
            return None
        sources[item.alias_or_name] = schemas[item.name]
    return sources


def _star_sources(projection: exp.Expr, sources: Mapping[str, pa.Schema]) -> list[str] | None:
    """The aliases a star projection covers (all for ``*``, one for ``t.*``), else None."""
    if isinstance(projection, exp.Star) and not projection.args.get("except"):
        return list(sources)
    if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
        return [projection.table] if projection.table in sources else None
    return None


def distinct_outputs(
    query: exp.Query, star_names: Callable[[exp.Select], Sequence[str]]
) -> tuple[exp.Query, dict[str, str]]:
    """``query`` with every output column whose name an earlier column (or a star's column:
    ``star_names(select)``) has aliased ``__output_<position>``, and the names to give them
    back. Each branch of a UNION/EXCEPT/INTERSECT is rewritten; the first names the output."""
    if isinstance(query, exp.SetOperation):
        left, renamed = distinct_outputs(query.this, star_names)
        right, _ = distinct_outputs(query.expression, star_names)
        if left is query.this and right is query.expression:
            return query, renamed
        query = query.copy()
        query.set("this", left)
        query.set("expression", right)
        return query, renamed
    if not isinstance(query, exp.Select):
        return query, {}
    seen: set[str] = set()
    renamed: dict[str, str] = {}
    projections: list[exp.Expr] = []
    for position, projection in enumerate(query.expressions):
        name = projection.alias_or_name
        if _is_star(projection) or not name:
            projections.append(projection)
            continue
        if not seen and any(_is_star(p) for p in query.expressions):
            seen.update(star_names(query))
        if name in seen:
            alias = OUTPUT_ALIAS.format(position)
            inner = projection.this if isinstance(projection, exp.Alias) else projection
            projection = exp.alias_(inner.copy(), alias, quoted=True)
            renamed[alias] = name
        seen.add(name)
        projections.append(projection)
    if not renamed:
        return query, {}
    query = query.copy()
    query.set("expressions", projections)
    return query, renamed


def star_query(select: exp.Select) -> exp.Select:
    """The stars of ``select``'s output alone over its sources (to learn their columns)."""
    stars = [p.copy() for p in select.expressions if _is_star(p)]
    select = select.copy()
    for arg in ("where", "group", "having", "order", "limit", "offset", "distinct", "qualify"):
        select.set(arg, None)
    select.set("expressions", stars)
    return select


def _is_star(projection: exp.Expr) -> bool:
    return isinstance(projection, exp.Star) or (
        isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
    )
