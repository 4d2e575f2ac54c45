"""Planning ``UNION ALL`` (each input a derived input of one :class:`UnionAll`), ``UNION``
(DISTINCT: an updating GROUP BY every column over the UNION ALL) and a window over a UNION ALL."""

from __future__ import annotations

from dataclasses import replace

from sqlglot import exp

from streamhouse.sql.nodes import Operator, SelectPlanner, Stateless, UnionAll, WindowAggregate
from streamhouse.sql.over import OverAggregate, plan_over
from streamhouse.sql.parse import sql_error
from streamhouse.sql.window_aggregate import plan_window
from streamhouse.sql.window_spec import find_window


def plan_union(
    union: exp.Union, derived: dict[str, Operator], plan_select: SelectPlanner
) -> UnionAll:
    """Each SELECT of ``a UNION ALL b ...`` as a derived input of one :class:`UnionAll`."""
    return _union_of(union_branches(union), derived, plan_select)


def plan_distinct_union(
    union: exp.Union, derived: dict[str, Operator], plan_select: SelectPlanner
) -> WindowAggregate:
    """``q1 UNION q2 ...`` (DISTINCT over every input, nested UNIONs included): the UNION ALL
    of the inputs as a derived input, and an updating GROUP BY all its columns over it (an
    upsert per distinct row, keyed by the row)."""
    every = union.copy()
    for node in [every, *every.find_all(exp.Union)]:
        node.set("distinct", False)
    inputs = plan_union(every, derived, plan_select)
    if inputs.columns is None:
        raise sql_error("a continuous UNION names its columns (not *)", union)
    name = f"__derived_{len(derived)}"
    derived[name] = inputs
    columns = [exp.column(c) for c in inputs.columns]
    distinct = exp.select(*columns).from_(name).group_by(*[c.copy() for c in columns])
    if inputs.keyed:  # an input retracts rows: recompute the distinct rows they leave
        from streamhouse.sql.recompute import recompute_over_retractions

        return recompute_over_retractions(distinct, name)
    return plan_window(distinct, None, exp.to_table(name))


def union_branches(union: exp.Union) -> list[exp.Select]:
    """The SELECTs of ``a UNION ALL b ...``, in order."""
    for key in ("order", "limit", "offset"):
        if union.args.get(key) is not None:
            raise sql_error(
                f"{key.upper()} over a continuous UNION ALL is not supported", union.args[key]
            )
    branches: list[exp.Expr] = []
    pending: list[exp.Expr] = [union]
    while pending:
        node = pending.pop(0)
        if isinstance(node, exp.Subquery):
            node = node.this
        if isinstance(node, exp.Union):
            if node.args.get("distinct"):
                raise sql_error(
                    "a UNION (DISTINCT) under a UNION ALL is not supported continuously: use"
                    " UNION ALL, or make the outer one a UNION too",
                    node,
                )
            pending[:0] = [node.this, node.expression]
        else:
            branches.append(node)
    for branch in branches:
        if not isinstance(branch, exp.Select):
            raise sql_error("each input of a continuous UNION ALL is a SELECT", branch)
    return branches  # type: ignore[return-value]


def _union_of(
    branches: list[exp.Select], derived: dict[str, Operator], plan_select: SelectPlanner
) -> UnionAll:
    inputs = []
    keyed = False
    for branch in branches:
        op = plan_select(branch, derived)
        keyed = keyed or op.updating
        name = f"__derived_{len(derived)}"
        derived[name] = op
        inputs.append(name)
    first = branches[0]
    columns = None
    if not any(isinstance(e, exp.Star) or isinstance(e.this, exp.Star) for e in first.expressions):
        columns = tuple(e.alias_or_name for e in first.expressions)
    if keyed and columns is None:
        raise sql_error(
            "a UNION ALL of an updating query names its columns (not *)", first.expressions[0]
        )
    return UnionAll(tuple(inputs), columns, keyed=keyed)


_METADATA = ("_partition", "_offset")  # what a window's late rows are traced back by


