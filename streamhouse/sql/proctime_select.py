"""``PROCTIME()`` in a query: ``SELECT *, PROCTIME() AS p FROM s`` as a view, a CTE or a
derived table (Flink's Nexmark q12 and q13).

Such a relation projects one stream and adds its processing time. It is rewritten into a read
of a stream of its own, the same declaration with one more computed column ``p AS PROCTIME()``
(named ``__proctime__<stream>__<p>``, reading the same topic), so ``p`` is a processing-time
attribute exactly as a declared one: windows and lookup joins over it, one clock reading per
micro-batch, recorded in the checkpoint and replayed after a crash. ``PROCTIME()`` anywhere
else (an aggregate's output, a join's SELECT list, WHERE, ...) is refused with the clause named.

>>> from streamhouse.sql.parse import parse_one
>>> ddl = "CREATE STREAM s (a INT) WITH (topic='t')"
>>> entries = {"s": ("stream", type("E", (), {"sql": ddl})())}
>>> query, streams = with_proctime_streams(
...     parse_one("SELECT * FROM (SELECT *, PROCTIME() AS p FROM s) AS b"), entries.get)
>>> query.sql()
'SELECT * FROM __proctime__s__p AS b'
>>> streams["__proctime__s__p"].sql
"CREATE STREAM __proctime__s__p (a INT, p AS PROCTIME()) WITH (topic='t')"
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from streamhouse.sql.bounds import conjuncts
from streamhouse.sql.computed import is_proctime_call
from streamhouse.sql.inline import catalog_views
from streamhouse.sql.parse import DIALECT, parse, sql_error

__all__ = ["ProctimeStream", "resolve_with", "with_proctime_streams"]

Resolve = Callable[[str], tuple[str, Any] | None]
PREFIX = "__proctime__"

PROBE_KEY_PREFIX = "__probe_key_"
"""The name of a computed column holding the expression a processing-time join probes by."""


@dataclass(frozen=True)
class ProctimeStream:
    """The declaration of a stream read with an added ``PROCTIME()`` column (a catalog entry's
    shape: ``kind`` and ``sql``)."""

    name: str
    sql: str
    kind: str = "stream"
    definition: exp.Expr | None = field(default=None, compare=False, repr=False)
    stream: str = ""  # the stream it reads as
    proctime: tuple[str, ...] = ()  # its PROCTIME() columns


def resolve_with(resolve: Resolve, streams: dict[str, ProctimeStream]) -> Resolve:
    """``resolve`` that also knows ``streams``."""
    if not streams:
        return resolve

    def resolved(name: str) -> tuple[str, Any] | None:
        stream = streams.get(name)
        return (stream.kind, stream) if stream is not None else resolve(name)

    return resolved


def with_proctime_streams(
    statement: exp.Expr, resolve: Resolve
) -> tuple[exp.Expr, dict[str, ProctimeStream]]:
    """``statement`` with each relation ``SELECT ..., PROCTIME() AS p FROM s`` reading the
    stream ``s`` with computed column ``p``, and those streams' declarations. Views whose text
    calls ``PROCTIME()`` are inlined first; any other ``PROCTIME()`` is refused."""
    if not _calls_proctime(statement) and not _reads_proctime_view(statement, resolve):
        return statement, {}
    statement = statement.copy()
    _inline_proctime_views(statement, resolve, set())
    streams: dict[str, ProctimeStream] = {}
    for select in list(statement.find_all(exp.Select)):
        _rewrite(select, resolve, streams)
    for select in list(statement.find_all(exp.Select)):
        _probe_keys(select, streams)
    for call in statement.find_all(exp.Anonymous):
        if is_proctime_call(call) and not isinstance(call.parent, exp.ComputedColumnConstraint):
            raise sql_error(_refusal(call), call)
    return statement, streams


def _calls_proctime(tree: exp.Expr) -> bool:
    return any(
        is_proctime_call(c) and not isinstance(c.parent, exp.ComputedColumnConstraint)
        for c in tree.find_all(exp.Anonymous)
    )


def _view_query(resolve: Resolve, name: str) -> exp.Query | None:
    """The query of plain view ``name`` when it calls ``PROCTIME()``."""
    resolved = resolve(name)
    if (
        resolved is None
        or isinstance(resolved[1], str)
        or "PROCTIME" not in resolved[1].sql.upper()
    ):
        return None
    query = catalog_views(resolve)(name)
    return query if query is not None and _calls_proctime(query) else None


def _reads_proctime_view(statement: exp.Expr, resolve: Resolve) -> bool:
    return any(
        t.name and _view_query(resolve, t.name) is not None for t in statement.find_all(exp.Table)
    )


def _inline_proctime_views(tree: exp.Expr, resolve: Resolve, seen: set[str]) -> None:
    for table in list(tree.find_all(exp.Table)):
        if not table.name or isinstance(table.this, exp.Func):
            continue
        view = _view_query(resolve, table.name)
        if view is None or table.name in seen:
            continue
        _inline_proctime_views(view, resolve, seen | {table.name})
        table.replace(view.subquery(table.alias or table.name))


def _rewrite(select: exp.Select, resolve: Resolve, streams: dict[str, ProctimeStream]) -> None:
    """``select`` reading a stream with its ``PROCTIME() AS p`` items as computed columns,
    if it projects one stream (a refusal later otherwise)."""
    items = [
        p
        for p in select.expressions
        if isinstance(p, exp.Alias) and is_proctime_call(p.this) and not p.this.expressions
    ]
    source = select.args.get("from_")
    if not items or source is None or not isinstance(source.this, exp.Table):
        return
    table = source.this
    if any(select.args.get(k) for k in ("joins", "group", "having", "qualify", "distinct")):
        return
    if any(True for _ in select.find_all(exp.AggFunc, exp.Window)):
        return
    if isinstance(table.this, exp.Func) or table.args.get("db"):
        return
    resolved = resolve(table.name)
    if resolved is None or resolved[0] not in ("stream", "table"):
        return
    definition = parse(resolved[1].sql)[0]
    names = [p.alias for p in items]
    name = f"{PREFIX}{table.name}__{'__'.join(names)}"
    if name not in streams:
        columns = {n: exp.Anonymous(this="PROCTIME") for n in names}
        declared = _declaration(definition, name, table.name, columns)
        streams[name] = ProctimeStream(
            name, declared, definition=definition, stream=table.name, proctime=tuple(names)
        )
    star = any(
        isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
        for p in select.expressions
    )
    for item in items:
        if star:  # the stream's * now has the column, last, as Flink's ``*, PROCTIME()``
            item.pop()
        else:
            item.replace(exp.column(item.alias, quoted=True))
    table.replace(exp.to_table(name).as_(table.alias or table.name))
    parent = select.parent
    plain = [isinstance(p, exp.Star) for p in select.expressions] == [True]
    if isinstance(parent, exp.Subquery) and plain and set(_set_args(select)) == {"from_"}:
        # ``(SELECT *, PROCTIME() AS p FROM s) b`` is the stream itself (a join probes it)
        parent.replace(exp.to_table(name).as_(parent.alias or table.alias or table.name))


def _probe_keys(select: exp.Select, streams: dict[str, ProctimeStream]) -> None:
    """In a temporal join probing a stream of :func:`_rewrite` (``ON mod(B.a, 10) = S.key``),
    each probe-side key expression becomes a computed column of that stream, so the join
    probes with a column (not for ``SELECT *``, which would show it)."""
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if not isinstance(table, exp.Table) or table.name not in streams:
        return
    if any(isinstance(p, exp.Star) or isinstance(p.this, exp.Star) for p in select.expressions):
        return
    probe, stream = table.alias_or_name, streams[table.name]
    keys: dict[str, exp.Expr] = {}
    for join in select.args.get("joins") or []:
        right = join.this
        if not isinstance(right, exp.Table) or right.args.get("version") is None:
            continue
        for item in conjuncts(join.args.get("on")):
            if not isinstance(item, exp.EQ):
                continue
            for side, other in ((item.this, item.expression), (item.expression, item.this)):
                refs = list(side.find_all(exp.Column))
                if (
                    isinstance(other, exp.Column)
                    and other.table == right.alias_or_name
                    and not isinstance(side, exp.Column)
                    and refs
                    and all(r.table in ("", probe) for r in refs)
                ):
                    key = f"{PROBE_KEY_PREFIX}{len(keys)}"
                    keys[key] = side.transform(
                        lambda n: (
                            exp.column(n.name, quoted=n.this.quoted)
                            if isinstance(n, exp.Column)
                            else n
                        )
                    )
                    side.replace(exp.column(key, table=probe))
                    break
    if not keys:
        return
    assert stream.definition is not None
    name = f"{stream.name}__{len(streams)}"
    computed = {c: exp.Anonymous(this="PROCTIME") for c in stream.proctime}
    declared = _declaration(stream.definition, name, stream.stream, computed | keys)
    streams[name] = ProctimeStream(
        name, declared, definition=stream.definition, stream=stream.stream, proctime=stream.proctime
    )
    table.set("this", exp.to_identifier(name))


def _set_args(select: exp.Select) -> list[str]:
    return [k for k, v in select.args.items() if v and k != "expressions"]


def _declaration(create: exp.Expr, name: str, stream: str, columns: dict[str, exp.Expr]) -> str:
    """``create`` (a CREATE STREAM or TABLE) as ``name``, with computed ``columns`` added after
    its columns, reading the same topic."""
    create = create.copy()
    schema = create.this
    body = list(schema.expressions)
    at = next((i for i, e in enumerate(body) if not isinstance(e, exp.ColumnDef)), len(body))
    added = [
        exp.ColumnDef(
            this=exp.to_identifier(c),
            constraints=[
                exp.ColumnConstraint(kind=exp.ComputedColumnConstraint(this=value.copy()))
            ],
        )
        for c, value in columns.items()
    ]
    schema.set("expressions", body[:at] + added + body[at:])
    schema.set("this", exp.to_table(name))
    properties = create.args.get("properties")
    if properties is None:
        properties = exp.Properties(expressions=[])
        create.set("properties", properties)
    if "topic" not in {p.name.lower() for p in properties.expressions}:
        properties.append(
            "expressions",
            exp.Property(this=exp.Literal.string("topic"), value=exp.Literal.string(stream)),
        )
    return create.sql(dialect=DIALECT)


def _refusal(call: exp.Expr) -> str:
    """Why ``PROCTIME()`` at ``call`` is refused, with the clause named."""
    select = call.find_ancestor(exp.Select)
    if select is None:
        return "PROCTIME() is a processing-time attribute of a stream's SELECT list only"
    node: exp.Expr = call
    while node.parent is not select:
        node = node.parent  # type: ignore[assignment]
    clause = {"expressions": "SELECT list", "where": "WHERE", "group": "GROUP BY"}.get(
        node.arg_key, node.arg_key.upper()
    )
    if clause != "SELECT list":
        where = f"in {clause}"
    elif select.args.get("from_") is None:
        where = "in a SELECT without a stream (no FROM)"
    elif select.args.get("joins"):
        where = "in the SELECT list of a join"
    elif select.args.get("group") or any(True for _ in select.find_all(exp.AggFunc)):
        where = "in the SELECT list of an aggregation"
    elif not isinstance(call.parent, exp.Alias):
        where = "inside an expression"
    else:
        where = "over something other than one stream"
    return (
        f"PROCTIME() {where} is not supported: it is a processing-time attribute only as"
        " `PROCTIME() AS p` in the SELECT list of a view, CTE or derived table that projects"
        " one stream (or as a computed column `p AS PROCTIME()` of the stream)"
    )
