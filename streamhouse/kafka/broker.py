"""The broker: what the request handlers share — the log, the settings, the group
coordinator and the group leases saying which groups it coordinates, idempotent producer
state, the transaction coordinator, and wake-ups for long-polling fetches."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable

from streamhouse.config import Settings
from streamhouse.kafka.acls import Access
from streamhouse.kafka.cluster import Cluster
from streamhouse.kafka.coordination import GroupLeases
from streamhouse.kafka.groups import GroupCoordinator
from streamhouse.kafka.listeners import Listener
from streamhouse.kafka.producers import ProducerRegistry
from streamhouse.kafka.sasl import enabled_mechanisms
from streamhouse.kafka.transactions import TransactionCoordinator
from streamhouse.log import Log
from streamhouse.log.metadata import sqlite_path

__all__ = ["Broker"]

log = logging.getLogger(__name__)

CLUSTER_ID = "streamhouse"


class Broker:
    """State of one Kafka-protocol broker; used from the event loop thread only.

    ``port`` is the port clients should connect to (the bound one when ``settings.port`` is 0).
    ``cluster`` is this agent among the others sharing the metadata store (PostgreSQL); with
    SQLite it is alone, node 0.
    """

    cluster_id = CLUSTER_ID

    def __init__(self, log_: Log, settings: Settings, agent_id: str | None = None) -> None:
        self.log = log_
        self.settings = settings
        self.host = settings.advertised_host
        self.port = settings.port
        self.listeners: list[Listener] = []  # what it serves on, once bound
        self.sasl_mechanisms = enabled_mechanisms(settings.sasl_mechanisms)
        self.access = Access(log_.metadata, settings)
        shared = sqlite_path(settings) is None
        self.cluster = Cluster(log_.metadata if shared else None, settings, agent_id)
        self.groups = GroupCoordinator(settings.group_initial_rebalance_delay_ms)
        self.coordination = GroupLeases(
            self.cluster, log_.metadata if shared else None, settings.agent_ttl_s
        )
        self.coordination.on_lost = lambda group_id: self.groups.abandon(group_id)
        self.coordination.has_members = self.groups.has_members
        self.producers = ProducerRegistry()
        # alone on its store, this agent coordinates every transaction its batches belong to
        self.transactions = TransactionCoordinator(log_, self.wake, early_answers=not shared)
        self._arrivals: dict[tuple[str, int], set[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commits: list[tuple[str, int]] = []  # heard from the log, not yet on the loop
        self._commits_lock = threading.Lock()
        self.damaged_objects: set[str] = set()  # keys of damaged segments logged already
        self.storage_warning_at = 0.0  # monotonic time before which store failures go unlogged

    @property
    def node_id(self) -> int:
        """This agent's Kafka node id."""
        return self.cluster.node_id

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start hearing about commits of the log, on ``loop``."""
        self._loop = loop
        self.log.add_listener(self._on_commit_threadsafe)

    def detach(self) -> None:
        """Stop waking fetches (the log has no way to remove a listener)."""
        self._loop = None

    # -- long polling ---------------------------------------------------------------------

    def data_arrival(self, keys: Iterable[tuple[str, int]]) -> asyncio.Future[None]:
        """A future resolved the next time the log commits to any of ``keys``."""
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        for key in keys:
            self._arrivals.setdefault(key, set()).add(waiter)
        return waiter

    def cancel_arrival(self, keys: Iterable[tuple[str, int]], waiter: asyncio.Future[None]) -> None:
        """Stop tracking a future from :meth:`data_arrival`."""
        for key in keys:
            waiters = self._arrivals.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._arrivals[key]
        if not waiter.done():
            waiter.cancel()

    def wake(self, keys: Iterable[tuple[str, int]]) -> None:
        """Wake the fetches waiting on ``keys`` (their last stable offset moved)."""
        for key in keys:
            for waiter in self._arrivals.pop(key, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def _on_commit_threadsafe(self, topic: str, partition: int, high_watermark: int) -> None:
        """Called by the log's committer thread; wakes the loop once for many commits."""
        loop = self._loop
        if loop is None:
            return
        with self._commits_lock:
            first = not self._commits
            self._commits.append((topic, partition))
        if first:
            try:
                loop.call_soon_threadsafe(self._on_commits)
            except RuntimeError:  # the loop closed while the log was committing
                with self._commits_lock:
                    self._commits.clear()

    def _on_commits(self) -> None:
        with self._commits_lock:
            commits, self._commits = self._commits, []
        if self._arrivals:
            self.wake(commits)
