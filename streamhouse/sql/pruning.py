"""Which segments a bounded query can skip: bounds on the metadata columns read off its WHERE.

A query that reads a source once, as ``SELECT ... FROM src [alias] WHERE c1 AND c2 ...``, keeps
only rows every conjunct holds for. The conjuncts on ``_partition`` (``=``, ``IN``), ``_offset``
(``=``, ``<``, ``<=``, ``>``, ``>=``, ``BETWEEN``) and ``_timestamp`` (a lower bound) say which
index rows can hold such rows at all, so the others are never read. The filter itself still
runs over the rows that are read: the bounds only leave out segments.

>>> from streamhouse.sql.parse import parse_one
>>> q = parse_one("SELECT * FROM t WHERE _offset >= 10 AND _partition IN (0, 2) AND x > 1")
>>> scan_bounds(q, "t")
ScanBounds(partitions=frozenset({0, 2}), start_offset=10, end_offset=None, min_timestamp_ms=None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from streamhouse.log.metadata import SegmentRow


@dataclass(frozen=True)
class ScanBounds:
    """Rows of a source the query can keep: of ``partitions`` (None: all), at offsets in
    ``[start_offset, end_offset)`` and at or after ``min_timestamp_ms`` (None: unbounded)."""

    partitions: frozenset[int] | None = None
    start_offset: int = 0
    end_offset: int | None = None
    min_timestamp_ms: int | None = None

    def keeps(self, row: SegmentRow) -> bool:
        """Whether index ``row`` may hold a row within the bounds (a row without known
        timestamps, max_timestamp < 0, is always kept)."""
        return (
            self.min_timestamp_ms is None
            or row.max_timestamp < 0
            or row.max_timestamp >= self.min_timestamp_ms
        )


NO_BOUNDS = ScanBounds()


def scan_bounds(query: exp.Expr, source: str, columns: frozenset[str] | None = None) -> ScanBounds:
    """The bounds ``query``'s WHERE puts on the rows of ``source``, if it reads ``source``
    exactly once, directly (no join in that FROM); else :data:`NO_BOUNDS`. ``columns``: the
    metadata columns that really are metadata in ``source`` (a declared field of the same
    name hides one); all of them when None."""
    tables = [t for t in query.find_all(exp.Table) if t.name == source]
    if len(tables) != 1:
        return NO_BOUNDS
    table = tables[0]
    from_ = table.parent
    select = from_.parent if isinstance(from_, exp.From) else None
    if not isinstance(select, exp.Select) or select.args.get("joins") or from_.this is not table:
        return NO_BOUNDS
    where = select.args.get("where")
    if where is None:
        return NO_BOUNDS
    names = {"", table.alias_or_name, table.name}
    usable = columns if columns is not None else frozenset({"_partition", "_offset", "_timestamp"})
    partitions: set[int] | None = None
    start, end, min_ts = 0, None, None
    for conjunct in _conjuncts(where.this):
        for column, op, value in _comparisons(conjunct):
            if column.name not in usable or column.table not in names:
                continue
            if column.name == "_partition":
                wanted = _partitions(op, value)
                if wanted is not None:
                    partitions = wanted if partitions is None else partitions & wanted
            elif column.name == "_offset":
                low, high = _offset_range(op, value)
                start = max(start, low)
                if high is not None:
                    end = high if end is None else min(end, high)
            elif column.name == "_timestamp" and op in (">=", ">", "="):
                ms = _timestamp_ms(value)
                if ms is not None:
                    min_ts = ms if min_ts is None else max(min_ts, ms)
    return ScanBounds(frozenset(partitions) if partitions is not None else None, start, end, min_ts)


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


_FLIPPED = {">=": "<=", ">": "<", "<=": ">=", "<": ">", "=": "="}
_OPS = {exp.GTE: ">=", exp.GT: ">", exp.LTE: "<=", exp.LT: "<", exp.EQ: "="}


def _comparisons(node: exp.Expr) -> list[tuple[exp.Column, str, object]]:
    """``node`` as (column, operator, literal value(s)) comparisons; none if it is not one."""
    if isinstance(node, exp.Between) and isinstance(node.this, exp.Column):
        return [(node.this, ">=", node.args["low"]), (node.this, "<=", node.args["high"])]
    if (
        isinstance(node, exp.In)
        and isinstance(node.this, exp.Column)
        and not node.args.get("query")
    ):
        return [(node.this, "in", node.expressions)]
    op = _OPS.get(type(node))
    if op is None:
        return []
    left, right = node.left, node.right
    if isinstance(left, exp.Column) and not isinstance(right, exp.Column):
        return [(left, op, right)]
    if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
        return [(right, _FLIPPED[op], left)]
    return []


def _integer(value: object) -> int | None:
    if isinstance(value, exp.Neg):
        inner = _integer(value.this)
        return None if inner is None else -inner
    if isinstance(value, exp.Literal) and not value.is_string:
        try:
            return int(value.this)
        except ValueError:
            return None
    return None


def _partitions(op: str, value: object) -> set[int] | None:
    if op == "=":
        number = _integer(value)
        return None if number is None else {number}
    if op == "in":
        numbers = [_integer(v) for v in value]  # type: ignore[attr-defined]
        return None if any(n is None for n in numbers) else set(numbers)  # type: ignore[misc]
    return None


def _offset_range(op: str, value: object) -> tuple[int, int | None]:
    """The offsets ``_offset <op> value`` keeps, as ``[low, high)``."""
    number = _integer(value)
    if number is None:
        return 0, None
    return {
        ">=": (number, None),
        ">": (number + 1, None),
        "=": (number, number + 1),
        "<": (0, number),
        "<=": (0, number + 1),
    }.get(op, (0, None))


_ZONELESS = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?$")


def _timestamp_ms(value: object) -> int | None:
    """Epoch milliseconds of a TIMESTAMP literal (zone-less text is UTC, as the log's
    timestamps are read), or None if ``value`` is not one."""
    if isinstance(value, exp.Cast):
        value = value.this
    if isinstance(value, exp.Literal) and value.is_string and _ZONELESS.match(value.this.strip()):
        try:
            return int(np.datetime64(value.this.strip().replace(" ", "T"), "ms").astype(np.int64))
        except ValueError:
            return None
    return None
