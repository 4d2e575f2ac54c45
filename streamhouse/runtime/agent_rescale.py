"""Rescaling a parallel query on ``serve`` agents: its tasks' state moves from N to M tasks.

As on one machine (:mod:`.rescale`), a user rescales a query by stopping it and starting it at
another parallelism: stop the agents (or some of them: a task waits for its old holder's lease
to end), change ``SET 'parallelism'`` in the query file, start the agents again. A task's state
on agents lives in the object store (its consuming side's checkpoints under
``<name>.p<N>.task-<i>``, each producing side's under ``<name>.p<N>.exchange-<i>[-<source>]``,
see :mod:`.placement`), so the move starts there:

1. One agent does it, the one whose supervisor takes the query's rescale lease
   (``query/<name>/rescale``, :func:`rescale_lease_name`) and then the lease of every task of
   both parallelisms (``task-<i>``, i < max(N, M)); while any of them is held elsewhere (an
   agent still running the query at N) it waits and tries again. The other agents take no task
   of the query meanwhile. It renews all these leases while it works (:func:`renewing`), and
   every write it makes is fenced by them.
2. It restores each old task's state from its checkpoints into a directory of its own, runs
   the old tasks' drains in-process (:meth:`.placement.AgentTask.drain`: a producing batch a
   kill left pending sent again, then every exchange record taken by the consuming sides), and
   publishes their last checkpoints.
3. It moves the state by key group exactly as on one machine (:func:`.rescale.rescale`), and
   publishes each new task's stores as the checkpoints of ``<name>.p<M>.*`` (a record of an
   earlier run at M that this move did not write is replaced by an empty store).
4. It records the query's parallelism, M, as the checkpoint record ``<name>/parallelism``
   (:func:`parallelism_record`): that one fenced write is the move's commit point (N is
   recorded there before step 2, so checkpoints at both never stand without a record of which
   is current). A crash before it leaves the query at N, moved again by the next agent; after it, the tasks at M
   start from the new checkpoints. The old checkpoints' objects are deleted last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.launch import QueryFile, declared
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.task_state import task_checkpoint_name, task_root
from streamhouse.sql.engine import Engine
from streamhouse.state.remote import PREFIX, SST, LeasedCheckpoints
from streamhouse.state.store import StateStore

log = logging.getLogger(__name__)

_STORES = ("task-", "exchange-")


def parallelism_record(query: str) -> str:
    """The checkpoint record naming the parallelism ``query``'s task checkpoints are at (a
    ``/`` no query name holds)."""
    return f"{query}/parallelism"


def rescale_lease_name(query: str) -> str:
    return f"query/{query}/rescale"


def _store_of(query: str, recorded: str) -> tuple[int, str] | None:
    """(parallelism, store) of a task's checkpoint record ``<query>.p<N>.<store>``."""
    prefix = f"{query}.p"
    if not recorded.startswith(prefix):
        return None
    digits, _, store = recorded[len(prefix) :].partition(".")
    return (int(digits), store) if digits.isdigit() and store.startswith(_STORES) else None


def checkpointed(metadata: Metadata, query: str) -> tuple[bool, int | None]:
    """Whether ``query`` was checkpointed on agents as a whole (at parallelism 1, not as
    tasks), and the parallelism its tasks' checkpoints are at: as the last rescale recorded
    it, else the one parallelism its tasks recorded checkpoints at (None before their first).
    """
    whole, pointer = False, None
    found: set[int] = set()
    for recorded in metadata.list_query_checkpoints():
        if recorded.query == parallelism_record(query):
            pointer = int(recorded.checkpoint_id)
        elif recorded.query == query:
            whole = True
        elif (store := _store_of(query, recorded.query)) is not None:
            found.add(store[0])
    if pointer is None and len(found) > 1:
        raise SqlError(
            f"query {query!r} has task checkpoints on agents at several parallelisms"
            f" ({sorted(found)}) and no record of which is current"
        )
    return whole, pointer if pointer is not None else (found.pop() if found else None)


def current_parallelism(metadata: Metadata, query: str) -> int | None:
    """The parallelism ``query``'s tasks' checkpoints on agents are at (see
    :func:`checkpointed`). ``SqlError`` for a query checkpointed as a whole at parallelism 1,
    whose state does not move to tasks yet."""
    whole, current = checkpointed(metadata, query)
    if whole:
        raise SqlError(
            f"query {query!r} was checkpointed on agents at parallelism 1 outside a parallel"
            " run: rescaling it is not supported yet; run it at parallelism 1"
        )
    return current


def with_parallelism(query_file: QueryFile, parallelism: int) -> QueryFile:
    return dataclasses.replace(
        query_file, settings={**query_file.settings, "parallelism": str(parallelism)}
    )


