"""A consumer group of three processes over a 6-partition topic: every record consumed,
partitions reassigned when one member leaves and when one is killed, nothing lost, and with
committed offsets nothing consumed twice after a clean rebalance."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

import kafka_fixtures
import pytest
from kafka_fixtures import KafkaServer

from streamhouse.log.records import build_batch

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic

MEMBER = Path(__file__).with_name("kafka_group_member.py")
PARTITIONS = 6
PER_ROUND = 40  # records per partition per round


class Member:
    """A group member process and what it reported."""

    def __init__(
        self, name: str, client: str, strategy: str, args: tuple[str, str, str], tmp: Path
    ):
        bootstrap, topic, group = args
        self.name = name
        self.out = tmp / f"{name}.out"
        self.out.touch()
        self.process = subprocess.Popen(
            [sys.executable, str(MEMBER), client, bootstrap, topic, group, str(self.out), strategy],
            stderr=subprocess.DEVNULL,
        )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def assignment(self) -> set[int] | None:
        """The partitions this member last reported owning (None before any assignment)."""
        assigns = [line for line in self.lines() if line.startswith("assign")]
        if not assigns:
            return None
        text = assigns[-1].removeprefix("assign").strip()
        return {int(p) for p in text.split(",")} if text else set()

    def records(self) -> list[tuple[int, int]]:
        return [
            (int(p), int(o))
            for _, p, o in (ln.split() for ln in self.lines() if ln.startswith("rec"))
        ]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _produce_round(bootstrap: str, topic: str, round_no: int) -> set[tuple[int, int]]:
    """PER_ROUND records to every partition; their (partition, offset)s."""
    from kafka_fixtures import RawClient, produce_request

    produced = set()
    with RawClient(bootstrap) as client:
        for partition in range(PARTITIONS):
            values = [f"r{round_no}-p{partition}-{i}".encode() for i in range(PER_ROUND)]
            resp = client.request(0, 8, **produce_request(topic, partition, build_batch(values)))
            part = resp.responses[0].partition_responses[0]
            assert part.error_code == 0
            produced |= {(partition, part.base_offset + i) for i in range(PER_ROUND)}
    return produced


def _wait(condition, what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _balanced(members: list[Member]) -> bool:
    owned = [m.assignment() for m in members]
    if any(o is None or not o for o in owned):
        return False
    union = set().union(*owned)  # type: ignore[arg-type]
    return union == set(range(PARTITIONS)) and sum(len(o) for o in owned) == PARTITIONS  # type: ignore[arg-type]


def _consumed(members: list[Member]) -> set[tuple[int, int]]:
    return {r for m in members for r in m.records()}


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
    produced = _produce_round(bootstrap, topic, 0)
    args = (bootstrap, topic, group)
    members = [Member(n, client, strategy, args, tmp_path) for n in "abc"]
    a, b, c = members
    try:
        _wait(lambda: _balanced(members), "three members sharing six partitions")
        _wait(lambda: produced <= _consumed(members), "round 0 consumed")

        # a leaves cleanly: b and c take over its partitions, nothing is read twice
        a.stop()
        produced |= _produce_round(bootstrap, topic, 1)
        _wait(lambda: _balanced([b, c]), "b and c sharing six partitions")
        _wait(lambda: produced <= _consumed(members), "round 1 consumed")
        counts = collections.Counter(r for m in members for r in m.records())
        assert [r for r, n in counts.items() if n > 1] == []

        # b is killed: after its session times out, c owns everything; nothing is lost
        before_kill = set(b.records())
        b.kill()
        produced |= _produce_round(bootstrap, topic, 2)
        _wait(lambda: c.assignment() == set(range(PARTITIONS)), "c owning all partitions")
        _wait(lambda: produced <= _consumed(members), "round 2 consumed")
        counts = collections.Counter(r for m in members for r in m.records())
        twice = {r for r, n in counts.items() if n > 1}
        assert twice <= before_kill, "only records the killed member had not committed repeat"
        assert _consumed(members) == produced
    finally:
        for m in members:
            if m.process.poll() is None:
                m.kill()
