"""The second exchange of a parallel query of two stages (Nexmark q4: an aggregate over an
updating aggregate of a join, keyed first by auction, then by category).

A plan split at its second key change (:attr:`~.routing.Routing.stage`) runs in every task
process as two continuous queries, one after the other in the task's loop:

- the *first stage* (``task-<i>``) reads the first exchange (the source rows by key group of
  the join's key) and runs every operator of the plan but the top one, which it replaces by
  :class:`Forward`: the inner aggregate's changelog (the latest row per group, each with its
  group key columns) goes, instead of a sink, to the second exchange topic
  (:func:`~.exchange.stage_topic`), to the task owning the key group of the outer group key
  (:class:`StageSink`);
- the *second stage* (``stage2-<i>``) reads its partition of that topic and runs the top
  operator (the Recompute) over it into the query's sink.

Exactly once, the first exchange's discipline (Kafka Streams' model: each side commits its own
progress; see :mod:`.exchange`): each micro-batch of the first stage records its intent (the
exchange offsets it reads to and its watermark, fsynced) before it appends, then sends one
record to every partition of the second exchange, keyed
``<task>:<sequence>:<watermark>:0`` (its watermark also when it holds no rows), and commits its
state with the sequence number in one write batch (:class:`StageCommit`). A crash before that
commit replays the batch from the intent: the same inputs over the same state make the same
rows, under the same sequence number, which the second stage skips if it took it (it commits
the last sequence taken per producer with its state and offsets, :class:`~.exchange.ExchangeSource`).
The second stage's watermark is the minimum over the first stage's tasks. Restarted at another
parallelism, both stages' state moves by key group, the second exchange drained first
(:mod:`.stage_rescale`).

On ``serve`` agents (:mod:`.placement`) the intent must outlive the machine: a task moved to
another agent resumes from its checkpoint in the object store, not from the local RocksDB that
held the intent. So each record the first stage sends also carries its micro-batch's intent in
a header (:data:`INTENT_HEADER`), and its state records, with the sequence number, the offsets
of the records it sent (:data:`SENT_AT`). A first stage restored from a checkpoint older than
what it sent (its agent died after the append, before the checkpoint was recorded) reads its
records after those offsets back (:func:`sent_after_checkpoint`) and replays their batches in
order from the intents they carry (:func:`replay_next`): the same inputs over the same state,
the same rows under the same sequence numbers, skipped by the second stage where it took them.
Its appends there are fenced by the task's lease, as every write of a task on an agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.exchange import append_shares
from streamhouse.runtime.key_groups import key_groups, task_of
from streamhouse.runtime.operator import Changelog, MicroBatch
from streamhouse.runtime.query import PENDING
from streamhouse.sql.source import read_records
from streamhouse.state.store import StateBatch, StateStore

if TYPE_CHECKING:
    from streamhouse.runtime.two_phase import TwoPhaseCommit

log = logging.getLogger(__name__)

SEQUENCE = b"stage/sequence"
"""The sequence number of the first stage's last micro-batch committed."""
SENT_AT = b"stage/sent_at"
"""The offsets of that micro-batch's records in the second exchange (JSON, by partition)."""
REPLAYED = "replayed"
"""Set in the intent of a batch :func:`replay_next` sends again (not sent on in its header):
its state keeps :data:`SENT_AT` of the checkpoint it was restored from, since the records of the
batches after it lie before the replay's (see :func:`sent_after_checkpoint`)."""
INTENT_HEADER = "streamhouse.intent"
"""The header of a first stage's record holding its micro-batch's intent (JSON, as its state
held it: end offsets, watermark, processing time)."""


class Forward:
    """The first stage's top operator: the rows of the input the replaced operator reads, as
    they come (the changelog of the updating aggregate under it)."""

    def __init__(self, source: str) -> None:
        self.source = source

    @property
    def state_size(self) -> int:
        return 0

    def process(self, batch: MicroBatch) -> Changelog:
        if batch.retracted.get(self.source):
            raise StreamHouseError(
                "the first stage of a parallel query got retractions it cannot send on"
            )
        return Changelog(batch.inputs[self.source])

    def commit(self) -> None:
        return None

    def rollback(self) -> None:
        return None


class StageCommit:
    """The first stage's stand-in for a sink transaction (the methods the micro-batch loop
    calls on one): the sequence number of the record a micro-batch sent, committed with its
    state."""

    def __init__(self, store: StateStore) -> None:
        self.sequence = store.get_int(SEQUENCE) or 0
        self.sent: int | None = None
        self.sent_at: dict[int, int] = {}  # the sent record's offset, by partition

    @property
    def open(self) -> bool:
        return self.sent is not None

    def recover(self, store: StateStore) -> None:
        self.sequence = store.get_int(SEQUENCE) or 0

    def settle(self, store: StateStore, *, again: bool = True) -> None:
        """A micro-batch that failed after sending: its replay sends the same record again."""
        self.sent = None

    def record(self, batch: StateBatch) -> None:
        if self.sent is not None:
            batch.put_int(SEQUENCE, self.sent)
            if self.sent_at:  # (none for a replay: where to look for the later ones stays)
                batch.put_json(SENT_AT, {str(p): o for p, o in self.sent_at.items()})

    def commit(self) -> None:
        if self.sent is not None:
            self.sequence, self.sent = self.sent, None

    def close(self) -> None:
        return None


