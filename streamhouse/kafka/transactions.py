"""The transaction coordinator: InitProducerId with a ``transactional.id``, AddPartitionsToTxn,
AddOffsetsToTxn, TxnOffsetCommit and EndTxn, transaction markers and timeouts.

Transaction state lives in the metadata store (:mod:`~streamhouse.log.metadata.transactions`),
where every change checks the producer id, epoch and state it expects in its own store
transaction; so any agent can coordinate any transactional id (FindCoordinator with key type 1
names the agent asked), a restart loses nothing, and two coordinators never both move one
transaction on. Within this agent the requests of one transactional id run one at a time.

- **InitProducerId** gives the transactional id its producer id at a new epoch (a new id at
  first, or once the epoch would pass :data:`MAX_EPOCH`). A transaction the previous producer
  left open is aborted first, at a bumped epoch: that producer is fenced, its later requests
  get ``PRODUCER_FENCED`` (``INVALID_PRODUCER_EPOCH`` at versions before 2, as Kafka) and its
  batches ``INVALID_PRODUCER_EPOCH``. From v3 a producer may bump its own epoch by sending its
  producer id and epoch (KIP-360), refused unless they are the current ones.
- **AddPartitionsToTxn** starts the transaction; each partition joins at its high watermark,
  which holds its last stable offset there until the transaction ends.
- **TxnOffsetCommit** keeps consumer offsets aside until the transaction commits.
- **EndTxn** committing a transaction whose records were answered early (below) does it in
  one flush: its COMMIT markers queue behind the records, and the segment commit indexing the
  markers decides and completes the transaction in its own store transaction, once it has
  checked there that every record is indexed (:meth:`TransactionCoordinator._commit_at_once`).
  Otherwise EndTxn decides (``PREPARE_COMMIT``/``PREPARE_ABORT`` stored), a marker goes to every
  partition of the transaction (through the log like any batch, flushed without lingering)
  and the transaction is completed, which moves the partitions' last stable offsets; then it
  answers. Only the markers' segment commit waits for the disk: the decision and the
  completion are lazy store commits, which it covers (Kafka answers once its PREPARE record
  is durable, but its client's next AddPartitionsToTxn waits for the markers anyway).
- **DescribeTransactions** and **ListTransactions** (v0) answer from the store.
- A transaction open longer than its ``transaction.timeout.ms`` is aborted by the sweep
  (:meth:`TransactionCoordinator.sweep`), at a bumped epoch; so is the remnant of a coordinator
  that died between deciding and completing (its markers are written again).

With SQLite (this agent alone), produce answers a transactional batch as soon as it is
queued, before it is durable, when this agent saw its transaction begin (InitProducerId, the
previous EndTxn or the AddPartitionsToTxn that started it): its records need be durable only
once the transaction commits. The answer carries the base offset the writer reserved for it
(:meth:`~streamhouse.log.writer.LogWriter.append_early`), and the commit indexing the batch
refuses it if it would land elsewhere (a batch ahead failed), as a lost one. EndTxn waits for them (flushed at once) before deciding; a
commit whose records failed, or whose start this agent did not see (it restarted meanwhile,
and may have lost records it had answered), is refused with ``UNKNOWN_PRODUCER_ID``, which
clients take as abortable with an epoch bump (KIP-360): InitProducerId v3+ with their producer
id and epoch aborts the transaction and gives them the next epoch, whose sequences start
afresh (those of the lost records would leave a gap). An abort needs not wait: its markers
follow the records through the same writer, so they land after them. Aborts by anyone else (a
new producer, the timeout) bump the epoch, so records answered early and committed later are
refused by the segment commit. With agents (PostgreSQL) a transaction's records and its
EndTxn may reach different agents, so every batch is durable before it is answered.

Produce checks transactional batches against the producer's transaction
(:meth:`TransactionCoordinator.refusal`): right epoch, partition added, transaction ongoing;
what it learns from the store it keeps in memory until the transaction ends here, and asks
the store again before refusing a batch (another agent may have moved the transaction on).
That check is a courtesy to well-behaved clients; the guarantee is in the segment commit:
markers set the producer's epoch on their partitions, so a fenced producer's batches are
refused there (``rules.check_producer_batches``).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamhouse.errors import (
    StreamHouseError,
    TransactionRefusedError,
    UnknownPartitionError,
    UnknownTopicError,
)
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.group_commit import GroupCommit
from streamhouse.kafka.txn_codec import add_partitions_body, end_txn_body
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages, ms, to_ms
from streamhouse.log.metadata.rules import SEQUENCE_MODULO
from streamhouse.log.metadata.transactions import (
    MAX_EPOCH,
    PartitionAddition,
    State,
    TransactionState,
    TransactionStore,
    Verdict,
)
from streamhouse.log.records.control import marker_batch
from streamhouse.log.records.header import ATTR_CONTROL, ATTR_TRANSACTIONAL
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.log import Log
    from streamhouse.log.records import BatchHeader

__all__ = ["HANDLERS", "MAX_TIMEOUT_MS", "Begun", "TransactionCoordinator"]

log = logging.getLogger(__name__)

MAX_TIMEOUT_MS = 900_000
"""Kafka's ``transaction.max.timeout.ms``: a longer ``transaction.timeout.ms`` is refused."""
SWEEP_SECONDS = 1.0
"""How often the coordinator looks for transactions to abort or finish."""

