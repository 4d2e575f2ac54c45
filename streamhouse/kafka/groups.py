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

The first rebalance of an empty group waits ``initial_rebalance_delay_ms`` (Kafka's
``group.initial.rebalance.delay.ms``) so that consumers started together land in one
generation instead of one rebalance each; as in Kafka, a brand-new group that gained members
during the wait waits once more (each wait at most that long, all of them within the
longest rebalance timeout). 0 (serve's default, as in the ``server.properties`` Kafka ships)
starts the generation at once.
"""

from __future__ import annotations

import asyncio
import logging
import struct
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
from streamhouse.security.acl import AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["Group", "GroupCoordinator", "GroupState", "HANDLERS", "JoinResult"]

log = logging.getLogger(__name__)

MIN_SESSION_TIMEOUT_MS = 1_000
MAX_SESSION_TIMEOUT_MS = 1_800_000
MAX_METADATA_LENGTH = 4096


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
    """The initial rebalance delay's end: no generation starts before it."""
    delay_left_s: float = 0.0
    """How much longer the initial delay may still be extended."""
    new_member_added: bool = False
    """A member joined a brand-new group during the initial delay (Kafka extends it then)."""

    def static_member(self, group_instance_id: str | None) -> Member | None:
        """The member holding this ``group.instance.id`` (KIP-345), if any."""
        if group_instance_id is None:
            return None
        for member in self.members.values():
            if member.group_instance_id == group_instance_id:
                return member
        return None

    def fenced(self, member_id: str, group_instance_id: str | None) -> bool:
        """Whether a request naming this instance comes from a member id it no longer has:
        a newer process of the same static member took its place."""
        static = self.static_member(group_instance_id)
        return static is not None and static.member_id != member_id

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


def subscription_topics(metadata: bytes) -> set[str]:
    """The topics of a consumer protocol subscription (version int16, then an int32 count of
    int16-length topic names); empty if the bytes are not one."""
    topics: set[str] = set()
    try:
        (count,) = struct.unpack_from(">i", metadata, 2)
        at = 6
        for _ in range(count):
            (size,) = struct.unpack_from(">h", metadata, at)
            topics.add(metadata[at + 2 : at + 2 + size].decode())
            at += 2 + size
    except (struct.error, UnicodeDecodeError):
        return set()
    return topics


class GroupCoordinator:
    """Every group of this broker; all methods run on the event loop thread."""

    def __init__(self, initial_rebalance_delay_ms: float = 0.0) -> None:
        self.groups: dict[str, Group] = {}
        self.initial_delay_s = max(0.0, initial_rebalance_delay_ms) / 1000

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

        static = group.static_member(group_instance_id)
        if member_id and static is not None and static.member_id != member_id:
            done.set_result(JoinResult(ErrorCode.fenced_instance_id, member_id=member_id))
            return done
        if not member_id and static is not None:
            return self._rejoin_static(
                group,
                static,
                done,
                client_id,
                client_host,
                now,
                session_timeout_ms,
                rebalance_timeout_ms,
                protocols,
            )
        member = group.members.get(member_id) if member_id else None
        if member_id and member is None:
            done.set_result(JoinResult(ErrorCode.unknown_member_id, member_id=member_id))
            return done
        if member is None:
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
            elif group.state is GroupState.PREPARING_REBALANCE and not group.generation:
                group.new_member_added = self.initial_delay_s > 0  # may extend the delay
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

    def _rejoin_static(
        self,
        group: Group,
        old: Member,
        done: asyncio.Future[JoinResult],
        client_id: str,
        client_host: str,
        now: float,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocols: tuple[tuple[str, bytes], ...],
    ) -> asyncio.Future[JoinResult]:
        """A static member back with no member id (a restarted process, KIP-345): it gets a
        new member id in its old place and keeps its assignment. A stable group does not
        rebalance unless its subscription changed; the old id's parked requests and any later
        ones are answered ``FENCED_INSTANCE_ID``."""
        member_id = f"{client_id or 'member'}-{uuid.uuid4()}"
        member = Member(
            member_id,
            old.group_instance_id,
            client_id,
            client_host,
            session_timeout_ms,
            rebalance_timeout_ms,
            protocols,
            assignment=old.assignment,
        )
        self._remove_member(group, old, ErrorCode.fenced_instance_id)
        group.members[member_id] = member
        if group.leader_id == old.member_id:
            group.leader_id = member_id
        log.info(
            "group %s: static member %s rejoins as %s (was %s)",
            group.group_id,
            old.group_instance_id,
            member_id,
            old.member_id,
        )
        member.touch(now)
        member.join_waiter = done
        changed = old.protocols != protocols
        if group.state is GroupState.STABLE and not changed:
            done.set_result(self._join_result(group, member))
            return done
        if group.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, now)
        self._maybe_complete_join(group, now)
        return done

    def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        assignments: dict[str, bytes],
        group_instance_id: str | None = None,
    ) -> asyncio.Future[tuple[ErrorCode, bytes]]:
        """Handle a SyncGroup; the future resolves once the leader's assignment is known."""
        done: asyncio.Future[tuple[ErrorCode, bytes]] = asyncio.get_running_loop().create_future()
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if group is not None and group.fenced(member_id, group_instance_id):
            done.set_result((ErrorCode.fenced_instance_id, b""))
            return done
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

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, group_instance_id: str | None = None
    ) -> ErrorCode:
        """Handle a Heartbeat: restart the session timer, say whether to rejoin."""
        group = self.groups.get(group_id)
        if group is not None and group.fenced(member_id, group_instance_id):
            return ErrorCode.fenced_instance_id
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
            if group is not None and instance_id is not None:
                # KIP-345: a static member leaves by its instance id, with its member id or
                # none; a member id that is not the instance's current one is fenced
                member = group.static_member(instance_id)
                if member is not None and member_id and member.member_id != member_id:
                    results.append((member_id, instance_id, ErrorCode.fenced_instance_id))
                    continue
            elif group is not None:
                member = group.members.get(member_id)
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
        self,
        group_id: str,
        generation: int,
        member_id: str,
        *,
        group_instance_id: str | None = None,
        adopt: bool = False,
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
        if group.fenced(member_id, group_instance_id):
            return ErrorCode.fenced_instance_id
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

    def subscribed_topics(self, group_id: str) -> set[str]:
        """The topics the members of a consumer group subscribe to (empty without members)."""
        group = self.groups.get(group_id)
        if group is None or group.protocol_type != "consumer":
            return set()
        topics: set[str] = set()
        for member in group.members.values():
            for _, metadata in member.protocols:
                topics |= subscription_topics(metadata)
        return topics

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
        timeout = max((m.rebalance_timeout_ms for m in group.members.values()), default=0)
        if group.state in (GroupState.EMPTY, GroupState.DEAD):
            group.not_before = now + self.initial_delay_s
            group.delay_left_s = max(timeout / 1000 - self.initial_delay_s, 0.0)
            group.new_member_added = False
        group.rebalance_deadline = now + timeout / 1000
        if group.state is not GroupState.PREPARING_REBALANCE:
            log.info("group %s: preparing rebalance", group.group_id)
        group.state = GroupState.PREPARING_REBALANCE

    def _maybe_complete_join(self, group: Group, now: float) -> None:
        if group.state is not GroupState.PREPARING_REBALANCE:
            return
        everyone = all(m.awaiting_join for m in group.members.values())
        if now < group.not_before:
            return
        if group.new_member_added and group.delay_left_s > 0:  # Kafka's InitialDelayedJoin
            group.new_member_added = False
            wait = min(self.initial_delay_s, group.delay_left_s)
            group.not_before = now + wait
            group.delay_left_s -= wait
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


