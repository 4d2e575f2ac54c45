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

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import datafusion
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from datafusion.object_store import AmazonS3
from pyarrow.fs import LocalFileSystem, S3FileSystem

from streamhouse.iceberg.catalog import metadata_location, static_table
from streamhouse.iceberg.manifests import DataFile, TableState, UnsupportedTable, table_state
from streamhouse.iceberg.tableflow import (
    OFFSETS_PROPERTY,
    REJECTED_PROPERTY,
    ROW_FIELDS,
    TOPIC_PROPERTY,
    iceberg_enabled,
)
from streamhouse.log.key_compaction import is_compacted
from streamhouse.sql.computed import ComputedColumns
from streamhouse.sql.ddl import StreamDef
from streamhouse.sql.source import METADATA_FIELDS

if TYPE_CHECKING:
    from pyarrow.fs import FileSystem

    from streamhouse.config import Settings
    from streamhouse.log import Log
    from streamhouse.sql.scan import TopicScan

__all__ = ["ColumnarCopy", "ParquetPart", "columnar_copy", "kept_rows", "register_parquet_scan"]

log = logging.getLogger(__name__)

LOCAL_SCHEME = "file://"
S3_SCHEME = "s3://"
KEY_FIELD = pa.field("_key", pa.string())
BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class ParquetPart:
    """One Parquet file of the table, its rows that ``keep`` holds for read (None: all);
    ``computed``: the stream's computed columns, added to its rows as to the log's."""

    path: str
    size: int
    filesystem: FileSystem
    keep: pc.Expression | None
    computed: ComputedColumns
    kept: datafusion.Expr | None = None  # ``keep`` as DataFusion's expression
    s3: S3Access | None = None  # ``path`` is ``bucket/key`` there

    @property
    def pushdown(self) -> bool:
        """Whether DataFusion's filter can go to the reader (it names no computed column)."""
        return not self.computed

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


def columnar_copy(log_: Log, definition: StreamDef) -> ColumnarCopy | None:
    """The columnar copy a bounded read of ``definition`` can use, or None (no table, no
    snapshot with offsets yet, or a key-compacted topic). A table on the local filesystem
    is planned from its files (:mod:`streamhouse.iceberg.manifests`), read through pyarrow on the
    local filesystem or S3; others by pyiceberg."""
    if not iceberg_enabled(definition):
        return None
    info = log_.topic(definition.topic)
    if is_compacted(info.config):
        return None
    location = metadata_location(log_.settings, definition.name)
    if location is None:
        return None
    state, filesystem, s3 = (
        _local_state(location)
        or _s3_state(log_.settings, location)
        or (*_pyiceberg_state(log_.settings, location), None)
    )
    recorded = next(((i, s) for i, s in state.summaries if OFFSETS_PROPERTY in s), None)
    if state.snapshot_id is None or recorded is None:
        return None
    covered = {int(p): int(o) for p, o in json.loads(recorded[1][OFFSETS_PROPERTY]).items()}
    if not covered:
        return None
    if int(recorded[1].get(REJECTED_PROPERTY, 0)):
        # Some value did not fit the schema: a query parsing fewer columns may keep its
        # record, the table has not; only the log answers such a query.
        return None
    if state.summaries[0][1].get(TOPIC_PROPERTY) not in (None, definition.topic):
        return None
    starts = {p: b.log_start_offset for p, b in log_.metadata.partition_offsets(info.name).items()}
    current = recorded[0] == state.snapshot_id
    keep = kept_rows(covered, starts, current)
    computed = ComputedColumns.of(definition)
    kept = kept_rows(covered, starts, current, _column)
    parts = []
    for data_file in state.files:
        fs, path = filesystem(data_file.path)
        parts.append(ParquetPart(path, data_file.size, fs, keep, computed, kept, s3))
    tail = {p: last + 1 for p, last in covered.items()}
    return ColumnarCopy(parts, tail)


