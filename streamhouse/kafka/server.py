"""The Kafka protocol server: asyncio, one task per connection, pipelined requests.

Each connection reads frames as they come and starts handling each request at once, so a
long-polling fetch or a produce waiting for durability does not hold up the requests behind
it; a sender task writes the responses strictly in request order, as Kafka clients require
(those ready together in one write). An answer ready at once (a produce answered early) with
nothing ahead of it skips the sender: the reading loop gathers such answers and writes them
in one go when it has read all it was sent. Most APIs are decoded by kio and handled by a task;
Produce and Fetch, the hot ones, write their own response frames (:data:`RAW_HANDLERS`);
Produce also decodes its own requests and answers through a future the log resolves, with no
task per request. A frame that cannot be decoded, an unknown API key, an unsupported version or a
frame larger than :data:`MAX_REQUEST_BYTES` closes the connection after the responses to the
requests before it, as Kafka brokers do; an ApiVersions request of a version we do not know
gets the v0 answer with ``UNSUPPORTED_VERSION`` instead.

Run it with :func:`run` (blocking, until SIGINT/SIGTERM) or ``await serve(log, settings)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import signal
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from streamhouse.config import Settings
from streamhouse.errors import ProtocolError
from streamhouse.kafka import (
    acls,
    admin,
    fetch,
    groups,
    metadata,
    offsets,
    produce,
    producers,
    sasl,
    transactions,
)
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.broker import Broker
from streamhouse.kafka.listeners import (
    HANDSHAKE_TIMEOUT_S,
    Listener,
    Session,
    listeners_of,
    principal_of,
    server_tls_context,
)
from streamhouse.kafka.versions import SUPPORTED, handle_api_versions, unsupported_api_versions
from streamhouse.kafka.wire import (
    RequestHeader,
    body_frame,
    encode_response,
    parse_request,
    peek_header,
)
from streamhouse.log import Log
from streamhouse.os_memory import keep_off_huge_pages

__all__ = [
    "HANDLERS",
    "MAX_IN_FLIGHT",
    "MAX_IN_FLIGHT_BYTES",
    "MAX_REQUEST_BYTES",
    "RAW_HANDLERS",
    "run",
    "serve",
]

log = logging.getLogger(__name__)

Handler = Callable[[Broker, RequestHeader, Any], Awaitable[Any]]
"""A kio-decoded request -> a kio response object, or the response body as bytes (a
non-flexible version the handler encoded itself), or None: no response."""
Response = bytes | asyncio.Future[bytes] | asyncio.Future[bytes | None]
"""A response frame, now or later (a future resolving to None answers nothing)."""
RawHandler = Callable[[Broker, bytes, str, Session], Response | None]
"""Hot APIs decode their frames themselves: (broker, frame, client host, session) -> response."""

HANDLERS: dict[ApiKey, Handler] = {
    ApiKey.API_VERSIONS: handle_api_versions,
    **offsets.HANDLERS,
    **metadata.HANDLERS,
    **groups.HANDLERS,
    **admin.HANDLERS,
    **producers.HANDLERS,
    **transactions.HANDLERS,
    **sasl.HANDLERS,
    **acls.HANDLERS,
}
RAW_HANDLERS: dict[ApiKey, RawHandler] = {**produce.RAW_HANDLERS, **fetch.RAW_HANDLERS}
assert not set(HANDLERS) & set(RAW_HANDLERS)
assert set(HANDLERS) | set(RAW_HANDLERS) == set(SUPPORTED), "every advertised API needs a handler"
assert not sasl.PRE_AUTHENTICATION & set(RAW_HANDLERS), "a login step is answered by HANDLERS"

MAX_REQUEST_BYTES = 100 * 1024 * 1024
"""Kafka's ``socket.request.max.bytes``; larger frames close the connection."""
MAX_IN_FLIGHT = 1024
"""Requests of one connection being handled at once; reading pauses beyond that. librdkafka
sends one Produce request per partition, so a producer to many partitions keeps hundreds in
flight on one connection: they must all reach the writer to share one flush (at 64, a 1,000
partition producer was served 64 requests per flush, and its queue grew to seconds)."""
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
"""Bytes of request frames of one connection being handled at once (the frames stay in memory
until answered: produced records are views of them); reading pauses beyond that, except for a
request alone (Kafka's ``queued.max.request.bytes``)."""
GROUP_SWEEP_SECONDS = 0.1
_PARKING = frozenset((ApiKey.JOIN_GROUP, ApiKey.SYNC_GROUP))
"""Requests the coordinator parks until a rebalance moves on. A connection that closed stops
waiting for them, so the member's session times out like any other (a member left parked kept
its group from ever emptying)."""
_WRITE_HIGH_WATER = 4 * 1024 * 1024
THREAD_SWITCH_INTERVAL_S = 0.0005
"""How long a thread waiting for the GIL lets a running one keep it (Python's default: 5 ms).

A serving process is one event loop thread parsing requests beside the writer's flusher and
committer threads, which hold the GIL briefly between blocking calls (a PUT, an fsync, a
round trip to the metadata store) and must take it back after each. While the loop is busy
with a burst of requests, each take-back waited up to the whole interval, a commit made a
dozen of them, and produce acknowledgements queued behind commits: in the 1,000 partitions x
60 one-record batches workload on PostgreSQL at load 11-14, ack p50 1,345-6,820 ms at 5 ms
against 354-409 ms at 0.5 ms."""
_LENGTH = struct.Struct(">i")


