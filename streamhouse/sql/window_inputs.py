"""Windows over nested queries: the input of a window (a TVF's ``TABLE (...)``, a view, or the
subquery a ``GROUP BY ..., TUMBLING(t, ...)`` reads) planned as a derived input.

Two kinds of input, as Flink tells them apart by whether the time column is still a time
attribute:

- a filter or projection of a stream, or a UNION ALL of them, that passes the stream's time
  column on as it is: its rows are no later than the stream's, so the window stays a window
  (its results final as the watermark closes it: a window Top-N, a window join, a window
  aggregate under one);
- any other append-only query (a join): its rows can come at any time, so the window is
  :class:`~streamhouse.sql.window_rows.WindowRows` over it and what reads the window columns is
  an ordinary, updating query over those rows (an aggregate upserts per window, a Top-N per
  window and rank).

The query's own top-level window over a UNION ALL is :func:`~streamhouse.sql.union.window_over_union`'s
(an incremental window aggregate); this module plans the others.
"""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.nodes import Operator, SelectPlanner, Stateless, UnionAll
from streamhouse.sql.parse import sql_error
from streamhouse.sql.union import nested_window_union, plan_union, union_branches
from streamhouse.sql.unnest import is_lateral_join, lateral_columns
from streamhouse.sql.window_rows import SESSION_ROWS, WindowRows
from streamhouse.sql.window_spec import WindowKind, find_window, tvf_call, windowed_side


