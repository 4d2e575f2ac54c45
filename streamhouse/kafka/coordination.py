"""Which agent coordinates which consumer group: one live agent per group, chosen by a lease.

With a shared (PostgreSQL) metadata store every group has a lease named ``group/<group id>``
(:mod:`~streamhouse.log.metadata.leases`). FindCoordinator, asked of any agent, answers with
the agent holding the group's live lease; when nobody holds it (a new group, or its holder
died and the lease expired), the asked agent takes it and answers with itself. Only the
holder keeps the group's membership in memory and answers its group requests; any other
agent answers them ``NOT_COORDINATOR``, so clients ask FindCoordinator again and go to the
holder. Committed offsets are in the metadata store, so nothing of them moves with the group.

The holder renews its leases :data:`~streamhouse.kafka.cluster.HEARTBEATS_PER_TTL` times per
``agent_ttl_s`` and releases those of groups
that have had no members and no requests for a while; a clean stop releases them all, so
another agent takes over at once. A holder that dies stops renewing: its leases expire
within ``agent_ttl_s`` (by the store's clock) and the members, whose connections broke, find
the new coordinator and rejoin there. A holder that fails to renew in time (a paused process,
a store out of reach) stops coordinating the group as soon as its own clock says the lease
may have expired (it measures from before the request that took or renewed the lease, so it
never believes in a lease longer than the store does) and drops the group's members.
Offset commits are fenced: stored only while the coordinator's lease is still held, checked
in the commit's statement, so a coordinator paused past its lease stores nothing on waking.
Until the members of a group taken over rejoin, the new coordinator takes their offset
commits (``GroupCoordinator.validate_commit``'s ``adopt``), so what they processed under the
dead coordinator stays committed.

Without a shared store (SQLite: one process) this agent coordinates every group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamhouse.kafka.cluster import HEARTBEATS_PER_TTL, Cluster, Node
from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.leases import Lease

__all__ = ["GROUP_LEASE_PREFIX", "GroupLeases", "group_of_lease", "lease_name"]

log = logging.getLogger(__name__)

GROUP_LEASE_PREFIX = "group/"
IDLE_RELEASE_TTLS = 5
"""A held group with no members and no request for this many TTLs gives its lease up."""
ADOPT_COMMITS_S = 60.0
"""How long after taking a group over its members' commits of the old generation are taken:
longer than they take to learn of the move (Kafka's default session timeout is 45 s), short
enough that a member paused for longer cannot overwrite newer offsets."""


def lease_name(group_id: str) -> str:
    """The lease of a consumer group.

    >>> lease_name("billing")
    'group/billing'
    """
    return GROUP_LEASE_PREFIX + group_id


def group_of_lease(name: str) -> str:
    """The group a lease is named for.

    >>> group_of_lease("group/billing")
    'billing'
    """
    return name.removeprefix(GROUP_LEASE_PREFIX)


@dataclass(slots=True)
class _Held:
    lease: Lease
    deadline: float  # monotonic: before it, the store's lease is certainly still live
    used: float  # monotonic time of the last request for the group
    since: float  # monotonic time this epoch of the lease was taken


class GroupLeases:
    """The group leases this agent holds; used from the event loop thread.

    ``metadata`` is ``None`` when the store is not shared: then every group is this agent's.
    ``on_lost(group_id)`` is called when a lease is lost, to drop the group's members.
    """

    def __init__(self, cluster: Cluster, metadata: Metadata | None, ttl_s: float) -> None:
        self.cluster = cluster
        self.metadata = metadata
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._held: dict[str, _Held] = {}
        self.on_lost: Callable[[str], None] = lambda group_id: None
        self.has_members: Callable[[str], bool] = lambda group_id: False

    def holds(self, group_id: str) -> bool:
        """Whether this agent coordinates ``group_id`` now, without asking the store."""
        if self.metadata is None:
            return True
        held = self._held.get(group_id)
        now = time.monotonic()
        if held is None or held.deadline <= now:
            return False
        held.used = now
        return True

    def lease_of(self, group_id: str) -> Lease | None:
        """The lease this agent holds of ``group_id``, to fence its writes with (``None``
        without a shared store, or when it holds none)."""
        held = self._held.get(group_id)
        return None if held is None else held.lease

    def lost(self, group_id: str) -> None:
        """A write under the group's lease was refused: the lease is gone."""
        if group_id in self._held:
            self._lose(group_id, "a write under its lease was refused")

    def took_over(self, group_id: str) -> bool:
        """Whether this agent took ``group_id``'s lease over from another holder (its epoch
        is above 1) less than :data:`ADOPT_COMMITS_S` ago: the group's members may not have
        rejoined here yet."""
        held = self._held.get(group_id)
        return (
            held is not None
            and held.lease.epoch > 1
            and time.monotonic() - held.since < ADOPT_COMMITS_S
        )

    async def ensure(self, group_id: str) -> bool:
        """Whether this agent coordinates ``group_id``, taking its lease if nobody holds it."""
        if self.holds(group_id):
            return True
        return await self._acquire(group_id)

    async def coordinator(self, group_id: str) -> Node | None:
        """The agent that coordinates ``group_id``: this one if it holds the lease or could
        take it, else the live agent holding it; ``None`` while the holder is not live (its
        lease has yet to expire: the client asks again)."""
        if await self.ensure(group_id):
            return self.cluster.me
        assert self.metadata is not None
        name = lease_name(group_id)
        found = await asyncio.to_thread(self.metadata.list_leases, name)
        lease = next((each for each in found if each.name == name and each.live), None)
        if lease is None:  # released or expired just now
            return self.cluster.me if await self._acquire(group_id) else None
        return self.cluster.node_of(lease.holder)

    async def _acquire(self, group_id: str) -> bool:
        assert self.metadata is not None
        started = time.monotonic()
        lease = await asyncio.to_thread(
            self.metadata.acquire_lease, lease_name(group_id), self.cluster.agent_id, self.ttl_ms
        )
        if lease is None:
            return False
        known = self._held.get(group_id)
        if known is not None and known.lease.epoch != lease.epoch:
            self._lose(group_id, "its lease expired before it was renewed")
        if known is None or known.lease.epoch != lease.epoch:
            log.info("coordinating group %s (lease epoch %d)", group_id, lease.epoch)
        deadline = started + lease.remaining_ms / 1000
        same = known is not None and known.lease.epoch == lease.epoch
        since = known.since if same and known is not None else started
        self._held[group_id] = _Held(lease, deadline, started, since)
        return True

    def _lose(self, group_id: str, why: str) -> None:
        self._held.pop(group_id, None)
        log.warning("no longer coordinating group %s: %s", group_id, why)
        self.on_lost(group_id)

    async def maintain(self) -> None:
        """:data:`HEARTBEATS_PER_TTL` times per TTL until cancelled: renew the leases of groups
        in use, release the others; a lease that cannot be renewed is lost (a store failure is
        retried next time, while the lease lasts)."""
        if self.metadata is None:
            return
        while True:
            await asyncio.sleep(self.ttl_ms / 1000 / HEARTBEATS_PER_TTL)
            try:
                await self.renew()
            except Exception as exc:
                log.warning("renewing group leases failed: %s", exc)

    async def renew(self) -> None:
        """One round of :meth:`maintain`."""
        assert self.metadata is not None
        now = time.monotonic()
        for group_id, held in list(self._held.items()):
            if self._held.get(group_id) is not held:
                continue  # changed while an earlier lease was renewed
            idle = now - held.used > IDLE_RELEASE_TTLS * self.ttl_ms / 1000
            if idle and not self.has_members(group_id):
                del self._held[group_id]
                self.on_lost(group_id)
                await asyncio.to_thread(self.metadata.release_lease, held.lease)
                log.info("released the lease of idle group %s", group_id)
                continue
            started = time.monotonic()
            try:
                renewed = await asyncio.to_thread(
                    self.metadata.renew_lease, held.lease, self.ttl_ms
                )
            except Exception as exc:
                log.warning("group %s: renewing its lease failed: %s", group_id, exc)
                renewed = None
            if renewed:
                held.deadline = started + self.ttl_ms / 1000
            elif renewed is False and self._held.get(group_id) is held:
                self._lose(group_id, "its lease expired or was taken over")

    async def release_all(self) -> None:
        """Give every lease up (a clean stop): other agents take the groups over at once."""
        if self.metadata is None:
            return
        held, self._held = self._held, {}
        for group_id, each in held.items():
            try:
                await asyncio.to_thread(self.metadata.release_lease, each.lease)
            except Exception as exc:
                log.warning("group %s: releasing its lease failed: %s", group_id, exc)

    def held_groups(self) -> list[str]:
        """The groups whose leases this agent holds, sorted."""
        return sorted(self._held)
