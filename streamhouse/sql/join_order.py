"""Which input of a bounded inner join DataFusion builds its hash table from.

DataFusion builds a hash join's table from the join's first (left) input and streams the
other past it; it swaps the two only when its statistics say the left is the larger, and an
aggregate's statistics guess as many rows out as in. A stream joined to an aggregate of a
stream (Nexmark q7: the bids joined to each window's highest price) then builds a table of
every row of the stream to probe it with a few aggregated rows.

:func:`aggregate_first` puts such an aggregate first: an inner join with an ``ON`` condition
is the same set of rows either way round, and the select list names its columns, so their
order does not change (a ``*`` would: such a query is left as written).

>>> from streamhouse.sql.parse import parse_one
>>> query = parse_one(
...     "SELECT b.p FROM bid AS b JOIN (SELECT max(p) AS m FROM bid GROUP BY w) AS x ON b.p = x.m")
>>> first, moved = aggregate_first(query, {"bid"})
>>> first.sql(), [m.alias for m in moved]
('SELECT b.p FROM (SELECT MAX(p) AS m FROM bid GROUP BY w) AS x JOIN bid AS b ON b.p = x.m', ['x'])
>>> aggregate_first(query, set())[0].sql() == query.sql()
True
"""

from __future__ import annotations

from sqlglot import exp

__all__ = ["aggregate_first"]


def aggregate_first(query: exp.Query, scanned: set[str]) -> tuple[exp.Query, list[exp.Subquery]]:
    """``query`` with each inner join of a source of ``scanned`` (first) to an aggregating
    subquery written the other way round (see the module), and those subqueries (in the
    query returned); ``query`` itself is not changed."""
    query = query.copy()
    moved: list[exp.Subquery] = []
    for select in query.find_all(exp.Select):
        joins = select.args.get("joins") or []
        from_ = select.args.get("from_")
        if len(joins) != 1 or from_ is None or _has_star(select):
            continue
        join = joins[0]
        left, right = from_.this, join.this
        if (
            (join.side or join.kind not in ("", "INNER"))
            or join.args.get("on") is None
            or not isinstance(left, exp.Table)
            or left.name not in scanned
            or not isinstance(right, exp.Subquery)
            or not isinstance(right.this, exp.Select)
            or right.this.args.get("group") is None
        ):
            continue
        from_.set("this", right.copy())
        join.set("this", left.copy())
        moved.append(from_.this)
    return query, moved


def _has_star(select: exp.Select) -> bool:
    return any(
        isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star))
        for e in select.expressions
    )
