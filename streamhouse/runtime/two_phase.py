"""A continuous query's output and its checkpoint commit together: the two-phase commit of its
topic sinks, as Flink's ``TwoPhaseCommitSinkFunction`` and ``KafkaSink`` do it.

The query (each task of a parallel query) is a Kafka transactional producer of its own
transactional id (:func:`transactional_id`). A micro-batch with output:

1. writes its sink records as a transaction (AddPartitionsToTxn before a partition's first
   batch; the records durable before the next step): read_committed readers do not see them;
2. checkpoints (state, source offsets) with the transaction recorded in it
   (:data:`TRANSACTION`: producer id and epoch) in one synced RocksDB write, and, under a
   lease, publishes that checkpoint (the one another agent would resume from);
3. commits the transaction (EndTxn: markers written): its records become visible.

A crash before 2 leaves a transaction no checkpoint recorded: it is aborted when the query
starts again (InitProducerId aborts what the id left open, at a new epoch that fences the
dead producer), and the batch is run again from the checkpoint before. A crash between 2 and 3
leaves a recorded one: the checkpoint holds the batch as done, so the transaction is
committed when the query starts again (rolled forward) before anything else. So a
read_committed reader sees each output row once, and never one of a checkpoint that was
rolled back; a read_uncommitted reader may see an aborted attempt's rows too.

Each transaction has an epoch of its own: the first sink record of a micro-batch after a
committed transaction takes the next epoch first (InitProducerId with the current one,
KIP-360; Kafka's transactions v2, KIP-890, bump it at every EndTxn). The checkpoint a new
holder resumes from records the transaction of the last *recorded* micro-batch, while the old
holder may have committed it and gone on to write the next batch's records before it paused;
were both transactions of one epoch, the new holder's roll forward would commit that
unrecorded one (EndTxn names a producer id and epoch, not a transaction), then run its batch
again: every window of it twice. At the next epoch the roll forward is refused (``FENCED``:
ended before) and the new holder's InitProducerId aborts it. The record must never outlive its
transaction either: the intent a micro-batch writes before its first sink record (its bounds,
:mod:`.query`) clears it (:meth:`TwoPhaseCommit.forget`), and so does a start once it committed
the recorded one.

Two holders of one query (a lease taken over) cannot both write: the newer one's
InitProducerId fences the older's epoch, whose batches and EndTxn are refused
(``ProducerFencedError``, a ``FencedError``).

A transaction open longer than its timeout (:data:`TIMEOUT_MS`, Kafka's largest) is aborted
by a running server's coordinator; a recorded one too, so a query down longer than that loses
the output of its last micro-batch (a warning says so when it starts), as Flink's sink does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamhouse.kafka.transactions import MAX_TIMEOUT_MS
from streamhouse.log.metadata.transactions import State, Verdict
from streamhouse.state.store import ColumnFamily, StateBatch, StateStore
from streamhouse.transaction import ProducerStamp, TransactionalProducer

if TYPE_CHECKING:
    from streamhouse.log import Log

__all__ = ["TIMEOUT_MS", "TRANSACTION", "TwoPhaseCommit", "transactional_id"]

log = logging.getLogger(__name__)

TRANSACTION = b"sink/transaction"
"""``meta`` key: the sink transaction the checkpoint holds as done, to commit on a restart."""

TIMEOUT_MS = MAX_TIMEOUT_MS
"""How long a sink transaction may stay open before a server's coordinator aborts it."""


def transactional_id(query: str, task: int | None = None) -> str:
    """The transactional id a query (a task of a parallel query) writes its sinks with."""
    return f"streamhouse.query.{query}" + ("" if task is None else f".task-{task}")


