"""How the rows of a continuous query are routed to the tasks of a parallel query.

Three shapes (:func:`plan_routing`):

- ``stateless``: a filter or projection (or a UNION ALL of them); each task runs the whole
  query over its share of the source partitions, no exchange. A temporal join probing by an
  expression (Nexmark q13) too, every task reading the whole versioned table
  (:attr:`Routing.broadcast`).
- ``aggregate``: a GROUP BY over one stream (TUMBLE, HOP, CUMULATE, SESSION or updating); the
  producing side runs the aggregate's stateless part and sends its rows (for TUMBLE, HOP and
  CUMULATE: partial aggregates per key and pane) to the task owning the group's key group.
- ``rows``: any other keyed operator over streams: a stream join (regular or interval, inner or
  outer), a window join, a join over an updating GROUP BY or Top-N of a stream (ChangelogJoin),
  a Top-N or deduplication per key (of a stream, or of an inner stream join whose
  PARTITION BY holds the join's keys: routed as the join), an OVER aggregation with a
  PARTITION BY, a temporal join (by the versioned table's key). The producing side sends each
  *source row*, as read, to the task owning the key group of its routing key, and every task
  runs the whole unchanged plan over the rows of its key groups. The routing
  key of a source is a list of its columns: the columns of the join's equalities (both inputs
  of a join list theirs in the same order, so matching rows meet in one task), or the
  PARTITION BY of a Top-N or of every OVER. For a join over an
  updating input (an aggregate, a Top-N), a join column must be one of that input's group keys
  (its PARTITION BY), so that each of its groups stays whole in one task. A window join is
  routed by its key alone, not by key and window: a row's windows then never span two tasks
  (HOP windows overlap), and every pair it joins is in one task. A per-window query
  without a key equality between its inputs (Nexmark q5: per-auction counts joined to the
  maximum count of their window) is routed *by window*: a row goes to every task owning a
  window it falls in (a window is owned by the task of its start's key group), and each task
  evaluates only the windows it owns, over every row of them (:attr:`Routing.window`). A
  stream joined to a TUMBLE or HOP aggregate of itself by a time bound (Nexmark q7: each bid
  joined to the highest price of its window) is routed by window too: a row goes to every task
  owning a window it falls in, so that task aggregates the whole window, and to every task
  owning a window whose row it can join by the bound (:attr:`Routing.reach`: a bid at a
  window's end also joins the window ending then); each task aggregates and joins only the
  windows it owns.

Anything else is refused at parallelism > 1 with a :class:`~streamhouse.errors.SqlError` that
names the operator (never run in parallel and silently wrong).

>>> from streamhouse.sql.parse import parse_one
>>> from streamhouse.sql.plan import plan_query
>>> plan_routing(plan_query(parse_one(
...     "SELECT a.k, b.w FROM ev a JOIN ev2 b ON a.k = b.k AND a.x > 1"))).keys
{'ev': ('k',), 'ev2': ('k',)}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from streamhouse.errors import SqlError
from streamhouse.sql.bounds import conjuncts
from streamhouse.sql.changelog_join import ChangelogJoin
from streamhouse.sql.nodes import (
    Operator,
    Recompute,
    Stateless,
    StreamJoin,
    TemporalJoin,
    TopN,
    UnionAll,
    WindowAggregate,
    Windowed,
)
from streamhouse.sql.over import OverAggregate
from streamhouse.sql.plan import ContinuousPlan
from streamhouse.sql.proctime_select import PROBE_KEY_PREFIX
from streamhouse.sql.window_spec import WindowKind, WindowSpec

Shape = Literal["stateless", "aggregate", "rows"]

_WINDOW_COLUMNS = frozenset({"window_start", "window_end", "window_time"})


@dataclass(frozen=True)
class Routing:
    """How a plan runs at parallelism > 1 (see the module's docstring)."""

    shape: Shape
    operator: str  # what EXPLAIN calls it
    # ``rows``: per source, the columns whose key group picks the task (in one order across
    # the inputs of a join)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # ``rows`` routed by window (a per-window query without a key): the windows of every input
    window: WindowSpec | None = None
    # routed by window, a stream joined to a window aggregate of itself: a row at event time
    # ``t`` also goes to the owners of the windows starting in ``[t + reach[0], t + reach[1]]``
    reach: tuple[int, int] | None = None
    # ``stateless``: the sources every task reads whole (a temporal join's versioned table
    # when the probe's key is an expression: each task joins its probe partitions to all of it)
    broadcast: frozenset[str] = frozenset()
    # a plan of two stages (Nexmark q4: an aggregate over an updating aggregate): the first
    # runs every operator but the top one (routed by ``keys``), the second the top one over
    # the first's changelog, sent through a second exchange by these of its columns
    stage: tuple[str, ...] | None = None


def plan_routing(plan: ContinuousPlan) -> Routing:
    """How ``plan`` runs in parallel; a SqlError naming its operator if it cannot yet."""
    node = plan.operator
    planner = _ROUTES.get(type(node))
    if planner is None:
        raise refusal(_name(node))
    return planner(node, plan)


def refusal(what: str, why: str = "") -> SqlError:
    """The error for an operator that does not run at parallelism > 1 yet."""
    return SqlError(
        f"parallelism > 1 does not run {what} yet{': ' + why if why else ''}; run this query at"
        " parallelism 1 (in parallel now: filters and projections, GROUP BY aggregations"
        " windowed or updating, stream joins and window joins on an equality, joins over an"
        " updating GROUP BY or Top-N, temporal joins, Top-N and deduplication (of a stream,"
        " or of a join by its keys), OVER with PARTITION BY, UNION ALL of filters, an"
        " aggregate over an updating GROUP BY by its group keys, in two stages)"
    )


def _name(node: Operator) -> str:
    return f"{type(node).__name__} ({_KINDS.get(type(node).__name__, 'this operator')})"


_KINDS = {
    "TemporalJoin": "a temporal join",
    "TemporalStar": "temporal joins of several versioned tables",
    "Recompute": "an aggregate or ranking over an updating input",
    "TimeSort": "ORDER BY on the time attribute",
    "UnionAll": "UNION ALL",
    "OverAggregate": "an OVER aggregation",
    "WindowRows": "a window TVF joined to a stream",
    "Windowed": "a per-window query without a join key",
    "StreamJoin": "a stream join",
    "ChangelogJoin": "a join over an updating input",
    "TopN": "a Top-N",
}


def _plain(plan: ContinuousPlan, node: Operator) -> None:
    if plan.derived:
        raise refusal(_name(node), "it reads a subquery")


def _stateless(node: Stateless, plan: ContinuousPlan) -> Routing:
    _plain(plan, node)
    return Routing("stateless", "Stateless")


def _aggregate(node: WindowAggregate, plan: ContinuousPlan) -> Routing:
    _plain(plan, node)
    kind = "SESSION" if node.window is not None and node.window.kind == WindowKind.SESSION else ""
    return Routing("aggregate", f"{kind} WindowAggregate".strip())


def _stream_join(node: StreamJoin, plan: ContinuousPlan) -> Routing:
    if plan.derived:
        return _join_of_windows(node, plan)
    pairs = equi_columns(node.sql)
    keys = _join_keys(
        node,
        [(node.left, lambda c: c), (node.right, lambda c: c)],
        [(pairs_of(pairs, "__left", "__right"))],
    )
    return Routing("rows", "StreamJoin", keys)


def _window_join(node: Windowed, plan: ContinuousPlan) -> Routing:
    """A window join on a key equality is routed by that key; any other per-window query
    (every input windowed alike) by window."""
    _plain(plan, node)
    names = list(node.inputs)
    sources = [node.inputs[n][0] for n in names]
    if len(names) == 2:
        pairs = [
            (a, b)
            for a, b in pairs_of(equi_columns(node.sql), names[0], names[1])
            if a not in _WINDOW_COLUMNS and b not in _WINDOW_COLUMNS
        ]
        if pairs:
            keys = _join_keys(node, [(s, lambda c: c) for s in sources], [pairs])
            return Routing("rows", "window join", keys)
    specs = {spec for _, spec in node.inputs.values()}
    if len(specs) != 1 or next(iter(specs)).kind == WindowKind.SESSION:
        raise refusal(_name(node), "its inputs are not windowed alike by TUMBLE, HOP or CUMULATE")
    return Routing("rows", "per-window query", dict.fromkeys(sources, ()), next(iter(specs)))


def _join_of_windows(node: StreamJoin, plan: ContinuousPlan) -> Routing:
    """An inner join of a stream to a TUMBLE or HOP aggregate of that stream, bounded in time
    (Nexmark q7), is routed by the aggregate's windows: see :attr:`Routing.reach`."""
    (name, aggregate), *others = plan.derived.items()
    stream = node.left if name == node.right else node.right
    if others or name not in (node.left, node.right):
        raise refusal(_name(node), "it reads nested subqueries")
    window = aggregate.window if isinstance(aggregate, WindowAggregate) else None
    if window is None or window.kind not in (WindowKind.TUMBLE, WindowKind.HOP):
        raise refusal(_name(node), "it reads a subquery that is not a TUMBLE or HOP aggregate")
    if aggregate.source != stream:
        raise refusal(_name(node), f"it joins a window aggregate of {aggregate.source} to {stream}")
    if node.outer is not None:
        raise refusal(_name(node), "it is an outer join of a window aggregate")
    return Routing(
        "rows",
        "StreamJoin over a window aggregate",
        {stream: ()},
        window,
        reach=_reach(node, name, aggregate, window),
    )


_WINDOW_OFFSETS: dict[str, Callable[[int], int]] = {
    "window_start": lambda size: 0,
    "window_end": lambda size: size,
    "window_time": lambda size: size - 1,
}
"""Each window column's offset from the window's start, by the window's size (ms)."""


def _reach(
    node: StreamJoin, name: str, aggregate: WindowAggregate, window: WindowSpec
) -> tuple[int, int]:
    """The starts of the windows a row at ``t`` can join, as ``[t + lo, t + hi]``: from the
    join's bound between the stream's time attribute and a window column of the aggregate."""
    offsets = {}  # output column of the aggregate -> its window column's offset from the start
    for projection in sqlglot.parse_one(aggregate.post_sql, read="postgres").expressions:
        column = projection.unalias()
        if isinstance(column, exp.Column) and column.name in _WINDOW_OFFSETS:
            offsets[projection.alias_or_name] = _WINDOW_OFFSETS[column.name](window.size_ms)
    for bound in node.candidates:
        ours, theirs = bound.right_column, bound.left_column
        if name == node.left:
            ours, theirs = theirs, ours
        if bound.before_ms is None or bound.after_ms is None:
            continue
        if ours not in offsets or theirs != window.time_column:
            continue
        # right.t - before <= left.t <= right.t + after, for the aggregate's column w:
        # w in [t - after, t + before] on the right, [t - before, t + after] on the left
        lo, hi = (-bound.after_ms, bound.before_ms)
        if name == node.left:
            lo, hi = -bound.before_ms, bound.after_ms
        return lo - offsets[ours], hi - offsets[ours]
    raise refusal(
        _name(node),
        f"its condition bounds the time of {node.left if name == node.right else node.right}"
        " by no window column of the aggregate it joins (BETWEEN window_end - INTERVAL ... AND"
        " window_end, say)",
    )


def _changelog_join(node: ChangelogJoin, plan: ContinuousPlan) -> Routing:
    sides = []
    for name in (node.left, node.right):
        derived = plan.derived.get(name)
        sides.append(_through(derived, name, node) if derived is not None else (name, _same))
    if set(plan.derived) - {node.left, node.right}:
        raise refusal(_name(node), "it reads nested subqueries")
    pairs = pairs_of(equi_columns(node.variants.inner_sql), "__left", "__right")
    return Routing("rows", "ChangelogJoin", _join_keys(node, sides, [pairs]))


def _same(column: str) -> str | None:
    return column


def _through(
    derived: Operator, name: str, join: Operator
) -> tuple[str, Callable[[str], str | None]]:
    """The source an updating join input reads, and the source column each of its output
    columns is, when that column keeps the input's groups whole (a group key, a PARTITION BY)."""
    if isinstance(derived, WindowAggregate) and derived.window is None:
        keys = {
            out: bare_column(sql)
            for out, sql in zip(derived.key_outputs, derived.key_sql, strict=True)
            if out is not None
        }
        return derived.source, lambda c: keys.get(c)
    if isinstance(derived, TopN) and derived.partition_by:
        columns = set(derived.partition_by)
        return derived.source, lambda c: c if c in columns else None
    raise refusal(
        _name(join), f"its input {name} is a {type(derived).__name__}, not a GROUP BY or Top-N"
    )


def bare_column(sql: str) -> str | None:
    """The column ``sql`` names, if it is a bare column."""
    try:
        node = sqlglot.parse_one(sql, read="postgres")
    except ParseError:
        return None
    return node.name if isinstance(node, exp.Column) and not node.table else None


def _join_keys(
    node: Operator,
    sides: list[tuple[str, Callable[[str], str | None]]],
    pair_lists: list[list[tuple[str, str]]],
) -> dict[str, tuple[str, ...]]:
    """Per source, the routing columns of a join's two sides: the equalities whose columns map
    to source columns on both sides (each side's ``(source, column -> source column)``)."""
    (left, left_map), (right, right_map) = sides
    chosen = []
    for pairs in pair_lists:
        for a, b in pairs:
            mapped = (left_map(a), right_map(b))
            if mapped[0] is not None and mapped[1] is not None:
                chosen.append(mapped)
    if not chosen:
        raise refusal(
            _name(node),
            "its condition has no equality between a column of each input (a group key or"
            " PARTITION BY of an updating input) to route rows by",
        )
    keys = {left: tuple(a for a, _ in chosen)}
    right_keys = tuple(b for _, b in chosen)
    if keys.setdefault(right, right_keys) != right_keys:  # a self-join on different columns
        raise refusal(_name(node), f"it joins {right} to itself on different columns")
    return keys


def equi_columns(sql: str) -> list[tuple[str, str, str, str]]:
    """``(table, column, table, column)`` of each equality between two columns of different
    relations in the ON and WHERE conditions of the join in ``sql``, each column traced to the
    table a relation reads and that table's column (through subqueries that pass it on as
    ``*``, as itself or renamed; one it computes, such as a window bound of an aggregate, is
    no column of the table and routes nothing)."""
    select = sqlglot.parse_one(sql, read="postgres")  # the SQL text DataFusion runs
    if not isinstance(select, exp.Select):
        return []
    relations: dict[str, exp.Expression] = {}
    for side in [select.args.get("from_"), *(select.args.get("joins") or [])]:
        if side is not None:
            relations[side.this.alias_or_name] = side.this
    where = select.args.get("where")
    parts = [j.args.get("on") for j in select.args.get("joins") or []]
    parts.append(where.this if where is not None else None)
    found = []
    for part in parts:
        for item in conjuncts(part):
            if not isinstance(item, exp.EQ):
                continue
            a, b = item.this, item.expression
            if isinstance(a, exp.Column) and isinstance(b, exp.Column) and a.table != b.table:
                ra, rb = relations.get(a.table), relations.get(b.table)
                left = _table_column(ra, a.name) if ra is not None else None
                right = _table_column(rb, b.name) if rb is not None else None
                if left is not None and right is not None:
                    found.append((*left, *right))
    return found


def _table_column(relation: exp.Expression, column: str) -> tuple[str, str] | None:
    """The (table, column) that ``column`` of ``relation`` (a table, or a subquery over one)
    is, or None if a subquery computes it."""
    while isinstance(relation, exp.Subquery) and isinstance(relation.this, exp.Select):
        select = relation.this
        passed = None
        for projection in select.expressions:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and projection.name == column
            ):
                passed = column
            elif (
                isinstance(projection, exp.Alias)
                and projection.alias == column
                and isinstance(projection.this, exp.Column)
            ):
                passed = projection.this.name
            else:
                continue
            break
        source = select.args.get("from_")
        if passed is None or source is None:
            return None
        relation, column = source.this, passed
    return (relation.name, column) if isinstance(relation, exp.Table) else None


