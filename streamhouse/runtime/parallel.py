"""A continuous query at parallelism N: N task processes of the launching process.

``SET 'parallelism' = '2';`` in the query file, ``streamhouse run --parallelism 2`` or
``sh.start(..., parallelism=2)``. Task ``i`` of ``n`` reads the source partitions ``p % n ==
i`` and is a process of its own (``python -m streamhouse.runtime.parallel``), so one query
uses every core (forked from one preloaded process, :mod:`.task_processes`). How a plan is
split is :mod:`.routing`'s:

- A stateless query (filter, project) needs nothing more: each task runs it over its share of
  the partitions.
- A keyed aggregation (a windowed GROUP BY, SESSION included, an updating GROUP BY) is split by
  key group (see :mod:`.key_groups`): each task's producing side sends its rows, after the
  aggregate's stateless part, through the exchange topic to the task owning their key group
  (:mod:`.exchange`), and its consuming side aggregates the key groups it owns, with the
  watermark the minimum over the producers.
- Joins, window joins, Top-N and deduplication: each task's producing side sends the source
  rows as read, one exchange topic per source (``<query>.exchange``, ``<query>.exchange1``),
  by the key group of the join key (PARTITION BY), and its consuming side runs the whole
  unchanged plan over the rows of its key groups. An outer stream join, and a join over an
  updating input its append-only side's rows, number them with the task's number in their ids
  (unique over the tasks, also after a rescale); record keys made of other operators' row ids
  are prefixed with ``<task>/``.
- A per-window query without a key (Nexmark q5): rows are routed by window, to every task
  owning a window they fall in, and each task evaluates the windows it owns. A stream joined
  to a window aggregate of itself (q7) likewise, each row also to the owners of the windows it
  can join by the join's bound on time; each task's aggregate emits only the windows it owns.

Task ``i`` writes sink partition ``i`` only (the sink is created with ``n`` partitions); the
tasks of an updating query (an updating GROUP BY, an outer join, a Top-N or deduplication, a
join over an updating input) write each upsert to its key's partition
(Kafka's default partitioner, as at parallelism 1), so that a key's upserts stay in one
partition when it moves to another task (rescaling). Each task writes in transactions of its own (:mod:`.two_phase`). State: ``<data_dir>/queries/<name>.p<n>/task-<i>`` (the
consuming side, a :class:`~.query.ContinuousQuery`) and ``exchange-<i>[-<source>]`` (the
producing side, one store per source); each task writes ``task-<i>.json`` with its progress
for :meth:`ParallelQuery.status`. Restarted at another parallelism, the query's state moves by
key group to the new tasks first (rescaling, :mod:`.rescale`). On ``serve`` agents sharing a
PostgreSQL store, the tasks are leased to the agents one by one instead (:mod:`.placement`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from streamhouse.errors import SqlError, StreamHouseError, TopicExistsError
from streamhouse.log.isolation import Isolation
from streamhouse.log.records import Compression, build_batch
from streamhouse.os_memory import resident_memory, return_big_buffers
from streamhouse.runtime.exchange import (
    PENDING as EXCHANGE_PENDING,
)
from streamhouse.runtime.exchange import (
    ExchangeSource,
    ExchangeWriter,
    decode,
    encode,
    exchange_topic,
    owned_partitions,
    producing_tasks,
    stage_topic,
)
from streamhouse.runtime.key_groups import window_tasks
from streamhouse.runtime.operator import Changelog, MicroBatch
from streamhouse.runtime.operators import (
    ChangelogJoining,
    StreamJoining,
    WindowAggregation,
    WindowedEvaluation,
    run_ordered,
)
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.query import (
    PENDING,
    ContinuousQuery,
    _format_time,
    planned_statement,
)
from streamhouse.runtime.rescale import (
    KEYS_FILE,
    finish,
    rescale,
    start_after_exchanged,
    upserts_by_key,
)
from streamhouse.runtime.routing import plan_routing
from streamhouse.runtime.sources import QuerySource
from streamhouse.runtime.stages import Forward, StageCommit, StageSink
from streamhouse.runtime.task_processes import TaskProcess, Zygote
from streamhouse.runtime.task_state import parallel_states, task_checkpoint_name, task_root
from streamhouse.runtime.two_phase import transactional_id
from streamhouse.sql import nodes
from streamhouse.sql.functions import exported_functions, import_functions
from streamhouse.sql.hints import SourceOptions
from streamhouse.sql.join_chain import catalog_proctime_columns
from streamhouse.sql.nodes import FLOWS
from streamhouse.sql.plan import ContinuousPlan, StreamTime, plan_query
from streamhouse.sql.source import read_records
from streamhouse.sql.statement_set import StatementSet
from streamhouse.sql.window_spec import WindowKind, WindowSpec
from streamhouse.state.store import StateBatch, StateStore, StateView
from streamhouse.windows.operator import WindowOperator

if TYPE_CHECKING:
    from streamhouse.config import Settings

log = logging.getLogger(__name__)

SUPERVISE_S = 0.2
"""How often the launcher checks its task processes."""

FIRST_POLL_S = 0.005
"""A task's first wait for new records after it made progress, doubled while none come, up to
``poll-interval``: the other tasks' exchange records come soon after its own (another process
appends them, so no commit of this one wakes it)."""


UNTIL_END_POLL_S = 0.02
"""The longest wait of a task running to the end for the other tasks' exchange records (a
continuous query waits up to ``poll-interval``)."""

TASK_CACHE_BYTES = 32 << 20
"""The most a task process's log keeps of the segment objects it writes and reads (its
``ObjectCache``; ``cache_bytes``, 256 MiB by default, if smaller). A task reads its sources and
exchange partition once, in order, soon after they are written, so a small cache serves what
it reads again. The default, full in every task process, held 220-240 MiB more per task of a
query with 10M open SESSION keys at parallelism 2 (``benchmarks/windows_bench.py --parts
parallel``: peaks 974/992 MiB against 749/770), for more CPU (17.0 s per task against 14.5)."""


def parallel_shape(plan: ContinuousPlan) -> str:
    """``"stateless"``, ``"aggregate"`` or ``"rows"``: how a plan runs in parallel (see
    :mod:`.routing`); a SqlError naming the operator if it cannot yet."""
    return plan_routing(plan).shape


def _partials(operator: nodes.WindowAggregate) -> bool:
    """Whether the producing side aggregates panes before the exchange (not for SESSION, whose
    windows are only known once a key's rows meet)."""
    return operator.window is not None and operator.window.kind != WindowKind.SESSION


def explain_parallel(
    plan: ContinuousPlan, parallelism: int, name: str, stream_time: StreamTime | None = None
) -> str:
    """``EXPLAIN`` of a query at ``parallelism``: the plan with its exchange and tasks."""
    routing = plan_routing(plan)
    lines = [f"Parallel  {parallelism} tasks (processes), sink partition i written by task i"]
    exchange = f"({parallelism} partitions, Arrow IPC records)"
    groups = "128 key groups, task i owns [i*128/n, (i+1)*128/n)"
    if routing.shape == "stateless":
        lines.append("  Tasks read source partitions p % n == i; no exchange")
        for source in sorted(routing.broadcast):
            lines.append(f"    except {source}: every task reads all of it")
    elif routing.shape == "rows":
        for index, source in enumerate(plan.sources):
            columns = ", ".join(routing.keys[source]) or "one group"
            by = f"key group of ({columns}), {groups}"
            if routing.window is not None:
                by = (
                    "window: to every task owning a window the row falls in (a window's task"
                    f" by the key group of its start), {groups}"
                )
            if routing.reach is not None:
                by += (
                    f", and to every task owning a window starting {routing.reach[0]} to"
                    f" {routing.reach[1]} ms from the row's time (windows it joins)"
                )
            lines.append(
                f"  Exchange  topic {exchange_topic(name, index)} {exchange}: the rows of"
                f" {source} by {by}"
            )
        owned = (
            "the windows the task owns" if routing.window is not None else "the task's key groups"
        )
        then = routing.operator
        if routing.stage is not None:
            then = f"every operator but {type(plan.operator).__name__} (the first stage)"
        lines += [
            "    each task: source partitions p % n == i, rows sent as read",
            f"    then {then} over the rows of {owned}",
            "    watermark: per task the minimum over the producing tasks' watermarks",
        ]
        if routing.stage is not None:
            lines += [
                f"  Exchange  topic {stage_topic(name)} {exchange}: the first stage's changelog"
                f" (the latest row per group) by key group of ({', '.join(routing.stage)}),"
                f" {groups}",
                f"    each task: {type(plan.operator).__name__} (the second stage) over the"
                " rows of the task's key groups",
                "    watermark: per task the minimum over the first stage's tasks' watermarks",
            ]
    else:
        operator = plan.operator
        assert isinstance(operator, nodes.WindowAggregate)
        lines += [
            f"  Exchange  topic {exchange_topic(name)} {exchange}"
            f" by key group of ({', '.join(operator.key_sql) or 'one group'}), {groups}",
            f"    each task: Stateless {operator.pre_sql} over source partitions p % n == i",
            *(
                [
                    "    then LocalWindowAggregate: partial aggregates per key and pane are"
                    " exchanged, not rows"
                ]
                if _partials(operator)
                else []
            ),
            "    watermark: per task the minimum over the producing tasks' watermarks",
        ]
    explained = plan.explain(stream_time).splitlines()
    return "\n".join([*lines, *("  " + line for line in explained)])


class TaskQuery(ContinuousQuery):
    """The part of a parallel query task ``task`` runs as a continuous query: the whole query
    over its source partitions (stateless), the aggregation of its key groups (aggregate), or
    the whole query over the source rows of its key groups (rows)."""

    def __init__(
        self,
        *args: Any,
        task: int,
        parallelism: int,
        results_topic: str | None = None,
        stage: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.task = task
        self.parallelism = parallelism
        # a plan of two stages (routing.Routing.stage): 1, every operator but the top one, into
        # the second exchange; 2, the top one over it, into the sink (see .stages)
        self.stage = stage
        self.sink_partition = task
        self.results_topic = results_topic  # where the caller's results go (ParallelResults)
        self.upstreams: dict[str, QuerySource] = {}  # the sources the producing side reads
        self.producer_proctime: WindowSpec | None = None  # a window over PROCTIME() (writers)
        self.setup_cpu_seconds = 0.0  # CPU seconds of the task process once it was set up
        self.by_key = False  # upserts to their key's sink partition (see upserts_by_key)
        # (time, rows_in) at the start of the rate's interval, the last rate measured, and
        # whether it was over a whole interval
        self.rate_sample: tuple[float, int, float, bool] | None = None
        super().__init__(*args, **kwargs)
        operator = self.plan.operator
        if isinstance(operator, nodes.WindowAggregate) and _partials(operator):
            branch = self.branches[0]  # a parallel query is one statement (no statement set)
            self.operator = branch.operator = ExchangedWindowAggregation(
                operator, StateView(self.store, b"0/"), branch
            )
        if stage == 1:
            self._feed_second_stage()
        self.by_key = upserts_by_key(self.plan)
        if self.by_key:  # a key's upserts to its partition, whatever task owns it
            self.sink_partition = None
            for branch in self.branches:
                if branch.sink is not None:
                    branch.sink.partition = None
        if isinstance(self.operator, StreamJoining | ChangelogJoining):  # row ids unique over
            self.operator.executor.task = task  # every task
        if self.routing.window is not None:  # routed by window: evaluate the windows it owns
            owns = self._owns_windows
            if self.routing.reach is None:
                assert isinstance(self.operator, WindowedEvaluation)
                self.operator.executor.owns = owns
            else:  # a stream joined to its window aggregate (q7): the aggregate's windows
                for _, child in self.branches[0].children.values():
                    assert isinstance(child, WindowAggregation)
                    child.owns = owns

    def _feed_second_stage(self) -> None:
        """The first stage: the top operator's input goes to the second exchange (.stages)."""
        branch = self.branches[0]
        top = self.plan.operator
        assert isinstance(top, nodes.Recompute) and self.routing.stage is not None
        self.operator = branch.operator = Forward(top.source)
        branch.sink = StageSink(
            self.log,
            stage_topic(self.name),
            list(self.routing.stage),
            self.task,
            self.parallelism,
            self._batch_intent,
            fence=self.fence,
        )
        self.sink_transaction = StageCommit(self.store)

    def _batch_intent(self) -> dict[str, Any]:
        """The intent of the micro-batch being written (its bounds and watermark)."""
        pending = self.store.get_json(PENDING)
        assert pending is not None
        return pending

    def _owns_windows(self, starts: np.ndarray) -> np.ndarray:
        """Which of the windows starting at ``starts`` this task evaluates (routed by window)."""
        return window_tasks(starts, self.parallelism) == self.task

    @property
    def transactional_id(self) -> str:
        """Each task writes its sink partition with a producer of its own."""
        return transactional_id(self.name, self.task)

    @property
    def checkpoint_name(self) -> str:
        """On agents, each task's consuming side keeps checkpoints of its own (the second
        stage of a query of two, ``stage2-<i>``, too)."""
        store = f"stage2-{self.task}" if self.stage == 2 else f"task-{self.task}"
        return task_checkpoint_name(self.name, self.parallelism, store)

    def _planned(self, plan: ContinuousPlan) -> ContinuousPlan:
        self.whole_plan = plan  # as planned: the producing side runs its pre_sql
        self.routing = plan_routing(plan)
        self.shape = self.routing.shape
        if self.stage == 1:  # its top operator's input goes to the second stage, not a sink
            return dataclasses.replace(plan, sink_kind="results", sink=None)
        if self.stage == 2:  # the top operator over the first stage's changelog
            return dataclasses.replace(plan, derived={})
        if self.shape != "aggregate":
            return plan
        operator = plan.operator
        assert isinstance(operator, nodes.WindowAggregate)
        # the producing side ran pre_sql already: the exchange carries its rows
        passthrough = f'SELECT * FROM "{operator.source}"'
        return dataclasses.replace(
            plan, operator=dataclasses.replace(operator, pre_sql=passthrough)
        )

    def _resolve_sources(self, resolve: Any) -> dict[str, QuerySource]:
        if self.stage == 2:  # its partition of the second exchange, from every task
            self.definitions, self.lookup_tables = {}, {}
            name = self.plan.operator.sources[0]
            self.read_options[name] = SourceOptions.of({}, None)
            topic = stage_topic(self.name)
            return {name: ExchangeSource(0, name, topic, self.task, self.parallelism)}
        sources = super()._resolve_sources(resolve)
        # a window over a PROCTIME() column: the producers stamp the rows and send their clocks
        # as watermarks; this task's windows close by the minimum of them, as for event time
        self.producer_proctime, self.proctime_window = self.proctime_window, None
        for name, source in sources.items():
            partitions = self.log.topic(source.topic).partitions
            if name not in self.routing.broadcast:
                source.owned = owned_partitions(self.task, self.parallelism, partitions)
        if self.shape == "stateless":
            return sources
        # the sources are read by the producing side (ExchangeWriter); this query reads the
        # exchange
        self.upstreams = sources
        exchanged: dict[str, QuerySource] = {}
        for name, source in sources.items():
            producers = producing_tasks(self.log.topic(source.topic).partitions, self.parallelism)
            topic = exchange_topic(self.name, source.index)
            exchanged[name] = ExchangeSource(source.index, name, topic, self.task, producers)
            if self.shape == "rows":  # the rows are the source's as read
                exchanged[name].schema, exchanged[name].computed = source.schema, source.computed
                exchanged[name].time_column = source.time_column
            self.read_options.setdefault(name, SourceOptions.of({}, None))
        return exchanged

    def text_keys(self) -> bool:
        """Whether routing keys are hashed as text: two inputs key by columns of which one is
        an integer and the other not (or not known), so both hash the same text."""
        kinds = set()
        for name, columns in self.routing.keys.items():
            schema = self.upstreams[name].schema
            names = schema.names if schema is not None else []
            if any(c not in names for c in columns):
                return len(self.routing.keys) > 1
            kinds.add(tuple(pa.types.is_integer(schema.field(c).type) for c in columns))  # type: ignore[union-attr]
        return len(kinds) > 1

    def writers(self, log_: Any, root: Path) -> list[ExchangeWriter]:
        """The producing side: one writer per source this task reads partitions of (appending
        only while the task's lease is held, on an agent)."""
        writers = []
        text = self.shape == "rows" and self.text_keys()
        keys_file = root / KEYS_FILE  # how keys were hashed, for a rescale to hash alike
        temporary = keys_file.with_name(f"{KEYS_FILE}.{self.task}")
        temporary.write_text(json.dumps({"text": text}))
        temporary.replace(keys_file)
        operator = self.whole_plan.operator  # pre_sql as planned, not passed through
        window = None
        if isinstance(operator, nodes.WindowAggregate) and _partials(operator):
            window = operator
        for name, source in self.upstreams.items():
            if not source.owned:
                continue
            suffix = "" if source.index == 0 else f"-{source.index}"
            if isinstance(operator, nodes.WindowAggregate):
                pre_sql: str | None = operator.pre_sql
                keys = [f"__k{i}" for i in range(len(operator.keys))]
            else:
                pre_sql, keys = None, list(self.routing.keys[name])
            writers.append(
                ExchangeWriter(
                    log_,
                    source,
                    pre_sql,
                    keys,
                    self.task,
                    self.parallelism,
                    StateStore(root / f"exchange-{self.task}{suffix}"),
                    exchange_topic(self.name, source.index),
                    self.options.max_batch_records,
                    self.options.idle_timeout_ms,
                    self._dead_letters,
                    not self.read_options[name].ignore_parse_errors,
                    window,
                    text_keys=text,
                    by_window=self.routing.window,
                    reach=self.routing.reach,
                    latest=(self.read_options[name].startup or self.options.startup)
                    == "latest-offset",
                    fence=self.fence,
                    proctime=self.producer_proctime,
                )
            )
        return writers

    def _operate(
        self,
        branch: Any,
        tables: dict[str, pa.Table | None],
        watermark: int,
        batch: StateBatch,
    ) -> Changelog:
        change = super()._operate(branch, tables, watermark, batch)
        if self.shape != "rows" or self.by_key:  # (an outer join's row ids name their task)
            return change
        # rows keyed by row ids (a join's pairs) are unique within a task: the task's number
        # makes them unique in the sink
        prefix = f"{self.task}/".encode()
        rows = change.rows
        if rows is not None and "__key" in rows.column_names:
            keys = rows["__key"].combine_chunks().cast(pa.binary())
            keyed = pc.binary_join_element_wise(pa.scalar(prefix), keys, pa.scalar(b""))
            change.rows = rows.set_column(rows.column_names.index("__key"), "__key", keyed)
        change.retracted = [prefix + key for key in change.retracted]
        return change

    def _deliver(self, outputs: pa.Table) -> None:
        """Results for the caller (``on_results``, a SELECT's ``results()``): one Arrow IPC
        record per micro-batch to this task's partition of the results topic, after the
        checkpoint, as at parallelism 1 after the commit."""
        if self.results_topic is None:
            return
        if "__key" in outputs.column_names:
            outputs = outputs.drop_columns(["__key"])
        record = build_batch([encode(outputs)], compression=Compression.LZ4)
        self.log.append(self.results_topic, self.task, record).result()


class ExchangedWindowAggregation(WindowAggregation):
    """The consuming side of a windowed GROUP BY at parallelism > 1: it merges the producers'
    partials per key and pane (:class:`~.exchange.ExchangeWriter`) instead of rows."""

    def process(self, batch: MicroBatch) -> Changelog:
        out = Changelog()
        partials = batch.inputs[self.node.source]
        executor = self.executor
        assert isinstance(executor, WindowOperator)
        if partials is not None:
            out.late = executor.merge_panes(
                partials, batch.previous_watermark, batch.state, exchanged=True
            )
        emitted = executor.emit(batch.watermark, batch.state)
        if emitted is not None and emitted.num_rows:
            out.rows = run_ordered(self.node.post_sql, {FLOWS: emitted})
        return out


def parallel_plan(
    statement: Any,
    options: QueryOptions,
    resolve: Callable[[str], tuple[str, Any] | None] | None = None,
) -> ContinuousPlan:
    """The plan of ``statement`` to run at parallelism > 1 (see :func:`_launch_plan`); SqlError
    if it cannot be yet."""
    if isinstance(statement, StatementSet):
        raise SqlError(
            "parallelism > 1 does not run a statement set yet (its INSERTs share one read"
            " of the sources and one checkpoint): run it at parallelism 1, or each INSERT"
            " as a query of its own at parallelism > 1"
        )
    plan = _launch_plan(statement, resolve)
    to_topic = plan.sink_kind == "topic" and bool(plan.sink)
    if not to_topic and plan.sink_kind != "results":
        raise SqlError(
            "parallelism > 1 writes into a topic or returns results yet: use INSERT INTO"
            " <topic> SELECT ... or SELECT ..."
        )
    if options.late_topic:
        raise SqlError("'late-rows.topic' is not supported at parallelism > 1 yet")
    return plan


def ensure_topic(
    log_: Any,
    plan: ContinuousPlan,
    topic: str,
    role: str,
    parallelism: int,
    config: dict[str, str] | None = None,
) -> None:
    """Create ``topic`` (a sink, exchange or results topic) with a partition per task, or
    check it has them (adding them to a topic of our own). Another agent creating it at the
    same time is no error."""
    info = log_.get_topic(topic)
    if info is None:
        try:
            log_.create_topic(topic, parallelism, config)
            return
        except TopicExistsError:
            info = log_.get_topic(topic)
    if info is None or info.partitions >= parallelism:
        return
    if role != "sink":  # our own: one per task
        log_.set_partitions(topic, parallelism)
    elif not upserts_by_key(plan):
        raise SqlError(
            f"the {role} topic {topic!r} has {info.partitions} partition(s): a query at"
            f" parallelism {parallelism} writes one per task"
        )


def ensure_topics(log_: Any, plan: ContinuousPlan, name: str, parallelism: int) -> None:
    """The sink and exchange topics of query ``name`` at ``parallelism``."""
    # an updating query's output is an upsert per key: key-compacted, as at parallelism 1
    updating = {"cleanup.policy": "compact"} if plan.operator.updating else None
    if plan.sink:
        ensure_topic(log_, plan, plan.sink, "sink", parallelism, updating)
    routing = plan_routing(plan)
    if routing.shape != "stateless":
        topics = [exchange_topic(name, index) for index in range(len(plan.sources))]
        if routing.stage is not None:
            topics.append(stage_topic(name))
        for topic in topics:
            ensure_topic(log_, plan, topic, "exchange", parallelism, EXCHANGE_CONFIG)
            info = log_.get_topic(topic)  # one made before it had EXCHANGE_CONFIG
            if info is not None and log_.max_message_bytes(info) < EXCHANGE_MESSAGE_BYTES:
                log_.alter_topic_config(topic, EXCHANGE_CONFIG)


EXCHANGE_MESSAGE_BYTES = 1 << 30
"""An exchange record holds a whole micro-batch's rows for one task (a producer appends one
per task per micro-batch): the broker's default limit (8 MiB) is for clients' records, and the
source rows of 200,000 bids (Nexmark q16's at parallelism 2) came to 15 MB."""
EXCHANGE_CONFIG = {"max.message.bytes": str(EXCHANGE_MESSAGE_BYTES)}


class ParallelQuery:
    """A continuous query run as ``parallelism`` task processes; the launcher's handle on them
    (``start``, ``stop``, ``status``, ``run_until_caught_up`` as a :class:`ContinuousQuery`)."""

    def __init__(
        self,
        sh_settings: Any,
        log_: Any,
        query_file: Any,
        state_root: Path,
        options: QueryOptions,
        raw_options: dict[str, Any],
        parallelism: int,
        on_results: Callable[[pa.Table], None] | None = None,
        resolve: Callable[[str], tuple[str, Any] | None] | None = None,
    ) -> None:
        self.log = log_
        self.settings = sh_settings
        self.name = query_file.name
        self.query_file = query_file
        self.options = options
        self.raw_options = raw_options
        self.parallelism = parallelism
        self.statement = query_file.statement
        self.plan = parallel_plan(self.statement, options, resolve)
        if options.checkpoint_object_store:
            raise SqlError(
                "'checkpoint.object-store' is not supported at parallelism > 1 in task processes"
                " yet (each task's and exchange's state would need uploading): on agents the"
                " tasks checkpoint to the object store anyway; here run it at parallelism 1"
            )
        self.shape = parallel_shape(self.plan)
        called = {f.name.lower() for f in self.statement.find_all(exp.Anonymous)}
        self.functions = exported_functions(called)  # registered here: imported by the tasks
        # the task processes' zygote imports the runtime (about a second of CPU) while this
        # process moves state, creates the topics and spawns
        Zygote.get()
        self.root = task_root(state_root, self.name, parallelism)
        self.processes: list[TaskProcess] = []
        self._results: ParallelResults | None = None  # a drain's results go to no caller
        self._rescale_from(state_root)
        ensure_topics(log_, self.plan, self.name, parallelism)
        routing = plan_routing(self.plan)  # a state begun afresh: after an earlier run's records
        start_after_exchanged(log_, self.plan, routing, self.name, self.root, parallelism)
        if on_results is not None or self.plan.sink_kind == "results":
            topic = results_topic(self.name)
            ensure_topic(
                log_,
                self.plan,
                topic,
                "results",
                parallelism,
                {"retention.ms": str(RESULTS_RETENTION_MS)},
            )
            self._results = ParallelResults(log_, topic, parallelism, on_results)
        self.root.mkdir(parents=True, exist_ok=True)
        self.error: BaseException | None = None
        self.restarts = 0  # tasks restarted after a signal killed them
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _rescale_from(self, state_root: Path) -> None:
        """Move the state checkpointed at another parallelism to this one (:mod:`.rescale`)."""
        if (state_root / self.name).exists():
            raise SqlError(
                f"query {self.name!r} was checkpointed at parallelism 1 outside a parallel run"
                f" ({state_root / self.name}): rescaling it is not supported yet; run it at"
                " parallelism 1, or delete its state to run it afresh"
            )
        for path in parallel_states(state_root, self.name).values():
            finish(path)  # a rescale renamed its state in, then stopped
        others = {n: p for n, p in parallel_states(state_root, self.name).items() if p != self.root}
        if len(others) > 1 or (others and self.root.exists()):
            found = ", ".join(str(p) for p in [*others.values(), self.root] if p.exists())
            raise SqlError(
                f"query {self.name!r} has state at several parallelisms ({found}): delete all"
                " but one"
            )
        for old, old_root in others.items():
            plan, routing = self.plan, plan_routing(self.plan)
            rescale(
                self.log,
                plan,
                routing,
                self.name,
                old_root,
                old,
                self.root,
                self.parallelism,
                lambda phase, old=old, old_root=old_root: self._drain(old, old_root, phase),
            )

    def _drain(self, parallelism: int, root: Path, phase: str) -> None:
        """Run the tasks of the query's state at ``parallelism`` through a drain ``phase``."""
        log.info("query %s: draining its %d tasks (%s)", self.name, parallelism, phase)
        zygote = Zygote.get()
        processes = []
        for task in range(parallelism):
            spec = self._spec(task, False)
            spec.update(parallelism=parallelism, root=str(root), drain=phase)
            processes.append(zygote.spawn(spec))
        statuses = [process.wait() for process in processes]
        if any(statuses):
            raise StreamHouseError(
                f"query {self.name}: draining its tasks at parallelism {parallelism} failed"
                f" (exit statuses {statuses}); its state is unchanged"
            )

    def _spec(self, task: int, until_end: bool) -> dict[str, Any]:
        settings = {
            k: str(v) if isinstance(v, Path) else v
            for k, v in dataclasses.asdict(self.settings).items()
        }
        return {
            "settings": settings,
            "sql": self.query_file_text(),
            "name": self.name,
            "options": self.raw_options,
            "task": task,
            "parallelism": self.parallelism,
            "root": str(self.root),
            "until_end": until_end,
            "results_topic": self._results.topic if self._results is not None else None,
            "functions": self.functions,
            "stages": 1 if plan_routing(self.plan).stage is None else 2,
        }

    def _spawn(self, until_end: bool) -> None:
        for task in range(self.parallelism):  # an earlier run's errors are not this run's
            _error_path(self.root, task).unlink(missing_ok=True)
        zygote = Zygote.get()
        run = uuid.uuid4().hex  # a run to the end: each task's final-<task>.json names it
        specs = [{**self._spec(t, until_end), "run": run} for t in range(self.parallelism)]
        self.processes = [zygote.spawn(spec) for spec in specs]

    def _supervise(self) -> None:
        """Restart a task killed by a signal (kill -9, the OOM killer) from its checkpoint;
        a task that failed (exit status 1: an error it logged) stops the query."""
        while not self._stopping.wait(SUPERVISE_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                for task, process in enumerate(self.processes):
                    status = process.poll()
                    if status is None:
                        continue
                    if status > 0:
                        self.error = StreamHouseError(
                            f"query {self.name}: {_task_failure(self.root, task, status)}"
                        )
                        log.error("%s; stopping the other tasks", self.error)
                        for other in self.processes:
                            other.send_signal(signal.SIGTERM)
                        return
                    log.warning(
                        "query %s: task %d ended by signal %d; restarting it from its checkpoint",
                        self.name,
                        task,
                        -status,
                    )
                    self.processes[task] = Zygote.get().spawn(self._spec(task, False))
                    self.restarts += 1

    def query_file_text(self) -> str:
        from streamhouse.sql.parse import DIALECT

        sets = "".join(f"SET '{k}' = '{v}';\n" for k, v in self.query_file.settings.items())
        return sets + self.statement.sql(dialect=DIALECT) + ";"

    def start(self) -> ParallelQuery:
        if not self.processes:
            if self._results is not None:
                self._results.start()
            self._spawn(until_end=False)
            self._supervisor()
        return self

    def run_until_caught_up(self, final: bool = True) -> None:
        """Run every task to the end of what the sources hold now, close every window, exit.

        A started query's running tasks stop first (after their micro-batch, checkpointed: two
        processes of one task would contend for its state), the run to the end goes on from
        their checkpoints, and then they run on in the background, as at parallelism 1."""
        running = bool(self.processes)
        if running:
            self._halt()
        if self._results is not None:
            self._results.mark()
        self._spawn(until_end=True)
        try:
            self._wait()
        finally:
            if self._results is not None:
                self._results.take(fresh=True)  # every task has exited: all its results
        if running:
            self._stopping.clear()
            self._spawn(until_end=False)
            self._supervisor()

    def _halt(self) -> None:
        """Stop the running tasks (SIGTERM: each after its micro-batch) and their supervisor."""
        with self._lock:
            self._stopping.set()
            for process in self.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
        self._wait(stopping=True)

    def _supervisor(self) -> None:
        threading.Thread(
            target=self._supervise, name=f"query-{self.name}-tasks", daemon=True
        ).start()

    def _wait(self, stopping: bool = False) -> None:
        """Wait for every task to exit; ``stopping``: a task the SIGTERM of :meth:`stop` ended
        before it set up its handler (stopped right after starting) stopped, not failed."""
        failed = []
        for task, process in enumerate(self.processes):
            status = process.wait()
            if status != 0 and not (stopping and status == -signal.SIGTERM):
                failed.append(_task_failure(self.root, task, process.returncode))
        self.processes = []
        if failed:
            self.error = StreamHouseError(f"query {self.name}: " + "; ".join(failed))
            raise self.error

    def stop(self, checkpoint: bool = True) -> None:
        """Stop every task after its current micro-batch (SIGTERM) and wait for them."""
        try:
            self._halt()
        except StreamHouseError as exc:
            log.warning("%s", exc)
        if self._results is not None:
            self._results.stop()

    def results(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """Result batches of a SELECT as the tasks produce them, as at parallelism 1."""
        if self._results is None:
            return iter(())
        return self._results.batches(timeout)

    def status(self) -> dict[str, Any]:
        tasks = []
        for task in range(self.parallelism):
            path = self.root / f"task-{task}.json"
            try:
                tasks.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                tasks.append({"task": task})
        running = any(p.poll() is None for p in self.processes)
        for task_status, process in zip(tasks, self.processes, strict=False):
            if process.poll() is None and task_status.get("pid") == process.pid:
                _read_memory(task_status, process.pid)  # now, not as of its last micro-batch
        marks = [t.get("watermark_ms") for t in tasks]
        watermark = min(marks) if marks and None not in marks else None
        return {
            "name": self.name,
            "state": "failed" if self.error else ("running" if running else "stopped"),
            "parallelism": self.parallelism,
            "restarts": self.restarts,
            "sink": self.plan.sink,
            "watermark": _format_time(watermark) if watermark is not None else None,
            "rows_in": sum(t.get("rows_in", 0) for t in tasks),
            "rows_per_s": round(sum(t.get("rows_per_s", 0.0) for t in tasks), 1),
            "rows_out": sum(t.get("rows_out", 0) for t in tasks),
            "late_rows": sum(t.get("late_rows", 0) for t in tasks),
            "rejected_rows": sum(t.get("rejected_rows", 0) for t in tasks),
            "damaged_rows": 0,
            "rss_bytes": sum(t.get("rss_bytes", 0) for t in tasks),  # of the task processes
            "peak_rss_bytes": sum(t.get("peak_rss_bytes", 0) for t in tasks),
            "tasks": tasks,
        }

    def explain(self) -> str:
        return explain_parallel(self.plan, self.parallelism, self.name)


RESULTS_RETENTION_MS = 3_600_000
"""How long the results topic keeps a parallel query's results for its caller."""


def _launch_plan(
    statement: Any, resolve: Callable[[str], tuple[str, Any] | None] | None
) -> ContinuousPlan:
    """The plan the tasks will run (with ``resolve``, the catalog's: views inlined, a lookup
    table known as one), so the launcher routes and refuses what they would."""
    if resolve is None:
        return plan_query(statement)
    statement, resolve = planned_statement(statement, resolve)
    plan = plan_query(statement)
    proctime = catalog_proctime_columns(resolve)
    column = getattr(plan.operator, "window_column", None)
    window = getattr(plan.operator, "window", None)
    if (
        column is not None
        and any(column in proctime(s) for s in plan.sources)
        and (window is None or window.kind == WindowKind.SESSION)
    ):
        raise SqlError(
            f"a window over the processing-time column {column!r} (PROCTIME()) runs at"
            " parallelism > 1 in a TUMBLE, HOP or CUMULATE aggregate only; run this one at"
            " parallelism 1"
        )
    return plan


def results_topic(query: str) -> str:
    """The internal topic a parallel query's tasks send the caller's results through."""
    return f"{query}.results"


class ParallelResults:
    """The launcher's side of the results of a parallel query: a thread tails the results topic
    (every task's partition) from where it stood at the start, and passes each batch to
    ``on_results`` and to :meth:`batches` (a SELECT's ``results()``)."""

    def __init__(
        self,
        log_: Any,
        topic: str,
        parallelism: int,
        on_results: Callable[[pa.Table], None] | None,
    ) -> None:
        self.log = log_
        self.topic = topic
        self.partitions = list(range(parallelism))
        self.on_results = on_results
        self.positions: dict[int, int] = {}
        self._queue: deque[pa.RecordBatch] = deque()
        self._ready = threading.Condition()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def mark(self) -> None:
        """Results from here on are the caller's (earlier runs' are not)."""
        self.positions = self._high_watermarks(fresh=True)

    def _high_watermarks(self, fresh: bool = False) -> dict[int, int]:
        """The results topic's high watermarks; ``fresh``: read from the store (the metadata
        cache learns the task processes' appends a poll later: the last results of a run to
        the end could be left untaken, or an earlier run's taken)."""
        metadata = self.log.metadata
        if fresh:
            read = getattr(metadata, "fresh_offset", metadata.partition_offset)
            return {p: read(self.topic, p).high_watermark for p in self.partitions}
        offsets = metadata.partition_offsets(self.topic)
        return {p: offsets[p].high_watermark for p in self.partitions}

    def start(self) -> None:
        self.mark()
        self._thread = threading.Thread(
            target=self._tail, name=f"results-{self.topic}", daemon=True
        )
        self._thread.start()

    def _tail(self) -> None:
        pause = FIRST_POLL_S
        while not self._stopped.is_set():
            try:
                taken = self.take()
            except Exception:
                log.exception("results of %s", self.topic)
                taken = False
            pause = FIRST_POLL_S if taken else min(pause * 2, 0.2)
            self._stopped.wait(pause)

    def take(self, fresh: bool = False) -> bool:
        """Deliver every result appended since the last take (``fresh``: up to the store's
        high watermarks); whether there was any."""
        with self._lock:
            ends = self._high_watermarks(fresh)
            wanted = [p for p in self.partitions if ends[p] > self.positions[p]]
            if not wanted:
                return False
            records = read_records(
                self.log,
                self.topic,
                wanted,
                {p: self.positions[p] for p in wanted},
                {p: ends[p] for p in wanted},
                isolation=Isolation.READ_UNCOMMITTED,
            )
            self.positions.update({p: ends[p] for p in wanted})
            for value in records["value"].to_pylist():  # one record per task micro-batch
                table = decode(value)
                if self.on_results is not None:
                    self.on_results(table)
                with self._ready:
                    self._queue.extend(table.to_batches())
                    self._ready.notify_all()
            return True

    def stop(self) -> None:
        """Deliver what the tasks sent last, then end :meth:`batches`."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.take()
        with self._ready:
            self._ready.notify_all()

    def batches(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """Result batches as they come; ends when the query stops (or after ``timeout`` idle
        seconds)."""
        while True:
            with self._ready:
                if not self._queue:
                    if self._stopped.is_set():
                        return
                    if not self._ready.wait(timeout) and timeout is not None:
                        return
                if not self._queue:
                    continue
                item = self._queue.popleft()
            yield item


def task_settings(raw: dict[str, Any]) -> Settings:
    """A task process's settings: the launcher's (``raw``, as sent), its log cache at most
    :data:`TASK_CACHE_BYTES`."""
    from streamhouse.config import Settings

    settings = Settings(**{k: Path(v) if k == "data_dir" else v for k, v in raw.items()})
    return dataclasses.replace(settings, cache_bytes=min(settings.cache_bytes, TASK_CACHE_BYTES))


def run_task(spec: dict[str, Any]) -> None:
    """The body of one task process (see :class:`ParallelQuery`)."""
    from streamhouse.connection import StreamHouse

    settings = task_settings(spec["settings"])
    task, parallelism = int(spec["task"]), int(spec["parallelism"])
    root = Path(spec["root"])
    stopping = False

    def on_term(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    import_functions(spec.get("functions") or [])
    _share_cores(parallelism)
    with StreamHouse(settings) as sh:
        two = int(spec.get("stages", 1)) == 2  # and the second: the query's sink, results
        first = spec_query(
            sh, spec, task, 1 if two else None, None if two else spec.get("results_topic")
        )
        query = first
        writers: list[ExchangeWriter] = []
        drain = spec.get("drain")
        try:
            if two:
                query = spec_query(sh, spec, task, 2, spec.get("results_topic"))
            if drain == "stages":  # a query of two: its first stage takes the first exchange
                take_exchange(first)
                return
            if drain == "consumers":
                take_exchange(query)
                return
            writers = first.writers(sh.log, root)
            if drain == "producers":  # a batch a kill left pending: sent again, whole
                for writer in writers:
                    if writer.store.get_json(EXCHANGE_PENDING) is not None:
                        writer.step()
                return
            _run(
                query,
                writers,
                root / f"task-{task}.json",
                spec.get("run") if spec["until_end"] else None,
                lambda: stopping,
                first if two else None,
            )
        finally:
            first.stop()
            query.stop()
            for writer in writers:
                writer.store.close()


def spec_query(
    sh: Any, spec: dict[str, Any], task: int, stage: int | None = None, results: str | None = None
) -> TaskQuery:
    """Task ``task``'s continuous query as ``spec`` (:meth:`ParallelQuery._spec`) describes it,
    on ``sh`` (a StreamHouse): with ``stage``, that stage of a query of two (:mod:`.stages`);
    ``results``, the topic its results go to for the caller."""
    from streamhouse.runtime.launch import QueryFile

    query_file = QueryFile.read(spec["sql"], spec["name"])
    options = QueryOptions().with_options({**query_file.settings, **spec["options"]})
    return TaskQuery(
        sh.log,
        sh.engine._resolve,
        query_file.statement,
        query_file.name,
        Path(spec["root"]) / (f"stage2-{task}" if stage == 2 else f"task-{task}"),
        options,
        task=task,
        parallelism=int(spec["parallelism"]),
        results_topic=results,
        stage=stage,
    )


def _share_cores(parallelism: int) -> None:
    """Size the task's native thread pools (Arrow's, DuckDB's) to its share of the cores, not
    to all of them: the tasks of a query run at once, and at parallelism 2 on two cores each
    task's pools of two threads contended with the other's (the windowed COUNT's CPU per
    event at parallelism 2 went from 1.29x to 1.14x of parallelism 1's, a filter's from 1.07x
    to 1.01x: ``parallel_bench.py --steady``, 5 pairs each)."""
    from streamhouse.sql.json_values import set_duckdb_threads

    share = max(1, (os.cpu_count() or 1) // parallelism)
    pa.set_cpu_count(share)
    set_duckdb_threads(share)


def _run(
    query: TaskQuery,
    writers: list[ExchangeWriter],
    status_path: Path,
    run: str | None,
    stopping: Any,
    first: TaskQuery | None = None,
) -> None:
    """Alternate the task's producing and consuming sides until stopped (or, with ``run``, the
    id of a run to the end: until every task sent what its sources held at the start and this
    task took all of it, every window closed). ``first``: the first stage of a query of two
    (:mod:`.stages`), run between the producing side and ``query``, the second."""
    until_end = run is not None
    ready = time.time()  # set up: from here on the task processes records
    query.setup_cpu_seconds = round(time.process_time(), 3)
    _write_status(query, writers, status_path, ready, first)
    if until_end and query.shape == "stateless":
        query.run_until_caught_up(final=True)
        _write_status(query, writers, status_path, ready, first)
        return
    targets: list[dict[int, int]] | None = None
    if until_end:
        targets = []
        for writer in writers:
            offsets = query.log.metadata.partition_offsets(writer.source.topic)
            targets.append({p: offsets[p].high_watermark for p in writer.source.positions})
    sent_final = [False] * len(writers)
    done = status_path.with_name(f"final-{query.task}.json")  # this task's producers finished
    announced = False
    first_done = first is None  # the first stage sent all it will (a run to the end)
    pause = FIRST_POLL_S
    # a run to the end waits for the other tasks' last records: no longer than UNTIL_END_POLL_S
    longest = UNTIL_END_POLL_S if until_end else float("inf")
    while not stopping():
        progressed = False
        for i, writer in enumerate(writers):
            if sent_final[i]:
                continue
            if targets is not None and writer.caught_up(targets[i]):
                writer.step(final=True)
                sent_final[i] = progressed = True
            else:
                progressed = writer.step() or progressed
        if until_end and all(sent_final) and not announced:
            _write_atomically(done, {"run": run})
            announced = True
        if first is not None:
            stepped = first.step()
            progressed = stepped or progressed
            if (
                until_end
                and not (stepped or first_done)
                and _took_every_final(first, status_path.parent, run)
            ):
                _write_atomically(done.with_name(f"stage1-{done.name}"), {"run": run})
                first_done = True
        progressed = query.step() or progressed
        if progressed:
            _write_status(query, writers, status_path, ready, first)
            pause = FIRST_POLL_S
        elif until_end and _took_every_final(
            query, status_path.parent, run, "final" if first is None else "stage1-final"
        ):
            break
        else:
            time.sleep(pause)
            pause = min(pause * 2, query.options.poll_interval_ms / 1000, longest)
    _write_status(query, writers, status_path, ready, first)


def _took_every_final(query: TaskQuery, root: Path, run: str | None, marker: str = "final") -> bool:
    """Whether every task's producers sent their last records of run ``run`` (each says so in
    ``<marker>-<task>.json`` once they are appended: ``final``, the producing sides;
    ``stage1-final``, the first stages of a query of two) and this task took every exchange
    record appended by then. (The watermark alone does not tell: after an earlier run to the
    end it is final from the start.)"""
    for task in range(query.parallelism):
        try:
            if json.loads((root / f"{marker}-{task}.json").read_text()).get("run") != run:
                return False
        except (OSError, ValueError):
            return False
    metadata = query.log.metadata
    fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)  # not the cache's:
    for source in query.sources.values():  # other processes' appends reach it a poll later
        if isinstance(source, ExchangeSource):
            end = fresh(source.topic, query.task).high_watermark
            if source.positions.get(query.task, 0) < end:
                return False
    return True


def _write_atomically(path: Path, value: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value))
    temporary.replace(path)


RATE_INTERVAL_S = 1.0
"""The interval a task's ``rows_per_s`` is measured over."""

DRAIN_STALL_S = 60.0
"""How long a draining task may take no exchange record before it gives up."""


def take_exchange(query: TaskQuery) -> None:
    """A drain's consuming side: take every exchange record appended so far (no producer runs
    any more), and the watermark they carry, so that no row is in flight when the state moves
    and every task stands at one watermark. (The ends are read from the store: a metadata
    cache learns other processes' appends a poll later.)"""
    metadata = query.log.metadata
    fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)
    sources = [s for s in query.sources.values() if isinstance(s, ExchangeSource)]
    targets = [fresh(s.topic, query.task).high_watermark for s in sources]
    deadline = time.monotonic() + DRAIN_STALL_S
    while any(s.positions.get(query.task, 0) < t for s, t in zip(sources, targets, strict=True)):
        if query.step():
            deadline = time.monotonic() + DRAIN_STALL_S
        elif time.monotonic() > deadline:
            raise StreamHouseError(
                f"task {query.task} took no exchange record for {DRAIN_STALL_S} s"
            )
        else:
            time.sleep(FIRST_POLL_S)
    while query.step():  # the watermark of the last records read moves on in a step of its own
        pass


def _error_path(root: Path, task: int) -> Path:
    """Where a task that failed leaves its error, for the launcher to tell the caller."""
    return root / f"task-{task}.error"


def _task_failure(root: Path, task: int, status: int | None) -> str:
    """What the launcher says of task ``task``'s failure: its own error if it left one."""
    try:
        return f"task {task}: {_error_path(root, task).read_text()}"
    except OSError:
        return f"task {task} exited with status {status}"


def _write_status(
    query: TaskQuery,
    writers: list[ExchangeWriter],
    path: Path,
    ready: float,
    first: TaskQuery | None = None,
) -> None:
    status = task_status(query, writers, ready, first)
    _read_memory(status, None)  # a task process's own (not an agent's, which runs tasks as threads)
    _write_atomically(path, status)


def task_status(
    query: TaskQuery, writers: list[ExchangeWriter], ready: float, first: TaskQuery | None = None
) -> dict[str, Any]:
    """Task ``query``'s progress (``ready``: when it was set up): source offsets, watermark,
    rows and rows/s (over the last :data:`RATE_INTERVAL_S`), CPU seconds and state size;
    ``first``: the first stage of a query of two, whose state and late rows count too."""
    read = [w.source for w in writers] if query.shape != "stateless" else [*query.sources.values()]
    offsets: dict[str, Any] = {
        source.name: {str(p): o for p, o in source.positions.items()} for source in read
    }
    if len((first or query).upstreams or query.sources) == 1:
        offsets = next(iter(offsets.values()), {})
    stateless = query.shape == "stateless"
    rows_in = query.rows_in if stateless else sum(w.rows_in for w in writers)
    now = time.time()
    # source records read per second: over the last whole interval (before one: since set-up)
    since, before, rate, whole = query.rate_sample or (ready, rows_in, 0.0, False)
    if now - since >= RATE_INTERVAL_S:
        rate, whole = (rows_in - before) / (now - since), True
        since, before = now, rows_in
    elif not whole and now > since:
        rate = (rows_in - before) / (now - since)
    query.rate_sample = (since, before, rate, whole)
    status = {
        "task": query.task,
        "offsets": offsets,
        "watermark_ms": query.watermark,
        "watermark": _format_time(query.watermark),
        "rows_per_s": round(rate, 1),
        "rows_in": rows_in,
        "rows_out": query.rows_out,
        "late_rows": query.late_rows,
        "rejected_rows": (
            query.rejected_rows if stateless else sum(w.rejected_rows for w in writers)
        ),
        "state_bytes": query.store.size_bytes(),
        "pid": os.getpid(),
        "ready_at": ready,
        "cpu_seconds": round(time.process_time(), 3),  # of this task process
        "setup_cpu_seconds": query.setup_cpu_seconds,  # of it, before the first micro-batch
        "updated_at": now,
    }
    if first is not None:
        status["state_bytes"] += first.store.size_bytes()
        status["late_rows"] += first.late_rows
    return status


def _read_memory(status: dict[str, Any], pid: int | None) -> None:
    """Put task process ``pid``'s resident bytes now and at its peak into its ``status``."""
    memory = resident_memory(pid)
    if memory is not None:
        status["rss_bytes"], status["peak_rss_bytes"] = memory


def task_main(spec: dict[str, Any]) -> int:
    """A forked task process's body: its exit status (1 after a one-line error)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return_big_buffers()  # a task's heap would keep what its merges of state free
    try:
        run_task(spec)
    except StreamHouseError as exc:
        log.error("query %s task %s: %s", spec.get("name"), spec.get("task"), exc)
        with contextlib.suppress(OSError, KeyError):  # for the launcher's error
            _error_path(Path(spec["root"]), int(spec["task"])).write_text(str(exc))
        return 1
    except BaseException:
        log.exception("query %s task %s failed", spec.get("name"), spec.get("task"))
        return 1
    finally:
        logging.shutdown()
    return 0
