"""A topic as a streaming source of a bounded query: segments decoded group by group as
DataFusion pulls its record batches, so no source is ever one table in memory.

DataFusion takes a :class:`pyarrow.dataset.Dataset` as a table provider and only calls
``schema``, ``scanner(columns, filter)`` and ``get_fragments(filter)`` on it, then
``fragment.scanner(schema, columns, filter, batch_size).to_batches()`` on each fragment, one
partition of its plan per fragment. :class:`TopicDataset` is such a dataset: each fragment is
a lazy generator over its share of the segment groups (group ``i`` goes to fragment
``i % fragments``), so the fragments decode on as many threads as DataFusion runs them on, and
a query that stops pulling (``LIMIT`` without ``ORDER BY``) stops reading. Scanning again
(a self-join, a subquery over the same source) reads again; nothing is kept.

Each group: its objects read once (counted in :class:`~streamhouse.log.reader.ReadCounter`),
its runs checked and trimmed (damage fails the query, or with ``skip_damaged`` is left out and
listed), decoded, the named JSON fields parsed (:mod:`streamhouse.sql.source`), the metadata
and computed columns added, then DataFusion's pushed-down filter (which it counts on being
applied: pushdown is exact) and projection. Index rows the query's WHERE rules out
(:mod:`streamhouse.sql.pruning`) are never read.

An error in a fragment (a damaged range, a row that does not parse with
``'json.ignore-parse-errors' = 'false'``) is kept in :attr:`TopicScan.error`, so the caller
raises it as it is rather than as DataFusion's text of it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from streamhouse.errors import DamagedRangeError
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.reader import ReadCounter
from streamhouse.log.records import split_batches
from streamhouse.sql.pruning import NO_BOUNDS, ScanBounds
from streamhouse.sql.scan_cache import ColumnarCache
from streamhouse.sql.source import (
    INFER_SAMPLE_ROWS,
    SCAN_GROUP_RECORDS,
    VIEW_SCHEMA,
    RejectedRow,
    RunScan,
    decode_json_lines,
    infer_schema,
    object_rows,
    project_schema,
    rejected_rows,
    with_metadata,
)

log = logging.getLogger(__name__)


class TopicScan:
    """The rows of one topic for one query: which index rows to read, in which groups, and
    how a group becomes record batches of :attr:`schema`."""

    def __init__(
        self,
        log_: Log,
        name: str,
        topic: str,
        schema: pa.Schema | None,
        columns: set[str] | None,
        *,
        finish: Callable[[pa.Table], pa.Table] = lambda table: table,
        bounds: ScanBounds = NO_BOUNDS,
        skip_damaged: bool = False,
        isolation: Isolation = Isolation.READ_COMMITTED,
        fail_on_rejected: Callable[[RejectedRow], Exception] | None = None,
        fragments: int = 2,
        cache: ColumnarCache | None = None,
        start_offsets: Mapping[int, int] | None = None,
        columnar: Sequence[ColumnarPart] = (),
    ) -> None:
        self.name = name
        self.topic = topic
        self.counter = ReadCounter()
        self.rows_read = 0
        self.rejected: list[RejectedRow] = []
        self.damaged: list[DamagedRangeError] = []
        self.error: BaseException | None = None
        self.cached_runs = 0  # runs read from the columnar cache
        self.columnar = list(columnar)  # read before the log, from ``start_offsets`` on
        self._cache = cache
        self._log = log_
        self._finish = finish
        self._skip_damaged = skip_damaged
        self._fail_on_rejected = fail_on_rejected
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._active = 0
        self._live = 0  # fragments started and not ended
        self._closed = False
        partitions = range(log_.topic(topic).partitions)
        if bounds.partitions is not None:
            partitions = [p for p in partitions if p in bounds.partitions]
        parts = list(partitions)
        self._scan = RunScan(
            log_,
            topic,
            parts,
            {p: max(bounds.start_offset, (start_offsets or {}).get(p, 0)) for p in parts},
            {p: bounds.end_offset for p in parts} if bounds.end_offset is not None else None,
            read=False,
            isolation=isolation,
        )
        found = log_.metadata.segments_of_partitions(
            topic, {p: (self._scan.starts[p], self._scan.ends[p]) for p in parts}
        )
        rows = [row for p in parts for row in found[p] if bounds.keeps(row)]
        if schema is None:
            schema = self._infer()
        self.value_schema = schema if schema is None else project_schema(schema, columns)
        self._groups = _groups(rows)
        self._cache_keys = frozenset(  # the cache files this scan reads: never evicted by it
            ()
            if cache is None
            else (cache.key(row, self.value_schema, self._variant(row)) for row in rows)
        )
        self.fragments = max(1, min(fragments, len(self._groups)))
        self.schema = self._batch(self._scan.decode([], json_lines=True)).schema

    def _infer(self) -> pa.Schema | None:
        """The schema inferred from the topic's first values (by partition, then offset,
        from the log start: whatever the query's WHERE prunes, as the whole-table path)."""
        whole = RunScan(self._log, self.topic, None, None, None, read=False)
        sample: list[SegmentRow] = []
        count = 0
        for partition, start in whole.starts.items():
            wanted = max(1, INFER_SAMPLE_ROWS - count)  # rows hold at least a record each
            rows = self._log.metadata.segments(self.topic, partition, start, limit=wanted)
            for row in rows:
                if count >= INFER_SAMPLE_ROWS:
                    break
                sample.append(row)
                count += row.record_count
        runs = self._log.reader.read_runs(
            sample,
            whole.starts,
            [] if self._skip_damaged else None,  # listed when the scan reads them
            self.counter,
            cache=False,
        )
        records, _ = whole.decode(runs, json_lines=True)
        values = records["value"]
        return infer_schema(pa.chunked_array(values.chunks, VIEW_SCHEMA.field("value").type))

    def _runs(self, rows: list[SegmentRow]) -> list[tuple[SegmentRow, memoryview]]:
        """The runs of ``rows``, trimmed to the scan's start offsets."""
        damaged = [] if self._skip_damaged else None
        runs = self._log.reader.read_runs(
            rows, self._scan.starts, damaged, self.counter, cache=False
        )
        if damaged:
            with self._lock:
                self.damaged.extend(damaged)
        return runs

    def _parse(self, decoded: tuple[pa.Table, list]) -> tuple[pa.Table, list[RejectedRow]]:
        """Decoded records as rows: values parsed, metadata columns added; and the records
        whose values do not fit the schema."""
        records, lines = decoded
        schema = self.value_schema
        rows = np.arange(records.num_rows)
        rejected: list[RejectedRow] = []
        if schema is None:  # not JSON: the raw value as text
            table = pa.table({"value": records["value"].cast(pa.string(), safe=False)})
        elif records.num_rows == 0:
            table = schema.empty_table()
        elif len(schema) == 0:  # only metadata columns: the values are not parsed
            table = pa.table({})
            rows, bad = object_rows(records)
            rejected = rejected_rows(self.topic, records, bad)
        else:
            table, rows, bad = decode_json_lines(records, lines, schema)
            rejected = rejected_rows(self.topic, records, bad)
        return with_metadata(table, records, rows), rejected

    def _reject(self, rejected: list[RejectedRow]) -> None:
        if rejected and self._fail_on_rejected is not None:
            raise self._fail_on_rejected(rejected[0])
        with self._lock:
            self.rejected.extend(rejected)

    def _batch(self, decoded: tuple[pa.Table, list]) -> pa.Table:
        """One piece's rows: values parsed, metadata and computed columns added."""
        table, rejected = self._parse(decoded)
        self._reject(rejected)
        return self._finish(table)

    def _out(
        self, table: pa.Table, columns: list[str] | None, filter_: Any
    ) -> list[pa.RecordBatch]:
        """Rows as DataFusion asked for them: the scan's schema, filtered, projected."""
        if table.schema != self.schema:
            table = table.cast(self.schema)
        if filter_ is not None:
            table = table.filter(filter_)
        if columns is not None:
            table = table.select(columns)
        return table.to_batches(max_chunksize=BATCH_ROWS)

    def batches(
        self, fragment: int, columns: list[str] | None, filter_: Any
    ) -> Iterator[pa.RecordBatch]:
        """:meth:`_batches`, counted live until it ends (exhausted, closed or dropped)."""
        with self._idle:
            self._live += 1
        try:
            yield from self._batches(fragment, columns, filter_)
        finally:
            with self._idle:
                self._live -= 1
                self._idle.notify_all()

    def _batches(
        self, fragment: int, columns: list[str] | None, filter_: Any
    ) -> Iterator[pa.RecordBatch]:
        """The record batches of ``fragment``'s groups: ``filter_`` applied, ``columns`` kept.
        Each group's objects are read at once, then decoded a piece (:func:`_growing`) at a
        time, so a query that stops pulling stops early; with a columnar cache, a run at a
        time, from the cache where it holds the run."""
        sizes = _growing()
        for group in self._groups[fragment :: self.fragments]:
            if self._cache is not None:
                yield from self._cached(group, columns, filter_, sizes)
                continue
            with self._step() as open_:
                if not open_:
                    return
                runs = self._runs(group)
            for piece in _pieces(runs, sizes):
                with self._step() as open_:
                    if not open_:
                        return
                    decoded = self._scan.decode(piece, json_lines=True)
                    table = self._batch(decoded)
                    with self._lock:
                        self.rows_read += decoded[0].num_rows
                    out = self._out(table, columns, filter_)
                yield from out

    def columnar_batches(
        self, index: int, columns: list[str] | None, filter_: Any
    ) -> Iterator[pa.RecordBatch]:
        """The record batches of columnar part ``index``, counted live as :meth:`batches`."""
        with self._idle:
            self._live += 1
        try:
            part = self.columnar[index]
            tables = iter(part.tables(self.value_schema, filter_))
            self.counter.add(1, part.size)
            while True:
                with self._step() as open_:
                    if not open_:
                        return
                    table = next(tables, None)
                    if table is None:
                        return
                    with self._lock:
                        self.rows_read += table.num_rows
                    out = self._out(self._finish(table), columns, filter_)
                yield from out
        finally:
            with self._idle:
                self._live -= 1
                self._idle.notify_all()

    def _cached(
        self,
        group: list[SegmentRow],
        columns: list[str] | None,
        filter_: Any,
        sizes: Iterator[int],
    ) -> Iterator[pa.RecordBatch]:
        """A group through the columnar cache: cached runs read from it, the others read
        from their objects and decoded a piece at a time; a run read whole (not cut by the
        scan's offsets, no rejected values, not left early) is then cached."""
        cache = self._cache
        assert cache is not None
        with self._step() as open_:
            if not open_:
                return
            keys = {row: cache.key(row, self.value_schema, self._variant(row)) for row in group}
            tables = {row: cache.get(key) for row, key in keys.items()}
            missing = [row for row in group if tables[row] is None]
            runs = dict(self._runs(missing)) if missing else {}
        with self._lock:
            self.cached_runs += len(group) - len(missing)
        for kind, rows in self._chunks(group, tables, runs):
            if kind == "cached":
                with self._step() as open_:
                    if not open_:
                        return
                    table = pa.concat_tables([self._trim(row, tables[row]) for row in rows])
                    with self._lock:
                        self.rows_read += table.num_rows
                    out = self._out(self._finish(table), columns, filter_)
                yield from out
            elif kind == "small":
                yield from self._small_runs(rows, runs, keys, columns, filter_)
            else:
                yield from self._large_run(rows[0], runs[rows[0]], keys, columns, filter_, sizes)

    def _chunks(
        self,
        group: list[SegmentRow],
        tables: Mapping[SegmentRow, pa.Table | None],
        runs: Mapping[SegmentRow, memoryview],
    ) -> list[tuple[str, list[SegmentRow]]]:
        """``group``'s rows in order, in chunks handled together: runs the cache holds
        ("cached"), whole runs too small to be worth a piece of their own ("small"), up to
        :data:`PIECE_RECORDS` records a chunk; every other run alone ("large"). Damaged runs
        left out (``skip_damaged``) are in none."""
        chunks: list[tuple[str, list[SegmentRow]]] = []
        records = 0
        for row in group:
            if tables[row] is not None:
                kind = "cached"
            elif row not in runs:
                continue
            elif row.record_count < SMALL_RUN_RECORDS and self._whole(row):
                kind = "small"
            else:
                kind = "large"
            if kind != "large" and chunks and chunks[-1][0] == kind and records < PIECE_RECORDS:
                chunks[-1][1].append(row)
                records += row.record_count
            else:
                chunks.append((kind, [row]))
                records = row.record_count
        return chunks

    def _large_run(
        self,
        row: SegmentRow,
        run: memoryview,
        keys: Mapping[SegmentRow, Any],
        columns: list[str] | None,
        filter_: Any,
        sizes: Iterator[int],
    ) -> Iterator[pa.RecordBatch]:
        """One run read a piece at a time, and cached if it was read whole."""
        parts: list[pa.Table] | None = [] if self._whole(row) else None
        for piece in _pieces([(row, run)], sizes):
            with self._step() as open_:
                if not open_:
                    return
                decoded = self._scan.decode(piece, json_lines=True)
                table, rejected = self._parse(decoded)
                self._reject(rejected)
                if rejected:
                    parts = None
                elif parts is not None:
                    parts.append(table)
                with self._lock:
                    self.rows_read += decoded[0].num_rows
                out = self._out(self._finish(table), columns, filter_)
            yield from out
        if parts:
            self._put(keys[row], pa.concat_tables(parts))

    def _small_runs(
        self,
        rows: list[SegmentRow],
        runs: Mapping[SegmentRow, memoryview],
        keys: Mapping[SegmentRow, Any],
        columns: list[str] | None,
        filter_: Any,
    ) -> Iterator[pa.RecordBatch]:
        """Whole small runs (a topic of many partitions flushed together holds one short run
        per partition) decoded and parsed as one piece, then cached run by run."""
        with self._step() as open_:
            if not open_:
                return
            decoded = self._scan.decode([(row, runs[row]) for row in rows], json_lines=True)
            table, rejected = self._parse(decoded)
            self._reject(rejected)
            with self._lock:
                self.rows_read += decoded[0].num_rows
            for row, part in zip(rows, [] if rejected else _run_slices(table, rows), strict=False):
                self._put(keys[row], part)
            out = self._out(self._finish(table), columns, filter_)
        yield from out

    def _put(self, key: str, table: pa.Table) -> None:
        """Cache a run's table, evicting none of the runs this scan reads."""
        assert self._cache is not None
        self._cache.put(key, table, self._cache_keys)

    def _variant(self, row: SegmentRow) -> str:
        """The cache variant of ``row``'s run: "committed" when aborted transactions' batches
        are left out of it (a run wholly below the last stable offset keeps what it has)."""
        aborted = self._scan.aborted.get(row.partition, ())
        overlaps = any(
            first <= row.last_offset and last >= row.base_offset for _, first, last in aborted
        )
        return "committed" if overlaps else ""

    def _whole(self, row: SegmentRow) -> bool:
        """Whether the scan reads every record of ``row`` (its offsets do not cut it)."""
        start, end = self._scan.starts[row.partition], self._scan.ends[row.partition]
        return row.base_offset >= start and (end is None or row.last_offset < end)

    def _trim(self, row: SegmentRow, table: pa.Table) -> pa.Table:
        """A whole run's rows within the scan's offsets of its partition."""
        if self._whole(row):
            return table
        start, end = self._scan.starts[row.partition], self._scan.ends[row.partition]
        offsets = table["_offset"]
        keep = pc.greater_equal(offsets, start)
        if end is not None:
            keep = pc.and_(keep, pc.less(offsets, end))
        return table.filter(keep)

    @contextmanager
    def _step(self) -> Iterator[bool]:
        """One step of a fragment's work, counted so :meth:`close` can wait for it; yields
        False once the scan is closed (the step is then not to be taken). Its error is kept."""
        with self._idle:
            if self._closed:
                yield False
                return
            self._active += 1
        try:
            yield True
        except Exception as exc:
            with self._lock:
                if self.error is None:
                    self.error = exc
            raise
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Stop the fragments (a LIMIT may leave some unread) and wait for the steps under
        way, then (briefly) for fragments a DataFusion thread is about to resume, which end at
        once: a thread still entering Python when the interpreter exits aborts the process."""
        started = time.perf_counter()
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._active == 0, timeout)
            self._idle.wait_for(lambda: self._live == 0, CLOSE_GRACE_S)
        log.debug(
            "scan of %r closed in %.3f s, %d fragment(s) left suspended",
            self.name,
            time.perf_counter() - started,
            self._live,
        )

    @property
    def reads_log(self) -> bool:
        """Whether the log holds rows for the scan (past its columnar parts' offsets)."""
        return bool(self._groups)

    def dataset(self, columnar: bool = True) -> TopicDataset:
        """The scan as DataFusion's dataset (``columnar``: its columnar parts too)."""
        return TopicDataset(self, columnar)


CLOSE_GRACE_S = 1.0
"""How long closing a scan waits for fragments left suspended (by a LIMIT) to end."""

BATCH_ROWS = 8192
"""Rows of a record batch handed to DataFusion at most (its own batch size)."""

PIECE_RECORDS = 1 << 16
"""Records decoded and parsed at a time by a fragment at most (whole batches: about that
many); its first pieces are smaller (:func:`_growing`)."""
FIRST_PIECE_RECORDS = 1 << 12
"""The first piece of a fragment, so that a LIMIT meets its rows soon."""
SMALL_RUN_RECORDS = 256
"""Runs shorter than this are read through the columnar cache several at a time (decoding and
parsing a piece costs about as much for one record as for hundreds)."""


def _pieces(
    runs: list[tuple[SegmentRow, memoryview]], sizes: Iterator[int]
) -> Iterator[list[tuple[SegmentRow, memoryview]]]:
    """``runs`` cut at batch boundaries into pieces of about ``next(sizes)`` records each."""
    piece: list[tuple[SegmentRow, memoryview]] = []
    count = 0
    records = next(sizes)
    for row, view in runs:
        start = 0
        for _, end, header in split_batches(view):
            count += header.record_count
            if count >= records:
                piece.append((row, view[start:end]))
                yield piece
                piece, count, start = [], 0, end
                records = next(sizes)
        if start < len(view):
            piece.append((row, view[start:]))
    if piece:
        yield piece


def _run_slices(table: pa.Table, rows: list[SegmentRow]) -> list[pa.Table]:
    """``table`` (the parsed records of ``rows``, whole runs in order) cut into each run's
    rows; none if its rows are not in run order."""
    # every record of a run is in [base_offset, last_offset]: the rows bound the table's keys
    if max(r.partition for r in rows) >= 1 << 19 or max(r.last_offset for r in rows) >= 1 << 44:
        return []  # beyond the composite key's bits: left uncached
    partitions = table["_partition"].to_numpy().astype(np.int64)
    order = (partitions << 44) | table["_offset"].to_numpy().astype(np.int64)
    if np.any(order[1:] < order[:-1]):
        return []
    starts = np.array([(r.partition << 44) | r.base_offset for r in rows], np.int64)
    bounds = [*np.searchsorted(order, starts).tolist(), len(order)]
    return [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)]


