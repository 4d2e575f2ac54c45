"""Sources: turn a topic's stored record batches into Arrow tables for SQL.

A stream's rows are its records' JSON values, parsed with the declared schema by DuckDB's
JSON transform, or pyarrow's JSON reader where DuckDB cannot vouch for a row
(:mod:`streamhouse.sql.json_values`; never a per-row Python loop), plus the metadata
columns ``_offset``, ``_partition``, ``_timestamp`` and ``_key``. A value that does not fit the schema is reported
as a :class:`RejectedRow` (partition, offset, reason) and left out; the query still answers.
A topic with no declared stream is read with a schema inferred from a sample of its values.
A damaged run of records fails the read with a :class:`~streamhouse.errors.DamagedRangeError`,
or, when damage is to be skipped, is left out and listed (``SourceTable.damaged``).
"""

from __future__ import annotations

import io
import logging
from collections import deque
from collections.abc import Collection
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from streamhouse.errors import DamagedRangeError
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation, stable_ends
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.records import DECODED_SCHEMA, VIEW_SCHEMA, JsonLines, decode_records
from streamhouse.sql.json_guard import MAX_JSON_DEPTH, unreadable
from streamhouse.sql.json_values import newline_joined, parse_json
from streamhouse.workers import pool, worker

log = logging.getLogger(__name__)