def pairs_of(
    found: list[tuple[str, str, str, str]], left: str, right: str
) -> list[tuple[str, str]]:
    """The ``(left column, right column)`` equalities between relations ``left`` and ``right``."""
    pairs = []
    for ta, a, tb, b in found:
        if (ta, tb) == (left, right):
            pairs.append((a, b))
        elif (ta, tb) == (right, left):
            pairs.append((b, a))
    return pairs


def _top_n(node: TopN, plan: ContinuousPlan) -> Routing:
    columns = [bare_column(c) for c in node.partition_by]
    if None in columns:
        raise refusal(_name(node), "its PARTITION BY is not a list of columns")
    join = plan.derived.get(node.source)
    if isinstance(join, StreamJoin) and join.outer is None and len(plan.derived) == 1:
        return _top_n_of_join(node, join, [c for c in columns if c is not None])
    _plain(plan, node)
    return Routing("rows", "TopN", {node.source: tuple(c for c in columns if c is not None)})


def _top_n_of_join(node: TopN, join: StreamJoin, partition_by: list[str]) -> Routing:
    """A Top-N over an inner stream join (Nexmark q9: each auction's highest bid) is routed as
    the join is, when its PARTITION BY holds the join's routing key (on either side): every
    pair the join makes of a partition then comes out of one task, whole."""
    keys = _keys_over_join(
        node,
        join,
        partition_by,
        "it ranks a join's rows by a PARTITION BY without the join's equality columns",
    )
    return Routing("rows", "TopN over a StreamJoin", keys)


