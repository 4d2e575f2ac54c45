"""Where continuous query results go: Arrow to JSON records in a topic, exactly once.

Rows are encoded as JSON objects with DuckDB's ``to_json`` text: in C (:mod:`.json_rows`) for
columns of numbers, strings, booleans, dates and timestamps, by DuckDB for any other; timestamps
are written as ``YYYY-MM-DD HH:MM:SS[.fff]``, which StreamHouse, Flink's JSON format and pyarrow
all read. Records are keyed by the query's group keys (one key: its text; several: a JSON object) and
go to the partition Kafka's default partitioner picks for the key. A NULL key of one column is
written as the object (``{"k":null}``), since a key-compacted topic takes no record without one.

A sink with a fence (a query of ``serve`` agents, held by a lease) writes only while the lease
is held: each append is committed in a transaction that checks it (``FencedError`` otherwise).

Exactly once: a continuous query writes its sinks as a Kafka transaction that commits with its
checkpoint (:mod:`.two_phase`); a replayed micro-batch writes its rows again, in a new
transaction, and the attempt a crash cut short was aborted.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import UnknownPartitionError
from streamhouse.log import Log
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.partitioner import partitions_for_keys
from streamhouse.log.records import Compression
from streamhouse.log.records.build import batch_parts
from streamhouse.runtime.json_rows import Scratch, json_objects

if TYPE_CHECKING:
    import duckdb

    from streamhouse.runtime.two_phase import TwoPhaseCommit

log = logging.getLogger(__name__)

_duckdb: duckdb.DuckDBPyConnection | None = None
_duckdb_lock = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one shared in-memory DuckDB (opening a database takes ~40 ms; a cursor
    ~0.1 ms, and each thread may use its own)."""
    global _duckdb
    with _duckdb_lock:
        if _duckdb is None:
            import duckdb  # at first use: rows of plain columns never need it

            from streamhouse.sql.json_values import duckdb_config

            _duckdb = duckdb.connect(config=duckdb_config())
        return _duckdb.cursor()


def key_strings(table: pa.Table, key_columns: list[str]) -> list[bytes | None]:
    """The record key of each row, as :func:`encode_columns` makes it."""
    keys = _record_keys(table, key_columns)
    return keys.to_pylist() if keys is not None else [None] * table.num_rows


def row_keys(table: pa.Table, columns: list[str]) -> pa.Array:
    """The identity of each row on a changelog edge between operators: a JSON object of
    ``columns`` (``{}`` for none), as binary, built column-wise by Arrow. Unlike a record key of
    one column it tells a NULL key from the text 'null', so an operator's upserts and
    retractions of a NULL key meet. (Strings are quoted with their quotes and backslashes
    escaped, other control characters kept as they are: one text per row, all it must be.)"""
    n = table.num_rows
    if not columns or n == 0:
        return pa.array([b"{}"] * n, pa.binary())
    parts: list[pa.Array | str] = []
    for i, name in enumerate(columns):
        column = table[name]
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = json_strings(column)
        else:
            try:
                text = pc.fill_null(pc.cast(column, pa.string()), "null")
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                return _row_keys_by_duckdb(table, columns)
        parts += [("{" if i == 0 else ",") + json.dumps(name) + ":", text]
    joined = pc.binary_join_element_wise(*parts, "}", "")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return pc.cast(joined, pa.binary())


def json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Each value as a quoted string, its quotes and backslashes escaped (``null`` for NULL)."""
    text = pc.cast(values, pa.string())
    text = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
    return pc.fill_null(pc.binary_join_element_wise('"', text, '"', ""), "null")


def _row_keys_by_duckdb(table: pa.Table, columns: list[str]) -> pa.Array:
    """:func:`row_keys` for column types Arrow cannot cast to text: DuckDB's ``to_json``."""
    con = _cursor()
    try:
        con.register("rows_out", table.select(columns))
        quoted = ['"' + c.replace('"', '""') + '"' for c in columns]
        packed = ", ".join(f"{q} := {q}" for q in quoted)
        result = con.sql(
            f"SELECT CAST(to_json(struct_pack({packed})) AS VARCHAR) AS k FROM rows_out"
        ).to_arrow_table()
    finally:
        con.close()
    return result["k"].combine_chunks().cast(pa.binary())


