"""The produce path: buffer appends across partitions, flush one segment object, then acknowledge.

Durability contract: an append's future resolves only after the segment object holding it is
durable in the object store (fsync + atomic rename locally, a completed PUT on S3) AND its index
rows are committed in the metadata store.

When flushes happen (group commit driven by the backlog): an idle writer (no object being
put, none waiting for or in its commit) flushes an append at once, so a producer sending one
record at a time waits for one put and one commit, nothing more. A busy writer batches: while
objects are put and committed, appends pile up, and the next object takes them ``linger_ms``
(5 by default) after the first of them, or at once when ``max_bytes`` are pending. Without
that wait a busy writer on a fast disk puts many small objects, each with its own commit:
fewer records per object cost CPU and throughput. ``linger_when_idle`` makes every flush
wait ``linger_ms``, an idle writer's too (fewer, larger objects; tests that need appends
made together in one object).

What overlaps and what does not: a flush's object is made durable before its commit starts,
and the next flush's object is put while it commits. The local store fsyncs a new object and
its directory at once (see :class:`~streamhouse.log.objectstore.LocalObjectStore`). The
metadata commit of a flush never overlaps its own put: an index row committed before its
object is durable would, after a crash or a kill during the put (an S3 PUT is not there until
it completes), name an object that is not there, and readers would fail on offsets no producer
was told of. ``serve`` logs where each flush's time went when it stops (``produce path, mean
per flush``: waiting for the writer thread, encoding, the put and its parts, waiting for the
committer, the commit, waking the event loop).

Offsets are sequenced by the metadata store at commit: a flush proposes none. The writer stamps
each batch's ``baseOffset`` (bytes 0-7, outside the CRC) with a *tentative* offset, its best
guess (following the flush before it, committed or not), encodes one segment object and puts
it; :meth:`~streamhouse.log.metadata.Metadata.commit_segment` then indexes each partition's run
at that partition's high watermark in one transaction and says where. The object is never
rewritten: where the guess was wrong (another process committed to the partition meanwhile,
or an earlier flush failed) the index row holds the assigned offsets, the object's footer the
written ones, and the reader re-stamps the batches by the difference; a sequence note
(:mod:`~streamhouse.log.sequence_notes`) records the assigned ones in the object store before
the flush is acknowledged. No record is decoded on
this path. Flushes are pipelined over two threads, so that objects are written while the
index rows of the ones before are committed (group commit):

- the *writer* thread collects pending appends, stamps their tentative offsets, encodes one
  segment object and puts it, at once when idle (``linger_ms`` after the first of them while
  earlier flushes are put or committed), whether or not earlier flushes are committed yet
  (up to :data:`MAX_PUT_AHEAD` of them may wait for their commit);
- the *committer* thread commits, strictly in order, every put flush waiting when it is free,
  all in one transaction (:meth:`~streamhouse.log.metadata.Metadata.commit_segments`), and
  only then resolves their appends' futures with the assigned offsets and tells listeners.

So an append waits for its own put and for at most the one commit in flight, never for a
queue of commits: under load more flushes share a transaction, and its round trips and
``COMMIT`` are paid once. If the object store or the commit fails, every append of that flush
fails, nothing of it is acknowledged or indexed (a commit is all or nothing), its object is
deleted when the index provably does not name it, and later flushes guess again from the
committed high watermarks. A group commit that fails is made again flush by flush (unless the
store may have committed it), so a flush the store refuses fails its own appends only.

Two kinds of appends serve transactions: an *early* append (a transactional batch answered
before it is durable, :meth:`LogWriter.append_early`) is answered with the offsets reserved
for it when queued (:class:`_Reservations`), which its commit checks; it wakes no idle writer
and waits, at most :data:`LAZY_WAIT_S`, for a flush someone needs; appends queued with a commit hook (:meth:`LogWriter.append_hooked`, a
transaction's markers) flush at once, and their hook runs inside the store transaction that
commits them, so what it writes (the transaction's decision) is durable with them or not at
all; a hook's refusal refuses its own appends only, as the store refuses producer batches.

Futures: :meth:`LogWriter.append` returns a :class:`concurrent.futures.Future`;
:meth:`LogWriter.append_async` an :class:`asyncio.Future` that is resolved on its event loop,
all those of one flush in a single ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from streamhouse.errors import (
    LogError,
    RefusedBatchesError,
    StorageError,
    StreamHouseError,
    UnknownPartitionError,
)
from streamhouse.log.metadata import FlushedSegment, Metadata, ProducerBatch
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.rules import SEQUENCE_MODULO
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import BatchHeader
from streamhouse.log.records.header import BASE_OFFSET
from streamhouse.log.segment import SegmentBuilder, SegmentEntry, segment_key
from streamhouse.log.sequence_notes import write_note
from streamhouse.log.stage_times import StageTimes

log = logging.getLogger(__name__)

MAX_PUT_AHEAD = 4
"""Put flushes waiting for their commit before the writer thread waits too: at most this many
are being committed, as many waiting, and one being put; a process killed loses the
acknowledgement of all of them (nothing acknowledged), and leaves their objects unindexed."""

LAZY_WAIT_S = 0.1
"""How long a lazy append (:meth:`LogWriter.append_async`) waits for a flush someone needs."""

CommitListener = Callable[[str, int, int], None]
"""Called after each commit with (topic, partition, new high watermark)."""

CommitHook = Callable[[Any, Mapping[tuple[str, int], int]], None]
"""Runs inside the metadata transaction that commits the appends it was queued with
(:meth:`LogWriter.append_hooked`), given the store's connection and the offset the store gave
each of them: what it writes commits with them, or not at all. A :class:`LogError` it raises
refuses those appends (it is their answer) and the rest of their flush commits without them."""


_Key = tuple[str, int]


@dataclass(slots=True)
class _Append:
    topic: str
    partition: int
    data: bytes | memoryview | bytearray  # a bytearray is the writer's: stamped in place
    headers: list[tuple[int, BatchHeader]]  # (start position in data, header)
    future: Future[int] | asyncio.Future[int]
    loop: asyncio.AbstractEventLoop | None  # set for asyncio futures: resolved on that loop
    sequence: int = 0
    fence: Lease | None = None  # committed only while this lease is held
    hook: CommitHook | None = None  # runs in the transaction that commits it
    on_loss: Callable[[], None] | None = None  # called where it fails (see append_async)
    book: _Reservations | None = None  # counts it in the offsets queued to its partition
    expected: int | None = None  # its base offset if nothing ahead of it shifts
    reserved: int | None = None  # its base offset, answered already: committed there or not
    settled: bool = False  # counted out of the book


_Outcome = tuple[_Append, int, BaseException | None]
"""An append and its base offset (on success) or its error."""


def _settle(outcomes: Iterable[_Outcome], times: StageTimes | None = None) -> None:
    """Resolve the futures of finished appends; a future resolved already is left alone.

    :class:`concurrent.futures.Future` are set here; asyncio futures are set on their event
    loop, all those of one loop in one ``call_soon_threadsafe`` (one wake-up per flush).
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        item, offset, error = outcome
        if item.book is not None:
            item.book.settled(item, offset, error)
        if error is not None and item.on_loss is not None:
            item.on_loss()  # now, before the committer goes on to later flushes
        if item.loop is not None:
            by_loop.setdefault(item.loop, []).append(outcome)
            continue
        try:
            if error is None:
                item.future.set_result(offset)
            else:
                item.future.set_exception(error)
        except InvalidStateError:  # resolved already, or cancelled by its caller
            pass
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, settled, times, time.monotonic())
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("event loop closed; %d append(s) not reported", len(settled))


