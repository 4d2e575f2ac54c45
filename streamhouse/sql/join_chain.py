"""Three or more inputs in one FROM as a chain of two-input joins.

``FROM x JOIN y ON c1 JOIN z ON c2`` is ``(x JOIN y ON c1) JOIN z ON c2`` in SQL (joins nest to
the left, outer ones too), so the query is rewritten that way: the first joins become a
subquery that passes on every column of theirs the rest of the query names, as
``<alias>__<column>``, under the alias :data:`CHAIN`; the planner then plans each join of two
inputs as it would any other (a :class:`~streamhouse.sql.changelog_join.ChangelogJoin` when an
input updates, as Flink chains its joins). The query's WHERE stays over the whole chain.

>>> from streamhouse.sql.parse import parse_one
>>> nested_joins(parse_one(
...     "SELECT x.k, z.n FROM x JOIN y ON x.k = y.k LEFT JOIN z ON y.k = z.k WHERE x.v > 1")).sql()
'SELECT __chain.x__k AS k, z.n FROM (SELECT x.k AS x__k, y.k AS y__k, x.v AS x__v FROM x JOIN y ON x.k = y.k) AS __chain LEFT JOIN z ON __chain.y__k = z.k WHERE __chain.x__v > 1'
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
from sqlglot import exp

from streamhouse.sql.changelog_join import output_names, spelled_out_stars
from streamhouse.sql.computed import ComputedColumns
from streamhouse.sql.ddl import StreamDef, stream_definition
from streamhouse.sql.parse import parse, sql_error

StreamColumns = Callable[[str], list[str] | None]
"""The columns ``*`` reads of a stream, by name (declared order); None for anything else."""

CHAIN = "__chain"
"""The alias of the nested join of all inputs but the last."""

_OUTER_PARTS = ("where", "group", "having", "order", "qualify")


def nested_joins(select: exp.Select) -> exp.Select:
    """``select`` (two or more joins) as its first joins nested in a subquery, joined to the
    last input; raises for what cannot be nested by name (a ``*``, an unqualified column)."""
    joins = select.args["joins"]
    inner_inputs = [select.args["from_"].this, *(j.this for j in joins[:-1])]
    aliases = {t.alias_or_name for t in inner_inputs}
    last = joins[-1]
    if last.args.get("using") or last.args.get("method"):
        raise sql_error("a join of three or more inputs takes ON conditions", last)
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or (
            isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
        ):
            raise sql_error(
                "SELECT * over three or more joined inputs: name the columns it outputs"
                " (alias.column)",
                projection,
            )
    named: dict[tuple[str, str], str] = {}
    parts = [*select.expressions, last.args.get("on")]
    parts += [select.args.get(key) for key in _OUTER_PARTS]
    for part in parts:
        for column in part.find_all(exp.Column) if part is not None else []:
            if not column.table:
                raise sql_error(
                    f"a join of three or more inputs needs each column qualified by its input's"
                    f" alias ({column.name} is not)",
                    column,
                )
            if column.table in aliases:
                named.setdefault((column.table, column.name), f"{column.table}__{column.name}")
    inner = exp.Select(
        expressions=[exp.column(c, table=t).as_(n) for (t, c), n in named.items()]
        or [exp.Literal.number(1).as_("__row")]
    )
    inner.set("from_", select.args["from_"].copy())
    inner.set("joins", [j.copy() for j in joins[:-1]])

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and (node.table, node.name) in named:
            return exp.column(named[(node.table, node.name)], table=CHAIN)
        return node

    outer = select.copy()
    projections = []
    for projection in outer.expressions:
        renamed = projection.transform(rename)
        if isinstance(projection, exp.Column) and renamed.name != projection.name:
            renamed = renamed.as_(projection.name)
        projections.append(renamed)
    outer.set("expressions", projections)
    outer.set("from_", exp.From(this=inner.subquery(CHAIN)))
    outer_join = last.copy()
    on = outer_join.args.get("on")
    if on is not None:
        outer_join.set("on", on.transform(rename))
    outer.set("joins", [outer_join])
    for key in _OUTER_PARTS:
        part = outer.args.get(key)
        if part is not None:
            outer.set(key, part.transform(rename))
    return outer


Resolve = Callable[[str], tuple[str, object] | None]
"""The engine's name lookup: (kind, catalog entry) of a name, None when it names nothing."""


