"""Planning a GROUP BY over one source, windowed or updating, as a :class:`WindowAggregate`.

A windowed aggregate is split into three parts so that only the middle one keeps state:

1. ``pre_sql`` — stateless, runs on DataFusion over each micro-batch: WHERE, the group keys as
   ``__k0..``, the event time as ``__ts`` and each aggregate's argument as ``__a0..`` (a FILTER
   clause becomes ``CASE WHEN cond THEN arg END``);
2. the window operator — assigns windows, aggregates partially per batch and merges partials
   into RocksDB state (:mod:`streamhouse.windows.aggregate`), emits closed windows;
3. ``post_sql`` — stateless, runs on DataFusion over the finalized rows of closed windows: the
   SELECT list and HAVING, with aggregates and keys replaced by the operator's columns.
"""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.aggregates import AggregateCall, AggregateFunction
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import FLOWS, WindowAggregate
from streamhouse.sql.parse import sql_error
from streamhouse.sql.plan_checks import order_error
from streamhouse.sql.window_rows import SESSION_ROWS
from streamhouse.sql.window_spec import WINDOW_COLUMNS, WindowKind, WindowSpec

_AGGREGATES: dict[type, AggregateFunction] = {
    exp.Sum: AggregateFunction.SUM,
    exp.Avg: AggregateFunction.AVG,
    exp.Min: AggregateFunction.MIN,
    exp.Max: AggregateFunction.MAX,
}


