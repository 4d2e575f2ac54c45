"""Planning ``SELECT ... FROM s ORDER BY t`` as a :class:`TimeSort` (Flink's temporal sort)."""

from __future__ import annotations

from sqlglot import exp

from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.nodes import TimeSort
from streamhouse.sql.plan_checks import order_error


def plan_time_sort(select: exp.Select, table: exp.Table) -> TimeSort:
    """A TimeSort of ``select``; the first ORDER BY key must be a column (or the alias of one)
    ascending; the runtime checks it is the source's time attribute."""
    first = select.args["order"].expressions[0]
    key = first.this
    if isinstance(key, exp.Column):
        for projection in select.expressions:
            if (
                isinstance(projection, exp.Alias)
                and projection.alias == key.name
                and isinstance(projection.this, exp.Column)
            ):
                key = projection.this
    if not isinstance(key, exp.Column) or first.args.get("desc"):
        raise order_error(first)
    pre = exp.select(exp.Star()).from_(table.copy())
    if select.args.get("where") is not None:
        pre.set("where", select.args["where"].copy())
    post = select.copy()
    post.set("where", None)
    return TimeSort(table.name, key.name, to_datafusion(pre), to_datafusion(post))