def _admit(frame: bytes, client_host: str, session: Session) -> bytes | None:
    """Check a request's key and version; ProtocolError closes the connection. The answer
    itself if the check gives one (ApiVersions of a version above ours), else None."""
    api_key, api_version, correlation_id = peek_header(frame)
    if api_key == ApiKey.API_VERSIONS and api_version > SUPPORTED[ApiKey.API_VERSIONS][1]:
        return encode_response(correlation_id, unsupported_api_versions(), header_v0=True)
    if not session.authenticated and api_key not in sasl.PRE_AUTHENTICATION:
        raise ProtocolError(f"api key {api_key} before SASL authentication")
    versions = SUPPORTED.get(api_key)
    if versions is None:
        raise ProtocolError(f"unsupported api key {api_key}")
    if not versions[0] <= api_version <= versions[1]:
        raise ProtocolError(f"api key {api_key} v{api_version} is not supported")
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: api %d v%d #%d", client_host, api_key, api_version, correlation_id)
    return None


def _start(broker: Broker, frame: bytes, client_host: str, session: Session) -> Response | None:
    """Decode a request and start its handler; ProtocolError closes the connection.

    ``None`` if the request gets no response (produce with ``acks=0``).
    """
    answer = _admit(frame, client_host, session)
    if answer is not None:
        return answer
    api_key = peek_header(frame)[0]
    raw = RAW_HANDLERS.get(api_key)
    if raw is not None:
        return raw(broker, frame, client_host, session)
    header, request = parse_request(frame, client_host, session)
    return asyncio.ensure_future(_respond(header, HANDLERS[api_key](broker, header, request)))


async def _answer_login_step(
    broker: Broker, frame: bytes, client_host: str, session: Session
) -> bytes | None:
    """The answer to a request before the SASL login (ApiVersions, SaslHandshake,
    SaslAuthenticate), awaited by the reading loop itself: a login goes one step at a time,
    so a step needs no task of its own, nor the sending loop (a quarter of the server's CPU
    per login went to those)."""
    answer = _admit(frame, client_host, session)
    if answer is not None:
        return answer
    header, request = parse_request(frame, client_host, session)
    return await _respond(header, HANDLERS[header.api_key](broker, header, request))


async def _respond(header: RequestHeader, call: Awaitable[Any]) -> bytes | None:
    response = await call
    if response is None:
        return None
    if isinstance(response, bytes):
        return body_frame(header.correlation_id, response)
    return encode_response(
        header.correlation_id, response, header_v0=header.api_key == ApiKey.API_VERSIONS
    )


