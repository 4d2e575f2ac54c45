"""Rescaling: a parallel query checkpointed at parallelism N restarts at parallelism M.

As in Flink, state moves by key group, from the last checkpoint; nothing is read again from the
sources. :meth:`~.parallel.ParallelQuery` calls :func:`rescale` before it starts its tasks when
the query's state is at another parallelism (``<name>.p<N>``, see :mod:`.task_state`):

1. **Drain** (:func:`~.parallel.run_task` with ``drain``): the old tasks finish the
   micro-batch a kill may have left pending on their producing sides, then their consuming
   sides take every exchange record already appended. Nothing is in flight after that: each
   task's state covers exactly what the producers read, and the consumers all stand at one
   watermark.
2. **Split and merge** (:func:`_move_state`): each state entry of the old consuming sides (an
   Arrow table of partial aggregates, open sessions or buffered join rows) is split by the key
   group of its rows (the key columns it was routed by, hashed as the exchange hashed them),
   each part written to the new task owning those key groups, the run or chunk number of its
   key renumbered so that entries of two old tasks never collide.
3. **Positions**: each new producing side takes the source offsets and event times of the
   partitions it now reads (``p % M``) from the old side that read them; its sequence starts
   afresh, and each new consuming side starts at the end of its exchange partition (the drained
   records are behind it). Counters are summed into task 0 so ``status()`` totals stay.

The new state is written beside the old (``<name>.p<M>.rescaling``) and renamed into place, and
then the old is deleted: a crash leaves either the old state (rescaled again at the next start)
or the new one.

What rescales: stateless queries, windowed GROUP BY (TUMBLE, HOP, CUMULATE, SESSION), updating
GROUP BY (its tasks write a key's upserts to the key's sink partition, so they stay there; its
groups move with their current rows, :func:`_move_groups`), interval and regular stream joins,
inner and outer (an outer join's row ids carry the task that numbered them, and its upserts
too go to their key's partition), window joins, per-window queries routed by window
(:func:`_move_panes`), and the operators routed by source rows whose state is tables of rows
keyed by their routing key (:data:`_KEYED_MOVES`, a :class:`Move` each): Top-N and
deduplication (the kept rows; upserts to their key's partition), OVER aggregations (waiting
rows, history, rows waiting for LEADs, running totals), temporal joins (waiting probe rows,
versions) and joins over an updating input (both sides' rows, the derived GROUP BY's groups
or Top-N's rows; an append-only side's row ids carry their task, upserts go to their key's
partition), and queries of two stages (Nexmark q4: the second exchange drained too, each
stage's state moved by the key groups its rows are routed by, :mod:`.stage_rescale`). Any
other state entry refuses the rescale, naming it.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.joins.changelog_join import IDS
from streamhouse.joins.changelog_join import SEQUENCE as CHANGELOG_JOIN_SEQUENCE
from streamhouse.joins.changelog_join import STATE_KEYS as CHANGELOG_JOIN_STATE
from streamhouse.joins.stream_join import SEQUENCE
from streamhouse.joins.temporal import PROBES as TEMPORAL_PROBES
from streamhouse.joins.temporal import versions_key
from streamhouse.joins.windowed import EMITTED, Panes
from streamhouse.log import Log
from streamhouse.runtime.exchange import (
    CHECKPOINTED_AT,
    IDLE,
    REJECTED,
    ROWS_IN,
    TAKEN,
    exchange_topic,
    stage_topic,
)
from streamhouse.runtime.exchange import (
    PENDING as EXCHANGE_PENDING,
)
from streamhouse.runtime.exchange import (
    WATERMARK as PRODUCER_WATERMARK,
)
from streamhouse.runtime.key_groups import key_groups, task_of, window_tasks
from streamhouse.runtime.query import COUNTERS, PENDING, SINK, WATERMARK
from streamhouse.runtime.routing import Routing, bare_column
from streamhouse.runtime.sources import EVENT_TIME, SOURCE
from streamhouse.runtime.two_phase import TwoPhaseCommit, transactional_id
from streamhouse.sql import nodes
from streamhouse.sql.aggregates import AggregateFunction
from streamhouse.sql.changelog_join import ChangelogJoin
from streamhouse.sql.over import OverAggregate, partition_column
from streamhouse.sql.plan import ContinuousPlan
from streamhouse.sql.window_spec import WindowSpec
from streamhouse.state.store import (
    FORMAT,
    ColumnFamily,
    StateBatch,
    StateStore,
    StateView,
    TableState,
    decode_table,
    encode_table,
    partition_key,
)
from streamhouse.views.group_by import DISTINCT_KEY, GROUP_ID, GROUPS_KEY
from streamhouse.views.top_n import TOP_N_KEY
from streamhouse.windows.operator import SESSIONS_KEY
from streamhouse.windows.over import HISTORY as OVER_HISTORY
from streamhouse.windows.over import PENDING as OVER_LEAD
from streamhouse.windows.over import RUNNING as OVER_RUNNING
from streamhouse.windows.over import WAITING as OVER_WAITING

log = logging.getLogger(__name__)

OPERATOR = b"0/"
"""The key prefix of a parallel query's one operator (a branch's operator 0)."""
SECOND = "stage2-"
"""The state directories of a query of two stages' second stages (``stage2-<task>``)."""
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_SESSION_RUN = struct.Struct(">BQI")
_BIAS = 1 << 63
_COUNTERS = ("rows_in", "rows_out", "late_rows", "rejected_rows", "damaged_rows")
STAGE_PROGRESS = b"stage/"
"""The key prefix of a first stage's own progress on the second exchange (its sequence,
:data:`~.stages.SEQUENCE`, and any other entry a build records there, such as the offsets of
the records it sent): per task by nature, never one new task's (the new first stages number
their batches afresh)."""
_OWN_META = (
    STAGE_PROGRESS,
    PENDING,
    SINK,
    WATERMARK,
    COUNTERS,
    SOURCE,
    EVENT_TIME,
    TAKEN,
    IDLE,
    FORMAT,
)
"""Meta keys whose values are per task (rewritten here), besides every operator's join chunk
sequence (``<operator>/join/sequence``); any other is copied if every old task holds the same
value."""


