"""Planning a :class:`Recompute` over an updating input: an aggregate over an updating
subquery, and a GROUP BY over an outer join that retracts its padded rows."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import Operator, Recompute, SelectPlanner, UnionAll, WindowAggregate
from streamhouse.sql.parse import sql_error
from streamhouse.sql.plan_checks import order_error
from streamhouse.sql.top_n_changes import plan_input
from streamhouse.sql.window_aggregate import plan_window
from streamhouse.sql.window_spec import find_window


def plan_recompute(
    select: exp.Select,
    subquery: exp.Subquery,
    derived: dict[str, Operator],
    plan_select: SelectPlanner,
) -> Recompute | None:
    """An aggregate over an updating subquery (e.g. Nexmark q4: AVG over MAX per auction), or
    over a UNION ALL; a subquery whose rows are retracted (an aggregate with HAVING, a join of
    updating inputs, a Top-N, a union of updating inputs) is recomputed over its rows by row
    key, dead once retracted."""
    if select.args.get("group") is None:
        return None
    inner = plan_input(subquery.this, derived, plan_select)
    if inner is None:
        return None
    name = f"__derived_{len(derived)}"
    alias = subquery.alias_or_name or name
    outer = select.copy()
    outer.args["from_"].this.replace(exp.to_table(name).as_(alias))
    if isinstance(inner, UnionAll) and not inner.updating:  # appends: merge partials
        derived[name] = inner
        return plan_window(outer, None, exp.to_table(name).as_(alias))
    if not (isinstance(inner, WindowAggregate) and inner.window is None):
        if not inner.updating:
            return None
        derived[name] = inner
        return recompute_over_retractions(outer, name)
    derived[name] = inner
    if " WHERE " in inner.post_sql:  # HAVING: a group it drops is retracted
        return recompute_over_retractions(outer, name)
    group_by = []
    for key in select.args["group"].expressions:
        if not isinstance(key, exp.Column):
            return None
        group_by.append(key.name)
    return Recompute(
        name, to_datafusion(outer), list(inner.keys), group_by, _key_outputs(select, group_by)
    )


def distinct_as_group_by(select: exp.Select) -> exp.Select:
    """``SELECT DISTINCT e1, e2 ...`` (no aggregates, OVER or window) as ``SELECT e1, e2 ...
    GROUP BY e1, e2``: an updating aggregate, an upsert per distinct row (DISTINCT over each
    micro-batch alone would let a row through again in every one)."""
    if (
        not select.args.get("distinct")
        or select.args["distinct"].args.get("on") is not None
        or select.args.get("group") is not None
        or any(p.find(exp.AggFunc, exp.Window) is not None for p in select.expressions)
        or find_window(select)[0] is not None
    ):
        return select
    keys = []
    for projection in select.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star) or isinstance(body.this, exp.Star):
            raise sql_error(
                "SELECT DISTINCT * runs continuously as an updating GROUP BY every column:"
                " name the columns",
                projection,
            )
        keys.append(body.copy())
    grouped = select.copy()
    grouped.set("distinct", None)
    return grouped.group_by(*keys, copy=False)


def recompute_over_retractions(
    aggregate: exp.Select, name: str, one_group: bool = False
) -> Recompute:
    """A GROUP BY over an outer join (derived input ``name``): every join row is kept by its
    record key until retracted, and the groups a micro-batch touches are recomputed, so any
    aggregate (MIN and MAX too) stays right when a padded row is retracted. ``one_group``: an
    aggregate without GROUP BY (grouped by ALL_ROWS, which the output does not carry)."""
    if aggregate.args.get("order") is not None:
        raise order_error(aggregate.args["order"].expressions[0])
    group_by = column_names(
        aggregate.args["group"].expressions, "a GROUP BY over an updating input groups"
    )
    return Recompute(
        name,
        to_datafusion(aggregate),
        ["__key"],
        group_by,
        [] if one_group else _key_outputs(aggregate, group_by),
        retracts=True,
    )


def column_names(expressions: list[exp.Expr], what: str) -> list[str]:
    """The names of ``expressions``, each a column, or an error saying ``what`` by columns."""
    names = []
    for expression in expressions:
        if not isinstance(expression, exp.Column):
            raise sql_error(
                f"{what} by columns (compute an expression in a subquery first)", expression
            )
        names.append(expression.name)
    return names


def _key_outputs(select: exp.Select, group_by: list[str]) -> list[str | None]:
    """The output column of each GROUP BY column of ``select`` (None: not selected as such)."""
    key_outputs: list[str | None] = []
    for column in group_by:
        output = None
        for projection in select.expressions:
            body = projection.this if isinstance(projection, exp.Alias) else projection
            if isinstance(body, exp.Column) and body.name == column:
                output = projection.alias_or_name
        key_outputs.append(output)
    return key_outputs
