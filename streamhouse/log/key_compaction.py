"""Key compaction of topics with ``cleanup.policy=compact``: the latest record of each key
survives, as in Kafka's log cleaner. It is part of a compaction pass
(:mod:`streamhouse.log.compaction`), which writes the cleaned rows as new objects and swaps
them into the index the same way.

What a pass cleans in a partition: the index rows before the last one (the last is the
"active segment", never cleaned, as in Kafka) whose records are all older than
``min.compaction.lag.ms`` (it stops at the first row with a younger record). In them:

- a record whose key has a later record anywhere in the partition goes;
- a tombstone (null value) that is the latest of its key goes once it is older than
  ``delete.retention.ms`` (a consumer that read the key's earlier value had that long to see
  the delete);
- records without a key are kept (produce refuses them on compacted topics, as Kafka does,
  but the topic may have had another policy when they were written);
- transactions: nothing at or after the oldest open transaction's first offset (the last
  stable offset) is cleaned or counts as a key's latest, and aborted records never do and go
  (their batches stay, emptied, beside their markers).

Offsets never change: the records that stay keep theirs, with gaps where others went
(:func:`~streamhouse.log.records.filter.drop_records`), and every row still spans the offsets
it did, so the index has no gaps. The latest record per key is found over every record of the
partition (keys, offsets, timestamps: one decode of the partition per pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.log.metadata import SegmentRow
from streamhouse.log.records import decode_records

if TYPE_CHECKING:
    from streamhouse.log import Log

__all__ = ["Cleaning", "cleanable_rows", "is_compacted", "plan_cleaning"]

DEFAULT_DELETE_RETENTION_MS = 86_400_000
"""Kafka's default ``delete.retention.ms`` (one day)."""


def is_compacted(config: Mapping[str, str]) -> bool:
    """Whether the topic's ``cleanup.policy`` includes ``compact``.

    >>> is_compacted({"cleanup.policy": "compact,delete"}), is_compacted({})
    (True, False)
    """
    policies = {p.strip() for p in config.get("cleanup.policy", "delete").split(",")}
    return "compact" in policies


def cleanable_rows(
    rows: Sequence[SegmentRow], config: Mapping[str, str], now: int
) -> Sequence[SegmentRow]:
    """The rows a cleaning may rewrite: those before the last one (the active segment) up to
    the first with a record younger than ``min.compaction.lag.ms``."""
    lag = int(config.get("min.compaction.lag.ms", 0))
    for i, row in enumerate(rows[:-1]):
        if row.max_timestamp > now - lag:
            return rows[:i]
    return rows[:-1]


@dataclass(frozen=True, slots=True)
class Cleaning:
    """Groups of consecutive rows to rewrite, and the offsets (sorted) whose records stay."""

    groups: list[list[SegmentRow]]
    keep: np.ndarray


def plan_cleaning(
    log_: Log,
    rows: Sequence[SegmentRow],
    config: Mapping[str, str],
    target_bytes: int,
    now: int,
    max_span_ms: int | None = None,
) -> Cleaning:
    """What to clean in one partition whose index rows are ``rows`` (see the module); a group
    holds up to ``target_bytes`` and ``max_span_ms`` of timestamps (the topic's
    :func:`~streamhouse.log.compaction.limits`)."""
    delete_retention = int(config.get("delete.retention.ms", DEFAULT_DELETE_RETENTION_MS))
    cleanable = cleanable_rows(rows, config, now)
    if not cleanable:
        return Cleaning([], np.zeros(0, np.int64))
    # Transactions (a continuous query's sink writes its output in them): only what lies
    # below the last stable offset is cleaned, and aborted records are never a key's latest:
    # they are left out of the decode, so they go too (their batches stay, emptied, with
    # their markers, as Kafka's cleaner leaves them).
    topic, partition = rows[0].topic, rows[0].partition
    stability = log_.metadata.transactions.topic_stability(topic)
    open_from = stability.open_from.get(partition)
    if open_from is not None:
        cleanable = [r for r in cleanable if r.last_offset < open_from]
        if not cleanable:
            return Cleaning([], np.zeros(0, np.int64))
    aborted = stability.aborted.get(partition, [])
    table = decode_records(
        [log_.reader.run_bytes(r) for r in rows], aborted=[aborted] * len(rows)
    ).table
    offsets = table["offset"].to_numpy()
    counted = pc.is_valid(table["key"])  # a key's latest is found below the last stable offset
    if open_from is not None:  # (what lies beyond may be aborted yet, or wait behind it)
        counted = pc.and_(counted, pc.less(table["offset"], open_from))
    latest = (
        pa.table({"key": table["key"], "offset": table["offset"]})
        .filter(counted)
        .group_by("key")
        .aggregate([("offset", "max")])
    )
    is_latest = np.isin(offsets, latest["offset_max"].to_numpy())
    stamps = pc.cast(table["timestamp"], pa.int64()).to_numpy()
    expired_tombstone = (
        is_latest
        & table["value"].is_null().to_numpy(zero_copy_only=False)
        & (stamps < now - delete_retention)
    )
    keyless = table["key"].is_null().to_numpy(zero_copy_only=False)
    keep = (keyless | (is_latest & ~expired_tombstone)) | (offsets > cleanable[-1].last_offset)
    keep_offsets = offsets[keep]

    groups: list[list[SegmentRow]] = []
    group: list[SegmentRow] = []
    size = low = high = 0
    for row in cleanable:
        spans = max(high, row.max_timestamp) - min(low, row.min_timestamp)
        too_long = max_span_ms is not None and spans > max_span_ms
        if group and (size + row.length > target_bytes or too_long):
            groups.append(group)
            group = []
        if not group:
            size, low, high = 0, row.min_timestamp, row.max_timestamp
        group.append(row)
        size += row.length
        low, high = min(low, row.min_timestamp), max(high, row.max_timestamp)
    if group:
        groups.append(group)
    dropped = offsets[~keep]

    def worth(g: list[SegmentRow]) -> bool:  # merges rows or drops a record
        inside = (dropped >= g[0].base_offset) & (dropped <= g[-1].last_offset)
        return len(g) > 1 or bool(inside.any())

    return Cleaning([g for g in groups if worth(g)], keep_offsets)
