"""Continuous queries across ``serve`` agents: each runs on exactly one agent at a time.

Every agent sharing a PostgreSQL metadata store knows the same queries (its ``--queries``
files and the materialized views of the catalog) and tries to take each one's lease,
``query/<name>`` (:mod:`streamhouse.log.metadata.leases`). The holder starts the query from
the checkpoint recorded under the lease (:class:`~streamhouse.state.remote.LeasedCheckpoints`)
and renews the lease every ``ttl / 3``, also while the query starts (a restore slower than the
lease must not lose it); the others keep trying at that pace. A holder whose
renewal is refused (it paused past its lease, the store's clock says it expired) stops the
query at once, without a last checkpoint; anything it still tries to write is refused by the
fence in the store (``FencedError``), so the new holder, which resumed from the last
checkpoint, is the only writer. When a holder dies, its lease expires after at most ``ttl``
and another agent takes the query over within ``ttl / 3`` more, plus the restore.

A query that fails (not fenced) releases its lease and is tried again after
:data:`RETRY_FAILED_S`, by whichever agent takes it.

A query at parallelism N (``SET 'parallelism'``) is N such units, one lease per task, spread
over the agents running the query (:mod:`.placement`); so is a query at parallelism 1 whose
state is of a parallel run. A query whose tasks' checkpoints are at another parallelism than
its file's is rescaled first, by one agent, while the others take none of its tasks
(:mod:`.agent_rescale`).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamhouse.errors import FencedError, SqlError, StreamHouseError
from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.agent_rescale import (
    checkpointed,
    current_parallelism,
    renewing,
    rescale_lease_name,
    rescale_on_agents,
)
from streamhouse.runtime.launch import QueryFile, start_query
from streamhouse.runtime.placement import (
    AgentTask,
    member_lease_name,
    members_prefix,
    parallelism_of,
    share,
    task_lease_name,
)
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.sql.engine import Engine

log = logging.getLogger(__name__)

LEASE_PREFIX = "query/"
"""Query leases are named ``query/<query name>``."""

RETRY_FAILED_S = 30.0
"""How long after a query failed it is tried again."""


def lease_name(query: str) -> str:
    return f"{LEASE_PREFIX}{query}"


@dataclass
class _Held:
    """One query (or one task of a parallel query) this agent may run: its file, and while it
    holds the lease, the running query (task)."""

    query_file: QueryFile
    lease: Lease | None = None
    query: ContinuousQuery | AgentTask | None = None
    valid_until: float = 0.0  # monotonic: the lease surely ran out by then (renewed before)
    retry_at: float = 0.0
    task: int | None = None  # a task of a parallel query: its number
    parallelism: int = 1
    member: Lease | None = None  # task 0: this agent's membership lease of the query

    @property
    def lease_name(self) -> str:
        if self.task is None:
            return lease_name(self.query_file.name)
        return task_lease_name(self.query_file.name, self.task)


class QuerySupervisor:
    """Runs this agent's share of the continuous queries (see module): a thread per query, so
    that one query's restore never delays the renewal of another's lease."""

    def __init__(self, engine: Engine, holder: str, ttl_s: float, state_root: Path) -> None:
        self.engine = engine
        self.metadata: Metadata = engine.log.metadata
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.state_root = state_root
        self._queries: dict[str, _Held] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._placing = threading.Lock()  # one task of a query taken at a time (its share)
        self._scaled: set[str] = set()  # parallel queries whose state is at their parallelism

    def add(self, query_file: QueryFile) -> bool:
        """Supervise a query (each of its tasks, at parallelism > 1 or with state of a parallel
        run); False if one of that name is supervised already."""
        if query_file.name in self._queries or any(
            held.query_file.name == query_file.name for held in self._queries.values()
        ):
            return False
        parallelism = parallelism_of(query_file)
        if parallelism == 1:
            whole, tasks = checkpointed(self.metadata, query_file.name)
            if whole or tasks is None:  # no state of a parallel run: the query as a whole
                self._queries[query_file.name] = _Held(query_file)
                return True
        for task in range(parallelism):
            self._queries[f"{query_file.name}/task-{task}"] = _Held(
                query_file, task=task, parallelism=parallelism
            )
        return True

    @property
    def names(self) -> list[str]:
        """The queries supervised, by name (a parallel query's tasks as ``<name>/task-<i>``)."""
        return sorted(self._queries)

    @property
    def running(self) -> list[ContinuousQuery | AgentTask]:
        """The queries this agent runs now."""
        return [held.query for held in self._queries.values() if held.query is not None]

    def start(self) -> QuerySupervisor:
        for name, held in self._queries.items():
            thread = threading.Thread(
                target=self._run, args=(name, held), name=f"lease-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every query this agent runs (each with a last checkpoint) and release its lease."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        for held in self._queries.values():
            if held.query is not None:
                self._give_up(held, checkpoint=True)
            member, held.member = held.member, None
            self._release_lease(member)
        shutil.rmtree(self.state_root, ignore_errors=True)

    # -- the supervisor thread ------------------------------------------------------------------

    def _run(self, name: str, held: _Held) -> None:
        interval = self.ttl_ms / 3000
        while not self._stopping.is_set():
            try:
                self._join(held)
                if held.query is None:
                    self._try_to_take(name, held)
                else:
                    self._keep(name, held)
            except StreamHouseError as exc:  # the store is away: try again next round
                log.warning("query %s: %s", name, exc)
            self._stopping.wait(interval)

    def _held_tasks(self, query: str) -> list[_Held]:
        """The tasks of parallel query ``query`` this agent holds the lease of."""
        return [
            held
            for held in self._queries.values()
            if held.task is not None and held.query_file.name == query and held.lease is not None
        ]

    def _share(self, held: _Held) -> int:
        """How many of ``held``'s query's tasks this agent may run (:func:`.placement.share`):
        over the agents holding a live membership lease of the query (this one included)."""
        members = self.metadata.list_leases(members_prefix(held.query_file.name))
        live = {lease.holder for lease in members if lease.live} | {self.holder}
        return share(held.parallelism, len(live))

    def _join(self, held: _Held) -> None:
        """Hold (renew) this agent's membership lease of ``held``'s query (by the thread of its
        task 0, each round), so the others count it when they share the tasks out."""
        if held.task == 0:
            name = member_lease_name(held.query_file.name, self.holder)
            held.member = self.metadata.acquire_lease(name, self.holder, self.ttl_ms)

    def _acquire(self, held: _Held) -> Lease | None:
        """Take ``held``'s lease if it is free (a task: only while this agent runs fewer of
        its query's tasks than its share)."""
        if held.task is None:
            return self.metadata.acquire_lease(held.lease_name, self.holder, self.ttl_ms)
        with self._placing:
            if len(self._held_tasks(held.query_file.name)) >= self._share(held):
                return None
            lease = self.metadata.acquire_lease(held.lease_name, self.holder, self.ttl_ms)
            held.lease = lease
            return lease

    def _rescaling(self, held: _Held) -> bool:
        """Whether ``held``'s query's tasks are checkpointed at another parallelism than its
        file's (then task 0's thread tries to move the state, :meth:`_rescale`, and no task of
        it is taken until that is done)."""
        name = held.query_file.name
        if name in self._scaled:
            return False
        try:
            current = current_parallelism(self.metadata, name)
        except SqlError as exc:  # state that does not move: said once per retry, not per round
            log.error("continuous query %s not started: %s", held.lease_name, exc)
            held.retry_at = time.monotonic() + RETRY_FAILED_S
            return True
        if current is None or current == held.parallelism:
            self._scaled.add(name)
            return False
        if held.task == 0:
            self._rescale(held, current)
        return True

    def _rescale(self, held: _Held, current: int) -> None:
        """Move ``held``'s query's state from parallelism ``current`` to its file's, holding
        the rescale lease and every task's lease of both (none taken: try again next round)."""
        name = held.query_file.name
        pointer = self.metadata.acquire_lease(rescale_lease_name(name), self.holder, self.ttl_ms)
        if pointer is None:
            return
        leases: list[Lease] = []
        try:
            for task in range(max(current, held.parallelism)):
                lease = self.metadata.acquire_lease(
                    task_lease_name(name, task), self.holder, self.ttl_ms
                )
                if lease is None:
                    log.info("query %s: task %d still runs elsewhere; rescaling later", name, task)
                    return
                leases.append(lease)
            log.warning(
                "query %s: moving its state from %d to %d tasks", name, current, held.parallelism
            )
            with renewing(self.metadata, [pointer, *leases], self.ttl_ms):
                work = self.state_root / f"rescale-{name}"
                rescale_on_agents(self.engine, held.query_file, self.holder, work, leases, pointer)
        except Exception as exc:  # noqa: BLE001 (the query alone waits; tried again later)
            log.error(
                "query %s not rescaled (tried again in %.0f s): %s",
                name,
                RETRY_FAILED_S,
                exc,
                exc_info=not isinstance(exc, StreamHouseError),
            )
            held.retry_at = time.monotonic() + RETRY_FAILED_S
        finally:
            for lease in [*leases, pointer]:
                self._release_lease(lease)

    def _start(self, held: _Held, lease: Lease) -> ContinuousQuery | AgentTask:
        if held.task is not None:
            return AgentTask(
                self.engine, held.query_file, held.task, self.state_root, lease, self.holder
            )
        return start_query(self.engine, held.query_file, state_root=self.state_root, fence=lease)

    def _try_to_take(self, name: str, held: _Held) -> None:
        if time.monotonic() < held.retry_at:
            return
        if held.task is not None and self._rescaling(held):
            return
        asked = time.monotonic()
        lease = self._acquire(held)
        if lease is None:
            return
        held.lease, held.valid_until = lease, asked + self.ttl_ms / 1000
        try:
            # renewed meanwhile: a start slower than the lease (restoring checkpoints, planning
            # both stages of a task) must not lose it before the query's first write
            with renewing(self.metadata, [lease], self.ttl_ms):
                held.query = self._start(held, lease)
        except Exception as exc:  # that query alone fails; this agent and the others go on
            if isinstance(exc, StreamHouseError):
                log.error("continuous query %s not started: %s", name, exc)
            else:
                log.exception("continuous query %s not started", name)
            self._release(held)
            held.retry_at = time.monotonic() + RETRY_FAILED_S
            return
        log.warning(
            "continuous query %s running here (lease epoch %d, taken in %.3f s)",
            name,
            lease.epoch,
            time.monotonic() - asked,
        )

    def _keep(self, name: str, held: _Held) -> None:
        assert held.lease is not None and held.query is not None
        error = held.query.error
        if isinstance(error, FencedError):
            log.warning("query %s: lease lost (epoch %d)", name, held.lease.epoch)
            self._give_up(held, checkpoint=False)
            return
        if error is not None:
            log.error("query %s failed; released for another try: %s", name, error)
            self._give_up(held, checkpoint=False)
            held.retry_at = time.monotonic() + RETRY_FAILED_S
            return
        asked = time.monotonic()
        try:
            renewed = self.metadata.renew_lease(held.lease, self.ttl_ms)
        except StreamHouseError as exc:
            if time.monotonic() < held.valid_until:
                log.warning("query %s: lease not renewed, will try again: %s", name, exc)
                return
            renewed = False
        if renewed:
            held.valid_until = asked + self.ttl_ms / 1000
            self._rebalance(name, held)
            return
        log.warning("query %s: lease lost (epoch %d): stopping it", name, held.lease.epoch)
        self._give_up(held, checkpoint=False)

    def _rebalance(self, name: str, held: _Held) -> None:
        """Give a task back (with a last checkpoint) while this agent runs more of its query's
        tasks than its share: the highest-numbered first, and not taken again for a lease's
        time, so that an agent with fewer takes it."""
        if held.task is None:
            return
        tasks = self._held_tasks(held.query_file.name)
        if len(tasks) <= self._share(held) or held is not max(tasks, key=lambda h: h.task or 0):
            return
        log.warning("%s: this agent runs more than its share of the tasks: handing it over", name)
        self._give_up(held, checkpoint=True)
        held.retry_at = time.monotonic() + self.ttl_ms / 1000

    def _give_up(self, held: _Held, *, checkpoint: bool) -> None:
        """Stop the query (with a last checkpoint if ``checkpoint``) and drop its local state."""
        query, held.query = held.query, None
        if query is not None:
            try:
                query.stop(checkpoint=checkpoint)
            except StreamHouseError as exc:
                log.warning("query %s: stopping: %s", query.name, exc)
            paths = query.state_paths if isinstance(query, AgentTask) else [query.store.path]
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
        self._release(held)

    def _release(self, held: _Held) -> None:
        lease, held.lease = held.lease, None
        self._release_lease(lease)

    def _release_lease(self, lease: Lease | None) -> None:
        if lease is not None:
            try:
                self.metadata.release_lease(lease)
            except StreamHouseError as exc:  # it expires by itself
                log.warning("lease %s not released: %s", lease.name, exc)
