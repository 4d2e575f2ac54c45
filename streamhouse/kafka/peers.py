"""Direct evidence that a peer agent is gone, sooner than its heartbeat can say.

An agent keeps one idle TCP connection, a *link*, to the advertised address of every other
live agent: it writes nothing on it and the peer, which waits for a request, writes nothing
back. When the peer's process ends — killed with -9, crashed, or stopped cleanly — its kernel
closes the link at once, and a new connection to the address is refused: the peer is *gone*,
and :class:`~streamhouse.kafka.cluster.Cluster` leaves it out of Metadata answers right away
instead of when its heartbeat is ``agent_ttl_s`` old.

Only that sequence counts: a link that was up, then closed, then an address that refuses a
connection (or cannot be routed to). A connection attempt that times out says nothing (a busy
host accepts slowly), and neither does an address this agent never reached (agents may not be
able to reach what is advertised to clients); such peers, like one whose host dies without
closing its sockets or one that is paused (SIGSTOP: its kernel still accepts), are left to the
heartbeat TTL. A link a TLS listener closes (no handshake comes) is simply made again.

A wrong verdict costs little: which agent a Metadata answer names only spreads the load (any
agent takes any produce or fetch); the agents table, leases and fencing are untouched; and the
peer is named again as soon as it heartbeats (see ``Cluster``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

__all__ = ["LINK_CONNECT_TIMEOUT_S", "RELINK_DELAY_S", "PeerLinks"]

log = logging.getLogger(__name__)

LINK_CONNECT_TIMEOUT_S = 2.0
"""How long a connection to a peer may take; a timeout is not evidence of anything."""
RELINK_DELAY_S = 0.5
"""The pause between connection attempts to a peer that cannot be reached."""

Address = tuple[str, int]


class PeerLinks:
    """One link per watched peer; ``on_gone(agent_id)`` is called (on the event loop thread)
    each time a peer's link closes and its address then refuses a connection."""

    def __init__(self, on_gone: Callable[[str], None]) -> None:
        self._on_gone = on_gone
        self._links: dict[str, tuple[Address, asyncio.Task[None]]] = {}

    def watch(self, peers: Mapping[str, Address]) -> None:
        """Keep a link to each of ``peers`` (agent id -> advertised host and port) and to no
        other agent; call from the event loop."""
        for agent_id, (address, task) in list(self._links.items()):
            if peers.get(agent_id) != address:
                task.cancel()
                del self._links[agent_id]
        for agent_id, address in peers.items():
            if agent_id not in self._links:
                task = asyncio.create_task(self._link(agent_id, address), name=f"link {agent_id}")
                self._links[agent_id] = (address, task)

    async def close(self) -> None:
        """Drop every link."""
        tasks = [task for _, task in self._links.values()]
        self._links.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _link(self, agent_id: str, address: Address) -> None:
        loop = asyncio.get_running_loop()
        reached = False  # the last attempt connected: a refusal now is news
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(*address), LINK_CONNECT_TIMEOUT_S
                )
            except TimeoutError:  # slow, not refused: no evidence either way
                await asyncio.sleep(RELINK_DELAY_S)
                continue
            except OSError as exc:
                if reached:
                    reached = False
                    log.info(
                        "agent %s at %s:%d is gone: its link closed and a new connection"
                        " failed (%s)",
                        agent_id,
                        *address,
                        exc,
                    )
                    self._on_gone(agent_id)
                await asyncio.sleep(RELINK_DELAY_S)
                continue
            reached, linked_at = True, loop.time()
            try:
                while await reader.read(4096):
                    pass  # nothing is expected; b"" is the close
            except OSError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            if loop.time() - linked_at < RELINK_DELAY_S:  # closed at once: do not spin
                await asyncio.sleep(RELINK_DELAY_S)
