"""Logical plans of continuous queries: stateless SQL per micro-batch, or a window aggregate.

A windowed aggregate is split into three parts so that only the middle one keeps state:

1. ``pre_sql`` — stateless, runs on DataFusion over each micro-batch: WHERE, the group keys as
   ``__k0..``, the event time as ``__ts`` and each aggregate's argument as ``__a0..`` (a FILTER
   clause becomes ``CASE WHEN cond THEN arg END``);
2. the window operator — assigns windows, aggregates partially per batch and merges partials
   into RocksDB state (:mod:`streamhouse.windows.aggregate`), emits closed windows;
3. ``post_sql`` — stateless, runs on DataFusion over the finalized rows of closed windows: the
   SELECT list and HAVING, with aggregates and keys replaced by the operator's columns.

>>> from streamhouse.sql.parse import parse_one
>>> plan = plan_query(parse_one(
...     "SELECT user_id, COUNT(*) AS n FROM events GROUP BY user_id, TUMBLING(ts, INTERVAL '1' MINUTE)"))
>>> plan.operator.keys, [str(c.func) for c in plan.operator.aggregates]
(['__k0'], ['count_all'])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Union

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.aggregates import AggregateCall, AggregateFunction
from streamhouse.sql.bounds import TimeBound, candidate_bounds, conjuncts
from streamhouse.sql.changelog import ChangelogMode, PlanNode
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.inline import inline
from streamhouse.sql.over import OverAggregate, plan_over
from streamhouse.sql.parse import sql_error
from streamhouse.sql.window_spec import (
    KINDS,
    WINDOW_COLUMNS,
    WindowKind,
    WindowSpec,
    find_window,
    take_out_windows,
    tvf_call,
)

log = logging.getLogger(__name__)

FLOWS = "__windows"
"""Name the post-aggregation SQL reads the finalized window rows from."""

ALL_ROWS = "__all"
"""The constant column an aggregate without GROUP BY over an outer join groups by: one group."""

ROW = "__temporal_row"
"""The column a temporal join's inputs carry their row number in (see :mod:`streamhouse.joins.temporal`)."""

_AGGREGATES: dict[type, AggregateFunction] = {
    exp.Sum: AggregateFunction.SUM,
    exp.Avg: AggregateFunction.AVG,
    exp.Min: AggregateFunction.MIN,
    exp.Max: AggregateFunction.MAX,
}


@dataclass(frozen=True)
class Stateless(PlanNode):
    """A filter/projection: ``sql`` runs over each micro-batch registered as ``source``."""

    source: str
    sql: str
    metadata: bool = False  # reads every metadata column (an input of a window over a union)

    @property
    def keeps_metadata(self) -> bool:
        return self.metadata

    def explain(self) -> list[str]:
        return [f"Stateless  source={self.source}", f"  sql: {self.sql}"]


@dataclass(frozen=True)
class WindowAggregate(PlanNode):
    """A windowed GROUP BY over one source."""

    source: str
    window: WindowSpec | None  # None: a GROUP BY without a window, an updating view
    pre_sql: str
    keys: list[str]
    key_sql: list[str]
    aggregates: list[AggregateCall]
    post_sql: str
    key_outputs: list[str | None] = field(default_factory=list)  # output column of each key
    keyed_post_sql: str = ""  # post_sql keeping the __k columns (an updating derived input)

    @property
    def mode(self) -> ChangelogMode:
        # without a window, each micro-batch upserts the groups it changed
        return ChangelogMode.UPSERT if self.window is None else ChangelogMode.APPEND

    @property
    def key_columns(self) -> list[str]:
        return [k for k in self.key_outputs if k is not None]

    @property
    def window_column(self) -> str | None:
        return self.window.time_column if self.window is not None else None

    @property
    def keeps_metadata(self) -> bool:
        return True  # late rows go to the side output as the source rows they came from

    def explain(self) -> list[str]:
        w = self.window
        if w is None:
            aggs = ", ".join(f"{a.func}({a.arg or '*'}) AS {a.output}" for a in self.aggregates)
            return [
                f"Project  {self.post_sql}",
                "  GroupAggregate  (updating: an upsert per changed key, a tombstone when HAVING drops it)",
                f"    keys: {', '.join(self.key_sql) or '(none)'}",
                f"    aggregates: {aggs}",
                "    state: column family 'sessions', key b'groups'|u32(run) -> IPC(keys, partials of the keys a micro-batch changed)",
                "    eviction: none (every key is kept)",
                f"    Stateless  {self.pre_sql}",
                f"      Source  {self.source}",
            ]
        size = f"gap={w.gap_ms}ms" if w.kind == WindowKind.SESSION else f"size={w.size_ms}ms"
        slide = f" slide={w.slide_ms}ms" if w.slide_ms else ""
        family = "sessions" if w.kind == WindowKind.SESSION else "windows"
        layout = (
            "b'open'|u8(depth)|u64(key hash bucket)|u32(run) -> IPC(keys, window_start, window_end, partials)"
            if w.kind == WindowKind.SESSION
            else "u64(window_end)|u64(window_start)|u32(run) -> IPC(keys, partials of one micro-batch run)"
        )
        aggs = ", ".join(f"{a.func}({a.arg or '*'}) AS {a.output}" for a in self.aggregates)
        return [
            f"Project  {self.post_sql}",
            f"  WindowAggregate  {w.kind.upper()}({w.time_column}, {size}{slide})",
            f"    keys: {', '.join(self.key_sql) or '(none)'}",
            f"    aggregates: {aggs}",
            f"    state: column family '{family}', key {layout}",
            "    eviction: a window is emitted and deleted when the watermark passes its end"
            " (plus allowed lateness)",
            f"    Stateless  {self.pre_sql}",
            f"      Source  {self.source}",
        ]


@dataclass(frozen=True)
class Windowed(PlanNode):
    """A query whose every input is a windowed stream: ``sql`` runs once its windows close.

    ``inputs`` maps the name each windowed input is registered under to (source, window).
    """

    sql: str
    inputs: dict[str, tuple[str, WindowSpec]]

    @property
    def source(self) -> str:
        return next(iter(self.inputs.values()))[0]

    @property
    def sources(self) -> list[str]:
        return sorted({source for source, _ in self.inputs.values()})

    @property
    def window_column(self) -> str | None:
        return next(iter(self.inputs.values()))[1].time_column

    def explain(self) -> list[str]:
        lines = ["WindowedQuery  (evaluated per closed window)", f"  sql: {self.sql}"]
        for name, (source, w) in sorted(self.inputs.items()):
            size = f"gap={w.gap_ms}ms" if w.kind == WindowKind.SESSION else f"size={w.size_ms}ms"
            slide = f" slide={w.slide_ms}ms" if w.slide_ms else ""
            lines.append(
                f"  Input {name}: {w.kind.upper()}({source}.{w.time_column}, {size}{slide})"
            )
        lines += [
            "  state: column family 'joins', key u8(input)|u64(pane_end)|u64(pane_start)|u32(run)"
            " -> IPC(rows of one micro-batch in one pane, named columns only);"
            " meta 'windowed/emitted' -> watermark evaluated up to",
            "  eviction: a pane's rows are deleted when the watermark passes the end of the last"
            " window over it",
        ]
        return lines


@dataclass(frozen=True)
class OuterJoin:
    """The SQL variants an outer join runs, each projecting ``__lid`` and ``__rid``."""

    inner_sql: str
    left_sql: str
    right_sql: str
    keep_left: bool
    keep_right: bool


