"""Tableflow: the committed rows of a stream appended to its Iceberg table, exactly once.

A stream declared ``WITH ('iceberg' = 'true')`` has the Iceberg table ``streamhouse.<name>``
(:mod:`streamhouse.iceberg.catalog`): its declared physical columns plus ``_partition``,
``_offset`` and ``_timestamp``, one row per record whose value fits the declared schema. A
pass (:func:`append_streams`, run by ``streamhouse compact`` and every
``iceberg_freshness_s`` by ``serve``), for every such stream:

1. takes the lease ``iceberg/<stream>`` (one appender per stream over every agent sharing
   the metadata store; a stream whose lease another holds is passed over);
2. reads the offsets the table covers from its newest snapshot that records them: the
   snapshot summary property :data:`OFFSETS_PROPERTY`, a JSON object of the last offset
   appended per partition;
3. appends the records after them up to the high watermarks (at most
   ``iceberg_commit_records`` records per snapshot), each snapshot's summary naming the
   offsets it covers. The Parquet files and the offsets are committed together by the one
   catalog update that makes the snapshot current (pyiceberg's SQL catalog swaps the table's
   metadata location only if it is still the one the append started from), so an appender
   killed at any point leaves either the old snapshot (its files unreferenced, the next pass
   appends the same records again) or the new one (the next pass starts after it): no record
   is appended twice and none is skipped.

Records below the log start offset (retention, DeleteRecords) before they were appended are
gone and are skipped (logged). A record whose value does not fit the schema goes to the dead
letter topic ``<stream>.dlq`` (at least once, as a continuous query's), not to the table.
A change of the declared columns adds the new ones to the table (Iceberg schema evolution).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.iceberg.page_index import write_page_index
from streamhouse.log.compaction import compactor_id
from streamhouse.log.isolation import stable_ends
from streamhouse.log.metadata.leases import Lease
from streamhouse.sql.ddl import StreamDef, stream_definition
from streamhouse.sql.dead_letters import write_dead_letters
from streamhouse.sql.parse import parse
from streamhouse.sql.source import METADATA_FIELDS, read_source

if TYPE_CHECKING:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.table import Table
    from pyiceberg.table.snapshots import Snapshot

    from streamhouse.log import Log

__all__ = [
    "ICEBERG_OPTION",
    "OFFSETS_PROPERTY",
    "TableflowReport",
    "append_streams",
    "covered_offsets",
    "iceberg_enabled",
    "iceberg_streams",
    "table_identifier",
]

log = logging.getLogger(__name__)

ICEBERG_OPTION = "iceberg"
OFFSETS_PROPERTY = "streamhouse.last-offsets"
"""Snapshot summary property: ``{"<partition>": <last offset appended>, ...}`` (JSON)."""
TOPIC_PROPERTY = "streamhouse.topic"
"""Snapshot summary property: the topic the offsets are of."""
REJECTED_PROPERTY = "streamhouse.rejected-records"
"""Snapshot summary property: how many records of the offsets covered did not fit the schema
(left out of the table, sent to dead letters), over every snapshot so far."""
ROW_FIELDS = [f for f in METADATA_FIELDS if f.name in ("_partition", "_offset", "_timestamp")]
"""The metadata columns a table holds beside the declared ones."""
TABLE_PROPERTIES = {
    "write.parquet.row-group-limit": str(1 << 17),
    "commit.manifest-merge.enabled": "true",
}
"""Row groups of 128 Ki rows: readers skip row groups by their statistics (``_offset``).
Appends merge small manifests (past 100 of them), so planning a read does not grow with
every snapshot a freshness interval adds."""
_BOOLEANS = {"true": True, "false": False}


@dataclass(slots=True)
class TableflowReport:
    """What one pass appended: rows and snapshots per stream, rows sent to dead letters,
    streams another appender holds, and streams that failed (their error)."""

    rows: dict[str, int] = field(default_factory=dict)
    snapshots: int = 0
    rejected: int = 0
    skipped_records: int = 0  # below the log start offset before they were appended
    expired_snapshots: int = 0
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def iceberg_enabled(definition: StreamDef) -> bool:
    """Whether ``definition`` has ``'iceberg' = 'true'``; ``StreamHouseError`` for a value
    other than true or false.

    >>> from streamhouse.sql.parse import parse_one
    >>> iceberg_enabled(stream_definition(parse_one("CREATE STREAM s (a INT) WITH (iceberg='true')")))
    True
    """
    value = definition.options.get(ICEBERG_OPTION, "false").lower()
    if value not in _BOOLEANS:
        raise StreamHouseError(f"option 'iceberg' is 'true' or 'false', not {value!r}")
    return _BOOLEANS[value]


def table_identifier(stream: str) -> str:
    from streamhouse.iceberg.catalog import NAMESPACE

    return f"{NAMESPACE}.{stream}"


def iceberg_streams(log_: Log, names: Iterable[str] | None = None) -> list[StreamDef]:
    """The declared streams with an Iceberg table (of ``names``, or all)."""
    wanted = None if names is None else set(names)
    streams = []
    for entry in log_.metadata.list_catalog():
        if entry.kind not in ("stream", "table") or (
            wanted is not None and entry.name not in wanted
        ):
            continue
        definition = stream_definition(parse(entry.sql)[0])
        if iceberg_enabled(definition):
            streams.append(definition)
    return streams


def table_schema(definition: StreamDef) -> pa.Schema:
    """The Arrow schema of a stream's table: its physical columns, every one optional (a
    timestamp in ns stored in us, Iceberg's finest unit), then :data:`ROW_FIELDS` (those a
    declared column of the same name does not hide)."""
    fields = [_storable(f).with_nullable(True) for f in definition.schema()]
    names = {f.name for f in fields}
    return pa.schema(fields + [f for f in ROW_FIELDS if f.name not in names])


def _storable(f: pa.Field) -> pa.Field:
    if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
        return f.with_type(pa.timestamp("us", f.type.tz))
    return f


def recording_snapshot(table: Table) -> Snapshot | None:
    """The newest snapshot (walking back from the current one, past snapshots other writers
    made) whose summary records the offsets appended."""
    return next((s for s in _ancestry(table) if _records_offsets(s)), None)


def _ancestry(table: Table) -> Iterator[Snapshot]:
    """The current snapshot, then its parent, and so on (as far as they are kept)."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = None if parent is None else table.snapshot_by_id(parent)


