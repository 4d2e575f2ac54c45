"""Continuous OVER aggregations (Flink's over window): ``SUM/COUNT/AVG/MIN/MAX(x) OVER
(PARTITION BY k ORDER BY t ROWS BETWEEN n PRECEDING AND CURRENT ROW)`` or ``RANGE BETWEEN
INTERVAL ... PRECEDING AND CURRENT ROW``, ordered by the time attribute ascending.

Each micro-batch's rows (after the query's WHERE) wait in state until the watermark passes
them: a row is released once its time is below the watermark (no row at its time can come any
more, so rows of one time are released together and ties meet their peers). The released rows
are put beside the history their frames reach back into (the last ``n`` released rows of each
partition for ROWS; the released rows at most the interval older than the watermark for
RANGE), the query's SELECT list runs over both (DataFusion's window functions), and only the
released rows come out, in time order. A row older than the watermark the query had when it
arrived is late: dropped and counted. Rows whose time is NULL are dropped.

State (under the operator's prefix, column family ``joins``):

``b"owait" | u64(min event time) | u64(run)`` -> IPC(waiting rows), see
:mod:`streamhouse.windows.waiting`.
``b"ohist"`` -> Arrow IPC stream of the released rows later frames still reach; rewritten
with each release, in the same write batch as the source offsets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamhouse.errors import SqlError
from streamhouse.joins.stream_join import concat
from streamhouse.sql.execute import run_sql
from streamhouse.sql.over import FRESH, RANK, OverAggregate
from streamhouse.state.store import (
    ColumnFamily,
    ScopedBatch,
    StateView,
    decode_table,
    encode_table,
)
from streamhouse.windows.table import event_time_ms
from streamhouse.windows.waiting import WaitingRows

WAITING = b"owait"
HISTORY = b"ohist"


class OverAggregateOperator:
    """Keeps rows until the watermark passes them, then emits each with its frame's aggregates."""

    def __init__(self, plan: OverAggregate, state: StateView) -> None:
        self.plan = plan
        self.state = state
        self.waiting = WaitingRows(state, WAITING, self._times)

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
        """Take a micro-batch's source rows; return (the rows the watermark released, with
        their aggregates, in time order, or None; the number of late rows)."""
        fresh, late = None, 0
        if rows is not None and rows.num_rows:
            kept = run_sql(self.plan.pre_sql, {self.plan.source: rows})
            fresh, late = self.waiting.on_time(kept, previous_watermark)
        released = self.waiting.release(fresh, watermark, batch, strict=True)
        if released is None:
            return None, late
        return self._emit(released, watermark, batch), late

    def _emit(self, released: pa.Table, watermark: int, batch: ScopedBatch) -> pa.Table:
        """The released rows with their aggregates; the history later frames reach is kept."""
        stored = self.state.get(ColumnFamily.JOINS, HISTORY)
        parts = [_flagged(released, True)]
        if stored is not None:
            parts.insert(0, _flagged(decode_table(stored), False))
        both = concat(parts)
        out = run_sql(self.plan.sql, {self.plan.source: both})
        out = out.filter(out[FRESH]).drop_columns([FRESH])
        reach = both.drop_columns([FRESH])
        if self.plan.rows is not None:
            reach = run_sql(self.plan.keep_sql, {self.plan.source: reach}).drop_columns([RANK])
        else:
            times, _ = self._times(reach)
            reach = reach.filter(pa.array(times >= watermark - self.plan.range_ms))
        batch.put(ColumnFamily.JOINS, HISTORY, encode_table(reach))
        return out

    def _times(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        try:
            return event_time_ms(table, self.plan.time_column)
        except SqlError as error:
            raise SqlError(f"OVER (ORDER BY {self.plan.time_column}): {error.message}") from None

    def commit(self) -> None:
        self.waiting.commit()

    def rollback(self) -> None:
        self.waiting.rollback()


def _flagged(table: pa.Table, fresh: bool) -> pa.Table:
    """``table`` with the FRESH column, ``fresh`` in every row."""
    return table.append_column(FRESH, pa.repeat(pa.scalar(fresh), table.num_rows))
