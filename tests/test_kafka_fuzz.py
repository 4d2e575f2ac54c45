"""Hypothesis throws random and mutated frames at a running server; afterwards the server is
alive, real clients still work and the records stored before are intact."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import struct

import kafka_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka_fixtures import KafkaServer, RawClient, fetch_request, produce_request
from kio.schema.types import GroupId, TopicName
from kio.static.primitive import Records

from streamhouse.kafka.versions import SUPPORTED
from streamhouse.kafka.wire import _request_class, messages, ms
from streamhouse.log.records import build_batch, decode_batches

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic

EXAMPLES = int(os.environ.get("STREAMHOUSE_FUZZ_EXAMPLES", "300"))
TARGET = "fuzz-target"


def _seed_frames() -> list[bytes]:
    """Well-formed requests of many APIs, to be mutated."""
    client = RawClient.__new__(RawClient)
    client.client_id = "fuzz"
    client._correlation = 0
    md = messages(3, 8, False)
    jg = messages(11, 5, False)
    oc = messages(8, 7, False)
    ct = messages(19, 4, False)
    seeds = [
        client.encode(18, 0)[1],
        client.encode(18, 3, client_software_name="f", client_software_version="1")[1],
        client.encode(
            3,
            8,
            topics=(md.MetadataRequestTopic(name=TARGET),),
            allow_auto_topic_creation=True,
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
        )[1],
        client.encode(0, 8, **produce_request(TARGET, 0, build_batch([b"a", b"b"])))[1],
        client.encode(1, 11, **fetch_request(TARGET, [(0, 0)]))[1],
        client.encode(
            11,
            5,
            group_id="fuzz-group",
            session_timeout=ms(6000),
            rebalance_timeout=ms(100),
            member_id="",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=(jg.JoinGroupRequestProtocol(name="range", metadata=b"\x00\x01"),),
        )[1],
        client.encode(
            8,
            7,
            group_id="fuzz-group",
            generation_id_or_member_epoch=-1,
            member_id="",
            group_instance_id=None,
            topics=(
                oc.OffsetCommitRequestTopic(
                    name=TARGET,
                    partitions=(
                        oc.OffsetCommitRequestPartition(
                            partition_index=0,
                            committed_offset=1,
                            committed_leader_epoch=-1,
                            committed_metadata="m",
                        ),
                    ),
                ),
            ),
        )[1],
        client.encode(
            19,
            4,
            topics=(
                ct.CreatableTopic(
                    name="fuzz-created",
                    num_partitions=1,
                    replication_factor=1,
                    assignments=(),
                    configs=(),
                ),
            ),
            timeout=ms(1000),
            validate_only=True,
        )[1],
    ]
    return seeds


SEEDS = _seed_frames()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        # never touch the length prefix here: it is fixed up below (or broken on purpose)
        pos = draw(st.integers(4, max(4, len(frame) - 1)))
        if kind == "flip" and pos < len(frame):
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and pos < len(frame):
            frame[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif kind == "truncate":
            del frame[pos:]
        elif kind == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del frame[pos : pos + draw(st.integers(1, 8))]
    body = bytes(frame[4:])
    if draw(st.booleans()):
        return struct.pack(">i", len(body)) + body
    return struct.pack(">i", draw(st.integers(-(2**31), 2**31 - 1))) + body


@st.composite
def random_body(draw: st.DrawFn) -> bytes:
    api_key = draw(st.sampled_from(sorted(SUPPORTED)))
    low, high = SUPPORTED[api_key]
    version = draw(st.integers(low - 1, high + 1))
    body = struct.pack(">hhih", api_key, version, 1, 4) + b"fuzz" + draw(st.binary(max_size=200))
    return struct.pack(">i", len(body)) + body


GROUPS = ["fuzz-group", "fuzz-group-2"]
TOPICS = [TARGET, "fuzz-auto", "fuzz-created"]

st.register_type_strategy(
    Records,
    st.one_of(
        st.binary(max_size=80),
        st.builds(
            lambda values, pid, seq: build_batch(
                values, producer_id=pid, producer_epoch=0, base_sequence=seq
            ),
            st.lists(st.binary(max_size=20), min_size=1, max_size=4),
            st.sampled_from([-1, 1, 2]),
            st.integers(-1, 8),
        ),
    ),
)
st.register_type_strategy(TopicName, st.one_of(st.sampled_from(TOPICS), st.text(max_size=12)))
st.register_type_strategy(GroupId, st.one_of(st.sampled_from(GROUPS), st.text(max_size=8)))


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A well-formed request of a supported API with random field values."""
    api_key = draw(st.sampled_from(sorted(SUPPORTED)))
    low, high = SUPPORTED[api_key]
    version = draw(st.integers(low, high))
    request = draw(st.from_type(_request_class(api_key, version)))
    client = RawClient.__new__(RawClient)
    client.client_id = "fuzz"
    client._correlation = draw(st.integers(0, 1000))
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    return client.encode(api_key, version, **fields)[1]


frames = st.one_of(structured(), mutated(), random_body(), st.binary(max_size=64))


def _throw(bootstrap: str, data: bytes) -> None:
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(data)
        sock.settimeout(0.05)
        with contextlib.suppress(TimeoutError, ConnectionError):
            sock.recv(65536)


def _stored(bootstrap: str, topic: str) -> list[bytes]:
    """Values of partition 0 from its log start; [] for a topic that does not exist."""
    with RawClient(bootstrap) as client:
        resp = client.request(1, 11, **fetch_request(topic, [(0, 0)], max_bytes=1 << 20))
        part = resp.responses[0].partitions[0]
        if part.error_code == 3:
            return []
        assert part.error_code == 0
        return [v.as_py() for v in decode_batches(part.records)["value"]]


def test_fuzzed_frames_do_not_hurt_the_server(kafka_server: KafkaServer, new_topic) -> None:
    intact = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        client.request(0, 8, **produce_request(intact, 0, build_batch([b"before", b"fuzz"])))
        client.send_frame(SEEDS[2])  # Metadata, creating TARGET
        client.read_frame()
        client.request(0, 8, **produce_request(TARGET, 0, build_batch([b"seed"])))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.lists(frames, min_size=1, max_size=3))
    def throw(data: list[bytes]) -> None:
        _throw(kafka_server.bootstrap, b"".join(data))
        assert kafka_server.alive(), kafka_server.log()

    throw()

    assert kafka_server.alive(), kafka_server.log()
    assert _stored(kafka_server.bootstrap, intact) == [b"before", b"fuzz"]
    # every batch that made it into the fuzzed topics decodes (if they were not deleted)
    for topic in TOPICS:
        _stored(kafka_server.bootstrap, topic)
    # and a real client still produces and consumes
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": kafka_server.bootstrap})
    producer.produce(intact, b"after", partition=0)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": "fz"})
    consumer.assign([TopicPartition(intact, 0, 0)])
    got: list[bytes] = []
    for _ in range(60):
        got += [m.value() for m in consumer.consume(10, timeout=0.5) if m.error() is None]
        if len(got) >= 3:
            break
    consumer.close()
    assert got == [b"before", b"fuzz", b"after"]
    assert "Traceback" not in kafka_server.log(tail=100_000)