def _keys_over_join(
    node: Operator, join: StreamJoin, columns: list[str], why: str
) -> dict[str, tuple[str, ...]]:
    """The join's routing keys, when ``columns`` (of the join's output: a PARTITION BY, group
    keys) hold its equality columns on either side, so each of their partitions or groups is
    made in one task; a refusal saying ``why`` if not."""
    keys = _stream_join(join, ContinuousPlan(join, "results", None)).keys
    outputs = {_join_output(join.sql, c) for c in columns}
    routed = [(keys[join.left][i], keys[join.right][i]) for i in range(len(keys[join.left]))]
    covered = all(("__left", a) in outputs or ("__right", b) in outputs for a, b in routed)
    if not covered:
        raise refusal(_name(node), why)
    return keys


def _join_output(sql: str, column: str) -> tuple[str, str] | None:
    """The ``(relation, column)`` (``__left``/``__right``) output ``column`` of the join in
    ``sql`` passes on as it is (listed, renamed, or through the one ``alias.*``)."""
    select = sqlglot.parse_one(sql, read="postgres")
    if not isinstance(select, exp.Select):
        return None
    aliases = {
        side.this.alias_or_name: side.this.name
        for side in [select.args.get("from_"), *(select.args.get("joins") or [])]
        if side is not None and isinstance(side.this, exp.Table)
    }
    stars = []
    for projection in select.expressions:
        if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            stars.append(projection.table)
        elif isinstance(projection, exp.Column) and projection.name == column:
            return (aliases.get(projection.table, ""), column)
        elif isinstance(projection, exp.Alias) and projection.alias == column:
            inner = projection.this
            if isinstance(inner, exp.Column) and not isinstance(inner.this, exp.Star):
                return (aliases.get(inner.table, ""), inner.name)
            return None
    return (aliases.get(stars[0], ""), column) if len(stars) == 1 else None


