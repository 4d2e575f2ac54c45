"""Consumer groups: the classic group coordinator and its APIs.

FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
DescribeGroups, ListGroups and DeleteGroups. Which agent coordinates a group is decided by a
lease in the metadata store (:mod:`~streamhouse.kafka.coordination`): FindCoordinator names
its holder, and any other agent answers the group's requests ``NOT_COORDINATOR``. Alone
(SQLite), this broker coordinates every group.

Membership lives in memory on the coordinator (members rejoin after a restart or when the
group moves to another agent, as they do when a Kafka coordinator moves); committed offsets
live in the metadata store and survive both.

A group moves through the states Kafka names::

    Empty --join--> PreparingRebalance --all joined / rebalance timeout--> CompletingRebalance
    CompletingRebalance --leader's SyncGroup--> Stable
    Stable / CompletingRebalance --join with new metadata, leave, session timeout--> PreparingRebalance
    any --last member gone--> Empty

In PreparingRebalance each JoinGroup is parked until every known member has rejoined (or
the longest rebalance timeout passes, dropping those that did not); then a new generation
starts, the leader receives every member's subscription and the followers wait in SyncGroup
for the assignment the leader computes. Heartbeats answer ``REBALANCE_IN_PROGRESS`` while a
rebalance is being prepared, which is how members learn to rejoin.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from streamhouse.errors import FencedError, StreamHouseError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.listeners import seen_through
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages, to_ms

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["Group", "GroupCoordinator", "GroupState", "HANDLERS", "JoinResult"]

log = logging.getLogger(__name__)

MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 1_800_000
MAX_METADATA_LENGTH = 4096
INITIAL_REBALANCE_DELAY_MS = 0
"""Kafka waits ``group.initial.rebalance.delay.ms`` (3 s) before the first generation of an
empty group; this broker starts at once and rebalances as members arrive."""


class GroupState(StrEnum):
    """The states of a classic consumer group, named as Kafka names them."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a JoinGroup answers; ``members`` is non-empty only for the leader."""

    error: ErrorCode
    generation: int = -1
    protocol_name: str = ""
    leader: str = ""
    member_id: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()


@dataclass(eq=False)
class Member:
    """One member of a group, as its last JoinGroup described it."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]
    assignment: bytes = b""
    deadline: float = 0.0
    join_waiter: asyncio.Future[JoinResult] | None = None
    sync_waiter: asyncio.Future[tuple[ErrorCode, bytes]] | None = None

    def touch(self, now: float) -> None:
        """Restart the session timer."""
        self.deadline = now + self.session_timeout_ms / 1000

    @property
    def awaiting_join(self) -> bool:
        return self.join_waiter is not None and not self.join_waiter.done()

    @property
    def awaiting_reply(self) -> bool:
        """Parked in JoinGroup or SyncGroup: alive, whatever its session timer says."""
        waiting_sync = self.sync_waiter is not None and not self.sync_waiter.done()
        return self.awaiting_join or waiting_sync

    def metadata_for(self, protocol: str) -> bytes:
        for name, metadata in self.protocols:
            if name == protocol:
                return metadata
        return b""


@dataclass(eq=False)
class Group:
    """A group's membership and rebalance state (offsets are in the metadata store)."""

    group_id: str
    state: GroupState = GroupState.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    rebalance_deadline: float = 0.0
    not_before: float = 0.0

    def supports(self, protocol_type: str, protocols: Iterable[str]) -> bool:
        """Whether a joiner with these protocols could be a member."""
        if not self.members:
            return True
        if protocol_type != self.protocol_type:
            return False
        return bool(self._common_protocols() & set(protocols))

    def _common_protocols(self) -> set[str]:
        common: set[str] | None = None
        for member in self.members.values():
            names = {name for name, _ in member.protocols}
            common = names if common is None else common & names
        return common or set()

    def select_protocol(self) -> str:
        """The protocol every member supports that most members prefer (Kafka's vote)."""
        common = self._common_protocols()
        votes: dict[str, int] = {}
        for member in self.members.values():
            for name, _ in member.protocols:
                if name in common:
                    votes[name] = votes.get(name, 0) + 1
                    break
        ordered = [name for name, _ in next(iter(self.members.values())).protocols]
        return max(ordered, key=lambda n: votes.get(n, 0) if n in common else -1)


