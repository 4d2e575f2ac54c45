"""Produce: hand client record batches to the log byte-for-byte, answer once durable.

Every partition of a request is validated and handed to the log before the handler first
awaits, so batches of pipelined requests on one connection reach the log in request order.
With ``acks=0`` nothing is answered; with ``acks=1`` or ``acks=-1`` (all) the answer waits
until the segment object holding the batch is durable and indexed — there are no replicas,
so both mean the same.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from streamhouse.errors import StreamHouseError
from streamhouse.kafka.wire import ErrorCode, RequestHeader, error_code_for, make, messages
from streamhouse.log.records import split_batches

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["HANDLERS", "handle_produce"]

log = logging.getLogger(__name__)

_ATTR_TRANSACTIONAL_OR_CONTROL = 0x30


def _start_append(
    broker: Broker, topic: str, partition: int, records: bytes | None
) -> ErrorCode | asyncio.Future[int]:
    """Validate one partition's batches and hand them to the log, without awaiting."""
    if not records:
        return ErrorCode.corrupt_message
    try:
        batches = split_batches(records)
    except StreamHouseError as exc:
        return error_code_for(exc)
    headers = [h for _, _, h in batches]
    if any(h.attributes & _ATTR_TRANSACTIONAL_OR_CONTROL for h in headers):
        return ErrorCode.invalid_record
    idempotent = headers[0].producer_id >= 0
    if idempotent:
        if len(headers) != 1:
            return ErrorCode.invalid_record  # Kafka: exactly one batch per partition from v3
        verdict = broker.producers.check(topic, partition, headers[0])
        if verdict.error is not ErrorCode.none:
            return verdict.error
        if verdict.duplicate_of is not None:
            return verdict.duplicate_of
    try:
        pending = broker.log.append(topic, partition, records)
    except StreamHouseError as exc:
        log.debug("produce to %s/%d refused: %s", topic, partition, exc)
        return error_code_for(exc)
    offset = asyncio.wrap_future(pending)
    if idempotent:
        broker.producers.record(topic, partition, headers[0], offset)
    return offset


async def _outcome(started: ErrorCode | asyncio.Future[int]) -> tuple[ErrorCode, int]:
    if isinstance(started, ErrorCode):
        return started, -1
    try:
        return ErrorCode.none, await asyncio.shield(started)
    except StreamHouseError as exc:
        log.warning("append failed: %s", exc)
        return error_code_for(exc), -1


def _swallow(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("acks=0 append failed: %s", future.exception())


async def handle_produce(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Append each partition's batches; answer with base offsets (or nothing for acks=0)."""
    module = messages(0, header.api_version, True)
    acks = request.acks
    started: list[tuple[str, list[tuple[int, ErrorCode | asyncio.Future[int]]]]] = []
    for topic in request.topic_data:
        parts: list[tuple[int, ErrorCode | asyncio.Future[int]]] = []
        for p in topic.partition_data:
            if acks not in (0, 1, -1):
                parts.append((p.index, ErrorCode.invalid_required_acks))
            elif request.transactional_id is not None:
                parts.append((p.index, ErrorCode.transactional_id_authorization_failed))
            else:
                parts.append((p.index, _start_append(broker, topic.name, p.index, p.records)))
        started.append((topic.name, parts))
    if acks == 0:
        for _, parts in started:
            for _, outcome in parts:
                if isinstance(outcome, asyncio.Future):
                    outcome.add_done_callback(_swallow)
        return None
    responses = []
    for name, parts in started:
        rows = []
        for index, begun in parts:
            error, offset = await _outcome(begun)
            rows.append(
                make(
                    module.PartitionProduceResponse,
                    index=index,
                    error_code=error,
                    base_offset=offset,
                    log_append_time=None,
                    log_start_offset=-1,
                    record_errors=(),
                    error_message=None,
                )
            )
        responses.append(module.TopicProduceResponse(name=name, partition_responses=tuple(rows)))
    return make(module.ProduceResponse, responses=tuple(responses), throttle_time=0)


HANDLERS = {0: handle_produce}
"""API key -> handler."""
