"""Planning a :class:`Recompute` over an updating input: an aggregate over an updating
subquery, and a GROUP BY over an outer join that retracts its padded rows."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.changelog import ROW_KEY
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


def filter_over_changes(
    select: exp.Select,
    subquery: exp.Subquery,
    derived: dict[str, Operator],
    plan_select: SelectPlanner,
) -> Recompute | None:
    """``SELECT cols FROM (q) [WHERE ...]`` over an updating ``q`` (a filter or projection of an
    aggregate, say): each input row is its own group (by row key), its output recomputed as it
    changes, before and after, and retracted when the WHERE stops passing it or the input
    retracts it. The output is keyed by the input's upsert key, which must be selected, as a
    Flink Calc passes an upsert key on."""
    if any(
        select.args.get(k) is not None for k in ("group", "having", "order", "joins", "distinct")
    ) or any(p.find(exp.AggFunc, exp.Window) is not None for p in select.expressions):
        return None
    if not isinstance(subquery.this, exp.Select | exp.Union):
        return None
    saved = dict(derived)
    inner = plan_input(subquery.this, derived, plan_select)
    if inner is None or not inner.updating:
        derived.clear()
        derived.update(saved)
        return None
    keys = inner.key_columns
    # no output columns key the input's rows (an outer join of aggregates: a padded row has one
    # side's key alone): each output row keeps its input row's key (ROW_KEY) as its record key,
    # as a Flink Calc passes on a changelog it cannot key by columns
    by_row_key = not keys and not isinstance(inner, WindowAggregate)
    if not by_row_key and (
        not keys or (isinstance(inner, WindowAggregate) and None in inner.key_outputs)
    ):
        raise sql_error(
            "a query over an updating subquery needs the subquery's rows keyed by columns it"
            " selects (select every GROUP BY key, or the partition and rank of a Top-N)",
            subquery,
        )
    name = f"__derived_{len(derived)}"
    derived[name] = inner
    outer = select.copy()
    alias = subquery.alias_or_name or name
    outer.args["from_"].this.replace(exp.to_table(name).as_(alias))
    if any(isinstance(p, exp.Star) for p in outer.expressions):
        inner_select = subquery.this if isinstance(subquery.this, exp.Select) else None
        names = [p.alias_or_name for p in inner_select.expressions] if inner_select else []
        if not names or "*" in names:
            raise sql_error("name the columns of a query over an updating subquery", outer)
        outer.set("expressions", [exp.column(n) for n in names])
    if by_row_key:
        outer.select(exp.column(ROW_KEY, table=alias).as_(ROW_KEY), copy=False)
    key_outputs = _key_outputs(outer, keys)
    if None in key_outputs:
        missing = [k for k, o in zip(keys, key_outputs, strict=True) if o is None]
        raise sql_error(
            f"a query over an updating subquery writes a row per input key: select"
            f" {', '.join(missing)} (the keys of its upserts)",
            select,
        )
    return Recompute(
        name,
        to_datafusion(outer),
        [ROW_KEY],
        [ROW_KEY],
        key_outputs,
        retracts=True,
        ranks=True,
    )
