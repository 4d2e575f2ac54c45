"""Window descriptors: find the one window of a SELECT, in either syntax, and take it out.

Two syntaxes mean the same windows:

- a call in GROUP BY: ``TUMBLING(ts, size)`` / ``TUMBLE(ts, size)``, ``HOP(ts, slide, size)``,
  ``CUMULATE(ts, step, size)``, ``SESSION(ts, gap)``;
- a Flink window TVF in FROM: ``TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size))``,
  ``HOP(.., slide, size)``, ``CUMULATE(.., step, size)``,
  ``SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), gap)``; named arguments
  (``DATA =>``, ``TIMECOL =>``, ``SIZE =>``, ``SLIDE =>``, ``STEP =>``, ``GAP =>``) too.

:func:`find_window` returns the :class:`WindowSpec` and a copy of the SELECT without the window:
a GROUP BY call becomes ``window_start, window_end`` in GROUP BY, a TVF becomes its table (keeping
the TVF's alias). The rest is ordinary SQL over the table with ``window_start``, ``window_end``
(and ``window_time``) columns added.

>>> from streamhouse.sql.parse import parse_one
>>> spec, rest = find_window(parse_one(
...     "SELECT k, COUNT(*) FROM t GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"))
>>> spec
WindowSpec(kind=<WindowKind.TUMBLE: 'tumble'>, time_column='ts', size_ms=60000, slide_ms=None, gap_ms=None, partition_by=())
>>> rest.sql(dialect="postgres")
'SELECT k, COUNT(*) FROM t GROUP BY k, window_start, window_end'
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.ddl import interval_ms
from streamhouse.sql.dialect import StreamHouse, TableArgument
from streamhouse.sql.parse import node_position
from streamhouse.sql.unnest import is_lateral_join

__all__ = ["WINDOW_COLUMNS", "WindowSpec", "find_window", "take_out_windows"]

logger = logging.getLogger(__name__)

WINDOW_COLUMNS = ("window_start", "window_end", "window_time")


class WindowKind(StrEnum):
    """The kinds of window, by the name the operators and ``EXPLAIN`` use."""

    TUMBLE = "tumble"
    HOP = "hop"
    CUMULATE = "cumulate"
    SESSION = "session"


KINDS = {
    "TUMBLE": WindowKind.TUMBLE,
    "TUMBLING": WindowKind.TUMBLE,
    "HOP": WindowKind.HOP,
    "HOPPING": WindowKind.HOP,
    "CUMULATE": WindowKind.CUMULATE,
    "SESSION": WindowKind.SESSION,
}
"""Each SQL spelling of a window function, and its kind."""

# Positional parameters after the time column, per kind (GROUP BY form and TVF form alike).
PARAMETERS = {
    WindowKind.TUMBLE: ("SIZE",),
    WindowKind.HOP: ("SLIDE", "SIZE"),
    WindowKind.CUMULATE: ("STEP", "SIZE"),
    WindowKind.SESSION: ("GAP",),
}


@dataclass(frozen=True)
class WindowSpec:
    """One window: ``size_ms`` (0 for sessions), ``slide_ms`` (hop slide / cumulate step),
    ``gap_ms`` (sessions), ``partition_by`` (sessions: the keys a session is tracked per)."""

    kind: WindowKind
    time_column: str
    size_ms: int
    slide_ms: int | None = None
    gap_ms: int | None = None
    partition_by: tuple[str, ...] = ()


def _error(message: str, *nodes: exp.Expr | None) -> SqlError:
    for node in nodes:
        line, column = node_position(node)
        if line is not None:
            return SqlError(message, line, column)
    return SqlError(message)


def _window_kind(node: exp.Expr) -> WindowKind | None:
    if isinstance(node, exp.Anonymous):
        return KINDS.get(node.name.upper())
    return None


def _positive_ms(value: exp.Expr | None, what: str, call: exp.Expr) -> int:
    if value is None:
        raise _error(f"window {what} is missing", call)
    ms = interval_ms(value)
    if ms <= 0:
        raise _error(f"window {what} must be positive", value)
    return ms


def _key_name(key: exp.Expr) -> str:
    return key.name if isinstance(key, exp.Column) else key.sql(dialect=StreamHouse)


def _spec(
    kind: WindowKind,
    call: exp.Expr,
    time_column: exp.Expr | None,
    params: dict[str, exp.Expr],
    partition_by: tuple[str, ...],
) -> WindowSpec:
    if not isinstance(time_column, exp.Column):
        raise _error(f"{kind} window: the time attribute must be a column", time_column, call)
    name = time_column.name
    if kind == WindowKind.TUMBLE:
        return WindowSpec(kind, name, _positive_ms(params.get("SIZE"), "size", call))
    if kind == WindowKind.SESSION:
        gap = _positive_ms(params.get("GAP"), "gap", call)
        return WindowSpec(kind, name, 0, gap_ms=gap, partition_by=partition_by)
    step_name = "slide" if kind == WindowKind.HOP else "step"
    slide = _positive_ms(params.get(step_name.upper()), step_name, call)
    size = _positive_ms(params.get("SIZE"), "size", call)
    if size % slide:
        raise _error(f"{kind} window size must be a multiple of its {step_name}", params["SIZE"])
    return WindowSpec(kind, name, size, slide_ms=slide)


def _bind(kind: WindowKind, call: exp.Anonymous, leading: tuple[str, ...]) -> dict[str, exp.Expr]:
    """Arguments by upper-case name: positional ones first, then ``NAME => value`` ones."""
    names = leading + PARAMETERS[kind]
    bound: dict[str, exp.Expr] = {}
    positional = True
    for index, arg in enumerate(call.expressions):
        if isinstance(arg, exp.Kwarg):
            positional = False
            key = arg.this.name.upper()
            value = arg.expression
        elif positional and index < len(names):
            key, value = names[index], arg
        else:
            raise _error(f"{call.name.upper()}: unexpected argument", arg)
        if key == "OFFSET":
            raise _error("window offsets are not supported", arg)
        if key not in names or key in bound:
            raise _error(f"{call.name.upper()}: unexpected argument {key}", arg)
        bound[key] = value
    return bound


def _group_window(call: exp.Anonymous, kind: WindowKind, keys: list[exp.Expr]) -> WindowSpec:
    params = _bind(kind, call, ("TIMECOL",))
    partition_by = tuple(_key_name(k) for k in keys) if kind == WindowKind.SESSION else ()
    return _spec(kind, call, params.get("TIMECOL"), params, partition_by)


def tvf_call(table: exp.Expr) -> exp.Anonymous | None:
    """The window call inside ``TABLE(<call>)`` in FROM / JOIN, if ``table`` is one."""
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Anonymous):
        return None
    wrapper = table.this
    if wrapper.name.upper() != "TABLE" or len(wrapper.expressions) != 1:
        return None
    call = wrapper.expressions[0]
    return call if _window_kind(call) else None


def _tvf_window(call: exp.Anonymous, kind: WindowKind) -> tuple[WindowSpec, exp.Table]:
    params = _bind(kind, call, ("DATA", "TIMECOL"))
    data = params.get("DATA")
    if not isinstance(data, TableArgument):
        raise _error(f"{kind.upper()}: the first argument must be TABLE <name>", data, call)
    descriptor = params.get("TIMECOL")
    if not (
        isinstance(descriptor, exp.Anonymous)
        and descriptor.name.upper() == "DESCRIPTOR"
        and len(descriptor.expressions) == 1
    ):
        raise _error(f"{kind.upper()}: the time attribute must be DESCRIPTOR(<column>)", call)
    partition_by = tuple(_key_name(k) for k in data.args.get("partition_by") or [])
    if partition_by and kind != WindowKind.SESSION:
        raise _error("PARTITION BY is only allowed in SESSION windows", data)
    spec = _spec(kind, call, descriptor.expressions[0], params, partition_by)
    return spec, data.this


AUXILIARY = {
    "START": "window_start",
    "END": "window_end",
    "ROWTIME": "window_time",
    "PROCTIME": "window_time",  # a window over a PROCTIME() column: its end minus 1 ms, as Flink
}


def _replace_auxiliary(select: exp.Select) -> None:
    """Flink's group-window functions (``TUMBLE_START(ts, size)``, ``SESSION_END(...)``,
    ``HOP_ROWTIME(...)``, ``TUMBLE_PROCTIME(p, ...)``) are the window's bounds: read them as
    ``window_start`` etc."""
    for key in ("expressions", "having", "order"):
        value = select.args.get(key)
        nodes = value if isinstance(value, list) else [value] if value is not None else []
        for node in nodes:
            for call in list(node.find_all(exp.Anonymous)):
                kind, _, part = call.name.upper().rpartition("_")
                if kind in KINDS and part in AUXILIARY:
                    replacement = exp.column(AUXILIARY[part])
                    if call is node:
                        value[value.index(node)] = replacement  # type: ignore[union-attr]
                    else:
                        call.replace(replacement)


def _selects(select: exp.Select, column: str) -> bool:
    """Whether the SELECT list, HAVING or ORDER BY of ``select`` (not its subqueries) names
    ``column``."""
    for key in ("expressions", "having", "order"):
        value = select.args.get(key)
        for node in value if isinstance(value, list) else [value] if value is not None else []:
            if any(c.name == column for c in node.find_all(exp.Column)):
                return True
    return False


def find_window(select: exp.Select) -> tuple[WindowSpec | None, exp.Select]:
    """The window of ``select`` and a copy of it without the window; (None, ``select`` itself,
    not copied) if it has none: the planner asks this of every SELECT of a query, most of them
    without a window, and a copy of a large one costs milliseconds."""
    sides = [select.args.get("from_"), *(select.args.get("joins") or [])]
    group = select.args.get("group")
    if not any(side is not None and tvf_call(side.this) for side in sides) and not (
        group is not None and any(_window_kind(e) for e in group.expressions)
    ):
        return None, select
    result = select.copy()
    found: list[tuple[WindowSpec, exp.Expr]] = []

    for table in [result.args.get("from_"), *(result.args.get("joins") or [])]:
        source = table.this if table is not None else None
        call = tvf_call(source) if source is not None else None
        if call is None:
            continue
        spec, data = _tvf_window(call, _window_kind(call) or "")
        replacement = data.copy()
        if source.args.get("alias"):
            replacement.set("alias", source.args["alias"].copy())
        found.append((spec, call))
        source.replace(replacement)

    group = result.args.get("group")
    if group is not None:
        calls = [e for e in group.expressions if _window_kind(e)]
        keys = [e for e in group.expressions if not _window_kind(e)]
        for call in calls:
            found.append((_group_window(call, _window_kind(call) or "", keys), call))
        if calls:
            _replace_auxiliary(result)
            names = {k.name for k in keys if isinstance(k, exp.Column)}
            # window_time (TUMBLE_ROWTIME, ...) follows from window_end: a key only if selected
            used = WINDOW_COLUMNS if _selects(result, "window_time") else WINDOW_COLUMNS[:2]
            extra = [exp.column(c) for c in used if c not in names]
            group.set("expressions", keys + extra)

    if len(found) > 1:
        raise _error("a query can have only one window", found[1][1])
    spec = found[0][0] if found else None
    logger.debug("window %s", spec)
    return spec, result


def windowed_side(select: exp.Select, rest: exp.Select) -> exp.Expr | None:
    """The FROM or JOIN of ``rest`` (``select`` without its window) whose rows are windowed:
    the TVF's side (a TVF joined to streams, in a bounded query: the join then runs over its
    windowed rows), or the FROM of a query without joins."""
    sides = [select.args.get("from_"), *(select.args.get("joins") or [])]
    rest_sides = [rest.args.get("from_"), *(rest.args.get("joins") or [])]
    if all(is_lateral_join(j) for j in sides[1:]):  # UNNEST expands the windowed rows
        return rest_sides[0]
    for side, rest_side in zip(sides, rest_sides, strict=True):
        if side is not None and tvf_call(side.this) is not None:
            return rest_side
    raise _error(
        "a GROUP BY window over a join is not supported: join a window TVF of one input to"
        " the other (FROM TABLE(TUMBLE(TABLE a, DESCRIPTOR(t), ...)) AS x JOIN b ... GROUP BY"
        " window_start, window_end), or window each input with a TVF and join them on"
        " window_start and window_end (a window join)",
        rest_sides[1],
    )


def take_out_windows(query: exp.Query) -> tuple[exp.Query, dict[str, tuple[str, WindowSpec]]]:
    """Replace each windowed SELECT by plain SQL over a windowed copy of its source.

    Returns the rewritten query and, per registered name of a windowed copy, its source and
    window. The copy keeps the source's name as its alias, so qualified columns still resolve.
    """
    query = query.copy()
    windowed: dict[str, tuple[str, WindowSpec]] = {}
    for select in list(query.find_all(exp.Select)):
        spec, rest = find_window(select)
        if spec is None:
            continue
        source = windowed_side(select, rest)
        table = source.this if source is not None else None
        if isinstance(table, exp.Subquery):  # one merging its input into ``select`` could not
            raise _error(
                f"{spec.kind.upper()} over a subquery or CTE that does more than filter and"
                " project one stream (a join, an aggregate, a UNION, ...) is not supported:"
                " window the stream and filter or join the windows' rows in the query over the"
                " TVF",
                table,
                select,
            )
        if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
            raise _error("a window must be over a stream, view or topic", table, select)
        name = f"__window_{len(windowed)}_{table.name}"
        windowed[name] = (table.name, spec)
        alias = table.alias or table.name
        table.replace(exp.to_table(name).as_(alias) if alias else exp.to_table(name))
        if select is query:
            query = rest
        else:
            select.replace(rest)
    return query, windowed
