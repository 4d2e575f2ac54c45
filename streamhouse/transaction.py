"""``sh.transaction()``: produce to several topics atomically, as a Kafka transactional
producer does; read_committed readers (Kafka consumers, SQL, ``consume``) see all of it or
none of it.

>>> import streamhouse, tempfile
>>> with streamhouse.connect(tempfile.mkdtemp()) as sh:
...     for name in ("orders", "audit"):
...         _ = sh.create_topic(name)
...     with sh.transaction() as txn:
...         _ = txn.produce("orders", [{"id": 1}])
...         _ = txn.produce("audit", ["order 1 placed"])
...     sh.fetch("audit")["value"].to_pylist()
[b'order 1 placed']

The transaction goes through the same coordinator and metadata store as a Kafka client's
(:mod:`streamhouse.kafka.transactions`): InitProducerId on entry (fencing an earlier
producer of the same transactional id and aborting what it left open), AddPartitionsToTxn
before a partition's first batch, transactional batches with the producer's sequences, and
EndTxn on exit: commit, or abort when the block raised. Each step runs to completion
(``asyncio.run``), so it is called from synchronous code.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from streamhouse.errors import FencedError, LogError, UnknownPartitionError, UnknownTopicError
from streamhouse.kafka.transactions import TransactionCoordinator
from streamhouse.log.metadata.transactions import TransactionState, Verdict
from streamhouse.log.records.header import ATTR_TRANSACTIONAL, Compression

if TYPE_CHECKING:
    from streamhouse.connection import Produced, StreamHouse
    from streamhouse.log import Log

__all__ = [
    "ProducerFencedError",
    "ProducerStamp",
    "Transaction",
    "TransactionError",
    "TransactionalProducer",
]

DEFAULT_TIMEOUT_MS = 60_000
BUSY_RETRIES = 10
BUSY_BACKOFF_S = 0.02
T = TypeVar("T")


class TransactionError(LogError):
    """A transaction could not go on: fenced by a newer producer of its transactional id,
    aborted by its timeout, or already ended."""


class ProducerFencedError(TransactionError, FencedError):
    """A newer producer of the transactional id (InitProducerId) fenced this one."""


class ProducerStamp:
    """The producer id, epoch and next sequence per partition that a producer's batches
    carry; ``flags`` are their attribute bits (transactional)."""

    def __init__(self, producer_id: int, epoch: int, flags: int = 0) -> None:
        self.producer_id = producer_id
        self.epoch = epoch
        self.flags = flags
        self.sequences: dict[tuple[str, int], int] = {}

    def batch_fields(self, topic: str, partition: int) -> dict[str, int]:
        """:func:`~streamhouse.log.records.build_batch` arguments of the next batch there."""
        return {
            "producer_id": self.producer_id,
            "producer_epoch": self.epoch,
            "base_sequence": self.sequences.get((topic, partition), 0),
            "flags": self.flags,
        }

    def sent(self, topic: str, partition: int, records: int) -> None:
        key = (topic, partition)
        self.sequences[key] = (self.sequences.get(key, 0) + records) % (1 << 31)


class TransactionalProducer:
    """The producer of one transactional id, through the coordinator and metadata store as a
    Kafka client's: :meth:`start` (InitProducerId) fences an earlier producer of the id and
    aborts what it left open; then one transaction after another, each begun by :meth:`add`
    (AddPartitionsToTxn before a partition's first batch) and ended by :meth:`end` (EndTxn).
    Each step runs to completion on an event loop of the producer's own (made once: a loop
    per step would make and join its thread pool each time), so it is called from
    synchronous code, one step at a time; :meth:`close` releases the loop.

    ``wake``: told the partitions whose last stable offset an ended transaction moved (by
    default the log's commit listeners, so waiting readers of this process look again)."""

    def __init__(
        self,
        log_: Log,
        transactional_id: str,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        wake: Callable[[Iterable[tuple[str, int]]], None] | None = None,
    ) -> None:
        self.transactional_id = transactional_id
        self.timeout_ms = timeout_ms
        self._coordinator = TransactionCoordinator(log_, wake or log_.announce)
        self.stamp = ProducerStamp(-1, -1, ATTR_TRANSACTIONAL)
        self.partitions: set[tuple[str, int]] = set()  # in the open transaction
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """InitProducerId: this producer holds the id at a new epoch, sequences afresh."""
        verdict, producer_id, epoch = self._run(
            lambda: self._coordinator.init_producer(self.transactional_id, self.timeout_ms)
        )
        self.check(verdict, "start")
        self.stamp = ProducerStamp(producer_id, epoch, ATTR_TRANSACTIONAL)
        self.partitions = set()

    def bump(self) -> None:
        """InitProducerId with this producer's id and epoch (KIP-360): the next epoch, unless
        a newer producer of the id fenced this one (``ProducerFencedError``, nothing changed)."""
        current = (self.stamp.producer_id, self.stamp.epoch)
        verdict, producer_id, epoch = self._run(
            lambda: self._coordinator.init_producer(self.transactional_id, self.timeout_ms, current)
        )
        self.check(verdict, "bump the epoch of")
        self.stamp = ProducerStamp(producer_id, epoch, ATTR_TRANSACTIONAL)
        self.partitions = set()

    def state(self) -> TransactionState | None:
        """The transactional id's producer and last transaction as stored."""
        return self._coordinator.store.get(self.transactional_id)

    def add(self, partitions: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Put the partitions not in the open transaction yet in it (starting it); the
        partitions that do not exist (then none was added)."""
        new = sorted(set(partitions) - self.partitions)
        if not new:
            return []
        verdict, missing = self._run(
            lambda: self._coordinator.add_partitions(
                self.transactional_id, self.stamp.producer_id, self.stamp.epoch, new
            )
        )
        if missing:
            return missing
        self.check(verdict, "add partitions to")
        self.partitions.update(new)
        return []

    def end(self, commit: bool) -> None:
        """Commit or abort the open transaction (nothing if it holds no partition); on return
        its markers are written, the outcome is what readers see."""
        if not self.partitions:
            return
        self.partitions = set()
        verdict = self.settle(self.stamp.producer_id, self.stamp.epoch, commit)
        self.check(verdict, "commit" if commit else "abort")

    def settle(self, producer_id: int, epoch: int, commit: bool) -> Verdict:
        """EndTxn for the transaction of ``producer_id`` at ``epoch`` (a commit of one already
        committed, or being committed, finishes it or is a no-op); its verdict."""
        return self._run(
            lambda: self._coordinator.end(self.transactional_id, producer_id, epoch, commit)
        )

    def close(self) -> None:
        """Release the producer's event loop (a later step makes another); a producer
        dropped without it releases its loop when collected."""
        if self._loop is not None:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()
            self._loop = None

    def _run(self, step: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a coordinator step; again while it answers ``BUSY`` (as a Kafka client retries
        CONCURRENT_TRANSACTIONS: another coordinator, a server's sweep, is finishing the
        transaction's markers), up to :data:`BUSY_RETRIES` times."""
        for attempt in range(BUSY_RETRIES):
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                weakref.finalize(self, self._loop.close)
            result = self._loop.run_until_complete(step())
            verdict = result[0] if isinstance(result, tuple) else result
            if verdict is not Verdict.BUSY:
                break
            time.sleep(BUSY_BACKOFF_S * (attempt + 1))
        return result

    def check(self, verdict: Verdict, what: str) -> None:
        if verdict is Verdict.FENCED:
            raise ProducerFencedError(
                f"could not {what} transaction {self.transactional_id!r}: a newer producer"
                " of the transactional id fenced this one"
            )
        if verdict is not Verdict.OK:
            raise TransactionError(
                f"could not {what} transaction {self.transactional_id!r}: {verdict.value}"
            )


class Transaction:
    """One transaction of a transactional id; a context manager (see module)."""

    def __init__(self, sh: StreamHouse, transactional_id: str | None, timeout_ms: int) -> None:
        self._sh = sh
        self.transactional_id = transactional_id or f"streamhouse-{uuid.uuid4().hex}"
        self._producer = TransactionalProducer(sh.log, self.transactional_id, timeout_ms)
        try:
            self._producer.start()
        except BaseException:
            self._producer.close()
            raise
        self._stamp = self._producer.stamp
        self.ended = False

    @property
    def producer_id(self) -> int:
        return self._stamp.producer_id

    def produce(
        self,
        topic: str,
        records: Iterable[Any],
        *,
        key: bytes | str | Sequence[bytes | str | None] | None = None,
        partition: int | None = None,
        timestamp: int | datetime | Sequence[int | datetime] | None = None,
        headers: Mapping[str, bytes | str | None] | Sequence[tuple[str, Any]] | None = None,
        compression: str | Compression = Compression.LZ4,
    ) -> Produced:
        """Append records in the transaction, as :meth:`StreamHouse.produce`; durable on
        return, visible to read_committed readers once the transaction commits."""
        if self.ended:
            raise TransactionError(f"transaction {self.transactional_id!r} has ended")
        before = dict(self._stamp.sequences)
        try:
            payloads = self._sh.batches(
                topic,
                records,
                key=key,
                partition=partition,
                timestamp=timestamp,
                headers=headers,  # type: ignore[arg-type]
                compression=compression,
                stamp=self._stamp,
            )
        except BaseException:
            self._stamp.sequences = before  # nothing was written
            raise
        missing = self._producer.add((topic, p) for p, _, _ in payloads)
        if missing:
            self._stamp.sequences = before
            t, p = missing[0]
            raise (
                UnknownTopicError(t)
                if self._sh.log.get_topic(t) is None
                else (UnknownPartitionError(t, p))
            )
        return self._sh.append_batches(topic, payloads)

    def commit(self) -> None:
        """Commit: every record produced in the transaction becomes visible at once."""
        self._end(commit=True)

    def abort(self) -> None:
        """Abort: read_committed readers never see the transaction's records."""
        self._end(commit=False)

    def _end(self, commit: bool) -> None:
        if self.ended:
            raise TransactionError(f"transaction {self.transactional_id!r} has ended")
        self.ended = True
        try:
            self._producer.end(commit)
        finally:
            self._producer.close()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.ended:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()
