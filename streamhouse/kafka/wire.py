"""Kafka frames: request headers in, response frames out, and version-aware message building.

A frame is a 4-byte big-endian length and that many bytes. A request frame starts with
``api_key`` (int16), ``api_version`` (int16) and ``correlation_id`` (int32); the rest of the
header and the body depend on the API and version. Message types come from ``kio``.

kio has one class per API version, each with only the fields that version has, so handlers
build messages with :func:`make`, which drops the arguments a version lacks:

>>> from kio.index import load_response_schema
>>> resp = load_response_schema(12, 0)
>>> make(resp, error_code=ErrorCode.none, throttle_time=0)
HeartbeatResponse(error_code=<ErrorCode.none: 0>)
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import kio.schema.response_header.v0.header as response_header_v0
import kio.schema.response_header.v1.header as response_header_v1
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from streamhouse import errors
from streamhouse.errors import ProtocolError

if TYPE_CHECKING:
    from streamhouse.kafka.listeners import Session

__all__ = [
    "ErrorCode",
    "RequestHeader",
    "body_frame",
    "encode_response",
    "register_body_writer",
    "error_code_for",
    "make",
    "messages",
    "ms",
    "parse_request",
    "peek_header",
]

_PREFIX = struct.Struct(">hhi")
_LENGTH = struct.Struct(">i")
_FRAME_HEAD = struct.Struct(">ii")  # frame length, correlation_id (response header v0)
_TIMEDELTA_FIELDS = ("throttle_time", "session_lifetime")


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The header fields every handler may need."""

    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    client_host: str = ""
    session: Session | None = None
    """The connection's listener and principal (None outside a server)."""


def peek_header(frame: bytes) -> tuple[int, int, int]:
    """``(api_key, api_version, correlation_id)`` of a request frame; ProtocolError if short."""
    if len(frame) < _PREFIX.size:
        raise ProtocolError(f"request frame of {len(frame)} bytes has no header")
    api_key, api_version, correlation_id = _PREFIX.unpack_from(frame, 0)
    return api_key, api_version, correlation_id


@cache
def messages(api_key: int, api_version: int, response: bool) -> ModuleType:
    """The kio module holding the request (or response) classes of one API version."""
    kind = EntityType.response if response else EntityType.request
    return load_payload_module(api_key, api_version, kind)


@cache
def _request_class(api_key: int, api_version: int) -> type:
    module = messages(api_key, api_version, False)
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "__type__", None) is EntityType.request:
            return value
    raise ProtocolError(f"no request class for api {api_key} v{api_version}")


@cache
def response_class(api_key: int, api_version: int) -> type:
    """The kio response class of one API version."""
    module = messages(api_key, api_version, True)
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "__type__", None) is EntityType.response:
            return value
    raise ProtocolError(f"no response class for api {api_key} v{api_version}")


def parse_request(
    frame: bytes, client_host: str = "", session: Session | None = None
) -> tuple[RequestHeader, Any]:
    """Decode the header and body of a request whose version kio knows.

    ProtocolError for anything kio cannot decode (truncated, bad lengths, bad UTF-8...).
    """
    api_key, api_version, _ = peek_header(frame)
    try:
        request_cls = _request_class(api_key, api_version)
        header_cls = request_cls.__header_schema__
        header, used = entity_reader(header_cls)(frame, 0)
        body, _ = entity_reader(request_cls)(frame, used)
    except ProtocolError:
        raise
    except Exception as exc:  # kio raises SerialError, ValueError, UnicodeDecodeError, ...
        raise ProtocolError(f"malformed api {api_key} v{api_version} request: {exc!r}") from None
    null = _null_field(body)
    if null is not None:
        raise ProtocolError(f"api {api_key} v{api_version} request: {null} is null")
    client_id = header.client_id
    return (
        RequestHeader(api_key, api_version, header.correlation_id, client_id, client_host, session),
        body,
    )


@cache
def _shape(cls: type) -> tuple[tuple[str, bool, type | None], ...]:
    """Per field: name, whether null is allowed, and the entity class its items are."""
    hints = typing.get_type_hints(cls)
    shape = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        nullable = isinstance(hint, types.UnionType) and type(None) in args
        inner = next((a for a in args if a is not type(None)), hint) if nullable else hint
        entity = None
        if typing.get_origin(inner) is tuple:
            item = typing.get_args(inner)[0]
            entity = item if dataclasses.is_dataclass(item) else None
        elif dataclasses.is_dataclass(inner):
            entity = inner  # type: ignore[assignment]
        shape.append((f.name, nullable, entity))
    return tuple(shape)