_RESCALABLE = (
    nodes.Stateless,
    nodes.UnionAll,
    nodes.WindowAggregate,
    nodes.StreamJoin,
    nodes.Windowed,
    nodes.TopN,
    OverAggregate,
    nodes.TemporalJoin,
    ChangelogJoin,
)


def rescalable(plan: ContinuousPlan, routing: Routing) -> None:
    """Refuse (SqlError naming the operator) a query whose state cannot move by key group yet."""
    node = plan.operator
    why = ""
    if routing.stage is not None:  # its two stages' state: .stage_rescale
        pass
    elif node.updating and not upserts_by_key(plan):
        why = f"its {routing.operator} upserts do not move between tasks yet"
    elif not isinstance(node, _RESCALABLE):
        why = f"its {routing.operator} state does not move by key group yet"
    elif routing.broadcast:
        why = f"its {routing.operator} reads {', '.join(sorted(routing.broadcast))} whole in every task"
    elif isinstance(node, nodes.TopN) and plan.derived:
        why = f"the state of its {routing.operator} does not move by key group yet"
    elif routing.reach is not None:  # its aggregate's windows and the join's rows by window
        why = f"the state of its {routing.operator} does not move by window yet"
    if why:
        raise SqlError(
            f"this query cannot change parallelism: {why}; run it at the parallelism it was"
            " checkpointed at, or delete its state to run it afresh"
        )


def upserts_by_key(plan: ContinuousPlan) -> bool:
    """Whether ``plan`` is an updating GROUP BY (upserts keyed by its group keys), a Top-N or
    deduplication (keyed by its PARTITION BY and rank), an outer stream join or a join over an
    updating input (keyed by columns or row ids that carry the task that numbered them): its
    tasks write each upsert to the sink partition of its key (Kafka's default partitioner, as at
    parallelism 1), so a key's upserts and its tombstone stay in one partition whatever task
    owns it."""
    node = plan.operator
    if isinstance(node, nodes.StreamJoin):
        return node.outer is not None
    if isinstance(node, nodes.TopN | ChangelogJoin | nodes.Recompute):
        return True
    return isinstance(node, nodes.WindowAggregate) and node.window is None


def rescale(
    log_: Log,
    plan: ContinuousPlan,
    routing: Routing,
    name: str,
    old_root: Path,
    old: int,
    new_root: Path,
    new: int,
    drain: Callable[[str], None],
) -> None:
    """Move the state of query ``name`` at parallelism ``old`` (``old_root``) to ``new``
    (``new_root``); ``drain(phase)`` runs the old tasks' drain ``phase``: ``"producers"``,
    then (a query of two stages) ``"stages"``, its first stages taking the first exchange, then
    ``"consumers"``, the last consuming sides taking theirs (see the module's docstring)."""
    from streamhouse.runtime import stage_rescale

    rescalable(plan, routing)
    staging = new_root.with_name(new_root.name + ".rescaling")
    shutil.rmtree(staging, ignore_errors=True)
    stages = routing.stage is not None
    if routing.shape != "stateless":  # each drain only if needed (forking the tasks costs)
        if any(_pending(path) for path in old_root.glob("exchange-*")):
            drain("producers")
        topics = [exchange_topic(name, index) for index in range(len(plan.sources))]
        if stages:
            stage_rescale.drain(log_, name, topics, old_root, old, drain)
        elif _behind(log_, topics, old_root, old):
            drain("consumers")
    for index in range(len(plan.sources)):
        if routing.shape != "stateless":
            _grow(log_, exchange_topic(name, index), new)
    if stages:
        _grow(log_, stage_topic(name), new)
    if not upserts_by_key(plan):  # more partitions would move keys to other partitions
        _grow(log_, plan.sink or "", new)
    began = time.monotonic()
    olds = [StateStore(old_root / f"task-{t}") for t in range(old)]
    news = [StateStore(staging / f"task-{t}") for t in range(new)]
    # a query of two stages: its second stages' stores, which write the sink
    seconds = [StateStore(old_root / f"{SECOND}{t}") for t in range(old if stages else 0)]
    new_seconds = [StateStore(staging / f"{SECOND}{t}") for t in range(new if stages else 0)]
    try:
        if plan.sink_kind == "topic":  # each old task's sink transaction ended as recorded
            for task, store in enumerate(seconds or olds):
                settled = TwoPhaseCommit(log_, transactional_id(name, task))
                try:
                    settled.recover(store)
                finally:
                    settled.close()
        batches = [store.batch() for store in news]  # each new task's state: one write
        second_batches = [store.batch() for store in new_seconds]
        if routing.shape == "stateless":
            _move_positions(olds, batches, old, new)
        else:
            _move_exchange(log_, plan, name, old_root, staging, olds, batches, old, new)
            text = _recorded_text(old_root)
            if stages:
                stage_rescale.move_first_stage(
                    plan, routing, olds, batches, _text_of(routing, text)
                )
            else:
                _move_state(plan, routing, olds, batches, text)
        _move_counters(olds, batches)
        for store, batch in zip(news, batches, strict=True):
            store.commit(batch)
        if stages:  # its second stages: into the staging directory too
            stage_rescale.move_second_stage(
                log_, plan, routing, name, olds, seconds, second_batches
            )
            _move_counters(seconds, second_batches)
            for store, batch in zip(new_seconds, second_batches, strict=True):
                store.commit(batch)
    finally:
        for store in olds + news + seconds + new_seconds:
            store.close()
    (staging / RESCALED).write_text(json.dumps({"from": old_root.name}))
    staging.rename(new_root)
    finish(new_root)
    log.info(
        "query %s: state moved from %d to %d tasks by key group in %.2f s",
        name,
        old,
        new,
        time.monotonic() - began,
    )