def encode_rows(table: pa.Table, key_columns: list[str]) -> tuple[list[bytes], list[bytes | None]]:
    """(JSON value, key) per row of ``table``, in order, as Python bytes."""
    values, keys = encode_columns(table, key_columns)
    key_list = keys.to_pylist() if keys is not None else [None] * table.num_rows
    return values.to_pylist(), key_list


def encode_columns(
    table: pa.Table, key_columns: list[str], scratch: Scratch | None = None
) -> tuple[pa.Array, pa.Array | None]:
    """(JSON values, keys or None) of ``table``'s rows as Arrow binary arrays, in order (the
    values in ``scratch``'s memory if given and written in C: valid until its next use)."""
    if table.num_rows == 0:
        return pa.array([], pa.binary()), None
    values = json_objects(table, scratch)
    if values is None:
        return _by_duckdb(table, key_columns, with_values=True)
    return values, _record_keys(table, key_columns)


def _record_keys(table: pa.Table, key_columns: list[str]) -> pa.Array | None:
    """The record keys of ``table``'s rows (None: no key columns), as binary."""
    if table.num_rows == 0 or not any(c in table.column_names for c in key_columns):
        return None
    return _by_duckdb(table, key_columns, with_values=False)[1]


def _by_duckdb(
    table: pa.Table, key_columns: list[str], *, with_values: bool
) -> tuple[pa.Array, pa.Array | None]:
    """:func:`encode_columns` by DuckDB's ``to_json`` (the values an empty array unless
    ``with_values``)."""
    con = _cursor()
    try:
        con.register("rows_out", table)
        keys = [c for c in key_columns if c in table.column_names]
        quoted = [f'"{c}"' for c in keys]
        if not keys:
            key_sql = "NULL"
        elif len(keys) == 1:
            # a NULL key (GROUP BY a nullable column) as the object of several keys: a
            # compacted topic takes no record without a key, and NULL is not the text 'null'
            key_sql = (
                f"COALESCE(CAST({quoted[0]} AS VARCHAR),"
                f" CAST(to_json(struct_pack({quoted[0]} := {quoted[0]})) AS VARCHAR))"
            )
        else:
            key_sql = (
                "CAST(to_json(struct_pack("
                + ", ".join(f"{q} := {q}" for q in quoted)
                + ")) AS VARCHAR)"
            )
        # The row alias must not be a column's name: DuckDB reads a column before a table
        # alias, and to_json(r) of a column named r wrote that column alone as the record.
        row = "__row"
        while row in table.column_names:
            row += "_"
        value_sql = f'CAST(to_json("{row}") AS VARCHAR)' if with_values else "NULL"
        result = con.sql(
            f'SELECT {value_sql} AS v, {key_sql} AS k FROM rows_out AS "{row}"'
        ).to_arrow_table()
    finally:
        con.close()
    values = (
        result["v"].combine_chunks().cast(pa.binary()) if with_values else pa.array([], pa.binary())
    )
    key_array = result["k"].combine_chunks().cast(pa.binary()) if keys else None
    return values, key_array


