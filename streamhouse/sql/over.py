"""Planning a continuous OVER aggregation (Flink's over window) into an :class:`OverAggregate`.

``SELECT k, t, SUM(v) OVER (PARTITION BY k ORDER BY t ROWS BETWEEN 2 PRECEDING AND CURRENT
ROW) FROM s [WHERE ...]``: every OVER of the SELECT list is SUM, COUNT, AVG, MIN or MAX over
one window (the same PARTITION BY, ORDER BY and frame), ordered by the time attribute
ascending (a ROWS frame may break ties by more keys), with a bounded frame ending at the
current row: ``ROWS BETWEEN n PRECEDING`` or ``RANGE BETWEEN INTERVAL ... PRECEDING``, or
reaching back to the partition's first row (``ROWS|RANGE BETWEEN UNBOUNDED PRECEDING``, or no
frame with ORDER BY the time alone, which is RANGE UNBOUNDED), kept as running totals.
``LAG(x [, n [, default]]) OVER (PARTITION BY k ORDER BY t ..)`` (no frame) is planned as a
ROWS history of n rows, alone or beside ROWS frames of the same window. ``LEAD(x [, n [,
default]])`` needs the n rows after a row: a released row waits (pending) until n later rows
of its partition are released too, or the source ends (the final watermark: then its LEAD is
the default), as Flink's LEAD over a bounded input answers. Any other OVER is refused with
what to write instead. See :mod:`streamhouse.windows.over`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.changelog import PlanNode
from streamhouse.sql.ddl import interval_ms
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.parse import sql_error


def named_windows(query: exp.Expr) -> exp.Expr:
    """``query`` with each ``OVER w`` of a ``WINDOW w AS (...)`` clause spelled out in place
    (``OVER (w ROWS ...)`` keeps its own frame), as the planners read an OVER.

    >>> from streamhouse.sql.parse import parse_one
    >>> named_windows(parse_one(
    ...     "SELECT SUM(v) OVER w AS s FROM a WINDOW w AS (PARTITION BY k ORDER BY t)")).sql()
    'SELECT SUM(v) OVER (PARTITION BY k ORDER BY t NULLS LAST) AS s FROM a'
    """
    if not any(s.args.get("windows") for s in query.find_all(exp.Select)):
        return query
    query = query.copy()
    for select in list(query.find_all(exp.Select)):
        named = {w.name: w for w in select.args.get("windows") or []}
        if not named:
            continue
        for window in select.find_all(exp.Window):
            alias = window.args.get("alias")
            definition = named.get(alias.name) if alias is not None else None
            if definition is None:
                continue
            window.set("alias", None)
            for part in ("partition_by", "order", "spec"):
                if not window.args.get(part) and definition.args.get(part):
                    window.set(part, definition.args[part].copy() if part != "partition_by"
                               else [c.copy() for c in definition.args[part]])  # fmt: skip
        select.set("windows", None)
    return query


FRESH = "__fresh"
"""The column that tells released rows (true) from the history their frames reach (false)."""

RANK = "__rank"
"""The column of a ROWS frame's history query that numbers each partition's rows, newest first."""

ROW_INDEX = "__row_index"
"""With LEAD: the position of each row among the rows the SELECT list runs over."""

SUCCESSORS = "__successors"
"""With LEAD: non-NULL where a row has as many rows after it in its partition as the furthest
LEAD reaches (``LEAD(TRUE, n) OVER`` the same window, so ties are ordered as the LEADs order
them)."""

_FUNCTIONS = (exp.Sum, exp.Count, exp.Avg, exp.Min, exp.Max)
"""The aggregates an OVER frame takes; ``LAG(x, n [, default])`` is a ROWS history of n rows."""

_OFFSETS = (exp.Lag, exp.Lead)
"""The offset functions: the value n rows before (LAG) or after (LEAD) a row."""

_SHAPE = (
    "write SUM/COUNT/AVG/MIN/MAX(x) OVER (PARTITION BY k ORDER BY <time attribute> ROWS BETWEEN"
    " n PRECEDING AND CURRENT ROW) or RANGE BETWEEN INTERVAL '..' SECOND PRECEDING AND CURRENT"
    " ROW, or ROWS/RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
)


@dataclass(frozen=True)
class OverAggregate(PlanNode):
    """``SELECT .., AGG(x) OVER (PARTITION BY .. ORDER BY t <frame>) FROM s [WHERE ..]``: rows
    wait until the watermark passes them, then come out in time order with the aggregates of
    their frame; see :mod:`streamhouse.windows.over`."""

    source: str
    time_column: str  # the source column the window is ordered by
    pre_sql: str  # the WHERE over the source: the rows to keep
    sql: str  # the SELECT list (and FRESH) over released rows and history, by time
    rows: int | None  # n of ROWS BETWEEN n PRECEDING
    range_ms: int  # the interval of RANGE BETWEEN INTERVAL .. PRECEDING (0 for ROWS)
    keep_sql: str  # for ROWS: each partition's rows numbered newest first (RANK)
    unbounded: bool = False  # UNBOUNDED PRECEDING (or no frame): running aggregates
    running_sql: str = ""  # unbounded: released rows with each OVER's running parts (RUNNING)
    functions: tuple[str, ...] = ()  # unbounded: each OVER's function (sum/count/avg/min/max)
    partitions: int = 0  # unbounded: the partition key columns (PART0, PART1, ..)
    lead: int = 0  # the most rows after a row any LEAD reaches: a row waits for them

    def explain(self) -> list[str]:
        frame = (
            "UNBOUNDED PRECEDING (a running aggregate per partition, b'oagg')"
            if self.unbounded
            else f"ROWS {self.rows} PRECEDING"
            if self.rows is not None
            else (f"RANGE {self.range_ms} ms PRECEDING")
        )
        if self.lead:
            frame += f", LEAD {self.lead} FOLLOWING (a row waits for them, b'olead')"
        return [
            f"OverAggregate  by {self.source}.{self.time_column} {frame}, as the watermark"
            " passes each row",
            f"  sql: {self.sql}",
            "  state: column family 'joins', key b'owait'|u64(min event time)|u64(run)"
            " -> IPC(rows waiting for the watermark); b'ohist' -> IPC(rows frames still reach)",
            "  eviction: rows leave the history when no later frame reaches them; rows older"
            " than the watermark when they arrive are late (dropped, counted)",
            f"    Stateless  {self.pre_sql}",
            f"      Source  {self.source}",
        ]


def plan_over(select: exp.Select, table: exp.Table) -> OverAggregate:
    """The OverAggregate of ``select``, which has an OVER and reads ``table``; SqlError (at the
    OVER) for a form that cannot run continuously."""
    windows = list(select.find_all(exp.Window))
    offsets = [w for w in windows if isinstance(w.this, _OFFSETS)]
    windows = [w for w in windows if not isinstance(w.this, _OFFSETS)] or offsets
    first = windows[0]
    for window in windows:
        if window in offsets:
            continue
        if not isinstance(window.this, _FUNCTIONS):
            raise sql_error(
                f"{window.this.sql(dialect='postgres')} OVER (...) is not supported continuously"
                f" (only SUM/COUNT/AVG/MIN/MAX over a frame); ROW_NUMBER() belongs in a Top-N"
                f" subquery (WHERE rn <= N); {_SHAPE}",
                window,
            )
        if _window_text(window) != _window_text(first):
            raise sql_error(
                "every OVER of a continuous query needs the same PARTITION BY, ORDER BY and"
                " frame; use one window, or join two queries",
                window,
            )
    if select.args.get("group") is not None or _bare_aggregate(select):
        raise sql_error("an OVER aggregation cannot be mixed with GROUP BY aggregates", select)
    order = first.args.get("order")
    keys = order.expressions if order is not None else []
    if not keys or not isinstance(keys[0].this, exp.Column) or keys[0].args.get("desc"):
        raise sql_error(
            f"an OVER aggregation must be ORDER BY the time attribute, ascending; {_SHAPE}",
            first,
        )
    time_column = keys[0].this.name
    pre = exp.select(exp.Star()).from_(table.copy())
    if select.args.get("where") is not None:
        pre.set("where", select.args["where"].copy())
    lead = 0
    if first in offsets:
        (rows, lead), range_ms = _offset_rows(offsets, first), 0
    else:
        if offsets:
            _offsets_beside(offsets, first)
        if _unbounded(first, len(keys)):
            return _plan_running(select, table, windows, first, time_column, pre)
        rows, range_ms = _frame(first, len(keys))
        if offsets:
            back, lead = _offset_rows(offsets, first)
            rows = max(rows or 0, back)
    post = select.copy()
    post.set("where", None)
    hidden = [FRESH, ROW_INDEX] if lead else [FRESH]  # the operator's columns, not the rows'
    for star in [p for p in post.expressions if isinstance(p, exp.Star)]:
        star.set("except_", [*(star.args.get("except_") or []), *map(exp.column, hidden)])
    post = post.select(exp.column(FRESH))
    if lead:
        successors = exp.Window(
            this=exp.Lead(this=exp.true(), offset=exp.Literal.number(lead)),
            partition_by=[p.copy() for p in first.args.get("partition_by") or []],
            order=first.args["order"].copy(),
        )
        post = post.select(exp.alias_(successors, SUCCESSORS), exp.column(ROW_INDEX))
    post = post.order_by(exp.column(time_column))
    return OverAggregate(
        table.name,
        time_column,
        to_datafusion(pre),
        to_datafusion(post),
        rows,
        range_ms,
        to_datafusion(_keep(first, table.name, rows or 0)),
        lead=lead,
    )


def _offset_rows(offsets: list[exp.Window], window: exp.Window) -> tuple[int, int]:
    """The most rows back any ``LAG(x, n [, default])`` reaches and the most rows ahead any
    ``LEAD`` does (n defaults to 1): the history each partition keeps, and the rows a row
    waits for. Every LAG and LEAD shares ``window``'s PARTITION BY and ORDER BY."""
    back = ahead = 0
    for call in offsets:
        name = "LAG" if isinstance(call.this, exp.Lag) else "LEAD"
        if call.args.get("spec") is not None:
            raise sql_error(
                f"{name}(...) OVER takes no frame: PARTITION BY and ORDER BY only", call
            )
        if _order_text(call) != _order_text(window):
            raise sql_error(
                "every LAG, LEAD and OVER of a continuous query needs the same PARTITION BY and"
                " ORDER BY; use one window, or join two queries",
                call,
            )
        offset = call.this.args.get("offset")
        if offset is None:
            reach = 1
        elif not isinstance(offset, exp.Literal) or offset.is_string or not offset.this.isdigit():
            raise sql_error(
                f"{name}(x, n) needs n a whole number of rows (a literal) continuously", call
            )
        else:
            reach = int(offset.this)
        if name == "LAG":
            back = max(back, reach)
        else:
            ahead = max(ahead, reach)
    return back, ahead


