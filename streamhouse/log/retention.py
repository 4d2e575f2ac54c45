"""Retention: advance each partition's log start offset past index rows that are too old or
beyond the size limit, and delete segment objects once nothing names them.

A pass (:func:`enforce_retention`), for every topic with ``retention.ms`` or
``retention.bytes``:

1. finds, per partition, the first index row to keep: by time, the first row whose largest
   timestamp is at or after ``now - retention.ms`` (rows go whole and in order, as Kafka's
   segments do); by size, the oldest row such that the rows after it hold less than
   ``retention.bytes`` (so at least that many bytes stay, as in Kafka);
2. moves the log start offset there and drops the index rows below it in one metadata
   transaction (:meth:`~streamhouse.log.metadata.Metadata.delete_records`, which DeleteRecords
   uses too); an object no row names any more is queued with the time it became unreferenced;
3. forgets the sequence state of idempotent producers that wrote nothing to a partition
   for ``settings.producer_id_expiration_s`` (a producer back after that starts afresh);
4. deletes queued objects unreferenced for longer than ``settings.object_delete_delay_s``
   that still no index row names: a fetch or query that read the index before step 2 finds
   its objects for that long.

Records above the log start offset are never touched: a row holding the log start stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streamhouse.errors import UnknownTopicError
from streamhouse.log import compaction_notes
from streamhouse.log.metadata.rules import now_ms
from streamhouse.log.sequence_notes import delete_notes
from streamhouse.log.topic_config import Retention

if TYPE_CHECKING:
    from streamhouse.log import Log

__all__ = ["RetentionReport", "delete_unreferenced_objects", "enforce_retention"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RetentionReport:
    """What one pass did: ``(topic, partition) -> (old, new)`` log start offsets, the keys
    of the objects it deleted, how many idle producer states and aborted transactions it
    forgot."""

    advanced: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    deleted_objects: list[str] = field(default_factory=list)
    forgotten_producers: int = 0
    forgotten_aborts: int = 0  # aborted transactions wholly below their log start


def retention_targets(
    log_: Log, topic: str, retention: Retention, now: int
) -> dict[int, tuple[int, int]]:
    """``partition -> (log start, where retention moves it)`` for the partitions of ``topic``
    that move."""
    metadata = log_.metadata
    targets = {}
    for partition, bounds in metadata.partition_offsets(topic).items():
        target = bounds.log_start_offset
        if retention.ms is not None:
            row = metadata.segment_for_timestamp(topic, partition, now - retention.ms)
            target = max(target, bounds.high_watermark if row is None else row.base_offset)
        if retention.bytes is not None:
            oldest = metadata.oldest_row_within_bytes(topic, partition, retention.bytes)
            target = max(target, bounds.high_watermark if oldest is None else oldest)
        if target > bounds.log_start_offset:
            targets[partition] = (bounds.log_start_offset, target)
    return targets


def enforce_retention(
    log_: Log, topics: Iterable[str] | None = None, *, now: int | None = None
) -> RetentionReport:
    """Run one retention pass over ``topics`` (default: every topic); see the module.

    ``UnknownTopicError`` for a named topic that does not exist; a topic deleted during the
    pass is passed over."""
    now = now_ms() if now is None else now
    report = RetentionReport()
    for info in log_.topic_infos(topics):
        retention = Retention.of(info.config)
        if not retention.limited:
            continue
        try:
            targets = retention_targets(log_, info.name, retention, now)
            if not targets:
                continue
            after = log_.metadata.delete_records(
                info.name, {p: target for p, (_, target) in targets.items()}
            )
        except UnknownTopicError:
            continue  # deleted meanwhile
        for partition, (old, _) in sorted(targets.items()):
            if after[partition] > old:
                report.advanced[(info.name, partition)] = (old, after[partition])
                log.info(
                    "retention: %s-%d log start %d -> %d",
                    info.name,
                    partition,
                    old,
                    after[partition],
                )
    if topics is None:
        expiry_ms = int(log_.settings.producer_id_expiration_s * 1000)
        report.forgotten_producers = log_.metadata.forget_producers(now - expiry_ms)
        if report.forgotten_producers:
            log.info("retention: forgot %d idle producer state(s)", report.forgotten_producers)
        report.forgotten_aborts = log_.metadata.transactions.forget_aborted()
    report.deleted_objects = delete_unreferenced_objects(log_, now=now)
    return report


def delete_unreferenced_objects(log_: Log, *, now: int | None = None) -> list[str]:
    """Delete the queued objects unreferenced for longer than the grace period; their keys."""
    now = now_ms() if now is None else now
    grace_ms = int(log_.settings.object_delete_delay_s * 1000)
    keys = log_.metadata.due_objects(now - grace_ms)
    for key in keys:
        log_.cache.discard(key)
        log_.store.delete(key)
    if keys:
        delete_notes(log_.store, keys)
        compaction_notes.delete_notes(log_.store, keys)
        log_.metadata.forget_objects(keys)
        log.info("retention: deleted %d unreferenced object(s)", len(keys))
    return keys
