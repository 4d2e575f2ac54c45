"""The inputs of a continuous query: per source, partitions, committed offsets and event time.

Each source (a declared stream or a plain topic) keeps, per partition, the next offset to read
and the maximum event time seen; its watermark is the minimum over partitions of ``max event
time - declared delay``, partitions idle for ``idle-timeout`` excluded. The query's watermark is
the minimum over its sources. A damaged range of records fails the read, or with
``read.on-damage = 'skip'`` is passed over and reported. State keys (``meta`` column family), ``i`` the source's index:
``b"source/" + u8(i) + u32(partition)`` -> next offset, ``b"event_time/" + u8(i) +
u32(partition)`` -> max event time + 2**63.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from streamhouse.errors import DamagedRangeError, StreamHouseError
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation, stable_ends
from streamhouse.sql.computed import ComputedColumns
from streamhouse.sql.source import RejectedRow, read_source
from streamhouse.state.store import StateBatch, StateStore, partition_key
from streamhouse.windows.table import event_time_ms
from streamhouse.workers import worker

log = logging.getLogger(__name__)

NO_WATERMARK = -(1 << 62)
SOURCE = b"source/"
EVENT_TIME = b"event_time/"
_BIAS = 1 << 63


@dataclass
class SourceRead:
    """One micro-batch's rows of a source: parsed, how many records were read, those left
    out (they go to the dead-letter topic) and the damaged ranges skipped."""

    table: pa.Table | None
    records: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    damaged: list[DamagedRangeError] = field(default_factory=list)


class QuerySource:
    """One source of a continuous query and its progress."""

    def __init__(
        self,
        index: int,
        name: str,
        topic: str,
        schema: pa.Schema | None,
        time_column: str | None,
        delay_ms: int,
    ) -> None:
        self.index = index
        self.name = name
        self.topic = topic
        self.schema = schema
        self.time_column = time_column
        self.delay_ms = delay_ms
        self.columns: set[str] | None = None  # value fields to parse (None: all)
        self.skip_damaged = False  # read.on-damage = 'skip'
        self.isolation = Isolation.READ_COMMITTED  # isolation.level
        self.computed: ComputedColumns | None = None  # evaluated on every decoded batch
        self._prefetched: tuple[tuple[dict, dict], Future[SourceRead]] | None = None
        self.owned: set[int] | None = None  # the partitions a task of a parallel query reads
        self.positions: dict[int, int] = {}
        self.event_times: dict[int, int] = {}
        self.last_data: dict[int, float] = {}
        self._prefix = bytes([index])

    def load(self, log_: Log, store: StateStore, latest: bool) -> None:
        info = log_.topic(self.topic)
        now = time.monotonic()
        offsets = log_.metadata.partition_offsets(self.topic)  # every partition in one query
        for p in range(info.partitions):
            if not self.owns(p):
                continue
            stored = store.get_int(partition_key(SOURCE + self._prefix, p))
            if stored is None:
                bounds = offsets[p]
                stored = bounds.high_watermark if latest else bounds.log_start_offset
            self.positions[p] = stored
            event_time = store.get_int(partition_key(EVENT_TIME + self._prefix, p))
            if event_time is not None:
                self.event_times[p] = event_time - _BIAS
            self.last_data[p] = now

    def owns(self, partition: int) -> bool:
        """Whether this source reads ``partition`` (all of them, unless a task of a parallel
        query reads only its share)."""
        return self.owned is None or partition in self.owned

    def plan_batch(
        self, log_: Log, budget: int, positions: dict[int, int] | None = None
    ) -> dict[int, int]:
        """End offsets of the next micro-batch, at most ``budget`` records, from ``positions``
        (default: where the source stands)."""
        info = log_.topic(self.topic)
        for p in range(info.partitions):  # partitions added since
            if p in self.positions or not self.owns(p):
                continue
            self.positions[p] = 0
            self.last_data[p] = time.monotonic()
        starts = {**self.positions, **(positions or {})}
        offsets = log_.metadata.partition_offsets(self.topic)  # every partition in one query
        ends = {}
        now = time.monotonic()
        for p in sorted(starts):
            available = offsets[p].high_watermark - starts[p]
            if available > 0:  # records wait: not idle, though the budget may leave them for later
                self.last_data[p] = now
            ends[p] = starts[p] + max(0, min(available, budget))
            budget -= ends[p] - starts[p]
        if self.isolation is Isolation.READ_COMMITTED:  # never past a last stable offset:
            # the source moves on to its ends, so records cut there would never be read
            low = min(starts.values(), default=0)
            stability = log_.metadata.transactions.topic_stability(self.topic, low)
            stable = stable_ends(stability, ends)  # type: ignore[arg-type]
            ends = {p: max(starts[p], stable[p]) for p in ends}
        return ends

    def read(self, log_: Log, ends: dict[int, int]) -> SourceRead:
        wanted = [p for p in ends if ends[p] > self.positions[p]]
        if not wanted:
            return SourceRead(None)
        now = time.monotonic()
        for p in wanted:
            self.last_data[p] = now
        starts = {p: self.positions[p] for p in wanted}
        until = {p: ends[p] for p in wanted}
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None:
            plan, future = prefetched
            # Not started yet (the thread is busy with another query's batch): read it here.
            if not future.cancel() and plan == (starts, until):
                return future.result()
        return self._fetch(log_, wanted, starts, until)

    def prefetch(self, log_: Log, starts: dict[int, int], ends: dict[int, int]) -> None:
        """Start reading the micro-batch after this one on another thread, so that it is
        decoded while this one is processed; :meth:`read` takes it if its plan is the same."""
        wanted = [p for p in ends if ends[p] > starts.get(p, 0)]
        if not wanted or self.schema is None:
            return
        starts = {p: starts.get(p, 0) for p in wanted}
        until = {p: ends[p] for p in wanted}
        future = worker("prefetch").submit(self._fetch, log_, wanted, starts, until)
        self._prefetched = ((starts, until), future)

    def _fetch(
        self, log_: Log, wanted: list[int], starts: dict[int, int], ends: dict[int, int]
    ) -> SourceRead:
        read = read_source(
            log_,
            self.topic,
            self.schema,
            self._columns(),
            wanted,
            starts,
            ends,
            skip_damaged=self.skip_damaged,
            isolation=self.isolation,
        )
        if self.schema is None and read.rows_read:  # a plain topic: its first values tell
            if read.schema is None:
                raise StreamHouseError(f"topic {self.topic!r} does not hold JSON objects")
            self.schema = read.schema  # (prefetching starts once it is known)
        if read.rows_read == 0:
            return SourceRead(None, damaged=read.damaged)
        table = self.computed.apply(read.table) if self.computed else read.table
        return SourceRead(table, read.rows_read, read.rejected, read.damaged)

    def _columns(self) -> set[str] | None:
        """The fields the query uses (and the event time): the others are not parsed, so a
        record whose unused fields do not fit the schema is not rejected (as in bounded reads)."""
        if self.columns is None:
            return None
        columns = self.columns | ({self.time_column} if self.time_column else set())
        return self.computed.needs(columns) if self.computed else columns

    def event_times_after(self, table: pa.Table | None) -> dict[int, int]:
        """Per-partition max event time including ``table``'s rows."""
        times = dict(self.event_times)
        if table is None or not self.time_column or self.time_column not in table.column_names:
            return times
        ts, valid = event_time_ms(table, self.time_column)
        if not valid.any():
            return times
        parts = table["_partition"].to_numpy()[valid]
        ts = ts[valid]
        order = np.lexsort((ts, parts))
        last = np.r_[parts[order][1:] != parts[order][:-1], True]
        for p, t in zip(parts[order][last].tolist(), ts[order][last].tolist(), strict=True):
            times[p] = max(t, times.get(p, NO_WATERMARK))
        return times

    def idle(self, idle_timeout_ms: int) -> bool:
        """Whether every partition read had no new records for ``idle_timeout_ms``."""
        now = time.monotonic()
        return bool(self.positions) and all(
            now - self.last_data.get(p, now) >= idle_timeout_ms / 1000 for p in self.positions
        )

    def watermark(self, event_times: dict[int, int], idle_timeout_ms: int) -> int:
        now = time.monotonic()
        partitions = sorted(self.positions)
        active = [
            p for p in partitions if now - self.last_data.get(p, now) < idle_timeout_ms / 1000
        ]
        values = []
        for p in active if active else partitions:
            if p not in event_times:
                if p in active:
                    return NO_WATERMARK  # an active partition with no event time yet holds it back
                continue
            values.append(event_times[p] - self.delay_ms)
        return min(values) if values else NO_WATERMARK

    def save(self, batch: StateBatch, ends: dict[int, int], event_times: dict[int, int]) -> None:
        for p, offset in ends.items():
            batch.put_int(partition_key(SOURCE + self._prefix, p), offset)
        for p, t in event_times.items():
            batch.put_int(partition_key(EVENT_TIME + self._prefix, p), t + _BIAS)

    def advance(self, ends: dict[int, int], event_times: dict[int, int]) -> None:
        self.positions = dict(ends)
        self.event_times = event_times
