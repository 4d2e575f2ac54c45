"""Tasks of parallel queries on ``serve`` agents: each task a lease of its own.

A query file with ``SET 'parallelism' = 'N'`` given to agents sharing a PostgreSQL store
(``serve --queries DIR``) is not one lease but N: ``query/<name>/task-<i>``
(:func:`task_lease_name`). The agents' supervisors (:mod:`.supervisor`) take them as they take
whole queries', spread over the agents running the query: each such agent also holds a lease of
its own, ``query/<name>/agent-<agent id>`` (:func:`member_lease_name`, renewed with the
others), and takes a task only while it holds fewer of the query's tasks than its share,
``ceil(N / agents holding such a live lease)``, and gives one back (with a last checkpoint) when
it holds more, so tasks taken before another agent came up move to it. (Agents that serve Kafka
but run no query do not count.) A dead
agent's tasks are taken by the others once their leases expired, each resumed from its own
checkpoint in the object store.

A task runs in a thread of the agent holding it (:class:`AgentTask`), as a task process runs
locally (:mod:`.parallel`): its producing side (one :class:`~.exchange.ExchangeWriter` per
source it reads partitions of) and its consuming side (a :class:`~.parallel.TaskQuery`). Both
keep their state where another agent finds it:

- the consuming side is fenced by the task's lease as a whole query is (its sink transactions,
  its checkpoints under ``checkpoints/<name>.p<N>.task-<i>/``, recorded in the metadata store
  under the lease: :class:`~streamhouse.state.remote.LeasedCheckpoints`);
- each producing side's state goes to ``checkpoints/<name>.p<N>.exchange-<i>[-<source>]/``
  whenever the consuming side publishes a checkpoint, and its exchange appends are fenced by the
  lease too. A producer restored from such a copy catches up with the batches it appended after
  it from the exchange itself (:meth:`~.exchange.ExchangeWriter.recover`), so it never sends a
  sequence number again with other rows, and the consumers' dedup by sequence number keeps every
  row exactly once.

A query of two stages (:mod:`.stages`, Nexmark q4) runs the same way, each task whole under its
one lease: its producing side, its first stage (checkpoints ``task-<i>``) and its second stage
(``stage2-<i>``, into the sink), one after the other in the task's thread as in a task process.
Leasing the two stages of an index apart would let them move apart, for nothing: each reads
every task's output through an exchange anyway, and one lease per index keeps the share, the
hand-over and the status as for any parallel query. The first stage's appends to the second
exchange are fenced by the lease; its intent, which on one machine stays in its local state,
travels in the records it sends, and a first stage restored from a checkpoint older than them
replays their batches from it (:func:`~.stages.sent_after_checkpoint`). Its parallelism does not
change on agents yet (:func:`~.agent_rescale.rescale_on_agents` refuses it).

Each task writes its progress (source offsets, watermark, rows and rows/s, state size, the
agent running it) to the object store, ``tasks/<name>/task-<i>.json``, about once a second:
``streamhouse cluster status`` lists it, :meth:`AgentTask.status` gives it.

A ``SELECT`` (whose rows have no caller on an agent) writes its rows to topic
``<name>.output`` (:func:`writing_results`). A query restarted at another parallelism has its
state moved to the new tasks first (:mod:`.agent_rescale`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from sqlglot import exp

from streamhouse.errors import FencedError, SqlError, StreamHouseError
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.agent_rescale import current_parallelism
from streamhouse.runtime.exchange import PENDING as EXCHANGE_PENDING
from streamhouse.runtime.exchange import ExchangeWriter, stage_topic
from streamhouse.runtime.launch import QueryFile, declared, is_materialized_view
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.parallel import (
    FIRST_POLL_S,
    RATE_INTERVAL_S,
    TaskQuery,
    ensure_topics,
    parallel_plan,
    take_exchange,
    task_status,
)
from streamhouse.runtime.routing import plan_routing
from streamhouse.runtime.stages import replay_next, sent_after_checkpoint
from streamhouse.runtime.task_state import task_checkpoint_name, task_root
from streamhouse.sql.ddl import stream_definition
from streamhouse.sql.engine import Engine
from streamhouse.sql.parse import parse
from streamhouse.state.remote import LeasedCheckpoints

log = logging.getLogger(__name__)

LEASE_PREFIX = "query/"
STATUS_PREFIX = "tasks"
"""Under ``tasks/<query>/task-<i>.json``: each task's progress, as its agent last wrote it."""


def task_lease_name(query: str, task: int) -> str:
    """The lease of task ``task`` of parallel query ``query``."""
    return f"{LEASE_PREFIX}{query}/task-{task}"


def task_of_lease(name: str) -> tuple[str, int] | None:
    """(query, task) of a task's lease name; None for another lease (a whole query's, an
    agent's membership)."""
    query, _, task = name.removeprefix(LEASE_PREFIX).partition("/task-")
    return (query, int(task)) if task.isdigit() else None


def member_lease_name(query: str, agent: str) -> str:
    """The lease agent ``agent`` holds while it runs tasks of parallel query ``query``."""
    return f"{members_prefix(query)}{agent}"