RESCALED = "rescaled.json"
"""In a rescaled state directory until the state it was moved from is deleted."""


def finish(root: Path) -> None:
    """Delete the state ``root`` was rescaled from, if a rescale stopped before it could."""
    marker = root / RESCALED
    try:
        moved_from = root.with_name(json.loads(marker.read_text())["from"])
    except (OSError, ValueError, KeyError):
        return
    shutil.rmtree(moved_from, ignore_errors=True)
    marker.unlink()


def start_after_exchanged(
    log_: Log, plan: ContinuousPlan, routing: Routing, name: str, root: Path, parallelism: int
) -> None:
    """A state begun afresh (``root`` holds no task's store: a first run, or its state deleted
    to run it afresh): each consuming side starts at the end of its exchange partition (the
    second stages at theirs of the second exchange), not at its beginning. Records an earlier
    run left there are no new producer's, whose batches number from 1 again: read, they would
    count twice, and the new batches under their numbers would be skipped as replays."""
    if routing.shape == "stateless":
        return
    if any(root.glob("task-*")) or any(root.glob("exchange-*")) or any(root.glob(f"{SECOND}*")):
        return
    sides = [("task-", exchange_topic(name, index), index) for index in range(len(plan.sources))]
    if routing.stage is not None:
        sides.append((SECOND, stage_topic(name), 0))
    for store_name, topic, index in sides:
        ends = _high_watermarks(log_, topic)
        for task in range(parallelism):
            store = StateStore(root / f"{store_name}{task}")
            try:
                batch = store.batch()
                batch.put_int(partition_key(SOURCE + bytes([index]), task), ends[task])
                store.commit(batch)
            finally:
                store.close()


def _pending(path: Path, key: bytes = EXCHANGE_PENDING) -> bool:
    """Whether the producing side stored at ``path`` left a batch pending (``key``: the
    intent of another side, a first stage's micro-batch)."""
    store = StateStore(path)
    try:
        return store.get(ColumnFamily.META, key) is not None
    finally:
        store.close()


def _behind(
    log_: Log, topics: list[str], root: Path, parallelism: int, store_name: str = "task-"
) -> bool:
    """Whether a consuming side (``<store_name><task>``, reading exchange ``topics`` by source
    index) has exchange records left to take, or has not yet moved its watermark to what the
    records it took carry (the tasks' watermarks differ: a task stopped between the step that
    read the last records and the step that moves the watermark)."""
    ends = [_high_watermarks(log_, topic) for topic in topics]
    sources = len(topics)
    marks = set()
    for task in range(parallelism):
        store = StateStore(root / f"{store_name}{task}")
        try:
            marks.add(store.get_int(WATERMARK))
            for index in range(sources):
                taken = store.get_int(partition_key(SOURCE + bytes([index]), task))
                if (taken or 0) < ends[index][task]:
                    return True
        finally:
            store.close()
    return len(marks) > 1


def _high_watermarks(log_: Log, topic: str) -> dict[int, int]:
    """Each partition's high watermark read from the store: the metadata cache learns the
    task processes' appends a poll later, and a stale end would leave records undrained."""
    metadata = log_.metadata
    fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)
    partitions = log_.topic(topic).partitions
    return {p: fresh(topic, p).high_watermark for p in range(partitions)}


def _grow(log_: Log, topic: str, partitions: int) -> None:
    info = log_.get_topic(topic)
    if info is not None and info.partitions < partitions:
        log_.set_partitions(topic, partitions)


def _meta(store: StateStore) -> dict[bytes, bytes]:
    return dict(store.items(ColumnFamily.META))


def _int(value: bytes | None) -> int | None:
    return _U64.unpack(value)[0] if value is not None else None


def _move_positions(olds: list[StateStore], news: list[StateBatch], old: int, new: int) -> None:
    """A stateless query's tasks: each partition's offset and event time to its new reader."""
    marks = []
    for task, store in enumerate(olds):
        meta = _meta(store)
        if PENDING in meta:
            raise SqlError(
                f"task {task} left a micro-batch half written; run the query at parallelism"
                f" {old} once to finish it, then rescale"
            )
        for key, value in meta.items():
            if key.startswith((SOURCE, EVENT_TIME)):
                partition = _U32.unpack(key[-4:])[0]
                news[partition % new].put(ColumnFamily.META, key, value)
        if WATERMARK in meta:
            marks.append(meta[WATERMARK])
    _copy_shared(olds, news)
    for batch in news:
        if marks:
            batch.put(ColumnFamily.META, WATERMARK, min(marks))


