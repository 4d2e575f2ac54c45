"""Window operators: merge each micro-batch's partial aggregates into state, emit closed windows.

:class:`WindowOperator` serves tumbling, hopping and cumulating windows (state per window, keyed
by end then start, so the windows a watermark closes are found in end order); and
:class:`SessionOperator` serves session windows (the open sessions of every key, merged when a
bridging event arrives). Both keep an in-memory mirror of their RocksDB column family; changes
are staged into the micro-batch's :class:`~streamhouse.state.store.StateBatch` and become the
mirror only when the caller has committed that batch (:meth:`commit`).

Lateness: a row assignment to a window whose ``end + allowed_lateness`` is at or before the
watermark *before* the batch is late: dropped and counted (and offered to the late-row side
output). A window is emitted when the watermark *after* the batch reaches
``end + allowed_lateness``, so allowed lateness delays results but keeps them append-only. A
session (``[first, last + gap)``, extended by an event at ``last + gap`` itself) is emitted only
when the watermark passes ``end + allowed_lateness``.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.sql.plan import WindowAggregate
from streamhouse.state.store import (
    StateBatch,
    StateStore,
    decode_table,
    encode_table,
    window_from_key,
    window_key,
)
from streamhouse.windows import aggregate, assign
from streamhouse.windows.aggregate import WINDOW_BOUNDS

log = logging.getLogger(__name__)

WINDOW_TYPE = pa.timestamp("ms")
SESSIONS_KEY = b"open"


def _with_window_types(table: pa.Table) -> pa.Table:
    """Window bounds as TIMESTAMP(3), plus ``window_time`` (end - 1 ms) as in Flink."""
    end = table["window_end"]
    table = table.set_column(
        table.schema.get_field_index("window_start"),
        "window_start",
        table["window_start"].cast(WINDOW_TYPE),
    )
    table = table.set_column(
        table.schema.get_field_index("window_end"), "window_end", end.cast(WINDOW_TYPE)
    )
    return table.append_column("window_time", pc.subtract(end, 1).cast(WINDOW_TYPE))


class WindowOperator:
    """Tumbling, hopping and cumulating window aggregation over RocksDB state."""

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        self.state: dict[tuple[int, int], pa.Table] = {}
        for key, value in store.items("windows"):
            self.state[window_from_key(key)] = decode_table(value)
        self._staged: dict[tuple[int, int], pa.Table] | None = None

    @property
    def open_windows(self) -> int:
        return len(self.state)

    def open_keys(self) -> int:
        return sum(t.num_rows for t in self.state.values())

    def process(
        self, pre: pa.Table, ts: np.ndarray, watermark: int, batch: StateBatch
    ) -> np.ndarray:
        """Merge ``pre`` (keys ``__k*``, args ``__a*``; ``ts`` its event times) into state.

        Returns the indices of rows that were late for every window they belong to.
        """
        staged = self._staged if self._staged is not None else dict(self.state)
        self._staged = staged
        spec = self.plan.window
        if spec.kind == "tumble":
            rows = np.arange(len(ts), dtype=np.int64)
            starts = assign.tumble(ts, spec.size_ms)
            ends = starts + spec.size_ms
        elif spec.kind == "hop":
            rows, starts = assign.hop(ts, spec.slide_ms or spec.size_ms, spec.size_ms)
            ends = starts + spec.size_ms
        else:
            rows, starts, ends = assign.cumulate(ts, spec.slide_ms or spec.size_ms, spec.size_ms)
        on_time = ends + self.lateness > watermark
        late_rows = np.setdiff1d(np.arange(len(ts)), rows[on_time])
        if not on_time.all():
            rows, starts, ends = rows[on_time], starts[on_time], ends[on_time]
        if len(rows) == 0:
            return late_rows
        assigned = pre.take(pa.array(rows)) if len(rows) != pre.num_rows else pre
        assigned = assigned.append_column("window_start", pa.array(starts)).append_column(
            "window_end", pa.array(ends)
        )
        partials = aggregate.partial(assigned, self.keys, self.plan.aggregates)
        # One slice of partials per window: sort by (end, start), cut where the window changes.
        p_start = partials["window_start"].to_numpy()
        p_end = partials["window_end"].to_numpy()
        order = np.lexsort((p_start, p_end))
        partials = partials.take(pa.array(order))
        p_start, p_end = p_start[order], p_end[order]
        cuts = np.flatnonzero((np.diff(p_start) != 0) | (np.diff(p_end) != 0)) + 1
        bounds = np.concatenate([[0], cuts, [len(order)]])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            window = (int(p_start[lo]), int(p_end[lo]))
            fresh = partials.slice(lo, hi - lo)
            old = staged.get(window)
            merged = (
                fresh
                if old is None
                else aggregate.merge([old, fresh], self.keys, self.plan.aggregates)
            )
            staged[window] = merged
            batch.put("windows", window_key(*window), encode_table(merged))
        return late_rows

    def emit(self, watermark: int, batch: StateBatch) -> pa.Table | None:
        """Finalized rows of every window the watermark closes, in (end, start) order."""
        staged = self._staged if self._staged is not None else dict(self.state)
        self._staged = staged
        closed = sorted(
            (w for w in staged if w[1] + self.lateness <= watermark), key=lambda w: (w[1], w[0])
        )
        if not closed:
            return None
        tables = []
        for window in closed:
            tables.append(staged.pop(window))
            batch.delete("windows", window_key(*window))
        final = aggregate.finalize(pa.concat_tables(tables), self.keys, self.plan.aggregates)
        return _with_window_types(final)

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None

    def rollback(self) -> None:
        self._staged = None


class SessionOperator:
    """Session window aggregation: open sessions of every key, merged across micro-batches."""

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        stored = store.get("sessions", SESSIONS_KEY)
        self.state: pa.Table | None = decode_table(stored) if stored else None
        self._staged: pa.Table | None | bool = False

    @property
    def open_windows(self) -> int:
        return self.state.num_rows if self.state is not None else 0

    def open_keys(self) -> int:
        return self.open_windows

    def _current(self) -> pa.Table | None:
        return self.state if self._staged is False else self._staged  # type: ignore[return-value]

    def process(
        self, pre: pa.Table, ts: np.ndarray, watermark: int, batch: StateBatch
    ) -> np.ndarray:
        gap = self.plan.window.gap_ms or 0
        on_time = ts + gap + self.lateness > watermark
        late_rows = np.flatnonzero(~on_time)
        if not on_time.all():
            pre = pre.filter(pa.array(on_time))
            ts = ts[on_time]
        current = self._current()
        if len(ts) == 0:
            self._staged = current
            return late_rows
        codes = (
            assign.group_codes([pre[k] for k in self.plan.keys])
            if self.plan.keys
            else np.zeros(len(ts), np.int64)
        )
        ids, starts, ends = assign.sessions(codes, ts, gap)
        tagged = pre.append_column("window_start", pa.array(starts[ids])).append_column(
            "window_end", pa.array(ends[ids])
        )
        fresh = aggregate.partial(tagged, self.keys, self.plan.aggregates)
        combined = (
            fresh
            if current is None or current.num_rows == 0
            else pa.concat_tables([current, fresh], promote_options="permissive")
        )
        codes = (
            assign.group_codes([combined[k] for k in self.plan.keys])
            if self.plan.keys
            else np.zeros(combined.num_rows, np.int64)
        )
        merged_ids, m_start, m_end = assign.merge_intervals(
            codes, combined["window_start"].to_numpy(), combined["window_end"].to_numpy()
        )
        combined = combined.set_column(
            combined.schema.get_field_index("window_start"),
            "window_start",
            pa.array(m_start[merged_ids]),
        )
        combined = combined.set_column(
            combined.schema.get_field_index("window_end"), "window_end", pa.array(m_end[merged_ids])
        )
        merged = aggregate.merge_table(combined, self.keys, self.plan.aggregates)
        self._staged = merged
        return late_rows

    def emit(self, watermark: int, batch: StateBatch) -> pa.Table | None:
        current = self._current()
        if current is None or current.num_rows == 0:
            self._staged = current
            if current is not None:
                batch.put("sessions", SESSIONS_KEY, encode_table(current))
            return None
        # Strictly before: an event at exactly ``end`` (last event + gap) still extends the
        # session, and such an event is on time while the watermark equals ``end``.
        closing = pc.less(pc.add(current["window_end"], self.lateness), watermark)
        closed = current.filter(closing)
        remaining = current.filter(pc.invert(closing))
        self._staged = remaining
        batch.put("sessions", SESSIONS_KEY, encode_table(remaining))
        if closed.num_rows == 0:
            return None
        order = np.lexsort((closed["window_start"].to_numpy(), closed["window_end"].to_numpy()))
        closed = closed.take(pa.array(order))
        return _with_window_types(aggregate.finalize(closed, self.keys, self.plan.aggregates))

    def commit(self) -> None:
        if self._staged is not False:
            self.state = self._staged  # type: ignore[assignment]
            self._staged = False

    def rollback(self) -> None:
        self._staged = False


def make_operator(
    plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
) -> WindowOperator | SessionOperator:
    if plan.window.kind == "session":
        return SessionOperator(plan, store, allowed_lateness_ms)
    return WindowOperator(plan, store, allowed_lateness_ms)
