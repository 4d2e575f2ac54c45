"""A topic deleted and re-created under a consumer group (librdkafka's tests 0107 and 0113):
the re-created topic has a new topic id (Metadata v10+, KIP-516), the consumer goes on with
it, its commits land, and ``close()`` returns at once."""

from __future__ import annotations

import datetime
import time
import uuid

import kafka_fixtures
import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_fixtures import KafkaServer, RawClient

from streamhouse.kafka.wire import messages
from streamhouse.log.records import decode_batches

kafka_server = kafka_fixtures.kafka_server


def _produce(server: KafkaServer, topic: str, values: list[bytes], partitions: int) -> None:
    producer = Producer({"bootstrap.servers": server.bootstrap})
    for i, value in enumerate(values):
        producer.produce(topic, value, partition=i % partitions)
    assert producer.flush(10) == 0


def _consume_until(consumer: Consumer, wanted: set[bytes], seen: list[bytes], errors: list) -> None:
    deadline = time.monotonic() + 30
    while not wanted <= set(seen):
        assert time.monotonic() < deadline, f"missing {sorted(wanted - set(seen))[:5]}"
        for m in consumer.consume(100, timeout=0.2):
            if m.error() is None:
                seen.append(m.value())
            else:
                errors.append(m.error())
        consumer.commit(asynchronous=True) if seen else None


def _metadata_v12(server: KafkaServer, name: str | None, topic_id: uuid.UUID) -> tuple:
    """(error code, name, topic id, partition count) of one topic asked by name or by id."""
    module = messages(3, 12, False)
    topic = module.MetadataRequestTopic(topic_id=topic_id, name=name)
    with RawClient(server.bootstrap) as client:
        answer = client.request(
            3,
            12,
            topics=(topic,),
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        )
    (found,) = answer.topics
    return found.error_code, found.name, found.topic_id, len(found.partitions)


def _topic_id(admin: AdminClient, topic: str) -> str:
    return str(admin.describe_topics(TopicCollection([topic]))[topic].result(10).topic_id)


def test_delete_and_recreate_subscribed_topic(kafka_server: KafkaServer) -> None:
    topic = "recreated"
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    admin.create_topics([NewTopic(topic, 4)])[topic].result(10)
    old_id = _topic_id(admin, topic)
    error, _, old_uuid, count = _metadata_v12(kafka_server, topic, uuid.UUID(int=0))
    assert (error, count) == (0, 4) and old_uuid != uuid.UUID(int=0)
    assert _metadata_v12(kafka_server, None, old_uuid)[:2] == (0, topic)
    before = [f"old-{i}".encode() for i in range(40)]
    _produce(kafka_server, topic, before, 4)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_server.bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
            "session.timeout.ms": 6000,
        }
    )
    seen: list[bytes] = []
    errors: list[KafkaError] = []
    consumer.subscribe([topic])
    try:
        _consume_until(consumer, set(before), seen, errors)
        consumer.commit(asynchronous=False)

        admin.delete_topics([topic])[topic].result(10)
        for _ in range(10):  # the consumer hears the topic is gone
            consumer.poll(0.2)
        admin.create_topics([NewTopic(topic, 2)])[topic].result(10)
        assert _topic_id(admin, topic) not in (old_id, "AAAAAAAAAAAAAAAAAAAAAA")
        error, _, new_uuid, count = _metadata_v12(kafka_server, topic, uuid.UUID(int=0))
        assert (error, count) == (0, 2) and new_uuid not in (old_uuid, uuid.UUID(int=0))
        assert _metadata_v12(kafka_server, None, old_uuid)[0] == 100  # UNKNOWN_TOPIC_ID
        after = [f"new-{i}".encode() for i in range(20)]
        _produce(kafka_server, topic, after, 2)
        _consume_until(consumer, set(after), seen, errors)
        consumer.commit(asynchronous=False)
        committed = consumer.committed([*consumer.assignment()], timeout=10)
        assert sorted((tp.partition, tp.offset) for tp in committed) == [(0, 10), (1, 10)]
    finally:
        started = time.monotonic()
        consumer.close()
        closing = time.monotonic() - started
    assert closing < 3.0, f"close took {closing:.1f} s"
    assert seen.count(b"new-0") == 1


def _fetch_v13(server: KafkaServer, topic_id: uuid.UUID) -> tuple[uuid.UUID, int, list[bytes]]:
    """(topic id answered, error code, values) of partition 0 fetched from offset 0 by id."""
    module = messages(1, 13, False)
    partition = module.FetchPartition(
        partition=0,
        current_leader_epoch=-1,
        fetch_offset=0,
        last_fetched_epoch=-1,
        log_start_offset=-1,
        partition_max_bytes=1 << 20,
    )
    with RawClient(server.bootstrap) as client:
        answer = client.request(
            1,
            13,
            replica_id=-1,
            max_wait=datetime.timedelta(milliseconds=100),
            min_bytes=1,
            max_bytes=1 << 20,
            isolation_level=0,
            session_id=0,
            session_epoch=-1,
            topics=(module.FetchTopic(topic_id=topic_id, partitions=(partition,)),),
            forgotten_topics_data=(),
            rack_id="",
        )
    (topic,) = answer.responses
    (data,) = topic.partitions
    values = decode_batches(data.records).column("value").to_pylist() if data.records else []
    return topic.topic_id, data.error_code, values