def _copy_shared(olds: list[StateStore], news: list[StateBatch]) -> None:
    """The meta entries every old task holds the same (the definition, a window join's
    evaluated-up-to time: equal once drained) to every new task; a differing one refuses."""
    metas = [_meta(s) for s in olds]
    shared: dict[bytes, bytes] = {}
    for key in set().union(*metas):
        # (a join's chunk sequence under any operator's prefix: a first stage's derived join)
        if key.startswith(_OWN_META) or key.partition(b"/")[2] == SEQUENCE:
            continue
        values = {m.get(key) for m in metas}
        if len(values) != 1:
            raise SqlError(
                f"the tasks' state differs at {key!r} after draining; cannot rescale this query"
            )
        shared[key] = metas[0][key]
    for batch in news:
        for key, value in shared.items():
            batch.put(ColumnFamily.META, key, value)


def _move_counters(olds: list[StateStore], news: list[StateBatch]) -> None:
    totals = dict.fromkeys(_COUNTERS, 0)
    for store in olds:
        for key, value in (store.get_json(COUNTERS) or {}).items():
            totals[key] = totals.get(key, 0) + int(value)
    for task, batch in enumerate(news):
        batch.put_json(COUNTERS, totals if task == 0 else dict.fromkeys(totals, 0))


def _move_exchange(
    log_: Log,
    plan: ContinuousPlan,
    name: str,
    old_root: Path,
    staging: Path,
    olds: list[StateStore],
    news: list[StateBatch],
    old: int,
    new: int,
) -> None:
    """The producing sides' source positions to the new producers; each consuming side at the
    end of its exchange partition, every new producer at the old consumers' watermark."""
    marks = [s.get_int(WATERMARK) for s in olds]
    watermark = min(m for m in marks if m is not None) if None not in marks else None
    for index in range(len(plan.sources)):
        suffix = "" if index == 0 else f"-{index}"
        topic = exchange_topic(name, index)
        ends = _high_watermarks(log_, topic)
        for task, store in enumerate(olds):  # drained: every exchange record taken
            taken = store.get_int(partition_key(SOURCE + bytes([index]), task))
            if taken is not None and taken < ends[task]:
                raise SqlError(
                    f"task {task} of query {name} did not take every exchange record"
                    f" ({taken} of {ends[task]}); cannot rescale"
                )
        moved: dict[int, dict[bytes, bytes]] = {}
        rows_in = rejected = 0
        produced: list[int] = []
        unknown = False
        for task in range(old):
            path = old_root / f"exchange-{task}{suffix}"
            if not path.exists():
                continue
            writer = StateStore(path)
            try:
                meta = _meta(writer)
            finally:
                writer.close()
            if EXCHANGE_PENDING in meta:
                raise SqlError(f"task {task} of query {name} left a pending batch; cannot rescale")
            rows_in += _int(meta.get(ROWS_IN)) or 0
            rejected += _int(meta.get(REJECTED)) or 0
            if PRODUCER_WATERMARK in meta:
                produced.append(_int(meta[PRODUCER_WATERMARK]) or 0)
            else:  # a producer that never sent: its partitions' times are unknown
                unknown = True
            for key, value in meta.items():
                if key.startswith((SOURCE, EVENT_TIME)):
                    partition = _U32.unpack(key[-4:])[0]
                    moved.setdefault(partition % new, {})[key] = value
        start = min(produced) if produced and not unknown else None  # new producers' watermark
        producers = 0
        offsets = _high_watermarks(log_, topic)
        # what a producer on an agent catches up with (ExchangeWriter.recover) starts here:
        # the old producers' batches before are no new producer's
        checkpointed_at = {str(t): offsets[t] for t in range(new)}
        for task in range(new):
            if task in moved:
                producers += 1
                writer = StateStore(staging / f"exchange-{task}{suffix}")
                batch = writer.batch()
                batch.put_json(CHECKPOINTED_AT, checkpointed_at)
                for key, value in moved[task].items():
                    batch.put(ColumnFamily.META, key, value)
                batch.put_int(ROWS_IN, rows_in if task == 0 else 0)
                batch.put_int(REJECTED, rejected if task == 0 else 0)
                if start is not None:
                    batch.put_int(PRODUCER_WATERMARK, start)
                writer.commit(batch)
                writer.close()
        for task, batch in enumerate(news):
            batch.put_int(partition_key(SOURCE + bytes([index]), task), offsets[task])
            if start is not None:
                for producer in range(producers):
                    batch.put_int(partition_key(EVENT_TIME + bytes([index]), producer), start)
    for batch in news:
        if watermark is not None:
            batch.put_int(WATERMARK, watermark)
    _copy_shared(olds, news)


def _move_state(
    plan: ContinuousPlan,
    routing: Routing,
    olds: list[StateStore],
    batches: list[StateBatch],
    text: bool | None,
) -> None:
    """Every operator state entry, split by key group to the new tasks, renumbered."""
    node = plan.operator
    if isinstance(node, nodes.WindowAggregate) and node.window is None:
        _move_groups(node, olds, batches)
        return
    keyed = _KEYED_MOVES.get(type(node))
    if keyed is not None:
        keyed(Move(plan, routing, olds, batches, _text_of(routing, text)))
        return
    if routing.window is not None:
        _move_panes(routing.window, olds, batches)
        return
    refuse_unknown(olds, (OPERATOR,))
    move_rows(node, routing, olds, batches, text)