class _Connection:
    """One client connection: a reading loop and an in-order sending loop."""

    def __init__(
        self,
        broker: Broker,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        listener: Listener,
    ) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.session = Session(listener)
        if listener.tls:  # the handshake is done: a client certificate, if any, was verified
            self.session.principal = principal_of(writer.get_extra_info("peercert"))
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client_host = f"/{peer[0]}" if isinstance(peer, tuple) else ""
        self.session.host = peer[0] if isinstance(peer, tuple) else ""
        self.pending: asyncio.Queue[tuple[Response, int] | None] = asyncio.Queue(MAX_IN_FLIGHT)
        self.pending_bytes = 0  # frame bytes of the requests in `pending`
        self.room = asyncio.Event()  # set when pending_bytes went down
        self.parked: set[asyncio.Future[Any]] = set()  # JoinGroup/SyncGroup being answered
        self.sender_idle = True  # the sending loop waits for `pending`, all it took written
        self.direct: list[bytes] = []  # answers ready at once, nothing ahead of them unwritten

    async def run(self) -> None:
        reading = asyncio.current_task()
        assert reading is not None
        sender = asyncio.create_task(self._send(reading))
        try:
            await self._read()
            self._write_direct()
            if self.parked:
                log.info(
                    "connection %s closed with %d group requests parked",
                    self.peer,
                    len(self.parked),
                )
            for waiting in self.parked:
                waiting.cancel()  # the member went away: its session timer runs from here
            await self.pending.put(None)
            await sender
        except asyncio.CancelledError:
            if not sender.done():
                raise
        finally:
            sender.cancel()
            self._cancel_pending()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            log.debug("connection %s closed", self.peer)

    async def _read(self) -> None:
        while True:
            try:
                prefix = await self.reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            (size,) = _LENGTH.unpack(prefix)
            if not 8 <= size <= MAX_REQUEST_BYTES:
                log.info("connection %s: frame of %d bytes refused", self.peer, size)
                return
            while self.pending_bytes and self.pending_bytes + size > MAX_IN_FLIGHT_BYTES:
                self.room.clear()
                await self.room.wait()
            try:
                frame = await self.reader.readexactly(size)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if not self.session.authenticated:
                if await self._log_in_step(frame):
                    continue
                return  # the answer goes out, then the connection closes
            try:
                response = _start(self.broker, frame, self.client_host, self.session)
            except ProtocolError as exc:
                log.info("connection %s: %s; closing", self.peer, exc)
                return
            except Exception:
                log.exception("connection %s: request failed; closing", self.peer)
                return
            if response is None:
                continue
            if (
                isinstance(response, bytes)
                and self.sender_idle
                and self.pending.empty()
                and self.writer.transport.get_write_buffer_size() <= _WRITE_HIGH_WATER
            ):
                self._answer_at_once(response)
                continue
            if isinstance(response, asyncio.Future) and peek_header(frame)[0] in _PARKING:
                self.parked.add(response)
                response.add_done_callback(self.parked.discard)
            self._write_direct()  # what is answered already goes out before what follows
            self.pending_bytes += size
            await self.pending.put((response, size))

    def _answer_at_once(self, answer: bytes) -> None:
        """Write ``answer`` (nothing ahead of it is unwritten) with the others ready at once
        from what was read: after the reading loop's turn, in one write."""
        if not self.direct:
            asyncio.get_running_loop().call_soon(self._write_direct)
        self.direct.append(answer)

    def _write_direct(self) -> None:
        """Write the answers gathered by :meth:`_answer_at_once`."""
        if self.direct:
            self._write(self.direct)

    async def _log_in_step(self, frame: bytes) -> bool:
        """Answer a request before the SASL login (the sending loop has nothing queued then);
        False if the connection is to close: a failed login, or a request refused."""
        try:
            answer = await _answer_login_step(self.broker, frame, self.client_host, self.session)
        except ProtocolError as exc:
            log.info("connection %s: %s; closing", self.peer, exc)
            return False
        except Exception:
            log.exception("connection %s: request failed; closing", self.peer)
            return False
        if answer is not None:
            self.writer.write(answer)
        return not self.session.failed

    async def _send(self, reading: asyncio.Task[None]) -> None:
        """Write responses in request order; on any failure, stop the reading loop.

        Responses ready together go out in one write (one system call).
        """
        queue = self.pending
        ready: list[bytes] = []
        try:
            while True:
                self.sender_idle = True
                item = await queue.get()
                self.sender_idle = False
                while True:
                    if item is None:
                        self._write(ready)
                        return
                    response, size = item
                    if isinstance(response, bytes):
                        data: bytes | None = response
                    elif response.done():
                        data = None if response.cancelled() else response.result()
                    else:
                        await self._write_and_drain(ready)
                        data = await _outcome(response)
                    self.pending_bytes -= size
                    self.room.set()
                    if data is not None:
                        ready.append(data)
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                await self._write_and_drain(ready)
        except ConnectionError:
            reading.cancel()
        except Exception:
            log.exception("connection %s: handler failed; closing", self.peer)
            reading.cancel()

    def _write(self, ready: list[bytes]) -> None:
        if ready:
            self.writer.write(ready[0] if len(ready) == 1 else b"".join(ready))
            ready.clear()

    async def _write_and_drain(self, ready: list[bytes]) -> None:
        self._write(ready)
        if self.writer.transport.get_write_buffer_size() > _WRITE_HIGH_WATER:
            await self.writer.drain()

    def _cancel_pending(self) -> None:
        while not self.pending.empty():
            item = self.pending.get_nowait()
            if item is not None and not isinstance(item[0], bytes):
                item[0].cancel()


