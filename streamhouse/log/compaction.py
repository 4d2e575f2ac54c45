"""Compaction: the small multi-partition objects of many flushes merged into larger
per-partition objects, recompressed with larger batches (as WarpStream's compaction does).

A pass (:func:`compact`), for every partition of the topics asked for:

1. takes the lease ``compact/<topic>/<partition>`` for ``compaction_lease_s``, renewed per
   group (one compactor per partition at a time over every agent sharing the metadata store;
   a partition whose lease another holds is passed over) and reads the partition's index rows from the store;
2. picks groups, size-tiered (:func:`plan_groups`): runs of consecutive rows each smaller than
   half of ``compaction_target_bytes``, cut where the next row would take the group past the
   target; a group of one row stays as it is. Rows merged once are merged again with their
   neighbours only while they stay below half the target, so each byte is rewritten a few
   times at most;
3. per group: reads each row's run (one range read, its checksum verified, re-stamped to the
   offsets the index gives it), merges the batches into larger ones recompressed with the
   topic's ``compression.type`` or ``compaction_compression``
   (:func:`~streamhouse.log.records.merge.merge_batches`: every record keeps its offset,
   timestamp, key, value, headers and sequence number), writes them as one new object, and
   swaps the group's rows for one row naming it in one metadata transaction fenced by the
   lease (:mod:`~streamhouse.log.metadata.swaps`).

Topics with ``cleanup.policy=compact`` are also cleaned by key in the same pass (the groups
and the records that stay: :mod:`streamhouse.log.key_compaction`).

The replaced objects are queued once no row names them and deleted after
``object_delete_delay_s`` by the retention pass, so a fetch or query that read the old rows
still finds them. A swap refused (the lease was lost, or retention dropped a row meanwhile)
deletes the new object at once: nothing ever named it. A compactor killed between writing an
object and its swap leaves an orphan that ``fsck`` reports (and ``--delete-orphans`` removes);
the old rows and objects stay as they were. Each new object's compaction note
(:mod:`~streamhouse.log.compaction_notes`) tells a rebuild of lost metadata which runs it
replaced, so the records are indexed once. A damaged run is left where it is (its group is
passed over) and logged.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamhouse.errors import DamagedRangeError, StorageError, UnknownTopicError
from streamhouse.log.compaction_notes import delete_notes, write_note
from streamhouse.log.key_compaction import Cleaning, is_compacted, plan_cleaning
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.rules import now_ms
from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome, lease_name
from streamhouse.log.objectstore import ObjectStore
from streamhouse.log.records import Compression, split_batches
from streamhouse.log.records.filter import drop_records
from streamhouse.log.records.merge import DEFAULT_MAX_BATCH_BYTES, merge_batches
from streamhouse.log.segment import SegmentBuilder, segment_key
from streamhouse.log.topic_config import Retention

if TYPE_CHECKING:
    from streamhouse.log import Log

__all__ = ["CompactionReport", "codec_for", "compact", "compactor_id", "plan_groups"]

log = logging.getLogger(__name__)

CODECS = {
    "uncompressed": Compression.NONE,
    "none": Compression.NONE,
    "gzip": Compression.GZIP,
    "snappy": Compression.SNAPPY,
    "lz4": Compression.LZ4,
    "zstd": Compression.ZSTD,
}


@dataclass(slots=True)
class CompactionReport:
    """What one pass did: rows replaced by new objects, bytes read and written, and the
    partitions passed over because another compactor holds their lease."""

    objects_written: list[str] = field(default_factory=list)
    rows_replaced: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    records: int = 0
    busy: list[tuple[str, int]] = field(default_factory=list)
    refused: int = 0  # swaps refused (lease lost or rows changed): their objects deleted
    seconds: float = 0.0


def compactor_id() -> str:
    """A holder name for this process's compactor: host, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def codec_for(config: dict[str, str], default: str) -> Compression | None:
    """The codec compacted batches get: the topic's ``compression.type``, or ``default``
    (``compaction_compression``) where it is ``producer``; ``None`` keeps each batch's own.

    >>> codec_for({"compression.type": "lz4"}, "zstd"), codec_for({}, "zstd")
    (<Compression.LZ4: 3>, <Compression.ZSTD: 4>)
    """
    name = config.get("compression.type", "producer")
    if name == "producer":
        name = default
    if name == "producer":
        return None
    try:
        return CODECS[name]
    except KeyError:
        raise StorageError(f"unknown compression {name!r} for compacted batches") from None