_VERDICT_ERRORS = {
    Verdict.OK: ErrorCode.none,
    Verdict.UNKNOWN: ErrorCode.invalid_producer_id_mapping,
    Verdict.FENCED: ErrorCode.producer_fenced,
    Verdict.BUSY: ErrorCode.concurrent_transactions,
    Verdict.INVALID_STATE: ErrorCode.invalid_txn_state,
    Verdict.UNDURABLE: ErrorCode.unknown_producer_id,
}


def error_of(verdict: Verdict, api_version: int, fenced_from: int = 2) -> ErrorCode:
    """The Kafka error of a store verdict; versions before ``fenced_from`` know no
    PRODUCER_FENCED (INVALID_PRODUCER_EPOCH instead, as Kafka answers them).

    >>> error_of(Verdict.FENCED, 1).name, error_of(Verdict.FENCED, 2).name
    ('invalid_producer_epoch', 'producer_fenced')
    """
    if verdict is Verdict.FENCED and api_version < fenced_from:
        return ErrorCode.invalid_producer_epoch
    return _VERDICT_ERRORS[verdict]


@dataclass(slots=True)
class Begun:
    """A transaction this agent saw begin: produce may answer its batches before they are
    durable; ``unflushed`` are their appends, which EndTxn waits for (or, committing at once,
    the store checks: ``last_sequences`` holds the last sequence number of the batches
    admitted to each partition)."""

    producer_id: int
    epoch: int
    unflushed: list[asyncio.Future[int]] = field(default_factory=list)
    last_sequences: dict[tuple[str, int], int] = field(default_factory=dict)
    lost: bool = False  # one of them failed (set in the writer's thread, see lose)

    def admit(
        self, topic: str, partition: int, header: BatchHeader, append: asyncio.Future[int]
    ) -> None:
        """A batch of the transaction, answered before it is durable."""
        self.unflushed.append(append)
        last = (header.base_sequence + header.last_offset_delta) % SEQUENCE_MODULO
        self.last_sequences[(topic, partition)] = last

    def lose(self) -> None:
        """One of the batches failed after it was answered: called in the writer's thread
        before any later flush commits, so the commit of the markers (queued after every
        batch) refuses the transaction. The last sequences do not tell: the store starts a
        producer's sequences afresh at a new epoch whatever the first, so a lost first batch
        leaves the last one matching."""
        self.lost = True


