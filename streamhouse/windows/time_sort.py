"""Continuous ``ORDER BY`` the time attribute: rows come out in time order as the watermark
passes them (Flink's temporal sort), never before.

Each micro-batch's rows (after the query's WHERE) wait in state. When the watermark advances,
the waiting rows whose event time is at most the watermark are released, sorted by the query's
ORDER BY and projected by its SELECT list (DataFusion over the released rows), and the rest
wait on. A row older than the watermark the query had when it arrived is late: dropped and
counted (the rows it would sort before are out already). Rows whose time is NULL are dropped,
as by the window operators. Because every released row is at most the watermark and every
later row at least it, the output is in time order across micro-batches, restarts included.

State (under the operator's prefix; integers big-endian, times biased as in
:mod:`streamhouse.state.store`):

``joins``
    ``b"sort" | u64(min event time) | u64(run)`` -> Arrow IPC stream of waiting rows (a run).
    Key order visits runs by their oldest row, so the runs a watermark reaches are a prefix;
    a run the watermark reaches is read, its released rows emitted and the rest written back,
    together with the micro-batch's new rows, as one new run.

Writes are staged in the micro-batch's :class:`~streamhouse.state.store.StateBatch`, so they
move atomically with the source offsets and the sink's progress: a replayed micro-batch reads
the same runs and releases the same rows in the same order.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from streamhouse.errors import SqlError
from streamhouse.joins.stream_join import concat
from streamhouse.sql.execute import run_sql
from streamhouse.sql.plan import TimeSort
from streamhouse.state.store import (
    ColumnFamily,
    ScopedBatch,
    StateView,
    decode_table,
    encode_table,
    time_from_key,
    time_key,
)
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

PREFIX = b"sort"
_RUN = struct.Struct(">Q")
_TIME = slice(len(PREFIX), len(PREFIX) + 8)


class TimeSortOperator:
    """Keeps rows until the watermark passes them, then emits them in ORDER BY order."""

    def __init__(self, plan: TimeSort, state: StateView) -> None:
        self.plan = plan
        self.state = state
        self._next_run = 1 + max(
            (_RUN.unpack(key[_TIME.stop :])[0] for key, _ in self._runs()), default=-1
        )
        self._committed_run = self._next_run

    def _runs(self) -> Iterator[tuple[bytes, bytes]]:
        """The waiting runs, oldest first (read lazily: a caller stops at the watermark)."""
        for key, value in self.state.items(ColumnFamily.JOINS, PREFIX):
            if not key.startswith(PREFIX):
                return
            yield key, value

    @property
    def open_windows(self) -> int:
        """Runs of rows waiting for the watermark."""
        return sum(1 for _ in self._runs())

    def process(
        self,
        rows: pa.Table | None,
        previous_watermark: int,
        watermark: int,
        batch: ScopedBatch,
    ) -> tuple[pa.Table | None, int]:
        """Take a micro-batch's source rows; return (the rows released by ``watermark``,
        sorted and projected, or None; the number of late rows)."""
        fresh: list[pa.Table] = []
        late = 0
        if rows is not None and rows.num_rows:
            kept = run_sql(self.plan.pre_sql, {self.plan.source: rows})
            times, valid = self._times(kept)
            on_time = valid & (times >= previous_watermark)
            late = int((valid & ~on_time).sum())
            if on_time.any():
                fresh.append(kept if on_time.all() else kept.filter(pa.array(on_time)))
        waiting: list[pa.Table] = []
        for key, value in self._runs():
            if time_from_key(key[_TIME]) > watermark:
                break
            waiting.append(decode_table(value))
            batch.delete(ColumnFamily.JOINS, key)
        waiting += fresh
        if not waiting:
            return None, late
        table = concat(waiting)
        times, _ = self._times(table)
        due = times <= watermark
        if not due.all():
            rest = table.filter(pa.array(~due))
            key = PREFIX + time_key(int(times[~due].min())) + _RUN.pack(self._next_run)
            batch.put(ColumnFamily.JOINS, key, encode_table(rest))
            self._next_run += 1
        if not due.any():
            return None, late
        released = table if due.all() else table.filter(pa.array(due))
        return run_sql(self.plan.sql, {self.plan.source: released}), late

    def _times(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        try:
            return event_time_ms(table, self.plan.time_column)
        except SqlError as error:
            raise SqlError(f"ORDER BY {self.plan.time_column}: {error.message}") from None

    def commit(self) -> None:
        self._committed_run = self._next_run

    def rollback(self) -> None:
        self._next_run = self._committed_run