def refuse_unknown(olds: list[StateStore], known: tuple[bytes, ...]) -> None:
    """Refuse a state entry of the old tasks under none of the ``known`` key prefixes."""
    for store in olds:
        for family in (ColumnFamily.WINDOWS, ColumnFamily.SESSIONS, ColumnFamily.JOINS):
            for key, _ in store.items(family):
                if not key.startswith(known):
                    raise SqlError(f"unexpected state entry {key!r}; cannot rescale this query")


def move_rows(
    node: nodes.Operator,
    routing: Routing,
    olds: list[StateStore],
    batches: list[StateBatch],
    text: bool | None,
    prefix: bytes = OPERATOR,
) -> None:
    """The state entries of ``node`` (under ``prefix``: a windowed aggregate's windows or
    sessions, a stream join's buffered rows), each split by the key group of its rows (a
    join's by its side's routing keys, an aggregate's by its group keys) to the new tasks,
    renumbered; a join's chunk sequence above every old one."""
    entries: list[tuple[str, bytes, pa.Table, str | None]] = []
    for store in olds:
        view = StateView(store, prefix)
        for family in (ColumnFamily.WINDOWS, ColumnFamily.SESSIONS, ColumnFamily.JOINS):
            for own, value in view.items(family):
                entries.append((family, own, decode_table(value), _source_of(node, family, own)))
    text = _text_keys(routing, entries) if text is None else text
    if isinstance(node, nodes.StreamJoin):  # no task numbers a row id twice after the move
        sequence = prefix + SEQUENCE
        floor = max(
            [_int(store.get(ColumnFamily.META, sequence)) or 0 for store in olds]
            + [_U64.unpack(key[9:17])[0] + 1 for _, key, _, _ in entries if len(key) == 17]
        )
        for batch in batches:
            batch.put(ColumnFamily.META, sequence, _U64.pack(floor))
    runs = [0] * len(batches)
    for family, key, table, source in entries:
        columns = (
            list(routing.keys[source])
            if source is not None
            else [f"__k{i}" for i in range(len(node.keys))]  # type: ignore[attr-defined]
        )
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SqlError(
                f"state rows of {source or 'the aggregate'} lack the key column(s) {missing};"
                " cannot rescale this query"
            )
        owner = task_of(_groups(table, columns, text), len(batches))
        for task in np.unique(owner).tolist():
            part = table.filter(pa.array(owner == task))
            fresh = _renumbered(family, key, runs[task])
            runs[task] += 1
            batches[task].put(family, prefix + fresh, encode_table(part))


def _move_panes(window: WindowSpec, olds: list[StateStore], batches: list[StateBatch]) -> None:
    """A per-window query routed by window: each buffered pane, as one old task holding it
    has it (every holder has all its rows: a task owning a window over a pane is sent every
    row of it, and holds it only while that window is open, so it dropped none as late), to
    every new task owning a window over it that is still open."""
    panes = Panes.of(window)
    emitted = [_int(store.get(ColumnFamily.META, OPERATOR + EMITTED)) for store in olds]
    closed = max((e - _BIAS for e in emitted if e is not None), default=None)
    taken: dict[bytes, int] = {}  # (input, pane) -> the old task its rows are taken from
    runs = [0] * len(batches)
    for task, store in enumerate(olds):
        for key, value in store.items(ColumnFamily.JOINS):
            if not key.startswith(OPERATOR) or len(key) != len(OPERATOR) + 21:
                raise SqlError(f"unexpected state entry {key!r}; cannot rescale this query")
            pane = key[len(OPERATOR) : len(OPERATOR) + 17]  # u8(input) | pane end | pane start
            if taken.setdefault(pane, task) != task:
                continue  # another old task's copy of this pane
            start = np.array([_U64.unpack(pane[9:17])[0] - _BIAS], dtype=np.int64)
            starts, ends = panes.windows(start)
            if closed is not None:
                starts = starts[ends > closed]
            for owner in np.unique(window_tasks(starts, len(batches))).tolist():
                fresh = OPERATOR + pane + _U32.pack(runs[owner])
                runs[owner] += 1
                batches[owner].put(ColumnFamily.JOINS, fresh, value)


