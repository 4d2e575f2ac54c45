"""Unit tests of the Kafka protocol layer that need no server: framing, ApiVersions, the
group coordinator state machine and idempotent sequence checks."""

from __future__ import annotations

import asyncio
import struct

import pytest
from kio.serial import entity_reader

from streamhouse.errors import ProtocolError
from streamhouse.kafka.groups import GroupCoordinator, GroupState
from streamhouse.kafka.producers import ProducerRegistry
from streamhouse.kafka.server import HANDLERS, RAW_HANDLERS
from streamhouse.kafka.versions import SUPPORTED, unsupported_api_versions
from streamhouse.kafka.wire import ErrorCode, encode_response, parse_request, response_class
from streamhouse.log.records import build_batch, read_header

PROTOCOLS = (("range", b"m1"), ("roundrobin", b"m2"))


FLEXIBLE = {
    *((18, 3), (15, 5), (16, 3), (16, 4), (42, 2), (3, 9), (3, 10), (3, 11), (3, 12)),
    *((65, 0), (66, 0), (50, 0), (51, 0)),
    *((22, 2), (22, 3), (22, 4)),
    *((1, 12), (1, 13), (19, 5), (19, 6), (19, 7), (20, 4), (20, 5), (20, 6)),
    *((9, 6), (9, 7)),
}
"""The flexible versions advertised: ApiVersions v3, and the group admin APIs up to Kafka 3.x's
and Metadata, Fetch, CreateTopics and DeleteTopics (the features clients ask for by version:
group states, authorized operations, topic ids); DescribeTransactions, ListTransactions and the
SCRAM credential APIs (KIP-554), flexible from their first version; InitProducerId v2-v4 (v3: a
producer bumps its own epoch, KIP-360); OffsetFetch v6-v7 (librdkafka marks "all partitions"
only there; v7: require_stable, KIP-447)."""


def test_every_supported_api_has_a_handler_and_kio_classes() -> None:
    assert set(HANDLERS) | set(RAW_HANDLERS) == set(SUPPORTED)
    assert not set(HANDLERS) & set(RAW_HANDLERS)
    for key, (low, high) in SUPPORTED.items():
        for version in range(low, high + 1):
            flexible = response_class(key, version).__flexible__
            assert flexible == ((key, version) in FLEXIBLE)  # else prefer non-flexible versions


def test_unsupported_api_versions_answer_is_v0_with_error_35() -> None:
    frame = encode_response(7, unsupported_api_versions(), header_v0=True)
    (length, correlation) = struct.unpack_from(">ii", frame)
    assert length == len(frame) - 4 and correlation == 7
    cls = type(unsupported_api_versions())
    body, used = entity_reader(cls)(frame, 8)
    assert used == len(frame) - 8
    assert body.error_code == ErrorCode.unsupported_version
    assert {k.api_key: (k.min_version, k.max_version) for k in body.api_keys} == SUPPORTED