class StageSink:
    """Where the first stage's changelog goes: one record per micro-batch to every partition
    of the second exchange, the rows by key group of ``key_columns``."""

    every_batch = True
    """A record per micro-batch, also without rows: it carries the watermark."""

    def __init__(
        self,
        log_: Log,
        topic: str,
        key_columns: list[str],
        task: int,
        parallelism: int,
        intent: Callable[[], dict[str, Any]],
        fence: Lease | None = None,
    ) -> None:
        self.log = log_
        self.topic = topic
        self.key_columns = key_columns
        self.task = task
        self.parallelism = parallelism
        self.intent = intent  # the micro-batch's intent, as the state holds it
        self.fence = fence

    def write(
        self,
        rows: pa.Table,
        retracted: list[bytes],
        transaction: TwoPhaseCommit | StageCommit | None,
    ) -> None:
        if retracted:
            raise StreamHouseError(
                "the first stage of a parallel query got retractions it cannot send on"
            )
        assert isinstance(transaction, StageCommit)
        sequence = transaction.sequence + 1
        shares = None
        if rows.num_rows:
            owner = task_of(
                key_groups(rows.select(self.key_columns), self.key_columns), self.parallelism
            )
            shares = [owner == target for target in range(self.parallelism)]
        else:
            rows = None  # type: ignore[assignment]
        intent = dict(self.intent())
        replayed = intent.pop(REPLAYED, False)
        key = f"{self.task}:{sequence}:{int(intent['watermark'])}:0".encode()
        headers = [(INTENT_HEADER, json.dumps(intent).encode())]
        sent_at = append_shares(
            self.log, self.topic, self.parallelism, rows, shares, key, headers, self.fence
        )
        transaction.sent_at = {} if replayed else sent_at
        transaction.sent = sequence


def sent_after_checkpoint(
    log_: Log, store: StateStore, topic: str, task: int, parallelism: int
) -> list[dict[str, Any]]:
    """The intents of the micro-batches first-stage task ``task`` sent to ``topic`` after the
    one its state (``store``, restored from a checkpoint) committed, in order: those its
    replay must send again alike (see module). They follow :data:`SENT_AT` in each partition:
    the offsets of the last batch it sent anew (a replay's are after the batches that follow
    it, so a replayed batch keeps the ones its state was restored with). Usually one (the
    first stage records a checkpoint after every micro-batch it sends); more where a
    checkpoint's upload failed or a move came during a replay."""
    sequence = store.get_int(SEQUENCE) or 0
    sent_at = {int(p): int(o) for p, o in (store.get_json(SENT_AT) or {}).items()}
    metadata = log_.metadata
    fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)
    prefix = f"{task}:".encode()
    found: dict[int, dict[str, Any]] = {}
    for target in range(parallelism):
        start = sent_at[target] + 1 if target in sent_at else 0
        end = fresh(topic, target).high_watermark
        if end <= start:
            continue
        records = read_records(
            log_,
            topic,
            [target],
            {target: start},
            {target: end},
            isolation=Isolation.READ_UNCOMMITTED,
        )
        keys, headers = records["key"].to_pylist(), records["headers"].to_pylist()
        for key, pairs in zip(keys, headers, strict=True):
            if not key or not key.startswith(prefix):
                continue
            sent = int(key.split(b":")[1])
            intent = next((h["value"] for h in pairs if h["key"] == INTENT_HEADER), None)
            if sent > sequence and intent is not None:
                found[sent] = json.loads(intent)
    numbers = sorted(found)
    if numbers != list(range(sequence + 1, sequence + 1 + len(numbers))):
        raise StreamHouseError(
            f"{topic}: task {task} of the first stage restored at sequence {sequence} found"
            f" its later records {numbers}, not the ones following it: not resumed"
        )
    if numbers:
        log.warning(
            "%s: first stage %d replays %d batch(es) it sent after its checkpoint (sequence %d)",
            topic,
            task,
            len(numbers),
            numbers[-1],
        )
    return [found[n] for n in numbers]


def replay_next(store: StateStore, intents: list[dict[str, Any]]) -> None:
    """Make the first of ``intents`` (see :func:`sent_after_checkpoint`) the micro-batch the
    next step runs, once the one before is committed."""
    if intents and store.get_json(PENDING) is None:
        batch = store.batch()
        batch.put_json(PENDING, {**intents.pop(0), REPLAYED: True})
        store.commit(batch)


__all__ = ["Forward", "StageCommit", "StageSink", "replay_next", "sent_after_checkpoint"]