@dataclass(frozen=True)
class StreamJoin(PlanNode):
    """An append-only INNER join of two streams (regular, or interval with time bounds)."""

    left: str
    right: str
    sql: str  # over __left and __right
    bound: TimeBound | None
    # every pair of columns the condition bounds; the runtime evicts by the first one that
    # involves the streams' time columns (see sql.bounds.evictable_bound)
    candidates: tuple[TimeBound, ...] = ()
    outer: OuterJoin | None = None  # LEFT/RIGHT/FULL: updating output, keyed by row ids

    @property
    def mode(self) -> ChangelogMode:
        # an outer join tombstones a row padded with NULLs when its first match arrives
        return ChangelogMode.APPEND if self.outer is None else ChangelogMode.UPSERT

    @property
    def upsert_key(self) -> str:
        return "left row id, right row id"  # each row carries it as its record key

    @property
    def source(self) -> str:
        return self.left

    @property
    def sources(self) -> list[str]:
        return sorted({self.left, self.right})

    def explain(self) -> list[str]:
        b = self.bound
        if b is None:
            kind, evict = "regular", "none (set 'state.ttl' to bound it by event time)"
        else:
            lo = f"right.{b.right_column} - {b.before_ms}ms <= " if b.before_ms is not None else ""
            hi = f" <= right.{b.right_column} + {b.after_ms}ms" if b.after_ms is not None else ""
            kind = f"interval: {lo}left.{b.left_column}{hi}"
            evict = (
                "left rows older than watermark - before, right rows older than watermark - after"
                " (by the bounds on the streams' time columns)"
            )
        return [
            f"StreamJoin  {kind}",
            f"  sql: {self.sql}",
            f"  Left  {self.left}",
            f"  Right  {self.right}",
            "  state: column family 'joins', key side|u64(max event time)|u64(sequence) -> IPC(rows)",
            f"  eviction: {evict}",
        ]


@dataclass(frozen=True)
class TemporalJoin(PlanNode):
    """``probe JOIN versioned FOR SYSTEM_TIME AS OF probe.t``: see :mod:`streamhouse.joins.temporal`."""

    left: str  # the probe stream
    right: str  # the versioned table (a stream with a primary key)
    sql: str  # over __left and __right, joined on the matched row
    probe_time: str
    probe_keys: list[str]
    version_keys: list[str]

    @property
    def source(self) -> str:
        return self.left

    @property
    def sources(self) -> list[str]:
        return sorted({self.left, self.right})

    def explain(self) -> list[str]:
        keys = ", ".join(
            f"{p} = {v}" for p, v in zip(self.probe_keys, self.version_keys, strict=True)
        )
        return [
            f"TemporalJoin  {self.left} AS OF {self.probe_time} with versions of {self.right} ON {keys}",
            f"  sql: {self.sql}",
            "  state: column family 'joins', b'P' -> IPC(probe rows waiting for the watermark),"
            " b'V' -> IPC(versions)",
            "  eviction: probe rows leave once joined; per key, versions older than the one"
            " current at the watermark",
        ]


@dataclass(frozen=True)
class Recompute(PlanNode):
    """A query over an updating input (an aggregate of an updating aggregate, say): the latest
    input row per key is kept, and every micro-batch re-runs ``sql`` for the groups it touches."""

    source: str  # the derived updating input
    sql: str  # over the source's name
    input_keys: list[str]  # the columns keying the input's rows
    group_by: list[str]  # the input columns the outer query groups by
    key_outputs: list[str | None]  # the output column of each group_by column
    # the input also retracts rows by record key (``__key``: an outer join's padded rows)
    retracts: bool = False

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.UPSERT

    @property
    def accepts(self) -> frozenset[ChangelogMode]:
        return frozenset({ChangelogMode.UPSERT})  # the latest row per input key

    @property
    def key_columns(self) -> list[str]:
        return [k for k in self.key_outputs if k is not None]

    @property
    def one_group(self) -> bool:
        """An aggregate without GROUP BY: its one group has the record key ``{}``."""
        return self.group_by == [ALL_ROWS]

    def explain(self) -> list[str]:
        retracted = (
            "; a retracted key is kept as a dead row (__live false)" if self.retracts else ""
        )
        return [
            f"Recompute  groups ({', '.join(self.group_by)}) over the latest row per"
            f" ({', '.join(self.input_keys)}) of {self.source} (updating: an upsert per group,"
            " a tombstone when a group has no rows"
            + (" or HAVING drops it" if self.retracts else "")
            + ")",
            f"  sql: {self.sql}",
            "  state: column family 'sessions', key b'recompute'|u32(run) -> IPC(latest input"
            f" rows of changed keys{retracted})",
        ]


@dataclass(frozen=True)
class TimeSort(PlanNode):
    """``SELECT ... FROM s [WHERE ...] ORDER BY t [, ...]`` over the time attribute ``t``
    ascending (Flink's temporal sort): rows are kept until the watermark passes them, then come
    out in time order; see :mod:`streamhouse.windows.time_sort`."""

    source: str
    time_column: str  # the source column the first ORDER BY key is
    pre_sql: str  # the WHERE over the source: the rows to keep
    sql: str  # the SELECT list and ORDER BY over released rows (registered as the source)

    def explain(self) -> list[str]:
        return [
            f"TimeSort  by {self.source}.{self.time_column} as the watermark passes it",
            f"  sql: {self.sql}",
            "  state: column family 'joins', key b'sort'|u64(min event time)|u64(run)"
            " -> IPC(rows waiting for the watermark)",
            "  eviction: rows leave when the watermark reaches their time; rows older than"
            " the watermark when they arrive are late (dropped, counted)",
            f"    Stateless  {self.pre_sql}",
            f"      Source  {self.source}",
        ]


@dataclass(frozen=True)
class UnionAll(PlanNode):
    """``q1 UNION ALL q2 ...`` of append-only inputs (each a derived input): their rows, with
    the first input's column names. Its watermark is the query's, the minimum over every
    stream the inputs read."""

    inputs: tuple[str, ...]  # the derived inputs, in the query's order
    columns: tuple[str, ...] | None  # the output names; None: the inputs' own (``SELECT *``)
    metadata: bool = False  # its inputs' metadata columns pass (the input of a window)

    @property
    def keeps_metadata(self) -> bool:
        return self.metadata

    @property
    def source(self) -> str:
        return self.inputs[0]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(self.inputs))

    def explain(self) -> list[str]:
        return [
            f"UnionAll  {' + '.join(self.inputs)} (rows concatenated; watermark: the minimum of"
            " its inputs')",
            "  state: none",
        ]


@dataclass(frozen=True)
class ContinuousPlan:
    """What a continuous query reads, computes and where it writes."""

    operator: (
        Stateless
        | WindowAggregate
        | Windowed
        | StreamJoin
        | TopN
        | TemporalJoin
        | Recompute
        | TimeSort
        | UnionAll
        | OverAggregate
    )
    sink_kind: str = "results"  # results | topic
    sink: str | None = None  # the sink topic/stream name for INSERT INTO and materialized views
    options: dict[str, str] = field(default_factory=dict)
    derived: dict[str, Operator] = field(default_factory=dict)
    """Inputs computed by nested operators (a join over a windowed aggregate), by the name the
    outer operator reads them under; each is append-only and runs first in every micro-batch."""

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def sources(self) -> list[str]:
        """The streams and topics the query reads (derived inputs resolved to theirs)."""
        found: list[str] = []
        for op in [self.operator, *self.derived.values()]:
            for name in op.sources:
                if name not in self.derived and name not in found:
                    found.append(name)
        return found

    def explain(self) -> str:
        sink = f"Sink  topic {self.sink}" if self.sink_kind == "topic" else "Sink  results"
        lines = [sink, *("  " + line for line in _explain_node(self.operator))]
        for name, op in self.derived.items():
            lines += [f"  Derived input {name}:", *("    " + line for line in _explain_node(op))]
        return "\n".join(lines)


def _explain_node(node: Operator) -> list[str]:
    """A node's ``EXPLAIN`` lines, its changelog mode under the first."""
    first, *rest = node.explain()
    return [first, f"  {node.changelog}", *rest]


Operator = Union[
    "Stateless",
    "WindowAggregate",
    "Windowed",
    "StreamJoin",
    "TopN",
    "TemporalJoin",
    "Recompute",
    "TimeSort",
    "UnionAll",
    "OverAggregate",
]


