"""The inputs of a continuous query: per source, partitions, committed offsets and event time.

Each source (a declared stream or a plain topic) keeps, per partition, the next offset to read
and the maximum event time seen; its watermark is the minimum over partitions of ``max event
time - declared delay``, partitions idle for ``idle-timeout`` excluded. The query's watermark is
the minimum over its sources. State keys (``meta`` column family), ``i`` the source's index:
``b"source/" + u8(i) + u32(partition)`` -> next offset, ``b"event_time/" + u8(i) +
u32(partition)`` -> max event time + 2**63.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.log import Log
from streamhouse.sql.source import decode_json, infer_schema, read_records, with_metadata
from streamhouse.state.store import StateBatch, StateStore, partition_key
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

NO_WATERMARK = -(1 << 62)
SOURCE = b"source/"
EVENT_TIME = b"event_time/"
_BIAS = 1 << 63


@dataclass
class SourceRead:
    """One micro-batch's rows of a source."""

    table: pa.Table | None
    records: pa.Table | None
    rejected: list[tuple[int, str]] = field(default_factory=list)


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
        self.positions: dict[int, int] = {}
        self.event_times: dict[int, int] = {}
        self.last_data: dict[int, float] = {}
        self._prefix = bytes([index])

    def load(self, log_: Log, store: StateStore, latest: bool) -> None:
        info = log_.topic(self.topic)
        now = time.monotonic()
        for p in range(info.partitions):
            stored = store.get_int(partition_key(SOURCE + self._prefix, p))
            if stored is None:
                bounds = log_.offsets(self.topic, p)
                stored = bounds.high_watermark if latest else bounds.log_start_offset
            self.positions[p] = stored
            event_time = store.get_int(partition_key(EVENT_TIME + self._prefix, p))
            if event_time is not None:
                self.event_times[p] = event_time - _BIAS
            self.last_data[p] = now

    def plan_batch(self, log_: Log, budget: int) -> dict[int, int]:
        """End offsets of the next micro-batch, at most ``budget`` records."""
        info = log_.topic(self.topic)
        for p in range(len(self.positions), info.partitions):  # partitions added since
            self.positions[p] = 0
            self.last_data[p] = time.monotonic()
        ends = {}
        for p in sorted(self.positions):
            available = log_.offsets(self.topic, p).high_watermark - self.positions[p]
            ends[p] = self.positions[p] + max(0, min(available, budget))
            budget -= ends[p] - self.positions[p]
        return ends

    def read(self, log_: Log, ends: dict[int, int]) -> SourceRead:
        wanted = [p for p in ends if ends[p] > self.positions[p]]
        if not wanted:
            return SourceRead(None, None)
        now = time.monotonic()
        for p in wanted:
            self.last_data[p] = now
        records = read_records(log_, self.topic, wanted, self.positions, ends)
        if records.num_rows == 0:
            return SourceRead(None, records)
        if self.schema is None:
            self.schema = infer_schema(records["value"])
            if self.schema is None:
                raise StreamHouseError(f"topic {self.topic!r} does not hold JSON objects")
        table, rows, rejected = decode_json(records["value"], self.schema)
        return SourceRead(with_metadata(table, records, rows), records, rejected)

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