def plan_groups(
    rows: Sequence[SegmentRow], target_bytes: int, max_span_ms: int | None = None
) -> list[list[SegmentRow]]:
    """Groups of consecutive small rows to merge, each of two rows or more (see the module);
    a group's records span at most ``max_span_ms`` of timestamps.

    >>> from types import SimpleNamespace as Row
    >>> sizes = [3, 3, 9, 2, 2, 2]
    >>> rows = [Row(length=n, base_offset=i, last_offset=i, min_timestamp=i, max_timestamp=i)
    ...         for i, n in enumerate(sizes)]
    >>> [[r.base_offset for r in g] for g in plan_groups(rows, 10)]
    [[0, 1], [3, 4, 5]]
    >>> [[r.base_offset for r in g] for g in plan_groups(rows, 10, max_span_ms=1)]
    [[0, 1], [3, 4]]
    """
    groups: list[list[SegmentRow]] = []
    group: list[SegmentRow] = []
    size = low = high = 0  # the group's bytes and its timestamps' range
    for row in rows:
        small = row.length * 2 < target_bytes
        fits = (
            bool(group)
            and row.base_offset == group[-1].last_offset + 1
            and size + row.length <= target_bytes
            and (
                max_span_ms is None
                or max(high, row.max_timestamp) - min(low, row.min_timestamp) <= max_span_ms
            )
        )
        if not (small and fits):
            if len(group) > 1:
                groups.append(group)
            group, size, low, high = [], 0, row.min_timestamp, row.max_timestamp
        if small:
            group.append(row)
            size += row.length
            low, high = min(low, row.min_timestamp), max(high, row.max_timestamp)
    if len(group) > 1:
        groups.append(group)
    return groups


