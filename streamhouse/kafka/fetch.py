"""Fetch: stored batches byte-for-byte, with long polling.

A fetch answers as soon as ``min_bytes`` are available across its partitions or ``max_wait``
has passed, whichever comes first; in between it sleeps until the log commits new data to one
of its partitions. Sizes follow Kafka: each partition returns at most ``partition_max_bytes``
and the response at most ``max_bytes``, except that the first non-empty partition always
returns at least one whole batch so that a batch bigger than the limits can be consumed.

Fetch sessions (KIP-227) are not kept: every answer has session id 0, which tells clients to
send full fetch requests.

From v12 the request and response are flexible; from v13 (KIP-516) topics are named by their
topic id in both, so a client holding the id of a topic that was deleted (and perhaps
re-created under the same name) gets UNKNOWN_TOPIC_ID for it, never the new topic's records:
it refreshes its metadata and sees the new topic as new.

With ``isolation_level=1`` (read_committed) a partition's answer stops before its last stable
offset (the first offset of its oldest open transaction, read after the records so that a
transaction starting meanwhile cannot slip in) and lists the aborted transactions that overlap
the records returned, so clients drop their batches. A read_uncommitted answer reports the
high watermark as the last stable offset and lists none: its path reads nothing more.

Requests are decoded by kio; the response, mostly record bytes, is written directly by
:func:`encode_fetch_response` (byte for byte what kio would write, ``test_kafka_codec``), so the
records are copied once, into the response frame.

A damaged run ends a partition's answer before it; a fetch from inside it gets CORRUPT_MESSAGE
(which librdkafka hands to the consumer and kafka-python raises). The object's key is logged at
ERROR once per process, not once per fetch. A failing object store (KAFKA_STORAGE_ERROR, which
clients retry) is logged at WARNING, at most once per ``STORAGE_WARNING_SECONDS``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamhouse.errors import (
    DamagedRangeError,
    OffsetOutOfRangeError,
    StorageError,
    StreamHouseError,
)
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import (
    ErrorCode,
    RequestHeader,
    error_code_for,
    parse_request,
    to_ms,
)
from streamhouse.log.records import read_header
from streamhouse.log.records.varints import encode_uvarint
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.kafka.listeners import Session

__all__ = ["RAW_HANDLERS", "encode_fetch_response", "handle_fetch", "handle_fetch_frame"]

log = logging.getLogger(__name__)


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_FRAME_HEAD = struct.Struct(">ii")  # frame length, correlation_id (response header v0)
_TOP_V7 = struct.Struct(">ihi")  # throttle_time, error_code, session_id
_PARTITION = struct.Struct(">ihqq")  # index, error_code, high_watermark, last_stable_offset
_I64 = struct.Struct(">q")
_NULL_ARRAY = _I32.pack(-1)  # aborted_transactions: none
_ABORTED = struct.Struct(">qq")  # producer_id, first_offset
_TAGS_NONE = b"\x00"  # an empty tagged-field section (flexible versions)
_FLEXIBLE = 12  # the first flexible Fetch version
_BY_TOPIC_ID = 13  # the first version naming topics by id (KIP-516)
READ_COMMITTED = 1

TopicKey = str | uuid.UUID
"""How a response names a topic: by name (v4-v12) or by topic id (v13+)."""


@dataclass(slots=True)
class PartitionRead:
    """What one partition answers."""

    partition: int
    error: ErrorCode
    records: bytes
    high_watermark: int
    log_start_offset: int
    failure: StreamHouseError | None = None  # why ``error`` is set, if the log raised it
    last_stable_offset: int = -1  # -1: the high watermark
    aborted: list[tuple[int, int]] | None = None  # (producer id, first offset), read_committed


def encode_fetch_response(
    correlation_id: int, api_version: int, reads: list[tuple[TopicKey, list[PartitionRead]]]
) -> bytes:
    """The whole response frame (v4-v13, length prefix included); topics are keyed by name,
    or by topic id from v13."""
    if api_version >= _FLEXIBLE:
        return _encode_flexible(correlation_id, api_version, reads)
    if api_version >= 7:
        parts = [b"", _TOP_V7.pack(0, 0, 0)]
    else:
        parts = [b"", _I32.pack(0)]
    parts.append(_I32.pack(len(reads)))
    for name, partitions in reads:
        encoded = str(name).encode()
        parts.append(_I16.pack(len(encoded)))
        parts.append(encoded)
        parts.append(_I32.pack(len(partitions)))
        for r in partitions:
            stable = r.high_watermark if r.last_stable_offset < 0 else r.last_stable_offset
            parts.append(_PARTITION.pack(r.partition, r.error, r.high_watermark, stable))
            if api_version >= 5:
                parts.append(_I64.pack(r.log_start_offset))
            if r.aborted is None:
                parts.append(_NULL_ARRAY)
            else:
                parts.append(_I32.pack(len(r.aborted)))
                parts.extend(_ABORTED.pack(pid, first) for pid, first in r.aborted)
            if api_version >= 11:
                parts.append(_I32.pack(-1))  # preferred_read_replica
            parts.append(_I32.pack(len(r.records)))
            parts.append(r.records)
    size = sum(len(part) for part in parts)
    parts[0] = _FRAME_HEAD.pack(size + 4, correlation_id)
    return b"".join(parts)


def _encode_flexible(
    correlation_id: int, api_version: int, reads: list[tuple[TopicKey, list[PartitionRead]]]
) -> bytes:
    """v12+: compact arrays and strings, tagged-field sections (all empty), response header
    v1; from v13 a topic is its 16-byte id."""
    parts = [b"", _TOP_V7.pack(0, 0, 0), encode_uvarint(len(reads) + 1)]
    for key, partitions in reads:
        if api_version >= _BY_TOPIC_ID:
            parts.append(key.bytes if isinstance(key, uuid.UUID) else uuid.UUID(int=0).bytes)
        else:
            encoded = str(key).encode()
            parts.append(encode_uvarint(len(encoded) + 1))
            parts.append(encoded)
        parts.append(encode_uvarint(len(partitions) + 1))
        for r in partitions:
            stable = r.high_watermark if r.last_stable_offset < 0 else r.last_stable_offset
            parts.append(_PARTITION.pack(r.partition, r.error, r.high_watermark, stable))
            parts.append(_I64.pack(r.log_start_offset))
            if r.aborted is None:
                parts.append(b"\x00")  # null compact array
            else:
                parts.append(encode_uvarint(len(r.aborted) + 1))
                for pid, first in r.aborted:
                    parts.append(_ABORTED.pack(pid, first))
                    parts.append(_TAGS_NONE)
            parts.append(_I32.pack(-1))  # preferred_read_replica
            parts.append(encode_uvarint(len(r.records) + 1))
            parts.append(r.records)
            parts.append(_TAGS_NONE)
        parts.append(_TAGS_NONE)
    parts.append(_TAGS_NONE)
    size = sum(len(part) for part in parts)
    parts[0] = _FRAME_HEAD.pack(size + 5, correlation_id) + _TAGS_NONE  # header v1
    return b"".join(parts)


WIDE_TOPIC_PARTITIONS = 8
"""A fetch of more partitions of one topic than this loads what the metadata cache lacks of
them at once (:func:`_warm`) and, read_committed, reads their transactions in one statement
(:func:`_committed_topic`), rather than a partition at a time."""


@dataclass(slots=True)
class _Topic:
    """A requested topic: its name (None: an unknown topic id) and how the answer keys it."""

    name: str | None
    key: TopicKey
    partitions: Any


def _requested(broker: Broker, api_version: int, request: Any) -> list[_Topic]:
    """The request's topics, by name; from v13 their ids resolved to the current topics'."""
    if api_version < _BY_TOPIC_ID:
        return [_Topic(t.topic, t.topic, t.partitions) for t in request.topics]
    names = {uuid.UUID(t.topic_id): t.name for t in broker.log.list_topics()}
    return [_Topic(names.get(t.topic_id), t.topic_id, t.partitions) for t in request.topics]


def _read(
    broker: Broker, request: Any, topics: list[_Topic], denied: frozenset[str] = frozenset()
) -> tuple[list[tuple[TopicKey, list[PartitionRead]]], int]:
    """Read every requested partition once (runs in a worker thread); those of ``denied``
    topics are answered TOPIC_AUTHORIZATION_FAILED, those of unknown topic ids
    UNKNOWN_TOPIC_ID."""
    remaining = max(request.max_bytes, 0)
    total = 0
    out: list[tuple[TopicKey, list[PartitionRead]]] = []
    committed = request.isolation_level == READ_COMMITTED
    for topic in topics:
        reads = []
        name = topic.name
        readable = name is not None and name not in denied
        wide = readable and len(topic.partitions) > WIDE_TOPIC_PARTITIONS
        held: dict[int, int] = {}
        if wide:
            _warm(broker, name, topic.partitions)
            if committed:
                held = _held_back(broker, name)
        for p in topic.partitions:
            if not readable:
                error = (
                    ErrorCode.unknown_topic_id
                    if name is None
                    else ErrorCode.topic_authorization_failed
                )
                reads.append(PartitionRead(p.partition, error, b"", -1, -1))
                continue
            reads.append(_read_partition(broker, name, p, remaining, total, held.get(p.partition)))
            if committed and not wide and reads[-1].error is ErrorCode.none:
                reads[-1] = _committed(broker, name, p.fetch_offset, reads[-1])
            size = len(reads[-1].records)
            total += size
            remaining -= size
        if committed and wide:
            total -= _committed_topic(broker, name, topic.partitions, reads)
        out.append((topic.key, reads))
    return out, total


def _warm(broker: Broker, topic: str, requested: Any) -> None:
    """Load what the metadata cache lacks for these partitions at once (after its periodic
    refresh, a fetch of 10,000 partitions would otherwise read each one's offsets and index
    rows in statements of its own)."""
    try:
        broker.log.metadata.warm(topic, {p.partition: p.fetch_offset for p in requested})
    except StreamHouseError as exc:  # each partition's read reports it
        log.debug("fetch %s: %s", topic, exc)


def _held_back(broker: Broker, topic: str) -> dict[int, int]:
    """The first offset of each partition's oldest open transaction, read before a wide
    read_committed fetch reads its records: what that holds back then must not count against
    the fetch's byte limit, or records held back in the first partition would crowd out every
    other's, fetch after fetch (:func:`_committed_topic` cuts after the records only). An
    error here is the later statement's to report."""
    try:
        return broker.log.metadata.transactions.open_from(topic)
    except StreamHouseError as exc:
        log.debug("fetch %s: %s", topic, exc)
        return {}


