"""Idempotent producers: InitProducerId, and the retries this agent answers by itself.

An idempotent producer stamps each batch with its producer id (allocated by the metadata
store, so unique across agents), epoch and the sequence number of the batch's first record;
sequences count records per partition from 0, wrapping after 2**31 - 1. The metadata store
checks them when it commits the batch (``rules.check_producer_batches``): it remembers the
last sequence and the last five batches of each producer on each partition, so a batch
retried through another agent after its first agent died is answered with the offset of its
first copy, never indexed twice, and a gap is ``OUT_OF_ORDER_SEQUENCE_NUMBER``.

This agent also remembers the last few batches it was handed of each producer (Kafka keeps
5, the most a producer may have in flight): a retry of one of those, committed or still on
its way, is answered with the same offset without being written again. Nothing else is
judged here: another agent may have taken batches of the producer since, so only the store
knows which sequence comes next.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.transactions import init_transactional_producer
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages
from streamhouse.log.metadata.rules import MAX_REMEMBERED_BATCHES, SEQUENCE_MODULO
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.log.records import BatchHeader

__all__ = ["HANDLERS", "ProducerRegistry"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    first_sequence: int
    last_sequence: int
    offset: asyncio.Future[int]


@dataclass(slots=True)
class _PartitionProducer:
    epoch: int
    batches: deque[_Batch] = field(default_factory=lambda: deque(maxlen=MAX_REMEMBERED_BATCHES))


def _last_sequence(header: BatchHeader) -> int:
    return (header.base_sequence + header.last_offset_delta) % SEQUENCE_MODULO


class ProducerRegistry:
    """The batches this agent was last handed, by (producer id, topic, partition)."""

    def __init__(self) -> None:
        self._state: dict[tuple[int, str, int], _PartitionProducer] = {}

    def duplicate_of(
        self, topic: str, partition: int, header: BatchHeader
    ) -> asyncio.Future[int] | None:
        """The offset of the remembered batch ``header`` repeats, or ``None``."""
        if header.producer_id < 0:
            return None
        state = self._state.get((header.producer_id, topic, partition))
        if state is None or header.producer_epoch != state.epoch:
            return None
        last = _last_sequence(header)
        for batch in state.batches:
            if batch.first_sequence == header.base_sequence and batch.last_sequence == last:
                return batch.offset
        return None

    def record(
        self, topic: str, partition: int, header: BatchHeader, offset: asyncio.Future[int]
    ) -> None:
        """Remember a batch that was handed to the log; forget the producer if it fails (or is
        refused by the store)."""
        if header.producer_id < 0:
            return
        key = (header.producer_id, topic, partition)
        state = self._state.get(key)
        if state is None or header.producer_epoch != state.epoch:
            state = self._state[key] = _PartitionProducer(header.producer_epoch)
        state.batches.append(_Batch(header.base_sequence, _last_sequence(header), offset))

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
    """A fresh producer id at epoch 0; with a transactional id, the transaction coordinator's
    answer (:func:`~streamhouse.kafka.transactions.init_transactional_producer`)."""
    module = messages(ApiKey.INIT_PRODUCER_ID, header.api_version, True)
    if request.transactional_id is not None:
        refused = broker.access.denied(
            header.session,
            AclOperation.WRITE,
            ResourceType.TRANSACTIONAL_ID,
            request.transactional_id,
        )
    elif not broker.access.may_write_idempotently(header.session):
        refused = ErrorCode.cluster_authorization_failed
    else:
        refused = None
    if refused is not None:
        return make(
            module.InitProducerIdResponse,
            throttle_time=0,
            error_code=refused,
            producer_id=-1,
            producer_epoch=-1,
        )
    if request.transactional_id is not None:
        error, producer_id, epoch = await init_transactional_producer(broker, header, request)
    else:
        error, producer_id, epoch = ErrorCode.none, broker.log.metadata.next_producer_id(), 0
    return make(
        module.InitProducerIdResponse,
        throttle_time=0,
        error_code=error,
        producer_id=producer_id,
        producer_epoch=epoch,
    )


HANDLERS = {ApiKey.INIT_PRODUCER_ID: handle_init_producer_id}
"""API key -> handler."""
