"""Time bounds of an interval join, read off its condition.

``l.ts BETWEEN r.ts - INTERVAL '4' HOUR AND r.ts`` says that a left row matches right rows
at most 4 hours later and none earlier. With both sides' watermark at ``W`` (no later row is
older than ``W``), a left row older than ``W - 4h`` and a right row older than ``W - 0`` can
match nothing that is still to come, so their state can go.

>>> from streamhouse.sql.parse import parse_one
>>> q = parse_one("SELECT * FROM a JOIN b ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL '4' HOUR AND b.ts")
>>> interval_bounds(q.args["joins"][0].args["on"], "a", "b")
TimeBound(left_column='ts', right_column='ts', before_ms=14400000, after_ms=0)
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.ddl import interval_ms


@dataclass(frozen=True)
class TimeBound:
    """``right.t - before <= left.t <= right.t + after`` (either side may be unbounded: None)."""

    left_column: str
    right_column: str
    before_ms: int | None
    after_ms: int | None

    def left_expiry(self, watermark: int) -> int | None:
        """Left rows with event time below this can match no future right row."""
        return None if self.before_ms is None else watermark - self.before_ms

    def right_expiry(self, watermark: int) -> int | None:
        """Right rows with event time below this can match no future left row."""
        return None if self.after_ms is None else watermark - self.after_ms


def conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    if condition is None:
        return []
    if isinstance(condition, exp.And):
        return conjuncts(condition.this) + conjuncts(condition.expression)
    if isinstance(condition, exp.Paren):
        return conjuncts(condition.this)
    return [condition]


def _term(node: exp.Expr) -> tuple[str, str, int] | None:
    """(table alias, column, offset ms) of ``alias.col [+|- INTERVAL ...]``."""
    offset = 0
    while isinstance(node, exp.Add | exp.Sub) and isinstance(node.expression, exp.Interval):
        try:
            amount = interval_ms(node.expression)
        except SqlError:
            return None
        offset += amount if isinstance(node, exp.Add) else -amount
        node = node.this
    if isinstance(node, exp.Column) and node.table:
        return node.table, node.name, offset
    return None


def candidate_bounds(condition: exp.Expr | None, left: str, right: str) -> list[TimeBound]:
    """The tightest bounds per (left column, right column) pair that ``condition`` relates, in
    order of first mention. Which pair is a time bound depends on the streams' time columns:
    see :func:`evictable_bound`."""
    found: dict[tuple[str, str], dict[str, int]] = {}

    def relate(greater: exp.Expr, smaller: exp.Expr) -> None:
        g, s = _term(greater), _term(smaller)
        if g is None or s is None:
            return
        if (
            g[0] == left and s[0] == right
        ):  # left.c + og >= right.c + os  ->  left >= right - (og - os)
            key, value, pair = "before", g[2] - s[2], (g[1], s[1])
        elif (
            g[0] == right and s[0] == left
        ):  # right.c + og >= left.c + os  ->  left <= right + (og - os)
            key, value, pair = "after", g[2] - s[2], (s[1], g[1])
        else:
            return
        bounds = found.setdefault(pair, {})
        bounds[key] = min(bounds.get(key, value), value)

    for item in conjuncts(condition):
        if isinstance(item, exp.Between):
            relate(item.this, item.args["low"])
            relate(item.args["high"], item.this)
        elif isinstance(item, exp.GTE | exp.GT):
            relate(item.this, item.expression)
        elif isinstance(item, exp.LTE | exp.LT):
            relate(item.expression, item.this)
    return [TimeBound(*pair, b.get("before"), b.get("after")) for pair, b in found.items()]


def interval_bounds(condition: exp.Expr | None, left: str, right: str) -> TimeBound | None:
    """The tightest time bounds between ``left`` and ``right`` rows in ``condition`` (those of
    the first pair of columns it relates)."""
    found = candidate_bounds(condition, left, right)
    return found[0] if found else None


def evictable_bound(
    bounds: list[TimeBound], left_time: str | None, right_time: str | None
) -> TimeBound | None:
    """The first of ``bounds`` between the two inputs' time attributes (their watermark
    columns, after renames), the one the watermark evicts state by; None when the condition
    bounds no pair of them. A comparison of any other columns (``a.v > b.w``, or a value column
    with a time attribute) is a residual filter: it bounds no state, as in Flink.

    >>> bounds = [TimeBound("v", "w", 0, None), TimeBound("ts", "ts", 5, 0)]
    >>> evictable_bound(bounds, "ts", "ts")
    TimeBound(left_column='ts', right_column='ts', before_ms=5, after_ms=0)
    >>> evictable_bound(bounds[:1], "ts", "ts") is None
    True
    """
    if left_time is None or right_time is None:
        return None
    for b in bounds:
        if (b.left_column, b.right_column) == (left_time, right_time):
            return b
    return None
