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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.log import Log
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.exchange import append_shares
from streamhouse.runtime.key_groups import key_groups, task_of
from streamhouse.runtime.operator import Changelog, MicroBatch
from streamhouse.state.store import StateBatch, StateStore

if TYPE_CHECKING:
    from streamhouse.runtime.two_phase import TwoPhaseCommit

SEQUENCE = b"stage/sequence"
"""The sequence number of the first stage's last micro-batch committed."""


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
        watermark: Callable[[], int],
        fence: Lease | None = None,
    ) -> None:
        self.log = log_
        self.topic = topic
        self.key_columns = key_columns
        self.task = task
        self.parallelism = parallelism
        self.watermark = watermark  # the micro-batch's watermark (as its intent holds it)
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
        key = f"{self.task}:{sequence}:{self.watermark()}:0".encode()
        append_shares(self.log, self.topic, self.parallelism, rows, shares, key, fence=self.fence)
        transaction.sent = sequence


__all__ = ["Forward", "StageCommit", "StageSink"]