def _stream_definition(resolve: Resolve, name: str) -> StreamDef | None:
    resolved = resolve(name)
    if resolved is None or resolved[0] not in ("stream", "table"):
        return None
    sql = getattr(resolved[1], "sql", None)
    return stream_definition(parse(sql)[0]) if isinstance(sql, str) else None


def catalog_stream_columns(resolve: Resolve) -> StreamColumns:
    """The columns of the catalog's streams (``resolve`` is the engine's name lookup): the
    declared ones, then the computed and metadata ones, as a stream's ``*`` reads them."""

    def columns(name: str) -> list[str] | None:
        definition = _stream_definition(resolve, name)
        if definition is None:
            return None
        extra = [c.name for c in definition.columns if c.expression or c.metadata]
        return [*definition.schema().names, *extra]

    return columns


def catalog_stream_time(resolve: Resolve) -> Callable[[str], str | None]:
    """The time attribute (WATERMARK column) of the catalog's streams, by name."""

    def time(name: str) -> str | None:
        definition = _stream_definition(resolve, name)
        watermark = definition.watermark if definition is not None else None
        return watermark.column if watermark is not None else None

    return time


def catalog_column_types(resolve: Resolve, query: exp.Expr) -> dict[str, pa.DataType]:
    """The declared columns (name -> Arrow type) of the catalog's streams ``query`` reads."""
    types: dict[str, pa.DataType] = {}
    read = query.expression if isinstance(query, exp.Insert) else query  # not the sink
    for table in read.find_all(exp.Table):
        definition = _stream_definition(resolve, table.name)
        if definition is not None:
            types.update((f.name, f.type) for f in definition.schema())
    return types


def catalog_proctime_columns(resolve: Resolve) -> Callable[[str], set[str]]:
    """The ``PROCTIME()`` columns of the catalog's streams and tables, by name (none for a
    topic or view)."""

    def proctime(name: str) -> set[str]:
        definition = _stream_definition(resolve, name)
        return set(ComputedColumns.of(definition).proctime) if definition is not None else set()

    return proctime


def chain_stars(query: exp.Expr, columns: StreamColumns) -> exp.Expr:
    """``query`` with each ``*`` and ``alias.*`` of a join of three or more inputs spelled out
    as ``alias.column`` (a stream's columns from ``columns``, a subquery's from its SELECT list),
    so the join can be nested by name; a repeated name comes out as ``k_1``, as over two inputs.
    A star over an input whose columns are not known stays (and is refused).

    >>> from streamhouse.sql.parse import parse_one
    >>> chain_stars(parse_one("SELECT * FROM (SELECT k, COUNT(*) AS n FROM y GROUP BY k) AS c"
    ...     " JOIN x ON c.k = x.k JOIN z ON x.k = z.k"), lambda name: ["k", name]).sql()
    'SELECT c.k, c.n, x.k, x.x, z.k, z.z FROM (SELECT k, COUNT(*) AS n FROM y GROUP BY k) AS c JOIN x ON c.k = x.k JOIN z ON x.k = z.k'
    """
    query = query.copy()
    for select in reversed(list(query.find_all(exp.Select))):  # inner stars first
        joins = select.args.get("joins") or []
        if len(joins) < 2 or not any(_is_star(p) for p in select.expressions):
            continue
        outputs: dict[str, list[str] | None] = {}
        for side in [select.args["from_"], *joins]:
            source = side.this
            if isinstance(source, exp.Table) and not isinstance(source.this, exp.Func):
                names = columns(source.name)
            elif isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
                names = output_names(source.this)
            else:
                names = None
            if names is not None:
                outputs[source.alias_or_name] = names
        spelled = spelled_out_stars(select, outputs)
        if select is query:
            return spelled
        select.replace(spelled)
    return query


def _is_star(projection: exp.Expr) -> bool:
    return isinstance(projection, exp.Star) or (
        isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
    )