METADATA_FIELDS = [
    pa.field("_offset", pa.int64()),
    pa.field("_partition", pa.int32()),
    pa.field("_timestamp", pa.timestamp("ms")),
    pa.field("_key", pa.string()),
]
METADATA_COLUMNS = frozenset(f.name for f in METADATA_FIELDS)
INFER_SAMPLE_ROWS = 1000


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """A record whose value could not be read with the stream's schema."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None = None
    value: bytes | None = None


@dataclass(slots=True)
class SourceTable:
    """The rows of one source, the records that were left out, and how many were read."""

    table: pa.Table
    rejected: list[RejectedRow] = field(default_factory=list)
    damaged: list[DamagedRangeError] = field(default_factory=list)  # ranges skipped
    rows_read: int = 0
    schema: pa.Schema | None = None  # the value fields parsed; None: the values are not JSON


def read_records(
    log_: Log,
    topic: str,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    damaged: list[DamagedRangeError] | None = None,
    isolation: Isolation = Isolation.READ_COMMITTED,
) -> pa.Table:
    """Every record of ``topic`` (optionally of some partitions and offset ranges), decoded.

    Columns: DECODED_SCHEMA plus ``partition`` (int32); rows by partition, then offset.
    The runs of all partitions are read (each object once) and decoded in one go. A damaged
    run raises its :class:`~streamhouse.errors.DamagedRangeError`, or, if ``damaged`` is a
    list, is left out and its error appended there. ``isolation``: see
    :mod:`streamhouse.log.isolation`.
    """
    scan = RunScan(
        log_, topic, partitions, start_offsets, end_offsets, damaged, isolation=isolation
    )
    return scan.decode(scan.runs)[0]


def read_source(
    log_: Log,
    topic: str,
    schema: pa.Schema | None,
    columns: Collection[str] | None = None,
    partitions: list[int] | None = None,
    start_offsets: dict[int, int] | None = None,
    end_offsets: dict[int, int] | None = None,
    skip_damaged: bool = False,
    isolation: Isolation = Isolation.READ_COMMITTED,
    parallel: bool = False,
) -> SourceTable:
    """The rows of ``topic`` as a SQL source: its JSON values parsed, plus the metadata columns.

    ``schema`` is the declared value schema, or None to infer it from a sample of the first
    values (if they are not JSON objects, the source has one ``value`` column: the value as
    text). Only the fields named in ``columns`` are parsed (all when None). Equal to
    :func:`read_records`, then :func:`decode_json`, then :func:`with_metadata`, but pipelined:
    the records of the next runs are decoded while the JSON of the previous ones is parsed on
    another thread, so the two cores share the work. When that thread falls two groups behind,
    this one parses the newest group itself (parsing takes a little longer than decoding).
    A damaged run raises its :class:`~streamhouse.errors.DamagedRangeError`; with
    ``skip_damaged`` it is left out and listed in ``damaged``.

    ``parallel`` (a bounded query's read, which waits for the whole table): with a declared
    schema, each group is decoded and parsed whole on a thread of the ``scan`` pool, a thread
    per core. Decoding was the longer half of the pipeline above, so one thread decoding held
    the read to about one core; the LZ4, framing and JSON steps release the GIL.
    """
    out = SourceTable(pa.table({}))
    damaged = out.damaged if skip_damaged else None
    scan = RunScan(
        log_, topic, partitions, start_offsets, end_offsets, damaged, isolation=isolation
    )
    if parallel and schema is not None:
        return _read_parallel(scan, topic, project_schema(schema, columns), out)
    decoded: list[tuple[pa.Table, list[JsonLines]]] = []  # waiting for the schema to be known
    parsing: deque[tuple[pa.Table, Future | tuple]] = deque()
    tables: list[pa.Table] = []

    def finish(records: pa.Table, parse: Future | tuple) -> None:
        """Take one group's parsed rows; its decoded bytes can go (and be reused, warm)."""
        table, rows, rejected = parse.result() if isinstance(parse, Future) else parse
        out.rows_read += records.num_rows
        out.rejected.extend(rejected_rows(topic, records, rejected))
        tables.append(with_metadata(table, records, rows))

    value_schema = schema
    known = schema is not None
    if known:
        value_schema = project_schema(schema, columns)
    groups = scan.groups() or [[]]
    for i, group in enumerate(groups):
        decoded.append(scan.decode(group, json_lines=True))
        if not known:
            if sum(t.num_rows for t, _ in decoded) < INFER_SAMPLE_ROWS and i + 1 < len(groups):
                continue
            sample = pa.chunked_array(
                [c for t, _ in decoded for c in t["value"].chunks], VIEW_SCHEMA.field("value").type
            )
            value_schema = infer_schema(sample)
            if value_schema is not None:
                value_schema = project_schema(value_schema, columns)
            known = True
        for records, lines in decoded:
            parsing.append((records, _start_parse(records, lines, value_schema)))
        decoded = []
        newest = parsing[-1][1]
        if len(parsing) > 2 and _queued(parsing[-2][1]) and _queued(newest) and newest.cancel():
            # The JSON thread is two groups behind: parse the newest one here.
            parsing[-1] = (records, decode_json_lines(records, lines, value_schema))  # type: ignore[arg-type]
        while len(parsing) > 2:  # two groups wait to be parsed while the next one is decoded
            finish(*parsing.popleft())
    while parsing:
        finish(*parsing.popleft())
    out.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    out.schema = value_schema
    return out


def _read_parallel(
    scan: RunScan, topic: str, value_schema: pa.Schema, out: SourceTable
) -> SourceTable:
    """:func:`read_source`'s groups decoded and parsed on the ``scan`` pool, kept in order."""

    def rows_of(group: list[tuple[SegmentRow, memoryview]]) -> tuple[pa.Table, int, list]:
        records, lines = scan.decode(group, json_lines=True)
        table, rows, rejected = _parse(records, lines, value_schema)
        return (
            with_metadata(table, records, rows),
            records.num_rows,
            rejected_rows(topic, records, rejected),
        )

    workers = pool("scan")
    # Groups small enough that every thread has several (a small topic, e.g. Nexmark's
    # persons, is otherwise one group on one thread), not so small that their overhead shows.
    records = sum(row.record_count for row, _ in scan.runs)
    size = -(-records // (PARALLEL_GROUPS_PER_THREAD * workers._max_workers))
    groups = scan.groups(min(SCAN_GROUP_RECORDS, max(PARALLEL_GROUP_RECORDS, size))) or [[]]
    done = [workers.submit(rows_of, group) for group in groups]
    tables = []
    for future in done:
        table, read, rejected = future.result()
        tables.append(table)
        out.rows_read += read
        out.rejected.extend(rejected)
    out.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    out.schema = value_schema
    return out


def rejected_rows(
    topic: str, records: pa.Table, rejected: list[tuple[int, str]]
) -> list[RejectedRow]:
    """The :class:`RejectedRow` of each (index into ``records``, reason) in ``rejected``."""
    if not rejected:
        return []
    partition = records["partition"].to_numpy()
    offset = records["offset"].to_numpy()
    key, value = records["key"], records["value"]  # views: no take kernel, one by one
    return [
        RejectedRow(
            topic, int(partition[i]), int(offset[i]), reason, key[i].as_py(), value[i].as_py()
        )
        for i, reason in rejected
    ]


def _queued(parse: Future | tuple) -> bool:
    """Whether a parse is waiting for the JSON thread (not started, not done)."""
    return isinstance(parse, Future) and not parse.running() and not parse.done()


def project_schema(schema: pa.Schema, columns: Collection[str] | None) -> pa.Schema:
    return schema if columns is None else pa.schema([f for f in schema if f.name in columns])


def _start_parse(
    records: pa.Table, lines: list[JsonLines], schema: pa.Schema | None
) -> Future | tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Parse the values of ``records`` on the JSON thread (or at once, if nothing to parse)."""
    if schema is None or records.num_rows == 0 or len(schema) == 0:
        return _parse(records, lines, schema)
    return worker("json").submit(decode_json_lines, records, lines, schema)


def _parse(
    records: pa.Table, lines: list[JsonLines], schema: pa.Schema | None
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """The values of ``records`` parsed here: the table, its rows' indices in ``records`` and
    the (index, reason) of the values that do not fit."""
    rows = np.arange(records.num_rows)
    if schema is None:  # not JSON: the raw value as text
        return pa.table({"value": records["value"].cast(pa.string(), safe=False)}), rows, []
    if records.num_rows == 0:
        return schema.empty_table(), rows, []
    if len(schema) == 0:  # only metadata columns: the values are not parsed
        rows, rejected = object_rows(records)
        return pa.table({}), rows, rejected
    return decode_json_lines(records, lines, schema)


def object_rows(records: pa.Table) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The rows of ``records`` whose value reads as a JSON object by its first non-blank
    character, and (index, reason) of the others, without parsing.

    A query that reads no field of the value (``COUNT(*)``, metadata or ``PROCTIME()`` columns
    only) counted every record: a value that is not JSON, not an object, empty or null was a
    row there and left out of every query that parses. The first byte of each value is in its
    view (its 4-byte prefix), read for all rows at once; the few values not starting with
    ``{`` are checked for blanks around an object (``^\\s*{`` and ``}\\s*$``). A value
    malformed after its ``{`` is only found by a parse."""
    values = records["value"]
    ok = _first_bytes(values) == ord("{")
    if ok.all():
        return np.arange(records.num_rows), []
    others = np.flatnonzero(~ok)
    # views have no take kernel: the few suspects one by one (as rejected_rows reads them)
    suspects = pa.array([values[int(i)].as_py() for i in others], pa.binary())
    padded = pc.and_(
        pc.match_substring_regex(suspects, r"^\s*\{"),
        pc.match_substring_regex(suspects, r"\}\s*$"),
    )
    padded = pc.fill_null(padded, False).to_numpy(zero_copy_only=False)
    ok[others[padded]] = True
    empty = pc.fill_null(pc.equal(pc.binary_length(suspects), 0), True).to_numpy(
        zero_copy_only=False
    )
    rejected = [
        (int(i), "empty or null value" if e else "not a JSON object")
        for i, e, p in zip(others, empty, padded, strict=True)
        if not p
    ]
    return np.flatnonzero(ok), rejected


def _first_bytes(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The first byte of each value (0 for an empty or null one), from the binary views."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    firsts = []
    for chunk in chunks:
        if chunk.type != pa.binary_view():
            chunk = chunk.cast(pa.binary_view())
        views = np.frombuffer(chunk.buffers()[1], dtype=np.uint8).reshape(-1, 16)
        views = views[chunk.offset : chunk.offset + len(chunk)]
        lengths = np.ascontiguousarray(views[:, :4]).view("<i4")[:, 0]
        first = np.where(lengths > 0, views[:, 4], 0)
        if chunk.null_count:
            first[~chunk.is_valid().to_numpy(zero_copy_only=False)] = 0
        firsts.append(first)
    return np.concatenate(firsts) if firsts else np.zeros(0, np.uint8)


SCAN_GROUP_RECORDS = 1 << 16
"""Records decoded at a time by :func:`read_source`: the unit of its decode/parse pipeline
(small enough that a micro-batch of a continuous query is several)."""


PARALLEL_GROUP_RECORDS = 1 << 13
"""The fewest records in a group of a parallel read (:func:`read_source`), unless a run holds
fewer (groups are whole runs)."""
PARALLEL_GROUPS_PER_THREAD = 3


class RunScan:
    """The runs of some partitions of a topic in offset ranges, and their decoding."""

    def __init__(
        self,
        log_: Log,
        topic: str,
        partitions: list[int] | None,
        start_offsets: dict[int, int] | None,
        end_offsets: dict[int, int] | None,
        damaged: list[DamagedRangeError] | None = None,
        *,
        read: bool = True,
        isolation: Isolation = Isolation.READ_COMMITTED,
    ) -> None:
        info = log_.topic(topic)
        parts = list(partitions) if partitions is not None else list(range(info.partitions))
        self.topic = topic
        # Never below the log start offset: retention or DeleteRecords may have moved it past
        # a position (a continuous query's, or 0) inside an index row that is still kept.
        bounds = log_.metadata.partition_offsets(topic)
        self.starts = {
            p: max(
                (start_offsets or {}).get(p, 0), bounds[p].log_start_offset if p in bounds else 0
            )
            for p in parts
        }
        self.ends = {p: (end_offsets or {}).get(p) for p in parts}
        # read_committed: cut at the last stable offsets (see streamhouse.log.isolation); aborted transactions' batches are left out.
        self.aborted: dict[int, list[tuple[int, int, int]]] = {}
        if isolation is Isolation.READ_COMMITTED:
            low = min(self.starts.values(), default=0)
            stability = log_.metadata.transactions.topic_stability(topic, low)
            self.ends = stable_ends(stability, self.ends)  # type: ignore[assignment]
            self.aborted = stability.aborted
        # read=False: the caller reads the runs of the index rows it picks (read_runs)
        self.runs = log_.reader.scan(topic, parts, self.starts, self.ends, damaged) if read else []

    def groups(self, records: int | None = None) -> list[list[tuple[SegmentRow, memoryview]]]:
        """The runs in order, cut into groups of whole runs of about ``records`` records
        (default :data:`SCAN_GROUP_RECORDS`)."""
        records = records or SCAN_GROUP_RECORDS
        groups: list[list[tuple[SegmentRow, memoryview]]] = []
        current: list[tuple[SegmentRow, memoryview]] = []
        count = 0
        for run in self.runs:
            current.append(run)
            count += run[0].record_count
            if count >= records:
                groups.append(current)
                current, count = [], 0
        if current:
            groups.append(current)
        return groups

    def decode(
        self, runs: list[tuple[SegmentRow, memoryview]], json_lines: bool = False
    ) -> tuple[pa.Table, list[JsonLines]]:
        """The records of ``runs`` within the scan's offset ranges, with their partition (and,
        with ``json_lines``, their values as JSON lines: see :func:`decode_records`)."""
        schema = _VIEW_RECORDS_SCHEMA if json_lines else _RECORDS_SCHEMA
        if not runs:
            return schema.empty_table(), []
        ranges = [(self.starts[row.partition], _end(self.ends[row.partition])) for row, _ in runs]
        # The run CRC-32C was checked on the way out of the store and every batch's at produce.
        aborted = [self.aborted.get(row.partition, ()) for row, _ in runs] if self.aborted else None
        decoded = decode_records(
            [view for _, view in runs],
            ranges,
            verify=False,
            json_lines=json_lines,
            aborted=aborted,
        )
        partition = np.array([row.partition for row, _ in runs], np.int32)[decoded.source]
        table = decoded.table.append_column("partition", _chunked_like(partition, decoded.table))
        return table, decoded.lines


_RECORDS_SCHEMA = DECODED_SCHEMA.append(pa.field("partition", pa.int32()))
_VIEW_RECORDS_SCHEMA = VIEW_SCHEMA.append(pa.field("partition", pa.int32()))
_NO_END = np.iinfo(np.int64).max


def _end(end: int | None) -> int:
    return _NO_END if end is None else end


def _chunked_like(values: np.ndarray, table: pa.Table) -> pa.ChunkedArray:
    """``values`` as a column chunked as ``table``'s, so batches slice without copies."""
    if table.num_columns == 0 or table.column(0).num_chunks <= 1:
        return pa.chunked_array([pa.array(values)])
    bounds = np.cumsum([len(c) for c in table.column(0).chunks])[:-1]
    return pa.chunked_array([pa.array(part) for part in np.split(values, bounds)])


def infer_schema(values: pa.Array | pa.ChunkedArray) -> pa.Schema | None:
    """The schema pyarrow infers from a sample of JSON values, or None if they are not JSON objects.

    Values in the sample that are not JSON objects are passed over; if most are not, the topic
    is not read as JSON. Values nested deeper than a column can be, or starting with ``null``
    (:func:`~streamhouse.sql.json_guard.unreadable`), are left out of the sample.
    """
    sample = values.slice(0, INFER_SAMPLE_ROWS)
    if isinstance(sample, pa.ChunkedArray):  # combine the sample only, not the whole column
        sample = sample.combine_chunks()
    if sample.type != pa.binary():  # views (decode_records with json_lines) or text
        sample = sample.cast(pa.binary())
    sample = sample.drop_null()
    skipped = unreadable(sample, MAX_JSON_DEPTH)  # (pyarrow or DataFusion would fail)
    if skipped:
        log.info(
            "%d sampled value(s) left out of schema inference: %s", len(skipped), skipped[0][1]
        )
        keep = np.ones(len(sample), np.bool_)
        keep[[i for i, _ in skipped]] = False
        sample = sample.filter(pa.array(keep))
    if len(sample) == 0:
        return None
    try:
        table = pa_json.read_json(pa.BufferReader(newline_joined(sample)[0]))
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
    values: pa.Array | pa.ChunkedArray, schema: pa.Schema
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Parse JSON ``values`` with ``schema``.

    Returns the parsed table, the indices of ``values`` its rows come from, and the
    (index, reason) of every value that could not be parsed. Timestamp columns accept
    ISO-8601 strings (with or without a zone) or epoch milliseconds. Chunks are parsed one
    at a time, without first being combined.
    """
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    return _parse_lines([_lines_of(c) for c in chunks], chunks, schema)


def decode_json_lines(
    records: pa.Table, lines: list[JsonLines], schema: pa.Schema
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """As :func:`decode_json` over ``records["value"]``, reading the values where
    ``decode_records(..., json_lines=True)`` left them (``lines``: one per chunk of
    ``records``)."""
    return _parse_lines(lines, records["value"].chunks, schema)


def _lines_of(values: pa.Array) -> JsonLines:
    """``values`` as JSON lines: the non-empty ones, newline-joined (a copy)."""
    values = values.cast(pa.binary()) if values.type != pa.binary() else values
    valid = pc.fill_null(pc.greater(pc.binary_length(values), 0), False)
    rows = np.flatnonzero(valid.to_numpy(zero_copy_only=False))
    return JsonLines(
        rows,
        lambda: newline_joined(values if len(rows) == len(values) else values.take(pa.array(rows))),
    )


def _parse_lines(
    lines: list[JsonLines], values: list[pa.Array], schema: pa.Schema
) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """Parse each chunk's values (``lines[i]`` of ``values[i]``; rows without a line have a
    null or empty value); rows and rejections are indexed across all chunks."""
    tables: list[pa.Table] = []
    rows: list[np.ndarray] = []
    rejected: list[tuple[int, str]] = []
    base = 0
    for chunk, chunk_values in zip(lines, values, strict=True):
        size = len(chunk_values)
        if len(chunk.rows) != size:
            missing = np.setdiff1d(np.arange(size), chunk.rows, assume_unique=True)
            rejected.extend((int(i) + base, "empty or null value") for i in missing)
        if len(chunk.rows):
            table, good, bad = parse_json(
                chunk, chunk_values if len(chunk.rows) == size else None, schema
            )
            tables.append(table)
            rows.append(chunk.rows[good] + base)
            rejected.extend((int(chunk.rows[i]) + base, reason) for i, reason in bad)
        base += size
    rejected.sort()
    if not tables:
        return schema.empty_table(), np.zeros(0, np.int64), rejected
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    return table, np.concatenate(rows), rejected


def with_metadata(table: pa.Table, records: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table`` (rows parsed from ``records[rows]``) with the metadata columns appended.

    ``table`` may have no columns at all (a query that reads only metadata columns).
    """
    picked = records.select(["offset", "partition", "timestamp", "key"])
    if len(rows) != records.num_rows:
        picked = picked.take(pa.array(rows, type=pa.int64()))
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