def _move_groups(
    node: nodes.WindowAggregate,
    olds: list[StateStore],
    batches: list[StateBatch],
    prefix: bytes = OPERATOR,
    columns: list[str] | None = None,
    text: bool = False,
) -> None:
    """An updating GROUP BY's groups (their current rows: a later run of a task supersedes its
    earlier ones) to the tasks owning their key groups (by the group keys ``columns``, all of
    them by default), one run per old task; with COUNT (DISTINCT), each group's id renumbered
    in its new task and its (group, value) pairs moved with it. ``prefix``: the GROUP BY's
    state (a derived input's under a join)."""
    view_keys = list(node.keys) or ["__all"]
    if columns is None:
        columns = [f"__k{i}" for i in range(len(node.keys))]
    distinct = [
        i for i, c in enumerate(node.aggregates) if c.func is AggregateFunction.COUNT_DISTINCT
    ]
    next_id = [0] * len(batches)
    for run, store in enumerate(olds):
        view = StateView(store, prefix)
        for family in (ColumnFamily.WINDOWS, ColumnFamily.JOINS):
            if next(view.items(family), None) is not None:
                raise SqlError(f"unexpected {family} state of a GROUP BY; cannot rescale it")
        groups = TableState(view, GROUPS_KEY, view_keys)
        current = groups.current()
        if current.num_rows == 0:
            continue
        owner = task_of(_groups(current, columns, text), len(batches))
        ids = tasks = None
        if distinct:  # old group id -> (new task, new group id)
            old_ids = current[GROUP_ID].to_numpy()
            ids = np.full(int(old_ids.max()) + 1, -1, dtype=np.int64)
            tasks = np.full(len(ids), -1, dtype=np.int64)
            tasks[old_ids] = owner
        for task in np.unique(owner).tolist():
            mine = owner == task
            part = current.filter(pa.array(mine))
            if ids is not None:
                renumbered = next_id[task] + np.arange(part.num_rows, dtype=np.int64)
                ids[part[GROUP_ID].to_numpy()] = renumbered
                next_id[task] += part.num_rows
                at = part.column_names.index(GROUP_ID)
                part = part.set_column(at, GROUP_ID, pa.array(renumbered))
            key = prefix + GROUPS_KEY + _U32.pack(run)
            batches[task].put(ColumnFamily.SESSIONS, key, encode_table(part))
        for call in distinct:
            name = DISTINCT_KEY + _U32.pack(call)
            pairs = TableState(view, name, [GROUP_ID, "v"]).current()
            if pairs.num_rows == 0:
                continue
            assert ids is not None and tasks is not None
            gid = pairs[GROUP_ID].to_numpy()
            if gid.max() >= len(ids) or (ids[gid] < 0).any():
                raise SqlError("COUNT(DISTINCT) values of an unknown group; cannot rescale")
            pair_tasks = tasks[gid]
            pairs = pairs.set_column(
                pairs.column_names.index(GROUP_ID), GROUP_ID, pa.array(ids[gid])
            )
            for task in np.unique(pair_tasks).tolist():
                part = pairs.filter(pa.array(pair_tasks == task))
                key = prefix + name + _U32.pack(run)
                batches[task].put(ColumnFamily.SESSIONS, key, encode_table(part))


@dataclass(frozen=True)
class Move:
    """What the state of one operator routed by source rows moves with: the plan and its
    routing, the old tasks' stores, the new tasks' write batches, and whether the exchange
    hashed the routing keys as text."""

    plan: ContinuousPlan
    routing: Routing
    olds: list[StateStore]
    batches: list[StateBatch]
    text: bool

    def split(self, table: pa.Table, columns: list[str]) -> Iterator[tuple[int, pa.Table]]:
        """``(new task, its rows)`` of ``table`` by the key group of its ``columns``."""
        if table.num_rows == 0:
            return
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise SqlError(
                f"state rows lack the key column(s) {missing}; cannot rescale this query"
            )
        owner = task_of(_groups(table, columns, self.text), len(self.batches))
        for task in np.unique(owner).tolist():
            yield task, table.filter(pa.array(owner == task))

    def entries(
        self, store: StateStore, prefix: bytes, known: dict[str, tuple[bytes, ...]]
    ) -> Iterator[tuple[str, bytes, bytes]]:
        """The state entries of ``store`` under ``prefix`` as ``(family, key, value)`` (keys
        without the prefix); one of a family or key prefix not in ``known`` refuses."""
        view = StateView(store, prefix)
        for family in (ColumnFamily.WINDOWS, ColumnFamily.SESSIONS, ColumnFamily.JOINS):
            for key, value in view.items(family):
                if not key.startswith(known.get(family, ())):
                    raise SqlError(
                        f"unexpected {family} state entry {prefix + key!r}; cannot rescale"
                        f" this query"
                    )
                yield family, key, value

    def check(self, prefix: bytes, known: dict[str, tuple[bytes, ...]]) -> None:
        """Refuse state under ``prefix`` other than ``known`` (see :meth:`entries`)."""
        for store in self.olds:
            for _ in self.entries(store, prefix, known):
                pass

    def tables(self, prefix: bytes, key: bytes, state_keys: list[str], columns: list[str]) -> None:
        """A :class:`~streamhouse.state.store.TableState` (``key`` in the ``sessions`` family,
        keyed by ``state_keys``): each old task's current rows, split by the key group of
        ``columns``, as one run per old task in the new tasks (the keys of two old tasks never
        meet: a key's rows all live in the task owning its key group)."""
        for run, store in enumerate(self.olds):
            current = TableState(StateView(store, prefix), key, state_keys).current()
            for task, part in self.split(current, columns):
                self.batches[task].put(
                    ColumnFamily.SESSIONS, prefix + key + _U32.pack(run), encode_table(part)
                )

    def merged(self, parts: dict[int, list[pa.Table]], family: str, key: bytes) -> None:
        """Each new task's parts (split from the old tasks' tables) as one table at ``key``."""
        for task, tables in parts.items():
            if tables:
                whole = pa.concat_tables(tables, promote_options="permissive")
                self.batches[task].put(family, key, encode_table(whole))


def _text_of(routing: Routing, recorded: bool | None) -> bool:
    """Whether the exchange hashed the routing keys as text (as the tasks recorded it; a state
    from before they did: only for two inputs keyed by an integer and a non-integer column,
    which needs schemas this query's state does not say, so refused)."""
    if recorded is not None:
        return recorded
    if len(routing.keys) <= 1:
        return False
    raise SqlError("the tasks did not record how they hashed their keys; cannot rescale this query")


