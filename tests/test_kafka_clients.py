"""Real Kafka clients against a real server: kafka-python, confluent-kafka (librdkafka),
aiokafka and kcat each produce with every compression codec and with headers, consume from
the beginning with exact record equality, and resume a consumer group from its commits."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import kafka_fixtures
import pytest
from kafka_fixtures import KafkaServer

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
CLIENTS = ["kafka-python", "confluent-kafka", "aiokafka"]
PARTITIONS = 2
TIMEOUT = 30.0


@dataclass(frozen=True)
class Rec:
    """A record as every client can express it."""

    partition: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


def records(n: int = 30) -> list[Rec]:
    base = int(time.time() * 1000) - 60_000
    out = []
    for i in range(n):
        key = None if i % 7 == 3 else f"key-{i}".encode()
        value = None if i % 11 == 5 else (f"value-{i}-" + "x" * (i * 13)).encode()
        headers = tuple((f"h{j}", f"{i}.{j}".encode()) for j in range(i % 3))
        out.append(Rec(i % PARTITIONS, key, value, headers, base + i))
    return out


# -- per-client produce and consume ----------------------------------------------------------


def produce_kafka_python(bootstrap: str, topic: str, recs: list[Rec], codec: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        compression_type=None if codec == "none" else codec,
        linger_ms=5,
        acks="all",
    )
    try:
        futures = [
            producer.send(
                topic,
                value=r.value,
                key=r.key,
                headers=list(r.headers),
                partition=r.partition,
                timestamp_ms=r.timestamp,
            )
            for r in recs
        ]
        producer.flush(TIMEOUT)
        for f in futures:
            f.get(TIMEOUT)
    finally:
        producer.close(TIMEOUT)


def consume_kafka_python(bootstrap: str, topic: str, count: int) -> list[tuple]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        consumer.seek_to_beginning()
        got: list[tuple] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got += [
                    (m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp)
                    for m in batch
                ]
        return got
    finally:
        consumer.close()


def produce_confluent(bootstrap: str, topic: str, recs: list[Rec], codec: str) -> None:
    from confluent_kafka import Producer

    errors: list[object] = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    for r in recs:
        producer.produce(
            topic,
            value=r.value,
            key=r.key,
            partition=r.partition,
            timestamp=r.timestamp,
            headers=list(r.headers),
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
    assert producer.flush(TIMEOUT) == 0
    assert not errors


def consume_confluent(bootstrap: str, topic: str, count: int) -> list[tuple]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        got: list[tuple] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            for m in consumer.consume(100, timeout=0.5):
                assert m.error() is None, m.error()
                got.append(
                    (
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        tuple(m.headers() or ()),
                        m.timestamp()[1],
                    )
                )
        return got
    finally:
        consumer.close()


def produce_aiokafka(bootstrap: str, topic: str, recs: list[Rec], codec: str) -> None:
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            compression_type=None if codec == "none" else codec,
            linger_ms=5,
            acks="all",
            enable_idempotence=True,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    topic,
                    value=r.value,
                    key=r.key,
                    partition=r.partition,
                    timestamp_ms=r.timestamp,
                    headers=list(r.headers),
                )
                for r in recs
            ]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(run())


def consume_aiokafka(bootstrap: str, topic: str, count: int) -> list[tuple]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> list[tuple]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
            got: list[tuple] = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < count and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    got += [
                        (m.partition, m.offset, m.key, m.value, tuple(m.headers), m.timestamp)
                        for m in batch
                    ]
            return got
        finally:
            await consumer.stop()

    return asyncio.run(run())


PRODUCERS: dict[str, Callable[[str, str, list[Rec], str], None]] = {
    "kafka-python": produce_kafka_python,
    "confluent-kafka": produce_confluent,
    "aiokafka": produce_aiokafka,
}
CONSUMERS: dict[str, Callable[[str, str, int], list[tuple]]] = {
    "kafka-python": consume_kafka_python,
    "confluent-kafka": consume_confluent,
    "aiokafka": consume_aiokafka,
}


def _skip_missing_codec(client: str, codec: str) -> None:
    if client == "kafka-python" and codec in ("snappy", "zstd"):
        from kafka import codec as kcodec

        available = kcodec.has_snappy() if codec == "snappy" else kcodec.has_zstd()
        if not available:
            pytest.fail(
                f"kafka-python needs {'python-snappy' if codec == 'snappy' else 'zstandard'}"
                " (the [test] extras install it)"
            )


def expected(recs: list[Rec]) -> list[tuple]:
    """What a consumer must see: per partition in produce order, offsets from 0."""
    out, next_offset = [], dict.fromkeys(range(PARTITIONS), 0)
    for r in recs:
        out.append((r.partition, next_offset[r.partition], r.key, r.value, r.headers, r.timestamp))
        next_offset[r.partition] += 1
    return sorted(out, key=lambda t: (t[0], t[1]))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", CLIENTS)
def test_produce_and_consume_every_codec(
    kafka_server: KafkaServer, new_topic, client: str, codec: str
) -> None:
    _skip_missing_codec(client, codec)
    topic = new_topic(partitions=PARTITIONS)
    recs = records()
    PRODUCERS[client](kafka_server.bootstrap, topic, recs, codec)
    got = CONSUMERS[client](kafka_server.bootstrap, topic, len(recs))
    assert sorted(got, key=lambda t: (t[0], t[1])) == expected(recs)


@pytest.mark.parametrize(
    ("producer", "consumer"),
    [
        ("kafka-python", "aiokafka"),
        ("aiokafka", "confluent-kafka"),
        ("confluent-kafka", "kafka-python"),
    ],
)
def test_clients_read_each_others_records(
    kafka_server: KafkaServer, new_topic, producer: str, consumer: str
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    recs = records(12)
    PRODUCERS[producer](kafka_server.bootstrap, topic, recs, "lz4")
    got = CONSUMERS[consumer](kafka_server.bootstrap, topic, len(recs))
    assert sorted(got, key=lambda t: (t[0], t[1])) == expected(recs)


# -- consumer groups: commit and resume ----------------------------------------------------------


def group_consume_kafka_python(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500, max_records=count - len(got)).values():
                got += [m.value for m in batch]
        consumer.commit()
        return got
    finally:
        consumer.close()


def group_consume_confluent(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        consumer.commit(asynchronous=False)
        return got
    finally:
        consumer.close()


def group_consume_aiokafka(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < count and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=500, max_records=count - len(got))
                for batch in batches.values():
                    got += [m.value for m in batch]
            await consumer.commit()
            return got
        finally:
            await consumer.stop()

    return asyncio.run(run())


GROUP_CONSUMERS = {
    "kafka-python": group_consume_kafka_python,
    "confluent-kafka": group_consume_confluent,
    "aiokafka": group_consume_aiokafka,
}


@pytest.mark.parametrize("client", CLIENTS)
def test_group_commit_and_resume(kafka_server: KafkaServer, new_topic, client: str) -> None:
    topic = new_topic(partitions=1)
    recs = [Rec(0, None, f"m{i}".encode(), (), int(time.time() * 1000)) for i in range(10)]
    produce_confluent(kafka_server.bootstrap, topic, recs, "none")
    group = f"group-{topic}"
    first = GROUP_CONSUMERS[client](kafka_server.bootstrap, topic, group, 4)
    assert first == [b"m0", b"m1", b"m2", b"m3"]
    rest = GROUP_CONSUMERS[client](kafka_server.bootstrap, topic, group, 6)
    assert rest == [f"m{i}".encode() for i in range(4, 10)]


# -- kcat ------------------------------------------------------------------------------------


def _kcat() -> str:
    path = shutil.which("kcat")
    if path is None:
        pytest.fail("kcat is not installed (`make test` installs it: apt-get install kcat)")
    return path


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_produce_and_consume(kafka_server: KafkaServer, new_topic, codec: str) -> None:
    kcat = _kcat()
    topic = new_topic(partitions=1)
    lines = [f"k{i}|value {i} {'y' * i}" for i in range(20)]
    subprocess.run(
        [kcat, "-b", kafka_server.bootstrap, "-P", "-t", topic, "-p", "0", "-K", "|",
         "-z", codec, "-H", "origin=kcat", "-H", "codec=" + codec],
        input="\n".join(lines).encode(),
        check=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    out = subprocess.run(
        [kcat, "-b", kafka_server.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J",
         "-q"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    ).stdout  # fmt: skip
    got = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert [(m["offset"], m["key"], m["payload"]) for m in got] == [
        (i, f"k{i}", f"value {i} {'y' * i}") for i in range(20)
    ]
    assert all(m["headers"] == ["origin", "kcat", "codec", codec] for m in got)


def test_kcat_consumer_group_commits(kafka_server: KafkaServer, new_topic) -> None:
    kcat = _kcat()
    topic = new_topic(partitions=1)
    recs = [Rec(0, b"k", f"g{i}".encode(), (), int(time.time() * 1000)) for i in range(5)]
    produce_confluent(kafka_server.bootstrap, topic, recs, "none")
    group = f"kcat-{topic}"
    out = subprocess.run(
        [kcat, "-b", kafka_server.bootstrap, "-G", group, topic, "-e", "-q", "-f", "%s\n",
         "-X", "auto.offset.reset=earliest", "-X", "enable.auto.commit=true",
         "-X", "auto.commit.interval.ms=100"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    ).stdout  # fmt: skip
    assert out.decode().split() == [f"g{i}" for i in range(5)]
    produce_confluent(
        kafka_server.bootstrap, topic, [Rec(0, b"k", b"g5", (), recs[0].timestamp)], "none"
    )
    assert group_consume_confluent(kafka_server.bootstrap, topic, group, 1) == [b"g5"]


# -- admin clients ---------------------------------------------------------------------------


def test_confluent_admin_client(kafka_server: KafkaServer) -> None:
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    topic, group = f"adm-{time.monotonic_ns()}", f"adm-group-{time.monotonic_ns()}"
    admin.create_topics([NewTopic(topic, 3, 1, config={"retention.ms": "1000"})])[topic].result(10)
    admin.create_partitions([NewPartitions(topic, 5)])[topic].result(10)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 5
    resource = ConfigResource("topic", topic)
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "1000" and configs["cleanup.policy"].value == "delete"
    assert configs["max.message.bytes"].is_default
    consumer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(topic, 1, 42, "meta")], asynchronous=False)
    consumer.close()
    assert group in {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    assert admin.describe_consumer_groups([group])[group].result(10).group_id == group
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 1)])
    listed = admin.list_consumer_group_offsets([request])[group].result(10)
    assert [(tp.partition, tp.offset, tp.metadata) for tp in listed.topic_partitions] == [
        (1, 42, "meta")
    ]
    admin.delete_consumer_groups([group])[group].result(10)
    admin.delete_topics([topic])[topic].result(10)
    assert topic not in admin.list_topics(timeout=10).topics


def test_kafka_python_admin_client(kafka_server: KafkaServer) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
    from kafka.structs import OffsetAndMetadata

    admin = KafkaAdminClient(bootstrap_servers=kafka_server.bootstrap)
    topic, group = f"kadm-{time.monotonic_ns()}", f"kadm-group-{time.monotonic_ns()}"
    try:
        admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"retention.ms": "5"})])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        assert configs["topic"][topic]["retention.ms"]["value"] == "5"
        consumer = KafkaConsumer(bootstrap_servers=kafka_server.bootstrap, group_id=group)
        consumer.commit({TopicPartition(topic, 1): OffsetAndMetadata(7, "m", -1)})
        consumer.close()
        assert group in {g["group_id"] for g in admin.list_groups()}
        assert admin.describe_groups([group])[group]["group_state"] == "Empty"
        offsets = admin.list_group_offsets({group: None})[group]
        assert offsets[TopicPartition(topic, 1)].offset == 7
        assert admin.delete_groups([group]) == {group: "OK"}
        admin.delete_topics([topic])
    finally:
        admin.close()


# -- the Python API and Kafka clients share one log ------------------------------------------


def test_python_api_and_kafka_clients_see_each_others_records(
    kafka_server: KafkaServer, new_topic
) -> None:
    import streamhouse

    topic = new_topic(partitions=1)
    produce_confluent(
        kafka_server.bootstrap, topic, [Rec(0, b"k", b"from-kafka", (("h", b"1"),), 1000)], "lz4"
    )
    with streamhouse.connect(kafka_server.data_dir) as sh:
        table = sh.fetch(topic, partition=0)
        assert table["value"].to_pylist() == [b"from-kafka"]
        assert table["key"].to_pylist() == [b"k"]
        sh.produce(topic, [b"from-python"], partition=0, headers={"h": b"2"})
    got = consume_confluent_one_partition(kafka_server.bootstrap, topic, 2)
    assert got == [(b"from-kafka", [("h", b"1")]), (b"from-python", [("h", b"2")])]


def consume_confluent_one_partition(bootstrap: str, topic: str, count: int) -> list[tuple]:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got: list[tuple] = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < count and time.monotonic() < deadline:
        got += [
            (m.value(), m.headers()) for m in consumer.consume(10, timeout=0.5) if not m.error()
        ]
    consumer.close()
    return got


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_log_append_time_topics_carry_the_brokers_time(
    kafka_server: KafkaServer, new_topic, codec: str
) -> None:
    """``message.timestamp.type=LogAppendTime`` (librdkafka's 0052): the broker stamps every
    batch with the time it appends it, whatever the producer set; consumers see that time
    and its type. A topic with the default CreateTime keeps the producer's timestamps."""
    from confluent_kafka import (
        OFFSET_BEGINNING,
        TIMESTAMP_CREATE_TIME,
        TIMESTAMP_LOG_APPEND_TIME,
        Consumer,
        TopicPartition,
    )

    stamped = new_topic(partitions=PARTITIONS, message_timestamp_type="LogAppendTime")
    plain = new_topic(partitions=PARTITIONS)
    recs = records(20)  # the producer's timestamps are a minute old
    before = int(time.time() * 1000)
    for topic in (stamped, plain):
        produce_confluent(kafka_server.bootstrap, topic, recs, codec)
    after = int(time.time() * 1000)

    got = consume_kafka_python(kafka_server.bootstrap, stamped, len(recs))
    assert {(g[0], g[2], g[3]) for g in got} == {(r.partition, r.key, r.value) for r in recs}
    assert len(got) == len(recs) and all(before <= g[5] <= after for g in got)
    kept = consume_kafka_python(kafka_server.bootstrap, plain, len(recs))
    assert sorted(g[5] for g in kept) == sorted(r.timestamp for r in recs)

    from confluent_kafka import Producer

    delivered: list[tuple[int, int]] = []
    producer = Producer({"bootstrap.servers": kafka_server.bootstrap, "compression.type": codec})
    producer.produce(stamped, b"one more", timestamp=1000,
                     on_delivery=lambda _err, msg: delivered.append(msg.timestamp()))  # fmt: skip
    assert producer.flush(TIMEOUT) == 0
    ((kind, when),) = delivered  # the produce response carries the broker's time, as Kafka's
    assert kind == TIMESTAMP_LOG_APPEND_TIME and after <= when <= int(time.time() * 1000)

    consumer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": "unused"})
    try:
        seen: dict[str, set[int]] = {stamped: set(), plain: set()}
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in seen for p in range(PARTITIONS)]
        )
        deadline = time.monotonic() + TIMEOUT
        count = 0
        while count < 2 * len(recs) + 1 and time.monotonic() < deadline:
            for m in consumer.consume(100, timeout=0.5):
                assert m.error() is None, m.error()
                seen[m.topic()].add(m.timestamp()[0])
                count += 1
        assert count == 2 * len(recs) + 1
        assert seen == {stamped: {TIMESTAMP_LOG_APPEND_TIME}, plain: {TIMESTAMP_CREATE_TIME}}
    finally:
        consumer.close()


def test_an_unknown_timestamp_type_is_refused(kafka_server: KafkaServer) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    topic = f"ts-{time.monotonic_ns()}"
    new = NewTopic(topic, 1, config={"message.timestamp.type": "WhenItArrives"})
    with pytest.raises(KafkaException) as raised:
        admin.create_topics([new])[topic].result(10)
    assert raised.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert "expected 'CreateTime' or 'LogAppendTime'" in raised.value.args[0].str()