def _null_field(entity: Any) -> str | None:
    """The name of a field that is null though its schema says it cannot be, if any.

    kio decodes a null array (length -1) as ``None`` whatever the schema says; Kafka treats
    that as a malformed request.
    """
    for name, nullable, nested in _shape(type(entity)):
        value = getattr(entity, name)
        if value is None:
            if not nullable:
                return name
            continue
        if nested is not None:
            for item in value if isinstance(value, tuple) else (value,):
                inner = _null_field(item)
                if inner is not None:
                    return f"{name}.{inner}"
    return None


_BODY_WRITERS: dict[type, Callable[[io.BytesIO, Any], None]] = {}
"""Response class -> a writer of its body used instead of kio's (byte for byte the same)."""


def register_body_writer(cls: type, write: Callable[[io.BytesIO, Any], None]) -> None:
    """Encode responses of ``cls`` with ``write`` (which must write what kio would)."""
    _BODY_WRITERS[cls] = write


def encode_response(correlation_id: int, response: Any, *, header_v0: bool = False) -> bytes:
    """A complete response frame: length, response header, body.

    ``header_v0`` forces the v0 header (ApiVersions answers always use it).
    """
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    header_schema = response.__header_schema__
    if header_v0 or header_schema is response_header_v0.ResponseHeader:
        entity_writer(response_header_v0.ResponseHeader)(
            buf, response_header_v0.ResponseHeader(correlation_id=correlation_id)
        )
    else:
        entity_writer(response_header_v1.ResponseHeader)(
            buf, response_header_v1.ResponseHeader(correlation_id=correlation_id)
        )
    _BODY_WRITERS.get(type(response), entity_writer(type(response)))(buf, response)
    data = buf.getbuffer()
    _LENGTH.pack_into(data, 0, len(data) - 4)
    out = bytes(data)
    del data
    return out


def body_frame(correlation_id: int, body: bytes) -> bytes:
    """A complete response frame around a body a handler encoded itself, with the v0
    response header (that of every non-flexible version)."""
    return _FRAME_HEAD.pack(len(body) + 4, correlation_id) + body


def ms(value: int) -> datetime.timedelta:
    """Milliseconds as the timedelta kio uses for duration fields."""
    return datetime.timedelta(milliseconds=value)


def to_ms(value: datetime.timedelta) -> int:
    """A kio duration field in whole milliseconds."""
    return int(value / datetime.timedelta(milliseconds=1))


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls))


def make(cls: type, **values: Any) -> Any:
    """Build ``cls`` from those ``values`` it has a field for; ``throttle_time`` may be an int."""
    names = _field_names(cls)
    kwargs = {k: v for k, v in values.items() if k in names}
    for key in _TIMEDELTA_FIELDS:
        if key in names:
            value = kwargs.get(key, 0)
            if isinstance(value, int):
                kwargs[key] = ms(value)
    return cls(**kwargs)


def error_code_for(exc: BaseException) -> ErrorCode:
    """The Kafka error code a client should see for a log exception."""
    for cls, code in _ERRORS:
        if isinstance(exc, cls):
            return code
    return ErrorCode.unknown_server_error


_ERRORS: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (errors.UnknownTopicError, ErrorCode.unknown_topic_or_partition),
    (errors.UnknownPartitionError, ErrorCode.unknown_topic_or_partition),
    (errors.OffsetOutOfRangeError, ErrorCode.offset_out_of_range),
    (errors.InvalidConfigError, ErrorCode.invalid_config),
    (errors.InvalidBrokerConfigError, ErrorCode.invalid_request),
    (errors.RecordTooLargeError, ErrorCode.message_too_large),
    (errors.CorruptRecordError, ErrorCode.corrupt_message),
    (errors.InvalidRecordError, ErrorCode.invalid_record),
    # CORRUPT_MESSAGE, not KAFKA_STORAGE_ERROR: librdkafka retries the latter silently (it takes
    # it for a leader change) but hands the former to the consumer's poll; kafka-python raises it.
    (errors.CorruptSegmentError, ErrorCode.corrupt_message),
    (errors.TopicExistsError, ErrorCode.topic_already_exists),
    (errors.OutOfOrderSequenceError, ErrorCode.out_of_order_sequence_number),
    (errors.InvalidProducerEpochError, ErrorCode.invalid_producer_epoch),
    (errors.StorageError, ErrorCode.kafka_storage_error),
)