def _move_top_n(move: Move) -> None:
    """A Top-N (or deduplication): the kept rows of each PARTITION BY key."""
    node = move.plan.operator
    assert isinstance(node, nodes.TopN)
    move.check(OPERATOR, {ColumnFamily.SESSIONS: (TOP_N_KEY,)})
    columns = list(move.routing.keys[node.source])
    move.tables(OPERATOR, TOP_N_KEY, list(node.partition_by), columns)


def _move_over(move: Move) -> None:
    """An OVER aggregation: the rows waiting for the watermark (each old run split, renumbered),
    the history its frames reach, the rows waiting for their LEADs and the running totals (one
    row per partition, keyed by the partition columns the query computes), split by the key
    group of their PARTITION BY."""
    node = move.plan.operator
    assert isinstance(node, OverAggregate)
    columns = list(move.routing.keys[node.source])
    known = {ColumnFamily.JOINS: (OVER_WAITING, OVER_HISTORY, OVER_LEAD, OVER_RUNNING)}
    runs = [0] * len(move.batches)
    kept: dict[bytes, dict[int, list[pa.Table]]] = {
        key: {task: [] for task in range(len(move.batches))}
        for key in (OVER_HISTORY, OVER_LEAD, OVER_RUNNING)
    }
    waiting = len(OVER_WAITING) + 16  # prefix | u64 min event time | u64 run
    for store in move.olds:
        for _, key, value in move.entries(store, OPERATOR, known):
            table = decode_table(value)
            if key.startswith(OVER_WAITING) and len(key) == waiting:
                for task, part in move.split(table, columns):
                    fresh = key[: waiting - 8] + _U64.pack(runs[task])  # the same min time
                    runs[task] += 1
                    move.batches[task].put(ColumnFamily.JOINS, OPERATOR + fresh, encode_table(part))
            elif key in kept:
                by = _running_columns(node, columns) if key == OVER_RUNNING else columns
                for task, part in move.split(table, by):
                    kept[key][task].append(part)
            else:
                raise SqlError(f"unexpected OVER state {key!r}; cannot rescale this query")
    for key, parts in kept.items():
        move.merged(parts, ColumnFamily.JOINS, OPERATOR + key)


def _running_columns(node: OverAggregate, columns: list[str]) -> list[str]:
    """The columns of the running totals (``partition_column(i)``) that hold the routing
    ``columns`` (PARTITION BY columns), in their order."""
    select = sqlglot.parse_one(node.running_sql, read="postgres")
    named: dict[str, str] = {}
    for projection in select.expressions:
        if isinstance(projection, exp.Alias) and isinstance(projection.this, exp.Column):
            named.setdefault(projection.this.name, projection.alias)
    found = [named.get(c) for c in columns]
    if None in found or not all(f.startswith(partition_column(0)[:-1]) for f in found if f):
        raise SqlError("the OVER's running totals lack its PARTITION BY; cannot rescale it")
    return [f for f in found if f is not None]


def _move_temporal(move: Move) -> None:
    """A temporal join: the probe rows waiting for the watermark by the probe's key, the
    versions kept by the versioned table's."""
    node = move.plan.operator
    assert isinstance(node, nodes.TemporalJoin)
    versions = versions_key(0)
    sides = {
        TEMPORAL_PROBES: list(move.routing.keys[node.left]),
        versions: list(move.routing.keys[node.right]),
    }
    parts: dict[bytes, dict[int, list[pa.Table]]] = {
        key: {task: [] for task in range(len(move.batches))} for key in sides
    }
    known = {ColumnFamily.JOINS: tuple(sides)}
    for store in move.olds:
        for _, key, value in move.entries(store, OPERATOR, known):
            if key not in sides:
                raise SqlError(f"unexpected temporal join state {key!r}; cannot rescale it")
            for task, part in move.split(decode_table(value), sides[key]):
                parts[key][task].append(part)
    for key, split in parts.items():
        move.merged(split, ColumnFamily.JOINS, OPERATOR + key)


def _move_changelog_join(move: Move) -> None:
    """A join over an updating input: each side's current rows (a derived side's by the output
    columns of its group keys), the sequence numbering an append-only side's rows (the largest
    of the old tasks', whose numbers carry the task: none recurs), and the state of each derived
    input (a GROUP BY's groups, a Top-N's kept rows) by the key group of its rows."""
    plan, node = move.plan, move.plan.operator
    assert isinstance(node, ChangelogJoin)
    keys = CHANGELOG_JOIN_STATE
    known = {ColumnFamily.SESSIONS: (*keys, CHANGELOG_JOIN_SEQUENCE)}
    sequence = 0
    for store in move.olds:
        for _, key, value in move.entries(store, OPERATOR, known):
            if key == CHANGELOG_JOIN_SEQUENCE:
                sequence = max(sequence, _U64.unpack(value)[0])
    for side, (name, key, id_column) in enumerate(
        zip((node.left, node.right), keys, IDS, strict=True)
    ):
        derived = plan.derived.get(name)
        source = derived.source if derived is not None else name  # type: ignore[attr-defined]
        columns = list(move.routing.keys[source])
        if derived is not None:
            columns = _derived_outputs(derived, columns)
        elif not node.input_updates[side]:
            _check_numbered(move.olds, key, id_column)
        move.tables(OPERATOR, key, [id_column], columns)
    for batch in move.batches:
        batch.put(ColumnFamily.SESSIONS, OPERATOR + CHANGELOG_JOIN_SEQUENCE, _U64.pack(sequence))
    for index, (name, derived) in enumerate(plan.derived.items()):
        prefix = f"{index + 1}/".encode()
        columns = list(move.routing.keys[derived.source])  # type: ignore[attr-defined]
        if isinstance(derived, nodes.WindowAggregate) and derived.window is None:
            group_keys = _group_key_columns(derived, columns)
            _move_groups(derived, move.olds, move.batches, prefix, group_keys, move.text)
        elif isinstance(derived, nodes.TopN):
            move.check(prefix, {ColumnFamily.SESSIONS: (TOP_N_KEY,)})
            move.tables(prefix, TOP_N_KEY, list(derived.partition_by), columns)
        else:
            raise SqlError(f"the state of {name} ({type(derived).__name__}) does not move yet")


