"""The plan nodes of continuous queries: what each operator reads, computes and keeps, and the
``EXPLAIN`` lines that say so. Planning them is :mod:`streamhouse.sql.plan`'s."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

from sqlglot import exp

from streamhouse.sql.aggregates import AggregateCall
from streamhouse.sql.bounds import TimeBound
from streamhouse.sql.changelog import ROW_KEY, ChangelogMode, PlanNode
from streamhouse.sql.over import OverAggregate
from streamhouse.sql.window_rows import WindowRows
from streamhouse.sql.window_spec import WindowKind, WindowSpec

FLOWS = "__windows"
"""Name the post-aggregation SQL reads the finalized window rows from."""


ALL_ROWS = "__all"
"""The constant column an aggregate without GROUP BY over an outer join groups by: one group."""


ROW = "__temporal_row"
"""The column a temporal join's inputs carry their row number in (see :mod:`streamhouse.joins.temporal`)."""


PASSED = "*"
""":attr:`Stateless.time_column` of an input that passes every source column on as it is (an
UNNEST's expansion): the source's time attribute among them, whatever its name."""


@dataclass(frozen=True)
class Stateless(PlanNode):
    """A filter/projection: ``sql`` runs over each micro-batch registered as ``source``."""

    source: str
    sql: str
    metadata: bool = False  # reads every metadata column (an input of a window over a union)
    time_column: str | None = None  # the source's time attribute, passed on as it is (OVER)
    # the columns identifying each row (an UNNEST's expansion: the source row's position and
    # its element numbers), by which a window's late rows are traced back; () when none do
    identity: tuple[str, ...] = ()
    # the SQL whose plan names the output columns, when ``sql`` aliases them by position
    # (:func:`streamhouse.sql.functions.stateless_sql`); None: ``sql`` names them
    names_sql: str | None = None

    @property
    def keeps_metadata(self) -> bool:
        return self.metadata

    @property
    def time_source(self) -> str | None:
        return self.source if self.time_column is not None else None

    def explain(self) -> list[str]:
        lines = [f"Stateless  source={self.source}", f"  sql: {self.sql}"]
        if self.identity:
            lines.append(f"  row identity: ({', '.join(self.identity)})")
        return lines


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
        aggs = ", ".join(f"{a.func}({a.arg or '*'}) AS {a.output}" for a in self.aggregates)
        aggs = aggs or "none (the keys alone: DISTINCT)"
        if w is None:
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
    bound: TimeBound | None  # None until resolved (ContinuousPlan.join_bound)
    # every pair of columns the condition bounds; the join evicts by the one between the
    # inputs' time attributes (see sql.bounds.evictable_bound), the others are filters
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
            if self.candidates:  # comparisons, but none between the inputs' time attributes
                kind += " (its column comparisons are filters: none is between time attributes)"
        else:
            lo = f"right.{b.right_column} - {b.before_ms}ms <= " if b.before_ms is not None else ""
            hi = f" <= right.{b.right_column} + {b.after_ms}ms" if b.after_ms is not None else ""
            kind = f"interval: {lo}left.{b.left_column}{hi}"
            evict = (
                "left rows older than watermark - before, right rows older than watermark - after"
                " (the bound between the inputs' time attributes; other comparisons are filters)"
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

    @property
    def tables(self) -> dict[str, TemporalJoin]:
        """The join by the name ``sql`` reads its matched rows under (as :class:`TemporalStar`)."""
        return {"__right": self}

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
class TemporalStar(PlanNode):
    """One probe stream joined with several versioned (or lookup) tables, each ``FOR
    SYSTEM_TIME AS OF`` the probe's time on keys of the probe (a star schema):
    ``FROM f AS o JOIN d1 FOR SYSTEM_TIME AS OF o.t AS u ON o.k1 = u.k JOIN d2 FOR SYSTEM_TIME
    AS OF o.t AS r ON o.k2 = r.k``. Each join matches every probe row with a row of its table
    on its own (``joins[i]``, whose ``sql`` is not run); ``sql`` runs over the probes
    (``__left``) and each table's matched rows (``__right0``, ``__right1``, ...), joined on
    the probe row (see :mod:`streamhouse.joins.temporal`)."""

    joins: tuple[TemporalJoin, ...]
    sql: str

    @property
    def source(self) -> str:
        return self.joins[0].left

    @property
    def sources(self) -> list[str]:
        return sorted({self.source, *(j.right for j in self.joins)})

    @property
    def tables(self) -> dict[str, TemporalJoin]:
        """Each join by the name ``sql`` reads its matched rows under."""
        return {f"__right{i}": join for i, join in enumerate(self.joins)}

    def explain(self) -> list[str]:
        lines = [f"TemporalStar  {self.source} with {len(self.joins)} versioned tables"]
        for name, join in self.tables.items():
            keys = ", ".join(
                f"{p} = {v}" for p, v in zip(join.probe_keys, join.version_keys, strict=True)
            )
            lines.append(f"  {name}: AS OF {join.probe_time} versions of {join.right} ON {keys}")
        return [
            *lines,
            f"  sql: {self.sql}",
            "  state: column family 'joins', b'P' -> IPC(probe rows waiting for the watermark),"
            " b'V', b'V1', ... -> IPC(each table's versions)",
            "  eviction: probe rows leave once joined; per table and key, versions older than"
            " the one current at the watermark",
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
    # the output is keyed by (partition, rank), a Top-N's: a key the touched groups output
    # before the micro-batch and not after is tombstoned
    ranks: bool = False

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
    def upsert_key(self) -> str:
        if self.ranks and not self.key_columns:  # a filter of rows no columns key
            return "input row key"
        return super().upsert_key

    @property
    def reads_row_keys(self) -> bool:
        """Only when rows are kept by row key, or retracted by it: the latest row per group
        keys of the aggregate under it (Nexmark q4) needs neither."""
        return self.retracts or ROW_KEY in self.input_keys

    @property
    def one_group(self) -> bool:
        """An aggregate without GROUP BY: its one group has the record key ``{}``."""
        return self.group_by == [ALL_ROWS]

    def explain(self) -> list[str]:
        retracted = (
            "; a retracted key is kept as a dead row (__live false)" if self.retracts else ""
        )
        if self.ranks:
            per_row = self.group_by == self.input_keys  # a filter/projection of each row
            what = "each input row" if per_row else "Top-N per"
            return [
                f"Recompute  {what} ({', '.join(self.group_by) or 'all rows'}) over the latest"
                f" row per ({', '.join(self.input_keys)}) of {self.source} (updating: each touched"
                f" {'row' if per_row else 'partition'} recomputed before and after a micro-batch;"
                f" an upsert per ({self.upsert_key}), a tombstone for a row gone)",
                f"  sql: {self.sql}",
                "  state: column family 'sessions', key b'recompute'|u32(run) -> IPC(latest input"
                f" rows of changed keys{retracted})",
            ]
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
    # an input updates: every row is keyed by its input and its key there (append-only
    # inputs' rows by a sequence number), and each input's retractions are passed on
    keyed: bool = False
    # every input passes its stream's time attribute on at the position of this column (the
    # input of an OVER), whatever the input names it there
    time_column: str | None = None

    @property
    def time_source(self) -> str | None:
        return self.inputs[0] if self.time_column is not None else None

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.UPSERT if self.keyed else ChangelogMode.APPEND

    @property
    def accepts(self) -> frozenset[ChangelogMode]:
        if self.keyed:
            return frozenset({ChangelogMode.APPEND, ChangelogMode.UPSERT})
        return super().accepts

    @property
    def upsert_key(self) -> str:
        return "input, its row key"

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
            "  state: none"
            + (
                " but b'union_seq' -> u64 (the sequence keying append-only inputs' rows)"
                if self.keyed
                else ""
            ),
        ]


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
    # the plain columns of the ranking's ORDER BY, whatever else the query does (a PROCTIME()
    # column among them ties a micro-batch's rows: they are ranked by arrival, see TopNRanking)
    rank_order: tuple[str, ...] = ()

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


RANKED = "__ranked"
"""The table :attr:`TopN.output_sql` reads: the retained rows with their rank."""


Operator = Union[
    "Stateless",
    "WindowAggregate",
    "Windowed",
    "StreamJoin",
    "TopN",
    "TemporalJoin",
    "TemporalStar",
    "Recompute",
    "TimeSort",
    "UnionAll",
    "OverAggregate",
    "WindowRows",
]


SelectPlanner = Callable[[exp.Select, dict[str, Operator]], Operator]
"""Plans one SELECT, adding the derived inputs it needs: the planners of nested queries (a
union's inputs, a join's, a ranking's) call back into :func:`streamhouse.sql.plan.plan_select`
through it."""
