"""Every plan node's operator behind the one :class:`~streamhouse.runtime.operator.Operator`
interface: a small adapter per node type turns a micro-batch into the calls its executor
(:mod:`streamhouse.windows`, :mod:`streamhouse.joins`, :mod:`streamhouse.views`) takes, and its
answer into a changelog.

:func:`open_operator` builds the operator of a plan node and :func:`checks` lists the SQL the
node runs over its inputs' schemas (planned on empty inputs before a query starts); both look
the node's type up in :data:`ADAPTERS`, the one place that knows which adapter runs which node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.joins.changelog_join import ChangelogJoinOperator, spelled_out
from streamhouse.joins.lookup import LookupVersions
from streamhouse.joins.stream_join import LEFT, RIGHT, StreamJoin
from streamhouse.joins.temporal import (
    EventTimeVersions,
    LatestVersions,
    TemporalJoin,
    Versions,
    versions_key,
)
from streamhouse.joins.windowed import Panes, WindowedQuery
from streamhouse.runtime.operator import Changelog, MicroBatch, Operator, QueryContext
from streamhouse.runtime.sink import json_strings, key_strings, row_keys
from streamhouse.sql import nodes
from streamhouse.sql.arrival import ARRIVAL
from streamhouse.sql.bounds import evictable_bound
from streamhouse.sql.changelog import ROW_KEY, PlanNode
from streamhouse.sql.changelog_join import ChangelogJoin
from streamhouse.sql.execute import output_names, run_sql
from streamhouse.sql.lookup import is_proctime, lookup_join_of, lookup_schema
from streamhouse.sql.nodes import FLOWS, ROW
from streamhouse.sql.over import FRESH, ROW_INDEX, OverAggregate
from streamhouse.sql.parse import node_position
from streamhouse.sql.projection import declared_stars_sql
from streamhouse.sql.source import METADATA_COLUMNS
from streamhouse.sql.unnest import ELEMENT
from streamhouse.sql.window_rows import WindowRows
from streamhouse.state.store import ColumnFamily, StateView
from streamhouse.views.group_by import GroupAggregate
from streamhouse.views.recompute import RecomputeOperator
from streamhouse.views.top_n import TopNOperator
from streamhouse.windows.operator import SessionOperator, WindowOperator, make_operator
from streamhouse.windows.over import OverAggregateOperator
from streamhouse.windows.table import event_time_ms, window_table
from streamhouse.windows.time_sort import TimeSortOperator

GLOBAL_KEY = b"{}"
"""The record key of an updating aggregate without GROUP BY: its one group."""

Check = tuple[str, dict[str, pa.Schema | None]]
"""SQL a node runs and the schemas of the tables it runs over."""

Node = TypeVar("Node", bound=PlanNode)


def run_ordered(sql: str, tables: dict[str, pa.Table]) -> pa.Table:
    """``sql`` on one partition: a replayed micro-batch must give the same rows in the same
    order, or the exactly-once sink would skip the wrong ones."""
    return run_sql(sql, tables, ordered=True)


class Adapter(Generic[Node]):
    """An operator for one plan node; subclasses say how a micro-batch reaches the executor."""

    def __init__(self, node: Node, state: StateView, context: QueryContext) -> None:
        self.node = node
        self.context = context

    @classmethod
    def open(cls, node: Node, state: StateView, context: QueryContext) -> Operator:
        """The operator of ``node``."""
        return cls(node, state, context)

    @staticmethod
    def checks(node: Node, context: QueryContext) -> list[Check]:
        """The SQL the node runs, over the schemas of its inputs."""
        return []

    @property
    def state_size(self) -> int:
        return 0

    def process(self, batch: MicroBatch) -> Changelog:
        raise NotImplementedError

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


class StatelessSql(Adapter[nodes.Stateless]):
    """A filter/projection: the node's SQL over each micro-batch."""

    @staticmethod
    def checks(node: nodes.Stateless, context: QueryContext) -> list[Check]:
        schema = context.schema(node.source)
        texts = [node.sql] if node.names_sql is None else [node.sql, node.names_sql]
        return [
            (
                sql if schema is None else _declared_stars(sql, node.source, schema),
                {node.source: schema},
            )
            for sql in texts
        ]

    def __init__(self, node: nodes.Stateless, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        self._names: tuple[pa.Schema, list[str]] | None = None  # by the input's schema

    def process(self, batch: MicroBatch) -> Changelog:
        rows = batch.inputs[self.node.source]
        if rows is None:
            return Changelog()
        sql = _declared_stars(self.node.sql, self.node.source, rows.schema)
        outputs = run_ordered(sql, {self.node.source: rows})
        if self.node.names_sql is not None:
            outputs = outputs.rename_columns(self._output_names(rows.schema))
        return Changelog(outputs)

    def _output_names(self, schema: pa.Schema) -> list[str]:
        """The output's names as ``names_sql`` has them, over rows of ``schema``."""
        if self._names is None or not self._names[0].equals(schema):
            sql = _declared_stars(self.node.names_sql or "", self.node.source, schema)
            names = output_names(sql, {self.node.source: schema.empty_table()})
            self._names = (schema, names)
        return self._names[1]


class WindowRowsAssign(Adapter[WindowRows]):
    """A window TVF's rows: each input row once per window it falls in, window columns added."""

    def process(self, batch: MicroBatch) -> Changelog:
        rows = batch.inputs[self.node.source]
        if rows is None:
            return Changelog()
        return Changelog(window_table(rows, self.node.window))


def _declared_stars(sql: str, source: str, schema: pa.Schema) -> str:
    """``*`` over the source as its declared columns: the metadata columns the query names are
    in the rows too, and must not come out twice (``SELECT *, _offset``)."""
    return declared_stars_sql(sql, {source: schema}, METADATA_COLUMNS)


class Executor(Protocol):
    """What every stateful executor has: a size, and staged state to keep or forget."""

    @property
    def open_windows(self) -> int: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class _Stateful(Adapter[Node]):
    """An adapter whose executor keeps state: it reports, commits and rolls back the executor's."""

    executor: Executor

    @property
    def state_size(self) -> int:
        return self.executor.open_windows

    def commit(self) -> None:
        self.executor.commit()

    def rollback(self) -> None:
        self.executor.rollback()


class WindowAggregation(_Stateful[nodes.WindowAggregate]):
    """A windowed GROUP BY: partials merged into state, final rows as windows close."""

    executor: WindowOperator | SessionOperator

    def __init__(
        self, node: nodes.WindowAggregate, state: StateView, context: QueryContext
    ) -> None:
        super().__init__(node, state, context)
        self.executor = make_operator(node, state, context.options.allowed_lateness_ms)
        self.late_topic = context.options.late_topic
        # at parallelism > 1 routed by window (a join of its windows, routing.Routing.reach):
        # which window starts this task evaluates; it may hold rows of other windows too
        self.owns: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def open(cls, node: nodes.WindowAggregate, state: StateView, context: QueryContext) -> Operator:
        """A GROUP BY with a window (append-only) or without one (upserts)."""
        if node.window is None:
            return GroupAggregation(node, state, context)
        return cls(node, state, context)

    @staticmethod
    def checks(node: nodes.WindowAggregate, context: QueryContext) -> list[Check]:
        return [(node.pre_sql, {node.source: context.schema(node.source, all_metadata=True)})]

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        out = Changelog()
        table = batch.inputs[node.source]
        if table is not None:
            pre = run_ordered(node.pre_sql, {node.source: table})
            ts, valid = event_time_ms(pre, "__ts")
            if not valid.all():
                pre, ts = pre.filter(pa.array(valid)), ts[valid]
            late = self.executor.process(pre, ts, batch.previous_watermark, batch.state)
            out.late = len(late) if self.owns is None else self._late_here(ts[late])
            if out.late and self.late_topic and "__partition" in pre.column_names:
                out.late_rows = _rows_by_position(table, pre.take(pa.array(late)))
        emitted = self.executor.emit(batch.watermark, batch.state)
        if emitted is not None and self.owns is not None:
            starts = pc.cast(emitted["window_start"], pa.int64()).to_numpy()
            emitted = emitted.filter(pa.array(self.owns(starts)))
        if emitted is not None and emitted.num_rows:
            out.rows = run_ordered(node.post_sql, {FLOWS: emitted})
        return out

    def _late_here(self, ts: np.ndarray) -> int:
        """Late rows counted once over the tasks: at the task owning their last window."""
        assert self.owns is not None and self.node.window is not None
        panes = Panes.of(self.node.window)
        return int(np.count_nonzero(self.owns(panes.window_starts(panes.start(ts))[:, 0])))


class GroupAggregation(_Stateful[nodes.WindowAggregate]):
    """A GROUP BY without a window: an upsert per changed group, a tombstone when HAVING drops
    one (the one group of an aggregate without GROUP BY has the record key ``{}``)."""

    executor: GroupAggregate

    def __init__(
        self, node: nodes.WindowAggregate, state: StateView, context: QueryContext
    ) -> None:
        super().__init__(node, state, context)
        self.executor = GroupAggregate(node, state)

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        table = batch.inputs[node.source]
        if table is None:
            return Changelog()
        pre = run_ordered(node.pre_sql, {node.source: table})
        changed = self.executor.process(pre, batch.state)
        if changed is None or not changed.num_rows:
            return Changelog()
        if batch.derived:  # rows keyed by their group (__k..), for the operator over them
            outputs = run_ordered(node.keyed_post_sql, {FLOWS: changed})
            # a row per changed group that HAVING keeps: none dropped when the counts agree
            dropped = changed if outputs.num_rows < changed.num_rows else None
            return keyed_changes(outputs, dropped, node.keys, batch.row_keys)
        outputs = run_ordered(node.post_sql, {FLOWS: changed})
        retracted = self._dropped_keys(changed, outputs)
        if not node.keys:  # one group: one record key for all updates
            outputs = outputs.append_column(
                "__key", pa.array([GLOBAL_KEY] * outputs.num_rows, pa.binary())
            )
            if outputs.num_rows == 0:  # HAVING dropped the one group
                retracted = [GLOBAL_KEY]
        return Changelog(outputs, retracted)

    def _dropped_keys(self, changed: pa.Table, outputs: pa.Table) -> list[bytes]:
        """Keys of changed groups that HAVING no longer keeps: they get tombstones."""
        node = self.node
        names = node.key_outputs
        if not node.keys or any(n is None or n not in outputs.column_names for n in names):
            return []
        named = changed.select(node.keys).rename_columns(names)
        before = set(key_strings(named, names))
        after = set(key_strings(outputs, names))
        return sorted(k for k in before - after if k is not None)


class WindowedEvaluation(_Stateful[nodes.Windowed]):
    """A query over windowed inputs (a window join), evaluated once per closed window."""

    executor: WindowedQuery

    def __init__(self, node: nodes.Windowed, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        specs = {n: spec for n, (_, spec) in node.inputs.items()}
        self.executor = WindowedQuery(node.sql, state, specs)

    @staticmethod
    def checks(node: nodes.Windowed, context: QueryContext) -> list[Check]:
        return [(node.sql, {n: context.schema(s, True) for n, (s, _) in node.inputs.items()})]

    def process(self, batch: MicroBatch) -> Changelog:
        out = Changelog()
        for name, (source, _) in sorted(self.node.inputs.items()):
            rows = batch.inputs[source]
            if rows is not None:
                out.late += self.executor.process(name, rows, batch.previous_watermark, batch.state)
        schemas = {n: self.context.schema(s, True) for n, (s, _) in self.node.inputs.items()}
        out.rows = self.executor.emit(batch.watermark, schemas, batch.state)
        return out


class StreamJoining(_Stateful[nodes.StreamJoin]):
    """An interval or regular join (inner: appends; outer: upserts keyed by row ids)."""

    executor: StreamJoin

    def __init__(self, node: nodes.StreamJoin, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        left_time, right_time = context.time_column(node.left), context.time_column(node.right)
        bound = evictable_bound(list(node.candidates), left_time, right_time)
        ttl = context.options.state_ttl_ms or None
        self.executor = StreamJoin(node.sql, state, left_time, right_time, bound, ttl, node.outer)

    @staticmethod
    def checks(node: nodes.StreamJoin, context: QueryContext) -> list[Check]:
        schemas = {"__left": context.schema(node.left), "__right": context.schema(node.right)}
        return [(node.sql, schemas)]

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        left, right = batch.inputs[node.left], batch.inputs[node.right]
        out = Changelog()
        if left is not None or right is not None:
            schemas = {LEFT: self.context.schema(node.left), RIGHT: self.context.schema(node.right)}
            out.rows, out.retracted = self.executor.process(left, right, schemas, batch.state)
        self.executor.expire(batch.watermark, batch.state)
        return out


class ChangelogJoining(_Stateful[ChangelogJoin]):
    """A regular join over updating inputs: upserts keyed by the pair of input row keys, a
    tombstone per output row that stops matching."""

    executor: ChangelogJoinOperator

    def __init__(self, node: ChangelogJoin, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        schemas = [context.schema(node.left), context.schema(node.right)]
        node = spelled_out(node, schemas, METADATA_COLUMNS)
        self.node = node
        ttl = context.options.state_ttl_ms or None
        self.executor = ChangelogJoinOperator(node, state, schemas, ttl)

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        rows = [batch.inputs[node.left], batch.inputs[node.right]]
        retracted = [batch.retracted.get(node.left, []), batch.retracted.get(node.right, [])]
        if all(r is None for r in rows) and not any(retracted):
            self.executor.expire(batch.watermark, batch.state)
            return Changelog()
        after, before = self.executor.process(rows, retracted, batch.state, batch.watermark)
        self.executor.expire(batch.watermark, batch.state)  # rows this batch wrote are kept
        names = node.key_columns
        if batch.derived or not names or after is None and before is None:
            now = after[ROW_KEY] if after is not None else None
            return Changelog(after, gone_keys(before[ROW_KEY] if before is not None else None, now))
        # keyed by a surviving upsert key: the sink keys the rows by those columns
        now = set(key_strings(after, names)) if after is not None else set()
        was = set(key_strings(before, names)) if before is not None else set()
        rows = after.drop_columns([ROW_KEY]) if after is not None else None
        return Changelog(rows, sorted(k for k in was - now if k is not None))


class TemporalJoining(_Stateful[nodes.TemporalJoin | nodes.TemporalStar]):
    """A probe stream joined with one row of each of its versioned tables (one, or several in
    a star schema): an event-time table's version current at the probe's time; at processing
    time (``AS OF`` a ``PROCTIME()`` column), a lookup table's row ('connector'='jdbc') or a
    StreamHouse table's latest row of the key."""

    executor: TemporalJoin

    def __init__(
        self,
        node: nodes.TemporalJoin | nodes.TemporalStar,
        state: StateView,
        context: QueryContext,
    ) -> None:
        super().__init__(node, state, context)
        tables = {
            name: self._versions(join, versions_key(index), state)
            for index, (name, join) in enumerate(node.tables.items())
        }
        self.executor = TemporalJoin(node.sql, state, tables)

    def _versions(self, join: nodes.TemporalJoin, key: bytes, state: StateView) -> Versions:
        """How ``join``'s probe rows find their row of its table (state under ``key``)."""
        context = self.context
        dim, probe = context.lookup_table(join.right), context.definition(join.left)
        if dim is not None:
            if probe is None:
                raise context.error(
                    "a lookup join probes a declared stream with a PROCTIME() column, not"
                    f" {join.left!r}",
                    join.left,
                )
            try:
                keys = (join.probe_keys, join.version_keys)
                return LookupVersions(lookup_join_of(dim, probe, join.probe_time, *keys))
            except SqlError as error:
                raise context.error(error.message, join.right) from None
        schema = context.schema(join.right)
        if probe is not None and is_proctime(probe, join.probe_time):
            return LatestVersions(state, key, schema, join.probe_keys, join.version_keys)
        probe_time = context.time_column(join.left)
        if probe_time is not None and probe_time != join.probe_time:
            # versions older than the one current at the watermark are dropped: a probe row
            # AS OF another column may need one (Flink refuses it too)
            raise context.error(
                f"FOR SYSTEM_TIME AS OF takes the time attribute of {join.left!r}: its WATERMARK"
                f" column {probe_time!r} (or a PROCTIME() column), not {join.probe_time!r}",
                join.right,
            )
        version_time = context.time_column(join.right)
        if version_time is None:
            raise context.error(
                f"the versioned table {join.right!r} of a temporal join needs a time column: "
                "declare a WATERMARK for it",
                join.right,
            )
        return EventTimeVersions(
            state, key, schema, join.probe_time, join.probe_keys, version_time, join.version_keys
        )

    @staticmethod
    def checks(node: nodes.TemporalJoin | nodes.TemporalStar, context: QueryContext) -> list[Check]:
        row = pa.field(ROW, pa.int64())
        left = context.schema(node.source)
        schemas = {"__left": left.append(row) if left is not None else None}
        for name, join in node.tables.items():
            dim = context.lookup_table(join.right)
            right = lookup_schema(dim) if dim is not None else context.schema(join.right)
            schemas[name] = right.append(row) if right is not None else None
        return [(node.sql, schemas)]

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        rows = {name: batch.inputs.get(join.right) for name, join in node.tables.items()}
        probes = batch.inputs[node.source]
        return Changelog(self.executor.process(probes, rows, batch.watermark, batch.state))


class TopNRanking(_Stateful[nodes.TopN]):
    """Top-N per key: an upsert per (key, rank) that changed, a tombstone per one now empty."""

    executor: TopNOperator

    def __init__(self, node: nodes.TopN, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        self.executor = TopNOperator(node, state, _arrival(node, context))

    @staticmethod
    def checks(node: nodes.TopN, context: QueryContext) -> list[Check]:
        return [(node.sql, {node.source: context.schema(node.source)})]

    def process(self, batch: MicroBatch) -> Changelog:
        rows = batch.inputs[self.node.source]
        if rows is None:
            return Changelog()
        outputs, before = self.executor.process(rows, batch.state)
        if batch.derived:
            present = outputs if outputs is not None else before
            names = present.column_names if present is not None else []
            keys = [k for k in self.node.key_columns if k in names]
            return keyed_changes(outputs, before, keys, batch.row_keys)
        out = Changelog(outputs)
        if before is not None and before.num_rows:  # (key, rank) rows no longer output
            keys = self.node.key_columns
            now = set(key_strings(outputs, keys)) if outputs is not None else set()
            gone = set(key_strings(before, keys)) - now
            out.retracted = sorted(k for k in gone if k is not None)
        return out


def _arrival(node: nodes.TopN, context: QueryContext) -> str | None:
    """How a Top-N ordered by a ``PROCTIME()`` column breaks its ties, or None when it is not.

    A micro-batch's rows share one processing time, so they tie on it: as in Flink, where each
    row has its own, the earlier arrival ranks first ascending (deduplication keeps the first
    row) and the later one descending (it keeps the last). Arrival is the order the rows are
    read in (the kept rows, then the batch's by partition and offset), the same on a replay."""
    definition = context.definition(node.source)
    if definition is None:
        return None
    proctime = [c for c in node.rank_order if is_proctime(definition, c)]
    if not proctime:
        return None
    if node.order_by is None:
        window = context.statement.find(exp.Window)
        raise SqlError(
            f"ROW_NUMBER() OVER (... ORDER BY {proctime[0]}) over the processing-time column"
            f" {proctime[0]!r} (PROCTIME()) is supported continuously over the rows of"
            f" {node.source!r} as they are, ordered by plain columns: not with a WHERE in the"
            " ranking subquery or an ORDER BY expression (a micro-batch's rows tie on"
            " processing time and are ranked by arrival)",
            *node_position(window if window is not None else context.statement),
        )
    desc = dict(node.order_by)[proctime[0]]
    return "descending" if desc else "ascending"


class Recomputation(_Stateful[nodes.Recompute]):
    """A query over an updating input, re-run for the groups each micro-batch touches."""

    executor: RecomputeOperator

    def __init__(self, node: nodes.Recompute, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        self.executor = RecomputeOperator(node, state)

    def process(self, batch: MicroBatch) -> Changelog:
        node = self.node
        changes = batch.inputs[node.source]
        retracted = batch.retracted.get(node.source, [])
        if changes is None and not retracted:
            return Changelog()
        outputs, gone = self.executor.process(changes, batch.state, retracted)
        names = node.key_columns
        if node.ranks and not names:  # each row keyed by its input row's key (ROW_KEY)
            now = outputs[ROW_KEY] if outputs is not None else None
            return Changelog(outputs, gone_keys(gone[ROW_KEY] if gone is not None else None, now))
        if node.ranks:  # gone: the touched partitions' rows before
            if batch.derived:
                return keyed_changes(outputs, gone, names, batch.row_keys)
            now = set(key_strings(outputs, names)) if outputs is not None else set()
            before = set(key_strings(gone, names)) if gone is not None else set()
            return Changelog(outputs, sorted(k for k in before - now if k is not None))
        if batch.derived:
            if gone is not None and len(names) == len(gone.column_names):
                gone = gone.rename_columns(names)
            return keyed_changes(outputs, gone, names, batch.row_keys)
        if node.one_group:
            return _one_group(outputs, gone)
        out = Changelog(outputs)
        if gone is not None and gone.num_rows and len(names) == len(node.group_by):
            keyed = gone.rename_columns(names)
            out.retracted = [k for k in key_strings(keyed, names) if k is not None]
        return out


def keyed_changes(
    outputs: pa.Table | None, before: pa.Table | None, keys: list[str], keyed: bool = True
) -> Changelog:
    """The changelog of an updating operator whose rows feed another operator: each row keyed
    by :data:`~streamhouse.sql.changelog.ROW_KEY` (its ``keys`` as JSON), and a retraction per
    key of ``before`` (rows of keys the operator output or touched) that ``outputs`` no longer
    has. Not ``keyed`` (:attr:`MicroBatch.row_keys` false: the operator over the rows keys them
    by columns of its own): the rows as they are, and no retractions."""
    if not keyed:
        return Changelog(outputs)
    now = None
    if outputs is not None and outputs.num_rows:
        now = row_keys(outputs, keys)
        outputs = outputs.append_column(ROW_KEY, now)
    was = row_keys(before, keys) if before is not None and before.num_rows else None
    return Changelog(outputs, gone_keys(was, now))


def gone_keys(
    was: pa.Array | pa.ChunkedArray | None, now: pa.Array | pa.ChunkedArray | None
) -> list[bytes]:
    """The keys of ``was`` that ``now`` lacks, once each and sorted (NULLs left out), by Arrow
    kernels: the touched keys of a micro-batch are many, the gone ones few."""
    if was is None or not len(was):
        return []
    gone = pc.unique(pc.drop_null(was))
    if now is not None and len(now):
        gone = gone.filter(pc.invert(pc.is_in(gone, value_set=now)))
    return sorted(gone.to_pylist())


def _one_group(outputs: pa.Table | None, gone: pa.Table | None) -> Changelog:
    """The changelog of an aggregate without GROUP BY: its row under the record key ``{}``, or
    a tombstone for it when it has none."""
    if gone is not None and gone.num_rows:
        return Changelog(retracted=[GLOBAL_KEY])
    if outputs is None:
        return Changelog()
    keys = pa.array([GLOBAL_KEY] * outputs.num_rows, pa.binary())
    return Changelog(outputs.append_column("__key", keys))


class TimeSorting(_Stateful[nodes.TimeSort]):
    """A continuous ORDER BY the time attribute: rows released in order as the watermark
    passes them."""

    executor: TimeSortOperator

    def __init__(self, node: nodes.TimeSort, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        _check_time_attribute(node, context)
        self.executor = TimeSortOperator(node, state)

    @staticmethod
    def checks(node: nodes.TimeSort, context: QueryContext) -> list[Check]:
        schemas = {node.source: context.schema(node.source)}
        return [(node.pre_sql, schemas), (node.sql, schemas)]

    def process(self, batch: MicroBatch) -> Changelog:
        return _released(self.executor, self.node.source, batch)


class OverAggregation(_Stateful[OverAggregate]):
    """An OVER aggregation: rows released in time order as the watermark passes them, each
    with the aggregates of its frame."""

    executor: OverAggregateOperator

    def __init__(self, node: OverAggregate, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        _check_time_attribute(node, context)
        self.executor = OverAggregateOperator(node, state)

    @staticmethod
    def checks(node: OverAggregate, context: QueryContext) -> list[Check]:
        schema = context.schema(node.source)
        with_fresh = schema.append(pa.field(FRESH, pa.bool_())) if schema is not None else None
        if node.lead and with_fresh is not None:  # the rows' positions, to keep those that wait
            with_fresh = with_fresh.append(pa.field(ROW_INDEX, pa.int64()))
        if node.unbounded:  # the SELECT list runs over the running parts' output
            return [
                (node.pre_sql, {node.source: schema}),
                (node.running_sql, {node.source: schema}),
            ]
        return [
            (node.pre_sql, {node.source: schema}),
            (node.sql, {node.source: with_fresh}),
            (node.keep_sql, {node.source: schema}),
        ]

    def process(self, batch: MicroBatch) -> Changelog:
        return _released(self.executor, self.node.source, batch)


def _released(
    executor: TimeSortOperator | OverAggregateOperator, source: str, batch: MicroBatch
) -> Changelog:
    """The rows the micro-batch's watermark lets ``executor`` release, and its late rows."""
    rows, late = executor.process(
        batch.inputs[source], batch.previous_watermark, batch.watermark, batch.state
    )
    return Changelog(rows, late=late)


def _check_time_attribute(node: nodes.TimeSort | OverAggregate, context: QueryContext) -> None:
    """A continuous ORDER BY (or an OVER's) sorts on the source's time attribute (its WATERMARK
    column)."""
    time_column = context.time_column(node.source)
    if time_column == node.time_column:
        return
    order = context.statement.find(exp.Order)
    where = order.expressions[0] if order is not None else context.statement
    definition = context.definition(node.source)
    if definition is not None and is_proctime(definition, node.time_column):
        if not context.ordered_by_proctime:
            raise SqlError(
                f"an OVER or ORDER BY over the processing-time column {node.time_column!r}"
                " (PROCTIME()) runs continuously as the whole query over one stream (not in"
                " a subquery, UNION ALL or statement set)",
                *node_position(where),
            )
        if isinstance(node, OverAggregate):  # the query runs on the clock
            _check_proctime_frame(context)
        return
    reason = (
        f"the time attribute of {node.source!r} is {time_column!r}"
        if time_column is not None
        else context.missing_time_attribute(node.source)
    )
    instead = (
        f"; write ORDER BY {time_column or '<time attribute>'}, {node.time_column} to sort by"
        f" time, or ROW_NUMBER() OVER (ORDER BY {node.time_column} ...) <= N in a subquery for"
        " the first N rows (a Top-N)"
        if isinstance(node, nodes.TimeSort)
        else ""
    )
    raise SqlError(
        f"ORDER BY in a continuous query must start with the time attribute, ascending: "
        f"{node.time_column!r} is not it ({reason}){instead}",
        *node_position(where),
    )


def _check_proctime_frame(context: QueryContext) -> None:
    """An OVER ordered by a ``PROCTIME()`` column counts rows (LAG, LEAD, a ROWS frame) in
    arrival order (:func:`~streamhouse.sql.arrival.rows_by_arrival` adds it after the time: a
    micro-batch's rows share one processing time); one that could not be given it is
    refused rather than run in no order a replay could repeat."""
    for window in context.statement.find_all(exp.Window):
        spec = window.args.get("spec")
        counts_rows = isinstance(window.this, exp.Lag | exp.Lead) or (
            spec is not None and str(spec.args.get("kind") or "").upper() == "ROWS"
        )
        order = window.args.get("order")
        keys = [k.this for k in order.expressions] if order is not None else []
        if counts_rows and not any(
            isinstance(k, exp.Column) and k.name == ARRIVAL[-1] for k in keys
        ):
            raise SqlError(
                f"{window.this.sql(dialect='postgres')} OVER ordered by a processing-time"
                " column (PROCTIME()) counts rows in the order they arrive, over the columns"
                " of one stream read directly; this OVER reads no such stream",
                *node_position(spec if spec is not None else window),
            )


def _rows_by_position(source: pa.Table, late_pre: pa.Table) -> pa.Table:
    """The input rows behind late pre-projected rows: by source position (partition and
    offset), and for an UNNEST's expansion by element number too (a row the WHERE dropped, or
    another element of a late row's array, is not late)."""
    wanted = pc.add(
        pc.multiply(pc.cast(late_pre["__partition"], pa.int64()), 1 << 40), late_pre["__offset"]
    )
    have = pc.add(
        pc.multiply(pc.cast(source["_partition"], pa.int64()), 1 << 40), source["_offset"]
    )
    elements = [c for c in late_pre.column_names if c.startswith(ELEMENT)]
    if not elements:
        return source.filter(pc.is_in(have, value_set=pc.unique(wanted)))
    # element numbers start at 1: 0 stands for the NULL of a row LEFT JOIN UNNEST padded
    keys = ["__position", *elements]
    late = pa.table([wanted, *(pc.fill_null(late_pre[c], 0) for c in elements)], names=keys)
    rows = source.append_column("__row", pa.array(np.arange(source.num_rows)))
    probe = pa.table(
        [have, *(pc.fill_null(rows[c], 0) for c in elements), rows["__row"]], names=[*keys, "__row"]
    )
    found = probe.join(late.group_by(keys).aggregate([]), keys, join_type="left semi")
    return source.take(np.sort(found["__row"].to_numpy()))


class UnionAllRows(Adapter[nodes.UnionAll]):
    """UNION ALL: the rows of every input, renamed to the first input's column names. When an
    input updates (:attr:`~streamhouse.sql.nodes.UnionAll.keyed`), each row is keyed by its
    input's position and its row key there (an append-only input's rows by a sequence number,
    kept in state), and each input's retractions are passed on under those keys."""

    def __init__(self, node: nodes.UnionAll, state: StateView, context: QueryContext) -> None:
        super().__init__(node, state, context)
        stored = state.get(ColumnFamily.SESSIONS, UNION_SEQUENCE) if node.keyed else None
        self.sequence = self.committed = int(stored) if stored is not None else 0

    def commit(self) -> None:
        self.committed = self.sequence

    def rollback(self) -> None:
        self.sequence = self.committed

    def process(self, batch: MicroBatch) -> Changelog:
        if self.node.keyed:
            return self._keyed(batch)
        names = self.node.columns
        tables = [batch.inputs[name] for name in self.node.inputs]
        present = [t for t in tables if t is not None and t.num_rows]
        if not present:
            return Changelog()
        if names is not None:
            present = [t.rename_columns(list(names)) for t in present]
        return Changelog(pa.concat_tables(present, promote_options="permissive"))

    def _keyed(self, batch: MicroBatch) -> Changelog:
        names = list(self.node.columns or ())
        rows, gone = [], []
        for position, name in enumerate(self.node.inputs):
            table = batch.inputs[name]
            prefix = f"[{position},"
            if table is not None and table.num_rows:
                if ROW_KEY in table.column_names:
                    keys = table[ROW_KEY]
                    table = table.drop_columns([ROW_KEY])
                else:
                    numbers = np.arange(self.sequence, self.sequence + table.num_rows)
                    self.sequence += table.num_rows
                    keys = pc.cast(pa.array(numbers), pa.string())
                table = table.select(list(range(len(names)))).rename_columns(names)
                rows.append(table.append_column(ROW_KEY, _prefixed(prefix, keys)))
            retracted = batch.retracted.get(name, [])
            if retracted:
                gone += _prefixed(prefix, pa.array(retracted, pa.binary())).to_pylist()
        if self.sequence != self.committed:
            batch.state.put(ColumnFamily.SESSIONS, UNION_SEQUENCE, str(self.sequence).encode())
        out = pa.concat_tables(rows, promote_options="permissive") if rows else None
        return Changelog(out, gone)


UNION_SEQUENCE = b"union_seq"


def _prefixed(prefix: str, keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``keys`` as the JSON array ``[position,"key"]``."""
    quoted = json_strings(keys)
    joined = pc.binary_join_element_wise(prefix, quoted, "]", "")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return pc.cast(joined, pa.binary())


ADAPTERS: dict[type[PlanNode], type[Adapter]] = {
    nodes.Stateless: StatelessSql,
    nodes.WindowAggregate: WindowAggregation,
    nodes.Windowed: WindowedEvaluation,
    nodes.StreamJoin: StreamJoining,
    nodes.TemporalJoin: TemporalJoining,
    nodes.TemporalStar: TemporalJoining,
    ChangelogJoin: ChangelogJoining,
    nodes.TopN: TopNRanking,
    nodes.Recompute: Recomputation,
    nodes.TimeSort: TimeSorting,
    nodes.UnionAll: UnionAllRows,
    OverAggregate: OverAggregation,
    WindowRows: WindowRowsAssign,
}
"""The adapter of each plan node type."""


def _adapter(node: PlanNode) -> type[Adapter]:
    adapter = ADAPTERS.get(type(node))
    if adapter is None:
        raise StreamHouseError(f"no operator for {type(node).__name__}")
    return adapter


def checks(node: PlanNode, context: QueryContext) -> list[Check]:
    """The SQL ``node`` runs and the schemas of its inputs, to plan before the query starts."""
    return _adapter(node).checks(node, context)


def open_operator(node: PlanNode, state: StateView, context: QueryContext) -> Operator:
    """The operator that runs ``node``, its state restored from ``state``."""
    return _adapter(node).open(node, state, context)