def _check_numbered(olds: list[StateStore], key: bytes, id_column: str) -> None:
    """Refuse an append-only side whose rows an earlier build numbered without their task (two
    old tasks' numbers could then meet in one new task)."""
    for store in olds:
        ids = TableState(StateView(store, OPERATOR), key, [id_column]).current()
        if ids.num_rows and not pc.all(pc.match_substring(ids[id_column], ":")).as_py():
            raise SqlError(
                "the join's rows were numbered by an earlier build, without their task;"
                " cannot rescale this query"
            )


def _derived_outputs(derived: nodes.Operator, columns: list[str]) -> list[str]:
    """The output columns of an updating input (a GROUP BY, a Top-N) that are its source's
    routing ``columns``."""
    if isinstance(derived, nodes.WindowAggregate):
        outputs = {
            bare_column(sql): out
            for out, sql in zip(derived.key_outputs, derived.key_sql, strict=True)
            if out is not None
        }
        found = [outputs.get(c) for c in columns]
        if None in found:
            raise SqlError("a join column is not a group key output; cannot rescale this query")
        return [f for f in found if f is not None]
    return columns


def _group_key_columns(derived: nodes.WindowAggregate, columns: list[str]) -> list[str]:
    """The ``__k<i>`` columns of a GROUP BY's groups that are the routing ``columns``."""
    index = {bare_column(sql): f"__k{i}" for i, sql in enumerate(derived.key_sql)}
    found = [index.get(c) for c in columns]
    if None in found:
        raise SqlError("a join column is not a group key; cannot rescale this query")
    return [f for f in found if f is not None]


_KEYED_MOVES: dict[type, Callable[[Move], None]] = {
    nodes.TopN: _move_top_n,
    OverAggregate: _move_over,
    nodes.TemporalJoin: _move_temporal,
    ChangelogJoin: _move_changelog_join,
}
"""How the state of each operator routed by source rows (see :mod:`.routing`) moves, by plan
node type (the others: :func:`_move_state`)."""


KEYS_FILE = "keys.json"
"""Written by the tasks: whether their exchange hashes keys as text (see
:meth:`~.parallel.TaskQuery.text_keys`), which the split must hash alike."""


def _recorded_text(root: Path) -> bool | None:
    try:
        return bool(json.loads((root / KEYS_FILE).read_text())["text"])
    except (OSError, ValueError, KeyError):
        return None


def _source_of(node: nodes.Operator, family: str, key: bytes) -> str | None:
    """The source whose rows a state entry holds (a join's side), None for an aggregate's."""
    if isinstance(node, nodes.StreamJoin):
        return node.left if key[:1] == b"L" else node.right
    if isinstance(node, nodes.Windowed):
        names = sorted(node.inputs)
        return node.inputs[names[key[0]]][0]
    return None


def _renumbered(family: str, key: bytes, run: int) -> bytes:
    """``key`` with its run (or chunk) number replaced by ``run``; open sessions all in one
    bucket (depth 0), which splits again when it grows."""
    if family == ColumnFamily.SESSIONS:
        if not key.startswith(SESSIONS_KEY):
            raise SqlError(f"unexpected session state {key!r}; cannot rescale this query")
        return SESSIONS_KEY + _SESSION_RUN.pack(0, 0, run)
    if family == ColumnFamily.JOINS and len(key) == 17:  # side | u64 time | u64 sequence
        return key[:9] + _U64.pack(run)
    return key[:-4] + _U32.pack(run)  # windows, window-join panes: ... | u32 run


def _text_keys(routing: Routing, entries: list[tuple[str, bytes, pa.Table, str | None]]) -> bool:
    """Whether the exchange hashed the keys as text (as :meth:`~.parallel.TaskQuery.text_keys`):
    the join's inputs key by columns of which one is an integer and the other not."""
    kinds = {}
    for _, _, table, source in entries:
        if source is not None and source not in kinds:
            kinds[source] = tuple(
                pa.types.is_integer(table.schema.field(c).type) for c in routing.keys[source]
            )
    return len(set(kinds.values())) > 1


def _groups(table: pa.Table, columns: list[str], text: bool) -> np.ndarray:
    keys = table.select(columns)
    if text:
        keys = pa.table(
            [c.cast(pa.string()) if pa.types.is_integer(c.type) else c for c in keys.columns],
            names=keys.column_names,
        )
    return key_groups(keys, columns)


__all__ = ["finish", "rescalable", "rescale", "start_after_exchanged"]
