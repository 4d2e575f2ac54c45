"""A window TVF joined to streams: its rows, each once per window, as the input of a join.

``TABLE(HOP(TABLE a, DESCRIPTOR(t), slide, size)) AS x JOIN b ON ...`` is, as in Flink, a
regular join of the TVF's rows with ``b``: every row of ``a`` comes once per window it falls in
(one for TUMBLE, ``size / slide`` for HOP, the windows of its period that still hold it for
CUMULATE), with ``window_start``, ``window_end`` and ``window_time``. Those rows depend on the
row's own time alone, so the TVF side is a stateless :class:`WindowRows` node (a derived input)
and the join and an aggregate over it run as over any other input: a ``GROUP BY window_start,
window_end`` over the join is an updating aggregate (a join with a stream can add rows to a
window at any time).

A SESSION TVF cannot be one: a row's session is known only once the watermark closes it, so
it is refused with the forms that run. A join whose every side is a window TVF is a window
join: each TVF side becomes ``(SELECT * FROM TABLE(...))``, the form the window-join planner
takes (:class:`~streamhouse.sql.nodes.Windowed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.changelog import PlanNode
from streamhouse.sql.parse import sql_error
from streamhouse.sql.window_spec import (
    WINDOW_COLUMNS,
    WindowKind,
    WindowSpec,
    find_window,
    take_out_windows,
    tvf_call,
)

if TYPE_CHECKING:
    from streamhouse.sql.nodes import Operator, SelectPlanner


@dataclass(frozen=True)
class WindowRows(PlanNode):
    """The rows of a window TVF over ``source``: each row once per window of ``window`` its
    event time falls in, with the window columns; rows without an event time are in none."""

    source: str
    window: WindowSpec

    @property
    def time_source(self) -> str | None:
        return self.source  # each row's event time, as it came

    def explain(self) -> list[str]:
        w = self.window
        slide = f" slide={w.slide_ms}ms" if w.slide_ms else ""
        return [
            f"WindowRows  {w.kind.upper()}({self.source}.{w.time_column},"
            f" size={w.size_ms}ms{slide}): each row once per window, with window_start,"
            " window_end, window_time",
            "  state: none (a row's windows depend on its event time alone)",
        ]


_SESSION_INSTEAD = (
    "a row's session is known only when the watermark closes it. Aggregate per session first"
    " (SELECT k, window_start, window_end, COUNT(*) ... FROM TABLE(SESSION(TABLE s PARTITION BY"
    " k, ...)) GROUP BY k, window_start, window_end) and join or rank that result, or use a"
    " TUMBLE, HOP or CUMULATE window"
)
SESSION_JOIN = f"a SESSION window TVF cannot be joined to a stream: {_SESSION_INSTEAD}"
"""What a SESSION TVF joined to a stream is refused with."""
SESSION_ROWS = (
    "a SESSION window supports only a window aggregate (not a window join, a Top-N or its rows):"
    f" {_SESSION_INSTEAD}"
)
"""What a SESSION window under a window join or a window Top-N is refused with."""


def window_rows_in_join(
    select: exp.Select, derived: dict[str, Operator], plan_select: SelectPlanner
) -> exp.Select:
    """``select`` with the window TVFs of its join planned: a window join (every side a TVF
    or a subquery) gets each bare TVF side wrapped as ``(SELECT * FROM TABLE(...))``; the one
    TVF joined to streams becomes a :class:`WindowRows` derived input read under its alias,
    the unqualified window columns of ``select`` qualified by that alias (they are its)."""
    sides = [s for s in [select.args.get("from_"), *select.args["joins"]] if s is not None]
    tvfs = [s for s in sides if tvf_call(s.this) is not None]
    if not tvfs:
        return select
    for side in tvfs:
        spec, _ = find_window(exp.select(exp.Star()).from_(side.this.copy()))
        if spec is not None and spec.kind == WindowKind.SESSION:
            raise sql_error(SESSION_ROWS if _window_join(sides) else SESSION_JOIN, side.this)
    result = select.copy()
    result_sides = [result.args.get("from_"), *result.args["joins"]]
    if _window_join(sides):
        for side in result_sides:
            if side is not None and tvf_call(side.this) is not None:
                source = side.this
                alias = source.alias_or_name
                star = exp.select(exp.Star()).from_(source.copy())
                source.replace(star.subquery(alias))
        return result
    if len(tvfs) != 1:
        return select  # left to the planner of the join (it names what it cannot run)
    for side in result_sides:
        source = side.this if side is not None else None
        if source is None or tvf_call(source) is None:
            continue
        spec, rest = find_window(exp.select(exp.Star()).from_(source.copy()))
        data = rest.args["from_"].this
        alias = source.alias_or_name or data.alias_or_name
        input_name = data.name
        if isinstance(data, exp.Subquery):  # a view or subquery: its rows are a derived input
            op = plan_select(data.this, derived)
            if op.updating:
                raise sql_error("a window TVF reads append-only rows (not an updating view)", data)
            input_name = f"__derived_{len(derived)}"
            derived[input_name] = op
        name = f"__derived_{len(derived)}"
        derived[name] = WindowRows(input_name, spec)  # type: ignore[arg-type]
        source.replace(exp.to_table(name).as_(alias))
        for column in result.find_all(exp.Column):  # the window columns are this side's
            outer = column.find_ancestor(exp.Select) is result
            if outer and not column.table and column.name in WINDOW_COLUMNS:
                column.set("table", exp.to_identifier(alias))
    return result


def _windowed(source: exp.Expr) -> bool:
    """Whether a join side is a subquery over a window (a window join's input)."""
    if not isinstance(source, exp.Subquery):
        return False
    try:
        return bool(take_out_windows(source.this)[1])
    except SqlError:
        return False


def _window_join(sides: list[exp.Expr]) -> bool:
    """Whether a join of ``sides`` (one at least a window TVF) is a window join: its every
    other side windowed too."""
    tvfs = [s for s in sides if tvf_call(s.this) is not None]
    return all(_windowed(s.this) for s in sides if s not in tvfs)


def joins_window_rows(query: exp.Expr) -> bool:
    """Whether a SELECT in ``query`` joins one window TVF to streams (its rows are a
    :class:`WindowRows` input there, not a window that closes)."""
    for select in query.find_all(exp.Select):
        sides = [s for s in [select.args.get("from_"), *(select.args.get("joins") or [])] if s]
        tvfs = [s for s in sides if tvf_call(s.this) is not None]
        if len(sides) > 1 and len(tvfs) == 1 and not _window_join(sides):
            return True
    return False