class GroupCoordinator:
    """Every group of this broker; all methods run on the event loop thread."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}

    # -- membership -----------------------------------------------------------------------

    def join(
        self,
        group_id: str,
        member_id: str,
        group_instance_id: str | None,
        client_id: str,
        client_host: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: tuple[tuple[str, bytes], ...],
    ) -> asyncio.Future[JoinResult]:
        """Handle a JoinGroup; the future resolves when the next generation starts."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[JoinResult] = loop.create_future()
        if not group_id:
            done.set_result(JoinResult(ErrorCode.invalid_group_id, member_id=member_id))
            return done
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            done.set_result(JoinResult(ErrorCode.invalid_session_timeout, member_id=member_id))
            return done
        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        if not protocols or not group.supports(protocol_type, (n for n, _ in protocols)):
            done.set_result(JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id))
            return done
        now = time.monotonic()
        if rebalance_timeout_ms < 0:  # JoinGroup v0 has no rebalance timeout
            rebalance_timeout_ms = session_timeout_ms

        member = group.members.get(member_id) if member_id else None
        if member_id and member is None:
            done.set_result(JoinResult(ErrorCode.unknown_member_id, member_id=member_id))
            return done
        if member is None:
            if group_instance_id is not None:
                for old in list(group.members.values()):
                    if old.group_instance_id == group_instance_id:
                        self._remove_member(group, old, ErrorCode.fenced_instance_id)
            member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
            member = Member(
                member_id,
                group_instance_id,
                client_id,
                client_host,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocols,
            )
            if not group.members:
                group.protocol_type = protocol_type
            group.members[member_id] = member
            log.info("group %s: member %s joins", group_id, member_id)
            changed = True
        else:
            changed = member.protocols != protocols
            member.protocols = protocols
            member.session_timeout_ms = session_timeout_ms
            member.rebalance_timeout_ms = rebalance_timeout_ms
        member.touch(now)
        if member.join_waiter is not None and not member.join_waiter.done():
            member.join_waiter.set_result(JoinResult(ErrorCode.rebalance_in_progress))
        member.join_waiter = done

        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            if not changed and member_id != group.leader_id:
                # A follower rejoining with the same subscription: the current generation.
                done.set_result(self._join_result(group, member))
                return done
            self._prepare_rebalance(group, now)
        elif group.state in (GroupState.EMPTY, GroupState.DEAD):
            self._prepare_rebalance(group, now)
        self._maybe_complete_join(group, now)
        return done

    def sync(
        self, group_id: str, generation: int, member_id: str, assignments: dict[str, bytes]
    ) -> asyncio.Future[tuple[ErrorCode, bytes]]:
        """Handle a SyncGroup; the future resolves once the leader's assignment is known."""
        done: asyncio.Future[tuple[ErrorCode, bytes]] = asyncio.get_running_loop().create_future()
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if group is None or member is None:
            done.set_result((ErrorCode.unknown_member_id, b""))
            return done
        if generation != group.generation:
            done.set_result((ErrorCode.illegal_generation, b""))
            return done
        member.touch(time.monotonic())
        if group.state is GroupState.PREPARING_REBALANCE:
            done.set_result((ErrorCode.rebalance_in_progress, b""))
        elif group.state is GroupState.STABLE:
            done.set_result((ErrorCode.none, member.assignment))
        else:  # CompletingRebalance
            if member.sync_waiter is not None and not member.sync_waiter.done():
                member.sync_waiter.set_result((ErrorCode.rebalance_in_progress, b""))
            member.sync_waiter = done
            if member_id == group.leader_id:
                for each in group.members.values():
                    each.assignment = assignments.get(each.member_id, b"")
                group.state = GroupState.STABLE
                log.info(
                    "group %s: generation %d stable with %d members",
                    group_id,
                    group.generation,
                    len(group.members),
                )
                for each in group.members.values():
                    waiter = each.sync_waiter
                    if waiter is not None and not waiter.done():
                        waiter.set_result((ErrorCode.none, each.assignment))
        return done

    def heartbeat(self, group_id: str, generation: int, member_id: str) -> ErrorCode:
        """Handle a Heartbeat: restart the session timer, say whether to rejoin."""
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if group is None or member is None:
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        member.touch(time.monotonic())
        if group.state is GroupState.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(
        self, group_id: str, members: list[tuple[str, str | None]]
    ) -> list[tuple[str, str | None, ErrorCode]]:
        """Handle a LeaveGroup of ``(member_id, group_instance_id)`` pairs."""
        group = self.groups.get(group_id)
        results: list[tuple[str, str | None, ErrorCode]] = []
        for member_id, instance_id in members:
            member = None
            if group is not None:
                member = group.members.get(member_id)
                if member is None and instance_id is not None:
                    member = next(
                        (m for m in group.members.values() if m.group_instance_id == instance_id),
                        None,
                    )
            if group is None or member is None:
                results.append((member_id, instance_id, ErrorCode.unknown_member_id))
                continue
            log.info("group %s: member %s leaves", group_id, member.member_id)
            self._remove_member(group, member, ErrorCode.unknown_member_id)
            results.append((member_id, instance_id, ErrorCode.none))
        if group is not None:
            self._after_removal(group, time.monotonic())
        return results

    def validate_commit(
        self, group_id: str, generation: int, member_id: str, *, adopt: bool = False
    ) -> ErrorCode:
        """Whether an OffsetCommit with this generation and member may store offsets.

        ``adopt``: the group came to this broker from a coordinator that died, with its
        members in that one's memory; until they rejoin here, their commits are taken (they
        are of its last generation: no other can have formed since), so nothing they
        processed before they learn of the move is read again."""
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.none if generation < 0 or adopt else ErrorCode.illegal_generation
        if generation < 0 and not group.members:
            return ErrorCode.none
        member = group.members.get(member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        if group.state is GroupState.COMPLETING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        member.touch(time.monotonic())
        return ErrorCode.none

    def expire(self, now: float | None = None) -> None:
        """Drop members whose session timed out; finish rebalances whose timeout passed."""
        now = time.monotonic() if now is None else now
        for group in list(self.groups.values()):
            expired = [
                m for m in group.members.values() if not m.awaiting_reply and m.deadline < now
            ]
            for member in expired:
                log.info("group %s: member %s session timed out", group.group_id, member.member_id)
                self._remove_member(group, member, ErrorCode.unknown_member_id)
            if expired:
                self._after_removal(group, now)
            if group.state is GroupState.PREPARING_REBALANCE:
                self._maybe_complete_join(group, now)
            if group.state is GroupState.EMPTY and not group.members and not group.generation:
                del self.groups[group.group_id]  # created by a join that was refused

    def describe(self, group_id: str) -> Group | None:
        """The live group, or ``None``."""
        return self.groups.get(group_id)

    def has_members(self, group_id: str) -> bool:
        group = self.groups.get(group_id)
        return bool(group and group.members)

    def forget(self, group_id: str) -> None:
        self.groups.pop(group_id, None)

    def abandon(self, group_id: str) -> None:
        """Drop a group this broker no longer coordinates: parked members are answered
        ``NOT_COORDINATOR`` (they find the new coordinator and rejoin there)."""
        group = self.groups.pop(group_id, None)
        if group is not None:
            for member in list(group.members.values()):
                self._remove_member(group, member, ErrorCode.not_coordinator)

    # -- transitions ----------------------------------------------------------------------

    def _prepare_rebalance(self, group: Group, now: float) -> None:
        if group.state is GroupState.COMPLETING_REBALANCE:
            for member in group.members.values():
                waiter = member.sync_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result((ErrorCode.rebalance_in_progress, b""))
        if group.state in (GroupState.EMPTY, GroupState.DEAD):
            group.not_before = now + INITIAL_REBALANCE_DELAY_MS / 1000
        timeout = max((m.rebalance_timeout_ms for m in group.members.values()), default=0)
        group.rebalance_deadline = now + timeout / 1000
        if group.state is not GroupState.PREPARING_REBALANCE:
            log.info("group %s: preparing rebalance", group.group_id)
        group.state = GroupState.PREPARING_REBALANCE

    def _maybe_complete_join(self, group: Group, now: float) -> None:
        if group.state is not GroupState.PREPARING_REBALANCE:
            return
        everyone = all(m.awaiting_join for m in group.members.values())
        if now < group.not_before and now < group.rebalance_deadline:
            return
        if not everyone and now < group.rebalance_deadline:
            return
        for member in [m for m in group.members.values() if not m.awaiting_join]:
            log.info("group %s: member %s did not rejoin in time", group.group_id, member.member_id)
            self._remove_member(group, member, ErrorCode.unknown_member_id)
        group.generation += 1
        if not group.members:
            group.state = GroupState.EMPTY
            group.protocol_name = None
            group.leader_id = None
            return
        group.protocol_name = group.select_protocol()
        if group.leader_id not in group.members:
            group.leader_id = next(iter(group.members))
        group.state = GroupState.COMPLETING_REBALANCE
        log.info(
            "group %s: generation %d with %d members, protocol %s",
            group.group_id,
            group.generation,
            len(group.members),
            group.protocol_name,
        )
        for member in group.members.values():
            member.assignment = b""
            member.touch(now)
            assert member.join_waiter is not None
            member.join_waiter.set_result(self._join_result(group, member))

    def _join_result(self, group: Group, member: Member) -> JoinResult:
        protocol = group.protocol_name or ""
        members: tuple[tuple[str, str | None, bytes], ...] = ()
        if member.member_id == group.leader_id:
            members = tuple(
                (m.member_id, m.group_instance_id, m.metadata_for(protocol))
                for m in group.members.values()
            )
        return JoinResult(
            ErrorCode.none,
            group.generation,
            protocol,
            group.leader_id or "",
            member.member_id,
            members,
        )

    def _remove_member(self, group: Group, member: Member, error: ErrorCode) -> None:
        group.members.pop(member.member_id, None)
        if member.join_waiter is not None and not member.join_waiter.done():
            member.join_waiter.set_result(JoinResult(error, member_id=member.member_id))
        if member.sync_waiter is not None and not member.sync_waiter.done():
            member.sync_waiter.set_result((error, b""))

    def _after_removal(self, group: Group, now: float) -> None:
        if not group.members:
            if group.state is not GroupState.EMPTY:
                group.generation += 1
            group.state = GroupState.EMPTY
            group.protocol_name = None
            group.leader_id = None
            return
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, now)
        self._maybe_complete_join(group, now)


