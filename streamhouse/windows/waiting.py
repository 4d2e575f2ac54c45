"""Rows that wait in state until the watermark passes them (a temporal sort's, an OVER
aggregation's): kept as runs, released by time as the watermark advances.

State (under the operator's prefix, column family ``joins``; integers big-endian, times biased
as in :mod:`streamhouse.state.store`):

``prefix | u64(min event time) | u64(run)`` -> Arrow IPC stream of waiting rows (a run).
Key order visits runs by their oldest row, so the runs a watermark reaches are a prefix; a run
the watermark reaches is read, its released rows returned and the rest written back, together
with the micro-batch's new rows, as one new run.

Writes are staged in the micro-batch's write batch, so a replayed micro-batch reads the same
runs and releases the same rows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from streamhouse.joins.stream_join import concat
from streamhouse.state.store import (
    ColumnFamily,
    ScopedBatch,
    StateView,
    decode_table,
    encode_table,
    time_from_key,
    time_key,
)

_RUN = struct.Struct(">Q")

FINAL_WATERMARK = 1 << 62
"""The watermark of a source that has ended: every row is released, every window closes."""

TimesOf = Callable[[pa.Table], tuple[np.ndarray, np.ndarray]]
"""A table's event times in ms, and which of them are valid (not NULL)."""


class WaitingRows:
    """Runs of rows under ``prefix`` waiting for the watermark; ``times`` gives a table's event
    times (ms) and which are valid."""

    def __init__(self, state: StateView, prefix: bytes, times: TimesOf) -> None:
        self.state = state
        self.prefix = prefix
        self.times = times
        self._time = slice(len(prefix), len(prefix) + 8)
        self._next_run = 1 + max(
            (_RUN.unpack(key[self._time.stop :])[0] for key, _ in self._runs()), default=-1
        )
        self._committed_run = self._next_run

    def _runs(self) -> Iterator[tuple[bytes, bytes]]:
        """The waiting runs, oldest first (read lazily: a caller stops at the watermark)."""
        for key, value in self.state.items(ColumnFamily.JOINS, self.prefix):
            if not key.startswith(self.prefix):
                return
            yield key, value

    @property
    def runs(self) -> int:
        return sum(1 for _ in self._runs())

    def on_time(self, rows: pa.Table, previous_watermark: int) -> tuple[pa.Table | None, int]:
        """(the rows at or after ``previous_watermark``, or None; how many valid ones are
        older, i.e. late); rows without a time are dropped."""
        times, valid = self.times(rows)
        on_time = valid & (times >= previous_watermark)
        late = int((valid & ~on_time).sum())
        if not on_time.any():
            return None, late
        return (rows if on_time.all() else rows.filter(pa.array(on_time))), late

    def release(
        self, fresh: pa.Table | None, watermark: int, batch: ScopedBatch, strict: bool = False
    ) -> pa.Table | None:
        """Add ``fresh`` rows; take out and return the rows at most ``watermark`` (below it if
        ``strict``), or None."""
        waiting: list[pa.Table] = []
        for key, value in self._runs():
            oldest = time_from_key(key[self._time])
            if oldest > watermark or (strict and oldest == watermark):
                break
            waiting.append(decode_table(value))
            batch.delete(ColumnFamily.JOINS, key)
        if fresh is not None:
            waiting.append(fresh)
        if not waiting:
            return None
        table = concat(waiting)
        times, _ = self.times(table)
        due = times < watermark if strict else times <= watermark
        if not due.all():
            rest = table.filter(pa.array(~due))
            key = self.prefix + time_key(int(times[~due].min())) + _RUN.pack(self._next_run)
            batch.put(ColumnFamily.JOINS, key, encode_table(rest))
            self._next_run += 1
        if not due.any():
            return None
        return table if due.all() else table.filter(pa.array(due))

    def commit(self) -> None:
        self._committed_run = self._next_run

    def rollback(self) -> None:
        self._next_run = self._committed_run
