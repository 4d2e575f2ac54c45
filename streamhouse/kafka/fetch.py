"""Fetch: stored batches byte-for-byte, with long polling.

A fetch answers as soon as ``min_bytes`` are available across its partitions or ``max_wait``
has passed, whichever comes first; in between it sleeps until the log commits new data to one
of its partitions. Sizes follow Kafka: each partition returns at most ``partition_max_bytes``
and the response at most ``max_bytes``, except that the first non-empty partition always
returns at least one whole batch so that a batch bigger than the limits can be consumed.

Fetch sessions (KIP-227) are not kept: every answer has session id 0, which tells clients to
send full fetch requests. There are no transactions, so the last stable offset is the high
watermark and no aborted transactions are listed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamhouse.errors import OffsetOutOfRangeError, StreamHouseError
from streamhouse.kafka.wire import ErrorCode, RequestHeader, error_code_for, make, messages, to_ms

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["HANDLERS", "handle_fetch"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _PartitionRead:
    partition: int
    error: ErrorCode
    records: bytes
    high_watermark: int
    log_start_offset: int


def _read(broker: Broker, request: Any) -> tuple[list[tuple[str, list[_PartitionRead]]], int]:
    """Read every requested partition once (runs in a worker thread)."""
    remaining = max(request.max_bytes, 0)
    total = 0
    out: list[tuple[str, list[_PartitionRead]]] = []
    for topic in request.topics:
        reads = []
        for p in topic.partitions:
            reads.append(_read_partition(broker, topic.topic, p, remaining, total))
            size = len(reads[-1].records)
            total += size
            remaining -= size
        out.append((topic.topic, reads))
    return out, total


def _read_partition(
    broker: Broker, topic: str, p: Any, remaining: int, total: int
) -> _PartitionRead:
    limit = max(min(p.partition_max_bytes, remaining), 1)
    try:
        result = broker.log.fetch(topic, p.partition, p.fetch_offset, limit)
    except OffsetOutOfRangeError:
        try:
            offsets = broker.log.offsets(topic, p.partition)
            hw, start = offsets.high_watermark, offsets.log_start_offset
        except StreamHouseError:
            hw, start = -1, -1
        return _PartitionRead(p.partition, ErrorCode.offset_out_of_range, b"", hw, start)
    except StreamHouseError as exc:
        log.debug("fetch %s/%d: %s", topic, p.partition, exc)
        return _PartitionRead(p.partition, error_code_for(exc), b"", -1, -1)
    records = result.records
    if total and len(records) > remaining:
        records = b""  # only the first non-empty partition may exceed the limits
    return _PartitionRead(
        p.partition, ErrorCode.none, records, result.high_watermark, result.log_start_offset
    )


async def handle_fetch(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Read, and if fewer than ``min_bytes`` came back, wait for commits up to ``max_wait``."""
    module = messages(1, header.api_version, True)
    deadline = time.monotonic() + max(to_ms(request.max_wait), 0) / 1000
    keys = {(t.topic, p.partition) for t in request.topics for p in t.partitions}
    while True:
        wakeup = broker.data_arrival(keys)
        try:
            reads, total = await asyncio.to_thread(_read, broker, request)
            left = deadline - time.monotonic()
            errors = any(r.error is not ErrorCode.none for _, rs in reads for r in rs)
            if total >= request.min_bytes or errors or left <= 0 or not keys:
                break
            try:
                await asyncio.wait_for(wakeup, left)
            except TimeoutError:
                break  # nothing was committed to these partitions since the read
        finally:
            broker.cancel_arrival(keys, wakeup)
    return make(
        module.FetchResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(
            module.FetchableTopicResponse(
                topic=name,
                partitions=tuple(
                    make(
                        module.PartitionData,
                        partition_index=r.partition,
                        error_code=r.error,
                        high_watermark=r.high_watermark,
                        last_stable_offset=r.high_watermark,
                        log_start_offset=r.log_start_offset,
                        aborted_transactions=None,
                        preferred_read_replica=-1,
                        records=r.records,
                    )
                    for r in rs
                ),
            )
            for name, rs in reads
        ),
    )


HANDLERS = {1: handle_fetch}
"""API key -> handler."""