def _read_partition(
    broker: Broker,
    topic: str,
    p: Any,
    remaining: int,
    total: int,
    held_from: int | None = None,
) -> PartitionRead:
    """One partition's records within the limits; those from ``held_from`` on (an open
    transaction's) left out before the limits are applied."""
    limit = max(min(p.partition_max_bytes, remaining), 1)
    try:
        result = broker.log.fetch(topic, p.partition, p.fetch_offset, limit)
    except OffsetOutOfRangeError:
        try:
            offsets = broker.log.offsets(topic, p.partition)
            hw, start = offsets.high_watermark, offsets.log_start_offset
        except StreamHouseError:
            hw, start = -1, -1
        return PartitionRead(p.partition, ErrorCode.offset_out_of_range, b"", hw, start)
    except StreamHouseError as exc:
        log.debug("fetch %s/%d: %s", topic, p.partition, exc)
        return PartitionRead(p.partition, error_code_for(exc), b"", -1, -1, exc)
    records = result.records
    if held_from is not None and held_from < result.high_watermark:
        records = records[: _end_before(records, held_from)]
    if total and len(records) > remaining:
        records = b""  # only the first non-empty partition may exceed the limits
    return PartitionRead(
        p.partition, ErrorCode.none, records, result.high_watermark, result.log_start_offset
    )