def test_fetch_v13_names_topics_by_id_and_refuses_a_deleted_ones_id(
    kafka_server: KafkaServer,
) -> None:
    """Fetch v13 (KIP-516): the topic is asked and answered by its id; after the topic is
    deleted and re-created under the same name, its old id gets UNKNOWN_TOPIC_ID, never the
    new topic's records, and the new id reads the new records."""
    topic = "fetched-by-id"
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    admin.create_topics([NewTopic(topic, 1)])[topic].result(10)
    _produce(kafka_server, topic, [b"old-0", b"old-1"], 1)
    old_uuid = _metadata_v12(kafka_server, topic, uuid.UUID(int=0))[2]
    assert _fetch_v13(kafka_server, old_uuid) == (old_uuid, 0, [b"old-0", b"old-1"])
    admin.delete_topics([topic])[topic].result(10)
    admin.create_topics([NewTopic(topic, 1)])[topic].result(10)
    _produce(kafka_server, topic, [b"new-0"], 1)
    new_uuid = _metadata_v12(kafka_server, topic, uuid.UUID(int=0))[2]
    assert new_uuid != old_uuid
    assert _fetch_v13(kafka_server, old_uuid) == (old_uuid, 100, [])  # UNKNOWN_TOPIC_ID
    assert _fetch_v13(kafka_server, new_uuid) == (new_uuid, 0, [b"new-0"])


def test_create_topics_v7_returns_the_id_and_delete_topics_v6_deletes_by_it(
    kafka_server: KafkaServer,
) -> None:
    """CreateTopics v7 answers each new topic's id, partitions and configs; DeleteTopics v6
    deletes a topic named by its id alone, and answers UNKNOWN_TOPIC_ID for an id no topic
    has (the deleted topic's, asked again)."""
    create = messages(19, 7, False)
    delete = messages(20, 6, False)
    with RawClient(kafka_server.bootstrap) as client:
        created = client.request(
            19,
            7,
            topics=(
                create.CreatableTopic(
                    name="by-id",
                    num_partitions=3,
                    replication_factor=-1,
                    assignments=(),
                    configs=(create.CreatableTopicConfig(name="retention.ms", value="60000"),),
                ),
            ),
            timeout=datetime.timedelta(seconds=10),
            validate_only=False,
        )
        (result,) = created.topics
        assert (result.error_code, result.num_partitions, result.replication_factor) == (0, 3, 1)
        assert [(c.name, c.value) for c in result.configs] == [("retention.ms", "60000")]
        assert _metadata_v12(kafka_server, "by-id", uuid.UUID(int=0))[2] == result.topic_id

        def delete_by_id() -> tuple:
            answer = client.request(
                20,
                6,
                topics=(delete.DeleteTopicState(name=None, topic_id=result.topic_id),),
                timeout=datetime.timedelta(seconds=10),
            )
            (deleted,) = answer.responses
            return deleted.error_code, deleted.name, deleted.topic_id

        assert delete_by_id() == (0, "by-id", result.topic_id)
        assert delete_by_id() == (100, None, result.topic_id)  # UNKNOWN_TOPIC_ID
        v4 = messages(19, 4, False)  # what librdkafka sends: no configs in the answer
        older = client.request(
            19,
            4,
            topics=(
                v4.CreatableTopic(
                    name="by-name",
                    num_partitions=1,
                    replication_factor=1,
                    assignments=(),
                    configs=(v4.CreatableTopicConfig(name="retention.ms", value="60000"),),
                ),
            ),
            timeout=datetime.timedelta(seconds=10),
            validate_only=False,
        )
        assert [(t.name, t.error_code) for t in older.topics] == [("by-name", 0)]
    assert _metadata_v12(kafka_server, "by-id", uuid.UUID(int=0))[0] == 3  # gone


def _await_assignment(consumer: Consumer, wanted: set[tuple[str, int]]) -> None:
    deadline = time.monotonic() + 30
    while {(tp.topic, tp.partition) for tp in consumer.assignment()} != wanted:
        assert time.monotonic() < deadline, f"assignment {consumer.assignment()} != {wanted}"
        consumer.poll(0.2)


def test_subscribed_topics_deleted_one_by_one(kafka_server: KafkaServer) -> None:
    """librdkafka's 0045 topic_remove: a group member subscribed to two topics keeps the
    other's partitions when one is deleted and ends with none when both are; a commit for the
    deleted topic gets UNKNOWN_TOPIC_OR_PARTITION as from Kafka; ``close()`` returns at once."""
    first, second = "removed-first", "removed-second"
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    for topic, partitions in ((first, 3), (second, 2)):
        admin.create_topics([NewTopic(topic, partitions)])[topic].result(10)
        _produce(kafka_server, topic, [f"{topic}-{i}".encode() for i in range(6)], partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_server.bootstrap,
            "group.id": "g-removed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([first, second])
    try:
        _await_assignment(consumer, {(first, p) for p in range(3)} | {(second, 0), (second, 1)})
        admin.delete_topics([first])[first].result(10)
        _await_assignment(consumer, {(second, 0), (second, 1)})
        with pytest.raises(KafkaException) as refused:
            consumer.commit(offsets=[TopicPartition(first, 0, 1)], asynchronous=False)
        assert refused.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        consumer.commit(offsets=[TopicPartition(second, 0, 1)], asynchronous=False)
        (kept,) = consumer.committed([TopicPartition(second, 0)], timeout=10)
        assert kept.offset == 1
        admin.delete_topics([second])[second].result(10)
        _await_assignment(consumer, set())
    finally:
        started = time.monotonic()
        consumer.close()
        closing = time.monotonic() - started
    assert closing < 3.0, f"close took {closing:.1f} s"
