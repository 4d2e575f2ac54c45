"""Continuous ``ORDER BY`` the time attribute: rows come out in time order as the watermark
passes them (Flink's temporal sort), never before.

Each micro-batch's rows (after the query's WHERE) wait in state. When the watermark advances,
the waiting rows whose event time is at most the watermark are released, sorted by the query's
ORDER BY and projected by its SELECT list (DataFusion over the released rows), and the rest
wait on. A row older than the watermark the query had when it arrived is late: dropped and
counted (the rows it would sort before are out already). Rows whose time is NULL are dropped,
as by the window operators. Because every released row is at most the watermark and every
later row at least it, the output is in time order across micro-batches, restarts included.

State: the waiting rows as runs under ``b"sort"`` (see :mod:`streamhouse.windows.waiting`).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from streamhouse.errors import SqlError
from streamhouse.sql.execute import run_sql
from streamhouse.sql.nodes import TimeSort
from streamhouse.state.store import ScopedBatch, StateView
from streamhouse.windows.table import event_time_ms
from streamhouse.windows.waiting import WaitingRows

log = logging.getLogger(__name__)

PREFIX = b"sort"


class TimeSortOperator:
    """Keeps rows until the watermark passes them, then emits them in ORDER BY order."""

    def __init__(self, plan: TimeSort, state: StateView) -> None:
        self.plan = plan
        self.waiting = WaitingRows(state, PREFIX, self._times)

    @property
    def open_windows(self) -> int:
        """Runs of rows waiting for the watermark."""
        return self.waiting.runs

    def process(
        self,
        rows: pa.Table | None,
        previous_watermark: int,
        watermark: int,
        batch: ScopedBatch,
    ) -> tuple[pa.Table | None, int]:
        """Take a micro-batch's source rows; return (the rows released by ``watermark``,
        sorted and projected, or None; the number of late rows)."""
        fresh, late = None, 0
        if rows is not None and rows.num_rows:
            kept = run_sql(self.plan.pre_sql, {self.plan.source: rows})
            fresh, late = self.waiting.on_time(kept, previous_watermark)
        released = self.waiting.release(fresh, watermark, batch)
        if released is None:
            return None, late
        return run_sql(self.plan.sql, {self.plan.source: released}), late

    def _times(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        try:
            return event_time_ms(table, self.plan.time_column)
        except SqlError as error:
            raise SqlError(f"ORDER BY {self.plan.time_column}: {error.message}") from None

    def commit(self) -> None:
        self.waiting.commit()

    def rollback(self) -> None:
        self.waiting.rollback()
