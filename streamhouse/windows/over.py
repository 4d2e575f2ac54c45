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
``b"olead"`` -> with LEAD: Arrow IPC stream of the released rows still waiting for the rows
after them (the newest n of each partition, n the furthest LEAD); they come out, in a later
release, once n later rows of their partition are released, or at the final watermark (the
source has ended: the LEADs past the end take their default).
``b"oagg"`` -> for UNBOUNDED PRECEDING frames (and no frame), instead of a history: one row per
partition with each OVER's running count, sum or min/max. A release's running values are its
own (DataFusion's window functions over the released rows, which all follow the earlier
releases in time) plus the partition's kept totals (a join on the partition keys); the totals
then grow by the release's (group_by), vectorized.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import SqlError
from streamhouse.joins.stream_join import concat
from streamhouse.key_codes import group_codes
from streamhouse.sql.execute import run_sql
from streamhouse.sql.over import (
    FRESH,
    RANK,
    ROW_INDEX,
    SUCCESSORS,
    OverAggregate,
    partition_column,
    running_column,
)
from streamhouse.state.store import (
    ColumnFamily,
    ScopedBatch,
    StateView,
    decode_table,
    encode_table,
)
from streamhouse.windows.table import event_time_ms
from streamhouse.windows.waiting import FINAL_WATERMARK, WaitingRows

WAITING = b"owait"
HISTORY = b"ohist"
PENDING = b"olead"
RUNNING = b"oagg"
_ROW = "__row"
_PARTITION = "__partition_code"


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
        if self.plan.lead:
            return self._emit_leading(released, watermark, batch), late
        if released is None:
            return None, late
        if self.plan.unbounded:
            return self._emit_running(released, batch), late
        return self._emit(released, watermark, batch), late

    def _emit_running(self, released: pa.Table, batch: ScopedBatch) -> pa.Table:
        """Unbounded frames: the released rows' running parts (DataFusion, within the release)
        plus each partition's kept totals; the totals grow by the release's."""
        plan = self.plan
        parts = run_sql(plan.running_sql, {plan.source: released})
        parts = parts.append_column(_ROW, pa.array(np.arange(parts.num_rows)))
        keys = [partition_column(i) for i in range(plan.partitions)]
        stored = self.state.get(ColumnFamily.JOINS, RUNNING)
        names = [
            running_column(part, index)
            for index, name in enumerate(plan.functions)
            for part in ("c", "s" if name in ("sum", "avg") else "m" if name != "count" else "")
            if part
        ]
        whole = ["__run_t" + n[len("__run_") :] for n in names]  # the release's totals
        now = parts.group_by(keys, use_threads=False).aggregate([(t, "min") for t in whole])
        now = now.select([*keys, *(t + "_min" for t in whole)])
        now = now.rename_columns([*keys, *names])
        if stored is not None:
            totals = decode_table(stored)
            prior = totals.rename_columns([*keys, *(_prior(n) for n in names)])
            # joined on a code of the keys: a hash join never matches NULL keys, and a
            # partition whose key is NULL would lose its totals after its first release
            both = concat([parts.select(keys), totals.select(keys).cast(parts.select(keys).schema)])
            codes = group_codes([both[k] for k in keys])
            probe = parts.append_column(_PARTITION, pa.array(codes[: parts.num_rows]))
            prior = prior.drop_columns(keys).append_column(
                _PARTITION, pa.array(codes[parts.num_rows :])
            )
            joined = probe.join(prior, _PARTITION, join_type="left outer", use_threads=False)
            joined = joined.sort_by(_ROW).drop_columns([_PARTITION])
            merged = concat([totals, now.cast(totals.schema)])
            how = [(n, _how(n, plan.functions)) for n in names]
            now = merged.group_by(keys, use_threads=False).aggregate(how)
            now = now.select([*keys, *(f"{n}_{h}" for n, h in how)]).rename_columns([*keys, *names])
        else:
            joined = parts
        out = joined
        for index, name in enumerate(plan.functions):
            count = _plus(joined, running_column("c", index))
            if name == "count":
                value = count
            elif name in ("sum", "avg"):
                total = _plus(joined, running_column("s", index))
                total = pc.if_else(pc.equal(count, 0), pa.scalar(None, total.type), total)
                value = pc.divide(pc.cast(total, pa.float64()), count) if name == "avg" else total
            else:
                column = running_column("m", index)
                value = joined[column]
                if _prior(column) in joined.column_names:
                    combine = pc.min_element_wise if name == "min" else pc.max_element_wise
                    value = combine(value, joined[_prior(column)], skip_nulls=True)
            out = out.append_column(running_column("o", index), value)
        batch.put(ColumnFamily.JOINS, RUNNING, encode_table(now))
        values = [running_column("o", index) for index in range(len(plan.functions))]
        out = out.select([*released.column_names, *values])
        return run_sql(plan.sql, {plan.source: out})

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

    def _emit_leading(
        self, released: pa.Table | None, watermark: int, batch: ScopedBatch
    ) -> pa.Table | None:
        """With LEAD: the pending and released rows that have the rows their LEADs reach (all
        of them at the final watermark); the rest wait, and the history LAG and ROWS frames
        reach is kept."""
        pending = self.state.get(ColumnFamily.JOINS, PENDING)
        if released is None and (pending is None or watermark < FINAL_WATERMARK):
            return None
        stored = self.state.get(ColumnFamily.JOINS, HISTORY)
        parts = [_flagged(decode_table(stored), False)] if stored is not None else []
        if pending is not None:
            parts.append(_flagged(decode_table(pending), True))
        if released is not None:
            parts.append(_flagged(released, True))
        both = concat(parts)
        both = both.append_column(ROW_INDEX, pa.array(np.arange(both.num_rows, dtype=np.int64)))
        out = run_sql(self.plan.sql, {self.plan.source: both})
        emit = out[FRESH]
        if watermark < FINAL_WATERMARK:
            emit = pc.and_(emit, pc.is_valid(out[SUCCESSORS]))
        waits = np.sort(out.filter(pc.and_(out[FRESH], pc.invert(emit)))[ROW_INDEX].to_numpy())
        both = both.drop_columns([FRESH, ROW_INDEX])
        done = np.ones(both.num_rows, dtype=bool)
        done[waits] = False
        if len(waits):
            batch.put(ColumnFamily.JOINS, PENDING, encode_table(both.take(pa.array(waits))))
        elif pending is not None:
            batch.delete(ColumnFamily.JOINS, PENDING)
        if self.plan.rows:  # LAG or a ROWS frame reaches back: the rows before the waiting
            kept = both.filter(pa.array(done))
            reach = run_sql(self.plan.keep_sql, {self.plan.source: kept}).drop_columns([RANK])
            batch.put(ColumnFamily.JOINS, HISTORY, encode_table(reach))
        return out.filter(emit).drop_columns([FRESH, SUCCESSORS, ROW_INDEX])

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


def _prior(column: str) -> str:
    return f"__prior{column}"


def _how(column: str, functions: tuple[str, ...]) -> str:
    """How two totals of a running part combine."""
    part, index = column[len("__run_")], int(column[len("__run_") + 1 :])
    if part in "cs":
        return "sum"
    return "min" if functions[index] == "min" else "max"


def _plus(joined: pa.Table, column: str) -> pa.Array:
    """``column`` plus its kept total (0 where the partition has none)."""
    value = pc.fill_null(joined[column], 0)
    if _prior(column) in joined.column_names:
        value = pc.add(value, pc.fill_null(joined[_prior(column)], 0))
    return value
