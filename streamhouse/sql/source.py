"""Sources: turn a topic's stored record batches into Arrow tables for SQL.

A stream's rows are its records' JSON values, parsed by pyarrow's C++ JSON reader with the
declared schema (never a per-row Python loop), plus the metadata columns ``_offset``,
``_partition``, ``_timestamp`` and ``_key``. A value that does not fit the schema is reported
as a :class:`RejectedRow` (partition, offset, reason) and left out; the query still answers.
A topic with no declared stream is read with a schema inferred from a sample of its values.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from streamhouse.log import Log
from streamhouse.log.records import DECODED_SCHEMA, decode_batches

log = logging.getLogger(__name__)

METADATA_FIELDS = [
    pa.field("_offset", pa.int64()),
    pa.field("_partition", pa.int32()),
    pa.field("_timestamp", pa.timestamp("ms")),
    pa.field("_key", pa.string()),
]
METADATA_COLUMNS = frozenset(f.name for f in METADATA_FIELDS)
INFER_SAMPLE_ROWS = 1000
_NEWLINE = 10


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A record whose value could not be read with the stream's schema."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(slots=True)
class SourceTable:
    """The rows of one source, and the records that were left out."""

    table: pa.Table
    rejected: list[RejectedRow] = field(default_factory=list)


def read_records(
    log_: Log,
    topic: str,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
) -> pa.Table:
    """Every record of ``topic`` (optionally of some partitions and offset ranges), decoded.

    Columns: DECODED_SCHEMA plus ``partition`` (int32).
    """
    info = log_.topic(topic)
    tables = []
    for partition in partitions if partitions is not None else range(info.partitions):
        start = (start_offsets or {}).get(partition, 0)
        end = (end_offsets or {}).get(partition)
        runs = [data for _, data in log_.reader.runs(topic, partition, start, end)]
        if not runs:
            continue
        table = decode_batches(runs, min_offset=start)
        if end is not None:
            table = table.filter(pc.less(table["offset"], end))
        tables.append(
            table.append_column(
                "partition", pa.repeat(pa.scalar(partition, pa.int32()), len(table))
            )
        )
    if not tables:
        schema = DECODED_SCHEMA.append(pa.field("partition", pa.int32()))
        return schema.empty_table()
    return pa.concat_tables(tables)


def infer_schema(values: pa.Array | pa.ChunkedArray) -> pa.Schema | None:
    """The schema pyarrow infers from a sample of JSON values, or None if they are not JSON objects.

    Values in the sample that are not JSON objects are passed over; if most are not, the topic
    is not read as JSON.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    sample = values.slice(0, INFER_SAMPLE_ROWS).drop_null()
    if len(sample) == 0:
        return None
    try:
        table = pa_json.read_json(io.BytesIO(_join_lines(sample)))
        if table.num_rows == len(sample):
            return table.schema
    except pa.ArrowInvalid:
        pass
    schemas: dict[str, tuple[int, pa.Schema]] = {}
    for value in sample.to_pylist():  # rare path: a sample with malformed or disagreeing values
        try:
            table = pa_json.read_json(io.BytesIO(value + b"\n"))
        except pa.ArrowInvalid:
            continue
        if table.num_rows == 1:
            seen, _ = schemas.get(str(table.schema), (0, table.schema))
            schemas[str(table.schema)] = (seen + 1, table.schema)
    if sum(n for n, _ in schemas.values()) * 2 < len(sample):
        return None
    return max(schemas.values(), key=lambda item: item[0])[1]


def decode_json(
    values: pa.Array, schema: pa.Schema
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Parse JSON ``values`` with ``schema``.

    Returns the parsed table, the indices of ``values`` its rows come from, and the
    (index, reason) of every value that could not be parsed. Timestamp columns accept
    ISO-8601 strings (with or without a zone) or epoch milliseconds.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.binary()) if values.type != pa.binary() else values
    valid = pc.and_(pc.is_valid(values), pc.greater(pc.binary_length(values), 0))
    valid_np = valid.to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(valid_np)
    rejected = [(int(i), "empty or null value") for i in np.flatnonzero(~valid_np)]
    present = values.take(pa.array(keep)) if len(keep) != len(values) else values
    table, good, bad = _JsonParser(present, schema).parse()
    rejected.extend((int(keep[i]), reason) for i, reason in bad)
    rejected.sort()
    return table, keep[good], rejected


