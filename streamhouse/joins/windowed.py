"""Windowed queries: buffer each input's rows per window, run the SQL when windows close.

Window joins (Flink's ``... JOIN ... ON L.window_start = R.window_start AND L.window_end =
R.window_end``), Top-N per window, and windowed aggregates the incremental operator does not
cover all have one thing in common: the rows a window produces depend only on the input rows
of that window. So each input (a windowed table function over a stream) is assigned to its
windows as it arrives and buffered per window in the ``joins`` column family under
``u8(input) | u64(window_end) | u64(window_start)``; when the watermark passes a window's end,
the query's own SQL runs on DataFusion over the buffered rows of every closed window (INNER,
LEFT, RIGHT, FULL, SEMI and ANTI joins see complete windows), and the windows' state is
deleted. Rows arriving for a window that has closed are late: dropped and counted.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.sql.execute import run_sql
from streamhouse.sql.window_spec import WindowSpec
from streamhouse.state.store import (
    StateBatch,
    StateStore,
    decode_table,
    encode_table,
    window_from_key,
    window_key,
)
from streamhouse.windows.table import window_table

log = logging.getLogger(__name__)


class WindowedQuery:
    """Evaluates ``sql`` over the registered windowed ``inputs`` one closed window at a time."""

    def __init__(self, sql: str, store: StateStore, inputs: dict[str, WindowSpec]) -> None:
        self.sql = sql
        self.store = store
        self.names = sorted(inputs)
        self.windows = inputs
        self.state: dict[tuple[int, int, int], pa.Table] = {}
        for key, value in store.items("joins"):
            start, end = window_from_key(key[1:17])
            self.state[(key[0], start, end)] = decode_table(value)
        self._staged: dict[tuple[int, int, int], pa.Table] | None = None

    @property
    def open_windows(self) -> int:
        return len({(s, e) for _, s, e in self.state})

    def _current(self) -> dict[tuple[int, int, int], pa.Table]:
        if self._staged is None:
            self._staged = dict(self.state)
        return self._staged

    def process(self, name: str, rows: pa.Table, watermark: int, batch: StateBatch) -> int:
        """Buffer ``rows`` of input ``name`` in their windows; returns how many rows were late."""
        staged = self._current()
        index = self.names.index(name)
        numbered = rows.append_column("__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        windowed = window_table(numbered, self.windows[name])
        starts = pc.cast(windowed["window_start"], pa.int64()).to_numpy()
        ends = pc.cast(windowed["window_end"], pa.int64()).to_numpy()
        on_time = ends > watermark
        late = rows.num_rows - len(np.unique(windowed["__row"].to_numpy()[on_time]))
        windowed = windowed.drop_columns(["__row"])
        if not on_time.all():
            windowed = windowed.filter(pa.array(on_time))
            starts, ends = starts[on_time], ends[on_time]
        if windowed.num_rows == 0:
            return late
        order = np.lexsort((starts, ends))
        windowed = windowed.take(pa.array(order))
        starts, ends = starts[order], ends[order]
        cuts = np.flatnonzero((np.diff(starts) != 0) | (np.diff(ends) != 0)) + 1
        bounds = np.concatenate([[0], cuts, [len(order)]])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            key = (index, int(starts[lo]), int(ends[lo]))
            fresh = windowed.slice(lo, hi - lo)
            old = staged.get(key)
            merged = (
                fresh
                if old is None
                else pa.concat_tables([old, fresh], promote_options="permissive")
            )
            staged[key] = merged
            batch.put("joins", bytes([index]) + window_key(key[1], key[2]), encode_table(merged))
        return late

    def emit(
        self, watermark: int, schemas: dict[str, pa.Schema | None], batch: StateBatch
    ) -> pa.Table | None:
        """Run the query over every window the watermark closes; returns its rows."""
        staged = self._current()
        closed = sorted((k for k in staged if k[2] <= watermark), key=lambda k: (k[2], k[1], k[0]))
        if not closed:
            return None
        tables: dict[int, list[pa.Table]] = {i: [] for i in range(len(self.names))}
        for key in closed:
            tables[key[0]].append(staged.pop(key))
            batch.delete("joins", bytes([key[0]]) + window_key(key[1], key[2]))
        inputs = {}
        for index, name in enumerate(self.names):
            if tables[index]:
                inputs[name] = pa.concat_tables(tables[index], promote_options="permissive")
            elif schemas.get(name) is not None:
                inputs[name] = schemas[name].empty_table()  # type: ignore[union-attr]
            else:
                return None  # nothing ever arrived on this input: no schema to evaluate with
        result = run_sql(self.sql, inputs)
        return result if result.num_rows else None

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None

    def rollback(self) -> None:
        self._staged = None