async def _outcome(response: asyncio.Future[Any]) -> bytes | None:
    """A response frame once ready; None for a request cancelled because its client left."""
    try:
        return await response
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not response.cancelled() or (task is not None and task.cancelling()):
            raise
        return None


async def _sweep_groups(broker: Broker) -> None:
    while True:
        await asyncio.sleep(GROUP_SWEEP_SECONDS)
        try:
            broker.groups.expire()
        except Exception:
            log.exception("group coordinator sweep failed")


async def _every(interval_s: float, *steps: tuple[str, Callable[[], object]]) -> None:
    """Run each ``(what, step)`` in a worker thread every ``interval_s``, one after the other;
    a step that fails is logged and tried again next time."""
    while True:
        await asyncio.sleep(interval_s)
        for what, step in steps:
            try:
                await asyncio.to_thread(step)
            except Exception:
                log.exception("%s failed; the next one retries", what)


async def _storage_lifecycle(log_: Log, settings: Settings) -> None:
    """A retention pass, then a compaction pass, every ``retention_check_interval_s``; and
    Kafka's log cleaner over compacted topics every ``log_cleaner_backoff_s``
    (:mod:`streamhouse.log.cleaner`)."""
    from streamhouse.log.cleaner import Cleaner

    passes = _every(
        settings.retention_check_interval_s,
        ("retention pass", log_.enforce_retention),
        ("compaction pass", log_.compact),
    )
    cleaning = _every(settings.log_cleaner_backoff_s, ("log cleaner pass", Cleaner(log_).run_once))
    await asyncio.gather(passes, cleaning)  # in a task: cancelled with it, nothing left unread


async def _tableflow(log_: Log, interval_s: float) -> None:
    """Append the new rows of every stream with an Iceberg table every ``interval_s`` (in a
    worker thread; see :mod:`streamhouse.iceberg.tableflow`)."""
    from streamhouse.iceberg import append_streams, open_catalog
    from streamhouse.iceberg.tableflow import iceberg_streams

    catalog = None
    while True:
        await asyncio.sleep(interval_s)
        try:
            if not await asyncio.to_thread(iceberg_streams, log_):
                continue
            if catalog is None:
                catalog = await asyncio.to_thread(open_catalog, log_.settings)
            await asyncio.to_thread(append_streams, log_, catalog=catalog, holder=log_.compactor)
        except Exception:
            log.exception("Iceberg append pass failed; the next one retries")


