"""A consumer group of three processes over a 6-partition topic: every record consumed,
partitions reassigned when one member leaves and when one is killed, nothing lost, and with
committed offsets nothing consumed twice after a clean rebalance."""

from __future__ import annotations

import collections
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