def plan_query(statement: exp.Expr) -> ContinuousPlan:
    """Plan ``SELECT``, ``INSERT INTO t SELECT`` or ``CREATE MATERIALIZED VIEW v AS SELECT``
    (its CTEs and filtering subqueries merged in, see :mod:`streamhouse.sql.inline`)."""
    statement = inline(statement)
    sink_kind, sink = "results", None
    query = statement
    if isinstance(statement, exp.Insert):
        target = statement.this
        while not isinstance(target, exp.Table) and target is not None:
            target = target.this
        sink_kind, sink = "topic", target.name if target is not None else None
        query = statement.expression
    elif isinstance(statement, exp.Create) and (statement.args.get("kind") or "").upper() == "VIEW":
        sink_kind, sink = "topic", statement.this.name
        query = statement.expression
    derived: dict[str, Operator] = {}
    if isinstance(query, exp.Union) and query.args.get("distinct"):
        operator: Operator = _plan_distinct_union(query, derived)
        check_changelogs(operator, derived, query)
        return ContinuousPlan(operator, sink_kind, sink, derived=derived)
    if isinstance(query, exp.Union):
        operator = _plan_union(query, derived)
        check_changelogs(operator, derived, query)
        return ContinuousPlan(operator, sink_kind, sink, derived=derived)
    if not isinstance(query, exp.Select):
        raise sql_error(
            "a continuous query must be a SELECT or a UNION ALL of SELECTs"
            f" ({query.key.upper()} is not supported continuously yet)",
            query,
        )
    operator = _plan_select(query, derived)
    _check_upsert_key(operator, query)
    _check_order(operator, query)
    check_changelogs(operator, derived, query)
    return ContinuousPlan(operator, sink_kind, sink, derived=derived)


def _plan_union(union: exp.Union, derived: dict[str, Operator]) -> UnionAll:
    """Each SELECT of ``a UNION ALL b ...`` as a derived input of one :class:`UnionAll`."""
    return _union_of(_union_branches(union), derived)


def _plan_distinct_union(union: exp.Union, derived: dict[str, Operator]) -> WindowAggregate:
    """``q1 UNION q2 ...`` (DISTINCT over every input, nested UNIONs included): the UNION ALL
    of the inputs as a derived input, and an updating GROUP BY all its columns over it (an
    upsert per distinct row, keyed by the row)."""
    every = union.copy()
    for node in [every, *every.find_all(exp.Union)]:
        node.set("distinct", False)
    inputs = _plan_union(every, derived)
    if inputs.columns is None:
        raise sql_error("a continuous UNION names its columns (not *)", union)
    name = f"__derived_{len(derived)}"
    derived[name] = inputs
    columns = [exp.column(c) for c in inputs.columns]
    distinct = exp.select(*columns).from_(name).group_by(*[c.copy() for c in columns])
    return _plan_window(distinct, None, exp.to_table(name))


def _union_branches(union: exp.Union) -> list[exp.Select]:
    """The SELECTs of ``a UNION ALL b ...``, in order."""
    for key in ("order", "limit", "offset"):
        if union.args.get(key) is not None:
            raise sql_error(
                f"{key.upper()} over a continuous UNION ALL is not supported", union.args[key]
            )
    branches: list[exp.Expr] = []
    pending: list[exp.Expr] = [union]
    while pending:
        node = pending.pop(0)
        if isinstance(node, exp.Subquery):
            node = node.this
        if isinstance(node, exp.Union):
            if node.args.get("distinct"):
                raise sql_error(
                    "a UNION (DISTINCT) under a UNION ALL is not supported continuously: use"
                    " UNION ALL, or make the outer one a UNION too",
                    node,
                )
            pending[:0] = [node.this, node.expression]
        else:
            branches.append(node)
    for branch in branches:
        if not isinstance(branch, exp.Select):
            raise sql_error("each input of a continuous UNION ALL is a SELECT", branch)
    return branches  # type: ignore[return-value]


def _union_of(branches: list[exp.Select], derived: dict[str, Operator]) -> UnionAll:
    inputs = []
    for branch in branches:
        op = _plan_select(branch, derived)
        if op.updating:
            raise sql_error(
                "UNION ALL of an updating query is not supported continuously yet: each input"
                " must be append-only (a filter, a projection, a window aggregate, a join)",
                branch,
            )
        name = f"__derived_{len(derived)}"
        derived[name] = op
        inputs.append(name)
    first = branches[0]
    columns = None
    if not any(isinstance(e, exp.Star) or isinstance(e.this, exp.Star) for e in first.expressions):
        columns = tuple(e.alias_or_name for e in first.expressions)
    return UnionAll(tuple(inputs), columns)


_METADATA = ("_partition", "_offset")  # what a window's late rows are traced back by


def _window_over_union(select: exp.Select, derived: dict[str, Operator]) -> WindowAggregate | None:
    """A window aggregate over ``(q1 UNION ALL q2 ...)`` (GROUP BY syntax, or a TVF over a view
    or CTE that is one), if ``select`` is one: the union becomes a derived input whose inputs
    filter and project streams and pass each stream's time attribute on as it is."""
    spec, rest = find_window(select)
    source = rest.args.get("from_")
    sub = source.this if source is not None else None
    if (
        spec is None
        or rest.args.get("joins")
        or not isinstance(sub, exp.Subquery)
        or not isinstance(sub.this, exp.Union)
    ):
        return None
    branches = [b.copy() for b in _union_branches(sub.this)]
    names = [e.alias_or_name for e in branches[0].expressions]
    if spec.time_column not in names:
        raise sql_error(f"{spec.time_column!r} is not a column of the UNION ALL", sub)
    index = names.index(spec.time_column)
    for branch in branches:
        item = branch.expressions[index] if index < len(branch.expressions) else branch
        body = item.this if isinstance(item, exp.Alias) else item
        if not isinstance(body, exp.Column):
            raise sql_error(
                f"{spec.time_column!r} is computed ({body.sql(dialect='postgres')}) in an input"
                " of the UNION ALL, so it is not a time attribute: pass each stream's time"
                " column on as it is",
                body,
            )
        branch.set("expressions", [*branch.expressions, *(exp.column(m).as_(m) for m in _METADATA)])
    union = _union_of(branches, derived)
    for name in union.inputs:
        op = derived[name]
        if not isinstance(op, Stateless):
            raise sql_error(
                "a window over a UNION ALL takes filters and projections of streams as its"
                " inputs (aggregate each input first, then UNION ALL the results)",
                sub,
            )
        derived[name] = Stateless(op.source, op.sql, metadata=True)
    name = f"__derived_{len(derived)}"
    derived[name] = UnionAll(union.inputs, union.columns, metadata=True)
    table = exp.to_table(name).as_(sub.alias or name)
    sub.replace(table)
    return _plan_window(rest, spec, table)


def check_changelogs(operator: Operator, derived: dict[str, Operator], query: exp.Expr) -> None:
    """Every node takes the changelog its derived inputs emit (:attr:`PlanNode.accepts`): a plan
    where one would drop another's updates or retractions is refused, never run."""
    for node in [operator, *derived.values()]:
        for name in node.sources:
            child = derived.get(name)
            if child is not None and child.mode not in node.accepts:
                takes = " or ".join(sorted(node.accepts))
                raise sql_error(
                    f"{type(node).__name__} takes {takes} input, and its input"
                    f" ({type(child).__name__}) is {child.changelog.removeprefix('changelog: ')}:"
                    " not supported continuously yet",
                    query,
                )


_WINDOW_ORDER = ("window_start", "window_end", "window_time")


def _check_order(operator: Operator, select: exp.Select) -> None:
    """Refuse an ORDER BY a continuous query cannot keep: as in Flink, the first key must be a
    time attribute, ascending (a TimeSort checks its own); windows of a TUMBLE, HOP or
    CUMULATE aggregate come out by end, so ``window_start``/``window_end``/``window_time``
    ascending holds too."""
    order = select.args.get("order")
    if order is None or isinstance(operator, TimeSort):
        return
    first = order.expressions[0]
    window = getattr(operator, "window", None)
    if isinstance(operator, Windowed):
        kinds = {spec.kind for _, spec in operator.inputs.values()}
        window = next(iter(operator.inputs.values()))[1] if kinds != {WindowKind.SESSION} else None
    if (
        window is not None
        and window.kind != WindowKind.SESSION
        and isinstance(first.this, exp.Column)
        and first.this.name in _WINDOW_ORDER
        and not first.args.get("desc")
    ):
        return
    raise _order_error(first)