def _group_denied(
    broker: Broker, header: RequestHeader, group_id: str, operation: AclOperation
) -> bool:
    return not broker.access.allowed(header.session, operation, ResourceType.GROUP, group_id)


def _topic_denied(
    broker: Broker, header: RequestHeader, topic: str, operation: AclOperation
) -> bool:
    return not broker.access.allowed(header.session, operation, ResourceType.TOPIC, topic)


async def handle_find_coordinator(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """The agent holding the group's lease (this one if the lease was free);
    ``COORDINATOR_NOT_AVAILABLE`` while a dead holder's lease has yet to expire. Any agent
    coordinates transactions (key type 1): the one asked."""
    module = messages(ApiKey.FIND_COORDINATOR, header.api_version, True)
    node = broker.cluster.me
    if getattr(request, "key_type", 0) == 0 and _group_denied(
        broker, header, request.key, AclOperation.DESCRIBE
    ):
        return make(
            module.FindCoordinatorResponse,
            throttle_time=0,
            error_code=ErrorCode.group_authorization_failed,
            error_message=f"not authorized to describe group {request.key!r}",
            node_id=-1,
            host="",
            port=-1,
        )
    if getattr(request, "key_type", 0) == 0:
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
    denied = _group_denied(broker, header, request.group_id, AclOperation.READ)
    if denied or not await broker.coordination.ensure(request.group_id):
        return make(
            module.JoinGroupResponse,
            throttle_time=0,
            error_code=ErrorCode.group_authorization_failed
            if denied
            else ErrorCode.not_coordinator,
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
    denied = _group_denied(broker, header, request.group_id, AclOperation.READ)
    if denied or not await broker.coordination.ensure(request.group_id):
        return make(
            module.SyncGroupResponse,
            throttle_time=0,
            error_code=ErrorCode.group_authorization_failed
            if denied
            else ErrorCode.not_coordinator,
            assignment=b"",
        )
    assignments = {a.member_id: bytes(a.assignment) for a in request.assignments}
    error, assignment = await broker.groups.sync(
        request.group_id,
        request.generation_id,
        request.member_id,
        assignments,
        getattr(request, "group_instance_id", None),
    )
    return make(module.SyncGroupResponse, throttle_time=0, error_code=error, assignment=assignment)


async def handle_heartbeat(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.HEARTBEAT, header.api_version, True)
    if _group_denied(broker, header, request.group_id, AclOperation.READ):
        error = ErrorCode.group_authorization_failed
        return make(module.HeartbeatResponse, throttle_time=0, error_code=error)
    if not await broker.coordination.ensure(request.group_id):
        return make(module.HeartbeatResponse, throttle_time=0, error_code=ErrorCode.not_coordinator)
    error = broker.groups.heartbeat(
        request.group_id,
        request.generation_id,
        request.member_id,
        getattr(request, "group_instance_id", None),
    )
    return make(module.HeartbeatResponse, throttle_time=0, error_code=error)


async def handle_leave_group(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.LEAVE_GROUP, header.api_version, True)
    denied = _group_denied(broker, header, request.group_id, AclOperation.READ)
    if denied or not await broker.coordination.ensure(request.group_id):
        error = ErrorCode.group_authorization_failed if denied else ErrorCode.not_coordinator
        return make(module.LeaveGroupResponse, throttle_time=0, error_code=error, members=())
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
    if _group_denied(broker, header, request.group_id, AclOperation.READ):
        group_error = ErrorCode.group_authorization_failed
    elif await broker.coordination.ensure(request.group_id):
        group_error = broker.groups.validate_commit(
            request.group_id,
            generation,
            request.member_id,
            group_instance_id=getattr(request, "group_instance_id", None),
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
            elif _topic_denied(broker, header, topic.name, AclOperation.READ):
                errors[key] = ErrorCode.topic_authorization_failed
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
        topics=_partition_errors(
            module.OffsetCommitResponseTopic,
            module.OffsetCommitResponsePartition,
            request.topics,
            errors,
        ),
    )


def _partition_errors(
    topic_cls: type, partition_cls: type, topics: Iterable[Any], errors: dict[tuple[str, int], Any]
) -> tuple[Any, ...]:
    """Per topic of a request, its partitions' error codes (as OffsetCommit and OffsetDelete
    answer)."""
    return tuple(
        topic_cls(
            name=topic.name,
            partitions=tuple(
                partition_cls(
                    partition_index=p.partition_index,
                    error_code=errors[(topic.name, p.partition_index)],
                )
                for p in topic.partitions
            ),
        )
        for topic in topics
    )


async def handle_offset_fetch(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Committed offsets of the requested partitions (all of the group's if topics is null)."""
    module = messages(ApiKey.OFFSET_FETCH, header.api_version, True)
    if _group_denied(broker, header, request.group_id, AclOperation.DESCRIBE):
        return _offset_fetch_refused(module, request, ErrorCode.group_authorization_failed)
    if not await broker.coordination.ensure(request.group_id):
        return _offset_fetch_refused(module, request, ErrorCode.not_coordinator)
    committed = broker.log.metadata.group_offsets(request.group_id)
    if request.topics is None:
        wanted: dict[str, list[int]] = {}
        for topic, partition in sorted(committed):
            if broker.access.allowed(
                header.session, AclOperation.DESCRIBE, ResourceType.TOPIC, topic, audit=False
            ):
                wanted.setdefault(topic, []).append(partition)
    else:
        wanted = {t.name: list(t.partition_indexes) for t in request.topics}
    unstable = (  # v7+ (KIP-447): offsets a transaction still holds are not answered yet
        broker.log.metadata.transactions.pending_offsets(request.group_id)
        if getattr(request, "require_stable", False)
        else set()
    )
    topics = []
    for name, partitions in wanted.items():
        rows = []
        topic_denied = _topic_denied(broker, header, name, AclOperation.DESCRIBE)
        for partition in partitions:
            error = ErrorCode.none
            if topic_denied:
                error = ErrorCode.topic_authorization_failed
            elif (name, partition) in unstable:
                error = ErrorCode.unstable_offset_commit
            entry = committed.get((name, partition)) if error is ErrorCode.none else None
            rows.append(
                make(
                    module.OffsetFetchResponsePartition,
                    partition_index=partition,
                    committed_offset=entry.offset if entry else -1,
                    committed_leader_epoch=-1,
                    metadata=entry.metadata if entry else "",
                    error_code=error,
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


GROUP_OPERATIONS = (1 << 3) | (1 << 6) | (1 << 8)
"""What a client may do to a group, as Kafka's ACL operation bits (READ 3, DELETE 6,
DESCRIBE 8): all of them, as a broker without an authorizer answers."""
UNASKED_OPERATIONS = -(2**31)
"""``authorized_operations`` when the request did not ask for them (Kafka's Int.MinValue)."""


async def handle_describe_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DESCRIBE_GROUPS, header.api_version, True)
    known = set(broker.log.metadata.list_groups())
    asked = getattr(request, "include_authorized_operations", False)
    operations = GROUP_OPERATIONS if asked else UNASKED_OPERATIONS
    described = []
    for group_id in request.groups:
        denied = _group_denied(broker, header, group_id, AclOperation.DESCRIBE)
        if denied or not await broker.coordination.ensure(group_id):
            described.append(
                make(
                    module.DescribedGroup,
                    error_code=ErrorCode.group_authorization_failed
                    if denied
                    else ErrorCode.not_coordinator,
                    group_id=group_id,
                    group_state="",
                    protocol_type="",
                    protocol_data="",
                    members=(),
                    authorized_operations=operations,
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
                    authorized_operations=operations,
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
                authorized_operations=operations,
            )
        )
    return make(module.DescribeGroupsResponse, throttle_time=0, groups=tuple(described))


async def handle_list_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Every group with members or committed offsets, with its state (v4, KIP-518), only
    those in one of ``states_filter`` if it names any (case-insensitive, as Kafka)."""
    module = messages(ApiKey.LIST_GROUPS, header.api_version, True)
    listed: dict[str, tuple[str, str]] = dict.fromkeys(
        broker.log.metadata.list_groups(), ("consumer", str(GroupState.EMPTY))
    )
    for group in broker.groups.groups.values():
        if group.members or group.generation:
            listed[group.group_id] = (group.protocol_type or "consumer", str(group.state))
    wanted = {s.lower() for s in getattr(request, "states_filter", ()) or ()}
    return make(
        module.ListGroupsResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        groups=tuple(
            make(module.ListedGroup, group_id=g, protocol_type=t, group_state=state)
            for g, (t, state) in sorted(listed.items())
            if (not wanted or state.lower() in wanted)
            and broker.access.allowed(
                header.session, AclOperation.DESCRIBE, ResourceType.GROUP, g, audit=False
            )
        ),
    )


async def handle_delete_groups(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_GROUPS, header.api_version, True)
    broker.groups.expire()  # sessions that ran out since the last sweep end now, as in Kafka
    known = set(broker.log.metadata.list_groups())
    results = []
    for group_id in request.groups_names:
        if _group_denied(broker, header, group_id, AclOperation.DELETE):
            error = ErrorCode.group_authorization_failed
        elif not await broker.coordination.ensure(group_id):
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


async def handle_offset_delete(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Forget a group's committed offsets of some partitions (KIP-496). A group with members
    keeps those of topics it subscribes to (``GROUP_SUBSCRIBED_TO_TOPIC``)."""
    module = messages(ApiKey.OFFSET_DELETE, header.api_version, True)
    group_id = request.group_id
    group_error = ErrorCode.none
    if _group_denied(broker, header, group_id, AclOperation.DELETE):
        group_error = ErrorCode.group_authorization_failed
    elif not await broker.coordination.ensure(group_id):
        group_error = ErrorCode.not_coordinator
    elif group_id not in broker.log.metadata.list_groups() and not broker.groups.has_members(
        group_id
    ):
        group_error = ErrorCode.group_id_not_found
    subscribed = broker.groups.subscribed_topics(group_id)
    errors: dict[tuple[str, int], ErrorCode] = {}
    for topic in request.topics if group_error is ErrorCode.none else ():
        info = broker.log.get_topic(topic.name)
        for p in topic.partitions:
            if _topic_denied(broker, header, topic.name, AclOperation.READ):
                error = ErrorCode.topic_authorization_failed
            elif info is None or not 0 <= p.partition_index < info.partitions:
                error = ErrorCode.unknown_topic_or_partition
            elif topic.name in subscribed:
                error = ErrorCode.group_subscribed_to_topic
            else:
                error = ErrorCode.none
            errors[(topic.name, p.partition_index)] = error
    gone = [key for key, error in errors.items() if error is ErrorCode.none]
    if gone:
        try:
            broker.log.metadata.delete_group_offsets(group_id, gone)
        except StreamHouseError:
            log.exception("group %s: deleting offsets failed", group_id)
            group_error = ErrorCode.kafka_storage_error
    return make(
        module.OffsetDeleteResponse,
        error_code=group_error,
        throttle_time=0,
        topics=_partition_errors(
            module.OffsetDeleteResponseTopic,
            module.OffsetDeleteResponsePartition,
            request.topics if group_error is ErrorCode.none else (),
            errors,
        ),
    )


HANDLERS = {
    ApiKey.OFFSET_DELETE: handle_offset_delete,
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