def _committed(broker: Broker, topic: str, fetch_offset: int, read: PartitionRead) -> PartitionRead:
    """``read`` cut at the partition's last stable offset, with the aborted transactions
    among its records (read after the records: see module); one store statement."""
    transactions = broker.log.metadata.transactions
    hw = read.high_watermark
    try:
        open_from, aborted = transactions.stability(topic, read.partition, fetch_offset, hw)
    except StreamHouseError as exc:
        log.debug("fetch %s/%d: %s", topic, read.partition, exc)
        return PartitionRead(read.partition, error_code_for(exc), b"", -1, -1, exc)
    return _stable(read, open_from, aborted)


def _committed_topic(broker: Broker, topic: str, requested: Any, reads: list[PartitionRead]) -> int:
    """:func:`_committed` for every partition read of a topic at once: one store statement
    for all (read after all their records), instead of one per partition. Returns how many
    bytes the cuts removed."""
    ok = [(p.fetch_offset, i) for i, p in enumerate(requested) if reads[i].error is ErrorCode.none]
    if not ok:
        return 0
    try:
        stability = broker.log.metadata.transactions.topic_stability(topic, min(ok)[0])
    except StreamHouseError as exc:
        log.debug("fetch %s: %s", topic, exc)
        for _, i in ok:
            reads[i] = PartitionRead(reads[i].partition, error_code_for(exc), b"", -1, -1, exc)
        return 0
    removed = 0
    for fetch_offset, i in ok:
        read = reads[i]
        hw, size = read.high_watermark, len(read.records)
        aborted = [
            (producer, first)
            for producer, first, last in stability.aborted.get(read.partition, ())
            if last >= fetch_offset and first < hw
        ]
        reads[i] = _stable(read, stability.open_from.get(read.partition), aborted)
        removed += size - len(reads[i].records)
    return removed