def _settle_on_loop(settled: list[_Outcome], times: StageTimes | None, called_at: float) -> None:
    if times is not None:
        times.add("wake event loop", time.monotonic() - called_at)
    for item, offset, error in settled:
        if item.future.done():
            continue
        if error is None:
            item.future.set_result(offset)
        else:
            item.future.set_exception(error)


def _fail(appends: Iterable[_Append], error: BaseException) -> None:
    _settle((item, -1, error) for item in appends)


class _Reservations:
    """The offsets of what is queued to each partition, known when an append is queued so that
    a transactional batch answered before it is durable (:meth:`LogWriter.append_early`) is
    answered with the base offset it will get, which its commit then checks.

    Alone on its partitions (SQLite), the writer gives each append the partition's high
    watermark plus the records queued ahead of it, unless something ahead shifts them: an
    append ahead failed or was refused (a duplicate takes no offsets), or another process
    wrote. So a partition's count starts when an append finds nothing of it in flight (the
    high watermark, read then, is final), once offsets were to be reserved there (agents,
    which never reserve, read nothing more) and is dropped as soon as an append it counted
    settles elsewhere than it expected; reservations wait until nothing is in flight again.
    The count only guesses: the commit of a reserved append checks the store gave it those
    offsets."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self._lock = threading.Lock()
        self._next: dict[_Key, int] = {}  # where the next append queued there will go
        self._unsettled: dict[_Key, int] = {}  # appends queued there and not yet settled
        self._wanted: set[_Key] = set()  # partitions where offsets were ever to be reserved

    def queued(self, item: _Append, reserve: bool) -> None:
        """Count ``item`` in (called in queue order); with ``reserve``, reserve its offsets
        (``item.reserved``) if they are known."""
        key = (item.topic, item.partition)
        with self._lock:
            item.book = self
            unsettled = self._unsettled[key] = self._unsettled.get(key, 0) + 1
            base = self._next.get(key)
            if reserve:
                self._wanted.add(key)
            if base is None and unsettled == 1 and key in self._wanted:  # count from here
                base = self._high_watermark(key)
            if base is None:
                return
            item.expected = base
            if reserve:
                item.reserved = base
            self._next[key] = base + sum(h.last_offset_delta + 1 for _, h in item.headers)

    def _high_watermark(self, key: _Key) -> int | None:
        try:
            offsets = self._metadata.partition_offsets(key[0])
        except StreamHouseError as exc:  # the append fails on its own way; no reservation
            log.debug("no offsets reserved in %s/%d: %s", key[0], key[1], exc)
            return None
        known = offsets.get(key[1])
        return None if known is None else known.high_watermark

    def settled(self, item: _Append, offset: int, error: BaseException | None) -> None:
        """``item`` is answered (once counted, whatever the calls)."""
        key = (item.topic, item.partition)
        with self._lock:
            if item.settled:
                return
            item.settled = True
            left = self._unsettled[key] - 1
            if left:
                self._unsettled[key] = left
            else:
                del self._unsettled[key]
            if item.expected is not None and (error is not None or offset != item.expected):
                self._next.pop(key, None)  # shifted: what follows is not where counted

    def forget(self, topic: str) -> None:
        with self._lock:
            for key in [k for k in self._next if k[0] == topic]:
                del self._next[key]
            self._wanted = {k for k in self._wanted if k[0] != topic}


def _same_fence(pending: list[_Append]) -> tuple[list[_Append], list[_Append]]:
    """(the appends of the next flush, those left pending): the longest run from the first
    pending append that shares its fence, so a flush's commit is fenced by one lease or none
    and a refused fence fails no other producer's records."""
    fence = pending[0].fence
    cut = next((i for i, item in enumerate(pending) if item.fence is not fence), len(pending))
    return pending[:cut], pending[cut:]