def _order_error(first: exp.Ordered) -> SqlError:
    return sql_error(
        "ORDER BY in a continuous query must start with the time attribute, ascending "
        "(a stream's WATERMARK column; window_start/window_end of a window aggregate): "
        f"ORDER BY {first.sql(dialect='postgres')} is not supported",
        first,
    )


def _check_upsert_key(operator: Operator, select: exp.Select) -> None:
    """An updating query's rows are upserts keyed by output columns (the group keys; the Top-N
    keys and, for N > 1, the rank): refuse one that does not select them, whose keys would
    collide."""
    if (
        isinstance(operator, WindowAggregate | Recompute)
        and getattr(operator, "window", None) is None
    ):
        keys = operator.key_outputs
        if None in keys:
            raise sql_error(
                "an updating GROUP BY writes one row per group: select every GROUP BY key"
                " (the keys of its upserts)",
                select,
            )
    elif isinstance(operator, TopN):
        outputs = set()
        for projection in select.expressions:
            if isinstance(projection, exp.Star) or (
                isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star)
            ):
                return
            outputs.add(projection.alias_or_name)
        rank = [operator.rank_column] if operator.limit > 1 else []
        missing = [k for k in [*operator.partition_by, *rank] if k not in outputs]
        if missing:
            raise sql_error(
                f"a Top-N writes one row per key and rank: select {', '.join(missing)}"
                " (the keys of its upserts)",
                select,
            )


def _refuse_retractions(op: Operator, what: str, node: exp.Expr) -> None:
    """Refuse an outer join as the input of a stateful operator: the join retracts a row padded
    with NULLs when its first match arrives, and the operators over it take appends only."""
    if isinstance(op, StreamJoin) and op.outer is not None:
        join = next((j for j in node.find_all(exp.Join) if j.side), None)
        side = join.side.upper() if join is not None else "OUTER"
        raise sql_error(
            f"{what} over a {side} JOIN is not supported continuously yet: the join retracts "
            "a row padded with NULLs when its match arrives, and this operator takes appends only",
            join.this if join is not None else node,
        )


def _derive(select: exp.Select, derived: dict[str, Operator]) -> exp.Select:
    """Plan the subqueries that are direct join inputs of ``select`` as derived inputs; returns
    ``select`` reading them by name."""
    select = select.copy()
    sides = [select.args["from_"]] + list(select.args.get("joins") or [])
    for side in sides:
        sub = side.this
        if not isinstance(sub, exp.Subquery) or not isinstance(sub.this, exp.Select):
            continue
        op = _plan_select(sub.this, derived)
        _refuse_retractions(op, "a join", sub)
        if op.updating:
            raise sql_error("a join input must be append-only (not an updating view)", sub)
        name = f"__derived_{len(derived)}"
        derived[name] = op
        sub.replace(exp.to_table(name).as_(sub.alias_or_name or name))
    return select


def _plan_select(
    select: exp.Select, derived: dict[str, Operator]
) -> (
    Stateless
    | WindowAggregate
    | Windowed
    | StreamJoin
    | TopN
    | TemporalJoin
    | TimeSort
    | Recompute
    | OverAggregate
):
    if select.args.get("limit") is not None:
        raise sql_error("LIMIT has no meaning in a continuous query", select.args["limit"])
    over_union = _window_over_union(select, derived)
    if over_union is not None:
        return over_union
    joins = select.args.get("joins") or []
    if joins:
        select = _tumbles_as_columns(select)
    sides = [select.args.get("from_")] + list(joins)
    if joins and any(isinstance(s.this, exp.Subquery) for s in sides if s is not None):
        windowed_inputs = take_out_windows(select)[1]
        if not windowed_inputs or any(
            not isinstance(s.this, exp.Subquery) for s in sides if s is not None
        ):
            rewritten = _derive(select, derived)
            return _plan_join(rewritten, rewritten.args["joins"], derived)
    rewritten, windowed = take_out_windows(select)
    tables = source_tables(rewritten)
    plain = [t for t in tables if t.name not in windowed]
    if windowed:
        if plain:
            raise sql_error(
                "a continuous query cannot yet mix windowed and unwindowed streams", plain[0]
            )
        spec, rest = find_window(select)
        source = rest.args.get("from_")
        table = source.this if source is not None else None
        simple = (
            spec is not None
            and not rest.args.get("joins")
            and isinstance(table, exp.Table)
            and not isinstance(table.this, exp.Func)
            and not any(True for _ in rest.find_all(exp.Window))
        )
        if simple:
            try:
                return _plan_window(rest, spec, table)  # type: ignore[arg-type]
            except SqlError:
                if spec.kind == WindowKind.SESSION:  # type: ignore[union-attr]
                    raise
                log.info("falling back to per-window evaluation")
        specs = {w for _, w in windowed.values()}
        if any(w.kind == WindowKind.SESSION for w in specs):
            raise sql_error("SESSION windows support windowed aggregates only", select)
        if len(specs) > 1:
            raise sql_error(
                "every input of a windowed continuous query needs the same window", select
            )
        return Windowed(to_datafusion(rewritten), windowed)
    if joins:
        return _plan_join(select, select.args.get("joins"), derived)
    source = select.args.get("from_")
    table = source.this if source is not None else None
    if isinstance(table, exp.Subquery):
        top_n = _plan_top_n(select, derived)
        if top_n is not None:
            return top_n
        recompute = _plan_recompute(select, table, derived) or _top_n_over_updates(select, derived)
        if recompute is not None:
            return recompute
        raise sql_error("subqueries in continuous queries are not supported yet", table)
    if not isinstance(table, exp.Table) or isinstance(table.this, exp.Func):
        raise sql_error("a continuous query must read a stream, view or topic", table or select)
    if any(True for _ in select.find_all(exp.Subquery)):
        raise sql_error("subqueries in continuous queries are not supported yet", select)
    if select.find(exp.Window) is not None:  # a Top-N is a subquery, planned above
        return plan_over(select, table)
    if select.args.get("group") is not None or any(True for _ in select.find_all(exp.AggFunc)):
        return _plan_window(select, None, table)  # an updating aggregate: upserts per key
    if select.args.get("order") is not None:
        return _plan_time_sort(select, table)
    return Stateless(table.name, to_datafusion(select))


def _tumbles_as_columns(select: exp.Select) -> exp.Select:
    """``select`` with the one TUMBLE TVF it joins to streams (``TABLE(TUMBLE(TABLE a,
    DESCRIPTOR(t), size)) AS x JOIN b ...``) as a subquery computing window_start, window_end and window_time per row
    (each row has one tumbling window), so the join and an aggregate over it run as over any
    other input: its rows are the join's, and a GROUP BY window_start updates per window as
    the join's rows come (a join with a stream can add rows to a window at any time)."""
    sides = [select.args.get("from_"), *select.args["joins"]]
    tvfs = [s for s in sides if s is not None and tvf_call(s.this) is not None]
    plain = [s for s in sides if s is not None and s not in tvfs and isinstance(s.this, exp.Table)]
    if len(tvfs) != 1 or len(plain) != len(sides) - 1:  # window joins are planned as such
        return select
    result = select.copy()
    for side in [result.args.get("from_"), *result.args["joins"]]:
        source = side.this if side is not None else None
        if source is None or tvf_call(source) is None:
            continue
        spec, rest = find_window(exp.select(exp.Star()).from_(source.copy()))
        if spec is None or spec.kind != WindowKind.TUMBLE:
            continue
        data = rest.args["from_"].this
        alias = data.alias_or_name
        data.set("alias", None)
        time = exp.column(spec.time_column)
        size = exp.Interval(this=exp.Literal.string(str(spec.size_ms)), unit=exp.var("MILLISECOND"))
        start = exp.Anonymous(
            this="date_bin",
            expressions=[size, time, exp.cast(exp.Literal.string("1970-01-01"), "TIMESTAMP")],
        )
        end = exp.Add(this=start.copy(), expression=size.copy())
        last = exp.Interval(this=exp.Literal.string("1"), unit=exp.var("MILLISECOND"))
        windowed = (
            exp.select(
                exp.Star(),
                start.as_("window_start"),
                end.as_("window_end"),
                exp.Sub(this=end.copy(), expression=last).as_("window_time"),
            )
            .from_(data)
            .where(time.is_(exp.null()).not_())
        )
        source.replace(windowed.subquery(alias))
        for column in result.find_all(exp.Column):  # the window columns are this side's
            outer = column.find_ancestor(exp.Select) is result
            if outer and not column.table and column.name in WINDOW_COLUMNS:
                column.set("table", exp.to_identifier(alias))
    return result