@contextlib.contextmanager
def renewing(metadata: Metadata, leases: Sequence[Lease], ttl_ms: int) -> Iterator[None]:
    """Renew ``leases`` every ``ttl / 3`` while the body runs (a lease lost: the body's fenced
    writes are refused)."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(ttl_ms / 3000):
            for lease in leases:
                try:
                    if not metadata.renew_lease(lease, ttl_ms):
                        log.warning(
                            "lease %s lost (renewed while a query starts or moves)", lease.name
                        )
                except StreamHouseError as exc:
                    log.warning("lease %s not renewed: %s", lease.name, exc)

    thread = threading.Thread(target=renew, name="rescale-leases", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def rescale_on_agents(
    engine: Engine,
    query_file: QueryFile,
    agent: str,
    work: Path,
    leases: Sequence[Lease],
    pointer: Lease,
) -> bool:
    """Move the state of ``query_file``'s query from the parallelism it is checkpointed at to
    the file's (see module), holding ``leases`` (task ``i``'s at ``leases[i]``, one per task of
    both parallelisms) and the rescale lease ``pointer``; ``work``: a scratch directory. False
    when there was nothing to move."""
    from streamhouse.runtime.parallel import parallel_plan
    from streamhouse.runtime.placement import AgentTask, writing_results
    from streamhouse.runtime.rescale import rescale
    from streamhouse.runtime.routing import plan_routing

    query_file = writing_results(query_file)  # as its tasks run it
    name, metadata = query_file.name, engine.log.metadata
    options = QueryOptions().with_options(query_file.settings)
    new = options.parallelism
    old = current_parallelism(metadata, name)
    if old is None or old == new:
        return False
    session = declared(engine, query_file)
    plan = parallel_plan(query_file.statement, options, session._resolve)
    if plan_routing(plan).stage is not None:
        raise SqlError(
            f"query {name!r} is of two stages (an aggregate over an updating aggregate, Nexmark"
            f" q4): its state does not move from {old} to {new} tasks on agents yet; run it at"
            f" parallelism {old}"
        )
    began = time.monotonic()
    # which parallelism is current is recorded before any checkpoint at the new one is: a
    # crash between those and the commit point below must not leave both without a record
    # (checkpointed() refuses that), but the old one, moved again by the next agent
    metadata.record_query_checkpoint(pointer, QueryCheckpoint(parallelism_record(name), str(old)))
    shutil.rmtree(work, ignore_errors=True)
    old_file = with_parallelism(query_file, old)
    tasks: list[AgentTask] = []
    drained = False
    try:
        for task in range(old):
            tasks.append(AgentTask(engine, old_file, task, work, leases[task], agent, start=False))
        for phase in ("producers", "consumers"):
            for agent_task in tasks:
                agent_task.drain(phase)
        drained = True
    finally:
        for agent_task in tasks:
            agent_task.stop(checkpoint=drained)
    new_root = task_root(work, name, new)

    def undrained(phase: str) -> None:
        raise StreamHouseError(f"query {name}: its tasks at {old} still had {phase} to drain")

    rescale(
        engine.log,
        plan,
        plan_routing(plan),
        name,
        task_root(work, name, old),
        old,
        new_root,
        new,
        undrained,
    )
    _publish(engine, name, new, new_root, leases)
    metadata.record_query_checkpoint(pointer, QueryCheckpoint(parallelism_record(name), str(new)))
    log.warning(
        "query %s: state moved on agents from %d to %d tasks in %.2f s",
        name,
        old,
        new,
        time.monotonic() - began,
    )
    delete_moved(engine, name, old, leases)
    shutil.rmtree(work, ignore_errors=True)
    return True


def delete_moved(engine: Engine, name: str, old: int, leases: Sequence[Lease]) -> None:
    """Delete the objects of ``name``'s checkpoints at ``old`` that a move holding ``leases``
    made garbage: those written at or before its epoch of their task's lease. (The deletes are
    not fenced: a mover paused here past its leases may wake after the query was moved back to
    ``old``, whose new checkpoints, of later epochs, it must not touch.)"""
    objects = engine.log.store
    for recorded in engine.log.metadata.list_query_checkpoints():
        found = _store_of(name, recorded.query)
        if found is None or found[0] != old:
            continue
        epoch = f"{leases[int(found[1].split('-')[1])].epoch:012d}"
        for key in objects.list(f"{PREFIX}/{recorded.query}/"):
            parts = key.split("/")  # checkpoints/<store>/<id>/... or .../sst/<id>-<file>
            written = parts[3] if parts[2] == SST and len(parts) > 3 else parts[2]
            if written[: len(epoch)] <= epoch:
                with contextlib.suppress(StreamHouseError):
                    objects.delete(key)


def _publish(
    engine: Engine, name: str, parallelism: int, root: Path, leases: Sequence[Lease]
) -> None:
    """Each new task's stores under ``root`` as its checkpoints (an earlier run's record at
    this parallelism that the move did not write: an empty store)."""
    log_ = engine.log
    stores = {p.name: p for p in root.iterdir() if p.is_dir() and p.name.startswith(_STORES)}
    for recorded in log_.metadata.list_query_checkpoints():
        found = _store_of(name, recorded.query)
        if found is not None and found[0] == parallelism and found[1] not in stores:
            stores[found[1]] = root / found[1]  # created empty below
    for store_name, path in sorted(stores.items()):
        task = int(store_name.split("-")[1])
        store = StateStore(path)
        try:
            checkpoint = task_checkpoint_name(name, parallelism, store_name)
            LeasedCheckpoints(log_.store, log_.metadata, checkpoint, leases[task]).publish(
                store, {}
            )
        finally:
            store.close()


__all__ = [
    "checkpointed",
    "current_parallelism",
    "delete_moved",
    "parallelism_record",
    "renewing",
    "rescale_lease_name",
    "rescale_on_agents",
    "with_parallelism",
]
