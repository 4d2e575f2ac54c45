"""Add window columns to a table: the bounded (batch) form of every window kind.

``window_table`` returns one row per (row, window) with ``window_start``, ``window_end`` and
``window_time`` (``window_end`` - 1 ms, as in Flink) appended, so the rest of a windowed query runs
as ordinary SQL grouped by ``window_start, window_end``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import SqlError
from streamhouse.key_codes import group_codes
from streamhouse.sql.window_spec import WindowKind, WindowSpec
from streamhouse.windows import assign

WINDOW_TYPE = pa.timestamp("ms")


def event_time_ms(table: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(int64 epoch ms of ``column``, mask of rows where it is not null)."""
    if column not in table.column_names:
        raise SqlError(f"window time column {column!r} does not exist")
    values = table[column]
    if not pa.types.is_timestamp(values.type):
        raise SqlError(
            f"window time column {column!r} must be a TIMESTAMP, not {values.type} "
            "(declare it as TIMESTAMP(3) in CREATE STREAM)"
        )
    millis = pc.cast(pc.cast(values, pa.timestamp("ms", values.type.tz)), pa.int64())
    valid = pc.is_valid(millis).to_numpy(zero_copy_only=False)
    return millis.to_numpy(zero_copy_only=False) if valid.all() else _filled(millis), valid


def _filled(values: pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(values, 0).to_numpy(zero_copy_only=False)


def window_table(table: pa.Table, spec: WindowSpec) -> pa.Table:
    """``table`` with each row repeated per window it falls in, and the window columns added."""
    ts, valid = event_time_ms(table, spec.time_column)
    if not valid.all():  # rows without an event time belong to no window
        table = table.filter(pa.array(valid))
        ts = ts[valid]
    if spec.kind == WindowKind.TUMBLE:
        rows = None
        starts = assign.tumble(ts, spec.size_ms)
        ends = starts + spec.size_ms
    elif spec.kind == WindowKind.HOP:
        rows, starts = assign.hop(ts, spec.slide_ms or spec.size_ms, spec.size_ms)
        ends = starts + spec.size_ms
    elif spec.kind == WindowKind.CUMULATE:
        rows, starts, ends = assign.cumulate(ts, spec.slide_ms or spec.size_ms, spec.size_ms)
    elif spec.kind == WindowKind.SESSION:
        missing = [k for k in spec.partition_by if k not in table.column_names]
        if missing:
            raise SqlError(f"SESSION windows are kept per column; {missing[0]!r} is not a column")
        codes = group_codes([table[k] for k in spec.partition_by])
        if len(codes) == 0:
            codes = np.zeros(len(ts), dtype=np.int64)
        ids, session_starts, session_ends = assign.sessions(codes, ts, spec.gap_ms or 0)
        rows = None
        starts, ends = session_starts[ids], session_ends[ids]
    else:  # pragma: no cover - the parser only makes the kinds above
        raise SqlError(f"unknown window kind {spec.kind}")
    if rows is not None:
        table = table.take(pa.array(rows))
    start_col = pa.array(starts, pa.int64()).cast(WINDOW_TYPE)
    end_col = pa.array(ends, pa.int64()).cast(WINDOW_TYPE)
    time_col = pa.array(ends - 1, pa.int64()).cast(WINDOW_TYPE)
    for name, column in (
        ("window_start", start_col),
        ("window_end", end_col),
        ("window_time", time_col),
    ):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, column)
    return table
