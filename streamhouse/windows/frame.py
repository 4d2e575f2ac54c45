"""Window columns added inside DataFusion: :func:`~streamhouse.windows.table.window_table`'s
rows, computed by DataFusion's plan over a source it scans itself (an Iceberg table's Parquet
files, :func:`~streamhouse.iceberg.read.register_parquet_scan`), so a bounded windowed query
never holds its windowed rows in Python.

The same windows as :mod:`streamhouse.windows.assign`, aligned to the epoch in milliseconds:
a tumbling window per row; ``size / slide`` hopping windows per row and the cumulating
windows ``[floor(ts, size), floor(ts, size) + k*step)`` that still hold the row, each by a
cross join of the rows with the window indexes (a few rows: DataFusion streams the rows past
them). Sessions depend on the rows around each row and stay with ``window_table``.

>>> import datafusion, pyarrow as pa
>>> from streamhouse.sql.window_spec import WindowKind, WindowSpec
>>> ctx = datafusion.SessionContext()
>>> rows = pa.table({"t": pa.array([0, 2500, None], pa.timestamp("ms"))})
>>> frame = window_frame(ctx, ctx.from_arrow(rows), WindowSpec(WindowKind.HOP, "t", 4000, 2000))
>>> sorted(frame.select("window_start").to_pydict()["window_start"])
[datetime.datetime(1969, 12, 31, 23, 59, 58), datetime.datetime(1970, 1, 1, 0, 0), datetime.datetime(1970, 1, 1, 0, 0), datetime.datetime(1970, 1, 1, 0, 0, 2)]
"""

from __future__ import annotations

import datafusion
import pyarrow as pa
from datafusion import lit

from streamhouse.errors import SqlError
from streamhouse.sql.execute import quoted
from streamhouse.sql.window_spec import WINDOW_COLUMNS, WindowKind, WindowSpec
from streamhouse.windows.table import WINDOW_TYPE

__all__ = ["NATIVE_KINDS", "window_frame"]

NATIVE_KINDS = frozenset({WindowKind.TUMBLE, WindowKind.HOP, WindowKind.CUMULATE})
"""The window kinds :func:`window_frame` computes (a row's windows depend on it alone)."""

_INDEX = "__window_index"


def _column(name: str) -> datafusion.Expr:
    return datafusion.col(quoted(name))


def _floor(ms: datafusion.Expr, size: int) -> datafusion.Expr:
    """``ms`` down to a multiple of ``size`` (toward minus infinity, as ``np.mod``)."""
    return ms - ((ms % lit(size)) + lit(size)) % lit(size)


def _indexes(ctx: datafusion.SessionContext, indexes: range) -> datafusion.DataFrame:
    return ctx.from_arrow(pa.table({_INDEX: pa.array(indexes, pa.int64())}))


def window_frame(
    ctx: datafusion.SessionContext, frame: datafusion.DataFrame, spec: WindowSpec
) -> datafusion.DataFrame:
    """``frame`` with each row repeated per window it falls in and ``window_start``,
    ``window_end`` and ``window_time`` (``window_end`` - 1 ms) added, as ``window_table``
    gives them (``ctx``: ``frame``'s context); rows without an event time belong to no window. ``spec.kind`` is one of
    :data:`NATIVE_KINDS`."""
    types = {field.name: field.type for field in frame.schema()}
    time_type = types.get(spec.time_column)
    if time_type is None:
        raise SqlError(f"window time column {spec.time_column!r} does not exist")
    if not pa.types.is_timestamp(time_type):
        raise SqlError(
            f"window time column {spec.time_column!r} must be a TIMESTAMP, not {time_type} "
            "(declare it as TIMESTAMP(3) in CREATE STREAM)"
        )
    time = _column(spec.time_column)
    ms = time.cast(pa.timestamp("ms", time_type.tz)).cast(pa.int64())
    frame = frame.filter(time.is_not_null())
    size = spec.size_ms
    if spec.kind == WindowKind.TUMBLE:
        start = _floor(ms, size)
        end = start + lit(size)
    elif spec.kind == WindowKind.HOP:
        slide = spec.slide_ms or size
        # each row beside the indexes i of its windows, the i-th starting i slides back
        frame = _indexes(ctx, range(size // slide)).join_on(frame, lit(True))
        start = _floor(ms, slide) - _column(_INDEX) * lit(slide)
        end = start + lit(size)
    elif spec.kind == WindowKind.CUMULATE:
        step = spec.slide_ms or size
        start = _floor(ms, size)
        # the ends start + k*step past the row's time, k up to size / step
        frame = _indexes(ctx, range(1, size // step + 1)).join_on(frame, lit(True))
        end = start + _column(_INDEX) * lit(step)
        frame = frame.filter(end > ms)
    else:
        raise SqlError(f"{spec.kind} windows are not computed by DataFusion")
    kept = [_column(n) for n in types if n not in WINDOW_COLUMNS]
    return frame.select(
        *kept,
        start.cast(WINDOW_TYPE).alias("window_start"),
        end.cast(WINDOW_TYPE).alias("window_end"),
        (end - lit(1)).cast(WINDOW_TYPE).alias("window_time"),
    )
