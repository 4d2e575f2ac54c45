"""The hand-written Produce and Fetch codecs, and the Metadata writer that copies encoded
partition arrays, agree byte for byte with kio, at every version."""

from __future__ import annotations

import asyncio
import datetime
import io
import struct
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kio.serial import entity_writer

from streamhouse.errors import ProtocolError
from streamhouse.kafka.fetch import PartitionRead, encode_fetch_response
from streamhouse.kafka.metadata import _partitions
from streamhouse.kafka.produce import encode_produce_response, parse_produce
from streamhouse.kafka.txn_codec import add_partitions_body, end_txn_body
from streamhouse.kafka.versions import SUPPORTED
from streamhouse.kafka.wire import (
    ErrorCode,
    body_frame,
    encode_response,
    make,
    messages,
    parse_request,
)
from streamhouse.log.records import build_batch

PRODUCE_VERSIONS = range(SUPPORTED[0][0], SUPPORTED[0][1] + 1)
FETCH_VERSIONS = range(SUPPORTED[1][0], SUPPORTED[1][1] + 1)
METADATA_VERSIONS = range(SUPPORTED[3][0], SUPPORTED[3][1] + 1)
ADD_PARTITIONS_VERSIONS = range(SUPPORTED[24][0], SUPPORTED[24][1] + 1)
END_TXN_VERSIONS = range(SUPPORTED[26][0], SUPPORTED[26][1] + 1)


def _request_frame(version: int, client_id: str | None = "c", **fields: object) -> bytes:
    module = messages(0, version, False)
    request = module.ProduceRequest(**fields)
    header_cls = request.__header_schema__
    buf = io.BytesIO()
    entity_writer(header_cls)(
        buf,
        header_cls(
            request_api_key=0, request_api_version=version, correlation_id=42, client_id=client_id
        ),
    )
    entity_writer(type(request))(buf, request)
    return buf.getvalue()


def _produce_fields(version: int, records: list[bytes | None], acks: int = -1) -> dict:
    module = messages(0, version, False)
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout": datetime.timedelta(milliseconds=1500),
        "topic_data": (
            module.TopicProduceData(
                name="tópic",
                partition_data=tuple(
                    module.PartitionProduceData(index=i, records=r) for i, r in enumerate(records)
                ),
            ),
            module.TopicProduceData(name="other", partition_data=()),
        ),
    }


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
@pytest.mark.parametrize("client_id", ["client", None])
def test_parse_produce_matches_kio(version: int, client_id: str | None) -> None:
    batch = build_batch([b"a", b"bc"])
    frame = _request_frame(version, client_id, **_produce_fields(version, [batch, None, b""], 1))
    _, expected = parse_request(frame)
    parsed = parse_produce(frame)
    assert (parsed.api_version, parsed.correlation_id, parsed.acks) == (version, 42, 1)
    assert parsed.transactional_id is None
    got = [(name, [(i, None if r is None else bytes(r)) for i, r in parts])
           for name, parts in parsed.topics]  # fmt: skip
    want = [(t.name, [(p.index, p.records) for p in t.partition_data]) for t in expected.topic_data]
    assert got == want


def test_parse_produce_reads_a_transactional_id() -> None:
    fields = _produce_fields(8, [build_batch([b"x"])]) | {"transactional_id": "tx"}
    assert parse_produce(_request_frame(8, **fields)).transactional_id == "tx"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f[:-1],  # truncated records
        lambda f: f[:12],  # truncated header
        lambda f: f[:-3] + struct.pack(">i", -1)[1:],  # partition count garbled at the end
    ],
)
def test_parse_produce_refuses_malformed_frames(mutate) -> None:
    frame = _request_frame(8, **_produce_fields(8, [build_batch([b"a"])]))
    with pytest.raises(ProtocolError):
        parse_produce(mutate(frame))


def test_parse_produce_refuses_null_arrays_and_bad_names() -> None:
    frame = _request_frame(8, **_produce_fields(8, []))
    # client_id "c": 10-byte prefix + 1; transactional_id null: 2; acks 2; timeout 4.
    topic_count_at = 10 + 1 + 2 + 2 + 4
    null_topics = frame[:topic_count_at] + struct.pack(">i", -1)
    with pytest.raises(ProtocolError):
        parse_produce(null_topics)
    bad_name = frame[: topic_count_at + 4] + struct.pack(">h", 2) + b"\xff\xfe" + frame[-8:]
    with pytest.raises(ProtocolError):
        parse_produce(bad_name)


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
def test_produce_response_matches_kio(version: int) -> None:
    module = messages(0, version, True)
    loop = asyncio.new_event_loop()
    try:
        done = loop.create_future()
        done.set_result(1234)
        failed = loop.create_future()
        failed.set_exception(ProtocolError("x"))
        outcomes = [(0, done), (3, ErrorCode.corrupt_message), (5, failed)]
        got = encode_produce_response(7, version, [("tópic", outcomes), ("empty", [])])
    finally:
        loop.close()
    rows = [
        (0, ErrorCode.none, 1234),
        (3, ErrorCode.corrupt_message, -1),
        (5, ErrorCode.unknown_server_error, -1),
    ]
    expected = make(
        module.ProduceResponse,
        throttle_time=0,
        responses=(
            module.TopicProduceResponse(
                name="tópic",
                partition_responses=tuple(
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
                    for index, error, offset in rows
                ),
            ),
            module.TopicProduceResponse(name="empty", partition_responses=()),
        ),
    )
    assert got == encode_response(7, expected)


