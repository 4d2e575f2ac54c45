"""Where continuous query results go: Arrow to JSON records in a topic, exactly once.

Rows are encoded as JSON objects by DuckDB (``to_json``, vectorized in C++); timestamps are
written as ``YYYY-MM-DD HH:MM:SS[.fff]``, which StreamHouse, Flink's JSON format and pyarrow all
read. Records are keyed by the query's group keys (one key: its text; several: a JSON object) and
go to the partition Kafka's default partitioner picks for the key.

Exactly once: the query remembers, per sink partition, the high watermark its last committed
micro-batch left. A micro-batch replayed after a crash produces the same rows in the same
order, so the records already in the partition past that mark are exactly the first ones of the
replay, and are skipped.
"""

from __future__ import annotations

import logging
import threading

import duckdb
import numpy as np
import pyarrow as pa

from streamhouse.log import Log
from streamhouse.log.partitioner import partition_for_key
from streamhouse.log.records import Compression, build_batch

log = logging.getLogger(__name__)

_duckdb: duckdb.DuckDBPyConnection | None = None
_duckdb_lock = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one shared in-memory DuckDB (opening a database takes ~40 ms; a cursor
    ~0.1 ms, and each thread may use its own)."""
    global _duckdb
    with _duckdb_lock:
        if _duckdb is None:
            _duckdb = duckdb.connect()
        return _duckdb.cursor()


def key_strings(table: pa.Table, key_columns: list[str]) -> list[bytes | None]:
    """The record key of each row, as :func:`encode_rows` makes it."""
    return encode_rows(table, key_columns)[1]


def encode_rows(table: pa.Table, key_columns: list[str]) -> tuple[list[bytes], list[bytes | None]]:
    """(JSON value, key) per row of ``table``, in order."""
    if table.num_rows == 0:
        return [], []
    con = _cursor()
    try:
        con.register("rows_out", table)
        keys = [c for c in key_columns if c in table.column_names]
        quoted = [f'"{c}"' for c in keys]
        if not keys:
            key_sql = "NULL"
        elif len(keys) == 1:
            key_sql = f"CAST({quoted[0]} AS VARCHAR)"
        else:
            key_sql = (
                "CAST(to_json(struct_pack("
                + ", ".join(f"{q} := {q}" for q in quoted)
                + ")) AS VARCHAR)"
            )
        result = con.sql(
            f"SELECT CAST(to_json(r) AS VARCHAR) AS v, {key_sql} AS k FROM rows_out AS r"
        ).to_arrow_table()
    finally:
        con.close()
    values = [v.encode() for v in result["v"].to_pylist()]
    key_list = [k.encode() if k is not None else None for k in result["k"].to_pylist()]
    return values, key_list


class TopicSink:
    """Appends a query's rows to a topic, skipping rows a crashed attempt already wrote."""

    def __init__(self, log_: Log, topic: str, key_columns: list[str]) -> None:
        self.log = log_
        self.topic = topic
        self.key_columns = key_columns

    def high_watermarks(self) -> dict[int, int]:
        offsets = self.log.metadata.partition_offsets(self.topic)
        return {p: o.high_watermark for p, o in offsets.items()}

    def write(
        self, table: pa.Table, committed: dict[int, int], tombstones: list[bytes] | None = None
    ) -> dict[int, int]:
        """Append ``table``'s rows, then a tombstone (null value) per key in ``tombstones``;
        returns each partition's high watermark afterwards.

        ``committed`` is the high watermark per partition as of the last committed micro-batch.
        """
        values: list[bytes | None]
        explicit = None
        if "__key" in table.column_names:  # rows that carry their own record key
            explicit = table["__key"].to_pylist()
            table = table.drop_columns(["__key"])
        values, keys = encode_rows(table, self.key_columns)  # type: ignore[assignment]
        if explicit is not None:
            keys = explicit
        for key in tombstones or []:
            values.append(None)
            keys.append(key)
        partitions = self.log.topic(self.topic).partitions
        current = self.high_watermarks()
        if not values:
            return current
        assignment = np.array(
            [
                partition_for_key(k, partitions) if k is not None else i % partitions
                for i, k in enumerate(keys)
            ],
            dtype=np.int64,
        )
        limit = max(1024, self.log.max_message_bytes(self.log.topic(self.topic)) // 2)
        futures = []
        for partition in range(partitions):
            rows = np.flatnonzero(assignment == partition)
            if len(rows) == 0:
                continue
            already = current.get(partition, 0) - committed.get(
                partition, current.get(partition, 0)
            )
            if already > 0:
                log.info(
                    "sink %s-%d: %d record(s) of a replayed batch were written before",
                    self.topic,
                    partition,
                    already,
                )
                rows = rows[already:]
            if len(rows) == 0:
                continue
            batches = []
            for chunk in _chunks(rows, values, keys, limit):
                batches.append(
                    build_batch(
                        [values[i] for i in chunk],
                        [keys[i] for i in chunk],
                        compression=Compression.LZ4,
                    )
                )
            futures.append(self.log.append(self.topic, partition, b"".join(batches)))
        for future in futures:
            future.result()
        return self.high_watermarks()


def _chunks(
    rows: np.ndarray, values: list[bytes | None], keys: list[bytes | None], limit: int
) -> list[np.ndarray]:
    """Split ``rows`` into runs whose records stay well below ``limit`` bytes per batch."""
    sizes = np.fromiter(
        (len(values[i] or b"") + len(keys[i] or b"") + 24 for i in rows), np.int64, len(rows)
    )
    groups = np.cumsum(sizes) // limit
    cuts = np.flatnonzero(np.diff(groups)) + 1
    return np.split(rows, cuts)
