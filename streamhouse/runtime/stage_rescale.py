"""Rescaling a query of two stages (Nexmark q4, see :mod:`.stages`): both stages' state moves by
key group from the last checkpoint, as a one-stage query's does (:mod:`.rescale`, whose steps,
staging directory and commit point this follows; only what the second exchange adds is here).

The second exchange (``<query>.exchange-stage2``) has a partition per task and its own progress
on both sides: each first stage's sequence number (``stage/sequence``) and micro-batch intent,
each second stage's offset in its partition and the last sequence it took per first stage. The
choice: **drain it, then start every new task's progress on it afresh, on the same topic**.

1. **Drain** (:func:`drain`), after the producers' (a batch a kill left pending on the first
   exchange, sent again): the first stages take every record of the first exchange, replaying
   a micro-batch whose intent a kill left, and move their watermarks to what those records
   carry (phase ``"stages"``); only once every first stage has appended all it will do the
   second stages take every record of the second exchange (phase ``"consumers"``). Separate
   phases, because a second stage reads every first stage's records: each phase's task
   processes run together, and a second stage draining beside a first one could stop before
   that one's last append. Nothing is then in flight on either exchange, and every task of a
   stage stands at one watermark.
2. **First stages** (:func:`move_first_stage`), after their first exchange positions (as a
   one-stage query's consuming sides): the state of each operator under the top one, split by
   the key group the first exchange routed its rows by: a stream join's buffered rows by its
   side's equality columns, the inner GROUP BY's groups by the group keys that hold them (over
   a join: the join's equality columns as the join passes them on). The join's chunk sequence
   starts above every old task's; the stage's own sequence number is not kept.
3. **Second stages** (:func:`move_second_stage`): the latest input row per inner group (the
   Recompute's state), split by the key group of the outer GROUP BY's columns, as the first
   stages route their changelog. Each new second stage starts at the end of its partition of
   the second exchange (grown to the new parallelism first; a shrunk query leaves the extra
   partitions unread), with no sequence taken from any first stage, each first stage's
   watermark the old first stages' common one, and its own the old second stages'.

Why not a fresh topic (a new name or an epoch per parallelism): after the drain no record on
the second exchange is untaken, so the old records only need to be behind every new reader,
which starting at the partitions' ends does; the new first stages number their batches from 1
again, and a new second stage reads only batches appended after that end, all of the new first
stages, so no old sequence number is ever compared with a new one. The first exchange is
rescaled the same way (:func:`~.rescale._move_exchange`), so both exchanges keep one
discipline, and no topic is left behind to delete. Crash safety is the one-stage rescale's:
both stages' new stores are written into the staging directory (``<name>.p<M>.rescaling``),
which the rename into place commits; a kill -9 before it (between the two stages' moves, say)
leaves the old state, which the next start drains (nothing left: a no-op) and moves again, and
a kill after it leaves the new state, whose start deletes the old (:func:`~.rescale.finish`).
Growing the second exchange first is harmless to the old layout, which writes and reads only
its own partitions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streamhouse.errors import SqlError
from streamhouse.log import Log
from streamhouse.runtime.exchange import stage_topic
from streamhouse.runtime.query import PENDING, WATERMARK
from streamhouse.runtime.rescale import (
    OPERATOR,
    SECOND,
    Move,
    _behind,
    _copy_shared,
    _group_key_columns,
    _high_watermarks,
    _move_groups,
    _pending,
    move_rows,
    refuse_unknown,
)
from streamhouse.runtime.routing import Routing, _join_output
from streamhouse.runtime.sources import EVENT_TIME, SOURCE
from streamhouse.sql import nodes
from streamhouse.sql.plan import ContinuousPlan
from streamhouse.state.store import StateBatch, StateStore, partition_key
from streamhouse.views.recompute import RECOMPUTE_KEY

_STAGE_SOURCE = bytes([0])
"""The source index of a second stage's one input, the second exchange."""


def drain(
    log_: Log, name: str, topics: list[str], root: Path, old: int, run: Callable[[str], None]
) -> None:
    """Run the old tasks' drains a query of two stages needs (``run(phase)``; see the module):
    the first stages' when one has first exchange records (``topics``) left to take, a
    micro-batch pending, or another watermark than the others; then the second stages' when one
    has second exchange records left, or another watermark."""
    firsts = [root / f"task-{task}" for task in range(old)]
    if _behind(log_, topics, root, old) or any(_pending(path, PENDING) for path in firsts):
        run("stages")
    if _behind(log_, [stage_topic(name)], root, old, SECOND):
        run("consumers")