@pytest.mark.parametrize("version", FETCH_VERSIONS)
def test_fetch_response_matches_kio(version: int) -> None:
    module = messages(1, version, True)
    batch = build_batch([b"v1", b"v2"])
    by_id = version >= 13  # topics named by their ids (KIP-516)
    first, second = (uuid.uuid4(), uuid.uuid4()) if by_id else ("tópic", "other")
    reads = [
        (first, [
            PartitionRead(0, ErrorCode.none, batch, 10, 2),
            PartitionRead(1, ErrorCode.offset_out_of_range, b"", 5, 0),
            PartitionRead(2, ErrorCode.none, batch, 12, 0, last_stable_offset=3, aborted=[(7, 1)]),
        ]),
        (second, []),
    ]  # fmt: skip
    expected = make(
        module.FetchResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(
            module.FetchableTopicResponse(
                **({"topic_id": key} if by_id else {"topic": key}),
                partitions=tuple(
                    make(
                        module.PartitionData,
                        partition_index=r.partition,
                        error_code=r.error,
                        high_watermark=r.high_watermark,
                        last_stable_offset=(
                            r.high_watermark if r.last_stable_offset < 0 else r.last_stable_offset
                        ),
                        log_start_offset=r.log_start_offset,
                        aborted_transactions=(
                            None
                            if r.aborted is None
                            else tuple(
                                module.AbortedTransaction(producer_id=p, first_offset=o)
                                for p, o in r.aborted
                            )
                        ),
                        preferred_read_replica=-1,
                        records=r.records,
                    )
                    for r in rs
                ),
            )
            for key, rs in reads
        ),
    )
    assert encode_fetch_response(9, version, reads) == encode_response(9, expected)


@pytest.mark.parametrize("version", METADATA_VERSIONS)
def test_metadata_response_matches_kio(version: int) -> None:
    module = messages(3, version, True)
    topics = (
        make(
            module.MetadataResponseTopic,
            error_code=ErrorCode.none,
            name="wide",
            topic_id=uuid.uuid4(),
            partitions=_partitions(module, 1000, (3, 1, 2), 1),
        ),
        make(
            module.MetadataResponseTopic,
            error_code=ErrorCode.unknown_topic_or_partition,
            name="gone",
            topic_id=uuid.UUID(int=0),
            partitions=(),
        ),
        make(
            module.MetadataResponseTopic,
            error_code=ErrorCode.none,
            name="tópic",
            topic_id=uuid.uuid4(),
            partitions=_partitions(module, 3, (1,), 0),
        ),
    )
    response = make(
        module.MetadataResponse,
        throttle_time=0,
        brokers=(
            make(module.MetadataResponseBroker, node_id=1, host="a", port=9092, rack=None),
            make(module.MetadataResponseBroker, node_id=2, host="b", port=9093, rack="z1"),
        ),
        cluster_id="c",
        controller_id=1,
        topics=topics,
    )
    by_kio = io.BytesIO()
    entity_writer(type(response))(by_kio, response)
    frame = encode_response(5, response)
    assert frame[-len(by_kio.getvalue()) :] == by_kio.getvalue()
    assert len(frame) - len(by_kio.getvalue()) in (8, 9)  # length, correlation id, tags


_ERROR_CODES = st.sampled_from(list(ErrorCode))
_PARTITION_RESULTS = st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1), _ERROR_CODES))


@given(
    version=st.sampled_from(ADD_PARTITIONS_VERSIONS),
    correlation_id=st.integers(-(2**31), 2**31 - 1),
    topics=st.lists(st.tuples(st.text(max_size=40), _PARTITION_RESULTS), max_size=4),
)
def test_add_partitions_response_matches_kio(
    version: int, correlation_id: int, topics: list[tuple[str, list[tuple[int, ErrorCode]]]]
) -> None:
    module = messages(24, version, True)
    expected = make(
        module.AddPartitionsToTxnResponse,
        throttle_time=0,
        results_by_topic_v3_and_below=tuple(
            module.AddPartitionsToTxnTopicResult(
                name=name,
                results_by_partition=tuple(
                    module.AddPartitionsToTxnPartitionResult(
                        partition_index=index, partition_error_code=error
                    )
                    for index, error in partitions
                ),
            )
            for name, partitions in topics
        ),
    )
    got = body_frame(correlation_id, add_partitions_body(topics))
    assert got == encode_response(correlation_id, expected)


@given(
    version=st.sampled_from(END_TXN_VERSIONS),
    correlation_id=st.integers(-(2**31), 2**31 - 1),
    error=_ERROR_CODES,
)
def test_end_txn_response_matches_kio(version: int, correlation_id: int, error: ErrorCode) -> None:
    module = messages(26, version, True)
    expected = make(module.EndTxnResponse, throttle_time=0, error_code=error)
    assert body_frame(correlation_id, end_txn_body(error)) == encode_response(
        correlation_id, expected
    )