class TwoPhaseCommit:
    """The sink transactions of one query (see module): :meth:`recover` once its checkpoint
    is open, then per micro-batch :meth:`join` (its partitions), :meth:`record` (in the
    checkpoint's write batch) and :meth:`commit` (after the checkpoint is durable)."""

    def __init__(self, log_: Log, transactional_id: str, timeout_ms: int = TIMEOUT_MS) -> None:
        self.producer = TransactionalProducer(log_, transactional_id, timeout_ms)
        self._ended = False  # a transaction ended at the producer's epoch: the next needs another

    @property
    def stamp(self) -> ProducerStamp:
        """What the sink batches of the open transaction carry."""
        return self.producer.stamp

    @property
    def open(self) -> bool:
        """Whether a transaction holds partitions (records were, or are being, written)."""
        return bool(self.producer.partitions)

    def recover(self, store: StateStore) -> None:
        """Before the first micro-batch: commit the transaction the checkpoint in ``store``
        recorded, then take the transactional id at a new epoch (aborting a transaction no
        checkpoint recorded, fencing an older producer of the query)."""
        self._roll_forward(store)
        self.producer.start()
        self._ended = False

    def _roll_forward(self, store: StateStore) -> None:
        recorded = store.get_json(TRANSACTION)
        if recorded is None:
            return
        producer_id, epoch = int(recorded["producer_id"]), int(recorded["epoch"])
        verdict = self.producer.settle(producer_id, epoch, commit=True)
        name = self.producer.transactional_id
        if verdict is Verdict.OK:
            log.info(
                "sink transaction %r (producer %d epoch %d) of the checkpoint committed",
                name,
                producer_id,
                epoch,
            )
        elif verdict is Verdict.FENCED and not self._aborted_at_next_epoch(producer_id, epoch):
            log.info(
                "sink transaction %r (producer %d epoch %d) of the checkpoint was committed"
                " before: its holder went on to a later epoch",
                name,
                producer_id,
                epoch,
            )
        elif verdict in (Verdict.FENCED, Verdict.UNKNOWN, Verdict.INVALID_STATE):
            # ended before: committed by an earlier start, or aborted by its timeout
            log.warning(
                "sink transaction %r (producer %d epoch %d) of the checkpoint was ended"
                " before (%s): committed by an earlier start, or aborted by its timeout of"
                " %d ms while the query was down (then that micro-batch's output is lost)",
                name,
                producer_id,
                epoch,
                verdict.value,
                self.producer.timeout_ms,
            )
        else:
            self.producer.check(verdict, "commit")
        batch = store.batch()  # settled: a later start must not look for it again
        batch.delete(ColumnFamily.META, TRANSACTION)
        store.commit(batch)

    def _aborted_at_next_epoch(self, producer_id: int, epoch: int) -> bool:
        """Whether the id's last transaction is one aborted at the epoch after ``epoch`` (as
        the timeout sweep aborts one): the recorded transaction may have been that one. A
        holder bumps the epoch only after a commit, and writes on at the new one."""
        now = self.producer.state()
        return (
            now is not None
            and (now.producer_id, now.producer_epoch) == (producer_id, epoch + 1)
            and now.state is State.COMPLETE_ABORT
        )

    def join(self, partitions: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Put sink partitions in the open transaction (starting it); those that do not
        exist (then none was added). The first of a transaction after one that ended takes
        the next epoch (see module)."""
        if self._ended:
            self.producer.bump()
            self._ended = False
        return self.producer.add(partitions)

    def record(self, batch: StateBatch) -> None:
        """Write the open transaction into the checkpoint's ``batch`` (or that none is)."""
        if self.open:
            stamp = self.producer.stamp
            batch.put_json(TRANSACTION, {"producer_id": stamp.producer_id, "epoch": stamp.epoch})
        else:
            batch.delete(ColumnFamily.META, TRANSACTION)

    def commit(self) -> None:
        """EndTxn commit: the checkpoint recording the transaction is durable."""
        self.producer.end(commit=True)
        self._ended = True

    def settle(self, store: StateStore, *, again: bool = True) -> None:
        """End a transaction a failed micro-batch left open: committed if the checkpoint in
        ``store`` recorded it, else aborted; ``again`` (more micro-batches follow) aborts it by
        taking the id at a new epoch, since the failed batch's sequences may have a gap."""
        if not self.open:
            return
        stamp = self.producer.stamp
        if store.get_json(TRANSACTION) == {"producer_id": stamp.producer_id, "epoch": stamp.epoch}:
            self.producer.end(commit=True)
            self._ended = True
        elif again:
            self.producer.start()
            self._ended = False
        else:
            self.producer.end(commit=False)

    def close(self) -> None:
        """Release the producer's event loop."""
        self.producer.close()

    @staticmethod
    def forget(batch: StateBatch) -> None:
        """Clear the transaction recorded by the checkpoint before, in the ``batch`` written
        before a micro-batch's first sink record (its intent): the micro-batch's transaction
        has that one's producer id and epoch, and must never be taken for it."""
        batch.delete(ColumnFamily.META, TRANSACTION)