# -- handlers ---------------------------------------------------------------------------------


async def handle_find_coordinator(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """The agent holding the group's lease (this one if the lease was free);
    ``COORDINATOR_NOT_AVAILABLE`` while a dead holder's lease has yet to expire."""
    module = messages(ApiKey.FIND_COORDINATOR, header.api_version, True)
    node = broker.cluster.me
    if getattr(request, "key_type", 0) == 0:  # transactions (1) are refused elsewhere
        found = await broker.coordination.coordinator(request.key)
        if found is None:
            return make(
                module.FindCoordinatorResponse,
                throttle_time=0,
                error_code=ErrorCode.coordinator_not_available,
                error_message="the group's coordinator died; its lease has yet to expire",
                node_id=-1,
                host="",
                port=-1,
            )
        node = found
    (node,) = seen_through(header.session, broker.node_id, (node,))
    return make(
        module.FindCoordinatorResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        error_message=None,
        node_id=node.node_id,
        host=node.host,
        port=node.port,
    )


async def handle_join_group(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.JOIN_GROUP, header.api_version, True)
    if not await broker.coordination.ensure(request.group_id):
        return make(
            module.JoinGroupResponse,
            throttle_time=0,
            error_code=ErrorCode.not_coordinator,
            generation_id=-1,
            protocol_name="",
            leader="",
            member_id=request.member_id,
            members=(),
        )
    rebalance = getattr(request, "rebalance_timeout", None)
    waiter = broker.groups.join(
        group_id=request.group_id,
        member_id=request.member_id,
        group_instance_id=getattr(request, "group_instance_id", None),
        client_id=header.client_id or "",
        client_host=header.client_host,
        session_timeout_ms=to_ms(request.session_timeout),
        rebalance_timeout_ms=to_ms(rebalance) if rebalance is not None else -1,
        protocol_type=request.protocol_type,
        protocols=tuple((p.name, bytes(p.metadata)) for p in request.protocols),
    )
    result = await waiter
    return make(
        module.JoinGroupResponse,
        throttle_time=0,
        error_code=result.error,
        generation_id=result.generation,
        protocol_name=result.protocol_name,
        leader=result.leader,
        member_id=result.member_id,
        members=tuple(
            make(
                module.JoinGroupResponseMember,
                member_id=member_id,
                group_instance_id=instance_id,
                metadata=metadata,
            )
            for member_id, instance_id, metadata in result.members
        ),
    )


async def handle_sync_group(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.SYNC_GROUP, header.api_version, True)
    if not await broker.coordination.ensure(request.group_id):
        return make(
            module.SyncGroupResponse,
            throttle_time=0,
            error_code=ErrorCode.not_coordinator,
            assignment=b"",
        )
    assignments = {a.member_id: bytes(a.assignment) for a in request.assignments}
    error, assignment = await broker.groups.sync(
        request.group_id, request.generation_id, request.member_id, assignments
    )
    return make(module.SyncGroupResponse, throttle_time=0, error_code=error, assignment=assignment)


async def handle_heartbeat(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.HEARTBEAT, header.api_version, True)
    if not await broker.coordination.ensure(request.group_id):
        return make(module.HeartbeatResponse, throttle_time=0, error_code=ErrorCode.not_coordinator)
    error = broker.groups.heartbeat(request.group_id, request.generation_id, request.member_id)
    return make(module.HeartbeatResponse, throttle_time=0, error_code=error)


async def handle_leave_group(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.LEAVE_GROUP, header.api_version, True)
    if not await broker.coordination.ensure(request.group_id):
        if header.api_version < 3:
            return make(
                module.LeaveGroupResponse, throttle_time=0, error_code=ErrorCode.not_coordinator
            )
        return make(
            module.LeaveGroupResponse,
            throttle_time=0,
            error_code=ErrorCode.not_coordinator,
            members=(),
        )
    if header.api_version < 3:
        results = broker.groups.leave(request.group_id, [(request.member_id, None)])
        return make(module.LeaveGroupResponse, throttle_time=0, error_code=results[0][2])
    results = broker.groups.leave(
        request.group_id, [(m.member_id, m.group_instance_id) for m in request.members]
    )
    return make(
        module.LeaveGroupResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        members=tuple(
            module.MemberResponse(member_id=m, group_instance_id=i, error_code=e)
            for m, i, e in results
        ),
    )


async def handle_offset_commit(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Store committed offsets (and their metadata strings) in the metadata store."""
    module = messages(ApiKey.OFFSET_COMMIT, header.api_version, True)
    generation = getattr(request, "generation_id_or_member_epoch", -1)
    if await broker.coordination.ensure(request.group_id):
        group_error = broker.groups.validate_commit(
            request.group_id,
            generation,
            request.member_id,
            adopt=broker.coordination.took_over(request.group_id),
        )
    else:
        group_error = ErrorCode.not_coordinator
    errors: dict[tuple[str, int], ErrorCode] = {}
    offsets: dict[tuple[str, int], tuple[int, str]] = {}
    for topic in request.topics:
        info = broker.log.get_topic(topic.name) if group_error is ErrorCode.none else None
        for p in topic.partitions:
            key = (topic.name, p.partition_index)
            metadata = p.committed_metadata or ""
            if group_error is not ErrorCode.none:
                errors[key] = group_error
            elif info is None or not 0 <= p.partition_index < info.partitions:
                errors[key] = ErrorCode.unknown_topic_or_partition
            elif len(metadata) > MAX_METADATA_LENGTH:
                errors[key] = ErrorCode.offset_metadata_too_large
            else:
                errors[key] = ErrorCode.none
                offsets[key] = (p.committed_offset, metadata)
    if offsets:
        lease = broker.coordination.lease_of(request.group_id)
        try:
            broker.log.metadata.commit_group_offsets(request.group_id, offsets, lease)
        except FencedError as exc:
            log.warning("group %s: offsets not committed: %s", request.group_id, exc)
            broker.coordination.lost(request.group_id)
            for key in offsets:
                errors[key] = ErrorCode.not_coordinator
        except StreamHouseError:
            log.exception("group %s: committing offsets failed", request.group_id)
            for key in offsets:
                errors[key] = ErrorCode.kafka_storage_error
    return make(
        module.OffsetCommitResponse,
        throttle_time=0,
        topics=tuple(
            module.OffsetCommitResponseTopic(
                name=topic.name,
                partitions=tuple(
                    module.OffsetCommitResponsePartition(
                        partition_index=p.partition_index,
                        error_code=errors[(topic.name, p.partition_index)],
                    )
                    for p in topic.partitions
                ),
            )
            for topic in request.topics
        ),
    )


async def handle_offset_fetch(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Committed offsets of the requested partitions (all of the group's if topics is null)."""
    module = messages(ApiKey.OFFSET_FETCH, header.api_version, True)
    if not await broker.coordination.ensure(request.group_id):
        return _offset_fetch_refused(module, request, ErrorCode.not_coordinator)
    committed = broker.log.metadata.group_offsets(request.group_id)
    if request.topics is None:
        wanted: dict[str, list[int]] = {}
        for topic, partition in sorted(committed):
            wanted.setdefault(topic, []).append(partition)
    else:
        wanted = {t.name: list(t.partition_indexes) for t in request.topics}
    topics = []
    for name, partitions in wanted.items():
        rows = []
        for partition in partitions:
            entry = committed.get((name, partition))
            rows.append(
                make(
                    module.OffsetFetchResponsePartition,
                    partition_index=partition,
                    committed_offset=entry.offset if entry else -1,
                    committed_leader_epoch=-1,
                    metadata=entry.metadata if entry else "",
                    error_code=ErrorCode.none,
                )
            )
        topics.append(module.OffsetFetchResponseTopic(name=name, partitions=tuple(rows)))
    return make(
        module.OffsetFetchResponse, throttle_time=0, topics=tuple(topics), error_code=ErrorCode.none
    )


def _offset_fetch_refused(module: Any, request: Any, error: ErrorCode) -> Any:
    """An OffsetFetch answer of ``error`` for the group and every partition asked for."""
    topics = tuple(
        module.OffsetFetchResponseTopic(
            name=t.name,
            partitions=tuple(
                make(
                    module.OffsetFetchResponsePartition,
                    partition_index=p,
                    committed_offset=-1,
                    committed_leader_epoch=-1,
                    metadata="",
                    error_code=error,
                )
                for p in t.partition_indexes
            ),
        )
        for t in request.topics or ()
    )
    return make(module.OffsetFetchResponse, throttle_time=0, topics=topics, error_code=error)


async def handle_describe_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DESCRIBE_GROUPS, header.api_version, True)
    known = set(broker.log.metadata.list_groups())
    described = []
    for group_id in request.groups:
        if not await broker.coordination.ensure(group_id):
            described.append(
                make(
                    module.DescribedGroup,
                    error_code=ErrorCode.not_coordinator,
                    group_id=group_id,
                    group_state="",
                    protocol_type="",
                    protocol_data="",
                    members=(),
                )
            )
            continue
        group = broker.groups.describe(group_id)
        if group is None:
            state = GroupState.EMPTY if group_id in known else GroupState.DEAD
            described.append(
                make(
                    module.DescribedGroup,
                    error_code=ErrorCode.none,
                    group_id=group_id,
                    group_state=str(state),
                    protocol_type="consumer" if group_id in known else "",
                    protocol_data="",
                    members=(),
                )
            )
            continue
        stable = group.state is GroupState.STABLE
        members = tuple(
            make(
                module.DescribedGroupMember,
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                client_id=m.client_id,
                client_host=m.client_host,
                member_metadata=m.metadata_for(group.protocol_name or "") if stable else b"",
                member_assignment=m.assignment if stable else b"",
            )
            for m in group.members.values()
        )
        described.append(
            make(
                module.DescribedGroup,
                error_code=ErrorCode.none,
                group_id=group_id,
                group_state=str(group.state),
                protocol_type=group.protocol_type or "",
                protocol_data=group.protocol_name or "" if stable else "",
                members=members,
            )
        )
    return make(module.DescribeGroupsResponse, throttle_time=0, groups=tuple(described))


async def handle_list_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.LIST_GROUPS, header.api_version, True)
    listed: dict[str, str] = dict.fromkeys(broker.log.metadata.list_groups(), "consumer")
    for group in broker.groups.groups.values():
        if group.members or group.generation:
            listed[group.group_id] = group.protocol_type or "consumer"
    return make(
        module.ListGroupsResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        groups=tuple(
            module.ListedGroup(group_id=g, protocol_type=t) for g, t in sorted(listed.items())
        ),
    )