def _plan_time_sort(select: exp.Select, table: exp.Table) -> TimeSort:
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
        raise _order_error(first)
    pre = exp.select(exp.Star()).from_(table.copy())
    if select.args.get("where") is not None:
        pre.set("where", select.args["where"].copy())
    post = select.copy()
    post.set("where", None)
    return TimeSort(table.name, key.name, to_datafusion(pre), to_datafusion(post))


@dataclass(frozen=True)
class TopN(PlanNode):
    """Top-N (and deduplication, N = 1) per key: ``ROW_NUMBER() OVER (PARTITION BY ...) <= N``.

    The state keeps, per partition key, only the source rows currently ranked within N (an
    insert-only input never brings a dropped row back). Each micro-batch re-ranks the kept rows
    of the keys it touches together with its new rows and upserts their ranks.
    """

    source: str
    sql: str  # the whole query, over the source's name
    retain_sql: str  # the source rows ranked within N
    partition_by: list[str]
    rank_column: str
    limit: int
    ranks_only: bool = False  # the outer WHERE only bounds the rank: a (key, rank) never goes
    output_sql: str | None = None  # the outer query over RANKED (the retained rows, ranked)
    # (column, descending) of ORDER BY when the ranked rows are the source rows unfiltered and
    # ordered by plain columns: the operator may rank them with Arrow's sort instead of SQL
    order_by: tuple[tuple[str, bool], ...] | None = None
    # when the outer query only picks columns of RANKED (``*`` included) and bounds the rank:
    # those columns, so the operator can select them instead of running output_sql
    output_columns: tuple[str, ...] | None = None

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.UPSERT

    @property
    def key_columns(self) -> list[str]:
        return [*self.partition_by, self.rank_column]

    def explain(self) -> list[str]:
        return [
            f"TopN  {self.limit} per ({', '.join(self.partition_by)}) ranked as {self.rank_column}"
            " (updating: an upsert per (key, rank))",
            f"  sql: {self.sql}",
            f"  retain: {self.retain_sql}",
            "  state: column family 'sessions', key b'top_n'|u32(run) -> IPC(kept source rows of changed keys)",
            f"  Source  {self.source}",
        ]


def _plan_top_n(select: exp.Select, derived: dict[str, Operator] | None = None) -> TopN | None:
    """A TopN plan if ``select`` is ``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER (PARTITION BY
    k ORDER BY ..) AS rn FROM s ..) WHERE rn <= N`` (or ``rn = 1``, ``rn < N``). When the inner
    query joins streams, the join becomes a derived input the ranking reads."""
    source = select.args.get("from_")
    sub = source.this if source is not None else None
    if not isinstance(sub, exp.Subquery) or not isinstance(sub.this, exp.Select):
        return None
    inner = sub.this
    if inner.args.get("joins") and derived is not None:
        rewritten = _rank_over_join(select, inner, derived)
        if rewritten is None:
            return None
        select, inner = rewritten, rewritten.args["from_"].this.this
    inner_from = inner.args.get("from_")
    table = inner_from.this if inner_from is not None else None
    if (
        not isinstance(table, exp.Table)
        or isinstance(table.this, exp.Func)
        or inner.args.get("joins")
    ):
        return None
    rank = None
    for projection in inner.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Window) and isinstance(body.this, exp.RowNumber):
            rank = (projection.alias_or_name, body)
    if rank is None:
        return None
    rank_name, window = rank
    partition = window.args.get("partition_by") or []
    if not partition or not all(isinstance(p, exp.Column) for p in partition):
        return None
    limit, ranks_only = _rank_limit(select, rank_name)
    if limit is None:
        return None
    ranked = exp.select(exp.Star(), exp.alias_(window.copy(), "__rn", quoted=True)).from_(
        table.copy()
    )
    if inner.args.get("where") is not None:
        ranked.set("where", inner.args["where"].copy())
    retain = (
        exp.select(exp.Star())
        .from_(ranked.subquery("__ranked"))
        .where(exp.column("__rn", quoted=True) <= limit)
    )
    order_by = None
    order = window.args.get("order")
    ordered = order.expressions if order is not None else []
    if inner.args.get("where") is None and all(isinstance(o.this, exp.Column) for o in ordered):
        order_by = tuple((o.this.name, bool(o.args.get("desc"))) for o in ordered)
    output = None
    output_columns = None
    if _star_and_rank(inner, rank_name):  # the inner query's rows are the retained rows
        output = select.copy()
        ranked_table: exp.Expr = exp.to_table(RANKED)
        if sub.alias:
            ranked_table = exp.alias_(ranked_table, sub.alias, table=True)
        output.set("from_", exp.From(this=ranked_table))
        output_columns = _plain_columns(select) if ranks_only else None
    return TopN(
        source=table.name,
        sql=to_datafusion(select),
        retain_sql=to_datafusion(retain),
        partition_by=[p.name for p in partition],
        rank_column=rank_name,
        limit=limit,
        ranks_only=ranks_only,
        output_sql=to_datafusion(output) if output is not None else None,
        order_by=order_by,
        output_columns=output_columns,
    )


def _rank_limit(select: exp.Select, rank_name: str) -> tuple[int | None, bool]:
    """(N of ``WHERE rank <= N`` (``< N + 1``, ``= 1``), or None; whether the WHERE only bounds
    the rank)."""
    limit = None
    ranks_only = True
    where = select.args.get("where")
    for item in conjuncts(where.this if where is not None else None):
        if not (
            isinstance(item, exp.LTE | exp.LT | exp.EQ)
            and isinstance(item.this, exp.Column)
            and item.this.name == rank_name
            and isinstance(item.expression, exp.Literal)
        ):
            ranks_only = False
        else:
            value = int(item.expression.name)
            limit = value - 1 if isinstance(item, exp.LT) else value
            if isinstance(item, exp.EQ) and value != 1:
                return None, ranks_only
    return (limit if limit is not None and limit >= 1 else None), ranks_only


