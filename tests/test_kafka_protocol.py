"""The Kafka protocol at the frame level, against a real server subprocess: version
negotiation, pipelining, error codes for bad input, idempotence, long polling, offsets,
topic administration and group offsets."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import kafka_fixtures
import pytest
from kafka_fixtures import KafkaServer, RawClient, fetch_request, produce_request

from streamhouse.kafka.versions import SUPPORTED
from streamhouse.kafka.wire import ErrorCode, messages, ms
from streamhouse.log.records import build_batch, decode_batches

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic


def _produce(client: RawClient, topic: str, partition: int, records: bytes, acks: int = -1):
    return client.produce(topic, partition, records, acks)


def _fetch(client: RawClient, topic: str, partitions, **kw):
    return client.fetch(topic, partitions, **kw)


def _values(records: bytes) -> list[bytes]:
    return [v.as_py() for v in decode_batches(records)["value"]] if records else []


# -- ApiVersions and framing -----------------------------------------------------------------


def test_api_versions_v0_to_v3_list_every_supported_api(kafka_server: KafkaServer) -> None:
    with RawClient(kafka_server.bootstrap) as client:
        for version in range(4):
            resp = client.request(18, version, **_api_versions_fields(version))
            assert resp.error_code == ErrorCode.none
            assert {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys} == SUPPORTED


def _api_versions_fields(version: int) -> dict:
    if version >= 3:
        return {"client_software_name": "raw", "client_software_version": "1"}
    return {}


def test_newer_api_versions_gets_v0_answer_with_unsupported_version(
    kafka_server: KafkaServer,
) -> None:
    with RawClient(kafka_server.bootstrap) as client:
        # An ApiVersions v4 request: header v2 (flexible), body we do not even parse.
        header = struct.pack(">hhih", 18, 4, 42, 3) + b"raw" + b"\x00"
        body = b"\x04raw\x021\x00"
        client.send_frame(struct.pack(">i", len(header + body)) + header + body)
        correlation, resp = client.decode(18, 0, client.read_frame())
        assert correlation == 42
        assert resp.error_code == ErrorCode.unsupported_version
        assert {k.api_key for k in resp.api_keys} == set(SUPPORTED)
        # the connection stays usable at a version we speak
        assert client.request(18, 3, **_api_versions_fields(3)).error_code == ErrorCode.none


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">ihhi", 8, 9999, 0, 1),  # unknown api key
        struct.pack(">ihhi", 8, 21, 0, 1),  # DeleteRecords: known to Kafka, not offered
        struct.pack(">ihhi", 8, 0, 2, 1),  # Produce v2: below our range
        struct.pack(">ihhi", 8, 3, 99, 1),  # Metadata v99
        struct.pack(">i", 2**31 - 1),  # absurd length
        struct.pack(">i", -5),  # negative length
        struct.pack(">i", 3) + b"abc",  # shorter than a header
        struct.pack(">ihhi", 12, 3, 5, 1) + b"\x00\x05ab",  # Metadata v5 truncated body
    ],
    ids=["unknown-key", "unoffered-key", "old-version", "new-version", "huge", "negative",
         "short", "truncated"],
)  # fmt: skip
def test_bad_frames_close_the_connection_and_the_server_lives(
    kafka_server: KafkaServer, frame: bytes
) -> None:
    with RawClient(kafka_server.bootstrap) as client:
        client.send_frame(frame)
        assert client.closed_by_server()
    with RawClient(kafka_server.bootstrap) as client:
        assert client.request(18, 0).error_code == ErrorCode.none


def test_responses_to_pipelined_requests_come_in_order(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic(partitions=1)
    with RawClient(kafka_server.bootstrap) as client:
        frames, expected, produced = [], [], 0
        for i in range(20):
            if i % 3 == 0:
                # a long poll at the high watermark: answered when the next produce lands
                # (or after 300 ms), and still before the answers to the requests after it
                fetch = fetch_request(topic, [(0, produced)], max_wait_ms=300)
                correlation, frame = client.encode(1, 11, **fetch)
                expected.append((correlation, 1, 11))
            elif i % 3 == 1:
                batch = build_batch([b"p%d" % i])
                correlation, frame = client.encode(0, 8, **produce_request(topic, 0, batch))
                expected.append((correlation, 0, 8))
                produced += 1
            else:
                correlation, frame = client.encode(18, 0)
                expected.append((correlation, 18, 0))
            frames.append(frame)
        client.send_frame(b"".join(frames))
        for correlation, key, version in expected:
            got, _ = client.decode(key, version, client.read_frame())
            assert got == correlation


def test_answers_ready_at_once_wait_for_the_ones_ahead(
    kafka_server: KafkaServer, new_topic
) -> None:
    """Answers a raw handler has at once (a produce refused, a fetch with data) skip the
    sending loop only while nothing ahead of them is unwritten: behind a long poll or a
    request handled by a task they queue, and come in request order."""
    topic = new_topic(partitions=1)
    with RawClient(kafka_server.bootstrap) as client:
        _produce(client, topic, 0, build_batch([b"there"]))
        refused = produce_request(topic, 0, build_batch([b"x"]), acks=5)  # invalid acks
        frames, expected = [], []

        def add(key: int, version: int, **fields: object) -> None:
            correlation, frame = client.encode(key, version, **fields)
            frames.append(frame)
            expected.append((correlation, key, version))

        for _ in range(3):
            add(0, 8, **refused)  # at once, nothing ahead: straight out
            add(1, 11, **fetch_request(topic, [(0, 0)]))  # data: at once
            add(1, 11, **fetch_request(topic, [(0, 1)], max_wait_ms=200))  # a long poll
            add(0, 8, **refused)  # at once, behind the long poll
            add(1, 11, **fetch_request(topic, [(0, 0)]))
            add(18, 0)  # a task
            add(0, 8, **refused)
        client.send_frame(b"".join(frames))
        for correlation, key, version in expected:
            got, resp = client.decode(key, version, client.read_frame())
            assert got == correlation
            if key == 0:
                part = resp.responses[0].partition_responses[0]
                assert part.error_code == ErrorCode.invalid_required_acks


def test_pipelined_produce_requests_to_many_partitions_share_flushes(tmp_path: Path) -> None:
    """librdkafka sends a Produce request per partition: 300 of them pipelined on one
    connection are all read before the first is answered, so they land in a flush or two,
    not in one flush per 64 requests (the old per-connection bound: at least 5 objects)."""
    import streamhouse

    data_dir = tmp_path / "data"
    with streamhouse.connect(data_dir) as sh:
        sh.create_topic("wide", partitions=300)
    server = KafkaServer(data_dir, env={"STREAMHOUSE_LINGER_MS": "300"}).start()
    try:
        with RawClient(server.bootstrap) as client:
            frames, expected = [], []
            for p in range(300):
                request = produce_request("wide", p, build_batch([b"v%d" % p]))
                correlation, frame = client.encode(0, 8, **request)
                frames.append(frame)
                expected.append(correlation)
            client.send_frame(b"".join(frames))
            for p, correlation in enumerate(expected):
                got, resp = client.decode(0, 8, client.read_frame())
                part = resp.responses[0].partition_responses[0]
                assert (got, part.index, part.error_code, part.base_offset) == (
                    correlation,
                    p,
                    ErrorCode.none,
                    0,
                )
    finally:
        assert server.stop() == 0, server.log()
    objects = list((data_dir / "objects" / "segments").iterdir())
    assert 1 <= len(objects) <= 3
    with streamhouse.connect(data_dir) as sh:
        assert sh.sql("SELECT count(*) AS n FROM wide").to_arrow_table()["n"].to_pylist() == [300]


# -- produce errors ------------------------------------------------------------------------


def test_bad_crc_is_corrupt_message_and_the_log_stays_intact(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        assert _produce(client, topic, 0, build_batch([b"good"])) == (ErrorCode.none, 0)
        bad = bytearray(build_batch([b"evil"]))
        bad[-1] ^= 0xFF
        assert _produce(client, topic, 0, bytes(bad))[0] == ErrorCode.corrupt_message
        truncated = build_batch([b"cut"])[:-3]
        assert _produce(client, topic, 0, truncated)[0] == ErrorCode.corrupt_message
        not_v2 = bytearray(build_batch([b"old"]))
        not_v2[16] = 1  # magic
        assert _produce(client, topic, 0, bytes(not_v2))[0] == ErrorCode.corrupt_message
        assert _produce(client, topic, 0, build_batch([b"after"])) == (ErrorCode.none, 1)
        parts = _fetch(client, topic, [(0, 0)])
        assert _values(parts[0].records) == [b"good", b"after"]
        assert parts[0].high_watermark == 2


def test_unknown_topics_and_partitions(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic(partitions=2)
    with RawClient(kafka_server.bootstrap) as client:
        batch = build_batch([b"x"])
        assert (
            _produce(client, "no-such-topic", 0, batch)[0] == ErrorCode.unknown_topic_or_partition
        )
        assert _produce(client, topic, 2, batch)[0] == ErrorCode.unknown_topic_or_partition
        assert _produce(client, topic, -1, batch)[0] == ErrorCode.unknown_topic_or_partition
        parts = _fetch(client, topic, [(5, 0)])
        assert parts[5].error_code == ErrorCode.unknown_topic_or_partition
        module = messages(3, 8, False)
        resp = client.request(
            3,
            8,
            topics=(
                module.MetadataRequestTopic(name="nope-" + topic),
                module.MetadataRequestTopic(name="bad/name"),
            ),
            allow_auto_topic_creation=False,
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
        )
        errors = [t.error_code for t in resp.topics]
        assert errors == [ErrorCode.unknown_topic_or_partition, ErrorCode.invalid_topic_exception]


def test_max_message_bytes_is_enforced_per_topic(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic(max_message_bytes="1000")
    with RawClient(kafka_server.bootstrap) as client:
        assert _produce(client, topic, 0, build_batch([b"s" * 100]))[0] == ErrorCode.none
        big = build_batch([b"b" * 5000])
        assert _produce(client, topic, 0, big)[0] == ErrorCode.message_too_large


def test_acks_zero_gets_no_answer_but_is_stored(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        _, frame = client.encode(0, 8, **produce_request(topic, 0, build_batch([b"fire"]), acks=0))
        client.send_frame(frame)
        parts = _fetch(client, topic, [(0, 0)], max_wait_ms=3000)
        assert _values(parts[0].records) == [b"fire"]


# -- idempotent producers ----------------------------------------------------------------------


def test_idempotent_retries_do_not_duplicate_and_gaps_are_refused(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        init = client.request(22, 1, transactional_id=None, transaction_timeout=ms(60_000))
        assert init.error_code == ErrorCode.none and init.producer_id > 0
        pid, epoch = init.producer_id, init.producer_epoch

        def batch(seq: int, values: list[bytes]) -> bytes:
            return build_batch(values, producer_id=pid, producer_epoch=epoch, base_sequence=seq)

        assert _produce(client, topic, 0, batch(0, [b"a", b"b"])) == (ErrorCode.none, 0)
        assert _produce(client, topic, 0, batch(2, [b"c"])) == (ErrorCode.none, 2)
        # a retry of the first batch: the original offset, nothing appended
        assert _produce(client, topic, 0, batch(0, [b"a", b"b"])) == (ErrorCode.none, 0)
        assert _produce(client, topic, 0, batch(2, [b"c"])) == (ErrorCode.none, 2)
        # a gap
        error, _ = _produce(client, topic, 0, batch(7, [b"z"]))
        assert error == ErrorCode.out_of_order_sequence_number
        assert _produce(client, topic, 0, batch(3, [b"d"])) == (ErrorCode.none, 3)
        assert _values(_fetch(client, topic, [(0, 0)])[0].records) == [b"a", b"b", b"c", b"d"]
        # a transactional id gets its own producer id (test_kafka_transactions has the rest)
        transactional = client.request(22, 1, transactional_id="tx", transaction_timeout=ms(1000))
        assert transactional.error_code == ErrorCode.none
        assert transactional.producer_id not in (-1, init.producer_id)


# -- fetch -------------------------------------------------------------------------------------


def test_fetch_long_polls_until_data_arrives(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        started = time.monotonic()
        parts = _fetch(client, topic, [(0, 0)], max_wait_ms=600)
        waited = time.monotonic() - started
        assert parts[0].records in (b"", None) and 0.5 <= waited < 5

        def produce_later() -> None:
            time.sleep(0.5)
            with RawClient(kafka_server.bootstrap) as other:
                _produce(other, topic, 0, build_batch([b"late"]))

        thread = threading.Thread(target=produce_later)
        thread.start()
        started = time.monotonic()
        parts = _fetch(client, topic, [(0, 0)], max_wait_ms=20_000)
        waited = time.monotonic() - started
        thread.join()
        assert _values(parts[0].records) == [b"late"]
        assert 0.3 <= waited < 10


def test_fetch_limits_and_offset_out_of_range(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic(partitions=2)
    with RawClient(kafka_server.bootstrap) as client:
        for partition in (0, 1):
            for i in range(3):
                _produce(client, topic, partition, build_batch([b"%d" % i * 400]))
        # response max_bytes smaller than a batch: one batch from the first partition only
        parts = _fetch(client, topic, [(0, 0), (1, 0)], max_bytes=10)
        assert len(_values(parts[0].records)) == 1 and not parts[1].records
        # partition_max_bytes bounds each partition, but each still returns one batch
        parts = _fetch(client, topic, [(0, 0), (1, 1)], partition_max_bytes=10)
        assert len(_values(parts[0].records)) == 1 and len(_values(parts[1].records)) == 1
        parts = _fetch(client, topic, [(0, 0), (1, 0)])
        assert len(_values(parts[0].records)) == 3 and len(_values(parts[1].records)) == 3
        parts = _fetch(client, topic, [(0, 99)])
        assert parts[0].error_code == ErrorCode.offset_out_of_range
        assert parts[0].high_watermark == 3


# -- ListOffsets -------------------------------------------------------------------------------


def test_list_offsets_earliest_latest_and_by_timestamp(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic()
    with RawClient(kafka_server.bootstrap) as client:
        _produce(client, topic, 0, build_batch([b"a", b"b"], timestamps=[1000, 2000]))
        _produce(client, topic, 0, build_batch([b"c"], timestamps=[3000]))
        module = messages(2, 5, False)

        def lookup(timestamp: int):
            resp = client.request(
                2,
                5,
                replica_id=-1,
                isolation_level=0,
                topics=(
                    module.ListOffsetsTopic(
                        name=topic,
                        partitions=(
                            module.ListOffsetsPartition(
                                partition_index=0, current_leader_epoch=-1, timestamp=timestamp
                            ),
                        ),
                    ),
                ),
            )
            p = resp.topics[0].partitions[0]
            return p.error_code, p.offset, p.timestamp

        assert lookup(-2)[:2] == (ErrorCode.none, 0)
        assert lookup(-1)[:2] == (ErrorCode.none, 3)
        assert lookup(1500) == (ErrorCode.none, 1, 2000)
        assert lookup(3000) == (ErrorCode.none, 2, 3000)
        assert lookup(9999)[1] == -1


# -- admin -------------------------------------------------------------------------------------


def test_create_delete_topics_partitions_and_describe_configs(kafka_server: KafkaServer) -> None:
    name = f"admin-{time.monotonic_ns()}"
    with RawClient(kafka_server.bootstrap) as client:
        ct = messages(19, 4, False)

        def create(topic: str, partitions: int, configs: dict[str, str], validate=False):
            resp = client.request(
                19,
                4,
                topics=(
                    ct.CreatableTopic(
                        name=topic,
                        num_partitions=partitions,
                        replication_factor=3,
                        assignments=(),
                        configs=tuple(
                            ct.CreatableTopicConfig(name=k, value=v) for k, v in configs.items()
                        ),
                    ),
                ),
                timeout=ms(5000),
                validate_only=validate,
            )
            return resp.topics[0].error_code

        assert create(name, 3, {"retention.ms": "1000"}, validate=True) == ErrorCode.none
        assert create(name, 3, {"retention.ms": "1000", "cleanup.policy": "delete"}) == 0
        assert create(name, 3, {}) == ErrorCode.topic_already_exists
        assert create(name + "x", 1, {"no.such.config": "1"}) == ErrorCode.invalid_config
        assert create(name + "y", 0, {}) == ErrorCode.invalid_partitions
        assert create("bad name!", 1, {}) == ErrorCode.invalid_topic_exception

        dc = messages(32, 3, False)
        resp = client.request(
            32,
            3,
            resources=(
                dc.DescribeConfigsResource(
                    resource_type=2, resource_name=name, configuration_keys=None
                ),
                dc.DescribeConfigsResource(
                    resource_type=4, resource_name="0", configuration_keys=None
                ),
                dc.DescribeConfigsResource(
                    resource_type=2, resource_name="missing-topic", configuration_keys=None
                ),
            ),
            include_synonyms=False,
            include_documentation=False,
        )
        topic_result, broker_result, missing = resp.results
        configs = {c.name: (c.value, c.config_source) for c in topic_result.configs}
        assert configs["retention.ms"] == ("1000", 1)
        assert configs["cleanup.policy"] == ("delete", 1)
        assert configs["max.message.bytes"][1] == 5
        assert configs["compression.type"] == ("producer", 5)
        assert broker_result.error_code == 0 and broker_result.configs
        assert missing.error_code == ErrorCode.unknown_topic_or_partition

        cp = messages(37, 1, False)

        def grow(topic: str, count: int):
            resp = client.request(
                37,
                1,
                topics=(cp.CreatePartitionsTopic(name=topic, count=count, assignments=None),),
                timeout=ms(5000),
                validate_only=False,
            )
            return resp.results[0].error_code

        assert grow(name, 5) == ErrorCode.none
        assert grow(name, 2) == ErrorCode.invalid_partitions
        assert grow("missing-topic", 9) == ErrorCode.unknown_topic_or_partition
        assert _produce(client, name, 4, build_batch([b"p4"]))[0] == ErrorCode.none

        def delete(topic: str):
            resp = client.request(20, 3, topic_names=(topic,), timeout=ms(5000))
            return resp.responses[0].error_code

        assert delete(name) == ErrorCode.none
        assert delete(name) == ErrorCode.unknown_topic_or_partition


# -- group offsets and group administration ----------------------------------------------------


def _commit(client: RawClient, group: str, topic: str, offsets: dict[int, tuple[int, str]]):
    module = messages(8, 7, False)
    resp = client.request(
        8,
        7,
        group_id=group,
        generation_id_or_member_epoch=-1,
        member_id="",
        group_instance_id=None,
        topics=(
            module.OffsetCommitRequestTopic(
                name=topic,
                partitions=tuple(
                    module.OffsetCommitRequestPartition(
                        partition_index=p,
                        committed_offset=o,
                        committed_leader_epoch=-1,
                        committed_metadata=m,
                    )
                    for p, (o, m) in offsets.items()
                ),
            ),
        ),
    )
    return {p.partition_index: p.error_code for p in resp.topics[0].partitions}


def _committed(client: RawClient, group: str, topic: str | None):
    module = messages(9, 5, False)
    topics = None
    if topic is not None:
        topics = (module.OffsetFetchRequestTopic(name=topic, partition_indexes=(0, 1, 2)),)
    resp = client.request(9, 5, group_id=group, topics=topics)
    assert resp.error_code == ErrorCode.none
    return {
        (t.name, p.partition_index): (p.committed_offset, p.metadata)
        for t in resp.topics
        for p in t.partitions
    }


def test_offset_commit_metadata_round_trips_and_groups_are_listed(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic(partitions=2)
    group = f"g-{topic}"
    with RawClient(kafka_server.bootstrap) as client:
        errors = _commit(client, group, topic, {0: (5, "meta-0"), 1: (7, ""), 2: (1, "x")})
        assert errors == {0: 0, 1: 0, 2: ErrorCode.unknown_topic_or_partition}
        assert _committed(client, group, topic) == {
            (topic, 0): (5, "meta-0"),
            (topic, 1): (7, ""),
            (topic, 2): (-1, ""),
        }
        assert _committed(client, group, None) == {(topic, 0): (5, "meta-0"), (topic, 1): (7, "")}
        too_long = _commit(client, group, topic, {0: (6, "m" * 5000)})
        assert too_long == {0: ErrorCode.offset_metadata_too_large}

        listed = client.request(16, 2)
        assert group in {g.group_id for g in listed.groups}
        described = client.request(
            15, 4, groups=(group, "never-seen"), include_authorized_operations=False
        )
        states = {g.group_id: g.group_state for g in described.groups}
        assert states == {group: "Empty", "never-seen": "Dead"}

        deleted = client.request(42, 1, groups_names=(group, "never-seen"))
        assert [r.error_code for r in deleted.results] == [0, ErrorCode.group_id_not_found]
        assert _committed(client, group, None) == {}


def test_records_and_offsets_survive_a_restart(tmp_path: Path) -> None:
    server = KafkaServer(tmp_path / "data").start()
    try:
        with RawClient(server.bootstrap) as client:
            module = messages(3, 8, False)
            client.request(
                3,
                8,
                topics=(module.MetadataRequestTopic(name="durable"),),
                allow_auto_topic_creation=True,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            )
            assert _produce(client, "durable", 0, build_batch([b"kept"])) == (0, 0)
            assert _commit(client, "dg", "durable", {0: (1, "md")}) == {0: 0}
        assert server.stop() == 0
        server.start()
        with RawClient(server.bootstrap) as client:
            assert _values(_fetch(client, "durable", [(0, 0)])[0].records) == [b"kept"]
            assert _committed(client, "dg", "durable")[("durable", 0)] == (1, "md")
    finally:
        server.stop()


def test_auto_create_off(tmp_path: Path) -> None:
    server = KafkaServer(tmp_path / "data", env={"STREAMHOUSE_AUTO_CREATE_TOPICS": "false"})
    server.start()
    try:
        with RawClient(server.bootstrap) as client:
            module = messages(3, 4, False)
            resp = client.request(
                3,
                4,
                topics=(module.MetadataRequestTopic(name="wanted"),),
                allow_auto_topic_creation=True,
            )
            assert resp.topics[0].error_code == ErrorCode.unknown_topic_or_partition
            error, _ = _produce(client, "wanted", 0, build_batch([b"x"]))
            assert error == ErrorCode.unknown_topic_or_partition
    finally:
        server.stop()