class TopicSink:
    """Appends a query's rows to a topic (in its sink transaction, see :mod:`.two_phase`)."""

    every_batch = False
    """Whether it is written every micro-batch, also without rows (see :mod:`.stages`)."""

    def __init__(
        self,
        log_: Log,
        topic: str,
        key_columns: list[str],
        fence: Lease | None = None,
        partition: int | None = None,
    ) -> None:
        self.log = log_
        self.partition = partition  # all rows to this partition (a task of a parallel query)
        self.topic = topic
        self.key_columns = key_columns
        self.fence = fence
        self._scratch = Scratch()  # the JSON text of each write, framed, then dropped

    def write(
        self,
        table: pa.Table,
        tombstones: list[bytes] | None = None,
        transaction: TwoPhaseCommit | None = None,
    ) -> None:
        """Append ``table``'s rows, then a tombstone (null value) per key in ``tombstones``;
        in ``transaction`` if given (its partitions joined first, its batches stamped).

        Rows are encoded, partitioned and batched as Arrow arrays, without a Python object per
        record (a stateless query's output is as large as its input).
        """
        explicit = None
        if "__key" in table.column_names:  # rows that carry their own record key
            explicit = table["__key"].combine_chunks().cast(pa.binary())
            table = table.drop_columns(["__key"])
        values, keys = encode_columns(table, self.key_columns, self._scratch)
        if explicit is not None:
            keys = explicit
        if tombstones:
            values = pa.concat_arrays([values, pa.nulls(len(tombstones), pa.binary())])
            base = (
                keys if keys is not None else pa.nulls(len(values) - len(tombstones), pa.binary())
            )
            keys = pa.concat_arrays([base, pa.array(tombstones, pa.binary())])
        n = len(values)
        if n == 0:
            return
        partitions = self.log.topic(self.topic).partitions
        if self.partition is not None:
            assignment = np.full(n, self.partition, dtype=np.int64)
        else:
            assignment = _partitions(keys, n, partitions)
        limit = max(1024, self.log.max_message_bytes(self.log.topic(self.topic)) // 2)
        sizes = pc.fill_null(pc.binary_length(values), 0).to_numpy(zero_copy_only=False)
        if keys is not None:
            sizes = sizes + pc.fill_null(pc.binary_length(keys), 0).to_numpy(zero_copy_only=False)
        written = [int(p) for p in np.unique(assignment)]
        if transaction is not None:
            missing = transaction.join((self.topic, p) for p in written)
            if missing:
                raise UnknownPartitionError(*missing[0])
        data: dict[int, bytes] = {}
        for partition in written:
            rows = np.flatnonzero(assignment == partition)
            cuts = np.flatnonzero(np.diff(np.cumsum(sizes[rows] + 24) // limit)) + 1
            parts: list[bytes | memoryview] = []  # every batch's, joined once
            for chunk in np.split(rows, cuts):
                stamp: dict[str, int] = {}
                if transaction is not None:
                    stamp = transaction.stamp.batch_fields(self.topic, partition)
                    transaction.stamp.sent(self.topic, partition, len(chunk))
                chunk_values, chunk_keys = _rows(values, keys, chunk)
                parts += batch_parts(chunk_values, chunk_keys, compression=Compression.LZ4, **stamp)
            data[partition] = b"".join(parts)
        # queued together: one flush for every partition, not the first alone then the rest
        keyed = keys is not None and keys.null_count == 0  # no record to refuse for its key
        appended = self.log.append_together(self.topic, data, fence=self.fence, keyed=keyed)
        for future in appended.values():
            future.result()


def _rows(
    values: pa.Array, keys: pa.Array | None, rows: np.ndarray
) -> tuple[pa.Array, pa.Array | None]:
    """The values and keys of ``rows`` (ascending indices): slices of them, not copies, when
    the rows are consecutive (one partition's, or a keyless partition's block)."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        start, length = int(rows[0]), len(rows)
        return values.slice(start, length), keys.slice(start, length) if keys is not None else None
    index = pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])
    return values.take(index), keys.take(index) if keys is not None else None


def _partitions(keys: pa.Array | None, n: int, partitions: int) -> np.ndarray:
    """Each record's partition: Kafka's default partitioner for keyed records (computed once
    per distinct key); keyless ones spread evenly in consecutive blocks, one per partition (as
    Kafka's sticky partitioner sends a batch to one partition: each partition's records are
    then a slice of the micro-batch's, not a copy)."""
    spread = np.arange(n, dtype=np.int64) * partitions // n
    if keys is None or keys.null_count == n or partitions == 1:
        return spread if partitions > 1 else np.zeros(n, dtype=np.int64)
    encoded = pc.dictionary_encode(keys)
    per_key = partitions_for_keys(encoded.dictionary, partitions)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    valid = pc.is_valid(keys).to_numpy(zero_copy_only=False)
    return np.where(valid, per_key[np.nan_to_num(indices, nan=0).astype(np.int64)], spread)