def _offsets_beside(offsets: list[exp.Window], first: exp.Window) -> None:
    """LAG or LEAD beside OVER aggregates: they keep one history, the last rows of each
    partition, so the aggregates' frame is ROWS n PRECEDING."""
    spec = first.args.get("spec")
    if (
        spec is None
        or str(spec.args.get("kind") or "").upper() != "ROWS"
        or _unbounded(first, len(first.args["order"].expressions))
    ):
        name = "LAG" if isinstance(offsets[0].this, exp.Lag) else "LEAD"
        raise sql_error(
            f"{name}(...) OVER goes beside OVER aggregates with a ROWS BETWEEN n PRECEDING AND"
            f" CURRENT ROW frame only; run the {name} in a query of its own",
            offsets[0],
        )


def _order_text(window: exp.Window) -> str:
    """``window``'s PARTITION BY and ORDER BY, without its function and frame."""
    spec = window.copy()
    spec.set("spec", None)
    return _window_text(spec)


def running_column(part: str, index: int) -> str:
    """The column of OVER number ``index``'s running ``part`` (c, s, m; o for its value)."""
    return f"__run_{part}{index}"


def partition_column(index: int) -> str:
    return f"__part{index}"


def _unbounded(window: exp.Window, order_keys: int) -> bool:
    """Whether the frame reaches back to the partition's first row and ends at the current
    row: ``ROWS|RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW`` or no frame (RANGE)."""
    spec = window.args.get("spec")
    if spec is None:
        return order_keys == 1
    kind = str(spec.args.get("kind") or "").upper()
    return (
        str(spec.args.get("start") or "").upper() == "UNBOUNDED"
        and str(spec.args.get("start_side") or "").upper() == "PRECEDING"
        and str(spec.args.get("end") or "CURRENT ROW").upper() == "CURRENT ROW"
        and (kind == "ROWS" or order_keys == 1)
    )


