"""The agents of a cluster: this process's registration and heartbeat, and the live agents a
Metadata answer names as brokers.

Every ``serve`` process on one PostgreSQL metadata store is an agent: it registers a row
(``agents``), heartbeats :data:`HEARTBEATS_PER_TTL` times per ``agent_ttl_s`` (so a beat or two
delayed by a busy host does not drop it) and deletes its row when it stops cleanly. An agent
whose heartbeat is older than ``agent_ttl_s`` (killed, partitioned, paused) is left out of
every answer; one found gone sooner by direct evidence — its link closed and its address
refuses connections (:mod:`~streamhouse.kafka.peers`) — is left out at once, until it heartbeats
again. Its row is deleted by the next agent to start once it has been silent for
:data:`FORGET_SILENT_AGENTS_S` (``cluster status`` shows it as dead until then). Any agent takes
any produce or fetch, so which agent a client is told "leads" a partition only spreads the
load: leaders are picked by a hash of the topic over the live agents sorted by node id, so
agents that see the same live set give the same answer. With SQLite (one process) the agent is
alone and answers with itself, node 0.

Zones: a client whose ``client.id`` carries ``zone=Z`` (or WarpStream's ``ws_az=Z``) is
answered with the agents of zone ``Z`` only, when there are any. Agent groups: an agent
answers with the agents of its own group only.

>>> client_zone("my-app,ws_az=eu-west-1a")
'eu-west-1a'
>>> client_zone("zone=b") , client_zone("orders") , client_zone(None)
('b', None, None)
>>> 0 <= node_id_of("0f3c") < 2**31
True
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from streamhouse.config import Settings
from streamhouse.kafka.peers import PeerLinks
from streamhouse.log.metadata import AgentInfo, Metadata

__all__ = [
    "FORGET_SILENT_AGENTS_S",
    "HEARTBEATS_PER_TTL",
    "Cluster",
    "Node",
    "client_zone",
    "node_id_of",
]

log = logging.getLogger(__name__)

FORGET_SILENT_AGENTS_S = 3600.0
"""How long a silent (killed) agent's row is kept for ``cluster status`` to show."""
HEARTBEATS_PER_TTL = 6
"""Heartbeats (and group lease renewals) per ``agent_ttl_s``: an agent is dropped only after
this many in a row failed or came late."""
SLOW_HEARTBEAT_TTLS = 1 / 3
"""A heartbeat round taking longer than this share of the TTL is logged as a warning."""

_T = TypeVar("_T")

_ZONE = re.compile(r"(?:^|[,;&\s])(?:ws_az|zone)=([^,;&\s]+)")


def client_zone(client_id: str | None) -> str | None:
    """The zone a client names in its ``client.id`` (``zone=Z`` or ``ws_az=Z``), or ``None``."""
    if not client_id:
        return None
    found = _ZONE.search(client_id)
    return found.group(1) if found else None