FileSystemOf = Callable[[str], tuple["FileSystem", str]]
"""A data file's filesystem and path there, by its location."""


def _local_state(location: str) -> tuple[TableState, FileSystemOf, None] | None:
    """The state of a table on the local filesystem, read from its files (None: elsewhere,
    or a table only pyiceberg reads)."""
    if not location.startswith(LOCAL_SCHEME):
        return None
    state = _state_of_files(location, lambda uri: Path(uri.removeprefix(LOCAL_SCHEME)).read_bytes())
    if state is None:
        return None
    local = LocalFileSystem()
    return state, lambda uri: (local, uri.removeprefix(LOCAL_SCHEME)), None


@dataclass(frozen=True)
class S3Access:
    """How the object store's S3 bucket is reached: by pyarrow (the table's metadata and
    manifests, and the Python path's reads) and by DataFusion's object store (its scans)."""

    region: str
    endpoint: str | None
    access_key: str | None
    secret_key: str | None
    token: str | None

    @classmethod
    def of(cls, settings: Settings) -> S3Access:
        """The bucket's access as boto3 finds it (the environment, AWS config files, ...),
        the S3 client of the log's segments (:mod:`streamhouse.log.objectstore`)."""
        import boto3

        found = boto3.Session().get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
        return cls(
            settings.s3_region,
            settings.s3_endpoint_url,
            frozen.access_key if frozen else None,
            frozen.secret_key if frozen else None,
            frozen.token if frozen else None,
        )

    def filesystem(self) -> S3FileSystem:
        endpoint = urlparse(self.endpoint) if self.endpoint else None
        return S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            session_token=self.token,
            region=self.region,
            endpoint_override=endpoint.netloc if endpoint else None,
            scheme=endpoint.scheme if endpoint else "https",
        )

    def register(self, ctx: datafusion.SessionContext, bucket: str) -> None:
        """``s3://bucket`` as an object store of ``ctx``."""
        store = AmazonS3(
            bucket_name=bucket,
            region=self.region,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            session_token=self.token,
            endpoint=self.endpoint,
            allow_http=bool(self.endpoint and self.endpoint.startswith("http://")),
        )
        ctx.register_object_store(S3_SCHEME, store, bucket)


def _s3_state(
    settings: Settings, location: str
) -> tuple[TableState, FileSystemOf, S3Access] | None:
    """The state of a table in an S3 bucket, read from its files (None: elsewhere, or a
    table only pyiceberg reads)."""
    if not location.startswith(S3_SCHEME):
        return None
    access = S3Access.of(settings)
    fs = access.filesystem()

    def read(uri: str) -> bytes:
        with fs.open_input_stream(uri.removeprefix(S3_SCHEME)) as stream:
            return stream.read()

    state = _state_of_files(location, read)
    if state is None:
        return None
    return state, lambda uri: (fs, uri.removeprefix(S3_SCHEME)), access


def _state_of_files(location: str, read: Callable[[str], bytes]) -> TableState | None:
    """:func:`table_state`, or None for a table only pyiceberg reads."""
    try:
        return table_state(location, read)
    except UnsupportedTable as exc:
        log.info("Iceberg table %s planned by pyiceberg: %s", location, exc)
        return None


