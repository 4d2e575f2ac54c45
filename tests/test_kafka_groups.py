"""A consumer group of three processes over a 6-partition topic: every record consumed,
partitions reassigned when one member leaves and when one is killed, nothing lost, and with
committed offsets nothing consumed twice after a clean rebalance."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import kafka_fixtures
import pytest
from group_members import PARTITIONS, Member, balanced, consumed, produce_round, wait
from kafka_fixtures import KafkaServer

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic


@pytest.mark.slow
@pytest.mark.parametrize(
    ("client", "strategy"),
    [
        ("confluent-kafka", "range"),
        ("confluent-kafka", "cooperative-sticky"),
        ("kafka-python", "range"),
        ("aiokafka", "roundrobin"),
    ],
)
def test_three_members_rebalance_on_leave_and_kill(
    kafka_server: KafkaServer, new_topic, tmp_path: Path, client: str, strategy: str
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    group = f"g3-{topic}"
    bootstrap = kafka_server.bootstrap
    produced = produce_round(bootstrap, topic, 0)
    args = (bootstrap, topic, group)
    members = [Member(n, client, strategy, args, tmp_path) for n in "abc"]
    a, b, c = members
    try:
        wait(lambda: balanced(members), "three members sharing six partitions")
        wait(lambda: produced <= consumed(members), "round 0 consumed")

        # a leaves cleanly: b and c take over its partitions, nothing is read twice
        a.stop()
        produced |= produce_round(bootstrap, topic, 1)
        wait(lambda: balanced([b, c]), "b and c sharing six partitions")
        wait(lambda: produced <= consumed(members), "round 1 consumed")
        counts = collections.Counter(r for m in members for r in m.records())
        assert [r for r, n in counts.items() if n > 1] == []

        # b is killed: after its session times out, c owns everything; nothing is lost
        before_kill = set(b.records())
        b.kill()
        produced |= produce_round(bootstrap, topic, 2)
        wait(lambda: c.assignment() == set(range(PARTITIONS)), "c owning all partitions")
        wait(lambda: produced <= consumed(members), "round 2 consumed")
        counts = collections.Counter(r for m in members for r in m.records())
        twice = {r for r, n in counts.items() if n > 1}
        assert twice <= before_kill, "only records the killed member had not committed repeat"
        assert consumed(members) == produced
    finally:
        for m in members:
            if m.process.poll() is None:
                m.kill()


def test_consumers_started_together_share_the_first_generation(tmp_path: Path) -> None:
    """``group_initial_rebalance_delay_ms`` (Kafka's ``group.initial.rebalance.delay.ms``, 3 s
    in Kafka and in librdkafka's own suite, whose 0113 and 0118 rely on it): two consumers
    subscribing one after the other land in one generation, each assigned once, nobody
    revoked."""
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic

    delay_s = 2.0
    env = {"STREAMHOUSE_GROUP_INITIAL_REBALANCE_DELAY_MS": str(int(delay_s * 1000))}
    server = KafkaServer(tmp_path / "data", env=env).start()
    consumers: list = []
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        admin.create_topics([NewTopic("shared", 4)])["shared"].result(30)
        assigned: dict[int, list[int]] = {0: [], 1: []}
        revoked: dict[int, int] = {0: 0, 1: 0}
        started = time.monotonic()
        first_assignment: list[float] = []
        for n in (0, 1):
            consumer = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "together"})

            def on_assign(_c, parts, n=n) -> None:
                first_assignment.append(time.monotonic())
                assigned[n].append(len(parts))

            def on_revoke(_c, parts, n=n) -> None:
                revoked[n] += bool(parts)

            consumer.subscribe(["shared"], on_assign=on_assign, on_revoke=on_revoke)
            consumers.append(consumer)
        deadline = time.monotonic() + 60
        while not (assigned[0] and assigned[1]):
            assert time.monotonic() < deadline, f"not both assigned: {assigned}"
            for consumer in consumers:
                consumer.poll(0.2)
        for _ in range(10):  # a second rebalance would show here
            for consumer in consumers:
                consumer.poll(0.2)
        assert assigned == {0: [2], 1: [2]} and revoked == {0: 0, 1: 0}
        assert min(first_assignment) - started >= delay_s  # the first generation waited
    finally:
        for consumer in consumers:
            consumer.close()
        assert server.stop() == 0, server.log()
