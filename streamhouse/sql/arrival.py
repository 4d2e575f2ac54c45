"""Rows ordered by arrival where they tie on a ``PROCTIME()`` column.

The rows one read stamps (a bounded query's read, a continuous query's micro-batch) share one
processing time, where Flink gives each row its own. An OVER ordered by such a column is
ordered after it by arrival, ``_partition, _offset`` (the order the rows are read in), so
ranking, LAG, LEAD and ROWS frames see the rows in the order they came, the same on a replay
(which reads the same offsets at the recorded time).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from streamhouse.sql.changelog_join import spelled_out_stars

__all__ = ["ARRIVAL", "orderable_by_arrival", "proctime_ties_by_arrival", "rows_by_arrival"]


ARRIVAL = ("_partition", "_offset")
"""The metadata columns that order rows by arrival: a micro-batch's rows are read by
partition and offset."""


def proctime_ties_by_arrival(
    query: exp.Query,
    proctime_columns: Callable[[str], set[str]],
    which: Callable[[exp.Window], bool] = lambda window: True,
) -> exp.Query:
    """``query`` with each OVER ordered by a ``PROCTIME()`` column of the stream its SELECT
    reads (``proctime_columns(name)``) ordered by arrival after it (``_partition, _offset`` in
    the same direction): the rows one read stamps tie on their time, and ``ROW_NUMBER() OVER
    (PARTITION BY k ORDER BY p DESC) = 1`` keeps the last row read, as Flink's does, not any.
    Only the OVERs ``which`` accepts; ``query`` itself (not copied) when no OVER is ordered so."""

    def chosen(window: exp.Window) -> bool:
        return _proctime_order(window, proctime_columns) is not None and which(window)

    if not any(chosen(w) for w in query.find_all(exp.Window)):
        return query
    query = query.copy()
    for window in list(query.find_all(exp.Window)):
        desc = _proctime_order(window, proctime_columns)
        if desc is not None and which(window):
            order = window.args["order"]
            arrival = [exp.Ordered(this=exp.column(c), desc=desc) for c in ARRIVAL]
            order.set("expressions", [*order.expressions, *arrival])
    return query


def _proctime_order(window: exp.Window, proctime_columns: Callable[[str], set[str]]) -> bool | None:
    """Whether the first ``PROCTIME()`` column ``window`` is ordered by is descending; None if
    it is ordered by none (or reads a join or subquery, whose columns are not followed)."""
    order = window.args.get("order")
    select = window.find_ancestor(exp.Select)
    source = select.args.get("from_") if select is not None else None
    table = source.this if source is not None else None
    if order is None or not isinstance(table, exp.Table) or select.args.get("joins"):
        return None
    names = proctime_columns(table.name)
    for key in order.expressions:
        if isinstance(key.this, exp.Column) and key.this.name in names:
            return bool(key.args.get("desc"))
    return None


def rows_by_arrival(
    statement: exp.Expr,
    proctime_columns: Callable[[str], set[str]],
    stream_columns: Callable[[str], list[str] | None],
) -> exp.Expr:
    """``statement`` with each LAG, LEAD and ROWS frame ordered by a ``PROCTIME()`` column
    ordered by arrival after it (``_partition, _offset``): a micro-batch's rows share one
    processing time and each later micro-batch has a later one, so the rows before and after
    a row are those read before and after it, the same on a replay (which reads the same
    offsets at the recorded time). A ``*`` beside such an OVER is spelled out as the stream's
    columns (``stream_columns(name)``): the arrival columns are not among its output. RANGE
    frames keep a batch's rows as peers. ``statement`` itself when nothing is ordered so."""
    ordered = proctime_ties_by_arrival(statement, proctime_columns, _by_rows)  # type: ignore[arg-type]
    if ordered is statement:
        return statement
    for select in list(ordered.find_all(exp.Select)):
        source = select.args.get("from_")
        table = source.this if source is not None else None
        if not isinstance(table, exp.Table) or not any(
            isinstance(p, exp.Star) for p in select.expressions
        ):
            continue
        arrived = any(
            any(k.this.name == ARRIVAL[-1] for k in w.args["order"].expressions)
            for w in select.find_all(exp.Window)
            if w.args.get("order") is not None
        )
        names = stream_columns(table.name)
        if arrived and names is not None:
            spelled = spelled_out_stars(select, {table.alias_or_name: names})
            if select is ordered:
                return spelled
            select.replace(spelled)
    return ordered


def _by_rows(window: exp.Window) -> bool:
    """Whether ``window`` counts rows: LAG, LEAD or a ROWS frame."""
    spec = window.args.get("spec")
    return isinstance(window.this, exp.Lag | exp.Lead) or (
        spec is not None and str(spec.args.get("kind") or "").upper() == "ROWS"
    )


def orderable_by_arrival(window: exp.Window) -> bool:
    """Whether ``window`` can be ordered by more keys than its time: not a RANGE frame that
    reaches back an interval (one ORDER BY key only; one read's rows are its peers)."""
    spec = window.args.get("spec")
    if spec is None or str(spec.args.get("kind") or "").upper() != "RANGE":
        return True
    return all(
        str(spec.args.get(side) or "").upper() in ("", "UNBOUNDED", "CURRENT ROW")
        for side in ("start", "end")
    )