@pytest.mark.parametrize("frame", [b"", b"\x00\x03", b"\x00\x03\x00\x05\x00\x00\x00\x01\xff"])
def test_parse_request_rejects_garbage(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_request(frame)


def _join(
    coordinator: GroupCoordinator,
    member_id: str = "",
    protocols=PROTOCOLS,
    session_ms: int = 10_000,
    instance: str | None = None,
) -> asyncio.Future:
    return coordinator.join(
        "g", member_id, instance, "client", "/127.0.0.1", session_ms, 10_000, "consumer", protocols
    )


async def _stable_pair(groups: GroupCoordinator) -> tuple:
    """Static members a (the leader) and b, stable in generation 2 with p0 and p1."""
    a = await _join(groups, instance="a")
    b_join = _join(groups, instance="b")
    a = await _join(groups, a.member_id, instance="a")
    b = await b_join
    b_sync = groups.sync("g", 2, b.member_id, {}, "b")
    await groups.sync("g", 2, a.member_id, {a.member_id: b"p0", b.member_id: b"p1"}, "a")
    assert await b_sync == (ErrorCode.none, b"p1")
    return a, b


def test_static_member_rejoining_keeps_its_assignment_without_rebalance() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        a, b = await _stable_pair(groups)
        back = await _join(groups, instance="b")  # b restarted: no member id
        assert back.error is ErrorCode.none and back.generation == 2
        assert back.member_id != b.member_id and back.members == ()
        assert groups.groups["g"].state is GroupState.STABLE
        assert await groups.sync("g", 2, back.member_id, {}, "b") == (ErrorCode.none, b"p1")
        assert groups.heartbeat("g", 2, a.member_id, "a") is ErrorCode.none
        # the old process of b is fenced wherever it shows up
        assert groups.heartbeat("g", 2, b.member_id, "b") is ErrorCode.fenced_instance_id
        stale = await _join(groups, b.member_id, instance="b")
        assert stale.error is ErrorCode.fenced_instance_id
        assert groups.validate_commit("g", 2, b.member_id, group_instance_id="b") is (
            ErrorCode.fenced_instance_id
        )
        # the leader restarted: still the leader, same generation, the members to assign
        leader = await _join(groups, instance="a")
        assert leader.generation == 2 and leader.leader == leader.member_id
        assert len(leader.members) == 2
        # a changed subscription rebalances
        changed = _join(groups, instance="b", protocols=(("range", b"other"),))
        await asyncio.sleep(0)
        assert groups.groups["g"].state is GroupState.PREPARING_REBALANCE
        assert groups.heartbeat("g", 2, leader.member_id, "a") is ErrorCode.rebalance_in_progress
        again = await _join(groups, leader.member_id, instance="a")
        assert again.generation == 3 and (await changed).generation == 3

    asyncio.run(scenario())


def test_static_members_leave_by_instance_id_and_expire_whatever_they_awaited() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        a, b = await _stable_pair(groups)
        assert groups.leave("g", [("other", "b")])[0][2] is ErrorCode.fenced_instance_id
        assert groups.leave("g", [("", "b")])[0][2] is ErrorCode.none
        assert groups.leave("g", [("", "b")])[0][2] is ErrorCode.unknown_member_id
        # a rejoins and its connection closes while it is parked: it expires all the same
        parked = _join(groups, a.member_id, instance="a")
        c = _join(groups, instance="c")
        await asyncio.sleep(0)
        assert not parked.done() or parked.result().error is ErrorCode.none
        parked.cancel()
        c.cancel()
        group = groups.groups["g"]
        groups.expire(now=max(m.deadline for m in group.members.values()) + 0.1)
        assert group.members == {} and group.state is GroupState.EMPTY

    asyncio.run(scenario())


def test_initial_rebalance_delay_waits_for_members_joining_together_as_kafka() -> None:
    """``group.initial.rebalance.delay.ms``: an empty group's first generation waits the
    delay; a member joining a brand-new group during it extends the wait once more (Kafka's
    InitialDelayedJoin); then both are in generation 1, nobody rebalances twice."""

    async def scenario() -> None:
        groups = GroupCoordinator(initial_rebalance_delay_ms=1000)
        first = _join(groups)
        start = groups.groups["g"].not_before - 1.0
        second = _join(groups)
        await asyncio.sleep(0)
        groups.expire(now=start + 0.5)
        assert not first.done() and not second.done()  # within the delay
        groups.expire(now=start + 1.01)  # the delay ends; a member came meanwhile: once more
        assert not first.done() and not second.done()
        assert groups.groups["g"].not_before == pytest.approx(start + 2.01)
        groups.expire(now=start + 2.02)
        a, b = await first, await second
        assert a.generation == b.generation == 1 and len(a.members) == 2
        # a group that was stable and emptied waits the delay, but is never extended again
        groups.leave("g", [(a.member_id, None), (b.member_id, None)])
        again = _join(groups)
        later = groups.groups["g"].not_before
        _join(groups)
        await asyncio.sleep(0)
        groups.expire(now=later + 0.01)
        assert (await again).generation == 3  # the empty group's generation, then this one

    asyncio.run(scenario())


def test_no_initial_rebalance_delay_starts_the_first_generation_at_once() -> None:
    async def scenario() -> None:
        joined = await asyncio.wait_for(_join(GroupCoordinator(0)), 1)
        assert joined.generation == 1

    asyncio.run(scenario())


def test_group_first_member_becomes_leader_and_stable_after_sync() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        joined = await _join(groups)
        assert joined.error is ErrorCode.none
        assert joined.generation == 1 and joined.leader == joined.member_id
        assert joined.protocol_name == "range"
        assert [m[0] for m in joined.members] == [joined.member_id]
        assert groups.groups["g"].state is GroupState.COMPLETING_REBALANCE
        error, assignment = await groups.sync("g", 1, joined.member_id, {joined.member_id: b"A"})
        assert (error, assignment) == (ErrorCode.none, b"A")
        assert groups.groups["g"].state is GroupState.STABLE
        assert groups.heartbeat("g", 1, joined.member_id) is ErrorCode.none

    asyncio.run(scenario())


def test_group_second_member_triggers_rebalance_and_both_get_assignments() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        a = await _join(groups)
        await groups.sync("g", 1, a.member_id, {a.member_id: b"all"})
        b_join = _join(groups)
        await asyncio.sleep(0)
        assert not b_join.done()
        assert groups.heartbeat("g", 1, a.member_id) is ErrorCode.rebalance_in_progress
        a2 = await _join(groups, a.member_id)
        b = await b_join
        assert a2.generation == b.generation == 2
        assert a2.leader == a.member_id and len(a2.members) == 2 and b.members == ()
        b_sync = groups.sync("g", 2, b.member_id, {})
        await asyncio.sleep(0)
        assert not b_sync.done()
        await groups.sync("g", 2, a.member_id, {a.member_id: b"p0", b.member_id: b"p1"})
        assert await b_sync == (ErrorCode.none, b"p1")

    asyncio.run(scenario())


def test_group_leave_and_session_timeout_rebalance() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        a = await _join(groups, session_ms=1_000)
        b_join = _join(groups, session_ms=1_000)
        a = await _join(groups, a.member_id, session_ms=1_000)
        b = await b_join
        await groups.sync("g", a.generation, a.member_id, {})
        # b leaves: a must rejoin alone in the next generation
        assert groups.leave("g", [(b.member_id, None)])[0][2] is ErrorCode.none
        assert groups.groups["g"].state is GroupState.PREPARING_REBALANCE
        a3 = await _join(groups, a.member_id, session_ms=1_000)
        assert a3.generation == a.generation + 1 and len(a3.members) == 1
        await groups.sync("g", a3.generation, a.member_id, {})
        # a stops heartbeating: expired, the group is empty
        groups.expire(now=groups.groups["g"].members[a.member_id].deadline + 0.1)
        assert groups.groups["g"].state is GroupState.EMPTY
        assert groups.heartbeat("g", a3.generation, a.member_id) is ErrorCode.unknown_member_id

    asyncio.run(scenario())


def test_group_rebalance_timeout_drops_members_that_do_not_rejoin() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        a = await _join(groups)
        await groups.sync("g", 1, a.member_id, {})
        b_join = _join(groups)
        await asyncio.sleep(0)
        group = groups.groups["g"]
        groups.expire(now=group.rebalance_deadline + 0.01)
        b = await b_join
        assert b.error is ErrorCode.none and b.generation == 2 and b.leader == b.member_id
        assert list(group.members) == [b.member_id]

    asyncio.run(scenario())


def test_group_refuses_inconsistent_protocols_and_unknown_members() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        await _join(groups)
        other = await _join(groups, protocols=(("sticky", b""),))
        assert other.error is ErrorCode.inconsistent_group_protocol
        unknown = await _join(groups, "nobody")
        assert unknown.error is ErrorCode.unknown_member_id
        assert groups.heartbeat("g", 1, "nobody") is ErrorCode.unknown_member_id
        short = await _join(groups, session_ms=10)
        assert short.error is ErrorCode.invalid_session_timeout

    asyncio.run(scenario())


def test_offset_commit_validation() -> None:
    async def scenario() -> None:
        groups = GroupCoordinator()
        assert groups.validate_commit("solo", -1, "") is ErrorCode.none
        assert groups.validate_commit("solo", 3, "m") is ErrorCode.illegal_generation
        a = await _join(groups)
        assert groups.validate_commit("g", 1, a.member_id) is ErrorCode.rebalance_in_progress
        await groups.sync("g", 1, a.member_id, {})
        assert groups.validate_commit("g", 1, a.member_id) is ErrorCode.none
        assert groups.validate_commit("g", 0, a.member_id) is ErrorCode.illegal_generation
        assert groups.validate_commit("g", 1, "x") is ErrorCode.unknown_member_id

    asyncio.run(scenario())


def _batch(pid: int, seq: int, n: int = 2, epoch: int = 0):
    return read_header(
        build_batch([b"v"] * n, producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    )


def test_the_agent_answers_retries_of_batches_it_remembers() -> None:
    async def scenario() -> None:
        registry = ProducerRegistry()
        loop = asyncio.get_running_loop()
        first = _batch(7, 0)
        assert registry.duplicate_of("t", 0, first) is None
        offset = loop.create_future()
        registry.record("t", 0, first, offset)
        offset.set_result(100)
        assert registry.duplicate_of("t", 0, _batch(7, 0)) is offset
        # anything else is for the store to judge: another agent may have taken batches since
        assert registry.duplicate_of("t", 0, _batch(7, 0, n=3)) is None
        assert registry.duplicate_of("t", 0, _batch(7, 5)) is None
        assert registry.duplicate_of("t", 1, _batch(7, 0)) is None
        assert registry.duplicate_of("t", 0, _batch(7, 0, epoch=1)) is None
        assert registry.duplicate_of("t", 0, _batch(-1, -1)) is None
        for seq in range(2, 12, 2):  # five more: the first is no longer remembered
            registry.record("t", 0, _batch(7, seq), loop.create_future())
        assert registry.duplicate_of("t", 0, _batch(7, 0)) is None
        assert registry.duplicate_of("t", 0, _batch(7, 2)) is not None

    asyncio.run(scenario())


def test_sequence_state_is_forgotten_when_the_append_fails() -> None:
    async def scenario() -> None:
        registry = ProducerRegistry()
        offset = asyncio.get_running_loop().create_future()
        registry.record("t", 0, _batch(3, 0), offset)
        offset.set_exception(OSError("disk full"))
        await asyncio.sleep(0)
        assert registry.duplicate_of("t", 0, _batch(3, 0)) is None

    asyncio.run(scenario())
