"""Planning Top-N: ``ROW_NUMBER() OVER (PARTITION BY ..) <= N`` over a stream or a join as a
:class:`TopN`, and over an updating aggregate as a :class:`Recompute`."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.bounds import conjuncts
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import (
    RANKED,
    Operator,
    Recompute,
    SelectPlanner,
    StreamJoin,
    TemporalJoin,
    TemporalStar,
    TopN,
    WindowAggregate,
)
from streamhouse.sql.parse import sql_error
from streamhouse.sql.top_n_changes import ranked_recompute


def plan_top_n(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> Operator | None:
    """A TopN plan if ``select`` is ``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER (PARTITION BY
    k ORDER BY ..) AS rn FROM s ..) WHERE rn <= N`` (or ``rn = 1``, ``rn < N``). When the inner
    query joins streams, the join becomes a derived input the ranking reads."""
    source = select.args.get("from_")
    sub = source.this if source is not None else None
    if not isinstance(sub, exp.Subquery) or not isinstance(sub.this, exp.Select):
        return None
    if select.args.get("group") is not None or any(
        p.find(exp.AggFunc) is not None for p in select.expressions
    ):  # an aggregate over the ranking: over a Top-N (the WHERE bounding the rank), updating
        where = select.args.get("where")
        ranks = any(
            isinstance(p.this if isinstance(p, exp.Alias) else p, exp.Window)
            for p in sub.this.expressions
        )
        if where is None or not ranks:
            return None
        top_n = exp.select(exp.Star()).from_(sub.copy()).where(where.this.copy())
        aggregate = select.copy()
        aggregate.set("where", None)
        aggregate.set("from_", exp.From(this=top_n.subquery(sub.alias_or_name or "__top_n")))
        return plan_select(aggregate, derived)
    inner = sub.this
    if inner.args.get("joins") and derived is not None:
        rewritten = _rank_over_join(select, inner, derived, plan_select)
        if rewritten is None:
            return None
        select, inner = rewritten, rewritten.args["from_"].this.this
        name = inner.args["from_"].this.name
        if derived[name].updating:  # the join's rows change: rank them as they do
            return ranked_recompute(select, name)
    inner_from = inner.args.get("from_")
    table = inner_from.this if inner_from is not None else None
    if (
        not isinstance(table, exp.Table)
        or isinstance(table.this, exp.Func)
        or inner.args.get("joins")
    ):
        return None
    rank = None
    for projection in inner.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Window) and isinstance(body.this, exp.RowNumber):
            rank = (projection.alias_or_name, body)
    if rank is None:
        return None
    rank_name, window = rank
    partition = window.args.get("partition_by") or []
    if not partition or not all(isinstance(p, exp.Column) for p in partition):
        return None
    limit, ranks_only = _rank_limit(select, rank_name)
    if limit is None:
        return None
    ranked = exp.select(exp.Star(), exp.alias_(window.copy(), "__rn", quoted=True)).from_(
        table.copy()
    )
    if inner.args.get("where") is not None:
        ranked.set("where", inner.args["where"].copy())
    retain = (
        exp.select(exp.Star())
        .from_(ranked.subquery("__ranked"))
        .where(exp.column("__rn", quoted=True) <= limit)
    )
    order_by = None
    order = window.args.get("order")
    ordered = order.expressions if order is not None else []
    if inner.args.get("where") is None and all(isinstance(o.this, exp.Column) for o in ordered):
        order_by = tuple((o.this.name, bool(o.args.get("desc"))) for o in ordered)
    output = None
    output_columns = None
    if _star_and_rank(inner, rank_name):  # the inner query's rows are the retained rows
        output = select.copy()
        ranked_table: exp.Expr = exp.to_table(RANKED)
        if sub.alias:
            ranked_table = exp.alias_(ranked_table, sub.alias, table=True)
        output.set("from_", exp.From(this=ranked_table))
        output_columns = _plain_columns(select) if ranks_only else None
    return TopN(
        source=table.name,
        sql=to_datafusion(select),
        retain_sql=to_datafusion(retain),
        partition_by=[p.name for p in partition],
        rank_column=rank_name,
        limit=limit,
        ranks_only=ranks_only,
        output_sql=to_datafusion(output) if output is not None else None,
        order_by=order_by,
        output_columns=output_columns,
        rank_order=tuple(o.this.name for o in ordered if isinstance(o.this, exp.Column)),
    )


def _rank_limit(select: exp.Select, rank_name: str) -> tuple[int | None, bool]:
    """(N of ``WHERE rank <= N`` (``< N + 1``, ``= 1``), or None; whether the WHERE only bounds
    the rank)."""
    limit = None
    ranks_only = True
    where = select.args.get("where")
    for item in conjuncts(where.this if where is not None else None):
        if not (
            isinstance(item, exp.LTE | exp.LT | exp.EQ)
            and isinstance(item.this, exp.Column)
            and item.this.name == rank_name
            and isinstance(item.expression, exp.Literal)
        ):
            ranks_only = False
        else:
            value = int(item.expression.name)
            limit = value - 1 if isinstance(item, exp.LT) else value
            if isinstance(item, exp.EQ) and value != 1:
                return None, ranks_only
    return (limit if limit is not None and limit >= 1 else None), ranks_only


def top_n_over_updates(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> Recompute | None:
    """``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER ([PARTITION BY p] ORDER BY ..) AS rn FROM
    (SELECT .. GROUP BY ..)) WHERE rn <= N``: a Top-N over an updating aggregate. The latest row
    per group is kept and the ranking re-run for the partitions a micro-batch touches (all rows
    without PARTITION BY); an upsert per (p, rn). A partition never loses a row (the aggregate
    has no HAVING, p are its keys), so a (p, rn) once written stays."""
    ranking = select.args["from_"].this.this
    source = ranking.args.get("from_") if isinstance(ranking, exp.Select) else None
    aggregate = source.this if source is not None else None
    if not isinstance(aggregate, exp.Subquery) or not isinstance(aggregate.this, exp.Select):
        return None
    rank = next(
        (
            (p.alias_or_name, p.this)
            for p in ranking.expressions
            if isinstance(p, exp.Alias)
            and isinstance(p.this, exp.Window)
            and isinstance(p.this.this, exp.RowNumber)
        ),
        None,
    )
    if rank is None or ranking.args.get("joins"):
        return None
    rank_name, window = rank
    limit, ranks_only = _rank_limit(select, rank_name)
    if limit is None or not ranks_only:
        raise sql_error(
            f"a Top-N over an updating aggregate is filtered by its rank alone (WHERE"
            f" {rank_name} <= N); filter the aggregate's rows in its HAVING instead",
            select.args.get("where") or select,
        )
    if aggregate.this.args.get("having") is not None:
        raise sql_error(
            "a Top-N over an updating aggregate with HAVING is not supported continuously yet"
            " (a group HAVING drops would leave its rank behind); filter the Top-N's rows instead",
            aggregate.this.args["having"],
        )
    inner = plan_select(aggregate.this, derived)
    if not (isinstance(inner, WindowAggregate) and inner.window is None):
        return None
    partition = window.args.get("partition_by") or []
    keys = [k for k in inner.key_outputs if k is not None]
    for column in partition:
        if not isinstance(column, exp.Column) or column.name not in keys:
            raise sql_error(
                "a Top-N over an updating aggregate partitions by the aggregate's GROUP BY"
                f" columns ({', '.join(keys) or 'none'}): a row would move between partitions",
                column,
            )
    outputs = [p.alias_or_name for p in select.expressions]
    key_outputs = [p.name for p in partition] + [rank_name]
    missing = [k for k in key_outputs if k not in outputs]
    if missing:
        raise sql_error(
            f"a Top-N writes one row per key and rank: select {', '.join(missing)}"
            " (the keys of its upserts)",
            select,
        )
    name = f"__derived_{len(derived)}"
    derived[name] = inner
    outer = select.copy()
    inner_source = outer.args["from_"].this.this.args["from_"].this
    inner_source.replace(exp.to_table(name).as_(aggregate.alias_or_name or name))
    return Recompute(
        name,
        to_datafusion(outer),
        keys,
        [p.name for p in partition],
        key_outputs,  # type: ignore[arg-type]
    )


def _plain_columns(select: exp.Select) -> tuple[str, ...] | None:
    """The names ``select`` picks when it is ``SELECT *`` or ``SELECT a, b, ...`` (no aliases,
    expressions, grouping or ordering) with a WHERE at most; ``("*",)`` for a star."""
    if set(k for k, v in select.args.items() if v) - {"expressions", "from_", "where"}:
        return None
    if len(select.expressions) == 1 and isinstance(select.expressions[0], exp.Star):
        return ("*",)
    if not all(isinstance(e, exp.Column) and not e.table for e in select.expressions):
        return None
    return tuple(e.name for e in select.expressions)


def _star_and_rank(inner: exp.Select, rank_name: str) -> bool:
    """Whether ``inner`` is ``SELECT *, ROW_NUMBER() OVER (...) AS rank FROM t [WHERE ...]``."""
    if set(k for k, v in inner.args.items() if v) - {"expressions", "from_", "where"}:
        return False
    if len(inner.expressions) != 2 or not isinstance(inner.expressions[0], exp.Star):
        return False
    return inner.expressions[1].alias_or_name == rank_name


def _rank_over_join(
    select: exp.Select,
    inner: exp.Select,
    derived: dict[str, Operator],
    plan_select: SelectPlanner,
) -> exp.Select | None:
    """``select`` with its inner ranking reading the inner join as a derived input.

    The join keeps the inner query's projections (minus ROW_NUMBER); the window's qualified
    columns are renamed to what the join outputs them as."""
    window_projection = None
    projections = []
    names: dict[tuple[str, str], str] = {}
    stars: list[str] = []
    for projection in inner.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Window) and isinstance(body.this, exp.RowNumber):
            window_projection = projection
            continue
        projections.append(projection.copy())
        if isinstance(body, exp.Column) and not isinstance(body.this, exp.Star):
            names[(body.table, body.name)] = projection.alias_or_name
        elif isinstance(body, exp.Column) and isinstance(body.this, exp.Star):
            stars.append(body.table)
    if window_projection is None:
        return None
    # the window's expressions the join selects (ORDER BY x.n + y.m, selected AS score) are
    # read by name; other columns it names are passed on by the join under names of our own
    by_value = {
        p.this: p.alias_or_name
        for p in projections
        if isinstance(p, exp.Alias) and not isinstance(p.this, exp.Column)
    }
    hidden: list[exp.Expr] = []
    for column in window_projection.find_all(exp.Column):
        key = (column.table, column.name)
        if column.table and key not in names and column.table not in stars:
            names[key] = f"__rank_{column.table}_{column.name}"
            hidden.append(column.copy().as_(names[key]))
    join_select = inner.copy()
    join_select.set("expressions", projections + hidden)
    op = plan_select(join_select, derived)
    if not (isinstance(op, StreamJoin | TemporalJoin | TemporalStar) or op.updating):
        return None
    name = f"__derived_{len(derived)}"
    derived[name] = op

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.table:
            key = (node.table, node.name)
            if key in names:
                return exp.column(names[key])
            if node.table in stars:
                return exp.column(node.name)
        return node

    def named(node: exp.Expr) -> exp.Expr:
        if node in by_value and not isinstance(node, exp.Column):
            return exp.column(by_value[node])
        return rename(node)

    window = window_projection.copy().transform(named)
    passed: list[exp.Expr] = [exp.Star()]
    if hidden and not stars:  # the join's own columns only
        passed = [exp.column(p.alias_or_name) for p in projections]
    ranked = exp.select(*passed, window).from_(exp.to_table(name))
    outer = select.copy()
    outer.args["from_"].this.replace(ranked.subquery(select.args["from_"].this.alias or None))
    return outer