def _growing() -> Iterator[int]:
    """Piece sizes of a fragment: :data:`FIRST_PIECE_RECORDS`, doubling up to
    :data:`PIECE_RECORDS` (a LIMIT meets its rows soon; a whole scan pays the per-piece cost
    of parsing seldom)."""
    size = min(FIRST_PIECE_RECORDS, PIECE_RECORDS)
    while True:
        yield size
        size = min(size * 2, PIECE_RECORDS)


def _groups(rows: list[SegmentRow]) -> list[list[SegmentRow]]:
    """Index rows cut into groups of whole objects, about :data:`SCAN_GROUP_RECORDS` records
    each, in object order; a group's rows by partition, then offset."""
    by_object: dict[str, list[SegmentRow]] = {}
    for row in rows:
        by_object.setdefault(row.object_key, []).append(row)
    groups: list[list[SegmentRow]] = []
    current: list[SegmentRow] = []
    for key in sorted(by_object):
        current += by_object[key]
        if sum(r.record_count for r in current) >= SCAN_GROUP_RECORDS:
            groups.append(sorted(current, key=lambda r: (r.partition, r.base_offset)))
            current = []
    if current:
        groups.append(sorted(current, key=lambda r: (r.partition, r.base_offset)))
    return groups


class ColumnarPart(Protocol):
    """Rows of a source already stored as columns (a Parquet file of its Iceberg table), read
    in place of the log's records at the offsets they hold."""

    size: int  # bytes

    def tables(self, value_schema: pa.Schema | None, filter_: Any) -> Iterator[pa.Table]:
        """Rows with ``value_schema``'s columns, then ``_offset``, ``_partition``,
        ``_timestamp`` and ``_key`` (as :func:`~streamhouse.sql.source.with_metadata` gives
        them); ``filter_`` (DataFusion's, over the scan's schema) may be applied."""
        ...