def _stable(
    read: PartitionRead, open_from: int | None, aborted: list[tuple[int, int]]
) -> PartitionRead:
    """``read`` cut before the partition's oldest open transaction (``open_from``), with the
    ``aborted`` transactions its records overlap."""
    hw = read.high_watermark
    stable = hw if open_from is None else min(open_from, hw)
    if stable < hw:
        read.records = read.records[: _end_before(read.records, stable)]
    read.last_stable_offset = stable
    read.aborted = [a for a in aborted if a[1] < stable] if read.records else []
    return read


def _end_before(records: bytes, offset: int) -> int:
    """The length of the batches of ``records`` that start before ``offset``."""
    view = memoryview(records)
    pos = 0
    while pos < len(records):
        header = read_header(view, pos)
        if header.base_offset >= offset:
            break
        pos += header.size
    return pos


async def handle_fetch(broker: Broker, header: RequestHeader, request: Any) -> bytes:
    """Read, and if fewer than ``min_bytes`` came back, wait for commits up to ``max_wait``.

    Returns the response frame.
    """
    deadline = time.monotonic() + max(to_ms(request.max_wait), 0) / 1000
    topics = _requested(broker, header.api_version, request)
    keys = {(t.name, p.partition) for t in topics if t.name is not None for p in t.partitions}
    access = broker.access
    denied = frozenset(
        t.name
        for t in topics
        if t.name is not None
        and not access.allowed(header.session, AclOperation.READ, ResourceType.TOPIC, t.name)
    )
    while True:
        wakeup = broker.data_arrival(keys)
        try:
            reads, total = await asyncio.to_thread(_read, broker, request, topics, denied)
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
    _report_failures(broker, reads)
    return encode_fetch_response(header.correlation_id, header.api_version, reads)


STORAGE_WARNING_SECONDS = 10.0


def _report_failures(broker: Broker, reads: list[tuple[TopicKey, list[PartitionRead]]]) -> None:
    """Log each damaged object the first time a fetch meets it, and a failing object store now
    and then (on the event loop thread)."""
    for topic, partitions in reads:
        for r in partitions:
            exc = r.failure
            if isinstance(exc, DamagedRangeError) and exc.key not in broker.damaged_objects:
                broker.damaged_objects.add(exc.key)
                log.error("%s; fetches there get CORRUPT_MESSAGE", exc)
            elif isinstance(exc, StorageError):
                now = time.monotonic()
                if now >= broker.storage_warning_at:
                    broker.storage_warning_at = now + STORAGE_WARNING_SECONDS
                    log.warning("fetch %s/%d: %s (clients retry)", topic, r.partition, exc)


def handle_fetch_frame(
    broker: Broker, frame: bytes, client_host: str, session: Session | None = None
) -> asyncio.Future[bytes]:
    """Decode a Fetch request with kio and answer it from a task."""
    header, request = parse_request(frame, client_host, session)
    return asyncio.ensure_future(handle_fetch(broker, header, request))


RAW_HANDLERS = {ApiKey.FETCH: handle_fetch_frame}
"""API key -> handler of whole frames."""