async def handle_delete_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_GROUPS, header.api_version, True)
    known = set(broker.log.metadata.list_groups())
    results = []
    for group_id in request.groups_names:
        if not await broker.coordination.ensure(group_id):
            error = ErrorCode.not_coordinator
        elif broker.groups.has_members(group_id):
            error = ErrorCode.non_empty_group
        elif group_id not in known and broker.groups.describe(group_id) is None:
            error = ErrorCode.group_id_not_found
        else:
            broker.log.metadata.delete_group(group_id)
            broker.groups.forget(group_id)
            error = ErrorCode.none
        results.append(module.DeletableGroupResult(group_id=group_id, error_code=error))
    return make(module.DeleteGroupsResponse, throttle_time=0, results=tuple(results))


HANDLERS = {
    ApiKey.OFFSET_COMMIT: handle_offset_commit,
    ApiKey.OFFSET_FETCH: handle_offset_fetch,
    ApiKey.FIND_COORDINATOR: handle_find_coordinator,
    ApiKey.JOIN_GROUP: handle_join_group,
    ApiKey.HEARTBEAT: handle_heartbeat,
    ApiKey.LEAVE_GROUP: handle_leave_group,
    ApiKey.SYNC_GROUP: handle_sync_group,
    ApiKey.DESCRIBE_GROUPS: handle_describe_groups,
    ApiKey.LIST_GROUPS: handle_list_groups,
    ApiKey.DELETE_GROUPS: handle_delete_groups,
}
"""API key -> handler of the group APIs."""