def _plan_running(
    select: exp.Select,
    table: exp.Table,
    windows: list[exp.Window],
    first: exp.Window,
    time_column: str,
    pre: exp.Select,
) -> OverAggregate:
    """An unbounded frame: the released rows' running parts (count, sum, min or max) per OVER
    and their partition keys; the operator adds each partition's kept totals to them."""
    parts: list[exp.Expression] = [exp.Star()]
    partition = list(first.args.get("partition_by") or [])
    functions: list[str] = []
    for index, window in enumerate(windows):
        func = window.this
        name = type(func).__name__.lower()
        functions.append(name)
        arg = func.this if not isinstance(func.this, exp.Star) else exp.Star()

        def over(agg: exp.Expression, window: exp.Window = window) -> exp.Window:
            spec = window.copy()
            spec.set("this", agg)
            spec.set("alias", None)
            return spec

        def whole(agg: exp.Expression) -> exp.Window:
            spec = exp.Window(this=agg, partition_by=[p.copy() for p in partition])
            return spec

        aggs = [("c", exp.Count(this=arg.copy()))]
        if name in ("sum", "avg"):
            aggs.append(("s", exp.Sum(this=arg.copy())))
        elif name in ("min", "max"):
            aggs.append(
                ("m", exp.Min(this=arg.copy()) if name == "min" else exp.Max(this=arg.copy()))
            )
        for part, agg in aggs:
            parts.append(exp.alias_(over(agg.copy()), running_column(part, index)))
            parts.append(exp.alias_(whole(agg), running_column("t" + part, index)))
    keys = partition or [exp.Literal.number(0)]
    for index, key in enumerate(keys):
        parts.append(exp.alias_(key.copy(), partition_column(index)))
    running = exp.select(*parts).from_(table.name)
    post = select.copy()
    post.set("where", None)
    for index, window in enumerate(list(post.find_all(exp.Window))):
        window.replace(exp.column(running_column("o", index)))
    post = post.order_by(exp.column(time_column))
    return OverAggregate(
        table.name,
        time_column,
        to_datafusion(pre),
        to_datafusion(post),
        None,
        0,
        "",
        True,
        to_datafusion(running),
        tuple(functions),
        len(keys),
    )


