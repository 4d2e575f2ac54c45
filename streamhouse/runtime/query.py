"""Continuous queries: read new records in micro-batches, run the plan, write results, checkpoint.

One micro-batch:

1. read each source partition from its committed offset up to its high watermark (at most
   ``max-batch-records`` in all) and decode the rows (rows that do not parse go to the
   dead-letter topic with the reason);
2. advance per-partition event time; a source's watermark is the minimum over its partitions of
   ``max event time - declared delay`` (partitions idle longer than ``idle-timeout`` excluded),
   the query's the minimum over its sources, and it never goes back (:mod:`.sources`);
3. run the plan's operator: stateless SQL on DataFusion; a window aggregate (late rows counted
   and dropped or sent to the side output; closed windows emitted, then HAVING and the SELECT
   list on DataFusion); a windowed query or window join evaluated per closed window; an
   interval or regular join; an updating GROUP BY or Top-N (upserts per key);
4. write results to the sink as a Kafka transaction, commit state, source offsets, event
   times, the transaction and counters in one synced RocksDB write batch — a checkpoint —
   then commit the transaction.

Exactly once into a topic sink (a two-phase commit, :mod:`.two_phase`): a read_committed reader
sees a micro-batch's output once its checkpoint is durable, and never the output of an attempt
a crash cut short (its transaction is aborted when the query starts again). Before writing
results, the batch's end offsets, watermark and processing time are recorded as ``pending``, so
that the batch run again after a crash has the same bounds and produces the same rows.
Dead-letter and late-row side outputs are at least once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import FencedError, SqlError, StreamHouseError
from streamhouse.log import Log
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.records import Compression, build_batch
from streamhouse.runtime.branch import Branch
from streamhouse.runtime.operator import Changelog, MicroBatch
from streamhouse.runtime.operators import checks
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.sink import TopicSink
from streamhouse.runtime.sources import NO_WATERMARK, QuerySource
from streamhouse.runtime.two_phase import TwoPhaseCommit, transactional_id
from streamhouse.sql import nodes
from streamhouse.sql.arrival import rows_by_arrival
from streamhouse.sql.changelog import PlanNode
from streamhouse.sql.computed import ComputedColumns, wall_clock_ms
from streamhouse.sql.ddl import StreamDef, stream_definition
from streamhouse.sql.dead_letters import write_dead_letters
from streamhouse.sql.engine import hide_metadata, parse_failure, referenced_columns
from streamhouse.sql.execute import current_watermark, run_sql
from streamhouse.sql.hints import SourceOptions, source_options
from streamhouse.sql.inline import catalog_views, inline
from streamhouse.sql.join_chain import (
    catalog_column_types,
    catalog_proctime_columns,
    catalog_stream_columns,
    chain_stars,
)
from streamhouse.sql.lookup import is_lookup_table, is_proctime, lookup_schema
from streamhouse.sql.over import OverAggregate
from streamhouse.sql.parse import DIALECT, node_position, parse
from streamhouse.sql.plan import ContinuousPlan
from streamhouse.sql.plan_checks import check_columns
from streamhouse.sql.proctime_select import ProctimeStream, resolve_with, with_proctime_streams
from streamhouse.sql.source import METADATA_FIELDS, RejectedRow
from streamhouse.sql.statement_set import StatementSet
from streamhouse.sql.unnest import expand_row_elements
from streamhouse.sql.window_spec import WindowKind, WindowSpec
from streamhouse.state.remote import LeasedCheckpoints, download_checkpoint, upload_checkpoint
from streamhouse.state.store import (
    ColumnFamily,
    ScopedBatch,
    StateBatch,
    StateStore,
)
from streamhouse.windows.waiting import FINAL_WATERMARK

DEFINITION_KEY = b"definition"
"""``meta`` key: the statement the state was built by (views inlined), as SQL text."""

log = logging.getLogger(__name__)


SINK = b"sink/"
"""``meta`` key prefix of the sink high watermarks an older build replayed by (no longer written)."""
PENDING = b"pending"
COUNTERS = b"counters"
WATERMARK = b"watermark"


def _expanded(statement: exp.Expr, resolve: Callable[[str], tuple[str, Any] | None]) -> exp.Expr:
    """``statement`` with each UNNEST of an ARRAY<ROW> column expanded into the ROW's fields
    (:func:`~streamhouse.sql.unnest.expand_row_elements`), by the declared column types."""
    return expand_row_elements(statement, catalog_column_types(resolve, statement))


def _with_proctime_streams(
    statement: exp.Expr | StatementSet, resolve: Callable[[str], tuple[str, Any] | None]
) -> tuple[exp.Expr | StatementSet, Callable[[str], tuple[str, Any] | None]]:
    """``statement`` with its ``SELECT *, PROCTIME() AS p FROM s`` relations reading streams
    with a ``PROCTIME()`` column, and ``resolve`` knowing those streams."""
    streams: dict[str, ProctimeStream] = {}
    if isinstance(statement, StatementSet):
        inserts = []
        for insert in statement.inserts:
            rewritten, found = with_proctime_streams(insert, resolve)
            inserts.append(rewritten)
            streams |= found
        statement = StatementSet(tuple(inserts), statement.line, statement.column)
    else:
        statement, streams = with_proctime_streams(statement, resolve)
    return statement, resolve_with(resolve, streams)


def _rewritten(statement: exp.Expr, resolve: Callable[[str], tuple[str, Any] | None]) -> exp.Expr:
    views, columns = catalog_views(resolve), catalog_stream_columns(resolve)
    statement = _expanded(chain_stars(inline(statement, views), columns), resolve)
    return rows_by_arrival(statement, catalog_proctime_columns(resolve), columns)


def planned_statement(
    statement: exp.Expr, resolve: Callable[[str], tuple[str, Any] | None]
) -> tuple[exp.Expr, Callable[[str], tuple[str, Any] | None]]:
    """``statement`` (one, not a statement set) as a continuous query plans it: its
    ``PROCTIME()`` relations read as streams, views and CTEs inlined, stars spelled out; and
    ``resolve`` knowing those streams. A parallel query's launcher plans what its tasks plan."""
    statement, resolve = _with_proctime_streams(statement, resolve)
    assert not isinstance(statement, StatementSet)
    return _rewritten(statement, resolve), resolve