def plan_window(
    rest: exp.Select,
    spec: WindowSpec | None,
    table: exp.Table,
    positions: bool | tuple[str, ...] = True,
) -> WindowAggregate:
    """The aggregate of ``rest`` over ``table`` (windowed by ``spec``, or updating without one);
    ``positions``: the columns identifying each input row, a late row is traced back by (True:
    a stream's source position, ``_partition`` and ``_offset``; an UNNEST's expansion adds its
    element numbers; most derived inputs' rows have none)."""
    if positions is True:
        positions = ("_partition", "_offset")
    group = rest.args.get("group")
    sets = group.find(exp.GroupingSets, exp.Rollup, exp.Cube) if group is not None else None
    if sets is not None:  # each set would be a group of its own, keyed by NULLs of the others
        kind = {exp.GroupingSets: "GROUPING SETS", exp.Rollup: "ROLLUP"}.get(type(sets), "CUBE")
        raise sql_error(
            f"{kind} in a continuous GROUP BY is not supported yet (it runs bounded, and per"
            " window: GROUP BY window_start, window_end, GROUPING SETS (...) over a window TVF);"
            " write a UNION ALL of one GROUP BY per set",
            sets,
        )
    keys = [  # the window's own columns are not keys (an updating aggregate's are)
        g
        for g in (group.expressions if group is not None else [])
        if spec is None or not (isinstance(g, exp.Column) and g.name in WINDOW_COLUMNS)
    ]
    if spec is not None and spec.kind == WindowKind.SESSION:
        # Sessions are tracked per group key; a TVF without PARTITION BY means sessions over
        # all rows, which grouped by further keys the session operator cannot produce.
        key_names = {k.name if isinstance(k, exp.Column) else k.sql() for k in keys}
        if group is None and rest.find(exp.AggFunc) is None:  # the window's rows themselves
            raise sql_error(SESSION_ROWS, rest)
        if set(spec.partition_by) != key_names:
            raise sql_error(
                "a continuous SESSION window must group by exactly its PARTITION BY keys "
                f"(PARTITION BY {', '.join(sorted(key_names)) or '(none)'} in its TABLE argument)",
                group,
            )
    aggregates: list[AggregateCall] = []
    arguments: list[exp.Expr] = []

    def argument(expr: exp.Expr) -> str:
        arguments.append(expr)
        return f"__a{len(arguments) - 1}"

    def take_aggregate(node: exp.Expr) -> exp.Expr:
        condition = None
        agg = node
        if isinstance(node, exp.Filter):
            agg, condition = node.this, node.expression.this
        if not isinstance(agg, exp.AggFunc):
            return node
        output = f"__agg{len(aggregates)}"
        inner = agg.this
        if isinstance(agg, exp.Count):
            if isinstance(inner, exp.Distinct):
                if len(inner.expressions) != 1:
                    raise sql_error("COUNT(DISTINCT ...) takes one expression here", agg)
                value = _when(condition, inner.expressions[0].copy())
                aggregates.append(
                    AggregateCall(output, AggregateFunction.COUNT_DISTINCT, argument(value))
                )
            elif isinstance(inner, exp.Star) or inner is None:
                if condition is None:
                    aggregates.append(AggregateCall(output, AggregateFunction.COUNT_ALL))
                else:
                    value = _when(condition, exp.Literal.number(1))
                    aggregates.append(
                        AggregateCall(output, AggregateFunction.COUNT, argument(value))
                    )
            else:
                aggregates.append(
                    AggregateCall(
                        output, AggregateFunction.COUNT, argument(_when(condition, inner.copy()))
                    )
                )
        elif type(agg) in _AGGREGATES:
            if isinstance(inner, exp.Distinct):
                raise sql_error(
                    f"{agg.key.upper()}(DISTINCT ...) is not supported in windows yet", agg
                )
            aggregates.append(
                AggregateCall(
                    output, _AGGREGATES[type(agg)], argument(_when(condition, inner.copy()))
                )
            )
        else:
            raise sql_error(
                f"aggregate {agg.sql(dialect='postgres')} cannot be computed incrementally yet "
                "(supported: COUNT, COUNT(DISTINCT), SUM, AVG, MIN, MAX)",
                agg,
            )
        return exp.column(output)

    key_columns = [f"__k{i}" for i in range(len(keys))]

    def rewrite(node: exp.Expr) -> exp.Expr:
        for key, name in zip(keys, key_columns, strict=True):
            if node == key:
                return exp.column(name)
        if isinstance(node, exp.Column) and (
            node.name in WINDOW_COLUMNS or node.name.startswith("__")
        ):
            return exp.column(node.name)
        if isinstance(node, exp.Column):
            raise sql_error(f"column {node.sql()} must be in GROUP BY or inside an aggregate", node)
        return node

    key_outputs: list[str | None] = [None] * len(keys)
    outputs = []
    for projection in rest.expressions:
        alias = projection.alias if isinstance(projection, exp.Alias) else None
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star):
            raise sql_error("SELECT * is not allowed with GROUP BY", body)
        if alias is None:
            alias = (
                body.name if isinstance(body, exp.Column) else body.sql(dialect="postgres").lower()
            )
        rewritten = body.copy().transform(take_aggregate).transform(rewrite)
        outputs.append(exp.alias_(rewritten, alias, quoted=True))
        if isinstance(rewritten, exp.Column) and rewritten.name in key_columns:
            key_outputs[key_columns.index(rewritten.name)] = alias
    post = exp.select(*outputs).from_(FLOWS)
    keyed_post = exp.select(*outputs, *(exp.column(k) for k in key_columns)).from_(FLOWS)
    having = rest.args.get("having")
    if having is not None:
        condition = having.this.copy().transform(take_aggregate).transform(rewrite)
        post = post.where(condition)
        keyed_post = keyed_post.where(condition.copy())
    order = rest.args.get("order")
    if order is not None and spec is None:  # an updating aggregate: its rows have no order
        raise order_error(order.expressions[0])
    if order is not None:
        post.set("order", order.copy().transform(take_aggregate).transform(rewrite))

    alias = table.alias or table.name
    pre = exp.select(
        *(k.copy().as_(n) for k, n in zip(keys, key_columns, strict=True)),
        *([exp.column(spec.time_column).as_("__ts")] if spec is not None else []),
        *(a.as_(f"__a{i}") for i, a in enumerate(arguments)),
        # which source rows were late (the late-row side output) — windows only
        *(
            [exp.column(c).as_(f"__{c.lstrip('_')}") for c in positions]
            if spec is not None and positions
            else []
        ),
    ).from_(exp.to_table(table.name).as_(alias) if table.alias else exp.to_table(table.name))
    where = rest.args.get("where")
    if where is not None:
        pre.set("where", where.copy())
    return WindowAggregate(
        source=table.name,
        window=spec,
        pre_sql=to_datafusion(pre),
        keys=key_columns,
        key_sql=[k.sql(dialect="postgres") for k in keys],
        key_outputs=key_outputs,
        aggregates=aggregates,
        post_sql=to_datafusion(post),
        keyed_post_sql=to_datafusion(keyed_post),
    )


def _when(condition: exp.Expr | None, value: exp.Expr) -> exp.Expr:
    if condition is None:
        return value
    return exp.Case(ifs=[exp.If(this=condition.copy(), true=value)])