def limits(config: dict[str, str], target_bytes: int) -> tuple[int, int | None]:
    """The group size and time span compaction keeps to for a topic: never coarser than a
    tenth of its retention limits (or its ``segment.bytes``/``segment.ms``), so retention,
    which drops whole index rows, still acts at a fine grain. A topic without retention
    limits (a compacted one, typically) has no grain to keep: its groups go up to
    ``target_bytes``, so cleaning it writes few objects.

    >>> limits({"retention.bytes": "20000", "retention.ms": "3600000"}, 1 << 24)
    (2000, 360000)
    >>> limits({}, 1 << 24), limits({"segment.bytes": "10000"}, 1 << 24)
    ((16777216, None), (16777216, None))
    """
    retention = Retention.of(config)
    size, span = target_bytes, None
    if not retention.limited:
        return size, span
    if retention.bytes is not None:
        size = min(size, max(1, retention.bytes // 10))
    if "segment.bytes" in config:
        size = min(size, max(1, int(config["segment.bytes"])))
    if retention.ms is not None:
        span = max(1, retention.ms // 10)
    if "segment.ms" in config:
        span = min(span or int(config["segment.ms"]), int(config["segment.ms"]))
    return size, span


def compact(
    log_: Log,
    topics: Iterable[str] | None = None,
    *,
    holder: str | None = None,
    partitions: Mapping[str, Collection[int]] | None = None,
) -> CompactionReport:
    """One compaction pass over ``topics`` (default: every topic; with ``partitions``, those
    partitions of each topic only) as ``holder`` of the partitions' leases (see the module);
    a topic deleted meanwhile is passed over."""
    started = time.monotonic()
    holder = holder or compactor_id()
    report = CompactionReport()
    metadata = log_.metadata
    ttl_ms = max(1, int(log_.settings.compaction_lease_s * 1000))
    for info in log_.topic_infos(topics):
        codec = codec_for(info.config, log_.settings.compaction_compression)
        for partition in range(info.partitions):
            if partitions is not None and partition not in partitions.get(info.name, ()):
                continue
            lease = metadata.acquire_lease(lease_name(info.name, partition), holder, ttl_ms)
            if lease is None:
                report.busy.append((info.name, partition))
                continue
            try:
                _compact_partition(log_, info.name, partition, lease, codec, ttl_ms, report)
            except UnknownTopicError:
                break  # deleted meanwhile
            finally:
                metadata.release_lease(lease)
    report.seconds = time.monotonic() - started
    if report.objects_written:
        log.info(
            "compaction: %d row(s) into %d object(s), %d -> %d bytes in %.2f s",
            report.rows_replaced,
            len(report.objects_written),
            report.bytes_read,
            report.bytes_written,
            report.seconds,
        )
    return report


def _compact_partition(
    log_: Log,
    topic: str,
    partition: int,
    lease: Lease,
    codec: Compression | None,
    ttl_ms: int,
    report: CompactionReport,
) -> None:
    metadata, store = log_.metadata, log_.store
    rows = metadata.inner.segments(topic, partition)  # the store's rows, not a cached view
    info = log_.topic(topic)
    target, span = limits(info.config, log_.settings.compaction_target_bytes)
    cleaning = None
    if is_compacted(info.config) and target > 0:
        cleaning = plan_cleaning(log_, rows, info.config, target, now_ms(), span)
        groups = cleaning.groups
    else:
        groups = plan_groups(rows, target, span)
    if not groups:
        return
    with ThreadPoolExecutor(store.read_parallelism, thread_name_prefix="compact") as reads:
        _rewrite_groups(
            log_, topic, partition, lease, codec, ttl_ms, groups, cleaning, reads, report
        )


def _range(store: ObjectStore, row: SegmentRow) -> bytes:
    """The bytes of ``row``'s run: one range read."""
    return store.get(row.object_key, row.position, row.position + row.length)


def _rewrite_groups(
    log_: Log,
    topic: str,
    partition: int,
    lease: Lease,
    codec: Compression | None,
    ttl_ms: int,
    groups: list[list[SegmentRow]],
    cleaning: Cleaning | None,
    reads: ThreadPoolExecutor,
    report: CompactionReport,
) -> None:
    """Write each group as one object and swap it in (the old runs read ``reads`` at a time:
    on S3 each is a round trip)."""
    metadata, store = log_.metadata, log_.store
    for group in groups:
        if not metadata.renew_lease(lease, ttl_ms):
            log.warning("compaction of %s-%d: lease lost, stopping", topic, partition)
            return
        try:
            runs = list(reads.map(lambda r: log_.reader.run_view(r, _range(store, r)), group))
        except DamagedRangeError as exc:
            log.warning("compaction of %s-%d: group passed over: %s", topic, partition, exc)
            continue
        run = b"".join(runs)
        record_count = sum(r.record_count for r in group)
        if cleaning is not None:  # key compaction: only the latest record per key stays
            run = drop_records(run, cleaning.keep)
            record_count = sum(h.record_count for _, _, h in split_batches(run))
        batches = merge_batches(run, compression=codec, max_batch_bytes=DEFAULT_MAX_BATCH_BYTES)
        first, last = group[0], group[-1]
        builder = SegmentBuilder()
        builder.add(
            topic,
            partition,
            batches,
            base_offset=first.base_offset,
            last_offset=last.last_offset,
            min_timestamp=min(r.min_timestamp for r in group),
            max_timestamp=max(r.max_timestamp for r in group),
            record_count=record_count,
        )
        data, (entry,) = builder.build()
        key = segment_key(time.time_ns() // 1000)
        store.put(key, data)
        write_note(store, key, group)  # before the swap: a rebuild must know what it replaces
        new = SegmentRow(
            key, topic, partition, entry.base_offset, entry.last_offset, entry.position,
            entry.length, entry.min_timestamp, entry.max_timestamp, entry.record_count, entry.crc,
        )  # fmt: skip
        outcome = metadata.replace_segments(SegmentSwap(tuple(group), new), lease)
        if outcome is not SwapOutcome.SWAPPED:
            store.delete(key)  # nothing ever named it
            delete_notes(store, [key])
            report.refused += 1
            log.info("compaction of %s-%d: swap %s", topic, partition, outcome.value)
            if outcome is SwapOutcome.FENCED:
                return
            continue
        report.objects_written.append(key)
        report.rows_replaced += len(group)
        report.bytes_read += sum(r.length for r in group)
        report.bytes_written += len(data)
        report.records += entry.record_count