class ContinuousQuery:
    """A continuous query over one or two sources; runs in a background thread once started.

    Started by ``StreamHouse.start``: ``q = sh.start("queries/clicks.sql")``, then
    ``q.status()``, ``q.results()``, ``q.stop()``.
    """

    def __init__(
        self,
        log_: Log,
        resolve: Callable[[str], tuple[str, Any] | None],
        statement: exp.Expr | StatementSet,
        name: str,
        state_dir: Path,
        options: QueryOptions | None = None,
        on_results: Callable[[pa.Table], None] | None = None,
        fence: Lease | None = None,
    ) -> None:
        self.log = log_
        self.name = name
        self.fence = fence  # the lease every write of the query is fenced by (serve agents)
        self.options = options or QueryOptions()
        statement, resolve = _with_proctime_streams(statement, resolve)
        # views and CTEs inlined, filtering subqueries merged: the query over the streams
        views, columns = catalog_views(resolve), catalog_stream_columns(resolve)
        if isinstance(statement, StatementSet):
            inserts = [
                _expanded(chain_stars(inline(insert, views), columns), resolve)
                for insert in statement.inserts
            ]
            self.definition = StatementSet(tuple(inserts), statement.line, statement.column).sql()
            self.branches = [Branch(self, s, f"set{i}/".encode()) for i, s in enumerate(inserts)]
            _check_sinks(self.branches)
        else:
            statement = _rewritten(statement, resolve)
            self.definition = statement.sql(dialect=DIALECT)
            self.branches = [Branch(self, statement, b"")]
        self.statement = self.branches[0].statement
        self.plan: ContinuousPlan = self.branches[0].plan
        if self.options.late_topic and any(
            isinstance(node, nodes.UnionAll)
            for branch in self.branches
            for node in branch.plan.derived.values()
        ):
            # late rows are traced back to their source rows by (partition, offset), which
            # the streams of a union share: the side topic would get other streams' rows
            raise SqlError(
                "'late-rows.topic' is not supported for a query over a UNION ALL yet: its late"
                " rows could not be told apart by stream (the late-row count is kept anyway)"
            )
        self.hints = _hints(self.branches)  # OPTIONS hints by source
        self.read_options: dict[str, SourceOptions] = {}  # per source: declared, then hinted
        self._named = set().union(*(b.named for b in self.branches))
        self.sources = self._resolve_sources(resolve)
        self.current_tables = self._current_tables()
        self._validate()
        self._on_results = on_results
        self._results: deque[pa.RecordBatch] = deque()
        self._results_ready = threading.Condition()
        self.checkpoints = (
            LeasedCheckpoints(self.log.store, self.log.metadata, self.checkpoint_name, fence)
            if fence is not None
            else None
        )
        if self.checkpoints is not None:
            self.checkpoints.restore(state_dir)
        elif self.options.checkpoint_object_store and not _has_state(state_dir):
            if state_dir.exists():
                state_dir.rmdir()
            download_checkpoint(self.log.store, name, state_dir)
        self.store = StateStore(state_dir)
        self._uploaded_at = time.monotonic()
        try:
            self._check_definition()
            for branch in self.branches:
                branch.open(self.store)
        except BaseException:
            self.store.close()
            raise
        self.operator = self.branches[0].operator
        self.children = self.branches[0].children
        for branch in self.branches:
            plan = branch.plan
            if plan.sink_kind == "topic" and plan.sink:
                if self.log.get_topic(plan.sink) is None:
                    # An updating query's output is an upsert per key: a key-compacted topic,
                    # whose compaction keeps the latest row of each key (what reading the view
                    # gives).
                    config = {"cleanup.policy": "compact"} if plan.operator.updating else None
                    self.log.create_topic(plan.sink, 1, config)
                branch.sink = TopicSink(
                    self.log,
                    plan.sink,
                    plan.operator.key_columns,
                    fence=fence,
                    partition=self.sink_partition,
                )
        self.sink = self.branches[0].sink
        self.sink_transaction: TwoPhaseCommit | None = None
        if any(branch.sink is not None for branch in self.branches):
            self.sink_transaction = TwoPhaseCommit(self.log, self.transactional_id)
            try:
                self.sink_transaction.recover(self.store)
            except BaseException:
                self.sink_transaction.close()
                self.store.close()
                raise
        self.dead_letter_topic = self.options.dead_letter_topic or f"{name}.dlq"
        counters = self.store.get_json(COUNTERS) or {}
        self.rows_in = int(counters.get("rows_in", 0))
        self.rows_out = int(counters.get("rows_out", 0))
        self.late_rows = int(counters.get("late_rows", 0))
        self.rejected_rows = int(counters.get("rejected_rows", 0))
        self.damaged_rows = int(counters.get("damaged_rows", 0))  # skipped: read.on-damage
        self.batches = 0
        self._load_progress()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._step_lock = threading.Lock()
        self._closed = False
        self.error: BaseException | None = None
        self.log.add_listener(self._on_commit)

    # -- setup --------------------------------------------------------------------------------

    proctime_window: WindowSpec | None = None
    """The window of a query windowed on a ``PROCTIME()`` column: its watermark is the wall
    clock, and it wakes when a window ends (see :meth:`_idle_wait`)."""

    proctime_order: bool = False
    """Whether the query is an OVER aggregation (or an ORDER BY) by a ``PROCTIME()`` column: each
    micro-batch's rows are released at once (its watermark is its processing time + 1 ms),
    and a batch's processing time is at least the last one's + 1 ms, so none is late."""

    clock: Callable[[], int] = staticmethod(wall_clock_ms)
    """Milliseconds since the epoch: the processing time of a micro-batch (read once per
    batch, recorded with its bounds; replaced in tests)."""

    sink_partition: int | None = None
    """The one sink partition this query writes (a task of a parallel query), else all."""

    @property
    def checkpoint_name(self) -> str:
        """The name its checkpoints are kept and recorded under (on agents: a task's own)."""
        return self.name

    @property
    def transactional_id(self) -> str:
        """The transactional id this query writes its sinks with (:mod:`.two_phase`)."""
        return transactional_id(self.name)

    def _planned(self, plan: ContinuousPlan) -> ContinuousPlan:
        """The plan this query runs (a task of a parallel query runs part of it)."""
        return plan

    @property
    def source(self) -> QuerySource:
        """The first (for most queries, the only) source."""
        return next(iter(self.sources.values()))

    def _resolve_sources(
        self, resolve: Callable[[str], tuple[str, Any] | None]
    ) -> dict[str, QuerySource]:
        window_columns: dict[str, str | None] = {}
        for branch in reversed(self.branches):  # the first INSERT reading a source names it
            window_columns |= dict.fromkeys(branch.plan.sources, branch.plan.operator.window_column)
        sources: dict[str, QuerySource] = {}
        self.definitions: dict[str, StreamDef] = {}  # declared streams and tables read
        self.lookup_tables: dict[str, StreamDef] = {}  # 'connector'='jdbc' tables joined
        columns: dict[str, pa.DataType] = {f.name: f.type for f in METADATA_FIELDS}
        known = True
        names = list(dict.fromkeys(n for b in self.branches for n in b.plan.sources))
        for index, name in enumerate(names):
            window_column = window_columns[name]
            resolved = resolve(name)
            if resolved is None:
                raise self.error(f"unknown stream or topic {name!r}", name)
            kind, entry = resolved
            hinted = self.hints.get(name, {}).get("topic")
            if hinted is not None and self.log.get_topic(hinted) is None:
                raise self.error(f"topic {hinted!r} of the OPTIONS hint does not exist", name)
            if kind == "topic":
                self.read_options[name] = SourceOptions.of({}, self.hints.get(name))
                sources[name] = QuerySource(index, name, hinted or name, None, window_column, 0)
                known = False
                continue
            if kind not in ("stream", "table"):
                raise self.error(
                    f"continuous queries read streams and topics; {name!r} is a {kind}", name
                )
            definition = stream_definition(parse(entry.sql)[0])
            self.definitions[name] = definition
            if is_lookup_table(definition):  # read by key per micro-batch, not a source
                self.lookup_tables[name] = definition
                columns |= {f.name: f.type for f in lookup_schema(definition)}
                continue
            self._refuse_windows_off_time(definition)
            self.read_options[name] = SourceOptions.of(definition.options, self.hints.get(name))
            columns |= {c.name: c.type for c in definition.columns}
            watermark = definition.watermark
            column = watermark.column if watermark is not None else window_column
            delay = watermark.delay_ms if watermark is not None else 0
            if self.proctime_window is not None or self.proctime_order:  # the clock's time
                column, delay = None, 0
            sources[name] = QuerySource(
                index, name, hinted or definition.topic, definition.schema(), column, delay
            )
            sources[name].computed = ComputedColumns.of(definition)
        if known:
            for branch in self.branches:
                check_columns(branch.plan, branch.statement, columns)
        wanted = [referenced_columns(b.statement) for b in self.branches]
        needed = None if any(w is None for w in wanted) else set().union(*wanted)  # type: ignore[arg-type]
        for source in sources.values():
            source.columns = needed
            source.skip_damaged = self.options.on_damage == "skip"
            source.isolation = self.options.isolation
        return sources

    def _refuse_windows_off_time(self, definition: StreamDef) -> None:
        """Windows fire on event time: a window over a ``PROCTIME()`` column is refused, and so
        is one over a column other than the stream's WATERMARK column (its windows would close
        by another column's watermark and drop rows as late, where Flink refuses the query)."""
        proctime = set(ComputedColumns.of(definition).proctime)
        times = {c.name for c in definition.columns if pa.types.is_timestamp(c.type)}
        watermark = definition.watermark
        for branch in self.branches:
            operator = branch.plan.operator
            if (
                isinstance(operator, OverAggregate | nodes.TimeSort)
                and operator.time_column in proctime
            ):
                if self.options.parallelism > 1 or len(self.branches) > 1:
                    what = "an OVER" if isinstance(operator, OverAggregate) else "ORDER BY"
                    raise self.error(
                        f"{what} ordered by the processing-time column"
                        f" {operator.time_column!r} (PROCTIME()) runs at parallelism 1, in a"
                        " query of its own",
                        definition.name,
                    )
                self.proctime_order = True
                continue
            column = operator.window_column
            if definition.name not in branch.plan.sources or column is None:
                continue
            if column in proctime:
                if len(self.branches) > 1 or len(branch.plan.sources) > 1 or branch.plan.derived:
                    raise self.error(
                        f"a window over the processing-time column {column!r} (PROCTIME()) runs"
                        " over one stream in a query of its own: not in a join, a subquery,"
                        " a UNION ALL or a statement set",
                        definition.name,
                    )
                self.proctime_window = _window_spec(branch.plan.operator)
                if self.proctime_window is None:
                    raise self.error(
                        f"a window over the processing-time column {column!r} (PROCTIME()) is"
                        " supported in a window aggregate or a query per window, not in a"
                        f" {type(branch.plan.operator).__name__}",
                        definition.name,
                    )
                continue
            if (
                watermark is not None
                and len(branch.plan.sources) == 1
                and column in times  # (a window over another type gets its own error)
                and column != watermark.column
            ):
                raise self.error(
                    f"{column!r} is not a time attribute of {definition.name!r}: its WATERMARK"
                    f" is on {watermark.column!r}, so a window over {column!r} would close by"
                    f" another column's time; window on {watermark.column!r}, or declare the"
                    f" WATERMARK FOR {column}",
                    definition.name,
                )

    def error(self, message: str, table_name: str) -> SqlError:
        """An error located at the query's reference to ``table_name``."""
        for table in self.statement.find_all(exp.Table):
            if table.name == table_name:
                return SqlError(message, *node_position(table))
        return SqlError(message)

    def schema(
        self, name: str, windowed: bool = False, all_metadata: bool = False
    ) -> pa.Schema | None:
        """The rows of source ``name`` as the (first) statement's operators see them."""
        return self.branches[0].schema(name, windowed, all_metadata)

    def time_column(self, name: str) -> str | None:
        """The time attribute of source ``name`` (or of a derived input of the first statement)."""
        return self.branches[0].time_column(name)

    def missing_time_attribute(self, name: str) -> str:
        """Why source ``name`` has no time attribute, and what to write instead."""
        return self.branches[0].missing_time_attribute(name)

    def _check_definition(self) -> None:
        """Refuse state checkpointed by another definition of the query.

        The definition is the statement as it runs: views and CTEs inlined. A view redefined
        since the checkpoint would otherwise run over state its old definition built."""
        definition = self.definition.encode()
        stored = self.store.get(ColumnFamily.META, DEFINITION_KEY)
        if stored == definition:
            return
        if stored is not None:
            raise SqlError(
                f"query {self.name!r} was checkpointed running another definition (its SQL, or"
                " a view it reads, changed since): start it under another name, or delete its"
                f" state directory {self.store.path} to run it afresh from its sources"
            )
        batch = self.store.batch()
        batch.put(ColumnFamily.META, DEFINITION_KEY, definition)
        self.store.commit(batch)

    def _validate(self) -> None:
        """Plan the query's SQL on DataFusion over empty inputs, so errors show before it runs."""
        for branch in self.branches:
            for sql, schemas in checks(branch.plan.operator, branch):
                if any(s is None for s in schemas.values()):
                    continue  # a topic's schema is inferred from its first records
                tables = {name: schema.empty_table() for name, schema in schemas.items()}  # type: ignore[union-attr]
                try:
                    run_sql(sql, tables)
                except SqlError as exc:
                    raise SqlError(exc.message, *node_position(branch.statement)) from None

    @property
    def updating(self) -> bool:
        """Whether results are upserts per key (an updating GROUP BY, Top-N), not appends."""
        return self.plan.operator.updating

    @property
    def key_columns(self) -> list[str]:
        """The result columns that key a record (the upsert key of an updating query)."""
        return self.plan.operator.key_columns

    def _load_progress(self) -> None:
        for name, source in self.sources.items():
            startup = self.read_options[name].startup or self.options.startup
            source.load(self.log, self.store, startup == "latest-offset")
        stored_wm = self.store.get_int(WATERMARK)
        self.watermark = stored_wm - (1 << 63) if stored_wm is not None else NO_WATERMARK

    def _positions(self) -> dict[str, dict[int, int]]:
        """The next offset to read of each source partition, by topic (the lowest where two
        sources read one topic)."""
        positions: dict[str, dict[int, int]] = {}
        for source in self.sources.values():
            known = positions.setdefault(source.topic, {})
            for p, offset in source.positions.items():
                known[p] = min(offset, known.get(p, offset))
        return positions

    def _on_commit(self, topic: str, partition: int, high_watermark: int) -> None:
        if any(topic == s.topic for s in self.sources.values()):
            self._wake.set()

    # -- running ------------------------------------------------------------------------------

    def start(self) -> ContinuousQuery:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"query-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        log.info("query %s started", self.name)
        while not self._stop.is_set():
            try:
                progressed = self.step()
            except FencedError as exc:  # another agent runs it now: this one wrote nothing
                log.warning("query %s stopped: %s", self.name, exc)
                self.error = exc
                break
            except BaseException as exc:  # the query stops; the server and other queries go on
                log.exception("query %s failed", self.name)
                self.error = exc
                break
            if not progressed:
                self._wake.wait(self._idle_wait())
                self._wake.clear()
        log.info("query %s stopped", self.name)

    def _idle_wait(self) -> float:
        """Seconds to wait for new records: the poll interval, or less when a processing-time
        window ends sooner (it fires then, within milliseconds of its end)."""
        poll = self.options.poll_interval_ms / 1000
        window = self.proctime_window
        if window is None or window.kind == WindowKind.SESSION:
            return poll
        period, offset = _window_period(window)
        now = self.clock()
        next_end = ((now - offset) // period + 1) * period + offset
        return max(0.0, min(poll, (next_end - now) / 1000))

    def _window_due(self, watermark: int) -> bool:
        """Whether the wall clock moving from the last watermark to ``watermark`` may close a
        processing-time window that holds rows."""
        window = self.proctime_window
        if window is None or not any(b.operator and b.operator.state_size for b in self.branches):
            return False
        if window.kind == WindowKind.SESSION:
            return watermark > self.watermark
        period, offset = _window_period(window)
        return (watermark - offset) // period > (self.watermark - offset) // period

    def stop(self, checkpoint: bool = True) -> None:
        """Stop after the current micro-batch is committed, and release the state; a last
        checkpoint goes to the object store if it is used (unless not ``checkpoint``: the
        query's lease was lost)."""
        already = self._stop.is_set()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._step_lock:
            if not already:
                self._closed = True
                try:
                    if (
                        self.sink_transaction is not None
                        and checkpoint
                        and not isinstance(self.error, FencedError)
                    ):  # a failed micro-batch's transaction ends now, not at the next start
                        self._settle_at_stop()
                    if self.checkpoints is not None and checkpoint and self.error is None:
                        self.checkpoints.publish(self.store, self._positions())
                    elif self.options.checkpoint_object_store:
                        upload_checkpoint(self.store, self.log.store, self.name)
                except FencedError as exc:
                    log.warning("query %s: no last checkpoint: %s", self.name, exc)
                finally:
                    self.store.close()
                    if self.sink_transaction is not None:
                        self.sink_transaction.close()
        with self._results_ready:
            self._results_ready.notify_all()

    def _settle_at_stop(self) -> None:
        assert self.sink_transaction is not None
        try:
            self.sink_transaction.settle(self.store, again=False)
        except Exception as exc:  # noqa: BLE001 (stopping goes on; the next start ends it)
            log.warning("query %s: its open sink transaction is left: %s", self.name, exc)

    def run_until_caught_up(self, final: bool = False) -> None:
        """Process every record in the sources now (in this thread); ``final`` closes every window."""
        while self.step():
            pass
        if final:
            self.step(final=True)

    def step(self, final: bool = False, max_records: int | None = None) -> bool:
        """Run one micro-batch; False if there was nothing to do.

        Safe to call while the background thread runs: micro-batches never overlap.
        """
        with self._step_lock:
            if self._closed:
                raise StreamHouseError(f"query {self.name} is stopped")
            return self._step(final, max_records)

    def _current_tables(self) -> set[str]:
        """The versioned tables a join probes at processing time (``AS OF`` a ``PROCTIME()``
        column): each micro-batch reads them to the log's end first, so a probe row meets
        the table as the log holds it when the row is processed (Nexmark q13's side input),
        however the micro-batches split."""
        current: set[str] = set()
        for branch in self.branches:
            for node in (branch.plan.operator, *branch.plan.derived.values()):
                if not isinstance(node, nodes.TemporalJoin | nodes.TemporalStar):
                    continue
                for join in node.tables.values():
                    probe = self.definitions.get(join.left)
                    proctime = probe is not None and is_proctime(probe, join.probe_time)
                    if proctime and join.right in self.sources:
                        current.add(join.right)
        return current

    def _plan(self, budget: int, starts: dict[str, dict[int, int]]) -> dict[str, dict[int, int]]:
        """End offsets of a micro-batch from ``starts``: at most ``budget`` records in all,
        an equal share per source first (a join's inputs advance together, so the watermark,
        the minimum of theirs, moves and the join's state is evicted as it goes), then what
        a source left of its share to the others."""
        ends: dict[str, dict[int, int]] = {}
        for name in self.current_tables:  # to its end, whatever the budget
            ends[name] = self.sources[name].plan_batch(self.log, 1 << 62, starts[name])
        share = max(1, budget // max(1, len(self.sources) - len(ends)))
        for name, source in self.sources.items():
            if name in ends:
                continue
            ends[name] = source.plan_batch(self.log, share, starts[name])
            budget -= sum(ends[name][p] - starts[name].get(p, 0) for p in ends[name])
        for name, source in self.sources.items():
            if budget <= 0 or len(self.sources) == 1:
                break
            if name in self.current_tables:
                continue
            more = source.plan_batch(self.log, budget, ends[name])
            budget -= sum(more[p] - ends[name].get(p, 0) for p in more)
            ends[name] = more
        return ends

    def _step(self, final: bool, max_records: int | None) -> bool:
        if self.sink_transaction is not None:  # left open by a micro-batch that failed
            self.sink_transaction.settle(self.store)
        pending = self.store.get_json(PENDING)
        budget = max_records or self.options.max_batch_records
        ends: dict[str, dict[int, int]] = {}
        proctime = self.clock()  # the batch's processing time (PROCTIME() columns)
        if pending is not None:
            for name, source in self.sources.items():
                stored = pending["end"].get(str(source.index), {})
                ends[name] = {int(p): int(o) for p, o in stored.items()} or dict(source.positions)
            forced_watermark: int | None = int(pending["watermark"])
            proctime = int(pending.get("proctime", proctime))
        else:
            ends = self._plan(budget, {n: s.positions for n, s in self.sources.items()})
            forced_watermark = None
        has_data = any(
            ends[n][p] > s.positions.get(p, 0) for n, s in self.sources.items() for p in ends[n]
        )
        reads = {name: source.read(self.log, ends[name]) for name, source in self.sources.items()}
        for name, read in reads.items():
            if read.rejected and not self.read_options[name].ignore_parse_errors:
                raise parse_failure(name, read.rejected[0])
        if has_data and not final:  # catching up: decode the next batch while this one runs
            following = self._plan(self.options.max_batch_records, ends)
            for name, source in self.sources.items():
                source.prefetch(self.log, ends[name], following[name])
        event_times = {
            name: s.event_times_after(reads[name].table) for name, s in self.sources.items()
        }
        if forced_watermark is not None:
            new_watermark = forced_watermark
        elif final:
            new_watermark = FINAL_WATERMARK
        elif self.proctime_order:  # every row of the batch is released now
            if pending is None:
                proctime = max(proctime, self.watermark)
            new_watermark = proctime + 1
            if not has_data and pending is None:
                return False
        elif self.proctime_window is not None:  # a window on PROCTIME() closes by the clock
            new_watermark = max(self.watermark, proctime)
            if not has_data and pending is None and not self._window_due(new_watermark):
                return False
        else:
            marks = [
                s.watermark(event_times[n], self.options.idle_timeout_ms)
                for n, s in self.sources.items()
            ]
            new_watermark = max(self.watermark, min(marks))
        if not has_data and new_watermark == self.watermark and pending is None:
            return False

        batch = self.store.batch()
        tables = {name: self._stamped(name, r.table, proctime) for name, r in reads.items()}
        # CURRENT_WATERMARK(ts): the watermark the batch's rows arrive at (the last batch's)
        with current_watermark(None if self.watermark == NO_WATERMARK else self.watermark):
            changes = [self._operate(b, tables, new_watermark, batch) for b in self.branches]
        late_rows = sum(c.late for c in changes)
        writing = [
            (branch, change)
            for branch, change in zip(self.branches, changes, strict=True)
            if branch.sink is not None
            and (
                (change.rows is not None and change.rows.num_rows)
                or change.retracted
                or branch.sink.every_batch
            )
        ]
        if writing:
            if pending is None:
                intent = self.store.batch()
                intent.put_json(
                    PENDING,
                    {
                        "end": {
                            str(s.index): {str(p): o for p, o in ends[n].items()}
                            for n, s in self.sources.items()
                        },
                        "watermark": new_watermark,
                        "proctime": proctime,
                    },
                )
                TwoPhaseCommit.forget(intent)
                self.store.commit(intent)
                del intent
            for branch, change in writing:
                assert branch.sink is not None
                rows = change.rows if change.rows is not None else pa.table({})
                branch.sink.write(rows, change.retracted, self.sink_transaction)
        rejected_count = 0
        for read in reads.values():
            if read.rejected:
                rejected_count += len(read.rejected)
                self._dead_letters(read.rejected)
            for damaged in read.damaged:
                log.warning(
                    "query %s: %d record(s) skipped: %s", self.name, damaged.records, damaged
                )
        damaged_count = sum(d.records for r in reads.values() for d in r.damaged)
        for change in changes:
            if change.late_rows is not None and change.late_rows.num_rows:
                self._late_rows(change.late_rows)

        rows_in = self.rows_in + sum(r.records for r in reads.values())
        rows_out = self.rows_out + sum(c.rows.num_rows for c in changes if c.rows is not None)
        late_total = self.late_rows + late_rows
        rejected_total = self.rejected_rows + rejected_count
        damaged_total = self.damaged_rows + damaged_count
        for name, source in self.sources.items():
            source.save(batch, ends[name], event_times[name])
        batch.put_int(WATERMARK, new_watermark + (1 << 63))
        batch.put_json(
            COUNTERS,
            {
                "rows_in": rows_in,
                "rows_out": rows_out,
                "late_rows": late_total,
                "rejected_rows": rejected_total,
                "damaged_rows": damaged_total,
            },
        )
        batch.delete(ColumnFamily.META, PENDING)
        if self.sink_transaction is not None:
            self.sink_transaction.record(batch)
        operators = [o for branch in self.branches for o in branch.operators]
        try:
            self.store.commit(batch)
        except BaseException:
            for operator in operators:
                operator.rollback()
            raise
        del batch
        for operator in operators:
            operator.commit()
        for name, source in self.sources.items():
            source.advance(ends[name], event_times[name])
        self.watermark = new_watermark
        self.rows_in, self.rows_out, self.late_rows, self.rejected_rows = (
            rows_in,
            rows_out,
            late_total,
            rejected_total,
        )
        self.damaged_rows = damaged_total
        self.batches += 1
        if self.sink_transaction is not None and self.sink_transaction.open:
            # the checkpoint recording the transaction is durable where a restart (another
            # agent's, under a lease) looks for it: now its output becomes visible
            if self.checkpoints is not None:
                self.checkpoints.publish(self.store, self._positions())
                self._uploaded_at = time.monotonic()
            self.sink_transaction.commit()
        for change in changes:
            if change.rows is not None and change.rows.num_rows:
                self._deliver(change.rows)
        if (self.checkpoints is not None or self.options.checkpoint_object_store) and (
            time.monotonic() - self._uploaded_at >= self.options.checkpoint_interval_ms / 1000
        ):
            if self.checkpoints is not None:
                self.checkpoints.publish(self.store, self._positions())
            else:
                upload_checkpoint(self.store, self.log.store, self.name)
            self._uploaded_at = time.monotonic()
        return True

    def _stamped(self, name: str, table: pa.Table | None, proctime: int) -> pa.Table | None:
        """The rows of source ``name`` with its ``PROCTIME()`` columns at the batch's time."""
        computed = self.sources[name].computed
        if table is None or computed is None or not computed.proctime:
            return table
        return computed.stamp(table, proctime)

    def _operate(
        self,
        branch: Branch,
        tables: dict[str, pa.Table | None],
        watermark: int,
        batch: StateBatch,
    ) -> Changelog:
        """Run the operators on this batch: derived inputs first, then the query's own one.

        A derived input's rows are what the operator over it reads, its retractions (record
        keys) are handed on next to them; the planner refuses a plan whose operator would
        ignore them.
        """
        tables = dict(tables)
        retracted: dict[str, list[bytes]] = {}
        late = 0
        for i, (name, (node, operator)) in enumerate(branch.children.items()):
            scoped = ScopedBatch(batch, branch.state_prefix(i + 1))
            row_keys = name in branch.row_keyed
            micro = self._micro_batch(
                branch, node, tables, watermark, scoped, True, retracted, row_keys
            )
            derived = operator.process(micro)
            tables[name] = derived.rows
            if derived.retracted:
                retracted[name] = derived.retracted
            late += derived.late
        assert branch.operator is not None
        scoped = ScopedBatch(batch, branch.state_prefix(0))
        result = branch.operator.process(
            self._micro_batch(
                branch, branch.plan.operator, tables, watermark, scoped, False, retracted
            )
        )
        result.late += late
        return result

    def _micro_batch(
        self,
        branch: Branch,
        node: PlanNode,
        tables: dict[str, pa.Table | None],
        watermark: int,
        state: ScopedBatch,
        derived: bool = False,
        retracted: dict[str, list[bytes]] | None = None,
        row_keys: bool = True,
    ) -> MicroBatch:
        """The micro-batch as ``node`` reads it: the new rows of each of its inputs (None if
        none), with the metadata columns the query does not name hidden unless it keeps them."""
        inputs: dict[str, pa.Table | None] = {}
        for name in node.sources:
            table = tables.get(name)
            if table is None or not table.num_rows:
                inputs[name] = None
            else:
                inputs[name] = table if node.keeps_metadata else hide_metadata(table, branch.named)
        taken = {n: keys for n, keys in (retracted or {}).items() if n in node.sources}
        return MicroBatch(inputs, self.watermark, watermark, state, derived, taken, row_keys)

    # -- side outputs -------------------------------------------------------------------------

    def _dead_letters(self, rejected: list[RejectedRow]) -> None:
        write_dead_letters(self.log, self.dead_letter_topic, rejected, fence=self.fence)
        log.warning(
            "query %s: %d row(s) did not parse and went to %s",
            self.name,
            len(rejected),
            self.dead_letter_topic,
        )

    def _late_rows(self, late: pa.Table) -> None:
        topic = self.options.late_topic
        assert topic is not None
        if self.log.get_topic(topic) is None:
            self.log.create_topic(topic, 1)
        from streamhouse.runtime.sink import encode_rows

        values, _ = encode_rows(
            late.drop_columns([c for c in late.column_names if c.startswith("_")]), []
        )
        batch = build_batch(values, compression=Compression.LZ4)
        self.log.append(topic, 0, batch, fence=self.fence).result()

    # -- results ------------------------------------------------------------------------------

    def _deliver(self, outputs: pa.Table) -> None:
        if "__key" in outputs.column_names:
            outputs = outputs.drop_columns(["__key"])
        if self._on_results is not None:
            self._on_results(outputs)
        if self.plan.sink_kind == "results":
            with self._results_ready:
                self._results.extend(outputs.to_batches())
                self._results_ready.notify_all()

    def results(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """Result batches as windows close; ends when the query stops (or after ``timeout`` idle s)."""
        while True:
            with self._results_ready:
                if not self._results:
                    if self._stop.is_set() or self.error is not None:
                        return
                    if not self._results_ready.wait(timeout) and timeout is not None:
                        return
                if self._results:
                    item = self._results.popleft()
                else:
                    continue
            yield item

    def status(self) -> dict[str, Any]:
        """Offsets, watermark, rows in and out, late, rejected and damaged (skipped) rows,
        state size."""
        running = self._thread is not None and self._thread.is_alive()
        return {
            "name": self.name,
            "state": "failed" if self.error is not None else ("running" if running else "stopped"),
            "error": str(self.error) if self.error is not None else None,
            "source": ", ".join(s.topic for s in self.sources.values()),
            "sink": ", ".join(str(b.plan.sink) for b in self.branches),
            "offsets": (
                dict(self.source.positions)
                if len(self.sources) == 1
                else {n: dict(s.positions) for n, s in self.sources.items()}
            ),
            "watermark": _format_time(self.watermark),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "late_rows": self.late_rows,
            "rejected_rows": self.rejected_rows,
            "damaged_rows": self.damaged_rows,
            "open_windows": sum(b.operator.state_size for b in self.branches if b.operator),
            "state_bytes": self.store.size_bytes() if not self._stop.is_set() else None,
            "batches": self.batches,
        }

    def explain(self) -> str:
        return "\n".join(b.plan.explain(b.stream_time) for b in self.branches)


def _check_sinks(branches: list[Branch]) -> None:
    """Refuse a statement set whose INSERTs write one topic twice (each sink's progress is
    its own: two writers of a topic would skip each other's rows on a replay)."""
    seen: set[str] = set()
    for branch in branches:
        sink = branch.plan.sink
        if sink in seen:
            raise SqlError(
                f"a statement set writes {sink!r} twice: INSERT INTO it once, the SELECTs"
                " joined by UNION ALL",
                *node_position(branch.statement),
            )
        seen.add(str(sink))


def _hints(branches: list[Branch]) -> dict[str, dict[str, str]]:
    """The OPTIONS hints by source of every statement; one read serves them all, so two
    statements must not hint one source differently."""
    hints: dict[str, dict[str, str]] = {}
    for branch in branches:
        for name, options in source_options(branch.statement).items():
            if hints.setdefault(name, options) != options:
                raise SqlError(
                    f"the INSERTs of a statement set give {name!r} different OPTIONS hints:"
                    " one read of it serves them all",
                    *node_position(branch.statement),
                )
    return hints


def _has_state(state_dir: Path) -> bool:
    return state_dir.is_dir() and any(state_dir.iterdir())


def _format_time(ms: int) -> str | None:
    if ms <= NO_WATERMARK:
        return None
    if ms >= FINAL_WATERMARK:
        return "end of input"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _window_spec(node: PlanNode) -> WindowSpec | None:
    """The window of a windowed operator (a window aggregate or a query per window)."""
    if isinstance(node, nodes.WindowAggregate):
        return node.window
    if isinstance(node, nodes.Windowed):
        return next(iter(node.inputs.values()))[1]
    return None


def _window_period(window: WindowSpec) -> tuple[int, int]:
    """(period, offset) of a TUMBLE, HOP or CUMULATE window's ends: every end is
    ``offset + k * period``."""
    period = window.slide_ms or window.size_ms
    offset = window.size_ms % period if window.kind == WindowKind.HOP else 0
    return period, offset
