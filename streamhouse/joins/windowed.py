"""Windowed queries: buffer each input's rows per pane, run the SQL when windows close.

Window joins (Flink's ``... JOIN ... ON L.window_start = R.window_start AND L.window_end =
R.window_end``), Top-N per window, and windowed aggregates the incremental operator does not
cover all have one thing in common: the rows a window produces depend only on the input rows
of that window. So each input (a windowed table function over a stream) is buffered as it
arrives, and when the watermark passes a window's end the query's own SQL runs on DataFusion
over the rows of every window it closed (INNER, LEFT, RIGHT, FULL, SEMI and ANTI joins see
complete windows). Rows arriving after all their windows have closed are late: dropped and
counted.

Rows are kept once, not once per window. Every window is a run of consecutive *panes* — the
slide of a HOP, the step of a CUMULATE, the whole window of a TUMBLE — and a row lives in the
one pane its event time falls in. Only the columns the query's SQL names are kept. When windows
close, each window's rows are gathered from its panes with one vectorized ``take`` and the
window columns (``window_start``, ``window_end``, ``window_time``) are added then.

State (under the operator's prefix; integers big-endian, times biased as in
:mod:`streamhouse.state.store`):

``joins``
    ``u8(input) | u64(pane_end) | u64(pane_start) | u32(run)`` -> Arrow IPC stream of the rows
    one micro-batch (a run) added to that pane of that input (``input`` indexes the inputs'
    sorted names). A micro-batch writes only its new runs; a pane's runs are deleted together
    when the last window over the pane closes. Key order visits each input's panes by end time.
``meta``
    ``b"windowed/emitted"`` -> u64 the watermark up to which windows have been evaluated: a
    window is evaluated in the micro-batch whose watermark first reaches its end, never again.

Both are staged in the micro-batch's :class:`~streamhouse.state.store.StateBatch`, so they move
atomically with the source offsets; :meth:`WindowedQuery.commit` and
:meth:`WindowedQuery.rollback` follow the batch.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa

from streamhouse.joins.columns import kept_columns, referenced_names
from streamhouse.joins.stream_join import concat
from streamhouse.sql.execute import run_sql
from streamhouse.sql.window_spec import WINDOW_COLUMNS, WindowKind, WindowSpec
from streamhouse.state.store import (
    ColumnFamily,
    StateBatch,
    StateStore,
    decode_table,
    encode_table,
    time_from_key,
    time_key,
)
from streamhouse.windows.table import WINDOW_TYPE, event_time_ms

log = logging.getLogger(__name__)

EMITTED = b"windowed/emitted"
_RUN = struct.Struct(">I")
MAX_WINDOW_ROWS = 1 << 22
"""Window rows (a row counts once per window it is in) one evaluation of the SQL sees at most;
more closed windows than that are evaluated in several runs, a window never split."""


@dataclass(frozen=True)
class Panes:
    """How the windows of one spec are made of panes (``width`` ms of event time each)."""

    kind: str
    size: int
    width: int

    @classmethod
    def of(cls, spec: WindowSpec) -> Panes:
        width = spec.size_ms if spec.kind == WindowKind.TUMBLE else spec.slide_ms or spec.size_ms
        return cls(spec.kind, spec.size_ms, width)

    def start(self, ts: np.ndarray) -> np.ndarray:
        """The start of the pane of each event time."""
        return ts - np.mod(ts, self.width)

    def last_end(self, starts: np.ndarray) -> np.ndarray:
        """The end of the last window over each pane: once the watermark reaches it, the pane
        is no longer needed (and a row in it is late)."""
        if self.kind == WindowKind.CUMULATE:
            return starts - np.mod(starts, self.size) + self.size
        return starts + self.size

    def window_starts(self, starts: np.ndarray) -> np.ndarray:
        """The distinct starts of the windows over each pane, one row per pane (a CUMULATE's
        windows over a pane all start at its base)."""
        if self.kind == WindowKind.HOP:
            return starts[:, None] - np.arange(self.size // self.width)[None, :] * self.width
        if self.kind == WindowKind.CUMULATE:
            return (starts - np.mod(starts, self.size))[:, None]
        return starts[:, None]

    def windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of every window over each pane, for all ``starts`` together."""
        if self.kind == WindowKind.TUMBLE:
            return starts, starts + self.size
        per = self.size // self.width
        if self.kind == WindowKind.HOP:
            window_starts = (starts[:, None] - np.arange(per)[None, :] * self.width).ravel()
            return window_starts, window_starts + self.size
        base = starts - np.mod(starts, self.size)  # cumulate: [base, base + k * step)
        ends = base[:, None] + np.arange(1, per + 1)[None, :] * self.width
        over = ends > starts[:, None]
        return np.broadcast_to(base[:, None], ends.shape)[over], ends[over]


