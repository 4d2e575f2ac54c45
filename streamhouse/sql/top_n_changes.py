"""Planning a Top-N over any updating input — a join of updating inputs, an outer join, a UNION
ALL of updating inputs, an aggregate with HAVING — as a :class:`Recompute` keyed by (partition,
rank) (:attr:`Recompute.ranks`).

The input's rows are kept by their row key (:data:`~streamhouse.sql.changelog.ROW_KEY`), dead
once retracted; each micro-batch ranks the partitions it touches (a changed row's partition
before and after) over their rows before and after its changes, upserts the (partition, rank)
rows it outputs and tombstones those it output before only: a partition may shrink, and a row
may move to another partition or out of the outer WHERE.
"""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.changelog import ROW_KEY
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import Operator, Recompute, SelectPlanner, WindowAggregate
from streamhouse.sql.parse import sql_error


def rank_of(ranking: exp.Select) -> tuple[str, exp.Window] | None:
    """(alias, window) of the ``ROW_NUMBER() OVER (...) AS alias`` ``ranking`` selects."""
    for projection in ranking.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Window) and isinstance(body.this, exp.RowNumber):
            return projection.alias_or_name, body
    return None


def plan_input(
    query: exp.Expr, derived: dict[str, Operator], plan_select: SelectPlanner
) -> Operator | None:
    """The node a subquery runs as (a UNION [ALL] or a SELECT), its own inputs planned into
    ``derived``; None for another kind of query."""
    from streamhouse.sql.union import plan_distinct_union, plan_union

    if isinstance(query, exp.Union):
        if query.args.get("distinct"):
            return plan_distinct_union(query, derived, plan_select)
        return plan_union(query, derived, plan_select)
    if isinstance(query, exp.Select):
        return plan_select(query, derived)
    return None


def top_n_over_changes(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> Recompute | None:
    """``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER ([PARTITION BY p] ORDER BY ..) AS rn FROM
    (q)) WHERE rn <= N`` when ``q`` updates (one with a join is planned by
    :func:`~streamhouse.sql.top_n.plan_top_n`, which hands its join here as a derived input)."""
    sub = select.args["from_"].this
    ranking = sub.this if isinstance(sub, exp.Subquery) else None
    if not isinstance(ranking, exp.Select) or ranking.args.get("joins") or rank_of(ranking) is None:
        return None
    source = ranking.args["from_"].this
    if not isinstance(source, exp.Subquery):
        return None
    saved = dict(derived)
    node = plan_input(source.this, derived, plan_select)
    if node is None or not node.updating or _left_to_counts(node, select, ranking):
        derived.clear()  # planned again by the planner of its kind
        derived.update(saved)
        return None
    name = f"__derived_{len(derived)}"
    derived[name] = node
    outer = select.copy()
    ranked = outer.args["from_"].this.this
    ranked.args["from_"].this.replace(exp.to_table(name).as_(source.alias_or_name or name))
    return ranked_recompute(outer, name)


def _left_to_counts(node: Operator, select: exp.Select, ranking: exp.Select) -> bool:
    """Whether :func:`~streamhouse.sql.top_n.top_n_over_updates` plans this Top-N (over a
    GROUP BY without HAVING, partitioned by its keys, filtered by the rank alone): it keeps no
    dead rows and computes no ranks before."""
    from streamhouse.sql.top_n import _rank_limit

    if not isinstance(node, WindowAggregate) or " WHERE " in node.post_sql:  # HAVING
        return False
    rank = rank_of(ranking)
    assert rank is not None
    _, ranks_only = _rank_limit(select, rank[0])
    partition = rank[1].args.get("partition_by") or []
    keys = set(node.key_columns)
    return ranks_only and all(isinstance(p, exp.Column) and p.name in keys for p in partition)


def ranked_recompute(select: exp.Select, name: str) -> Recompute:
    """The :class:`Recompute` of ``select``, a Top-N over the rows of updating input ``name``
    (``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER (..) AS rn FROM name ..) WHERE rn <= N``)."""
    from streamhouse.sql.top_n import _rank_limit

    ranking = select.args["from_"].this.this
    rank = rank_of(ranking)
    assert rank is not None
    rank_name, window = rank
    limit, _ = _rank_limit(select, rank_name)
    if limit is None:
        raise sql_error(f"a continuous Top-N bounds its rank: add WHERE {rank_name} <= N", select)
    from streamhouse.sql.recompute import column_names

    partition = column_names(
        window.args.get("partition_by") or [], "a Top-N over an updating input partitions"
    )
    outputs = []
    for projection in select.expressions:
        if isinstance(projection, exp.Star) or isinstance(projection.this, exp.Star):
            raise sql_error(
                "a Top-N over an updating input names the columns it outputs (not *)",
                projection,
            )
        outputs.append(projection.alias_or_name)
    # N = 1 with partitions: a row per partition, keyed by it; else by (partition, rank)
    key_outputs = [*partition, rank_name] if limit > 1 or not partition else partition
    missing = [k for k in key_outputs if k not in outputs]
    if missing or ROW_KEY in outputs:
        raise sql_error(
            f"a Top-N writes one row per key and rank: select {', '.join(missing)}"
            " (the keys of its upserts)",
            select,
        )
    return Recompute(
        name,
        to_datafusion(select),
        [ROW_KEY],
        partition,
        key_outputs,  # type: ignore[arg-type]
        retracts=True,
        ranks=True,
    )