@dataclass(slots=True)
class _Flush:
    """One segment object on its way from the writer thread to the committer thread."""

    appends: list[_Append]  # every append of the flush, failed ones included
    by_partition: dict[_Key, list[_Append]] = field(default_factory=dict)
    object_key: str = ""
    data: bytes = b""
    entries: list[SegmentEntry] = field(default_factory=list)
    resolved: list[tuple[_Append, int]] = field(default_factory=list)  # tentative offsets
    fence: Lease | None = None  # the lease every append of the flush is fenced by, if any
    assigned: dict[_Key, int] = field(default_factory=dict)  # tentative next offsets
    producer_batches: list[ProducerBatch] = field(default_factory=list)  # idempotent ones
    claims: list[_Append] = field(default_factory=list)  # the append of each producer batch
    error: BaseException | None = None  # the put failed
    first_at: float = 0.0  # time.monotonic() of its first append (0: flushed on demand)
    put_at: float = 0.0  # time.monotonic() when its object was put


_STOP = _Flush([])


@dataclass(slots=True)
class WriterStats:
    """Counts since the writer started: objects put, objects committed, and commits the store
    indexed at other offsets than they were written with (another writer came first). An
    object is never put twice, so ``objects_put - objects_committed`` are failed flushes."""

    objects_put: int = 0
    objects_committed: int = 0
    sequenced_elsewhere: int = 0
    duplicate_batches: int = 0  # idempotent batches the store had indexed already
    group_commits: int = 0  # commits that indexed several objects in one transaction
    early_unreserved: int = 0  # early appends answered once durable: no offset known then
    times: StageTimes = field(default_factory=StageTimes)  # per flush, by stage


