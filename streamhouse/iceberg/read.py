"""Bounded reads of a stream through its Iceberg table: the Parquet files up to the offsets
its snapshot covers, then the log's records after them.

A bounded query over a stream declared ``WITH ('iceberg' = 'true')`` reads, per partition,
the offsets from the log start offset to the last one the table covers from the table's
Parquet files (each file a fragment of DataFusion's scan; its filter and columns pushed down
to the Parquet reader, which skips row groups by their statistics), and the records after
them from the log (:class:`~streamhouse.sql.scan.TopicScan`). The answer is the log's: the
table holds the same rows at the same offsets (:mod:`streamhouse.iceberg.tableflow`).

The log is read instead where the two could differ: a table that left out a record whose
value did not fit the schema (a query parsing fewer columns may keep it), a key-compacted
topic (the table keeps every version), ``'json.ignore-parse-errors' = 'false'`` (a row that
does not parse must fail the query; the table left it out), a query naming ``_key`` (not in
the table), an OPTIONS hint naming another topic, or ``SET 'read.iceberg' = 'false'``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

import datafusion
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow.fs import LocalFileSystem

from streamhouse.iceberg.catalog import current_table
from streamhouse.iceberg.tableflow import (
    ROW_FIELDS,
    TOPIC_PROPERTY,
    covered_offsets,
    iceberg_enabled,
    recording_snapshot,
    rejected_records,
)
from streamhouse.log.key_compaction import is_compacted
from streamhouse.sql.ddl import StreamDef

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

    from streamhouse.log import Log
    from streamhouse.sql.scan import TopicScan

__all__ = ["ColumnarCopy", "ParquetPart", "columnar_copy", "kept_rows", "register_parquet_scan"]

log = logging.getLogger(__name__)

KEY_FIELD = pa.field("_key", pa.string())
BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file of the table, its rows that ``keep`` holds for read (None: all);
    ``pushdown``: DataFusion's filter can go to the reader (it names no computed column)."""

    path: str
    size: int
    filesystem: FileSystem
    keep: pc.Expression | None
    pushdown: bool
    kept: datafusion.Expr | None = None  # ``keep`` as DataFusion's expression

    def tables(self, value_schema: pa.Schema | None, filter_: Any) -> Iterator[pa.Table]:
        fields = list(value_schema or [])
        names = {f.name for f in fields}
        schema = pa.schema(fields + [f for f in ROW_FIELDS if f.name not in names])
        dataset = ds.dataset(
            [self.path], schema=schema, format="parquet", filesystem=self.filesystem
        )
        keep = self.keep
        if self.pushdown and filter_ is not None:
            keep = filter_ if keep is None else keep & filter_
        for batch in dataset.to_batches(filter=keep, batch_size=BATCH_ROWS):
            table = pa.Table.from_batches([batch], schema)
            if KEY_FIELD.name not in names:
                table = table.append_column(KEY_FIELD, pa.nulls(table.num_rows, pa.string()))
            yield table


@dataclass(frozen=True)
class ColumnarCopy:
    """The part of a stream its Iceberg table holds: ``parts`` (its Parquet files) and, per
    partition, the offset the log's records are read from (after the table's)."""

    parts: list[ParquetPart]
    tail_starts: dict[int, int]

    def table_with(self, tail: pa.Table, value_schema: pa.Schema | None, stats: Any) -> pa.Table:
        """The rows of every part (``value_schema``'s columns and the metadata columns, as
        ``tail`` has them), then ``tail``'s; the files counted in ``stats.iceberg_files``."""
        pieces = [t.cast(tail.schema) for p in self.parts for t in p.tables(value_schema, None)]
        stats.iceberg_files += len(self.parts)
        stats.rows_read += sum(t.num_rows for t in pieces)
        return pa.concat_tables([*pieces, tail])