def _epoch_variant(schema: pa.Schema) -> pa.Schema | None:
    """``schema`` with temporal columns read as epoch milliseconds, or None if it has none."""
    temporal = [pa.types.is_timestamp(f.type) or pa.types.is_date(f.type) for f in schema]
    if not any(temporal):
        return None
    return pa.schema(
        [f.with_type(pa.int64()) if t else f for f, t in zip(schema, temporal, strict=True)]
    )


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast epoch-millisecond columns read by the variant schema to the declared types."""
    if table.schema.equals(schema):
        return table
    columns = []
    for f in schema:
        column = table[f.name]
        if column.type != f.type:
            column = column.cast(pa.timestamp("ms")).cast(f.type)
        columns.append(column)
    return pa.table(columns, schema=schema)


def _join_lines(values: pa.Array | pa.ChunkedArray) -> bytes:
    """Concatenate binary values with a newline after each, vectorized."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.binary()) if values.type != pa.binary() else values
    offsets = np.frombuffer(
        values.buffers()[1], dtype=np.int32, count=len(values) + 1, offset=values.offset * 4
    )
    data = (
        np.frombuffer(values.buffers()[2], dtype=np.uint8)
        if values.buffers()[2] is not None
        else np.zeros(0, np.uint8)
    )
    data = data[offsets[0] : offsets[-1]]
    n = len(values)
    out = np.empty(len(data) + n, dtype=np.uint8)
    newline_at = (offsets[1:] - offsets[0]) + np.arange(n)
    mask = np.ones(len(out), dtype=bool)
    mask[newline_at] = False
    out[mask] = data
    out[newline_at] = _NEWLINE
    return out.tobytes()


class _JsonParser:
    """Parses newline-joined values; on failure bisects to find and report the bad ones."""

    def __init__(self, values: pa.Array, schema: pa.Schema) -> None:
        self._schema = schema
        self._variants = [v for v in (schema, _epoch_variant(schema)) if v is not None]
        self._buffer = _join_lines(values) if len(values) else b""
        sizes = pc.binary_length(values).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        self._bounds = np.concatenate([[0], np.cumsum(sizes)])
        self._multiline = self._buffer.count(b"\n") != len(values)
        self._n = len(values)

    def parse(self) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
        tables: list[pa.Table] = []
        good: list[np.ndarray] = []
        bad: list[tuple[int, str]] = []
        stack = [(0, self._n)] if self._n else []
        while stack:
            lo, hi = stack.pop()
            table, reason = self._read(lo, hi)
            if table is not None:
                tables.append(table)
                good.append(np.arange(lo, hi))
            elif hi - lo == 1:
                bad.append((lo, reason))
            else:
                mid = (lo + hi) // 2
                stack.append((mid, hi))  # popped second: keeps output in offset order
                stack.append((lo, mid))
        if not tables:
            return self._schema.empty_table(), np.zeros(0, dtype=np.int64), bad
        return pa.concat_tables(tables), np.concatenate(good), bad

    def _read(self, lo: int, hi: int) -> tuple[pa.Table | None, str]:
        chunk = self._buffer[self._bounds[lo] : self._bounds[hi]]
        reason = ""
        for schema in self._variants:
            try:
                table = pa_json.read_json(
                    io.BytesIO(chunk),
                    read_options=pa_json.ReadOptions(
                        block_size=max(1 << 20, min(len(chunk) // 2 + 1, 64 << 20))
                    ),
                    parse_options=pa_json.ParseOptions(
                        explicit_schema=schema,
                        unexpected_field_behavior="ignore",
                        newlines_in_values=self._multiline,
                    ),
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                reason = reason or str(exc).splitlines()[0]
                continue
            if table.num_rows != hi - lo:
                return None, "not a JSON object"
            return _conform(table, self._schema), ""
        return None, reason


def with_metadata(table: pa.Table, records: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table`` (rows parsed from ``records[rows]``) with the metadata columns appended.

    ``table`` may have no columns at all (a query that reads only metadata columns).
    """
    picked = (
        records.take(pa.array(rows, type=pa.int64())) if len(rows) != records.num_rows else records
    )
    key = picked["key"]
    try:
        key = key.cast(pa.string())
    except pa.ArrowInvalid:  # keys that are not UTF-8 stay readable as hex (a rare, slow path)
        key = pa.array([k.hex() if k is not None else None for k in key.to_pylist()], pa.string())
    columns = {name: table[name] for name in table.column_names}
    extra = {
        "_offset": picked["offset"],
        "_partition": picked["partition"],
        "_timestamp": picked["timestamp"],
        "_key": key,
    }
    for name, column in extra.items():
        columns.setdefault(name, column)
    return pa.table(columns)