def window_over_union(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> WindowAggregate | None:
    """A window aggregate over ``(q1 UNION ALL q2 ...)`` (GROUP BY syntax, or a TVF over a view
    or CTE that is one), if ``select`` is one: the union becomes a derived input whose inputs
    filter and project streams and pass each stream's time attribute on as it is."""
    spec, rest = find_window(select)
    sub = _union_source(rest)
    if spec is None or sub is None:
        return None
    branches = [b.copy() for b in union_branches(sub.this)]
    passed = _time_items(branches, spec.time_column, sub)
    for branch, body in zip(branches, passed, strict=True):
        if not isinstance(body, exp.Column):
            raise sql_error(
                f"{spec.time_column!r} is computed ({body.sql(dialect='postgres')}) in an input"
                " of the UNION ALL, so it is not a time attribute: pass each stream's time"
                " column on as it is",
                body,
            )
        branch.set("expressions", [*branch.expressions, *(exp.column(m).as_(m) for m in _METADATA)])
    union = _union_of(branches, derived, plan_select)
    if union.keyed:
        raise sql_error(
            "a window over a UNION ALL of an updating query: a window takes appends only"
            " (window each input, then UNION ALL the results)",
            sub,
        )
    name = f"__derived_{len(derived)}"
    what = "a window over a UNION ALL"
    derived[name] = _passing_time(union, passed, spec.time_column, derived, what, sub, True)
    table = exp.to_table(name).as_(sub.alias or name)
    sub.replace(table)
    return plan_window(rest, spec, table)


def plan_over_union(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> OverAggregate | None:
    """An OVER aggregation over ``(q1 UNION ALL q2 ...)``, if ``select`` is one: the union a
    derived input whose inputs filter and project streams, each passing its stream's time
    attribute on as it is: the union names it as its first input does (``t``, or ``t AS ts``),
    each other input passing its own stream's time column at that position, under any name."""
    sub = _union_source(select)
    window = select.find(exp.Window)
    if window is None or sub is None:
        return None
    order = window.args.get("order")
    keys = order.expressions if order is not None else []
    if not keys or not isinstance(keys[0].this, exp.Column):
        return None
    time_column = keys[0].this.name
    branches = [b.copy() for b in union_branches(sub.this)]
    passed = _time_items(branches, time_column, sub)
    for body in passed:
        if not isinstance(body, exp.Column):
            raise sql_error(
                f"an input of the UNION ALL computes {time_column!r}"
                f" ({body.sql(dialect='postgres')}), so it is not a time attribute: pass each"
                " stream's time column on as it is, at the same position",
                body,
            )
    union = _union_of(branches, derived, plan_select)
    name = f"__derived_{len(derived)}"
    what = "an OVER aggregation over a UNION ALL"
    derived[name] = _passing_time(union, passed, time_column, derived, what, sub)
    table = exp.to_table(name).as_(sub.alias or name)
    rest = select.copy()
    rest.args["from_"].this.replace(table)
    return plan_over(rest, table)


def nested_window_union(
    union: UnionAll, sub: exp.Subquery, time_column: str, derived: dict[str, Operator]
) -> UnionAll:
    """The UNION ALL of filters and projections of streams that a nested window (a window
    Top-N, a window join) reads, each input marked with the column it passes at the window's
    ``time_column`` (checked at runtime to be its stream's time attribute); as it is when an
    input is not such a filter or projection, or the union's columns are ``*``."""
    if union.columns is None or not all(isinstance(derived[i], Stateless) for i in union.inputs):
        return union
    passed = _time_items(union_branches(sub.this), time_column, sub)
    if not all(isinstance(body, exp.Column) for body in passed):
        return union
    what = "a window over a UNION ALL"
    return _passing_time(union, passed, time_column, derived, what, sub, union.metadata)


def _union_source(select: exp.Select) -> exp.Subquery | None:
    """The ``(q1 UNION ALL q2 ...)`` ``select`` reads alone, if it reads one."""
    source = select.args.get("from_")
    sub = source.this if source is not None else None
    if select.args.get("joins") or not isinstance(sub, exp.Subquery):
        return None
    return sub if isinstance(sub.this, exp.Union) else None


def _time_items(branches: list[exp.Select], column: str, sub: exp.Subquery) -> list[exp.Expr]:
    """What each input of the union outputs as its time column ``column`` (by the position of
    the first input's column of that name)."""
    names = [e.alias_or_name for e in branches[0].expressions]
    if column not in names:
        raise sql_error(f"{column!r} is not a column of the UNION ALL", sub)
    index = names.index(column)
    items = []
    for branch in branches:
        item = branch.expressions[index] if index < len(branch.expressions) else branch
        items.append(item.this if isinstance(item, exp.Alias) else item)
    return items


def _passing_time(
    union: UnionAll,
    passed: list[exp.Expr],
    time_column: str,
    derived: dict[str, Operator],
    what: str,
    sub: exp.Subquery,
    metadata: bool = False,
) -> UnionAll:
    """``union`` as the input of a window or an OVER on ``time_column``: each input names the
    stream's column it passes there (``passed``), which the runtime checks is that stream's
    time attribute (:meth:`~streamhouse.sql.plan.ContinuousPlan.missing_time_attribute`)."""
    for (name, op), body in zip(_stateless_inputs(union, derived, what, sub), passed, strict=True):
        derived[name] = replace(op, metadata=metadata, time_column=body.name)
    return UnionAll(union.inputs, union.columns, metadata=metadata, time_column=time_column)


def _stateless_inputs(
    union: UnionAll, derived: dict[str, Operator], what: str, sub: exp.Subquery
) -> list[tuple[str, Stateless]]:
    """The union's inputs by name, each a filter or projection of a stream, or an error."""
    inputs = []
    for name in union.inputs:
        op = derived[name]
        if not isinstance(op, Stateless):
            raise sql_error(
                f"{what} takes filters and projections of streams as its inputs (aggregate"
                " each input first, then UNION ALL the results)",
                sub,
            )
        inputs.append((name, op))
    return inputs