def window_inputs(
    query: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> exp.Select:
    """``query`` with the nested queries its windows read planned as derived inputs (each
    window then reads one by name), or the window replaced by :class:`WindowRows` where the
    input's time column is no longer a time attribute."""
    result = query.copy()
    for select in list(result.find_all(exp.Select)):
        if not _attached(select, result):  # inside an input planned already
            continue
        spec, rest = find_window(select)
        data = _window_input(select) if spec is not None else None
        if spec is None or data is None:
            continue
        sub, replace = data
        preserving = _time_preserving(sub.this, spec.time_column)
        if preserving and select is result and not _lateral(sub.this):
            continue  # the query's own window: the window aggregate planners take it
        op = _plan_input(sub, derived, plan_select)
        name = f"__derived_{len(derived)}"
        derived[name] = op
        if preserving and isinstance(op, UnionAll):
            derived[name] = nested_window_union(op, sub, spec.time_column, derived)
        if preserving or _window_time(sub.this, spec.time_column):
            replace(exp.to_table(name))
            continue
        if isinstance(op, Stateless | UnionAll):
            raise sql_error(computed_time(spec.time_column, "the query the window reads"), sub)
        if spec.kind == WindowKind.SESSION:
            raise sql_error(SESSION_ROWS, sub)
        rows = f"__derived_{len(derived)}"
        derived[rows] = WindowRows(name, spec)
        side = windowed_side(select, rest)
        alias = side.this.alias_or_name if side is not None else None
        side.this.replace(exp.to_table(rows).as_(alias or rows))  # type: ignore[union-attr]
        if select is result:
            result = rest
        else:
            select.replace(rest)
    return result


def computed_time(column: str, where: str) -> str:
    """The error of a window on ``column``, computed ``where``."""
    return (
        f"{column!r} is computed or aggregated in {where}, so it is not a time attribute: pass"
        " the stream's time column on as it is"
    )


def _window_input(select: exp.Select):  # noqa: ANN202 - (subquery, how to replace it)
    """The subquery the window of ``select`` reads and a function putting a table in its place,
    or None when the window reads a stream."""
    for side in [select.args.get("from_"), *(select.args.get("joins") or [])]:
        call = tvf_call(side.this) if side is not None else None
        if call is None:
            continue
        for arg in call.expressions:
            value = arg.expression if isinstance(arg, exp.Kwarg) else arg
            if hasattr(value, "args") and isinstance(value.this, exp.Subquery):
                argument = value

                def put(table: exp.Table, argument: exp.Expr = argument) -> None:
                    argument.set("this", table)

                return argument.this, put
        return None
    source = select.args.get("from_")
    sub = source.this if source is not None else None
    if isinstance(sub, exp.Subquery) and not select.args.get("joins"):

        def put_from(table: exp.Table, sub: exp.Subquery = sub) -> None:
            sub.replace(table.as_(sub.alias) if sub.alias else table)

        return sub, put_from
    return None


def _attached(node: exp.Expr, root: exp.Expr) -> bool:
    while node is not None:
        if node is root:
            return True
        node = node.parent  # type: ignore[assignment]
    return False


def _time_preserving(query: exp.Expr, time_column: str) -> bool:
    """Whether ``query`` filters and projects streams (or UNION ALLs such queries), passing
    ``time_column`` on as it is: then it is still a time attribute."""
    branches = union_branches(query) if isinstance(query, exp.Union) else [query]
    return all(
        isinstance(b, exp.Select)
        and _lateral(b) == bool(b.args.get("joins"))
        and _time_source(b, time_column) not in lateral_columns(b)
        and not b.args.get("group")
        and not any(True for _ in b.find_all(exp.AggFunc, exp.Window))
        and isinstance(b.args.get("from_") and b.args["from_"].this, exp.Table)
        and tvf_call(b.args["from_"].this) is None
        and _passes_time(b, time_column)
        for b in branches
    )


def _time_source(select: exp.Select, column: str) -> str:
    """The name of the input column ``select`` passes on as ``column`` (itself under ``*``)."""
    for projection in select.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if projection.alias_or_name == column and isinstance(body, exp.Column):
            return body.name
    return column


def _lateral(query: exp.Expr) -> bool:
    """Whether ``query`` is a SELECT whose joins are all lateral (UNNEST): its rows keep the
    stream's time column as it is, but it is an input of its own, not a stream to window."""
    joins = query.args.get("joins") if isinstance(query, exp.Select) else None
    return bool(joins) and all(is_lateral_join(j) for j in joins)


def _plan_input(
    sub: exp.Subquery, derived: dict[str, Operator], plan_select: SelectPlanner
) -> Operator:
    """The plan node of the query a window reads (append-only)."""
    query = sub.this
    if isinstance(query, exp.Union):
        op: Operator = plan_union(query, derived, plan_select)
    elif isinstance(query, exp.Select):
        op = plan_select(query, derived)
    else:
        raise sql_error("a window reads a stream, a view or a query", sub)
    if op.updating:
        raise sql_error(
            "a window reads append-only rows, not an updating query (an aggregate without a"
            " window): window its input instead",
            sub,
        )
    return op


def _window_time(query: exp.Expr, column: str) -> bool:
    """Whether ``query`` is a window aggregate passing its ``window_time`` on as ``column``:
    a time attribute, as in Flink (its rows come out as the watermark passes their window's end,
    so a window over them — a 1 minute TUMBLE over 10 s ones — is a window, append-only)."""
    if not isinstance(query, exp.Select) or query.args.get("group") is None:
        return False
    spec, _ = find_window(query)
    if spec is None:
        return False
    for projection in query.expressions:
        if projection.alias_or_name == column:
            body = projection.this if isinstance(projection, exp.Alias) else projection
            if isinstance(body, exp.Anonymous):  # TUMBLE_ROWTIME(t, ...) and the like
                return body.name.upper().endswith("_ROWTIME")
            return isinstance(body, exp.Column) and body.name == "window_time"
    return False


def _passes_time(select: exp.Select, column: str) -> bool:
    """Whether ``select`` passes its input's ``column`` on unchanged (by name or ``*``)."""
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            return True
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Column) and isinstance(body.this, exp.Star):
            return True
        if projection.alias_or_name == column:
            return isinstance(body, exp.Column) and body.name == column
    return False


def session_aggregates_as_inputs(
    query: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> exp.Select | None:
    """``query`` reading each SESSION window aggregate it nests (``(SELECT k, window_start,
    COUNT(*) ... GROUP BY k, SESSION(...))``) as a derived input: the session operator's rows,
    final as each session closes, are append-only rows the outer query (a Top-N, a join) reads
    as a stream's. None when it nests none (a session's own rows are refused)."""
    result = query.copy()
    found = False
    for sub in list(result.find_all(exp.Subquery)):
        inner = sub.this
        if not isinstance(inner, exp.Select) or inner.args.get("group") is None:
            continue
        spec, _ = find_window(inner)
        if spec is None or spec.kind != WindowKind.SESSION:
            continue
        op = plan_select(inner, derived)
        name = f"__derived_{len(derived)}"
        derived[name] = op
        sub.replace(exp.to_table(name).as_(sub.alias or name))
        found = True
    return result if found else None