def columnar_copy(
    log_: Log,
    definition: StreamDef,
    *,
    pushdown: bool,
) -> ColumnarCopy | None:
    """The columnar copy a bounded read of ``definition`` can use, or None (no table, no
    snapshot with offsets yet, or a key-compacted topic)."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not iceberg_enabled(definition):
        return None
    info = log_.topic(definition.topic)
    if is_compacted(info.config):
        return None
    table = current_table(log_.settings, definition.name)
    if table is None:
        return None
    snapshot = table.current_snapshot()
    recorded = recording_snapshot(table)
    covered = covered_offsets(table)
    if snapshot is None or recorded is None or not covered:
        return None
    if rejected_records(recorded):
        # Some value did not fit the schema: a query parsing fewer columns may keep its
        # record, the table has not; only the log answers such a query.
        return None
    if (snapshot.summary.get(TOPIC_PROPERTY) if snapshot.summary else None) not in (
        None,
        definition.topic,
    ):
        return None
    starts = {p: b.log_start_offset for p, b in log_.metadata.partition_offsets(info.name).items()}
    current = recorded.snapshot_id == snapshot.snapshot_id
    keep = kept_rows(covered, starts, current)
    kept = kept_rows(covered, starts, current, _column)
    io = table.io
    assert isinstance(io, PyArrowFileIO)
    parts = []
    for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files():
        scheme, netloc, path = PyArrowFileIO.parse_location(task.file.file_path)
        parts.append(
            ParquetPart(
                path,
                task.file.file_size_in_bytes,
                io.fs_by_scheme(scheme, netloc),
                keep,
                pushdown,
                kept,
            )
        )
    tail = {p: last + 1 for p, last in covered.items()}
    return ColumnarCopy(parts, tail)


def kept_rows(
    covered: dict[int, int],
    starts: dict[int, int],
    current: bool,
    field: Callable[[str], Any] = pc.field,
) -> Any:
    """The table's rows a read keeps: per partition, the offsets from the log start offset
    to the last one ``covered`` names. Bounds that every row meets are left out: a log start
    of 0, and the upper bounds when the offsets were recorded by the ``current`` snapshot (the
    table then holds nothing beyond them); so a table whose log was not trimmed is read whole,
    without a filter. ``field`` makes a column's expression: pyarrow's (the default) or
    DataFusion's.

    >>> kept_rows({0: 9, 1: 5}, {0: 0, 1: 0}, True) is None
    True
    >>> str(kept_rows({0: 9}, {0: 3}, True))
    'invert(((_partition == 0) and (_offset < 3)))'
    >>> str(kept_rows({0: 9}, {0: 0}, False))
    'invert(((_partition == 0) and (_offset > 9)))'
    """
    keep = None
    for p, last in sorted(covered.items()):
        dropped = []
        if starts.get(p, 0) > 0:
            dropped.append((field("_partition") == p) & (field("_offset") < starts[p]))
        if not current:
            dropped.append((field("_partition") == p) & (field("_offset") > last))
        for rows in dropped:
            keep = ~rows if keep is None else keep & ~rows
    return keep


def _column(name: str) -> datafusion.Expr:
    """Column ``name`` as DataFusion's expression, its case kept."""
    return datafusion.col('"' + name.replace('"', '""') + '"')


def register_parquet_scan(ctx: datafusion.SessionContext, name: str, scan: TopicScan) -> bool:
    """Registers ``scan`` as table ``name`` of ``ctx``: its Parquet parts as DataFusion's
    Parquet scans (columns, filters and row-group statistics handled by its reader, in
    Rust), each cut to the rows it keeps and cast to the scan's schema, then the log tail
    after them, as one UNION ALL. False (nothing registered): some part needs the Python
    path (a file not on the local filesystem, or computed columns to add)."""
    parts = scan.columnar
    if not parts or not all(
        isinstance(p, ParquetPart) and p.pushdown and isinstance(p.filesystem, LocalFileSystem)
        for p in parts
    ):
        return False
    prefix = f"__iceberg_{uuid.uuid4().hex}"
    frames = []
    for i, part in enumerate(parts):
        ctx.register_parquet(f"{prefix}_{i}", part.path)
        frame = ctx.table(f"{prefix}_{i}")
        have = {f.name: f.type for f in frame.schema()}
        if part.kept is not None:
            frame = frame.filter(part.kept)
        frames.append(frame.select(*(_as(f, have.get(f.name)) for f in scan.schema)))
    ctx.register_dataset(f"{prefix}_tail", scan.dataset(columnar=False))
    frames.append(ctx.table(f"{prefix}_tail").select(*(_column(n) for n in scan.schema.names)))
    ctx.register_view(name, reduce(datafusion.DataFrame.union, frames))
    scan.counter.add(len(parts), sum(p.size for p in parts))
    return True


def _as(field: pa.Field, stored: pa.DataType | None) -> datafusion.Expr:
    """Column ``field`` of a Parquet file whose type there is ``stored`` (None: not there)."""
    if stored is None:
        return datafusion.lit(None).cast(field.type).alias(field.name)
    if stored == field.type:
        return _column(field.name)
    return _column(field.name).cast(field.type).alias(field.name)