def _records_offsets(snapshot: Snapshot) -> bool:
    # pyiceberg's Summary answers ``in`` with True for any key: ask for the value
    return snapshot.summary is not None and snapshot.summary.get(OFFSETS_PROPERTY) is not None


def rejected_records(snapshot: Snapshot | None) -> int:
    """How many records of the offsets ``snapshot`` covers the table left out (0 if it
    does not say)."""
    value = snapshot.summary.get(REJECTED_PROPERTY) if snapshot and snapshot.summary else None
    return 0 if value is None else int(value)


def covered_offsets(table: Table) -> dict[int, int]:
    """The last offset appended per partition (see :func:`recording_snapshot`)."""
    snapshot = recording_snapshot(table)
    if snapshot is None or snapshot.summary is None:
        return {}
    return {int(p): int(o) for p, o in json.loads(snapshot.summary[OFFSETS_PROPERTY]).items()}


def expire_snapshots(table: Table, retention_s: float, now_ms: int | None = None) -> int:
    """Expires ``table``'s snapshots made more than ``retention_s`` ago, and returns how many:
    not the current snapshot, nor those back from it to the one recording the offsets
    appended (:func:`recording_snapshot`: the next pass starts after them, and a bounded read
    walks back to it). Appends never drop a data file, so no file of the current snapshot
    goes; the expired snapshots' manifest lists stay in the warehouse (a reader that planned
    from an older metadata file still finds them)."""
    kept = set()
    for snapshot in _ancestry(table):
        kept.add(snapshot.snapshot_id)
        if _records_offsets(snapshot):
            break
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    before = now_ms - int(retention_s * 1000)
    expired = [
        s.snapshot_id
        for s in table.metadata.snapshots
        if s.timestamp_ms < before and s.snapshot_id not in kept
    ]
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
        log.info("Iceberg table %s: %d snapshot(s) expired", table.name(), len(expired))
    return len(expired)


def append_streams(
    log_: Log,
    streams: Iterable[str] | None = None,
    *,
    catalog: SqlCatalog | None = None,
    holder: str | None = None,
) -> TableflowReport:
    """One pass over the Iceberg streams ``streams`` (default: every one; see the module)."""
    started = time.monotonic()
    report = TableflowReport()
    definitions = iceberg_streams(log_, streams)
    if definitions and catalog is None:
        from streamhouse.iceberg.catalog import open_catalog

        catalog = open_catalog(log_.settings)
    if definitions:
        write_page_index()
    holder = holder or compactor_id()
    ttl_ms = max(1, int(log_.settings.compaction_lease_s * 1000))
    for definition in definitions:
        lease = _StreamLease(log_, f"iceberg/{definition.name}", holder, ttl_ms)
        if not lease.keep():
            report.busy.append(definition.name)
            continue
        try:
            assert catalog is not None
            _append_stream(log_, catalog, definition, lease, report)
            table = catalog.load_table(table_identifier(definition.name))
            report.expired_snapshots += expire_snapshots(
                table, log_.settings.iceberg_snapshot_retention_s
            )
        except Exception as exc:  # that stream alone fails this pass; the next one retries
            log.exception("Iceberg append of stream %s failed", definition.name)
            report.failed[definition.name] = str(exc)
        finally:
            lease.release()
    report.seconds = time.monotonic() - started
    return report