class _Scanner:
    """What DataFusion asks of a scanner: its projected schema and its batches."""

    def __init__(
        self,
        scan: TopicScan,
        fragment: int,
        columns: list[str] | None,
        filter_: Any,
        columnar: bool = False,
    ):
        self._scan = scan
        self._fragment = fragment
        self._columns = columns
        self._filter = filter_
        self._columnar = columnar
        fields = scan.schema if columns is None else [scan.schema.field(c) for c in columns]
        self.projected_schema = pa.schema(fields)

    def to_batches(self) -> Iterator[pa.RecordBatch]:
        read = self._scan.columnar_batches if self._columnar else self._scan.batches
        return read(self._fragment, self._columns, self._filter)


class TopicFragment:
    """One partition of DataFusion's scan: every ``fragments``-th group, or (``columnar``) a
    columnar part."""

    def __init__(self, scan: TopicScan, index: int, columnar: bool = False) -> None:
        self._scan = scan
        self._index = index
        self._columnar = columnar

    def scanner(self, schema: pa.Schema | None = None, **options: Any) -> _Scanner:
        return _Scanner(
            self._scan, self._index, options.get("columns"), options.get("filter"), self._columnar
        )


class TopicDataset(ds.Dataset):
    """A :class:`TopicScan` as the pyarrow dataset DataFusion scans (the methods it calls)."""

    def __init__(self, scan: TopicScan, columnar: bool = True) -> None:  # noqa: D107
        self._topic_scan = scan
        self._columnar = columnar

    @property
    def schema(self) -> pa.Schema:  # type: ignore[override]
        return self._topic_scan.schema

    def scanner(self, *args: Any, **options: Any) -> _Scanner:  # type: ignore[override]
        return _Scanner(self._topic_scan, 0, options.get("columns"), options.get("filter"))

    def get_fragments(self, filter: Any = None) -> list[TopicFragment]:  # type: ignore[override]  # noqa: A002
        scan = self._topic_scan
        columnar = range(len(scan.columnar) if self._columnar else 0)
        return [TopicFragment(scan, i) for i in range(scan.fragments)] + [
            TopicFragment(scan, i, columnar=True) for i in columnar
        ]