def move_first_stage(
    plan: ContinuousPlan,
    routing: Routing,
    olds: list[StateStore],
    batches: list[StateBatch],
    text: bool,
) -> None:
    """The state of every operator the first stages run (the plan's derived inputs: a stream
    join and the inner GROUP BY, or the GROUP BY alone), each by the key groups its rows were
    routed by; ``text``: whether the first exchange hashed its keys as text."""
    prefixes = []
    for index, derived in enumerate(plan.derived.values()):
        prefix = f"{index + 1}/".encode()  # as the branch keeps it (Branch.state_prefix)
        prefixes.append(prefix)
        if isinstance(derived, nodes.StreamJoin) and derived.outer is None:
            move_rows(derived, routing, olds, batches, text, prefix)
        elif isinstance(derived, nodes.WindowAggregate) and derived.window is None:
            columns = _routed_group_keys(plan, routing, derived)
            _move_groups(derived, olds, batches, prefix, columns, text)
        else:
            raise SqlError(
                f"the first stage's {type(derived).__name__} state does not move by key group"
                " yet; cannot rescale this query"
            )
    refuse_unknown(olds, tuple(prefixes))  # the top operator (Forward) keeps none


def _routed_group_keys(
    plan: ContinuousPlan, routing: Routing, aggregate: nodes.WindowAggregate
) -> list[str]:
    """The group key columns (``__k<i>``) of the inner GROUP BY that hold what the first
    exchange routed its rows by: the stream's routing columns, or over a join, per equality,
    the group key the join passes either side's column on as."""
    join = plan.derived.get(aggregate.source)
    if join is None:
        return _group_key_columns(aggregate, list(routing.keys[aggregate.source]))
    assert isinstance(join, nodes.StreamJoin)
    passed = [_join_output(join.sql, key) for key in aggregate.key_sql]
    columns = []
    for left, right in zip(routing.keys[join.left], routing.keys[join.right], strict=True):
        found = [i for i, out in enumerate(passed) if out in (("__left", left), ("__right", right))]
        if not found:
            raise SqlError(
                f"the join's equality ({left} = {right}) is not a group key of the GROUP BY"
                " over it; cannot rescale this query"
            )
        columns.append(f"__k{found[0]}")
    return columns


def move_second_stage(
    log_: Log,
    plan: ContinuousPlan,
    routing: Routing,
    name: str,
    firsts: list[StateStore],
    olds: list[StateStore],
    batches: list[StateBatch],
) -> None:
    """The second stages' progress on the second exchange and their state (the latest input
    row per inner group) to the new second stages (see the module); ``firsts``: the old first
    stages' stores (their common watermark is every new first stage's)."""
    node = plan.operator
    assert isinstance(node, nodes.Recompute) and routing.stage is not None
    topic = stage_topic(name)
    ends = _high_watermarks(log_, topic)  # the topic grown to the new parallelism already
    for task, store in enumerate(olds):  # drained: every record taken
        taken = store.get_int(partition_key(SOURCE + _STAGE_SOURCE, task)) or 0
        if taken < ends[task]:
            raise SqlError(
                f"the second stage of task {task} of query {name} did not take every record"
                f" of {topic} ({taken} of {ends[task]}); cannot rescale"
            )
    produced = [store.get_int(WATERMARK) for store in firsts]
    marks = [store.get_int(WATERMARK) for store in olds]
    for task, batch in enumerate(batches):
        batch.put_int(partition_key(SOURCE + _STAGE_SOURCE, task), ends[task])
        if None not in produced:  # (stored biased, as the exchange's event times are)
            for producer in range(len(batches)):
                key = partition_key(EVENT_TIME + _STAGE_SOURCE, producer)
                batch.put_int(key, min(p for p in produced if p is not None))
        if None not in marks:
            batch.put_int(WATERMARK, min(m for m in marks if m is not None))
    _copy_shared(olds, batches)
    refuse_unknown(olds, (OPERATOR + RECOMPUTE_KEY,))
    move = Move(plan, routing, olds, batches, False)  # the first stages hash it as it is
    move.tables(OPERATOR, RECOMPUTE_KEY, list(node.input_keys), list(routing.stage))


__all__ = ["drain", "move_first_stage", "move_second_stage"]
