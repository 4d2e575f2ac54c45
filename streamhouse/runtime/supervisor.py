"""Continuous queries across ``serve`` agents: each runs on exactly one agent at a time.

Every agent sharing a PostgreSQL metadata store knows the same queries (its ``--queries``
files and the materialized views of the catalog) and tries to take each one's lease,
``query/<name>`` (:mod:`streamhouse.log.metadata.leases`). The holder starts the query from
the checkpoint recorded under the lease (:class:`~streamhouse.state.remote.LeasedCheckpoints`)
and renews the lease every ``ttl / 3``; the others keep trying at that pace. A holder whose
renewal is refused (it paused past its lease, the store's clock says it expired) stops the
query at once, without a last checkpoint; anything it still tries to write is refused by the
fence in the store (``FencedError``), so the new holder, which resumed from the last
checkpoint, is the only writer. When a holder dies, its lease expires after at most ``ttl``
and another agent takes the query over within ``ttl / 3`` more, plus the restore.

A query that fails (not fenced) releases its lease and is tried again after
:data:`RETRY_FAILED_S`, by whichever agent takes it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamhouse.errors import FencedError, StreamHouseError
from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.launch import QueryFile, start_query
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.sql.engine import Engine

log = logging.getLogger(__name__)

LEASE_PREFIX = "query/"
"""Query leases are named ``query/<query name>``."""

RETRY_FAILED_S = 30.0
"""How long after a query failed it is tried again."""


def lease_name(query: str) -> str:
    return f"{LEASE_PREFIX}{query}"


@dataclass
class _Held:
    """One query this agent may run: its file, and while it holds the lease, the running query."""

    query_file: QueryFile
    lease: Lease | None = None
    query: ContinuousQuery | None = None
    valid_until: float = 0.0  # monotonic: the lease surely ran out by then (renewed before)
    retry_at: float = 0.0


class QuerySupervisor:
    """Runs this agent's share of the continuous queries (see module): a thread per query, so
    that one query's restore never delays the renewal of another's lease."""

    def __init__(self, engine: Engine, holder: str, ttl_s: float, state_root: Path) -> None:
        self.engine = engine
        self.metadata: Metadata = engine.log.metadata
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.state_root = state_root
        self._queries: dict[str, _Held] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, query_file: QueryFile) -> bool:
        """Supervise a query; False if one of that name is supervised already."""
        if query_file.name in self._queries:
            return False
        self._queries[query_file.name] = _Held(query_file)
        return True

    @property
    def running(self) -> list[ContinuousQuery]:
        """The queries this agent runs now."""
        return [held.query for held in self._queries.values() if held.query is not None]

    def start(self) -> QuerySupervisor:
        for name, held in self._queries.items():
            thread = threading.Thread(
                target=self._run, args=(name, held), name=f"lease-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop every query this agent runs (each with a last checkpoint) and release its lease."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        for held in self._queries.values():
            if held.query is not None:
                self._give_up(held, checkpoint=True)
        shutil.rmtree(self.state_root, ignore_errors=True)

    # -- the supervisor thread ------------------------------------------------------------------

    def _run(self, name: str, held: _Held) -> None:
        interval = self.ttl_ms / 3000
        while not self._stopping.is_set():
            try:
                if held.query is None:
                    self._try_to_take(name, held)
                else:
                    self._keep(name, held)
            except StreamHouseError as exc:  # the store is away: try again next round
                log.warning("query %s: %s", name, exc)
            self._stopping.wait(interval)

    def _try_to_take(self, name: str, held: _Held) -> None:
        if time.monotonic() < held.retry_at:
            return
        asked = time.monotonic()
        lease = self.metadata.acquire_lease(lease_name(name), self.holder, self.ttl_ms)
        if lease is None:
            return
        held.lease, held.valid_until = lease, asked + self.ttl_ms / 1000
        try:
            held.query = start_query(
                self.engine,
                held.query_file,
                state_root=self.state_root,
                fence=lease,
            )
        except Exception as exc:  # that query alone fails; this agent and the others go on
            if isinstance(exc, StreamHouseError):
                log.error("continuous query %s not started: %s", name, exc)
            else:
                log.exception("continuous query %s not started", name)
            self._release(held)
            held.retry_at = time.monotonic() + RETRY_FAILED_S
            return
        log.warning(
            "continuous query %s running here (lease epoch %d, taken in %.3f s)",
            name,
            lease.epoch,
            time.monotonic() - asked,
        )

    def _keep(self, name: str, held: _Held) -> None:
        assert held.lease is not None and held.query is not None
        error = held.query.error
        if isinstance(error, FencedError):
            log.warning("query %s: lease lost (epoch %d)", name, held.lease.epoch)
            self._give_up(held, checkpoint=False)
            return
        if error is not None:
            log.error("query %s failed; released for another try: %s", name, error)
            self._give_up(held, checkpoint=False)
            held.retry_at = time.monotonic() + RETRY_FAILED_S
            return
        asked = time.monotonic()
        try:
            renewed = self.metadata.renew_lease(held.lease, self.ttl_ms)
        except StreamHouseError as exc:
            if time.monotonic() < held.valid_until:
                log.warning("query %s: lease not renewed, will try again: %s", name, exc)
                return
            renewed = False
        if renewed:
            held.valid_until = asked + self.ttl_ms / 1000
            return
        log.warning("query %s: lease lost (epoch %d): stopping it", name, held.lease.epoch)
        self._give_up(held, checkpoint=False)

    def _give_up(self, held: _Held, *, checkpoint: bool) -> None:
        """Stop the query (with a last checkpoint if ``checkpoint``) and drop its local state."""
        query, held.query = held.query, None
        if query is not None:
            try:
                query.stop(checkpoint=checkpoint)
            except StreamHouseError as exc:
                log.warning("query %s: stopping: %s", query.name, exc)
            shutil.rmtree(query.store.path, ignore_errors=True)
        self._release(held)

    def _release(self, held: _Held) -> None:
        lease, held.lease = held.lease, None
        if lease is not None:
            try:
                self.metadata.release_lease(lease)
            except StreamHouseError as exc:  # it expires by itself
                log.warning("lease %s not released: %s", lease.name, exc)