class TransactionCoordinator:
    """Transactions coordinated by this agent (see module); used from the event loop.

    ``early_answers``: produce may answer transactional batches before they are durable (this
    agent alone on its metadata store, see module)."""

    def __init__(
        self,
        log_: Log,
        wake: Callable[[Iterable[tuple[str, int]]], None],
        *,
        early_answers: bool = False,
    ) -> None:
        self._log = log_
        self._wake = wake
        self._early_answers = early_answers
        # transactional id -> its transaction this agent saw begin (with early answers only)
        self._begun: dict[str, Begun] = {}
        # one lock per transactional id while anyone holds or awaits it
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Ongoing transactions as produce checks them: transactional id -> (producer id,
        # epoch, partitions added). Dropped whenever the transaction ends here.
        self._writers: dict[str, tuple[int, int, set[tuple[str, int]]]] = {}
        # transactional ids whose EndTxn is under way here: their batches are refused
        self._ending: set[str] = set()
        # AddPartitionsToTxn of concurrent producers, each answered after its store write
        self._additions: GroupCommit[PartitionAddition, tuple[Verdict, list[tuple[str, int]]]]
        self._additions = GroupCommit(
            lambda additions: self.store.add_partitions_of(additions), "AddPartitionsToTxn"
        )

    @property
    def store(self) -> TransactionStore:
        return self._log.metadata.transactions

    def _lock(self, transactional_id: str) -> asyncio.Lock:
        lock = self._locks.get(transactional_id)
        if lock is None:
            lock = self._locks[transactional_id] = asyncio.Lock()
        return lock

    # -- produce ----------------------------------------------------------------------------

    def refusal(
        self,
        transactional_id: str,
        topic: str,
        partition: int,
        headers: Sequence[BatchHeader],
    ) -> ErrorCode | None:
        """Why the batches of a transactional produce request may not be appended, or ``None``.

        Each must be a transactional data batch of the producer holding ``transactional_id``
        at its current epoch, with the partition in its ongoing transaction.
        """
        first = headers[0]
        for h in headers:
            flags = h.attributes & (ATTR_TRANSACTIONAL | ATTR_CONTROL)
            if flags != ATTR_TRANSACTIONAL or h.producer_id != first.producer_id:
                return ErrorCode.invalid_record
            if h.producer_epoch != first.producer_epoch:
                return ErrorCode.invalid_record
        if transactional_id in self._ending:
            # it would land behind the markers (in no transaction), or be answered early
            # after EndTxn made sure of the transaction's records
            return ErrorCode.invalid_txn_state
        writer = self._writers.get(transactional_id)
        if (
            writer is None
            or writer[:2] != (first.producer_id, first.producer_epoch)
            or (topic, partition) not in writer[2]
        ):  # unknown here, or changed through another agent's coordinator: ask the store
            writer = self._load_writer(transactional_id)
        if writer is None or writer[0] != first.producer_id:
            return ErrorCode.invalid_producer_id_mapping
        if writer[1] != first.producer_epoch:
            return ErrorCode.invalid_producer_epoch
        if (topic, partition) not in writer[2]:
            return ErrorCode.invalid_txn_state
        return None

    def _load_writer(self, transactional_id: str) -> tuple[int, int, set[tuple[str, int]]] | None:
        try:
            txn = self.store.get(transactional_id)
        except StreamHouseError as exc:
            log.warning("transaction %r: %s", transactional_id, exc)
            return None
        if txn is None:
            return None
        partitions = {(p.topic, p.partition) for p in txn.partitions}
        writer = (txn.producer_id, txn.producer_epoch, partitions)
        if txn.state is State.ONGOING:
            self._writers[transactional_id] = writer
        else:
            writer = (txn.producer_id, txn.producer_epoch, set())
        return writer

    def early_answers(self, transactional_id: str, header: BatchHeader) -> Begun | None:
        """Where produce notes the appends of a transactional batch (:meth:`refusal` admitted
        it) that it answers before they are durable (:meth:`Begun.admit`): its transaction
        began in sight of this agent, and EndTxn makes sure of them. ``None``: answer once
        durable."""
        begun = self._begun.get(transactional_id)
        if begun is None or (begun.producer_id, begun.epoch) != (
            header.producer_id,
            header.producer_epoch,
        ):
            return None
        return begun

    async def appended(self) -> None:
        """Wait until every batch answered early is in the log (or failed): a ListOffsets
        after a producer's answer then counts its records in the high watermark, as after a
        Kafka broker's answer (librdkafka's 0103 asks right after its flush)."""
        pending = [f for b in self._begun.values() for f in b.unflushed if not f.done()]
        if pending:
            self._log.writer.hurry()
            await asyncio.wait(pending)

    def _saw_begin(self, transactional_id: str, producer_id: int, epoch: int) -> None:
        """The producer's next transaction begins in sight of this agent."""
        if self._early_answers:
            self._begun[transactional_id] = Begun(producer_id, epoch)

    async def _watch_begin(self, transactional_id: str, producer_id: int, epoch: int) -> None:
        """Before a request that may start the producer's transaction: note it if it does
        (the store holds no ongoing transaction of it yet)."""
        begun = self._begun.get(transactional_id)
        if not self._early_answers or (
            begun is not None and (begun.producer_id, begun.epoch) == (producer_id, epoch)
        ):
            return
        self._begun.pop(transactional_id, None)
        txn = await asyncio.to_thread(self.store.get, transactional_id)
        if (
            txn is not None
            and (txn.producer_id, txn.producer_epoch) == (producer_id, epoch)
            and txn.state is not State.ONGOING
            and not txn.state.preparing
        ):
            self._saw_begin(transactional_id, producer_id, epoch)

    async def _records_durable(self, transactional_id: str, producer_id: int, epoch: int) -> bool:
        """Wait for the records produce answered early in the producer's transaction;
        ``False`` if any failed, or if this agent may have answered some it lost (it did not
        see the transaction begin, and the transaction holds partitions)."""
        if not self._early_answers:
            return True
        begun = self._begun.get(transactional_id)
        if begun is None or (begun.producer_id, begun.epoch) != (producer_id, epoch):
            txn = await asyncio.to_thread(self.store.get, transactional_id)
            return txn is None or not txn.partitions
        if not begun.unflushed:
            return True
        self._log.writer.hurry()
        outcomes = await asyncio.gather(*begun.unflushed, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            log.warning(
                "transactional id %r: %d of its batches failed after they were answered"
                " (%s): the commit is refused",
                transactional_id,
                len(failed),
                failed[0],
            )
        return not failed

    # -- the APIs ---------------------------------------------------------------------------

    async def init_producer(
        self, transactional_id: str, timeout_ms: int, current: tuple[int, int] | None = None
    ) -> tuple[Verdict, int, int]:
        """``(verdict, producer id, epoch)`` of the producer taking ``transactional_id``.

        ``current`` (InitProducerId v3+, KIP-360): the producer id and epoch of a producer
        bumping its own epoch (after an abortable error that needs it); ``FENCED`` unless they
        are the id's current ones, ``UNKNOWN`` if the id has none."""
        async with self._lock(transactional_id):
            txn = await asyncio.to_thread(self.store.get, transactional_id)
            if current is not None and (
                txn is None or (txn.producer_id, txn.producer_epoch) != current
            ):
                fenced = txn is not None and txn.producer_id == current[0]
                return (Verdict.FENCED if fenced else Verdict.UNKNOWN), -1, -1
            if txn is not None and (txn.state is State.ONGOING or txn.state.preparing):
                if not await self._abort_or_finish(txn):
                    return Verdict.BUSY, -1, -1
                txn = await asyncio.to_thread(self.store.get, transactional_id)
            if txn is None or txn.producer_epoch + 1 > MAX_EPOCH:
                producer_id = await asyncio.to_thread(self._log.metadata.next_producer_id)
                epoch = 0
            else:
                producer_id, epoch = txn.producer_id, txn.producer_epoch + 1
            verdict = await asyncio.to_thread(
                self.store.register, transactional_id, timeout_ms, txn, producer_id, epoch
            )
            self._writers.pop(transactional_id, None)
            self._begun.pop(transactional_id, None)
            if verdict is Verdict.OK:
                self._saw_begin(transactional_id, producer_id, epoch)
        if verdict is not Verdict.OK:
            return verdict, -1, -1
        log.log(
            logging.DEBUG if current is not None else logging.INFO,
            "transactional id %r: producer %d epoch %d",
            transactional_id,
            producer_id,
            epoch,
        )
        return verdict, producer_id, epoch

    async def add_partitions(
        self, transactional_id: str, producer_id: int, epoch: int, partitions: list[tuple[str, int]]
    ) -> tuple[Verdict, list[tuple[str, int]]]:
        """The verdict and the partitions that do not exist (then none was added)."""
        async with self._lock(transactional_id):
            await self._watch_begin(transactional_id, producer_id, epoch)
            verdict, missing = await self._additions.submit(
                (transactional_id, producer_id, epoch, partitions)
            )
            if verdict is Verdict.OK and not missing:
                writer = self._writers.get(transactional_id)
                if writer is None or writer[:2] != (producer_id, epoch):
                    writer = self._writers[transactional_id] = (producer_id, epoch, set())
                writer[2].update(partitions)
        return verdict, missing

    async def add_offsets(self, transactional_id: str, producer_id: int, epoch: int) -> Verdict:
        async with self._lock(transactional_id):
            await self._watch_begin(transactional_id, producer_id, epoch)
            return await asyncio.to_thread(
                self.store.add_offsets, transactional_id, producer_id, epoch
            )

    async def commit_offsets(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        group: str,
        offsets: dict[tuple[str, int], tuple[int, str]],
    ) -> Verdict:
        async with self._lock(transactional_id):
            return await asyncio.to_thread(
                self.store.commit_offsets, transactional_id, producer_id, epoch, group, offsets
            )

    async def end(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> Verdict:
        """Commit or abort the producer's transaction: at once if it can
        (:meth:`_commit_at_once`), else decide it (a lazy store commit), write
        its markers and complete it; answers once all that is durable (the markers' segment
        commit covers the decision), since the id's next AddPartitionsToTxn would wait for the
        markers anyway. ``BUSY`` (CONCURRENT_TRANSACTIONS: the client retries) if a marker
        failed: the decision stays in the store, where a retry or the sweep finishes it.
        A commit waits for the records answered early first; ``UNDURABLE`` refuses one they
        may be missing from (the client aborts). An abort needs not wait: its markers follow
        them through the writer."""
        async with self._lock(transactional_id):
            self._ending.add(transactional_id)
            try:
                return await self._end(transactional_id, producer_id, epoch, commit)
            finally:
                self._ending.discard(transactional_id)

    async def _end(
        self, transactional_id: str, producer_id: int, epoch: int, commit: bool
    ) -> Verdict:
        if commit and await self._commit_at_once(transactional_id, producer_id, epoch):
            return Verdict.OK
        if commit and not await self._records_durable(transactional_id, producer_id, epoch):
            return Verdict.UNDURABLE
        verdict, txn = await asyncio.to_thread(
            self.store.prepare, transactional_id, producer_id, epoch, commit, durable=False
        )
        if verdict is not Verdict.OK:
            return verdict
        self._writers.pop(transactional_id, None)
        self._begun.pop(transactional_id, None)
        if txn is not None and not await self._finish(txn):
            return Verdict.BUSY
        self._saw_begin(transactional_id, producer_id, epoch)
        return Verdict.OK

    # -- ending transactions ----------------------------------------------------------------

    async def _commit_at_once(self, transactional_id: str, producer_id: int, epoch: int) -> bool:
        """Commit a transaction this agent saw begin in one flush: its COMMIT markers are
        queued behind its records (answered early, perhaps not yet flushed), and the commit
        that indexes the markers decides and completes the transaction in the same store
        transaction (:meth:`TransactionStore.commit_in`), which first checks that every
        record is indexed. So the decision is durable with its markers and never without its
        records; several producers' commits share a flush. ``False`` (nothing decided) if it
        does not apply or was refused: EndTxn then goes the long way (:meth:`end`)."""
        begun = self._begun.get(transactional_id)
        writer = self._writers.pop(transactional_id, None)  # produce asks the store meanwhile
        if (
            begun is None
            or writer is None
            or (begun.producer_id, begun.epoch) != (producer_id, epoch)
            or writer[:2] != (producer_id, epoch)
            or not writer[2]
            or begun.lost
        ):
            return False
        keys = sorted(writer[2])
        sequences = dict(begun.last_sequences)
        store = self.store
        verdicts: list[Verdict] = []

        def decide(conn: Any, _markers: Mapping[tuple[str, int], int]) -> None:
            if begun.lost:  # a batch failed in a flush before this one
                verdict = Verdict.UNDURABLE
            else:
                verdict = store.commit_in(
                    conn, transactional_id, producer_id, epoch, keys, sequences
                )
            verdicts.append(verdict)
            if verdict is not Verdict.OK:
                raise TransactionRefusedError(f"{transactional_id!r}: {verdict.value}")

        marker = marker_batch(producer_id, epoch, commit=True)
        appends = self._log.append_hooked([(t, p, marker) for t, p in keys], decide)
        outcomes = [await self._marker_offset(k, a) for k, a in zip(keys, appends, strict=True)]
        if not all(isinstance(o, int) and not isinstance(o, bool) for o in outcomes):
            log.info(
                "transactional id %r: commit at once refused (%s); deciding first",
                transactional_id,
                verdicts[-1].value if verdicts else "markers failed",
            )
            return False
        # a produce request checked while the markers were on their way found the
        # transaction ongoing in the store and cached it again: it is over
        self._writers.pop(transactional_id, None)
        self._begun.pop(transactional_id, None)
        self._saw_begin(transactional_id, producer_id, epoch)
        self._wake(keys)
        log.debug(
            "transactional id %r: committed (producer %d epoch %d, %d partitions)",
            transactional_id,
            producer_id,
            epoch,
            len(keys),
        )
        return True

    async def _abort_or_finish(self, txn: TransactionState) -> bool:
        """Abort ``txn`` at a bumped epoch if it is ongoing (fencing its producer), or finish
        it if it was decided; ``False`` if that failed (or another agent moved it on)."""
        self._writers.pop(txn.transactional_id, None)
        self._begun.pop(txn.transactional_id, None)
        if txn.state is State.ONGOING:
            bumped = min(txn.producer_epoch + 1, MAX_EPOCH)
            verdict, prepared = await asyncio.to_thread(
                self.store.prepare,
                txn.transactional_id,
                txn.producer_id,
                txn.producer_epoch,
                False,
                new_epoch=bumped,
            )
            if verdict is not Verdict.OK or prepared is None:
                return False
            txn = prepared
        return await self._finish(txn)

    async def _finish(self, txn: TransactionState) -> bool:
        """Write ``txn``'s markers to its partitions, then complete it in the store: a lazy
        commit after the markers' durable one, a durable one if no marker was written."""
        marker = marker_batch(txn.producer_id, txn.producer_epoch, commit=txn.state.committing)
        keys = [(p.topic, p.partition) for p in txn.partitions]
        # queued together, the last one urgent: one flush without lingering holds them all
        appends = [
            self._start_marker(topic, partition, marker, urgent=i == len(keys) - 1)
            for i, (topic, partition) in enumerate(keys)
        ]
        outcomes = [await self._marker_offset(key, a) for key, a in zip(keys, appends, strict=True)]
        if any(o is False for o in outcomes):
            return False
        markers = {key: o for key, o in zip(keys, outcomes, strict=True) if o is not None}
        done = await asyncio.to_thread(self.store.complete, txn, markers, durable=not markers)
        self._wake(keys)
        if done:
            log.info(
                "transactional id %r: %s (producer %d epoch %d, %d partitions)",
                txn.transactional_id,
                "committed" if txn.state.committing else "aborted",
                txn.producer_id,
                txn.producer_epoch,
                len(keys),
            )
        return done

    def _start_marker(
        self, topic: str, partition: int, marker: bytes, *, urgent: bool
    ) -> asyncio.Future[int] | BaseException:
        """Queue a marker to the partition (or the error that refused it)."""
        try:
            return self._log.append_async(topic, partition, marker, urgent=urgent)
        except StreamHouseError as exc:
            return exc

    @staticmethod
    async def _marker_offset(
        key: tuple[str, int], append: asyncio.Future[int] | BaseException
    ) -> int | bool | None:
        """The marker's offset; ``None`` if the partition is gone, ``False`` if it failed."""
        try:
            if isinstance(append, BaseException):
                raise append
            return await append
        except (UnknownTopicError, UnknownPartitionError):
            return None
        except StreamHouseError as exc:
            log.warning("transaction marker to %s-%d failed: %s", key[0], key[1], exc)
            return False

    async def sweep(self) -> int:
        """Abort the transactions open past their timeout and finish the decided ones left
        behind; how many were ended."""
        ended = 0
        for txn in await asyncio.to_thread(self.store.due):
            async with self._lock(txn.transactional_id):
                current = await asyncio.to_thread(self.store.get, txn.transactional_id)
                if current is None or not (current.expired or current.state.preparing):
                    continue
                if current.expired:
                    log.info(
                        "transactional id %r: open %d ms, past its timeout of %d ms: aborting",
                        current.transactional_id,
                        current.age_ms,
                        current.timeout_ms,
                    )
                if await self._abort_or_finish(current):
                    ended += 1
        return ended

    async def run_sweeps(self) -> None:
        """:meth:`sweep` every :data:`SWEEP_SECONDS` until cancelled."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("transaction sweep failed; the next one retries")
            await asyncio.sleep(SWEEP_SECONDS)


# -- handlers ---------------------------------------------------------------------------------


def _transaction_denied(broker: Broker, header: RequestHeader, transactional_id: str) -> bool:
    """WRITE on the TRANSACTIONAL_ID is what every transactional request needs (as Kafka)."""
    return not broker.access.allowed(
        header.session, AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, transactional_id
    )


async def handle_add_partitions(broker: Broker, header: RequestHeader, request: Any) -> bytes:
    """Partitions join the transaction; with ACLs, WRITE on the transactional id and on each
    topic is needed (TOPIC_AUTHORIZATION_FAILED for the denied ones, OPERATION_NOT_ATTEMPTED
    for the rest, and none is added). The response body (:mod:`~streamhouse.kafka.txn_codec`)."""
    topics = request.v3_and_below_topics
    transactional_id = request.v3_and_below_transactional_id
    wanted = [(t.name, int(p)) for t in topics for p in t.partitions]
    denied_topics = {
        name
        for name in {t.name for t in topics}
        if not broker.access.allowed(header.session, AclOperation.WRITE, ResourceType.TOPIC, name)
    }
    unknown: set[tuple[str, int]] = set()
    if _transaction_denied(broker, header, transactional_id):
        verdict_error = ErrorCode.transactional_id_authorization_failed
    elif denied_topics:
        verdict_error = ErrorCode.none
    else:
        verdict, missing = await broker.transactions.add_partitions(
            transactional_id,
            request.v3_and_below_producer_id,
            request.v3_and_below_producer_epoch,
            wanted,
        )
        verdict_error = error_of(verdict, header.api_version)
        unknown = set(missing)

    def code(key: tuple[str, int]) -> ErrorCode:
        if verdict_error is not ErrorCode.none:
            return verdict_error
        if denied_topics:
            if key[0] in denied_topics:
                return ErrorCode.topic_authorization_failed
            return ErrorCode.operation_not_attempted
        if not unknown:
            return ErrorCode.none
        return (
            ErrorCode.unknown_topic_or_partition
            if key in unknown
            else ErrorCode.operation_not_attempted
        )

    return add_partitions_body(
        [(t.name, [(p, code((t.name, int(p)))) for p in t.partitions]) for t in topics]
    )


async def handle_add_offsets(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """The group's offsets will be committed with the transaction; with ACLs, WRITE on the
    transactional id and READ on the group are needed."""
    module = messages(ApiKey.ADD_OFFSETS_TO_TXN, header.api_version, True)
    if _transaction_denied(broker, header, request.transactional_id):
        error = ErrorCode.transactional_id_authorization_failed
    elif not broker.access.allowed(
        header.session, AclOperation.READ, ResourceType.GROUP, request.group_id
    ):
        error = ErrorCode.group_authorization_failed
    else:
        verdict = await broker.transactions.add_offsets(
            request.transactional_id, request.producer_id, request.producer_epoch
        )
        error = error_of(verdict, header.api_version)
    return make(module.AddOffsetsToTxnResponse, throttle_time=0, error_code=error)


async def handle_txn_offset_commit(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Offsets held until the transaction commits; sent to the group's coordinator. With
    ACLs, READ on the group, WRITE on the transactional id and READ on each topic are needed
    (a denied topic's partitions get TOPIC_AUTHORIZATION_FAILED, the others are held)."""
    module = messages(ApiKey.TXN_OFFSET_COMMIT, header.api_version, True)
    session = header.session
    denied_topics = {
        t.name
        for t in request.topics
        if not broker.access.allowed(session, AclOperation.READ, ResourceType.TOPIC, t.name)
    }
    if not broker.access.allowed(session, AclOperation.READ, ResourceType.GROUP, request.group_id):
        error = ErrorCode.group_authorization_failed
    elif _transaction_denied(broker, header, request.transactional_id):
        error = ErrorCode.transactional_id_authorization_failed
    elif not await broker.coordination.ensure(request.group_id):
        error = ErrorCode.not_coordinator
    else:
        offsets = {
            (t.name, int(p.partition_index)): (int(p.committed_offset), p.committed_metadata or "")
            for t in request.topics
            if t.name not in denied_topics
            for p in t.partitions
        }
        verdict = await broker.transactions.commit_offsets(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            request.group_id,
            offsets,
        )
        error = error_of(verdict, header.api_version, fenced_from=3)
    topics = tuple(
        module.TxnOffsetCommitResponseTopic(
            name=t.name,
            partitions=tuple(
                module.TxnOffsetCommitResponsePartition(
                    partition_index=p.partition_index,
                    error_code=(
                        ErrorCode.topic_authorization_failed
                        if t.name in denied_topics and error is ErrorCode.none
                        else error
                    ),
                )
                for p in t.partitions
            ),
        )
        for t in request.topics
    )
    return make(module.TxnOffsetCommitResponse, throttle_time=0, topics=topics)


async def handle_end_txn(broker: Broker, header: RequestHeader, request: Any) -> bytes:
    """Commit or abort; with ACLs, WRITE on the transactional id is needed. The response body
    (:mod:`~streamhouse.kafka.txn_codec`)."""
    if _transaction_denied(broker, header, request.transactional_id):
        error = ErrorCode.transactional_id_authorization_failed
    else:
        verdict = await broker.transactions.end(
            request.transactional_id,
            request.producer_id,
            request.producer_epoch,
            request.committed,
        )
        error = error_of(verdict, header.api_version)
    return end_txn_body(error)


async def init_transactional_producer(
    broker: Broker, header: RequestHeader, request: Any
) -> tuple[ErrorCode, int, int]:
    """InitProducerId with a transactional id: ``(error, producer id, epoch)``."""
    timeout_ms = to_ms(request.transaction_timeout)
    if not 0 < timeout_ms <= MAX_TIMEOUT_MS:
        return ErrorCode.invalid_transaction_timeout, -1, -1
    if not request.transactional_id:
        return ErrorCode.invalid_request, -1, -1
    current = None
    if header.api_version >= 3 and request.producer_id >= 0:
        current = (int(request.producer_id), int(request.producer_epoch))
    verdict, producer_id, epoch = await broker.transactions.init_producer(
        request.transactional_id, timeout_ms, current
    )
    return error_of(verdict, header.api_version, fenced_from=4), producer_id, epoch


_NO_START = datetime.datetime.fromtimestamp(-0.001, datetime.UTC)  # -1 on the wire


def _describe(
    module: Any,
    transactional_id: str,
    txn: TransactionState | None,
    error: ErrorCode = ErrorCode.transactional_id_not_found,
) -> Any:
    """The answer for one id: ``error`` (and nothing else) if ``txn`` is ``None``."""
    if txn is None:
        return module.TransactionState(
            error_code=error,
            transactional_id=transactional_id,
            transaction_state="",
            transaction_timeout=ms(0),
            transaction_start_time=_NO_START,
            producer_id=-1,
            producer_epoch=-1,
            topics=(),
        )
    topics: dict[str, list[int]] = {}
    for part in txn.partitions:
        topics.setdefault(part.topic, []).append(part.partition)
    started = _NO_START
    if txn.age_ms >= 0:
        started = datetime.datetime.fromtimestamp(time.time() - txn.age_ms / 1000, datetime.UTC)
    return module.TransactionState(
        error_code=ErrorCode.none,
        transactional_id=transactional_id,
        transaction_state=txn.state.value,
        transaction_timeout=ms(txn.timeout_ms),
        transaction_start_time=started,
        producer_id=txn.producer_id,
        producer_epoch=txn.producer_epoch,
        topics=tuple(
            module.TopicData(topic=t, partitions=tuple(ps)) for t, ps in sorted(topics.items())
        ),
    )


async def handle_describe_transactions(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Each transactional id's state, producer, timeout, start and open partitions; with ACLs,
    DESCRIBE on the id is needed (TRANSACTIONAL_ID_AUTHORIZATION_FAILED)."""
    module = messages(ApiKey.DESCRIBE_TRANSACTIONS, header.api_version, True)
    store = broker.transactions.store
    states = []
    for transactional_id in request.transactional_ids:
        if not broker.access.allowed(
            header.session, AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, transactional_id
        ):
            error = ErrorCode.transactional_id_authorization_failed
            states.append(_describe(module, transactional_id, None, error))
            continue
        txn = await asyncio.to_thread(store.get, transactional_id)
        states.append(_describe(module, transactional_id, txn))
    return make(
        module.DescribeTransactionsResponse, throttle_time=0, transaction_states=tuple(states)
    )


async def handle_list_transactions(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Every transactional id, or those in the states and of the producers asked for; with
    ACLs, those the client may DESCRIBE."""
    module = messages(ApiKey.LIST_TRANSACTIONS, header.api_version, True)
    names = {state.value for state in State}
    wanted = set(request.state_filters) & names
    unknown = tuple(f for f in request.state_filters if f not in names)
    producers = set(request.producer_id_filters)
    found = [
        txn
        for txn in await asyncio.to_thread(broker.transactions.store.list)
        if (not request.state_filters or txn.state.value in wanted)
        and (not producers or txn.producer_id in producers)
        and broker.access.allowed(
            header.session,
            AclOperation.DESCRIBE,
            ResourceType.TRANSACTIONAL_ID,
            txn.transactional_id,
            audit=False,
        )
    ]
    return make(
        module.ListTransactionsResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        unknown_state_filters=unknown,
        transaction_states=tuple(
            module.TransactionState(
                transactional_id=txn.transactional_id,
                producer_id=txn.producer_id,
                transaction_state=txn.state.value,
            )
            for txn in found
        ),
    )


HANDLERS = {
    ApiKey.DESCRIBE_TRANSACTIONS: handle_describe_transactions,
    ApiKey.LIST_TRANSACTIONS: handle_list_transactions,
    ApiKey.ADD_PARTITIONS_TO_TXN: handle_add_partitions,
    ApiKey.ADD_OFFSETS_TO_TXN: handle_add_offsets,
    ApiKey.END_TXN: handle_end_txn,
    ApiKey.TXN_OFFSET_COMMIT: handle_txn_offset_commit,
}
"""API key -> handler."""
