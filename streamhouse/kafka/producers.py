"""Idempotent producers: InitProducerId and per-partition sequence checks.

An idempotent producer stamps each batch with its producer id, epoch and the sequence number
of the batch's first record; sequences count records per partition from 0, wrapping after
2**31 - 1. For each (producer, partition) this broker remembers the last sequence accepted
and the last few batches (Kafka keeps 5, the most a producer may have in flight), so:

- a batch whose sequences match a remembered one is a retry: answered with the offset the
  original got, not appended again;
- a batch that starts right after the last accepted sequence is appended;
- anything else is ``OUT_OF_ORDER_SEQUENCE_NUMBER``; an older epoch is ``INVALID_PRODUCER_EPOCH``.

The state is in memory. After a restart, a producer's first batch on a partition is accepted
whatever its sequence (Kafka would ask it to reset), and checks resume from there.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.log.records import BatchHeader

__all__ = ["HANDLERS", "ProducerRegistry", "SequenceCheck"]

log = logging.getLogger(__name__)

MAX_REMEMBERED_BATCHES = 5
_SEQUENCE_MODULO = 2**31


@dataclass(slots=True)
class _Batch:
    first_sequence: int
    last_sequence: int
    offset: asyncio.Future[int]


@dataclass(slots=True)
class _PartitionProducer:
    epoch: int
    last_sequence: int
    batches: deque[_Batch] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_BATCHES))


@dataclass(frozen=True, slots=True)
class SequenceCheck:
    """The verdict on one batch: append it, answer with a remembered offset, or refuse it."""

    error: ErrorCode = ErrorCode.none
    duplicate_of: asyncio.Future[int] | None = None


def _last_sequence(header: BatchHeader) -> int:
    return (header.base_sequence + header.record_count - 1) % _SEQUENCE_MODULO


class ProducerRegistry:
    """Sequence state of every idempotent producer, by (producer id, topic, partition)."""

    def __init__(self) -> None:
        self._state: dict[tuple[int, str, int], _PartitionProducer] = {}

    def check(self, topic: str, partition: int, header: BatchHeader) -> SequenceCheck:
        """Judge a batch before it is appended; batches without a producer id always pass."""
        if header.producer_id < 0:
            return SequenceCheck()
        state = self._state.get((header.producer_id, topic, partition))
        if state is None or header.producer_epoch > state.epoch:
            return SequenceCheck()
        if header.producer_epoch < state.epoch:
            return SequenceCheck(ErrorCode.invalid_producer_epoch)
        last = _last_sequence(header)
        for batch in state.batches:
            if batch.first_sequence == header.base_sequence and batch.last_sequence == last:
                return SequenceCheck(duplicate_of=batch.offset)
        if header.base_sequence != (state.last_sequence + 1) % _SEQUENCE_MODULO:
            log.info(
                "producer %d on %s/%d: sequence %d, expected %d",
                header.producer_id,
                topic,
                partition,
                header.base_sequence,
                state.last_sequence + 1,
            )
            return SequenceCheck(ErrorCode.out_of_order_sequence_number)
        return SequenceCheck()

    def record(
        self, topic: str, partition: int, header: BatchHeader, offset: asyncio.Future[int]
    ) -> None:
        """Remember a batch that was handed to the log; forget the producer if it fails."""
        if header.producer_id < 0:
            return
        key = (header.producer_id, topic, partition)
        state = self._state.get(key)
        if state is None or header.producer_epoch != state.epoch:
            state = self._state[key] = _PartitionProducer(header.producer_epoch, -1)
        last = _last_sequence(header)
        state.last_sequence = last
        state.batches.append(_Batch(header.base_sequence, last, offset))

        def forget_on_failure(done: asyncio.Future[int]) -> None:
            failed = done.cancelled() or done.exception() is not None
            if failed and self._state.get(key) is state:
                del self._state[key]

        offset.add_done_callback(forget_on_failure)

    def forget_topic(self, topic: str) -> None:
        """Drop the state of a deleted topic."""
        for key in [k for k in self._state if k[1] == topic]:
            del self._state[key]


async def handle_init_producer_id(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """A fresh producer id at epoch 0; transactions are not supported."""
    module = messages(ApiKey.INIT_PRODUCER_ID, header.api_version, True)
    if request.transactional_id is not None:
        return make(
            module.InitProducerIdResponse,
            throttle_time=0,
            error_code=ErrorCode.transactional_id_authorization_failed,
            producer_id=-1,
            producer_epoch=-1,
        )
    producer_id = broker.log.metadata.next_producer_id()
    return make(
        module.InitProducerIdResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        producer_id=producer_id,
        producer_epoch=0,
    )


HANDLERS = {ApiKey.INIT_PRODUCER_ID: handle_init_producer_id}
"""API key -> handler."""