def _top_n_over_updates(select: exp.Select, derived: dict[str, Operator]) -> Recompute | None:
    """``SELECT .. FROM (SELECT .., ROW_NUMBER() OVER ([PARTITION BY p] ORDER BY ..) AS rn FROM
    (SELECT .. GROUP BY ..)) WHERE rn <= N``: a Top-N over an updating aggregate. The latest row
    per group is kept and the ranking re-run for the partitions a micro-batch touches (all rows
    without PARTITION BY); an upsert per (p, rn). A partition never loses a row (the aggregate
    has no HAVING, p are its keys), so a (p, rn) once written stays."""
    ranking = select.args["from_"].this.this
    source = ranking.args.get("from_") if isinstance(ranking, exp.Select) else None
    aggregate = source.this if source is not None else None
    if not isinstance(aggregate, exp.Subquery) or not isinstance(aggregate.this, exp.Select):
        return None
    rank = next(
        (
            (p.alias_or_name, p.this)
            for p in ranking.expressions
            if isinstance(p, exp.Alias)
            and isinstance(p.this, exp.Window)
            and isinstance(p.this.this, exp.RowNumber)
        ),
        None,
    )
    if rank is None or ranking.args.get("joins"):
        return None
    rank_name, window = rank
    limit, ranks_only = _rank_limit(select, rank_name)
    if limit is None or not ranks_only:
        raise sql_error(
            f"a Top-N over an updating aggregate is filtered by its rank alone (WHERE"
            f" {rank_name} <= N); filter the aggregate's rows in its HAVING instead",
            select.args.get("where") or select,
        )
    if aggregate.this.args.get("having") is not None:
        raise sql_error(
            "a Top-N over an updating aggregate with HAVING is not supported continuously yet"
            " (a group HAVING drops would leave its rank behind); filter the Top-N's rows instead",
            aggregate.this.args["having"],
        )
    inner = _plan_select(aggregate.this, derived)
    if not (isinstance(inner, WindowAggregate) and inner.window is None):
        return None
    partition = window.args.get("partition_by") or []
    keys = [k for k in inner.key_outputs if k is not None]
    for column in partition:
        if not isinstance(column, exp.Column) or column.name not in keys:
            raise sql_error(
                "a Top-N over an updating aggregate partitions by the aggregate's GROUP BY"
                f" columns ({', '.join(keys) or 'none'}): a row would move between partitions",
                column,
            )
    outputs = [p.alias_or_name for p in select.expressions]
    key_outputs = [p.name for p in partition] + [rank_name]
    missing = [k for k in key_outputs if k not in outputs]
    if missing:
        raise sql_error(
            f"a Top-N writes one row per key and rank: select {', '.join(missing)}"
            " (the keys of its upserts)",
            select,
        )
    name = f"__derived_{len(derived)}"
    derived[name] = inner
    outer = select.copy()
    inner_source = outer.args["from_"].this.this.args["from_"].this
    inner_source.replace(exp.to_table(name).as_(aggregate.alias_or_name or name))
    return Recompute(
        name,
        to_datafusion(outer),
        keys,
        [p.name for p in partition],
        key_outputs,  # type: ignore[arg-type]
    )


def _plain_columns(select: exp.Select) -> tuple[str, ...] | None:
    """The names ``select`` picks when it is ``SELECT *`` or ``SELECT a, b, ...`` (no aliases,
    expressions, grouping or ordering) with a WHERE at most; ``("*",)`` for a star."""
    if set(k for k, v in select.args.items() if v) - {"expressions", "from_", "where"}:
        return None
    if len(select.expressions) == 1 and isinstance(select.expressions[0], exp.Star):
        return ("*",)
    if not all(isinstance(e, exp.Column) and not e.table for e in select.expressions):
        return None
    return tuple(e.name for e in select.expressions)


RANKED = "__ranked"
"""The table :attr:`TopN.output_sql` reads: the retained rows with their rank."""


def _star_and_rank(inner: exp.Select, rank_name: str) -> bool:
    """Whether ``inner`` is ``SELECT *, ROW_NUMBER() OVER (...) AS rank FROM t [WHERE ...]``."""
    if set(k for k, v in inner.args.items() if v) - {"expressions", "from_", "where"}:
        return False
    if len(inner.expressions) != 2 or not isinstance(inner.expressions[0], exp.Star):
        return False
    return inner.expressions[1].alias_or_name == rank_name


def _rank_over_join(
    select: exp.Select, inner: exp.Select, derived: dict[str, Operator]
) -> exp.Select | None:
    """``select`` with its inner ranking reading the inner join as a derived input.

    The join keeps the inner query's projections (minus ROW_NUMBER); the window's qualified
    columns are renamed to what the join outputs them as."""
    window_projection = None
    projections = []
    names: dict[tuple[str, str], str] = {}
    stars: list[str] = []
    for projection in inner.expressions:
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Window) and isinstance(body.this, exp.RowNumber):
            window_projection = projection
            continue
        projections.append(projection.copy())
        if isinstance(body, exp.Column) and not isinstance(body.this, exp.Star):
            names[(body.table, body.name)] = projection.alias_or_name
        elif isinstance(body, exp.Column) and isinstance(body.this, exp.Star):
            stars.append(body.table)
    if window_projection is None:
        return None
    join_select = inner.copy()
    join_select.set("expressions", projections)
    op = _plan_select(join_select, derived)
    if not isinstance(op, StreamJoin | TemporalJoin):
        return None
    _refuse_retractions(op, "a Top-N", inner)
    name = f"__derived_{len(derived)}"
    derived[name] = op

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.table:
            key = (node.table, node.name)
            if key in names:
                return exp.column(names[key])
            if node.table in stars:
                return exp.column(node.name)
        return node

    window = window_projection.copy().transform(rename)
    ranked = exp.select(exp.Star(), window).from_(exp.to_table(name))
    outer = select.copy()
    outer.args["from_"].this.replace(ranked.subquery(select.args["from_"].this.alias or None))
    return outer


