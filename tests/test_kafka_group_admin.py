"""The group admin APIs through real clients against ``streamhouse serve``: ListGroups v4
with states and a state filter (KIP-518), DescribeGroups with authorized operations and static
members, OffsetDelete (KIP-496) and LeaveGroup v3+ by instance id (librdkafka's test 0081)."""

from __future__ import annotations

import time

import kafka_fixtures
import pytest
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AclOperation, AdminClient
from kafka import KafkaAdminClient
from kafka import TopicPartition as KafkaTopicPartition
from kafka.admin import MemberToRemove
from kafka.errors import GroupIdNotFoundError
from kafka_fixtures import KafkaServer

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic


def _consumer(server: KafkaServer, group: str, **extra: object) -> ConfluentConsumer:
    return ConfluentConsumer(
        {"bootstrap.servers": server.bootstrap, "group.id": group, **extra}  # type: ignore[dict-item]
    )


def _committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    request = [ConsumerGroupTopicPartitions(group)]
    result = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}


def _states(admin: AdminClient, states: set[ConsumerGroupState] | None = None) -> dict:
    kwargs = {"states": states} if states is not None else {}
    listed = admin.list_consumer_groups(request_timeout=10, **kwargs).result()
    assert not listed.errors, listed.errors
    return {g.group_id: g.state for g in listed.valid}


def test_group_admin_apis(kafka_server: KafkaServer, new_topic) -> None:
    subscribed, other = new_topic(partitions=2), new_topic(partitions=1)
    stable, empty = f"stable-{subscribed}", f"empty-{subscribed}"
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})

    # a group with offsets and no members (Empty), and a static member's group (Stable)
    offsets_only = _consumer(kafka_server, empty)
    offsets_only.commit(offsets=[TopicPartition(subscribed, 0, 5)], asynchronous=False)
    offsets_only.close()
    member = _consumer(
        kafka_server, stable, **{"group.instance.id": "s1", "session.timeout.ms": 30_000}
    )
    member.subscribe([subscribed])
    deadline = time.monotonic() + 30
    while len(member.assignment()) < 2:
        assert time.monotonic() < deadline, "never assigned"
        member.poll(0.2)
    member.commit(
        offsets=[TopicPartition(subscribed, 0, 3), TopicPartition(other, 0, 7)], asynchronous=False
    )
    try:
        # ListGroups v4: states, and the filter
        states = _states(admin)
        assert states[stable] is ConsumerGroupState.STABLE
        assert states[empty] is ConsumerGroupState.EMPTY
        only_stable = _states(admin, {ConsumerGroupState.STABLE})
        assert stable in only_stable and empty not in only_stable
        only_empty = _states(admin, {ConsumerGroupState.EMPTY})
        assert empty in only_empty and stable not in only_empty

        # DescribeGroups with authorized operations: the static member by its instance id
        described = admin.describe_consumer_groups(
            [stable, empty], include_authorized_operations=True, request_timeout=10
        )
        live = described[stable].result()
        assert live.state is ConsumerGroupState.STABLE
        assert [m.group_instance_id for m in live.members] == ["s1"]
        assigned = {(tp.topic, tp.partition) for tp in live.members[0].assignment.topic_partitions}
        assert assigned == {(subscribed, 0), (subscribed, 1)}
        wanted = {AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE}
        assert set(live.authorized_operations) == wanted
        assert described[empty].result().state is ConsumerGroupState.EMPTY

        # OffsetDelete: a live group keeps the offsets of topics it subscribes to
        kadmin = KafkaAdminClient(bootstrap_servers=kafka_server.bootstrap)
        try:
            answer = kadmin.delete_group_offsets(
                stable, [KafkaTopicPartition(subscribed, 0), KafkaTopicPartition(other, 0)]
            )
            errors = {(tp.topic, tp.partition): e.__name__ for tp, e in answer.items()}
            assert errors == {
                (subscribed, 0): "GroupSubscribedToTopicError",
                (other, 0): "NoError",
            }
            assert _committed(admin, stable) == {(subscribed, 0): 3}
            answer = kadmin.delete_group_offsets(empty, [KafkaTopicPartition(subscribed, 0)])
            assert [e.__name__ for e in answer.values()] == ["NoError"]
            assert _committed(admin, empty) == {}
            with pytest.raises(GroupIdNotFoundError):
                kadmin.delete_group_offsets(f"none-{subscribed}", [KafkaTopicPartition(other, 0)])

            # LeaveGroup v3+: the static member removed by its instance id; a wrong member id
            # for the instance is fenced
            fenced = kadmin.remove_group_members(
                stable, [MemberToRemove(member_id="someone-else", group_instance_id="s1")]
            )
            assert [e.__name__ for e in fenced.values()] == ["FencedInstanceIdError"]
            removed = kadmin.remove_group_members(stable, [MemberToRemove(group_instance_id="s1")])
            assert [e.__name__ for e in removed.values()] == ["NoError"]
        finally:
            kadmin.close()
        after = admin.describe_consumer_groups([stable], request_timeout=10)[stable].result()
        assert after.members == [] and after.state is ConsumerGroupState.EMPTY
    finally:
        member.close()
