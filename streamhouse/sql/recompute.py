"""Planning a :class:`Recompute` over an updating input: an aggregate over an updating
subquery, and a GROUP BY over an outer join that retracts its padded rows."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import Operator, Recompute, SelectPlanner, WindowAggregate
from streamhouse.sql.parse import sql_error
from streamhouse.sql.plan_checks import order_error


def plan_recompute(
    select: exp.Select,
    subquery: exp.Subquery,
    derived: dict[str, Operator],
    plan_select: SelectPlanner,
) -> Recompute | None:
    """An aggregate over an updating subquery (e.g. Nexmark q4: AVG over MAX per auction)."""
    if select.args.get("group") is None or not isinstance(subquery.this, exp.Select):
        return None
    inner = plan_select(subquery.this, derived)
    if not (isinstance(inner, WindowAggregate) and inner.window is None):
        return None
    name = f"__derived_{len(derived)}"
    derived[name] = inner
    alias = subquery.alias_or_name or name
    outer = select.copy()
    outer.args["from_"].this.replace(exp.to_table(name).as_(alias))
    group_by = []
    for key in select.args["group"].expressions:
        if not isinstance(key, exp.Column):
            return None
        group_by.append(key.name)
    return Recompute(
        name, to_datafusion(outer), list(inner.keys), group_by, _key_outputs(select, group_by)
    )


def recompute_over_retractions(
    aggregate: exp.Select, name: str, one_group: bool = False
) -> Recompute:
    """A GROUP BY over an outer join (derived input ``name``): every join row is kept by its
    record key until retracted, and the groups a micro-batch touches are recomputed, so any
    aggregate (MIN and MAX too) stays right when a padded row is retracted. ``one_group``: an
    aggregate without GROUP BY (grouped by ALL_ROWS, which the output does not carry)."""
    if aggregate.args.get("order") is not None:
        raise order_error(aggregate.args["order"].expressions[0])
    group_by = []
    for key in aggregate.args["group"].expressions:
        if not isinstance(key, exp.Column):
            raise sql_error(
                "a GROUP BY over an outer join groups by columns (select an expression in a"
                " subquery first)",
                key,
            )
        group_by.append(key.name)
    return Recompute(
        name,
        to_datafusion(aggregate),
        ["__key"],
        group_by,
        [] if one_group else _key_outputs(aggregate, group_by),
        retracts=True,
    )


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
