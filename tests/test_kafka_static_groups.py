"""Static group membership (KIP-345) with confluent-kafka against ``streamhouse serve``: a
static member that restarts within its session timeout gets its old partitions back and nobody
rebalances; a rolling restart of three under load reads nothing twice; static members that
went away, whatever their last request, expire after the session timeout and the group can
then be deleted (librdkafka's tests 0102 and 0081)."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import kafka_fixtures
import pytest
from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient
from group_members import PARTITIONS, Member, balanced, consumed, produce_round, wait
from kafka_fixtures import KafkaServer

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic


def _restart(member: Member, name: str, tmp_path: Path, args: tuple[str, str, str]) -> Member:
    """Stop a static member's process and start another with its instance id."""
    owned = member.assignment()
    member.stop()
    again = Member(name, "confluent-kafka", "range", args, tmp_path, instance=member.name[0])
    wait(lambda: again.assignment() is not None, f"{name} assigned")
    assert again.assignments() == [owned], "the restarted member gets its old partitions back"
    return again


def _unmoved(member: Member, before: list[set[int]]) -> None:
    """The member saw no assignment since ``before``, except its own close's revoke."""
    assigns = member.assignments()
    assert assigns[: len(before)] == before
    assert assigns[len(before) :] in ([], [set()]), f"{member.name} saw a rebalance: {assigns}"


def test_static_member_rejoins_without_rebalance(
    kafka_server: KafkaServer, new_topic, tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    args = (kafka_server.bootstrap, topic, f"static-{topic}")
    a = Member("a", "confluent-kafka", "range", args, tmp_path, instance="a")
    b = Member("b", "confluent-kafka", "range", args, tmp_path, instance="b")
    members = [a, b]
    try:
        wait(lambda: balanced(members), "a and b sharing six partitions")
        produced = produce_round(kafka_server.bootstrap, topic, 0)
        wait(lambda: produced <= consumed(members), "round 0 consumed")
        before = a.assignments()
        b2 = _restart(b, "b2", tmp_path, args)
        members.append(b2)
        produced |= produce_round(kafka_server.bootstrap, topic, 1)
        wait(lambda: produced <= consumed(members), "round 1 consumed")
        _unmoved(a, before)
        _unmoved(b2, b2.assignments()[:1])
        counts = collections.Counter(r for m in members for r in m.records())
        assert [r for r, n in counts.items() if n > 1] == []
    finally:
        for m in members:
            if m.process.poll() is None:
                m.kill()


@pytest.mark.slow
def test_rolling_restart_of_static_members_under_load(
    kafka_server: KafkaServer, new_topic, tmp_path: Path
) -> None:
    topic = new_topic(partitions=PARTITIONS)
    bootstrap = kafka_server.bootstrap
    args = (bootstrap, topic, f"rolling-{topic}")
    members = [
        Member(n, "confluent-kafka", "range", args, tmp_path, instance=n) for n in ("a", "b", "c")
    ]
    everyone = list(members)
    produced: set[tuple[int, int]] = set()
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        round_no = 0
        while not stop.is_set():
            produced.update(produce_round(bootstrap, topic, round_no))
            round_no += 1
            time.sleep(0.1)

    producer = threading.Thread(target=kafka_fixtures.guarded(load, errors))
    try:
        wait(lambda: balanced(members), "three static members sharing six partitions")
        time.sleep(1.0)  # no rebalance still under way
        assert balanced(members)
        before = {m.name: m.assignments() for m in members}
        producer.start()
        for i, member in enumerate(list(members)):
            again = _restart(member, f"{member.name}2", tmp_path, args)
            members[i] = again
            everyone.append(again)
        stop.set()
        producer.join()
        assert not errors, errors
        wait(lambda: produced <= consumed(everyone), "everything produced consumed")
        for member in everyone:
            _unmoved(member, before.get(member.name, member.assignments()[:1]))
        counts = collections.Counter(r for m in everyone for r in m.records())
        assert [r for r, n in counts.items() if n > 1] == [], "nothing consumed twice"
        assert set(counts) == produced
    finally:
        stop.set()
        for m in everyone:
            if m.process.poll() is None:
                m.kill()


def _delete_group(admin: AdminClient, group: str) -> str | None:
    """None once DeleteGroups succeeded, else the error's name."""
    try:
        admin.delete_consumer_groups([group], request_timeout=10)[group].result()
    except KafkaException as exc:
        return exc.args[0].name()
    return None


def test_static_members_expire_after_session_timeout(kafka_server: KafkaServer, new_topic) -> None:
    """Two stable static members stop polling; a third joins and is left parked in JoinGroup
    (the other two never rejoin); all three close. Static members do not leave on close, so the
    group is not empty at first; after session.timeout.ms every one of them has expired, the
    parked one too, and DeleteGroups succeeds (0081 got NON_EMPTY_GROUP 6 s after closing)."""
    session_ms = 5000
    topic = new_topic(partitions=2)
    group = f"expire-{topic}"

    def consumer(instance: str) -> Consumer:
        c = Consumer(
            {
                "bootstrap.servers": kafka_server.bootstrap,
                "group.id": group,
                "group.instance.id": instance,
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": 500,
                "max.poll.interval.ms": 60_000,
            }
        )
        c.subscribe([topic], on_assign=lambda c, ps: None)
        return c

    a, b = consumer("a"), consumer("b")
    deadline = time.monotonic() + 30
    while not (a.assignment() and b.assignment()):
        assert time.monotonic() < deadline, "a and b never assigned"
        a.poll(0.2)
        b.poll(0.2)
    c = consumer("c")
    c.poll(1.0)  # joins; parked until a and b rejoin, which they do only when polled
    closing = time.monotonic()
    for each in (c, a, b):
        each.close()
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    assert _delete_group(admin, group) == "NON_EMPTY_GROUP", "static members stay after close"
    while (error := _delete_group(admin, group)) is not None:
        assert error == "NON_EMPTY_GROUP", error
        assert time.monotonic() - closing < session_ms / 1000 + 2.5, "members never expired"
        time.sleep(0.25)
    assert time.monotonic() - closing >= session_ms / 1000 - 1.0
