"""ListOffsets: the earliest offset, the latest (high watermark; the last stable offset for
isolation level 1, read_committed), or the first at a timestamp.

Timestamp -2 asks for the log start offset, -1 for the high watermark, anything else for the
first record whose timestamp is at or after it (offset -1 and timestamp -1 when there is none,
as Kafka answers).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from streamhouse.errors import StreamHouseError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import ErrorCode, RequestHeader, error_code_for, make, messages
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["EARLIEST", "HANDLERS", "LATEST", "handle_list_offsets"]

READ_COMMITTED = 1
LATEST = -1
EARLIEST = -2


def _lookup(
    broker: Broker, topic: str, partition: int, timestamp: int, committed: bool
) -> tuple[ErrorCode, int, int]:
    """``(error, offset, timestamp)`` of one partition; ``committed``: latest is the last
    stable offset (read_committed)."""
    try:
        if timestamp == LATEST:
            latest = broker.log.offsets(topic, partition).high_watermark
            if committed:
                open_from = broker.log.metadata.transactions.last_stable_offset(topic, partition)
                latest = latest if open_from is None else min(latest, open_from)
            return ErrorCode.none, latest, -1
        if timestamp == EARLIEST:
            return ErrorCode.none, broker.log.offsets(topic, partition).log_start_offset, -1
        if timestamp < 0:
            return ErrorCode.unsupported_version, -1, -1
        found = broker.log.offset_for_timestamp(topic, partition, timestamp)
    except StreamHouseError as exc:
        return error_code_for(exc), -1, -1
    if found is None:
        return ErrorCode.none, -1, -1
    offset, stamp = found
    return ErrorCode.none, offset, stamp


def _answer(broker: Broker, module: Any, request: Any, denied: frozenset[str]) -> Any:
    topics = []
    committed = getattr(request, "isolation_level", 0) == READ_COMMITTED
    for topic in request.topics:
        rows = []
        for p in topic.partitions:
            if topic.name in denied:
                error, offset, stamp = ErrorCode.topic_authorization_failed, -1, -1
            else:
                error, offset, stamp = _lookup(
                    broker, topic.name, p.partition_index, p.timestamp, committed
                )
            rows.append(
                make(
                    module.ListOffsetsPartitionResponse,
                    partition_index=p.partition_index,
                    error_code=error,
                    timestamp=stamp,
                    offset=offset,
                    leader_epoch=-1,
                )
            )
        topics.append(module.ListOffsetsTopicResponse(name=topic.name, partitions=tuple(rows)))
    return make(module.ListOffsetsResponse, throttle_time=0, topics=tuple(topics))


async def handle_list_offsets(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Earliest and latest come from the catalog at once; a lookup by timestamp may read a
    segment, so a request holding one is answered from a worker thread."""
    module = messages(ApiKey.LIST_OFFSETS, header.api_version, True)
    access = broker.access
    denied = frozenset(
        t.name
        for t in request.topics
        if not access.allowed(header.session, AclOperation.DESCRIBE, ResourceType.TOPIC, t.name)
    )
    if any(p.timestamp == LATEST for t in request.topics for p in t.partitions):
        await broker.transactions.appended()  # what was acknowledged is in the high watermark
    if all(p.timestamp < 0 for t in request.topics for p in t.partitions):
        return _answer(broker, module, request, denied)
    return await asyncio.to_thread(_answer, broker, module, request, denied)


HANDLERS = {ApiKey.LIST_OFFSETS: handle_list_offsets}
"""API key -> handler."""