class _StreamLease:
    """The lease on appending to one stream's table: taken, renewed between snapshots (or
    taken again, if it lapsed and nobody else took it: a slow snapshot loses no work), and
    released. Exactly-once never rests on it (the catalog's conditional commit does); it
    keeps two appenders from writing the same files."""

    def __init__(self, log_: Log, name: str, holder: str, ttl_ms: int) -> None:
        self._log, self._name, self._holder, self._ttl_ms = log_, name, holder, ttl_ms
        self._lease: Lease | None = None

    def keep(self) -> bool:
        metadata = self._log.metadata
        if self._lease is not None and metadata.renew_lease(self._lease, self._ttl_ms):
            return True
        self._lease = metadata.acquire_lease(self._name, self._holder, self._ttl_ms)
        return self._lease is not None

    def release(self) -> None:
        if self._lease is not None:
            self._log.metadata.release_lease(self._lease)


def _table(catalog: SqlCatalog, definition: StreamDef) -> Table:
    """The stream's table, created if missing, with any declared column it lacks added."""
    schema = table_schema(definition)
    table = catalog.create_table_if_not_exists(
        table_identifier(definition.name), schema=schema, properties=TABLE_PROPERTIES
    )
    have = set(table.schema().column_names)
    if any(name not in have for name in schema.names):
        with table.update_schema() as update:
            update.union_by_name(schema)
        table = catalog.load_table(table_identifier(definition.name))
    return table


def _append_stream(
    log_: Log,
    catalog: SqlCatalog,
    definition: StreamDef,
    lease: _StreamLease,
    report: TableflowReport,
) -> None:
    table = _table(catalog, definition)
    topic = definition.topic
    snapshot = table.current_snapshot()
    held = snapshot.summary.get(TOPIC_PROPERTY) if snapshot and snapshot.summary else None
    if held not in (None, topic):
        raise StreamHouseError(
            f"stream {definition.name} reads topic {topic!r} but its Iceberg table holds the"
            f" records of {held!r}: drop the table {table_identifier(definition.name)} to start"
            " it again from this topic"
        )
    covered = covered_offsets(table)
    recorded = recording_snapshot(table)
    rejected = rejected_records(recorded)
    budget = max(1, log_.settings.iceberg_commit_records)
    schema = table_schema(definition)
    report.rows.setdefault(definition.name, 0)
    while True:
        offsets = log_.metadata.inner.partition_offsets(topic)
        starts: dict[int, int] = {}
        for p, bounds in offsets.items():
            start = covered.get(p, -1) + 1
            if start < bounds.log_start_offset:
                report.skipped_records += bounds.log_start_offset - start
                log.warning(
                    "stream %s: records %d-%d of %s-%d were deleted before they reached the"
                    " Iceberg table",
                    definition.name,
                    start,
                    bounds.log_start_offset - 1,
                    topic,
                    p,
                )
                start = bounds.log_start_offset
            starts[p] = start
        # committed records only, up to the last stable offsets: what an open transaction
        # holds back is appended once it ends (and an aborted one's records never are)
        stability = log_.metadata.transactions.topic_stability(
            topic, min(starts.values(), default=0)
        )
        stable = stable_ends(stability, {p: b.high_watermark for p, b in offsets.items()})
        ends = _chunk_ends(log_, topic, starts, stable, budget)
        parts = [p for p in sorted(starts) if ends[p] > starts[p]]
        if not parts:
            return
        source = read_source(
            log_,
            topic,
            definition.schema(),
            None,
            parts,
            {p: starts[p] for p in parts},
            {p: ends[p] for p in parts},
        )
        if source.rejected:
            write_dead_letters(log_, f"{definition.name}.dlq", source.rejected)
            report.rejected += len(source.rejected)
            rejected += len(source.rejected)
        rows = source.table.select(schema.names).cast(schema)
        covered = covered | {p: ends[p] - 1 for p in parts}
        summary = {
            OFFSETS_PROPERTY: json.dumps({str(p): o for p, o in sorted(covered.items())}),
            TOPIC_PROPERTY: topic,
            REJECTED_PROPERTY: str(rejected),
        }
        table.append(rows, snapshot_properties=summary)
        report.rows[definition.name] += rows.num_rows
        report.snapshots += 1
        log.info(
            "stream %s: %d row(s) appended to Iceberg table %s (offsets %s)",
            definition.name,
            rows.num_rows,
            table_identifier(definition.name),
            summary[OFFSETS_PROPERTY],
        )
        if not lease.keep():
            log.warning("stream %s: Iceberg lease lost; another appender goes on", definition.name)
            return


def _chunk_ends(
    log_: Log, topic: str, starts: dict[int, int], highs: dict[int, int], budget: int
) -> dict[int, int]:
    """Per partition, the end (exclusive) of the next snapshot's records: whole index rows
    from ``starts`` up to the high watermark, about ``budget`` records over all partitions."""
    share = max(1, budget // max(1, len(starts)))
    ends = {}
    for p, start in starts.items():
        end, count = start, 0
        if start < highs[p]:
            for row in log_.metadata.segments(topic, p, from_offset=start, to_offset=highs[p]):
                if count >= share:
                    break
                end = min(row.last_offset + 1, highs[p])
                count += end - max(start, row.base_offset)
        ends[p] = max(end, start)
    return ends