@dataclass
class _State:
    """Buffered runs per (input, pane start), oldest first; and the evaluated-up-to watermark."""

    panes: dict[tuple[int, int], tuple[tuple[bytes, pa.Table], ...]] = field(default_factory=dict)
    emitted: int | None = None


class WindowedQuery:
    """Evaluates ``sql`` over the registered windowed ``inputs`` one closed window at a time."""

    def __init__(
        self,
        sql: str,
        store: StateStore,
        inputs: dict[str, WindowSpec],
        owns: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.sql = sql
        # at parallelism > 1 routed by window: which window starts this task evaluates (it
        # holds the rows of every pane of those, and of others' windows over the same panes)
        self.owns = owns
        self.store = store
        self.names = sorted(inputs)
        self.windows = inputs
        self.panes = [Panes.of(inputs[name]) for name in self.names]
        self.columns = referenced_names(sql)
        self.state = _State()
        self.run = 0
        for key, value in store.items(ColumnFamily.JOINS):
            pane = (key[0], time_from_key(key[9:17]))
            self.state.panes[pane] = (*self.state.panes.get(pane, ()), (key, decode_table(value)))
            self.run = max(self.run, _RUN.unpack(key[17:])[0] + 1)
        emitted = store.get(ColumnFamily.META, EMITTED)
        self.state.emitted = time_from_key(emitted) if emitted is not None else None
        self.schemas: dict[int, pa.Schema] = {
            index: runs[0][1].schema for (index, _), runs in self.state.panes.items()
        }
        self._staged: _State | None = None

    @property
    def open_windows(self) -> int:
        """Windows holding rows that the watermark has not closed yet."""
        starts, ends = self._windows_over(self.state.panes)
        if self.state.emitted is not None:
            starts = starts[ends > self.state.emitted]
            ends = ends[ends > self.state.emitted]
        return len(set(zip(starts.tolist(), ends.tolist(), strict=True)))

    def _current(self) -> _State:
        if self._staged is None:
            self._staged = _State(dict(self.state.panes), self.state.emitted)
        return self._staged

    def process(self, name: str, rows: pa.Table, watermark: int, batch: StateBatch) -> int:
        """Buffer ``rows`` of input ``name`` in their panes; returns how many rows were late."""
        staged = self._current()
        index = self.names.index(name)
        panes = self.panes[index]
        ts, valid = event_time_ms(rows, self.windows[name].time_column)
        starts = panes.start(ts)
        keep = valid & (panes.last_end(starts) > watermark)
        late = rows.num_rows - int(np.count_nonzero(keep))
        late_here = late
        if late and self.owns is not None:  # a late row counts once: at its last window's task
            late_here = int(np.count_nonzero(self.owns(panes.window_starts(starts[~keep])[:, 0])))
        if late == rows.num_rows:
            return late_here
        rows = self._kept_columns(rows, self.windows[name])
        if late:
            rows, starts = rows.filter(pa.array(keep)), starts[keep]
        if np.any(starts[1:] < starts[:-1]):
            order = np.argsort(starts, kind="stable")
            rows, starts = rows.take(pa.array(order)), starts[order]
        cuts = np.flatnonzero(np.diff(starts)) + 1
        bounds = [0, *cuts.tolist(), len(starts)]
        run = self.run
        self.run += 1
        for lo, hi in pairwise(bounds):
            start = int(starts[lo])
            part = rows.slice(lo, hi - lo)
            key = bytes([index]) + time_key(start + panes.width) + time_key(start) + _RUN.pack(run)
            staged.panes[(index, start)] = (*staged.panes.get((index, start), ()), (key, part))
            batch.put(ColumnFamily.JOINS, key, encode_table(part))
        self.schemas.setdefault(index, rows.schema)
        return late_here

    def emit(
        self, watermark: int, schemas: dict[str, pa.Schema | None], batch: StateBatch
    ) -> pa.Table | None:
        """Run the query over every window the watermark closes; returns its rows."""
        staged = self._current()
        after = staged.emitted
        if after is not None and watermark <= after:
            return None
        staged.emitted = watermark
        batch.put(ColumnFamily.META, EMITTED, time_key(watermark))
        if not staged.panes:
            return None
        starts, ends = self._windows_over(staged.panes)
        closing = ends <= watermark
        if after is not None:
            closing &= ends > after
        if self.owns is not None and closing.any():
            closing[closing] = self.owns(starts[closing])
        outputs = []
        if closing.any():
            windows = np.unique(np.stack([ends[closing], starts[closing]], axis=1), axis=0)
            outputs = self._evaluate(windows[:, 1], windows[:, 0], staged.panes, schemas)
        for (index, start), runs in list(staged.panes.items()):
            if self.panes[index].last_end(np.int64(start)) <= watermark:
                del staged.panes[(index, start)]
                for key, _ in runs:
                    batch.delete(ColumnFamily.JOINS, key)
        outputs = [o for o in outputs if o.num_rows]
        return concat(outputs) if outputs else None

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None

    def rollback(self) -> None:
        self._staged = None

    # -- evaluation ---------------------------------------------------------------------------

    def _kept_columns(self, rows: pa.Table, spec: WindowSpec) -> pa.Table:
        """The columns of ``rows`` the SQL may read (at least one, so row counts survive)."""
        columns = [c for c in rows.column_names if c not in WINDOW_COLUMNS]
        names = kept_columns(columns, self.columns)
        return rows.select(names or [spec.time_column])

    def _windows_over(
        self, panes: dict[tuple[int, int], tuple[tuple[bytes, pa.Table], ...]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) of every window over a buffered pane (with repeats)."""
        starts, ends = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for index, geometry in enumerate(self.panes):
            mine = np.array([s for i, s in panes if i == index], dtype=np.int64)
            window_starts, window_ends = geometry.windows(mine)
            starts.append(window_starts)
            ends.append(window_ends)
        return np.concatenate(starts), np.concatenate(ends)

    def _evaluate(
        self,
        starts: np.ndarray,
        ends: np.ndarray,
        panes: dict[tuple[int, int], tuple[tuple[bytes, pa.Table], ...]],
        schemas: dict[str, pa.Schema | None],
    ) -> list[pa.Table]:
        """The SQL's rows for the windows ``[starts, ends)`` (sorted by end, then start)."""
        gathered = [self._gather(i, starts, ends, panes) for i in range(len(self.names))]
        counts = sum(np.bincount(w, weights=n, minlength=len(starts)) for _, w, n, _ in gathered)
        first = np.cumsum(counts) - counts
        part = (first // MAX_WINDOW_ROWS).astype(np.int64)
        cuts = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), len(starts)]
        outputs = []
        for lo, hi in pairwise(cuts):
            inputs = {}
            for index, name in enumerate(self.names):
                table = self._window_rows(gathered[index], lo, hi, starts, ends)
                if table is None:
                    table = self._empty(index, schemas.get(name))
                if table is None:  # nothing ever arrived on this input: no schema to run with
                    return []
                inputs[name] = table
            outputs.append(run_sql(self.sql, inputs))
        return outputs

    def _gather(
        self,
        index: int,
        starts: np.ndarray,
        ends: np.ndarray,
        panes: dict[tuple[int, int], tuple[tuple[bytes, pa.Table], ...]],
    ) -> tuple[pa.Table | None, np.ndarray, np.ndarray, np.ndarray]:
        """Input ``index``'s rows of the panes of these windows, once each, and per (window,
        pane) pair: the window, the pane's row count and its first row in the gathered table.
        Pairs come in window order."""
        width = self.panes[index].width
        present = np.array(sorted(s for i, s in panes if i == index), dtype=np.int64)
        per_window = (ends - starts) // width
        window = np.repeat(np.arange(len(starts)), per_window)
        step = np.arange(len(window)) - np.repeat(np.cumsum(per_window) - per_window, per_window)
        wanted = starts[window] + step * width
        found = np.searchsorted(present, wanted)
        hit = found < len(present)
        hit[hit] = present[found[hit]] == wanted[hit]
        window, found = window[hit], found[hit]
        used, slot = np.unique(found, return_inverse=True)
        runs = [t for s in present[used] for _, t in panes[(index, int(s))]]
        if not runs:
            return None, window, np.zeros(0, np.int64), np.zeros(0, np.int64)
        run_rows = np.array([t.num_rows for t in runs], dtype=np.int64)
        run_pane = np.repeat(
            np.arange(len(used)), [len(panes[(index, int(s))]) for s in present[used]]
        )
        pane_rows = np.bincount(run_pane, weights=run_rows, minlength=len(used)).astype(np.int64)
        pane_first = np.cumsum(pane_rows) - pane_rows
        rows = pa.concat_tables(runs, promote_options="permissive").combine_chunks()
        return rows, window, pane_rows[slot], pane_first[slot]

    def _window_rows(
        self,
        gathered: tuple[pa.Table | None, np.ndarray, np.ndarray, np.ndarray],
        lo: int,
        hi: int,
        starts: np.ndarray,
        ends: np.ndarray,
    ) -> pa.Table | None:
        """The rows of windows ``lo..hi`` with the window columns the SQL names."""
        rows, window, counts, first = gathered
        a, b = np.searchsorted(window, [lo, hi])
        if rows is None or a == b:
            return None
        window, counts, first = window[a:b], counts[a:b], first[a:b]
        taken = np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        table = rows.take(pa.array(taken))
        window_start = np.repeat(starts[window], counts)
        window_end = np.repeat(ends[window], counts)
        values = {
            "window_start": window_start,
            "window_end": window_end,
            "window_time": window_end - 1,
        }
        return self._with_window_columns(table, values)

    def _with_window_columns(self, table: pa.Table, values: dict[str, np.ndarray]) -> pa.Table:
        for name in WINDOW_COLUMNS:
            if self.columns is None or name in self.columns:
                table = table.append_column(
                    pa.field(name, WINDOW_TYPE),
                    pa.array(values[name], pa.int64()).cast(WINDOW_TYPE),
                )
        return table

    def _empty(self, index: int, schema: pa.Schema | None) -> pa.Table | None:
        """An input without rows in these windows, typed as its rows would be."""
        if schema is not None:
            columns = [f.name for f in schema if f.name not in WINDOW_COLUMNS]
            names = kept_columns(columns, self.columns)
            table = schema.empty_table().select(
                names or [self.windows[self.names[index]].time_column]
            )
        elif index in self.schemas:
            table = self.schemas[index].empty_table()
        else:
            return None
        empty = np.zeros(0, np.int64)
        return self._with_window_columns(table, dict.fromkeys(WINDOW_COLUMNS, empty))
