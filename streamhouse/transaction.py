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
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from streamhouse.errors import LogError, UnknownPartitionError, UnknownTopicError
from streamhouse.kafka.transactions import TransactionCoordinator
from streamhouse.log.metadata.transactions import Verdict
from streamhouse.log.records.header import ATTR_TRANSACTIONAL, Compression

if TYPE_CHECKING:
    from streamhouse.connection import Produced, StreamHouse

__all__ = ["ProducerStamp", "Transaction", "TransactionError"]

DEFAULT_TIMEOUT_MS = 60_000


class TransactionError(LogError):
    """A transaction could not go on: fenced by a newer producer of its transactional id,
    aborted by its timeout, or already ended."""


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


class Transaction:
    """One transaction of a transactional id; a context manager (see module)."""

    def __init__(self, sh: StreamHouse, transactional_id: str | None, timeout_ms: int) -> None:
        self._sh = sh
        self.transactional_id = transactional_id or f"streamhouse-{uuid.uuid4().hex}"
        self._coordinator = TransactionCoordinator(sh.log, lambda _keys: None)
        verdict, producer_id, epoch = asyncio.run(
            self._coordinator.init_producer(self.transactional_id, timeout_ms)
        )
        self._check(verdict, "start")
        self._stamp = ProducerStamp(producer_id, epoch, ATTR_TRANSACTIONAL)
        self._partitions: set[tuple[str, int]] = set()
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
        new = sorted({(topic, p) for p, _, _ in payloads} - self._partitions)
        if new:
            verdict, missing = asyncio.run(
                self._coordinator.add_partitions(
                    self.transactional_id, self._stamp.producer_id, self._stamp.epoch, new
                )
            )
            if missing:
                self._stamp.sequences = before
                t, p = missing[0]
                raise (
                    UnknownTopicError(t)
                    if self._sh.log.get_topic(t) is None
                    else (UnknownPartitionError(t, p))
                )
            self._check(verdict, "add partitions to")
            self._partitions.update(new)
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
        if not self._partitions:  # nothing produced: nothing to decide
            return
        # EndTxn: on return its markers are written, the outcome is what readers see
        end = self._coordinator.end(
            self.transactional_id, self._stamp.producer_id, self._stamp.epoch, commit
        )
        self._check(asyncio.run(end), "commit" if commit else "abort")

    def _check(self, verdict: Verdict, what: str) -> None:
        if verdict is not Verdict.OK:
            raise TransactionError(
                f"could not {what} transaction {self.transactional_id!r}: {verdict.value}"
            )

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self.ended:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()