def _aggregate_over_join(
    select: exp.Select, derived: dict[str, Operator] | None
) -> WindowAggregate | Recompute:
    """A GROUP BY over a join: the join becomes a derived input (its rows carry the columns the
    aggregate needs, as ``<alias>__<column>``), the aggregate an updating one over it."""
    if derived is None:
        raise sql_error("aggregates over a continuous join are not supported here", select)
    used: dict[tuple[str, str], str] = {}
    for key in ("expressions", "group", "having"):
        node = select.args.get(key)
        for part in node if isinstance(node, list) else [node] if node is not None else []:
            for column in part.find_all(exp.Column):
                if column.table and not isinstance(column.this, exp.Star):
                    used[(column.table, column.name)] = f"{column.table}__{column.name}"
    join_select = select.copy()
    join_select.set("expressions", [exp.column(c, table=t).as_(n) for (t, c), n in used.items()])
    for key in ("group", "having", "order"):
        join_select.set(key, None)
    one_group = select.args.get("group") is None and _outer(select)
    if one_group:  # one group, keyed by a constant column, recomputed as retractions come
        join_select.select(exp.alias_(exp.Literal.number(0), ALL_ROWS), copy=False)
    op = _plan_join(join_select, join_select.args["joins"], derived)
    retracting = isinstance(op, StreamJoin) and op.outer is not None
    if retracting and select.args.get("group") is None and not one_group:
        _refuse_retractions(op, "an aggregate without GROUP BY", select)
    if retracting and not one_group:
        _refuse_padded_key(select)
    name = f"__derived_{len(derived)}"
    derived[name] = op

    def rename(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and (node.table, node.name) in used:
            return exp.column(used[(node.table, node.name)])
        return node

    aggregate = select.copy()
    aggregate.set(
        "expressions",
        [
            e.as_(e.name) if isinstance(e, exp.Column) and e.table else e
            for e in aggregate.expressions
        ],
    )
    aggregate.set("joins", None)
    aggregate.set("where", None)
    aggregate.set("from_", exp.From(this=exp.to_table(name)))
    for key in ("expressions", "group", "having"):
        node = aggregate.args.get(key)
        if isinstance(node, list):
            aggregate.set(key, [part.transform(rename) for part in node])
        elif node is not None:
            aggregate.set(key, node.transform(rename))
    if one_group:
        aggregate.set("group", exp.Group(expressions=[exp.column(ALL_ROWS)]))
    if retracting:  # the join retracts padded rows: recompute the groups they leave
        return _recompute_over_retractions(aggregate, name, one_group)
    return _plan_window(aggregate, None, exp.to_table(name))


def _outer(select: exp.Select) -> bool:
    """Whether a join of ``select`` is LEFT, RIGHT or FULL."""
    return any(j.side for j in select.args.get("joins") or [])


def _refuse_padded_key(select: exp.Select) -> None:
    """Refuse ``GROUP BY x`` over an outer join when ``x`` alone is a column of a side the join
    pads with NULLs: the group of padded rows would be keyed by NULL, and an upsert topic can
    neither key nor tombstone it."""
    keys = select.args["group"].expressions
    join = select.args["joins"][0]
    side = (join.side or "").upper()
    left, right = select.args["from_"].this.alias_or_name, join.this.alias_or_name
    padded = {"LEFT": {right}, "RIGHT": {left}, "FULL": {left, right}}.get(side, set())
    if len(keys) == 1 and isinstance(keys[0], exp.Column) and keys[0].table in padded:
        key = keys[0]
        raise sql_error(
            f"GROUP BY {key.sql(dialect='postgres')} over a {side} JOIN: rows padded with NULLs"
            " would be grouped under a NULL key, which an upsert topic cannot key or retract;"
            " group by a column of the side the join keeps, or add a second GROUP BY column",
            key,
        )


def _recompute_over_retractions(
    aggregate: exp.Select, name: str, one_group: bool = False
) -> Recompute:
    """A GROUP BY over an outer join (derived input ``name``): every join row is kept by its
    record key until retracted, and the groups a micro-batch touches are recomputed, so any
    aggregate (MIN and MAX too) stays right when a padded row is retracted. ``one_group``: an
    aggregate without GROUP BY (grouped by ALL_ROWS, which the output does not carry)."""
    if aggregate.args.get("order") is not None:
        raise _order_error(aggregate.args["order"].expressions[0])
    group_by = []
    for key in aggregate.args["group"].expressions:
        if not isinstance(key, exp.Column):
            raise sql_error(
                "a GROUP BY over an outer join groups by columns (select an expression in a"
                " subquery first)",
                key,
            )
        group_by.append(key.name)
    return Recompute(
        name,
        to_datafusion(aggregate),
        ["__key"],
        group_by,
        [] if one_group else _key_outputs(aggregate, group_by),
        retracts=True,
    )


def _key_outputs(select: exp.Select, group_by: list[str]) -> list[str | None]:
    """The output column of each GROUP BY column of ``select`` (None: not selected as such)."""
    key_outputs: list[str | None] = []
    for column in group_by:
        output = None
        for projection in select.expressions:
            body = projection.this if isinstance(projection, exp.Alias) else projection
            if isinstance(body, exp.Column) and body.name == column:
                output = projection.alias_or_name
        key_outputs.append(output)
    return key_outputs


def _plan_recompute(
    select: exp.Select, subquery: exp.Subquery, derived: dict[str, Operator]
) -> Recompute | None:
    """An aggregate over an updating subquery (e.g. Nexmark q4: AVG over MAX per auction)."""
    if select.args.get("group") is None or not isinstance(subquery.this, exp.Select):
        return None
    inner = _plan_select(subquery.this, derived)
    if not (isinstance(inner, WindowAggregate) and inner.window is None):
        return None
    name = f"__derived_{len(derived)}"
    derived[name] = inner
    alias = subquery.alias_or_name or name
    outer = select.copy()
    outer.args["from_"].this.replace(exp.to_table(name).as_(alias))
    group_by = []
    for key in select.args["group"].expressions:
        if not isinstance(key, exp.Column):
            return None
        group_by.append(key.name)
    return Recompute(
        name, to_datafusion(outer), list(inner.keys), group_by, _key_outputs(select, group_by)
    )


def source_tables(query: exp.Expr) -> list[exp.Table]:
    """Table references in ``query`` that are not its own CTEs."""
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    return [
        t
        for t in query.find_all(exp.Table)
        if t.name and t.name not in ctes and not isinstance(t.this, exp.Func)
    ]


def plan_temporal_join(select: exp.Select) -> TemporalJoin | None:
    """The temporal join of ``select`` (``JOIN t FOR SYSTEM_TIME AS OF x.ts``), if it has one."""
    joins = select.args.get("joins") or []
    if len(joins) != 1 or not isinstance(joins[0].this, exp.Table):
        return None
    join, right = joins[0], joins[0].this
    version = right.args.get("version")
    if version is None:
        return None
    left = select.args["from_"].this
    if not isinstance(left, exp.Table) or isinstance(left.this, exp.Func):
        raise sql_error("a temporal join probes a stream directly", left)
    if join.side and join.side.upper() != "LEFT":
        raise sql_error("a temporal join is INNER or LEFT", join)
    left_alias, right_alias = left.alias_or_name, right.alias_or_name
    at = version.expression
    if not isinstance(at, exp.Column) or (at.table and at.table != left_alias):
        raise sql_error("FOR SYSTEM_TIME AS OF takes a time column of the probe side", at)
    probe_keys, version_keys = [], []
    for item in conjuncts(join.args.get("on")):
        if isinstance(item, exp.EQ) and all(
            isinstance(x, exp.Column) for x in (item.this, item.expression)
        ):
            a, b = item.this, item.expression
            if a.table == right_alias and b.table == left_alias:
                a, b = b, a
            if a.table == left_alias and b.table == right_alias:
                probe_keys.append(a.name)
                version_keys.append(b.name)
    if not probe_keys:
        raise sql_error("a temporal join needs an equality on the versioned table's key", join)
    rewritten = select.copy()
    rewritten.args["from_"].this.replace(exp.to_table("__left").as_(left_alias))
    new_join = rewritten.args["joins"][0]
    new_join.this.replace(exp.to_table("__right").as_(right_alias))
    row = exp.EQ(
        this=exp.column(ROW, table=left_alias), expression=exp.column(ROW, table=right_alias)
    )
    on = new_join.args.get("on")
    new_join.set("on", exp.and_(row, on) if on is not None else row)
    return TemporalJoin(
        left.name, right.name, to_datafusion(rewritten), at.name, probe_keys, version_keys
    )


def _plan_join(
    select: exp.Select, joins: list[exp.Join], derived: dict[str, Operator] | None = None
) -> StreamJoin | TemporalJoin | WindowAggregate | Recompute:
    temporal = plan_temporal_join(select)
    if temporal is not None:
        return temporal
    if len(joins) != 1:
        raise sql_error("a continuous query joins two streams at most (for now)", joins[1])
    join = joins[0]
    if (join.kind or "").upper() in ("SEMI", "ANTI"):
        raise sql_error(
            f"{join.kind.upper()} JOIN of unwindowed streams is not supported; use a window join",
            join,
        )
    left = select.args["from_"].this
    right = join.this
    for side in (left, right):
        if not isinstance(side, exp.Table) or isinstance(side.this, exp.Func):
            raise sql_error("a continuous join reads two streams directly", side)
    if select.args.get("group") is not None or any(True for _ in select.find_all(exp.AggFunc)):
        return _aggregate_over_join(select, derived)
    left_alias, right_alias = left.alias_or_name, right.alias_or_name
    if left_alias == right_alias:
        raise sql_error("a self-join needs an alias on each side", right)
    where = select.args.get("where")
    parts = [c for c in (join.args.get("on"), where.this if where is not None else None) if c]
    condition = exp.and_(*parts) if parts else None
    candidates = tuple(candidate_bounds(condition, left_alias, right_alias))
    rewritten = select.copy()
    rewritten.args["from_"].this.replace(exp.to_table("__left").as_(left_alias))
    rewritten.args["joins"][0].this.replace(exp.to_table("__right").as_(right_alias))
    bound = candidates[0] if candidates else None
    outer = None
    side = (join.side or "").upper()
    if side in ("LEFT", "RIGHT", "FULL"):
        outer = _outer_variants(rewritten, left_alias, right_alias, side)
    return StreamJoin(left.name, right.name, to_datafusion(rewritten), bound, candidates, outer)


def _outer_variants(select: exp.Select, left: str, right: str, side: str) -> OuterJoin:
    """The INNER, LEFT and RIGHT forms of an outer join, each projecting the row ids."""

    def variant(kind: str | None) -> str:
        form = select.copy()
        form.set(
            "expressions",
            [
                *form.expressions,
                exp.column("__lid", table=left).as_("__lid"),
                exp.column("__rid", table=right).as_("__rid"),
            ],
        )
        form.args["joins"][0].set("side", kind)
        return to_datafusion(form)

    return OuterJoin(
        inner_sql=variant(None),
        left_sql=variant("LEFT"),
        right_sql=variant("RIGHT"),
        keep_left=side in ("LEFT", "FULL"),
        keep_right=side in ("RIGHT", "FULL"),
    )


def _plan_window(rest: exp.Select, spec: WindowSpec | None, table: exp.Table) -> WindowAggregate:
    group = rest.args.get("group")
    keys = [
        g
        for g in (group.expressions if group is not None else [])
        if not (isinstance(g, exp.Column) and g.name in WINDOW_COLUMNS)
    ]
    if spec is not None and spec.kind == WindowKind.SESSION:
        # Sessions are tracked per group key; a TVF without PARTITION BY means sessions over
        # all rows, which grouped by further keys the session operator cannot produce.
        key_names = {k.name if isinstance(k, exp.Column) else k.sql() for k in keys}
        if set(spec.partition_by) != key_names:
            raise sql_error(
                "a continuous SESSION window must group by exactly its PARTITION BY keys "
                f"(PARTITION BY {', '.join(sorted(key_names)) or '(none)'} in its TABLE argument)",
                group,
            )
    aggregates: list[AggregateCall] = []
    arguments: list[exp.Expr] = []

    def argument(expr: exp.Expr) -> str:
        arguments.append(expr)
        return f"__a{len(arguments) - 1}"

    def take_aggregate(node: exp.Expr) -> exp.Expr:
        condition = None
        agg = node
        if isinstance(node, exp.Filter):
            agg, condition = node.this, node.expression.this
        if not isinstance(agg, exp.AggFunc):
            return node
        output = f"__agg{len(aggregates)}"
        inner = agg.this
        if isinstance(agg, exp.Count):
            if isinstance(inner, exp.Distinct):
                if len(inner.expressions) != 1:
                    raise sql_error("COUNT(DISTINCT ...) takes one expression here", agg)
                value = _when(condition, inner.expressions[0].copy())
                aggregates.append(
                    AggregateCall(output, AggregateFunction.COUNT_DISTINCT, argument(value))
                )
            elif isinstance(inner, exp.Star) or inner is None:
                if condition is None:
                    aggregates.append(AggregateCall(output, AggregateFunction.COUNT_ALL))
                else:
                    value = _when(condition, exp.Literal.number(1))
                    aggregates.append(
                        AggregateCall(output, AggregateFunction.COUNT, argument(value))
                    )
            else:
                aggregates.append(
                    AggregateCall(
                        output, AggregateFunction.COUNT, argument(_when(condition, inner.copy()))
                    )
                )
        elif type(agg) in _AGGREGATES:
            if isinstance(inner, exp.Distinct):
                raise sql_error(
                    f"{agg.key.upper()}(DISTINCT ...) is not supported in windows yet", agg
                )
            aggregates.append(
                AggregateCall(
                    output, _AGGREGATES[type(agg)], argument(_when(condition, inner.copy()))
                )
            )
        else:
            raise sql_error(
                f"aggregate {agg.sql(dialect='postgres')} cannot be computed incrementally yet "
                "(supported: COUNT, COUNT(DISTINCT), SUM, AVG, MIN, MAX)",
                agg,
            )
        return exp.column(output)

    key_columns = [f"__k{i}" for i in range(len(keys))]

    def rewrite(node: exp.Expr) -> exp.Expr:
        for key, name in zip(keys, key_columns, strict=True):
            if node == key:
                return exp.column(name)
        if isinstance(node, exp.Column) and (
            node.name in WINDOW_COLUMNS or node.name.startswith("__")
        ):
            return exp.column(node.name)
        if isinstance(node, exp.Column):
            raise sql_error(f"column {node.sql()} must be in GROUP BY or inside an aggregate", node)
        return node

    key_outputs: list[str | None] = [None] * len(keys)
    outputs = []
    for projection in rest.expressions:
        alias = projection.alias if isinstance(projection, exp.Alias) else None
        body = projection.this if isinstance(projection, exp.Alias) else projection
        if isinstance(body, exp.Star):
            raise sql_error("SELECT * is not allowed with GROUP BY", body)
        if alias is None:
            alias = (
                body.name if isinstance(body, exp.Column) else body.sql(dialect="postgres").lower()
            )
        rewritten = body.copy().transform(take_aggregate).transform(rewrite)
        outputs.append(exp.alias_(rewritten, alias, quoted=True))
        if isinstance(rewritten, exp.Column) and rewritten.name in key_columns:
            key_outputs[key_columns.index(rewritten.name)] = alias
    post = exp.select(*outputs).from_(FLOWS)
    keyed_post = exp.select(*outputs, *(exp.column(k) for k in key_columns)).from_(FLOWS)
    having = rest.args.get("having")
    if having is not None:
        condition = having.this.copy().transform(take_aggregate).transform(rewrite)
        post = post.where(condition)
        keyed_post = keyed_post.where(condition.copy())
    order = rest.args.get("order")
    if order is not None and spec is None:  # an updating aggregate: its rows have no order
        raise _order_error(order.expressions[0])
    if order is not None:
        post.set("order", order.copy().transform(take_aggregate).transform(rewrite))

    alias = table.alias or table.name
    pre = exp.select(
        *(k.copy().as_(n) for k, n in zip(keys, key_columns, strict=True)),
        *([exp.column(spec.time_column).as_("__ts")] if spec is not None else []),
        *(a.as_(f"__a{i}") for i, a in enumerate(arguments)),
        # which source rows were late (the late-row side output) — windows only
        *(
            [exp.column("_partition").as_("__partition"), exp.column("_offset").as_("__offset")]
            if spec is not None
            else []
        ),
    ).from_(exp.to_table(table.name).as_(alias) if table.alias else exp.to_table(table.name))
    where = rest.args.get("where")
    if where is not None:
        pre.set("where", where.copy())
    return WindowAggregate(
        source=table.name,
        window=spec,
        pre_sql=to_datafusion(pre),
        keys=key_columns,
        key_sql=[k.sql(dialect="postgres") for k in keys],
        key_outputs=key_outputs,
        aggregates=aggregates,
        post_sql=to_datafusion(post),
        keyed_post_sql=to_datafusion(keyed_post),
    )


def _when(condition: exp.Expr | None, value: exp.Expr) -> exp.Expr:
    if condition is None:
        return value
    return exp.Case(ifs=[exp.If(this=condition.copy(), true=value)])


def check_columns(
    plan: ContinuousPlan, statement: exp.Expr, columns: dict[str, pa.DataType]
) -> None:
    """Raise a located :class:`SqlError` if ``statement`` names a column its source lacks, or
    windows on a column that is not a TIMESTAMP. ``columns``: every column of the source (name
    -> Arrow type, ``pa.null()`` when not known yet), metadata columns included.
    """
    query = statement.expression if isinstance(statement, exp.Insert | exp.Create) else statement
    if query is None or len(plan.sources) > 1:  # joins: each side is checked by its operator
        return
    aliases = {e.alias for e in query.find_all(exp.Alias) if e.alias}
    known = set(columns) | set(WINDOW_COLUMNS) | aliases
    for column in query.find_all(exp.Column):
        if column.name not in known:
            raise sql_error(
                f"unknown column {column.name!r} in {plan.source!r} "
                f"(its columns: {', '.join(c for c in columns if not c.startswith('_'))})",
                column,
            )
    window = getattr(plan.operator, "window", None)
    if window is None:
        return
    kind = columns.get(window.time_column)
    if kind is None or pa.types.is_null(kind) or pa.types.is_timestamp(kind):
        return
    located: exp.Expr = query
    for column in query.find_all(exp.Column):
        call = column.find_ancestor(exp.Anonymous)
        if (
            column.name == window.time_column
            and call is not None
            and (call.name.upper() in KINDS or call.name.upper() == "DESCRIPTOR")
        ):
            located = column
            break
    raise sql_error(
        f"{window.kind.upper()} window on column {window.time_column!r} of type {kind}: "
        "the time column must be a TIMESTAMP (declare it as TIMESTAMP(3) in CREATE STREAM)",
        located,
    )
