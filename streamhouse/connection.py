"""The Python API: one object for the log and the SQL engine, embedded by default.

>>> import streamhouse, tempfile
>>> sh = streamhouse.connect(tempfile.mkdtemp())
>>> sh.create_topic("events", partitions=4).partitions
4
>>> sh.produce("events", [{"user_id": 1, "event_type": "click"}]).records
1
>>> sh.sql("SELECT user_id, count(*) AS n FROM events GROUP BY user_id").to_arrow_table().to_pylist()
[{'user_id': 1, 'n': 1}]
>>> sh.close()
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from streamhouse.config import Settings
from streamhouse.errors import (
    DamagedRangeError,
    InvalidRecordError,
    LogError,
    RecordTooLargeError,
    StreamHouseError,
    UnknownPartitionError,
)
from streamhouse.iceberg.tableflow import TableflowReport
from streamhouse.log import Log, TopicInfo
from streamhouse.log.compaction import CompactionReport
from streamhouse.log.isolation import Isolation
from streamhouse.log.isolation import isolation_level as level_named
from streamhouse.log.partitioner import partitions_for_keys
from streamhouse.log.records import BATCH_OVERHEAD, Compression, build_batch
from streamhouse.log.retention import RetentionReport
from streamhouse.os_memory import keep_off_huge_pages
from streamhouse.result import Relation
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.sql.engine import Engine
from streamhouse.sql.source import read_records
from streamhouse.transaction import DEFAULT_TIMEOUT_MS, ProducerStamp, Transaction

log = logging.getLogger(__name__)

Value = bytes | str | Mapping[str, Any] | Sequence[Any] | int | float | bool | None
Header = tuple[str, bytes | str | None]

BATCH_TARGET_BYTES = 1 << 20
"""Records are grouped into batches of at most about this many bytes (and always within the
topic's ``max.message.bytes``)."""
RECORD_OVERHEAD = 40
"""Bytes a record may take in a batch beyond its key, value and headers (varints, attributes)."""


@dataclass(frozen=True, slots=True)
class Produced:
    """What a produce call stored: record count and, per partition, the first and last offset.

    A call's records of one partition have contiguous offsets, in the order they were given.
    """

    records: int
    offsets: dict[int, tuple[int, int]]


def connect(
    path: str | os.PathLike[str] | None = None,
    object_store: str | None = None,
    **settings: Any,
) -> StreamHouse:
    """Open (creating if needed) a StreamHouse data directory.

    ``path`` defaults to ``$STREAMHOUSE_DATA_DIR`` or ``./streamhouse-data``. ``object_store``
    is ``None`` for the local directory, or ``"s3://bucket/prefix"`` (pass ``s3_endpoint_url``
    for an S3-compatible server). Other keyword arguments are :class:`Settings` fields.
    """
    data_dir = path if path is not None else os.environ.get("STREAMHOUSE_DATA_DIR")
    resolved = Settings.load(
        data_dir=Path(data_dir) if data_dir is not None else None,
        object_store=object_store,
        **settings,
    )
    return StreamHouse(resolved)


class StreamHouse:
    """A connection to one StreamHouse log: topics, produce, fetch and SQL."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()  # $STREAMHOUSE_DATA_DIR or the default
        keep_off_huge_pages(self.settings.transparent_huge_pages)
        self.log = Log.open(self.settings)
        self.engine = Engine(self.log)
        self.engine.on_materialized_view = self._start_view
        self._queries: list[ContinuousQuery] = []

    # -- topics -------------------------------------------------------------------------------

    def create_topic(
        self, name: str, partitions: int = 1, config: Mapping[str, str] | None = None
    ) -> TopicInfo:
        return self.log.create_topic(name, partitions, config)

    def delete_topic(self, name: str) -> None:
        self.log.delete_topic(name)

    def alter_topic(self, name: str, config: Mapping[str, str | None]) -> TopicInfo:
        """Set topic configs (``None``: back to the default), e.g. ``{"retention.ms": "3600000"}``;
        ``InvalidConfigError`` for a config Kafka does not define or a bad value."""
        return self.log.alter_topic_config(name, config)

    def delete_records(self, topic: str, offsets: Mapping[int, int]) -> dict[int, int]:
        """Delete each partition's records before ``offsets[partition]`` (-1: all of them), as
        Kafka's DeleteRecords: returns the new log start offsets.

        >>> import tempfile
        >>> sh = connect(tempfile.mkdtemp())
        >>> _ = sh.create_topic("t")
        >>> _ = sh.produce("t", [{"n": i} for i in range(5)])
        >>> sh.delete_records("t", {0: 3})
        {0: 3}
        >>> sh.sql("SELECT n FROM t").to_arrow_table()["n"].to_pylist()
        [3, 4]
        >>> sh.close()
        """
        return self.log.delete_records(topic, offsets)

    def enforce_retention(self, topics: Iterable[str] | None = None) -> RetentionReport:
        """Run one retention pass now over ``topics`` (default all): ``retention.ms`` and
        ``retention.bytes`` move log start offsets; objects nothing names any more are deleted
        once unreferenced for ``object_delete_delay_s``."""
        return self.log.enforce_retention(topics)

    def compact(self, topics: Iterable[str] | None = None) -> CompactionReport:
        """Run one compaction pass now over ``topics`` (default all): small objects merged into
        larger per-partition ones, recompressed (``compaction_target_bytes``,
        ``compaction_compression``); the objects they replace are deleted by a later retention
        pass, once unreferenced for ``object_delete_delay_s``."""
        return self.log.compact(topics)

    def append_iceberg(self, streams: Iterable[str] | None = None) -> TableflowReport:
        """Append the new rows of the streams declared ``WITH ('iceberg' = 'true')`` (of
        ``streams``, default all) to their Iceberg tables now, exactly once (see
        :mod:`streamhouse.iceberg.tableflow`)."""
        from streamhouse.iceberg import append_streams

        return append_streams(self.log, streams, holder=self.log.compactor)

    def iceberg_catalog(self) -> dict[str, str]:
        """The properties ``pyiceberg.catalog.load_catalog(**props)`` opens this StreamHouse's
        Iceberg catalog with; stream ``s`` is its table ``streamhouse.s``."""
        from streamhouse.iceberg import catalog_properties

        return catalog_properties(self.settings)

    def topics(self) -> list[TopicInfo]:
        return self.log.list_topics()

    def topic(self, name: str) -> TopicInfo:
        return self.log.topic(name)

    # -- produce ------------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        records: Iterable[Value],
        *,
        key: bytes | str | Sequence[bytes | str | None] | None = None,
        partition: int | None = None,
        timestamp: int | datetime | Sequence[int | datetime] | None = None,
        headers: Mapping[str, bytes | str | None] | Sequence[Header] | None = None,
        compression: str | Compression = Compression.LZ4,
    ) -> Produced:
        """Append records; returns once they are durable.

        Values: ``bytes`` as they are, ``str`` as UTF-8, anything else as JSON. ``key`` is one
        key for every record or a sequence with one per record; keyed records go to the
        partition Kafka's default partitioner picks, unkeyed ones are spread across partitions
        in contiguous runs. ``timestamp`` (ms since the epoch or a datetime, one or one per
        record) defaults to now; ``headers`` go on every record.
        """
        payloads = self.batches(
            topic,
            records,
            key=key,
            partition=partition,
            timestamp=timestamp,
            headers=headers,
            compression=compression,
        )
        return self.append_batches(topic, payloads)

    def batches(
        self,
        topic: str,
        records: Iterable[Value],
        *,
        key: bytes | str | Sequence[bytes | str | None] | None = None,
        partition: int | None = None,
        timestamp: int | datetime | Sequence[int | datetime] | None = None,
        headers: Mapping[str, bytes | str | None] | Sequence[Header] | None = None,
        compression: str | Compression = Compression.LZ4,
        stamp: ProducerStamp | None = None,
    ) -> list[tuple[int, int, bytes]]:
        """What :meth:`produce` appends: (partition, records, batches) per partition, built
        and checked against the topic's size limit before anything is written; ``stamp``
        makes them a producer's (id, epoch, sequences, flags)."""
        info = self.log.topic(topic)
        values = _encoded(_encode_value, records, "value")
        n = len(values)
        if n == 0:
            return []
        keys = _per_record(key, n, "key")
        key_bytes = _encoded(_encode_key, keys, "key") if keys is not None else None
        stamps = _per_record(timestamp, n, "timestamp")
        ts = [_timestamp_ms(t) for t in stamps] if stamps is not None else None
        header_list = _encode_headers(headers)
        codec = _codec(compression)

        if partition is not None:
            if not 0 <= partition < info.partitions:
                raise UnknownPartitionError(topic, partition)
            assignment = np.full(n, partition, dtype=np.int64)
        elif key_bytes is not None:
            keyed = pa.array(key_bytes, pa.binary())
            unkeyed = keyed.is_null().to_numpy(zero_copy_only=False)
            assignment = partitions_for_keys(keyed.fill_null(b""), info.partitions)
            assignment[unkeyed] = _spread(int(unkeyed.sum()), info.partitions)
        else:
            assignment = _spread(n, info.partitions)

        limit = self.log.max_message_bytes(info)
        sizes = _record_sizes(values, key_bytes, header_list)
        target = max(1, min(limit - BATCH_OVERHEAD, BATCH_TARGET_BYTES))

        def encode(chunk: np.ndarray, part: int) -> list[tuple[np.ndarray, bytes]]:
            ids = stamp.batch_fields(topic, part) if stamp is not None else {}
            batch = build_batch(
                [values[i] for i in chunk],
                [key_bytes[i] for i in chunk] if key_bytes is not None else None,
                [ts[i] for i in chunk] if ts is not None else None,
                [header_list] * len(chunk) if header_list else None,
                compression=codec,
                **ids,
            )
            if len(batch) <= limit:
                if stamp is not None:
                    stamp.sent(topic, part, len(chunk))
                return [(chunk, batch)]
            if len(chunk) == 1:
                raise RecordTooLargeError(
                    f"record {int(chunk[0])} of the produce call is {len(batch)} bytes as a"
                    f" batch, over max.message.bytes={limit} of topic {topic!r}"
                )
            half = len(chunk) // 2
            return encode(chunk[:half], part) + encode(chunk[half:], part)

        # Every batch is built (and checked against the limit) before any is appended, so a
        # record that is too large fails the call with nothing written. A partition's batches
        # go in one append, so the call's records get contiguous offsets there.
        payloads: list[tuple[int, int, bytes]] = []
        for part in np.unique(assignment):
            rows = np.flatnonzero(assignment == part)
            chunks = _chunks(rows, sizes, target)
            batches = [b for chunk in chunks for _, b in encode(chunk, int(part))]
            payloads.append((int(part), len(rows), b"".join(batches)))
        return payloads

    def append_batches(self, topic: str, payloads: list[tuple[int, int, bytes]]) -> Produced:
        """Append what :meth:`batches` built, every partition's batches queued at once (an
        idle writer then puts them in one object, not the first partition's alone); returns
        once it is durable."""
        n = sum(count for _, count, _ in payloads)
        data: dict[int, list[bytes]] = {}
        counts: dict[int, int] = {}
        for part, count, batch in payloads:
            data.setdefault(part, []).append(batch)
            counts[part] = counts.get(part, 0) + count
        futures = self.log.append_together(topic, {p: b"".join(d) for p, d in data.items()})
        offsets: dict[int, tuple[int, int]] = {}
        for part, future in futures.items():
            base = future.result()
            offsets[part] = (base, base + counts[part] - 1)
        return Produced(n, offsets)

    def transaction(
        self, transactional_id: str | None = None, *, timeout_ms: int = DEFAULT_TIMEOUT_MS
    ) -> Transaction:
        """A transaction to produce to several topics atomically: a context manager that
        commits at the end of its block and aborts if the block raises (see
        :mod:`streamhouse.transaction`). ``transactional_id`` fences an earlier producer of
        the same id (default: a new id); a transaction left open longer than ``timeout_ms``
        is aborted by a running server's coordinator."""
        return Transaction(self, transactional_id, timeout_ms)

    # -- fetch --------------------------------------------------------------------------------

    def fetch(
        self,
        topic: str,
        partition: int | None = None,
        offset: int = 0,
        max_records: int | None = None,
        *,
        isolation_level: Isolation | str = Isolation.READ_COMMITTED,
    ) -> pa.Table:
        """Records of a topic (one partition, or all) from ``offset`` on, as an Arrow table.

        As a Kafka read_committed consumer, by default: records stop at each partition's last
        stable offset and aborted transactions' records are left out;
        ``isolation_level="read_uncommitted"`` reads every record.

        Columns: partition, offset, timestamp, key, value, headers. As in a Kafka fetch, a
        partition's records end before a damaged range of offsets, and a fetch from inside one
        raises its :class:`~streamhouse.errors.DamagedRangeError`: reading on from the last
        offset + 1 meets the error, after every record before it.
        """
        info = self.log.topic(topic)
        if partition is not None and not 0 <= partition < info.partitions:
            raise UnknownPartitionError(topic, partition)
        partitions = [partition] if partition is not None else list(range(info.partitions))
        damaged: list[DamagedRangeError] = []
        table = read_records(
            self.log,
            topic,
            partitions,
            dict.fromkeys(partitions, offset),
            damaged=damaged,
            isolation=level_named(isolation_level),
        )
        if damaged:
            table = _before_damage(table, damaged, offset)
        table = table.select(["partition", "offset", "timestamp", "key", "value", "headers"])
        return table.slice(0, max_records) if max_records is not None else table

    # -- SQL ----------------------------------------------------------------------------------

    def sql(self, query: str) -> Relation:
        """Run SQL: DDL at once; a query lazily, as a :class:`Relation` over the log as of now."""
        return self.engine.execute(query)

    def start(
        self,
        sql_or_path: str | os.PathLike[str],
        *,
        name: str | None = None,
        options: Mapping[str, Any] | None = None,
        on_results: Callable[[pa.Table], None] | None = None,
        parallelism: int | None = None,
    ) -> ContinuousQuery:
        """Start a continuous query from a ``.sql`` file or SQL text; it runs in the background.

        ``parallelism`` > 1 runs it as that many task processes (a stateless query or a
        GROUP BY; see :mod:`streamhouse.runtime.parallel`), as ``SET 'parallelism' = 'N'``.

        Its state (RocksDB) lives in ``<data_dir>/queries/<name>``: starting a query of the same
        name again resumes from its last checkpoint. ``options`` are query options
        (``allowed-lateness``, ``late-rows.topic``, ...; see :mod:`streamhouse.runtime.options`).
        """
        from streamhouse.runtime.launch import start_query

        path = Path(sql_or_path) if isinstance(sql_or_path, os.PathLike) else sql_or_path
        query = start_query(
            self.engine,
            path,
            name=name,
            state_root=self.settings.data_dir / "queries",
            options={
                **(options or {}),
                **({"parallelism": parallelism} if parallelism is not None else {}),
            },
            on_results=on_results,
        )
        self._queries.append(query)
        return query

    def _start_view(self, statement: Any) -> ContinuousQuery:
        from streamhouse.sql.parse import DIALECT

        return self.start(statement.sql(dialect=DIALECT), name=statement.this.name)

    def start_materialized_views(self) -> list[ContinuousQuery]:
        """Start (resume, from their checkpoints) every materialized view in the catalog."""
        from streamhouse.runtime.launch import is_materialized_view
        from streamhouse.sql.parse import parse

        started = []
        running = {q.name for q in self._queries}
        for entry in self.log.metadata.list_catalog():
            if entry.kind != "view" or entry.name in running:
                continue
            statement = parse(entry.sql)[0]
            if is_materialized_view(statement):
                started.append(self.start(entry.sql, name=entry.name))
        return started

    def register_function(
        self,
        name: str,
        function: Callable[..., pa.Array],
        input_types: Sequence[pa.DataType],
        return_type: pa.DataType,
    ) -> None:
        """Make ``name(...)`` callable from SQL (bounded and continuous), vectorized.

        ``function`` takes one Arrow array per argument and returns an Arrow array. The task
        processes of a query at parallelism > 1 import it by its module and name, so such a
        query calls only a module's top-level functions (a lambda is refused at its start):

        >>> import pyarrow as pa, pyarrow.compute as pc, streamhouse, tempfile
        >>> sh = streamhouse.connect(tempfile.mkdtemp())
        >>> sh.register_function("count_char", lambda s, c: pc.count_substring(s, c[0].as_py()),
        ...                      [pa.string(), pa.string()], pa.int64())
        >>> sh.create_topic("words").name
        'words'
        >>> _ = sh.produce("words", [{"w": "banana"}])
        >>> sh.sql("SELECT count_char(w, 'a') AS n FROM words").to_arrow_table().to_pylist()
        [{'n': 3}]
        >>> sh.close()
        """
        from streamhouse.sql.functions import register_function

        register_function(name, function, list(input_types), return_type)

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        for query in self._queries:
            query.stop()
        self._queries.clear()
        self.log.close()

    def __enter__(self) -> StreamHouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _before_damage(table: pa.Table, damaged: list[DamagedRangeError], offset: int) -> pa.Table:
    """The rows of ``table`` (read from ``offset``) before each partition's first damaged range;
    raises that range's error if the read began inside it."""
    first: dict[int, DamagedRangeError] = {}
    for exc in damaged:
        if exc.partition not in first or exc.base_offset < first[exc.partition].base_offset:
            first[exc.partition] = exc
    for exc in first.values():
        if exc.base_offset <= offset:
            raise exc
    limits = np.full(max(first) + 1, np.iinfo(np.int64).max, np.int64)
    for p, exc in first.items():
        limits[p] = exc.base_offset
    partitions = table["partition"].to_numpy()
    inside = partitions < len(limits)
    limit = np.where(inside, limits[np.where(inside, partitions, 0)], np.iinfo(np.int64).max)
    return table.filter(pa.array(table["offset"].to_numpy() < limit))


def _encoded(
    encode: Callable[[Any], bytes | None], items: Iterable[Any], what: str
) -> list[bytes | None]:
    """``encode`` of each item; InvalidRecordError naming the first that cannot be stored."""
    out: list[bytes | None] = []
    try:
        for item in items:
            out.append(encode(item))
    except UnicodeEncodeError as exc:
        reason = f"is not valid Unicode text ({exc.reason})"
    except RecursionError:
        reason = "is nested too deeply to encode as JSON"
    except ValueError as exc:  # NaN or Infinity, a circular reference, an int too long to print
        reason = f"cannot be encoded as JSON: {exc}"
    else:
        return out
    raise InvalidRecordError(f"the {what} of record {len(out)} {reason}")


def _encode_value(value: Value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return json.dumps(value, separators=(",", ":"), default=_json_default, allow_nan=False).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _encode_key(key: bytes | str | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    return str(key).encode()


def _per_record(value: Any, n: int, what: str) -> list[Any] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple | np.ndarray | pa.Array):
        items = list(value)
        if len(items) != n:
            raise StreamHouseError(f"{len(items)} {what}s given for {n} records")
        return items
    return [value] * n


def _timestamp_ms(value: int | datetime | None) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(milliseconds=1)  # exact, unlike float seconds
    if value is None:
        return int(datetime.now(UTC).timestamp() * 1000)
    return int(value)


def _encode_headers(
    headers: Mapping[str, bytes | str | None] | Sequence[Header] | None,
) -> list[tuple[str, bytes | None]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in items]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_round_robin_start = cycle(range(1 << 30))


def _spread(n: int, partitions: int) -> np.ndarray:
    """Spread ``n`` unkeyed records over partitions in contiguous runs (sticky, like Kafka)."""
    start = next(_round_robin_start)
    run = max(1, -(-n // partitions))
    return (np.arange(n, dtype=np.int64) // run + start) % partitions


def _record_sizes(
    values: list[bytes | None],
    keys: list[bytes | None] | None,
    headers: list[tuple[str, bytes | None]],
) -> np.ndarray:
    """An upper bound of each record's encoded size in a batch (varints at their widest)."""
    n = len(values)
    sizes = np.fromiter((len(v) if v is not None else 0 for v in values), np.int64, count=n)
    if keys is not None:
        sizes += np.fromiter((len(k) if k is not None else 0 for k in keys), np.int64, count=n)
    header_bytes = sum(len(k.encode()) + len(v or b"") + 10 for k, v in headers)
    return sizes + (RECORD_OVERHEAD + header_bytes)


def _chunks(rows: np.ndarray, sizes: np.ndarray, target: int) -> Iterable[np.ndarray]:
    """Split ``rows`` greedily into runs of at most ``target`` bytes (a larger record alone)."""
    ends = np.cumsum(sizes[rows])
    start = 0
    while start < len(rows):
        before = int(ends[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(ends, before + target, side="right")))
        yield rows[start:end]
        start = end


def _codec(compression: str | Compression) -> Compression:
    if isinstance(compression, Compression):
        return compression
    try:
        return Compression[str(compression).upper()]
    except KeyError:
        names = ", ".join(c.name.lower() for c in Compression)
        raise LogError(f"unknown compression {compression!r}: expected one of {names}") from None