def _pyiceberg_state(settings: Settings, location: str) -> tuple[TableState, FileSystemOf]:
    """The state of the table whose metadata file is ``location``, planned by pyiceberg."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    table = static_table(settings, location)
    snapshot = table.current_snapshot()
    if snapshot is None:
        return TableState(None, [], []), lambda uri: (LocalFileSystem(), uri)
    summaries = []
    walked = table.current_snapshot()
    while walked is not None:
        summaries.append((walked.snapshot_id, dict(walked.summary or {})))
        parent = walked.parent_snapshot_id
        walked = None if parent is None else table.snapshot_by_id(parent)
    files = [
        DataFile(task.file.file_path, task.file.file_size_in_bytes)
        for task in table.scan(snapshot_id=snapshot.snapshot_id).plan_files()
    ]
    io = table.io
    assert isinstance(io, PyArrowFileIO)

    def filesystem(uri: str) -> tuple[FileSystem, str]:
        scheme, netloc, path = PyArrowFileIO.parse_location(uri)
        return io.fs_by_scheme(scheme, netloc), path

    return TableState(snapshot.snapshot_id, summaries, files), filesystem


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
    Rust), each cut to the rows it keeps, its computed columns added by the same SQL as the
    log's (:meth:`~streamhouse.sql.computed.ComputedColumns.select_items`) and cast to the
    scan's schema, then the log tail after them, as one UNION ALL. False (nothing
    registered): some part needs the Python path (a file on a filesystem DataFusion does not
    read here, or a ``PROCTIME()`` column, whose clock is read per decoded batch)."""
    parts = scan.columnar
    if not parts or not all(isinstance(p, ParquetPart) and _native(p) for p in parts):
        return False
    # filters evaluated as the reader decodes (a column read for the rows that pass only):
    # a join's dynamic filter (q7: the few highest prices) spares decoding the other rows
    ctx.sql("SET datafusion.execution.parquet.pushdown_filters = true")
    ctx.sql("SET datafusion.execution.parquet.reorder_filters = true")
    prefix = f"__iceberg_{uuid.uuid4().hex}"
    frames = []
    for i, part in enumerate(parts):
        ctx.register_parquet(f"{prefix}_{i}", _registered(ctx, part))
        frame = ctx.table(f"{prefix}_{i}")
        if part.kept is not None:
            frame = frame.filter(part.kept)
        if part.computed:
            frame = _computed(frame, part.computed, scan.value_schema)
        have = {f.name: f.type for f in frame.schema()}
        frames.append(frame.select(*(_as(f, have.get(f.name)) for f in scan.schema)))
    if scan.reads_log:  # the log's records after the table's (none: no Python scan at all)
        ctx.register_dataset(f"{prefix}_tail", scan.dataset(columnar=False))
        frames.append(ctx.table(f"{prefix}_tail").select(*(_column(n) for n in scan.schema.names)))
    ctx.register_view(name, reduce(datafusion.DataFrame.union, frames))
    scan.counter.add(len(parts), sum(p.size for p in parts))
    return True


def _native(part: ParquetPart) -> bool:
    """Whether DataFusion reads ``part`` itself (see :func:`register_parquet_scan`)."""
    readable = isinstance(part.filesystem, LocalFileSystem) or part.s3 is not None
    return readable and not part.computed.proctime


def _registered(ctx: datafusion.SessionContext, part: ParquetPart) -> str:
    """Where DataFusion reads ``part`` from (an S3 bucket registered as its object store)."""
    if part.s3 is None:
        return part.path
    part.s3.register(ctx, part.path.split("/", 1)[0])
    return S3_SCHEME + part.path


def _computed(
    frame: datafusion.DataFrame, computed: ComputedColumns, value_schema: pa.Schema | None
) -> datafusion.DataFrame:
    """A Parquet file's rows as the log's decoded rows (``value_schema``'s columns and the
    metadata columns, of their types), then its computed columns added."""
    have = {f.name: f.type for f in frame.schema()}
    fields = list(value_schema or [])
    names = {f.name for f in fields}
    fields += [f for f in METADATA_FIELDS if f.name not in names]
    frame = frame.select(*(_as(f, have.get(f.name)) for f in fields))
    items = computed.select_items([f.name for f in fields])
    return frame.select(*(frame.parse_sql_expr(item) for item in items))


def _as(field: pa.Field, stored: pa.DataType | None) -> datafusion.Expr:
    """Column ``field`` of a Parquet file whose type there is ``stored`` (None: not there)."""
    if stored is None:
        return datafusion.lit(None).cast(field.type).alias(field.name)
    if stored == field.type:
        return _column(field.name)
    return _column(field.name).cast(field.type).alias(field.name)