async def serve(
    log_: Log,
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    agent_id: str | None = None,
) -> None:
    """Serve the Kafka protocol over ``log_`` on ``settings.host:settings.port`` until cancelled.

    ``ready`` is set once the socket listens; with ``settings.port == 0`` the bound port is
    the one advertised. ``agent_id`` names this agent (default: a new random id).
    """
    listeners = listeners_of(settings)
    tls = server_tls_context(settings) if any(lst.tls for lst in listeners) else None
    broker = Broker(log_, settings, agent_id)
    await asyncio.to_thread(broker.access.reload)
    broker.attach(asyncio.get_running_loop())
    connections: set[asyncio.Task[None]] = set()

    def accepting(listener: Listener) -> Callable[..., Awaitable[None]]:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await _Connection(broker, reader, writer, listener).run()
            except asyncio.CancelledError:
                pass  # shutting down; asyncio's stream callback would log a cancelled task
            finally:
                connections.discard(task)

        return on_connect

    servers = []
    try:
        for listener in listeners:
            server = await asyncio.start_server(
                accepting(listener),
                listener.host,
                listener.port,
                limit=1 << 20,
                ssl=tls if listener.tls else None,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if listener.tls else None,
            )
            servers.append(server)
            listener.port = server.sockets[0].getsockname()[1]
            listener.advertised_port = listener.advertised_port or listener.port
    except BaseException:
        for server in servers:
            server.close()
        raise
    broker.listeners = listeners
    broker.port = listeners[0].advertised_port
    await broker.cluster.join(broker.host, broker.port)
    heartbeat = asyncio.create_task(broker.cluster.heartbeat())
    group_leases = asyncio.create_task(broker.coordination.maintain())
    sweeper = asyncio.create_task(_sweep_groups(broker))
    transaction_sweeps = asyncio.create_task(broker.transactions.run_sweeps())
    retention = asyncio.create_task(_storage_lifecycle(log_, settings))
    tableflow = asyncio.create_task(_tableflow(log_, settings.iceberg_freshness_s))
    acl_refresh = (
        asyncio.create_task(broker.access.refresh())
        if broker.access.enabled or any(listener.sasl for listener in listeners)
        else None
    )
    for listener in listeners:
        log.info(
            "Kafka protocol %s on %s:%d, advertised as %s:%d%s",
            listener.protocol,
            listener.host,
            listener.port,
            listener.advertised_host,
            listener.advertised_port,
            " (client certificates required)" if listener.tls and settings.tls_client_ca else "",
        )
    _warn_of_open_listeners(listeners, settings)
    if ready is not None:
        ready.set()
    try:
        await asyncio.gather(*(server.serve_forever() for server in servers))
    finally:
        sweeper.cancel()
        transaction_sweeps.cancel()
        retention.cancel()
        tableflow.cancel()
        if acl_refresh is not None:
            acl_refresh.cancel()
        heartbeat.cancel()
        group_leases.cancel()
        for server in servers:
            server.close()
        await broker.coordination.release_all()
        await broker.cluster.leave()
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.gather(*connections, return_exceptions=True)
        broker.detach()


def _warn_of_open_listeners(listeners: list[Listener], settings: Settings) -> None:
    """Warn of a listener beyond the loopback interface that lets anyone in (no SASL, no client
    certificates) or anyone do anything (no authorizer)."""
    for listener in listeners:
        if ipaddress_is_loopback(listener.host):
            continue
        if not (listener.sasl or (listener.tls and settings.tls_client_ca)):
            log.warning(
                "%s serves anyone who can reach it: use SASL_SSL (or SSL with --tls-client-ca)",
                listener,
            )
        elif settings.authorizer != "acl":
            log.warning(
                "%s: every authenticated client may do anything: use --authorizer acl", listener
            )


def ipaddress_is_loopback(host: str) -> bool:
    """Whether ``host`` names the loopback interface only.

    >>> ipaddress_is_loopback("127.0.0.1"), ipaddress_is_loopback("0.0.0.0")
    (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def favour_waiting_threads() -> None:
    """Set this process's thread switch interval to :data:`THREAD_SWITCH_INTERVAL_S`: for a
    process whose job is serving (``serve``), never for a library user's."""
    sys.setswitchinterval(THREAD_SWITCH_INTERVAL_S)


def freeze_startup_objects() -> None:
    """Leave the objects made so far (modules, classes, kio's schemas: ~100,000) out of
    every garbage collection from now on, for a serving process once started (``serve``).

    A full collection walked them all, stopping the event loop ~60 ms each time (once per
    ~500 transactions of the 16-producer benchmark), to find garbage among objects that
    live as long as the process."""
    gc.freeze()


def run(settings: Settings) -> None:
    """Open the log, serve until SIGINT or SIGTERM, then close the log cleanly."""
    favour_waiting_threads()
    keep_off_huge_pages(settings.transparent_huge_pages)
    log_ = Log.open(settings)
    freeze_startup_objects()
    try:
        asyncio.run(_serve_until_signalled(log_, settings))
    finally:
        log_.close()
        log.info("stopped")


async def _serve_until_signalled(log_: Log, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    serving = asyncio.create_task(serve(log_, settings))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, serving.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serving
