"""Produce: hand client record batches to the log byte-for-byte, answer once durable.

Produce is the hot request, so it skips kio: :func:`parse_produce` reads the request frame
(v3-v8, none of them flexible) with ``struct``, the records of each partition stay views of
the frame until the flush copies them into a segment object, and :func:`encode_produce_response`
writes the response frame directly. Both agree byte for byte with kio (``test_kafka_codec``).

Every partition of a request is validated and handed to the log before anything waits, so
batches of pipelined requests on one connection reach the log in request order. With
``acks=0`` nothing is answered; with ``acks=1`` or ``acks=-1`` (all) the answer waits until the
segment object holding the batch is durable and indexed — there are no replicas, so both mean
the same — except for a transactional batch whose transaction the coordinator of this agent
saw begin (:meth:`~streamhouse.kafka.transactions.TransactionCoordinator.early_answers`): it
is answered at once with the base offset the log reserved for it, and EndTxn makes it durable
before committing (the commit refuses it, and so the transaction, if it would land elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from streamhouse.errors import ProducerSequenceError, ProtocolError, StreamHouseError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import ErrorCode, error_code_for
from streamhouse.log.records import split_batches
from streamhouse.log.records.header import ATTR_CONTROL, ATTR_TRANSACTIONAL
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.kafka.listeners import Session

__all__ = [
    "RAW_HANDLERS",
    "ProduceRequest",
    "encode_produce_response",
    "handle_produce_frame",
    "parse_produce",
]

log = logging.getLogger(__name__)

_ATTR_TRANSACTIONAL_OR_CONTROL = ATTR_TRANSACTIONAL | ATTR_CONTROL

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_PREFIX = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length
_ACKS_TIMEOUT_COUNT = struct.Struct(">hii")  # acks, timeout_ms, topic_data count
_FRAME_HEAD = struct.Struct(">ii")  # frame length, correlation_id (response header v0)
_PARTITION = struct.Struct(">ihqq")  # index, error_code, base_offset, log_append_time
_NO_LOG_START = struct.pack(">q", -1)  # log_start_offset (v5+)
_NO_RECORD_ERRORS = struct.pack(">ih", 0, -1)  # record_errors [], error_message null (v8+)
_NO_THROTTLE = struct.pack(">i", 0)


@dataclass(frozen=True, slots=True)
class Early:
    """The answer of a transactional batch before it is durable: the base offset reserved for
    it (:meth:`~streamhouse.log.Log.append_early`), which its commit checks."""

    base_offset: int


Outcome = ErrorCode | Early | asyncio.Future[int]
"""A partition's answer: an error known at once, an early answer, or the base offset once
durable."""


class ProduceRequest(NamedTuple):
    """The fields of a Produce request (v3-v8) the broker acts on."""

    api_version: int
    correlation_id: int
    transactional_id: str | None
    acks: int
    topics: list[tuple[str, list[tuple[int, memoryview | None]]]]
    """(topic, [(partition, records or None)]); records are views of the frame."""


def _string(frame: bytes, pos: int, what: str, nullable: bool) -> tuple[str | None, int]:
    (length,) = _I16.unpack_from(frame, pos)
    pos += 2
    if length < 0:
        if length == -1 and nullable:
            return None, pos
        raise ProtocolError(f"produce request: {what} has length {length}")
    end = pos + length
    if end > len(frame):
        raise ProtocolError(f"produce request: {what} runs past the frame")
    try:
        return frame[pos:end].decode(), end
    except UnicodeDecodeError:
        raise ProtocolError(f"produce request: {what} is not UTF-8") from None


def parse_produce(frame: bytes) -> ProduceRequest:
    """Decode a Produce request frame (v3-v8, without the length prefix).

    ProtocolError for anything malformed: truncated, bad lengths, bad UTF-8, null arrays.
    One pass of ``struct`` reads and a list per topic: it runs once per partition a
    transactional producer writes to (librdkafka sends a request per partition).
    """
    size = len(frame)
    try:
        _, version, correlation_id, client_id_length = _PREFIX.unpack_from(frame, 0)
        pos = _PREFIX.size + max(client_id_length, 0)
        if client_id_length < -1 or pos > size:
            raise ProtocolError("produce request: bad client_id")
        transactional_id, pos = _string(frame, pos, "transactional_id", True)
        acks, _, topic_count = _ACKS_TIMEOUT_COUNT.unpack_from(frame, pos)
        pos += _ACKS_TIMEOUT_COUNT.size
        if topic_count < 0:
            raise ProtocolError("produce request: topic_data is null")
        view = memoryview(frame)
        topics: list[tuple[str, list[tuple[int, memoryview | None]]]] = []
        for _ in range(topic_count):
            name, pos = _string(frame, pos, "topic name", False)
            (partition_count,) = _I32.unpack_from(frame, pos)
            pos += 4
            if partition_count < 0:
                raise ProtocolError("produce request: partition_data is null")
            partitions: list[tuple[int, memoryview | None]] = []
            for _ in range(partition_count):
                index, length = _FRAME_HEAD.unpack_from(frame, pos)
                pos += 8
                if length < 0:
                    if length != -1:
                        raise ProtocolError(f"produce request: records of length {length}")
                    partitions.append((index, None))
                    continue
                end = pos + length
                if end > size:
                    raise ProtocolError("produce request: records run past the frame")
                partitions.append((index, view[pos:end]))
                pos = end
            topics.append((name, partitions))  # type: ignore[arg-type]
    except struct.error:
        raise ProtocolError("produce request: truncated") from None
    return ProduceRequest(version, correlation_id, transactional_id, acks, topics)


def _result(outcome: Outcome) -> tuple[int, int]:
    """(error code, base offset) of a finished partition."""
    if isinstance(outcome, ErrorCode):
        return outcome, -1
    if isinstance(outcome, Early):
        return ErrorCode.none, outcome.base_offset
    if outcome.cancelled():
        return ErrorCode.unknown_server_error, -1
    exc = outcome.exception()
    if exc is not None:
        if isinstance(exc, ProducerSequenceError):  # the producer's doing; the log says so
            log.debug("append refused: %s", exc)
        else:
            log.warning("append failed: %s", exc)
        return error_code_for(exc), -1
    return ErrorCode.none, outcome.result()


def encode_produce_response(
    correlation_id: int,
    api_version: int,
    topics: list[tuple[str, list[tuple[int, Outcome]]]],
    append_times: dict[str, int] | None = None,
) -> bytes:
    """The whole response frame (length prefix included); every future must be done.
    ``append_times`` gives the log-append time of the topics that stamp one (Kafka answers
    -1 for the others)."""
    append_times = append_times or {}
    parts = [b"", _I32.pack(len(topics))]
    for name, partitions in topics:
        encoded = name.encode()
        parts.append(_I16.pack(len(encoded)))
        parts.append(encoded)
        parts.append(_I32.pack(len(partitions)))
        stamp = append_times.get(name, -1)
        for index, outcome in partitions:
            error, offset = _result(outcome)
            parts.append(_PARTITION.pack(index, error, offset, stamp if error == 0 else -1))
            if api_version >= 5:
                parts.append(_NO_LOG_START)
            if api_version >= 8:
                parts.append(_NO_RECORD_ERRORS)
    parts.append(_NO_THROTTLE)
    body = b"".join(parts)
    return _FRAME_HEAD.pack(len(body) + 4, correlation_id) + body


def _start_append(
    broker: Broker,
    topic: str,
    partition: int,
    records: memoryview | None,
    transactional_id: str | None = None,
    now_ms: int | None = None,
) -> Outcome:
    """Validate one partition's batches and hand them to the log, without waiting.

    Batches of a transactional producer (``transactional_id``) must be transactional and
    belong to its ongoing transaction; others must be neither transactional nor control
    batches (markers are written by the coordinator only).
    """
    if not records:
        return ErrorCode.corrupt_message
    try:
        batches = split_batches(records)
    except StreamHouseError as exc:
        return error_code_for(exc)
    header = batches[0][2]
    if transactional_id is None:
        for _, _, h in batches:
            if h.attributes & _ATTR_TRANSACTIONAL_OR_CONTROL:
                return ErrorCode.invalid_record
    else:
        headers = [h for _, _, h in batches]
        refused = broker.transactions.refusal(transactional_id, topic, partition, headers)
        if refused is not None:
            return refused
    idempotent = header.producer_id >= 0
    if idempotent:
        if len(batches) != 1:
            return ErrorCode.invalid_record  # Kafka: exactly one batch per partition from v3
        duplicate_of = broker.producers.duplicate_of(topic, partition, header)
        if duplicate_of is not None:
            return duplicate_of
    early = None
    if transactional_id is not None:
        early = broker.transactions.early_answers(transactional_id, header)
    reserved = None
    try:
        if early is None:
            offset = broker.log.append_async(topic, partition, records, batches, now_ms=now_ms)
        else:
            offset, reserved = broker.log.append_early(
                topic, partition, records, batches, early.lose, now_ms
            )
    except StreamHouseError as exc:
        log.debug("produce to %s/%d refused: %s", topic, partition, exc)
        return error_code_for(exc)
    if idempotent:
        broker.producers.record(topic, partition, header, offset)
    if early is not None:
        early.admit(topic, partition, header, offset)
        if reserved is not None:  # there by the time its transaction commits, or refused
            return Early(reserved)
    return offset


def _swallow(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("acks=0 append failed: %s", future.exception())


def handle_produce_frame(
    broker: Broker, frame: bytes, client_host: str, session: Session | None = None
) -> bytes | asyncio.Future[bytes] | None:
    """Append each partition's batches; the response frame, now or once all are durable.

    ``None`` for ``acks=0`` (no response). ProtocolError if the frame is malformed.
    """
    request = parse_produce(frame)
    acks = request.acks
    started: list[tuple[str, list[tuple[int, Outcome]]]] = []
    waiting: list[asyncio.Future[int]] = []
    access = broker.access
    transaction_denied = request.transactional_id is not None and not access.allowed(
        session, AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, request.transactional_id
    )
    now_ms = time.time_ns() // 1_000_000  # the log-append time of this request's batches
    append_times: dict[str, int] = {}
    for name, partitions in request.topics:
        outcomes: list[tuple[int, Outcome]] = []
        allowed = access.allowed(session, AclOperation.WRITE, ResourceType.TOPIC, name)
        if allowed and broker.log.stamps_append_time(name):
            append_times[name] = now_ms
        for index, records in partitions:
            if acks not in (0, 1, -1):
                outcome: Outcome = ErrorCode.invalid_required_acks
            elif not allowed:
                outcome = ErrorCode.topic_authorization_failed
            elif transaction_denied:
                outcome = ErrorCode.transactional_id_authorization_failed
            else:
                outcome = _start_append(
                    broker, name, index, records, request.transactional_id, now_ms
                )
                if isinstance(outcome, asyncio.Future):
                    waiting.append(outcome)
            outcomes.append((index, outcome))
        started.append((name, outcomes))
    if acks == 0:
        for future in waiting:
            future.add_done_callback(_swallow)
        return None
    correlation_id, version = request.correlation_id, request.api_version
    if all(future.done() for future in waiting):
        return encode_produce_response(correlation_id, version, started, append_times)
    response: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    remaining = len(waiting)

    def one_done(_: asyncio.Future[int]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not response.done():
            response.set_result(
                encode_produce_response(correlation_id, version, started, append_times)
            )

    for future in waiting:
        future.add_done_callback(one_done)
    return response


RAW_HANDLERS = {ApiKey.PRODUCE: handle_produce_frame}
"""API key -> handler of whole frames (no kio decoding)."""
