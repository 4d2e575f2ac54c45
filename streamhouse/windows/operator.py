"""Window operators: merge each micro-batch's partial aggregates into state, emit closed windows.

:class:`WindowOperator` serves tumbling, hopping and cumulating windows: per window, runs of
partial aggregates in RocksDB (``windows`` column family, key ``u64(end) | u64(start) |
u32(run)``, so the windows a watermark closes are found in end order), one run per micro-batch
that touched the window, merged size-tiered and on emission; the heap holds only run sizes.
:class:`SessionOperator` serves session windows (the open sessions of every key, merged when a
bridging event arrives), kept in memory and mirrored to one RocksDB value (``sessions``,
``b"open"``). Changes are staged into the micro-batch's
:class:`~streamhouse.state.store.StateBatch` and take effect only when the caller has committed
that batch (:meth:`commit`); :meth:`rollback` forgets them.

Lateness: a row assignment to a window whose ``end + allowed_lateness`` is at or before the
watermark *before* the batch is late: dropped and counted (and offered to the late-row side
output). A window is emitted when the watermark *after* the batch reaches
``end + allowed_lateness``, so allowed lateness delays results but keeps them append-only. A
session (``[first, last + gap)``, extended by an event at ``last + gap`` itself) is emitted only
when the watermark passes ``end + allowed_lateness``.
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import StorageError
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
_PANE = "__pane"


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


Window = tuple[int, int]
"""(start, end) of a window, epoch milliseconds."""
MAX_RUNS = 8
"""A window with more partial runs than this has them merged into one (in the same batch)."""
_RUN = struct.Struct(">I")


def run_key(window: Window, seq: int) -> bytes:
    """The ``windows`` key of run ``seq`` of ``window``: ``u64(end) | u64(start) | u32(seq)``."""
    return window_key(*window) + _RUN.pack(seq)


def _run_from_key(key: bytes) -> tuple[Window, int]:
    """(window, seq) of a ``windows`` key; a bare 16-byte window key is run 0."""
    return window_from_key(key[:16]), (_RUN.unpack(key[16:20])[0] if len(key) >= 20 else 0)


class WindowOperator:
    """Tumbling, hopping and cumulating window aggregation over RocksDB state.

    Each micro-batch adds, per window it touches, one *run*: the batch's partial aggregates of
    that window, one row per key, written to RocksDB (``windows`` column family, key
    ``u64(end) | u64(start) | u32(seq)``). Runs are merged when a window has more than
    :data:`MAX_RUNS` of them, and when the window closes. The heap holds only run sizes and the
    runs of the current batch; the rest lives in RocksDB (its memtables, then SST files), so
    memory does not grow with the number of open keys, and a batch costs what it touches, not
    what the window holds.
    """

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        self._calls = plan.aggregates
        self.state: dict[Window, list[tuple[int, int]]] = {}  # window -> [(seq, rows)]
        for key, value in store.items("windows"):
            window, seq = _run_from_key(key)
            rows = pa.ipc.open_stream(pa.py_buffer(value)).read_all().num_rows
            self.state.setdefault(window, []).append((seq, rows))
        self._staged: dict[Window, list[tuple[int, int]]] | None = None
        self._fresh: dict[tuple[Window, int], pa.Table] = {}  # runs of the uncommitted batch

    @property
    def open_windows(self) -> int:
        return len(self.state)

    def open_keys(self) -> int:
        """Rows of partial aggregates held (keys of open windows; more before runs merge)."""
        return sum(rows for runs in self.state.values() for _, rows in runs)

    def _stage(self) -> dict[Window, list[tuple[int, int]]]:
        if self._staged is None:
            self._staged = {w: list(runs) for w, runs in self.state.items()}
        return self._staged

    def _read(self, window: Window, seq: int) -> pa.Table:
        fresh = self._fresh.get((window, seq))
        if fresh is not None:
            return fresh
        value = self.store.get("windows", run_key(window, seq))
        if value is None and seq == 0:  # written before runs had sequence numbers
            value = self.store.get("windows", window_key(*window))
        if value is None:
            raise StorageError(f"window state run {window}/{seq} is missing")
        return decode_table(value)

    def _add_run(self, window: Window, table: pa.Table, batch: StateBatch) -> None:
        runs = self._stage().setdefault(window, [])
        seq = max((s for s, _ in runs), default=-1) + 1
        runs.append((seq, table.num_rows))
        self._fresh[(window, seq)] = table
        batch.put("windows", run_key(window, seq), encode_table(table))
        if len(runs) > MAX_RUNS:
            # Merge the smaller half of the runs (size-tiered, as an LSM tree): each row is
            # merged about log(batches) times, and a merge never holds the whole window.
            smallest = sorted(runs, key=lambda run: (run[1], run[0]))[: MAX_RUNS // 2 + 1]
            merged = self._merge(window, smallest, batch)
            runs[:] = [run for run in runs if run not in smallest]
            self._add_run(window, merged, batch)

    def _take(self, window: Window, batch: StateBatch) -> pa.Table:
        """Every run of ``window``, merged into one row per key, and removed from state."""
        return self._merge(window, self._stage().pop(window), batch)

    def _merge(self, window: Window, runs: list[tuple[int, int]], batch: StateBatch) -> pa.Table:
        """``runs`` of ``window`` merged into one row per key; their keys are deleted."""
        tables = [self._read(window, seq) for seq, _ in runs]
        for seq, _ in runs:
            self._fresh.pop((window, seq), None)
            batch.delete("windows", run_key(window, seq))
            if seq == 0:
                batch.delete("windows", window_key(*window))
        if len(tables) == 1:
            return tables[0]
        return aggregate.combine(tables, list(self.plan.keys), self.keys, self._calls)

    def process(
        self, pre: pa.Table, ts: np.ndarray, watermark: int, batch: StateBatch
    ) -> np.ndarray:
        """Merge ``pre`` (keys ``__k*``, args ``__a*``; ``ts`` its event times) into state.

        Returns the indices of rows that were late for every window they belong to.
        """
        self._stage()
        spec = self.plan.window
        size = spec.size_ms
        pane = size if spec.kind == "tumble" else (spec.slide_ms or size)
        # Rows of one pane (a slide of a hop, a step of a cumulate) belong to the same windows:
        # aggregate per pane first, then spread the few pane partials over their windows.
        panes = assign.tumble(ts, pane)
        last_end = panes + size if spec.kind != "cumulate" else assign.tumble(ts, size) + size
        on_time = last_end + self.lateness > watermark  # on time for at least one window
        late_rows = np.flatnonzero(~on_time)
        if len(late_rows):
            pre, panes = pre.filter(pa.array(on_time)), panes[on_time]
        if len(panes) == 0:
            return late_rows
        partials = aggregate.partial(
            pre.append_column(_PANE, pa.array(panes)), [*self.plan.keys, _PANE], self._calls
        )
        pane_starts = partials[_PANE].to_numpy()
        partials = partials.drop_columns([_PANE])
        if spec.kind == "tumble":
            rows, starts, ends = None, pane_starts, pane_starts + size
        elif spec.kind == "hop":
            rows, starts = assign.hop(pane_starts, pane, size)
            ends = starts + size
        else:
            rows, starts, ends = assign.cumulate(pane_starts, pane, size)
        keep = ends + self.lateness > watermark  # a row's earlier windows may be late
        if rows is not None and not keep.all():
            rows, starts, ends = rows[keep], starts[keep], ends[keep]
        # One slice per window: sort by (end, start), cut where the window changes.
        order = np.lexsort((starts, ends))
        take = order if rows is None else rows[order]
        starts, ends = starts[order], ends[order]
        partials = partials.take(pa.array(take))
        cuts = np.flatnonzero((np.diff(starts) != 0) | (np.diff(ends) != 0)) + 1
        bounds = np.concatenate([[0], cuts, [len(order)]])
        group_keys = list(self.plan.keys)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            window = (int(starts[lo]), int(ends[lo]))
            fresh = partials.slice(lo, hi - lo)
            fresh = fresh.append_column(
                "window_start", pa.repeat(pa.scalar(window[0], pa.int64()), hi - lo)
            ).append_column("window_end", pa.repeat(pa.scalar(window[1], pa.int64()), hi - lo))
            fresh = fresh.select(self.keys + fresh.column_names[len(self.plan.keys) : -2])
            if rows is not None:  # a hop's or cumulate's panes give a key several rows
                fresh = aggregate.combine([fresh], group_keys, self.keys, self._calls)
            self._add_run(window, fresh.combine_chunks(), batch)
        return late_rows

    def emit(self, watermark: int, batch: StateBatch) -> pa.Table | None:
        """Finalized rows of every window the watermark closes, in (end, start) order."""
        staged = self._stage()
        closed = sorted(
            (w for w in staged if w[1] + self.lateness <= watermark), key=lambda w: (w[1], w[0])
        )
        if not closed:
            return None
        tables = [self._take(window, batch) for window in closed]
        final = aggregate.finalize(pa.concat_tables(tables), self.keys, self.plan.aggregates)
        return _with_window_types(final)

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None
        self._fresh = {}

    def rollback(self) -> None:
        self._staged = None
        self._fresh = {}


class SessionOperator:
    """Session window aggregation: open sessions of every key, merged across micro-batches."""

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        self._calls = plan.aggregates
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
        keys = list(self.plan.keys)
        codes = assign.group_codes([pre[k] for k in keys]) if keys else np.zeros(len(ts), np.int64)
        ids, starts, ends = assign.sessions(codes, ts, gap)
        tagged = pre.append_column("window_start", pa.array(starts[ids])).append_column(
            "window_end", pa.array(ends[ids])
        )
        fresh = aggregate.partial(tagged, self.keys, self._calls)
        if current is None or current.num_rows == 0:
            untouched, combined = None, fresh
        else:
            # Only the open sessions of keys this batch has rows for can extend or merge.
            both = pa.concat_tables(
                [current.select(keys), fresh.select(keys)], promote_options="permissive"
            )
            codes = (
                assign.group_codes([both[k] for k in keys])
                if keys
                else np.zeros(both.num_rows, np.int64)
            )
            seen = np.zeros(int(codes.max()) + 1, bool)
            seen[codes[current.num_rows :]] = True
            touched = seen[codes[: current.num_rows]]
            untouched = current.filter(pa.array(~touched)) if not touched.all() else None
            picked = current.filter(pa.array(touched)) if untouched is not None else current
            combined = pa.concat_tables([picked, fresh], promote_options="permissive")
        codes = (
            assign.group_codes([combined[k] for k in keys])
            if keys
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
        merged = aggregate.combine([combined], self.keys, self.keys, self._calls)
        if untouched is not None and untouched.num_rows:
            merged = pa.concat_tables([untouched, merged], promote_options="permissive")
        self._staged = merged.combine_chunks()
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
