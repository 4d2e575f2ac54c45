"""The aggregate functions a continuous GROUP BY computes incrementally, named once.

The planner turns each SQL aggregate into an :class:`AggregateCall`; the window and group
operators (:mod:`streamhouse.windows.aggregate`) split it into partials that merge.

>>> AggregateCall("n", AggregateFunction.COUNT_ALL)
AggregateCall(output='n', func=<AggregateFunction.COUNT_ALL: 'count_all'>, arg=None)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AggregateFunction(StrEnum):
    """An aggregate with incremental partials."""

    COUNT_ALL = "count_all"  # COUNT(*)
    COUNT = "count"  # COUNT(x): non-null x
    COUNT_DISTINCT = "count_distinct"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    AVG = "avg"


@dataclass(frozen=True)
class AggregateCall:
    """One aggregate of a query: ``func`` over pre-projected column ``arg`` (None for COUNT(*))."""

    output: str
    func: AggregateFunction
    arg: str | None = None