def members_prefix(query: str) -> str:
    return f"{LEASE_PREFIX}{query}/agent-"


def status_key(query: str, task: int) -> str:
    return f"{STATUS_PREFIX}/{query}/task-{task}.json"


def output_topic(query: str) -> str:
    """The topic a ``SELECT`` run as tasks on agents writes its rows to (its clients read
    them there: :func:`writing_results`)."""
    return f"{query}.output"


def writing_results(query_file: QueryFile) -> QueryFile:
    """``query_file`` with a ``SELECT`` (whose rows have no caller on an agent) made an
    ``INSERT INTO`` its :func:`output_topic`: one JSON record per row (an upsert per key for an
    updating query), written exactly once in each task's transactions as any sink is, for any
    Kafka client (``read_committed``) to read."""
    statement = query_file.statement
    if not isinstance(statement, exp.Query):
        return query_file
    topic = exp.Table(this=exp.to_identifier(output_topic(query_file.name), quoted=True))
    insert = exp.Insert(this=topic, expression=statement.copy())
    return dataclasses.replace(query_file, statement=insert)


def _refuse_declared_output(engine: Engine, query: str) -> None:
    """``SqlError`` when a stream or table of the catalog (or the query file) reads ``query``'s
    :func:`output_topic`: a SELECT's rows would land among another's data."""
    topic = output_topic(query)
    for entry in [*engine.temporary.entries(), *engine.log.metadata.list_catalog()]:
        if entry.kind not in ("stream", "table"):
            continue
        if stream_definition(parse(entry.sql)[0]).topic == topic:
            raise SqlError(
                f"query {query!r} is a SELECT, whose rows on agents go to topic {topic!r}, but"
                f" {entry.kind} {entry.name!r} is declared on that topic: rename the query (its"
                " file) or write its rows with INSERT INTO a topic of your own"
            )


def parallelism_of(query_file: QueryFile) -> int:
    """The parallelism a query file asks for (``SET 'parallelism'``; 1 by default)."""
    return QueryOptions().with_options(query_file.settings).parallelism


def share(parallelism: int, live_agents: int) -> int:
    """How many of a query's tasks one agent runs at most: ``ceil(N / live agents)``.

    >>> share(2, 2), share(2, 1), share(3, 2)
    (1, 2, 2)
    """
    return math.ceil(parallelism / max(1, live_agents))