class LogWriter:
    """Buffers appends from any thread and flushes them as one segment object at a time."""

    def __init__(
        self,
        store: ObjectStore,
        metadata: Metadata,
        *,
        linger_ms: float = 5.0,
        linger_when_idle: bool = False,
        max_bytes: int = 8 * 1024 * 1024,
        on_segment: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self._store = store
        self._metadata = metadata
        self._linger = linger_ms / 1000.0
        self._linger_when_idle = linger_when_idle
        self._max_bytes = max_bytes
        self._on_segment = on_segment
        self._listeners: list[CommitListener] = []
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer thread waits on it
        self._ready = threading.Condition(self._lock)  # the committer waits on it
        self._done = threading.Condition(self._lock)  # flush() waits on it
        # guarded by _lock:
        self._pending: list[_Append] = []
        self._pending_bytes = 0
        self._fenced = 0  # pending appends with a fence
        self._first_pending_at = 0.0
        self._held = False  # every pending append is lazy (see append_async)
        self._appended = 0  # sequence number of the last append
        self._settled = 0  # every append up to this sequence number is resolved
        self._put: deque[_Flush] = deque()  # put, waiting for the committer, in order
        self._committing = 0  # flushes the committer has taken and not yet settled
        self._closed = False
        # guarded by _offsets_lock:
        self._offsets_lock = threading.Lock()
        self._next_offsets: dict[_Key, int] = {}  # tentative: the next offset to stamp
        self._book = _Reservations(metadata)  # locked inside _lock, never around it
        self.stats = WriterStats()  # written by the writer and committer threads only
        self._sequence = count(time.time_ns() // 1000)
        self._writer = threading.Thread(target=self._write_loop, name="streamhouse-flusher")
        self._committer = threading.Thread(target=self._commit_loop, name="streamhouse-commit")
        self._writer.daemon = self._committer.daemon = True
        self._writer.start()
        self._committer.start()

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    # -- appending --------------------------------------------------------------------------

    def append(
        self,
        topic: str,
        partition: int,
        data: bytes | memoryview,
        headers: list[tuple[int, BatchHeader]],
        fence: Lease | None = None,
    ) -> Future[int]:
        """Queue validated batches; the future resolves to the first batch's base offset.

        With ``fence``, they are committed only while that lease is held: in a flush of
        their own, whose commit checks the lease (``FencedError`` otherwise)."""
        return self.append_together([(topic, partition, data, headers)], fence)[0]

    def append_together(
        self,
        appends: Sequence[
            tuple[str, int, bytes | memoryview | bytearray, list[tuple[int, BatchHeader]]]
        ],
        fence: Lease | None = None,
    ) -> list[Future[int]]:
        """:meth:`append` of several partitions' batches queued at once, so that an idle
        writer flushes them together instead of the first alone (batches given as a
        ``bytearray`` are the writer's from then on: stamped with their offsets in place)."""
        items = [
            _Append(topic, partition, data, headers, Future(), None, fence=fence)
            for topic, partition, data, headers in appends
        ]
        self._queue(*items)
        return [item.future for item in items]  # type: ignore[misc]

    def append_async(
        self,
        topic: str,
        partition: int,
        data: bytes | memoryview,
        headers: list[tuple[int, BatchHeader]],
        *,
        urgent: bool = False,
    ) -> asyncio.Future[int]:
        """Like :meth:`append`, on a running event loop: the future resolves on that loop.

        ``urgent`` flushes now, with whatever else is pending, instead of ``linger_ms``
        after the first pending append (for a batch someone waits on alone: a transaction
        marker)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        item = _Append(topic, partition, data, headers, future, loop)
        self._queue(item, urgent=urgent)
        return future

    def append_early(
        self,
        topic: str,
        partition: int,
        data: bytes | memoryview,
        headers: list[tuple[int, BatchHeader]],
        on_loss: Callable[[], None],
    ) -> tuple[asyncio.Future[int], int | None]:
        """:meth:`append_async` of a batch answered before it is durable (a transactional
        one, which its EndTxn flushes together with its markers): ``(future, base offset)``.

        The base offset is reserved now (see :class:`_Reservations`), and the append waits,
        at most :data:`LAZY_WAIT_S`, for a flush someone else needs. Its commit refuses it
        unless the store gives it exactly that offset (something ahead of it shifted the
        partition), failing it. ``None``: no offset can be reserved now (something ahead
        shifted, and is still in flight): the append flushes as usual, to be answered once
        durable. ``on_loss`` is called in the writer's thread if the append fails, before
        any flush queued after it commits (so a :data:`CommitHook` of a later append sees
        it, which its future, resolved later on the loop, would not tell)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        item = _Append(topic, partition, data, headers, future, loop, on_loss=on_loss)
        self._queue(item, reserve=True)
        if item.reserved is None:
            self.stats.early_unreserved += 1
        return future, item.reserved

    def append_hooked(
        self,
        appends: Sequence[tuple[str, int, bytes | memoryview, list[tuple[int, BatchHeader]]]],
        hook: CommitHook,
    ) -> list[asyncio.Future[int]]:
        """:meth:`append_async` of several partitions' batches, queued at once and flushed
        now, so that one flush holds them all; ``hook`` runs in the transaction that commits
        them (see :data:`CommitHook`), once per commit with the offsets of those it holds."""
        loop = asyncio.get_running_loop()
        items = [
            _Append(topic, partition, data, headers, loop.create_future(), loop, hook=hook)
            for topic, partition, data, headers in appends
        ]
        self._queue(*items, urgent=True)
        return [item.future for item in items]  # type: ignore[misc]

    def _queue(self, *items: _Append, urgent: bool = False, reserve: bool = False) -> None:
        with self._lock:
            if self._closed:
                raise StorageError("the log is closed")
            for item in items:
                self._book.queued(item, reserve)
            lazy = reserve and all(item.reserved is not None for item in items)
            first = wake = not self._pending
            if first:
                self._first_pending_at = time.monotonic()
                self._held = lazy
            elif self._held and not lazy:  # someone waits now: linger as usual from here
                self._held = False
                self._first_pending_at = time.monotonic()
                wake = True
            for item in items:
                self._appended += 1
                item.sequence = self._appended
                self._pending.append(item)
                self._pending_bytes += len(item.data)
                self._fenced += item.fence is not None
            if urgent:
                self._first_pending_at = 0.0  # the linger is over
            if wake or urgent or self._pending_bytes >= self._max_bytes:  # else it lingers
                self._work.notify()

    def hurry(self) -> None:
        """Flush what is pending now, without waiting for it (nor lingering)."""
        with self._lock:
            if self._pending:
                self._first_pending_at = 0.0
                self._work.notify()

    def forget(self, topic: str) -> None:
        """Drop cached offsets of a deleted or re-created topic."""
        with self._offsets_lock:
            for key in [k for k in self._next_offsets if k[0] == topic]:
                del self._next_offsets[key]
        self._book.forget(topic)

    def flush(self) -> None:
        """Block until everything appended so far is flushed (or failed)."""
        with self._lock:
            target = self._appended
            self._first_pending_at = 0.0  # flush now
            self._work.notify()
            while self._settled < target and self._committer.is_alive():
                self._done.wait(0.1)

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._closed = True
            self._work.notify()
        self._writer.join()
        self._committer.join()
        if self.stats.objects_put:
            stages = {**self.stats.times.means_ms(), **self._store.times.means_ms()}
            log.info("produce path, mean per flush: %s", json.dumps(stages))
        if self.stats.early_unreserved:
            log.info(
                "%d early append(s) answered once durable (no offset could be reserved)",
                self.stats.early_unreserved,
            )

    # -- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if len(self._put) >= MAX_PUT_AHEAD:  # the committer is far behind
                        self._work.wait()
                    elif self._pending:
                        busy = self._put or self._committing or self._linger_when_idle
                        linger = self._linger if busy else 0.0
                        if self._held:  # only lazy appends are pending
                            linger = LAZY_WAIT_S
                        wait = self._first_pending_at + linger - time.monotonic()
                        if wait <= 0 or self._pending_bytes >= self._max_bytes or self._closed:
                            break
                        self._work.wait(wait)
                    elif self._closed:
                        self._put.append(_STOP)
                        self._ready.notify()
                        return
                    else:
                        self._work.wait()
                first_at = self._first_pending_at
                if self._fenced:  # appends fenced by a lease go in flushes of their own
                    batch, self._pending = _same_fence(self._pending)
                    self._pending_bytes = sum(len(item.data) for item in self._pending)
                    self._fenced = sum(item.fence is not None for item in self._pending)
                else:
                    batch, self._pending = self._pending, []
                    self._pending_bytes = 0
            flush = self._write(batch, first_at)
            with self._lock:
                self._put.append(flush)
                self._ready.notify()

    def _write(self, appends: list[_Append], first_at: float = 0.0) -> _Flush:
        """Stamp, encode and put one object; failures are left for the committer to handle."""
        flush = _Flush(appends, fence=appends[0].fence, first_at=first_at)
        times = self.stats.times
        started = time.monotonic()
        if first_at:
            times.add("wait for the writer thread", started - first_at)
        try:
            for item in appends:
                flush.by_partition.setdefault((item.topic, item.partition), []).append(item)
            with self._offsets_lock:
                self._build(flush)
            if not flush.entries:
                return flush
            flush.object_key = segment_key(next(self._sequence))
            built = time.monotonic()
            times.add("encode segment", built - started)
            self._store.put(flush.object_key, flush.data)
            flush.put_at = time.monotonic()
            times.add("object put", flush.put_at - built)
            self.stats.objects_put += 1
        except Exception as exc:  # reported by the committer, in order
            flush.error = exc
        return flush

    def _build(self, flush: _Flush) -> None:
        """Stamp tentative offsets following ``_next_offsets`` and encode one segment object
        into ``flush`` (its data, entries, tentative offsets and idempotent producer batches).

        Called with ``_offsets_lock`` held; advances ``_next_offsets`` (the committer corrects
        them by the offsets the store assigns, or forgets them if the flush fails). Appends to partitions that cannot be written
        (unknown ones) are failed and dropped from ``by_partition``; no entries if nothing is
        left to write.
        """
        builder = SegmentBuilder()
        producers: list[tuple[_Key, int, int, BatchHeader, _Append]] = []
        for key, items in list(flush.by_partition.items()):
            try:
                next_offset = self._next_offset(key)
            except StreamHouseError as exc:
                _fail(items, exc)
                del flush.by_partition[key]
                continue
            base = next_offset
            data = items[0].data
            if len(items) > 1:
                buf = bytearray().join(i.data for i in items)  # one copy, not two
            elif isinstance(data, bytearray):  # handed over (Log.append_together framed_here)
                buf = data
            else:
                buf = bytearray(data)
            position = 0
            min_ts, max_ts, records = None, None, 0
            for item in items:
                flush.resolved.append((item, next_offset))
                for start, header in item.headers:
                    BASE_OFFSET.pack_into(buf, position + start, next_offset)
                    if header.producer_id >= 0:
                        producers.append((key, base, next_offset - base, header, item))
                    next_offset += header.last_offset_delta + 1
                    records += header.record_count
                    hi = header.max_timestamp
                    lo = hi if header.timestamp_type else header.base_timestamp  # log-append
                    min_ts = lo if min_ts is None or lo < min_ts else min_ts
                    max_ts = hi if max_ts is None or hi > max_ts else max_ts
                position += len(item.data)
            builder.add(
                key[0],
                key[1],
                buf,
                base_offset=base,
                last_offset=next_offset - 1,
                min_timestamp=min_ts if min_ts is not None else -1,
                max_timestamp=max_ts if max_ts is not None else -1,
                record_count=records,
            )
            flush.assigned[key] = next_offset
            self._next_offsets[key] = next_offset
        if not flush.assigned:
            return
        flush.data, flush.entries = builder.build()
        entry_of = {(e.topic, e.partition): i for i, e in enumerate(flush.entries)}
        for key, _, delta, header, item in producers:
            first = header.base_sequence
            last = (first + header.last_offset_delta) % SEQUENCE_MODULO if first >= 0 else -1
            flush.producer_batches.append(
                ProducerBatch(
                    entry_of[key],
                    delta,
                    header.producer_id,
                    header.producer_epoch,
                    first,
                    last,
                )
            )
            flush.claims.append(item)

    def _next_offset(self, key: _Key) -> int:
        cached = self._next_offsets.get(key)
        if cached is not None:
            return cached
        offsets = self._metadata.partition_offsets(key[0])
        if key[1] not in offsets:
            raise UnknownPartitionError(key[0], key[1])
        for partition, known in offsets.items():  # one read per topic, not per partition
            self._next_offsets.setdefault((key[0], partition), known.high_watermark)
        return self._next_offsets[key]

    def _forget_offsets(self) -> None:
        """Guess the next flushes' offsets from the committed high watermarks again."""
        with self._offsets_lock:
            self._next_offsets.clear()

    # -- the committer thread ---------------------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._lock:
                while not self._put:
                    self._ready.wait()
                group = self._take_group()
                self._committing = len(group)
                self._work.notify()
            if not group:
                return
            try:
                self._commit_group(group)
            except Exception as exc:  # the committer must never die with producers waiting
                log.exception("flush failed")
                error = (
                    exc
                    if isinstance(exc, StreamHouseError)
                    else StorageError(f"flush failed: {exc}")
                )
                self._forget_offsets()
                for flush in group:
                    _fail(flush.appends, error)
            with self._lock:
                self._settled = group[-1].appends[-1].sequence
                self._committing = 0
                self._done.notify_all()
                self._work.notify()  # an append lingering behind this commit may go now

    def _take_group(self) -> list[_Flush]:
        """The put flushes to commit next, in order (called with ``_lock`` held): all those
        waiting; a fenced flush alone (its commit checks its lease). Empty at the end
        (:data:`_STOP`)."""
        group: list[_Flush] = []
        while self._put:
            flush = self._put[0]
            if flush is _STOP:
                if not group:
                    self._put.popleft()
                break
            if group and (flush.fence is not None or group[0].fence is not None):
                break
            group.append(self._put.popleft())
        return group

    def _commit_group(self, group: list[_Flush]) -> None:
        """Commit put flushes in one transaction; every future is resolved on return.

        Flushes whose put failed, or with nothing left to write, are settled first. If the
        group commit fails, and the store provably did not commit it, each flush is committed
        on its own, in order, so that a refusal fails only the flush it concerns."""
        whole = [f for f in group if f.error is None and f.resolved]
        times, started = self.stats.times, time.monotonic()
        for flush in whole:
            times.add("wait for the committer", started - flush.put_at)
        for flush in group:
            if flush.error is not None or not flush.resolved:
                self._commit(flush)  # fails its appends, or has nothing to commit
        if len(whole) <= 1:
            for flush in whole:
                self._commit(flush)
            return
        try:
            bases = self._metadata.commit_segments(
                [
                    FlushedSegment(f.object_key, f.entries, f.producer_batches, self._then(f))
                    for f in whole
                ]
            )
            times.add("metadata commit", time.monotonic() - started)
        except Exception as exc:
            if self._group_committed(whole, exc):
                return
            log.info("group commit of %d flushes failed (%s); one at a time", len(whole), exc)
            for flush in whole:
                self._commit(flush)
            return
        self.stats.group_commits += 1
        for flush, assigned in zip(whole, bases, strict=True):
            self._acknowledge_commit(flush, assigned)

    def _group_committed(self, group: list[_Flush], error: BaseException) -> bool:
        """After a failed group commit: True (and every append failed, the objects left) if
        the store committed it or cannot tell; False if it provably did not (a refusal rolled
        it back, or the index does not name the first object)."""
        if isinstance(error, LogError) and not isinstance(error, StorageError):
            return False  # refused: rolled back
        try:
            if not self._metadata.is_indexed(group[0].object_key):
                return False
            log.warning("group commit from %s happened although it failed", group[0].object_key)
        except StreamHouseError as exc:
            log.warning("cannot tell whether a group commit happened; leaving it: %s", exc)
        self._forget_offsets()
        failure = error if isinstance(error, StreamHouseError) else StorageError(str(error))
        for flush in group:
            _fail((item for item, _ in flush.resolved), failure)
        return True

    def _commit(self, flush: _Flush) -> None:
        """Commit one put flush; every future is resolved on return.

        A commit the store refuses for some idempotent producer batches (duplicates of batches
        it indexed already, perhaps through another process, or out of order) was rolled back:
        those appends are answered, and the rest of the flush is written and committed again
        as a new object (rare: retries after a failover, or a misbehaving producer)."""
        while True:
            if flush.error is not None:
                exc = flush.error
                log.error("flush failed: %s", exc)
                self._forget_offsets()
                if flush.object_key and flush.entries:
                    self._delete_orphan(flush.object_key)  # never committed
                error = exc if isinstance(exc, StreamHouseError) else StorageError(str(exc))
                _fail(flush.appends, error)
                return
            if not flush.resolved:  # every append failed at stamping
                return
            try:
                started = time.monotonic()
                bases = self._metadata.commit_segment(
                    flush.object_key,
                    flush.entries,
                    flush.producer_batches,
                    fence=flush.fence,
                    then=self._then(flush),
                )
                self.stats.times.add("metadata commit", time.monotonic() - started)
            except RefusedBatchesError as refused:
                kept = self._answer_refused(flush, refused)
                if not kept:
                    return
                flush = self._write(kept)
                continue
            except Exception as exc:
                self._forget_offsets()
                self._abandon(flush.object_key, exc)
                log.error("flush of %s failed: %s", flush.object_key, exc)
                error = exc if isinstance(exc, StreamHouseError) else StorageError(str(exc))
                _fail((item for item, _ in flush.resolved), error)
                return
            self._acknowledge_commit(flush, bases)
            return

    @staticmethod
    def _then(flush: _Flush) -> Callable[[Any, Sequence[int]], None] | None:
        """What the commit of ``flush`` runs after indexing it (given the base offsets of its
        entries): it refuses the appends answered with reserved offsets that the store did
        not give them (:meth:`append_early`), then runs the hooks of the others, each once
        with the offsets of its own ones. A refusal refuses its appends, as the store refuses
        producer batches."""
        hooked = [(item, offset) for item, offset in flush.resolved if item.hook is not None]
        reserved = [(item, offset) for item, offset in flush.resolved if item.reserved is not None]
        if not hooked and not reserved:
            return None

        def then(conn: Any, bases: Sequence[int]) -> None:
            shift = {
                (e.topic, e.partition): base - e.base_offset
                for e, base in zip(flush.entries, bases, strict=True)
            }
            claims = {id(claim): i for i, claim in enumerate(flush.claims)}
            verdicts: dict[int, int | LogError] = {}
            for item, offset in reserved:
                indexed = offset + shift[(item.topic, item.partition)]
                if indexed != item.reserved:
                    log.warning(
                        "%s/%d: a batch answered with offset %d would be indexed at %d"
                        " (something ahead of it failed): refused",
                        item.topic,
                        item.partition,
                        item.reserved,
                        indexed,
                    )
                    error = LogError(
                        f"{item.topic}/{item.partition}: offsets shifted after the batch was"
                        f" answered with offset {item.reserved} (it would be at {indexed})"
                    )
                    if id(item) not in claims:
                        raise error  # not a producer batch: the flush fails with it
                    verdicts[claims[id(item)]] = error
            if verdicts:
                raise RefusedBatchesError(verdicts)
            by_hook: dict[int, tuple[CommitHook, dict[_Key, int], list[_Append]]] = {}
            for item, offset in hooked:
                assert item.hook is not None
                key = (item.topic, item.partition)
                _, offsets, items = by_hook.setdefault(id(item.hook), (item.hook, {}, []))
                offsets[key] = offset + shift[key]
                items.append(item)
            for hook, offsets, items in by_hook.values():
                try:
                    hook(conn, offsets)
                except LogError as exc:
                    if any(id(item) not in claims for item in items):
                        raise  # not a producer batch: the flush fails with it
                    verdicts.update((claims[id(item)], exc) for item in items)
            if verdicts:
                raise RefusedBatchesError(verdicts)

        return then

    def _answer_refused(self, flush: _Flush, refused: RefusedBatchesError) -> list[_Append]:
        """Answer the appends whose batches a (rolled back) commit refused: a duplicate with
        the offset its first copy got, the others with their error; the appends left."""
        self._delete_orphan(flush.object_key)  # rolled back: no index row names it
        self._forget_offsets()
        answered: dict[int, _Outcome] = {}
        for index, verdict in sorted(refused.verdicts.items()):
            item = flush.claims[index]
            if id(item) in answered:
                continue
            if isinstance(verdict, int):
                self.stats.duplicate_batches += 1
                log.info(
                    "%s/%d: duplicate batch, indexed at %d", item.topic, item.partition, verdict
                )
                answered[id(item)] = (item, verdict, None)
            else:
                log.info("%s/%d: %s", item.topic, item.partition, verdict)
                answered[id(item)] = (item, -1, verdict)
        _settle(answered.values())
        return [item for item, _ in flush.resolved if id(item) not in answered]

    def _acknowledge_commit(self, flush: _Flush, bases: list[int]) -> None:
        """Resolve a committed flush's appends with the offsets the store gave its entries."""
        shift = {
            (e.topic, e.partition): base - e.base_offset
            for e, base in zip(flush.entries, bases, strict=True)
        }
        self.stats.objects_committed += 1
        if any(shift.values()):
            self.stats.sequenced_elsewhere += 1
            log.debug(
                "segment %s indexed at other offsets than written: %s", flush.object_key, shift
            )
            # Before acknowledging: a rebuild of lost metadata must find the offsets the
            # producers are told, and the footer holds the written ones only.
            write_note(self._store, flush.object_key, flush.entries, bases)
            with self._offsets_lock:  # guess on from the assigned offsets, unless a later
                # flush was stamped already (its own commit corrects the guess then)
                for key, delta in shift.items():
                    if delta and self._next_offsets.get(key) == flush.assigned[key]:
                        self._next_offsets[key] += delta
        resolved = [
            (item, offset + shift[(item.topic, item.partition)]) for item, offset in flush.resolved
        ]
        assigned = {key: offset + shift[key] for key, offset in flush.assigned.items()}
        self._acknowledge(flush.object_key, flush.data, resolved, assigned)

    def _delete_orphan(self, object_key: str) -> None:
        try:
            self._store.delete(object_key)
        except StreamHouseError as exc:
            log.warning("cannot delete orphan segment object %s: %s", object_key, exc)

    def _abandon(self, object_key: str, error: BaseException) -> None:
        """Delete the object of a failed commit when the index provably does not name it.

        A refusal (an unknown topic or partition) rolled the transaction back; after any other
        failure (the connection was lost, say) the commit may have happened, so the index is
        asked, and the object left alone if it names it or cannot be asked.
        """
        refused = isinstance(error, LogError) and not isinstance(error, StorageError)
        if not refused:
            try:
                if self._metadata.is_indexed(object_key):
                    log.warning("segment %s was committed although the commit failed", object_key)
                    return
            except StreamHouseError as exc:
                log.warning("cannot tell whether %s was committed; leaving it: %s", object_key, exc)
                return
        self._delete_orphan(object_key)

    def _acknowledge(
        self,
        object_key: str,
        data: bytes,
        resolved: list[tuple[_Append, int]],
        assigned: dict[_Key, int],
    ) -> None:
        if self._on_segment is not None:
            try:
                self._on_segment(object_key, data)
            except Exception:  # a cache failure must not fail a durable produce
                log.exception("segment callback failed")
        _settle(((item, offset, None) for item, offset in resolved), self.stats.times)
        self.announce(assigned)

    def announce(self, high_watermarks: Mapping[_Key, int]) -> None:
        """Tell the commit listeners each partition's high watermark (after a commit there,
        or when its last stable offset moved)."""
        for (topic, partition), high_watermark in high_watermarks.items():
            for listener in self._listeners:
                try:
                    listener(topic, partition, high_watermark)
                except Exception:  # a listener must not break the produce path
                    log.exception("commit listener failed")