def _union(node: UnionAll, plan: ContinuousPlan) -> Routing:
    """A UNION ALL of filters and projections of streams is stateless: each task runs it over
    its share of every stream's partitions."""
    inputs = [plan.derived.get(name) for name in node.inputs]
    if node.keyed or not all(
        isinstance(i, Stateless) and i.source not in plan.derived for i in inputs
    ):
        raise refusal(_name(node), "its inputs are not all filters or projections of streams")
    return Routing("stateless", "UnionAll")


def _temporal_join(node: TemporalJoin, plan: ContinuousPlan) -> Routing:
    """A temporal join is routed by its equalities on the versioned table's key: a probe row
    meets every version of its key in one task."""
    _plain(plan, node)
    if any(key.startswith(PROBE_KEY_PREFIX) for key in node.probe_keys):
        # an expression of the probe (q13: mod(auction, 10000) = key) is no source column to
        # route by: every task reads the whole table, and its own share of the probe stream
        return Routing("stateless", "TemporalJoin", broadcast=frozenset({node.right}))
    pairs = [list(zip(node.probe_keys, node.version_keys, strict=True))]
    keys = _join_keys(node, [(node.left, _same), (node.right, _same)], pairs)
    return Routing("rows", "TemporalJoin", keys)


def _over(node: OverAggregate, plan: ContinuousPlan) -> Routing:
    """An OVER aggregation is routed by the PARTITION BY columns every OVER of it shares: each
    partition's rows, and so its frames, stay in one task."""
    _plain(plan, node)
    shared: list[str] | None = None
    sql = node.running_sql if node.unbounded else node.sql  # where its OVERs are
    for window in sqlglot.parse_one(sql, read="postgres").find_all(exp.Window):
        columns = [
            c.name for c in window.args.get("partition_by") or [] if isinstance(c, exp.Column)
        ]
        shared = columns if shared is None else [c for c in shared if c in columns]
    if not shared:
        raise refusal(_name(node), "it has no PARTITION BY column shared by every OVER")
    return Routing("rows", "OverAggregate", {node.source: tuple(shared)})