def node_id_of(agent_id: str) -> int:
    """The Kafka node id of an agent: a non-negative int32 hashed from its id, the same in
    every process."""
    digest = hashlib.blake2b(agent_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


@dataclass(frozen=True, slots=True)
class Node:
    """A broker as clients see it."""

    node_id: int
    host: str
    port: int
    zone: str


class Cluster:
    """This agent and the live agents it knows of; used from the event loop thread.

    ``metadata`` is ``None`` when the store is not shared (SQLite): then nothing is
    registered and :meth:`nodes` is this process alone, node 0.
    """

    def __init__(
        self, metadata: Metadata | None, settings: Settings, agent_id: str | None = None
    ) -> None:
        self.metadata = metadata
        self.agent_id = agent_id or uuid.uuid4().hex
        self.node_id = node_id_of(self.agent_id) if metadata is not None else 0
        self.zone = settings.zone
        self.group = settings.agent_group
        self.ttl_ms = int(settings.agent_ttl_s * 1000)
        self.me = Node(self.node_id, settings.advertised_host, settings.port, settings.zone)
        self._agents: list[AgentInfo] = []
        self._read_at = time.monotonic()
        self._registered = False
        self._gone: dict[str, float] = {}  # agent id -> monotonic time its link said it left
        self._links = PeerLinks(self._peer_gone)
        self._store_thread: ThreadPoolExecutor | None = None

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """``function(*args)`` on this agent's own thread: heartbeats never queue behind
        fetches, compactions or other work of the default executor."""
        if self._store_thread is None:
            self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="agent-heartbeat")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, function, *args)

    async def join(self, host: str, port: int) -> None:
        """Register this agent as reachable at ``host:port`` and read the live agents."""
        self.me = Node(self.node_id, host, port, self.zone)
        if self.metadata is None:
            return
        await self._call(
            self.metadata.register_agent, self.agent_id, host, port, self.zone, self.group
        )
        self._registered = True
        forgotten = await self._call(
            self.metadata.forget_agents, int(FORGET_SILENT_AGENTS_S * 1000)
        )
        if forgotten:
            log.info("forgot %d agent(s) silent for over %.0f s", forgotten, FORGET_SILENT_AGENTS_S)
        log.info(
            "agent %s (node %d) registered at %s:%d, zone %r, group %r",
            self.agent_id,
            self.node_id,
            host,
            port,
            self.zone,
            self.group,
        )
        await self.refresh()

    async def refresh(self) -> None:
        """Read the agents from the store; link to the live ones; name again a peer found
        gone that has heartbeaten since."""
        assert self.metadata is not None
        asked = time.monotonic()
        agents = await self._call(self.metadata.list_agents)
        self._agents, self._read_at = agents, time.monotonic()
        listed = {agent.agent_id: agent for agent in agents}
        for agent_id, gone_at in list(self._gone.items()):
            agent = listed.get(agent_id)
            if agent is None:
                del self._gone[agent_id]
            elif agent.heartbeat_age_ms < (asked - gone_at) * 1000:  # it beat after it left
                del self._gone[agent_id]
                log.info("agent %s heartbeats again: named in answers again", agent_id)
        self._links.watch(
            {
                agent.agent_id: (agent.host, agent.port)
                for agent in agents
                if agent.agent_id != self.agent_id and agent.heartbeat_age_ms <= self.ttl_ms
            }
        )

    def _peer_gone(self, agent_id: str) -> None:
        self._gone[agent_id] = time.monotonic()

    async def heartbeat(self) -> None:
        """Heartbeat :data:`HEARTBEATS_PER_TTL` times per TTL (registering again if the row is
        gone) until cancelled; a store failure is logged and the next beat tries again."""
        if self.metadata is None:
            return
        interval = self.ttl_ms / 1000 / HEARTBEATS_PER_TTL
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                if not await self._call(self.metadata.heartbeat_agent, self.agent_id):
                    log.warning("agent %s was not registered any more; registering", self.agent_id)
                    await self.join(self.me.host, self.me.port)
                else:
                    await self.refresh()
            except Exception as exc:  # the store is away: keep serving, try again next beat
                log.warning("agent %s: heartbeat failed: %s", self.agent_id, exc)
            took = time.monotonic() - started
            if took > self.ttl_ms / 1000 * SLOW_HEARTBEAT_TTLS:
                log.warning(
                    "agent %s: a heartbeat took %.1f s (other agents drop it after %.1f s)",
                    self.agent_id,
                    took,
                    self.ttl_ms / 1000,
                )

    async def leave(self) -> None:
        """Deregister (a clean stop): other agents stop naming this one at once (their links
        to it close and its address refuses them; those that read the store, at their next
        read)."""
        await self._links.close()
        if self.metadata is not None and self._registered:
            self._registered = False
            try:
                await self._call(self.metadata.deregister_agent, self.agent_id)
            except Exception as exc:
                log.warning("agent %s: deregistering failed: %s", self.agent_id, exc)
        if self._store_thread is not None:
            self._store_thread.shutdown(wait=False)
            self._store_thread = None

    def _live(self, agent: AgentInfo, aged_ms: int) -> bool:
        """Whether ``agent`` heartbeat within the TTL and was not found gone since."""
        return agent.heartbeat_age_ms + aged_ms <= self.ttl_ms and agent.agent_id not in self._gone

    def node_of(self, agent_id: str) -> Node | None:
        """The live agent ``agent_id`` (of any agent group: a group lease may be held by one
        of another), or ``None`` if it is not live."""
        if agent_id == self.agent_id:
            return self.me
        aged = int((time.monotonic() - self._read_at) * 1000)
        for agent in self._agents:
            if agent.agent_id == agent_id and self._live(agent, aged):
                return Node(node_id_of(agent_id), agent.host, agent.port, agent.zone)
        return None

    def nodes(self, zone: str | None = None) -> tuple[Node, ...]:
        """The live agents of this agent's group (this one always among them), by node id;
        those of ``zone`` only when ``zone`` has any."""
        aged = int((time.monotonic() - self._read_at) * 1000)
        found = {self.node_id: self.me}
        for agent in self._agents:
            if agent.group == self.group and self._live(agent, aged):
                node = Node(node_id_of(agent.agent_id), agent.host, agent.port, agent.zone)
                found.setdefault(node.node_id, node)
        nodes = tuple(found[node_id] for node_id in sorted(found))
        if zone is not None:
            in_zone = tuple(node for node in nodes if node.zone == zone)
            if in_zone:
                return in_zone
        return nodes