def _window_text(window: exp.Window) -> str:
    spec = window.copy()
    spec.set("this", exp.Star())
    spec.set("alias", None)
    return spec.sql(dialect="postgres")


def _bare_aggregate(select: exp.Select) -> bool:
    """Whether an aggregate of the SELECT list is not under an OVER."""
    return any(agg.find_ancestor(exp.Window) is None for agg in select.find_all(exp.AggFunc))


def _frame(window: exp.Window, order_keys: int) -> tuple[int | None, int]:
    """(n of ROWS n PRECEDING or None, ms of RANGE INTERVAL .. PRECEDING or 0)."""
    spec = window.args.get("spec")
    if spec is None:
        raise sql_error(
            "an OVER aggregation without a frame is RANGE BETWEEN UNBOUNDED PRECEDING, which is"
            " ordered by the time attribute alone (write ROWS BETWEEN UNBOUNDED PRECEDING AND"
            f" CURRENT ROW to break ties); {_SHAPE}",
            window,
        )
    start, end = spec.args.get("start"), spec.args.get("end")
    if (
        str(spec.args.get("start_side") or "").upper() != "PRECEDING"
        or str(end or "CURRENT ROW").upper() != "CURRENT ROW"
        or str(start or "").upper() == "UNBOUNDED"
    ):
        raise sql_error(
            "a continuous OVER frame must be bounded (or UNBOUNDED PRECEDING) and end at the"
            f" current row; {_SHAPE}",
            window,
        )
    kind = str(spec.args.get("kind") or "").upper()
    if kind == "ROWS":
        if not isinstance(start, exp.Literal) or start.is_string or not start.this.isdigit():
            raise sql_error(f"ROWS BETWEEN needs a whole number of rows; {_SHAPE}", window)
        return int(start.this), 0
    if order_keys != 1:
        raise sql_error("a RANGE frame is ordered by the time attribute alone", window)
    try:
        ms = interval_ms(start)
    except SqlError:
        raise sql_error(f"RANGE BETWEEN needs an INTERVAL; {_SHAPE}", window) from None
    return None, ms


def _keep(window: exp.Window, source: str, rows: int) -> exp.Select:
    """The newest ``rows`` rows of each partition in the window's order (numbered by RANK)."""
    newest = window.copy()
    newest.set("this", exp.RowNumber())
    newest.set("spec", None)
    newest.set("alias", None)
    for ordered in newest.args["order"].expressions:
        ordered.set("desc", not ordered.args.get("desc"))
        ordered.set("nulls_first", not ordered.args.get("nulls_first"))
    ranked = exp.select(exp.Star(), exp.alias_(newest, RANK)).from_(source)
    ranked_rows = exp.select(exp.Star()).from_(ranked.subquery("__ranked"))
    return ranked_rows.where(exp.column(RANK) <= rows)