def _recompute(node: Recompute, plan: ContinuousPlan) -> Routing:
    """An aggregate over an updating GROUP BY (Nexmark q4: the average per category of the
    highest bid per auction) runs in two stages: the first routed as the inner aggregate's own
    query (by the join's equality, which its group keys hold, or by its group keys), the
    second, the outer aggregate, over the first's changelog routed by the outer group keys.
    Those must be group keys of the inner aggregate, so that a group's upserts never move from
    one task of the second stage to another."""
    inner = plan.derived.get(node.source)
    if (
        node.reads_row_keys
        or node.ranks
        or not isinstance(inner, WindowAggregate)
        or inner.window is not None
    ):
        raise refusal(_name(node), "its input is not an updating GROUP BY (without a window)")
    inner_keys = {k for k in inner.key_outputs if k is not None}
    if node.one_group or not set(node.group_by) <= inner_keys:
        raise refusal(
            _name(node),
            "its GROUP BY is not made of group keys of the GROUP BY under it (a group's rows"
            " would move between tasks)",
        )
    columns = [bare_column(c) for c in inner.key_sql]
    source = plan.derived.get(inner.source)
    if isinstance(source, StreamJoin) and source.outer is None and len(plan.derived) == 2:
        keys = _keys_over_join(
            node,
            source,
            [c for c in columns if c is not None],
            "the GROUP BY under it groups a join's rows without the join's equality columns",
        )
        operator = "Recompute over a GroupAggregate of a StreamJoin"
    elif len(plan.derived) == 1 and None not in columns and columns:
        keys = {inner.source: tuple(c for c in columns if c is not None)}
        operator = "Recompute over a GroupAggregate"
    else:
        raise refusal(
            _name(node),
            "the GROUP BY under it is not of a stream by columns, nor of an inner stream join",
        )
    return Routing("rows", operator, keys, stage=tuple(node.group_by))


_ROUTES: dict[type, Callable[..., Routing]] = {
    Stateless: _stateless,
    WindowAggregate: _aggregate,
    StreamJoin: _stream_join,
    Windowed: _window_join,
    ChangelogJoin: _changelog_join,
    TopN: _top_n,
    OverAggregate: _over,
    TemporalJoin: _temporal_join,
    UnionAll: _union,
    Recompute: _recompute,
}
"""The planner of each operator that runs in parallel, by plan node type."""


__all__ = ["Routing", "bare_column", "equi_columns", "plan_routing", "refusal"]