class AgentTask:
    """Task ``task`` of a parallel query, run in a thread of this agent while it holds the
    task's ``lease`` (see module). ``error`` is set when it failed (``FencedError``: the lease
    was lost); :meth:`stop` ends it, with a last checkpoint unless told not to."""

    def __init__(
        self,
        engine: Engine,
        query_file: QueryFile,
        task: int,
        state_root: Path,
        lease: Lease,
        agent: str,
        *,
        start: bool = True,
    ) -> None:
        if is_materialized_view(query_file.statement):
            raise SqlError("parallelism > 1 does not run a materialized view yet")
        selecting = isinstance(query_file.statement, exp.Query)
        query_file = writing_results(query_file)
        self.query_name = query_file.name
        self.name = f"{query_file.name}/task-{task}"
        self.task = task
        self.agent = agent
        self.lease = lease
        engine = declared(engine, query_file)
        if selecting:
            _refuse_declared_output(engine, query_file.name)
        self.log = engine.log
        options = QueryOptions().with_options(query_file.settings)
        self.parallelism = parallelism = options.parallelism
        plan = parallel_plan(query_file.statement, options, engine._resolve)
        if plan.sink_kind != "topic":
            raise SqlError(
                f"a query at parallelism > 1 on agents writes into a topic, not {plan.sink_kind}"
            )
        two = plan_routing(plan).stage is not None
        self._refuse_other_parallelism()
        ensure_topics(self.log, plan, query_file.name, parallelism)
        self.root = task_root(state_root, query_file.name, parallelism)
        self.root.mkdir(parents=True, exist_ok=True)

        def task_query(store: str, stage: int | None) -> TaskQuery:
            self.state_paths.append(self.root / store)
            return TaskQuery(
                self.log,
                engine._resolve,
                query_file.statement,
                query_file.name,
                self.root / store,
                options,
                fence=lease,
                task=task,
                parallelism=parallelism,
                stage=stage,
            )

        self.state_paths: list[Path] = []
        # a query of two stages: its first stage here, its second (into the sink) the query
        self.first = self.query = task_query(f"task-{task}", 1 if two else None)
        self.producers: list[LeasedCheckpoints] = []
        self.writers: list[ExchangeWriter] = []
        self._replays: list[dict[str, Any]] = []  # first-stage batches to send again
        try:
            if two:
                self.query = task_query(f"stage2-{task}", 2)
                self._replays = sent_after_checkpoint(
                    self.log, self.first.store, stage_topic(self.query_name), task, parallelism
                )
            if self.first.shape != "stateless":
                self._restore_producers()
                self.writers = self.first.writers(self.log, self.root)
                for writer in self.writers:
                    writer.recover()
        except BaseException:
            self._close()
            raise
        checkpoints = self.query.checkpoints
        self._recorded = checkpoints.recorded if checkpoints is not None else None
        self.error: BaseException | None = None
        self._status: dict[str, Any] = {"task": task}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(
                target=self._loop, name=f"task-{self.name}", daemon=True
            )
            self._thread.start()

    def _refuse_other_parallelism(self) -> None:
        """Refuse checkpoints at another parallelism rather than read the sources again from
        the start (which would write rows twice): they move to this one first
        (:func:`~.agent_rescale.rescale_on_agents`, which the supervisors run)."""
        current = current_parallelism(self.log.metadata, self.query_name)
        if current is not None and current != self.parallelism:
            raise SqlError(
                f"query {self.query_name!r} was checkpointed on agents at another parallelism"
                f" ({current}): its state moves to {self.parallelism} tasks first (the agents'"
                " supervisors do: rescale_on_agents)"
            )

    def drain(self, phase: str) -> None:
        """A rescale's drain of this (not started) task: ``producers`` send again a batch a
        kill left pending, whole; ``consumers`` take every exchange record appended so far."""
        if phase == "producers":
            for writer in self.writers:
                if writer.store.get_json(EXCHANGE_PENDING) is not None:
                    writer.step()
        elif self.query.shape != "stateless":
            take_exchange(self.query)

    def _producer_stores(self) -> list[str]:
        """The producing side's state stores (``exchange-<i>[-<source>]``), as
        :meth:`TaskQuery.writers` names them."""
        stores = []
        for source in self.first.upstreams.values():
            if source.owned:
                suffix = "" if source.index == 0 else f"-{source.index}"
                stores.append(f"exchange-{self.task}{suffix}")
        return stores

    def _restore_producers(self) -> None:
        for store in self._producer_stores():
            name = task_checkpoint_name(self.query_name, self.parallelism, store)
            checkpoints = LeasedCheckpoints(self.log.store, self.log.metadata, name, self.lease)
            checkpoints.restore(self.root / store)
            self.producers.append(checkpoints)
            self.state_paths.append(self.root / store)

    def _publish_producers(self) -> None:
        """Copy each producing side's state to the object store (and record it)."""
        for writer, checkpoints in zip(self.writers, self.producers, strict=True):
            writer.mark_checkpoint()
            checkpoints.publish(writer.store, {writer.source.topic: writer.source.positions})

    def step(self) -> bool:
        """One round of the task: its producing side, its first stage (replaying first a batch
        it sent after its checkpoint) and its consuming side each run a micro-batch; whether
        any progressed. The producers publish their state when the consuming side did."""
        progressed = False
        for writer in self.writers:
            progressed = writer.step() or progressed
        if self.first is not self.query:
            replay_next(self.first.store, self._replays)
            progressed = self.first.step() or progressed
        query = self.query
        progressed = query.step() or progressed
        recorded = query.checkpoints.recorded if query.checkpoints is not None else None
        if recorded != self._recorded:  # the consuming side published: the producers follow
            self._publish_producers()
            self._recorded = recorded
        return progressed

    def _loop(self) -> None:
        ready = time.time()
        reported = 0.0
        pause = FIRST_POLL_S
        try:
            while not self._stopping.is_set():
                progressed = self.step()
                if time.monotonic() - reported >= RATE_INTERVAL_S:
                    self._report(ready)
                    reported = time.monotonic()
                if progressed:
                    pause = FIRST_POLL_S
                else:
                    self._stopping.wait(pause)
                    pause = min(pause * 2, self.query.options.poll_interval_ms / 1000)
        except BaseException as exc:  # the supervisor sees it and gives the lease up
            if isinstance(exc, FencedError):
                log.warning("query %s: lease lost: %s", self.name, exc)
            else:
                log.exception("query %s failed", self.name)
            self.error = exc

    def _report(self, ready: float) -> None:
        first = self.first if self.first is not self.query else None
        status = task_status(self.query, self.writers, ready, first)
        status.update(agent=self.agent, epoch=self.lease.epoch, parallelism=self.parallelism)
        self.log.store.put(status_key(self.query_name, self.task), json.dumps(status).encode())
        self._status = status

    def status(self) -> dict[str, Any]:
        """The task's progress as it last wrote it (see :func:`~.parallel.task_status`), with
        the agent running it, the lease epoch and the query's parallelism."""
        return dict(self._status)

    def stop(self, checkpoint: bool = True) -> None:
        """Stop after the current micro-batch; with ``checkpoint`` (and no error), publish
        the producing sides' and the consuming side's state first."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if checkpoint and self.error is None:
                self._publish_producers()
        except StreamHouseError as exc:
            log.warning("query %s: no last checkpoint of its producers: %s", self.name, exc)
            checkpoint = False
        for query in self._stages:
            query.stop(checkpoint=checkpoint and self.error is None)
        self._close()

    @property
    def _stages(self) -> list[TaskQuery]:
        """The task's continuous queries: the first stage and the second, or the one."""
        return [self.first] if self.first is self.query else [self.first, self.query]

    def _close(self) -> None:
        for writer in self.writers:
            writer.store.close()
        for query in self._stages:
            query.stop(checkpoint=False)  # (a no-op once stopped)
