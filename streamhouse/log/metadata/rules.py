"""The rules every metadata backend enforces the same way, apart from how it stores rows.

- topic configs map strings to strings; partition counts are integers >= 1;
- a catalog entry has a name and one of :data:`~streamhouse.log.metadata.CATALOG_KINDS`;
- a segment commit (:func:`plan_segment_commit`) is *sequenced by the store*: each entry gets
  its partition's high watermark as base offset, whatever offsets its batches were written
  with (the reader re-stamps them), and the running maximum timestamp of the partition is kept.

>>> from types import SimpleNamespace as Entry
>>> entry = Entry(topic="t", partition=0, base_offset=0, last_offset=4, position=0, length=90,
...               min_timestamp=60, max_timestamp=70, record_count=5, crc=0)
>>> plan = plan_segment_commit("o", [entry], {("t", 0): (5, 80)}, lambda topic: True)
>>> plan.partitions, plan.bases
({('t', 0): (10, 80)}, [5])
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streamhouse.errors import (
    LogError,
    SqlError,
    UnknownPartitionError,
    UnknownTopicError,
)
from streamhouse.log.metadata import CATALOG_KINDS, SegmentEntryLike, SegmentRow

PartitionKey = tuple[str, int]
"""(topic, partition)."""

SegmentValues = tuple[str, int, int, int, str, int, int, int, int, int, int, int]
"""A ``segments`` row in the order of :data:`SEGMENT_INSERT_COLUMNS`."""

SEGMENT_INSERT_COLUMNS = (
    "topic, partition_id, base_offset, last_offset, object_key, byte_position, byte_length,"
    " min_timestamp, max_timestamp, running_max_timestamp, record_count, crc"
)
SEGMENT_SELECT_COLUMNS = (
    "object_key, topic, partition_id, base_offset, last_offset, byte_position, byte_length,"
    " min_timestamp, max_timestamp, record_count, crc"
)
"""Column order matches the fields of ``SegmentRow``, so a row unpacks straight into one."""


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def topic_config(config: Mapping[str, str] | None) -> dict[str, str]:
    """``config`` as a dict; ``LogError`` unless it maps strings to strings."""
    result: dict[str, str] = {}
    for key, value in (config or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LogError(
                f"topic config must map strings to strings, got {key!r}: {type(value).__name__}"
            )
        result[key] = value
    return result


def config_json(config: Mapping[str, str]) -> str:
    """The stored form of a topic config (keys sorted, so equal configs store equal text)."""
    return json.dumps(config, sort_keys=True)


def check_partition_count(topic: str, partitions: object) -> int:
    """``partitions`` if it is an integer >= 1, else ``LogError``."""
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise LogError(f"topic {topic!r}: partition count must be >= 1, got {partitions!r}")
    return partitions


def check_catalog_entry(name: str, kind: str) -> None:
    """``SqlError`` for an unknown kind or an empty name."""
    if kind not in CATALOG_KINDS:
        raise SqlError(
            f"unknown catalog kind {kind!r}: expected one of {', '.join(sorted(CATALOG_KINDS))}"
        )
    if not name:
        raise SqlError("a catalog entry needs a name")


@dataclass(slots=True)
class SegmentCommit:
    """What one segment commit writes: the new ``(high_watermark, max_timestamp)`` of each
    partition it touches, and the index rows to insert; ``bases`` is the base offset the store
    assigned to each entry, in the order of the entries."""

    partitions: dict[PartitionKey, tuple[int, int]] = field(default_factory=dict)
    rows: list[SegmentValues] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)


def plan_segment_commit(
    object_key: str,
    entries: Sequence[SegmentEntryLike],
    current: Mapping[PartitionKey, tuple[int, int]],
    topic_exists: Callable[[str], bool],
) -> SegmentCommit:
    """Assign ``entries`` their offsets from ``current`` (high watermark, max timestamp per
    partition, read and locked in the commit transaction) and say what to write.

    Each entry starts at its partition's high watermark and keeps its length
    (``last_offset - base_offset``); entries of one partition follow each other in the order
    given. The offsets the batches were written with do not matter: several writers never race.
    ``UnknownTopicError``/``UnknownPartitionError`` for a partition missing from ``current``
    (``topic_exists`` tells which); ``LogError`` if an entry ends before it starts.
    """
    plan = SegmentCommit()
    for entry in entries:
        key = (entry.topic, entry.partition)
        found = plan.partitions.get(key) or current.get(key)
        if found is None:
            if not topic_exists(entry.topic):
                raise UnknownTopicError(entry.topic)
            raise UnknownPartitionError(entry.topic, entry.partition)
        if entry.last_offset < entry.base_offset:
            raise LogError(
                f"segment {object_key!r}: {entry.topic}/{entry.partition} last offset"
                f" {entry.last_offset} is below base offset {entry.base_offset}"
            )
        base, max_timestamp = found
        last = base + entry.last_offset - entry.base_offset
        running_max = max(max_timestamp, entry.max_timestamp)
        plan.partitions[key] = (last + 1, running_max)
        plan.bases.append(base)
        plan.rows.append(
            (entry.topic, entry.partition, base, last, object_key, entry.position, entry.length,
             entry.min_timestamp, entry.max_timestamp, running_max, entry.record_count, entry.crc)
        )  # fmt: skip
    return plan


@dataclass(slots=True)
class SegmentRestore:
    """What restoring index rows writes: ``(log_start_offset, high_watermark, max_timestamp)``
    of each partition with rows, and the rows to insert."""

    partitions: dict[PartitionKey, tuple[int, int, int]] = field(default_factory=dict)
    rows: list[SegmentValues] = field(default_factory=list)


def plan_restore(rows: Sequence[SegmentRow], known: set[PartitionKey]) -> SegmentRestore:
    """Check ``rows`` (a rebuild from segment footers) and say what to write.

    Rows may leave gaps but must not overlap (``LogError``); every partition must be in
    ``known`` (``UnknownPartitionError``). A partition's log start is its lowest base offset,
    its high watermark one past its highest last offset.
    """
    plan = SegmentRestore()
    for row in sorted(rows, key=lambda r: (r.topic, r.partition, r.base_offset)):
        key = (row.topic, row.partition)
        if key not in known:
            raise UnknownPartitionError(row.topic, row.partition)
        start, high_watermark, max_timestamp = plan.partitions.get(
            key, (row.base_offset, row.base_offset, -1)
        )
        if row.base_offset < high_watermark:
            raise LogError(
                f"index rows of {row.topic}/{row.partition} overlap at offset"
                f" {row.base_offset} ({row.object_key!r})"
            )
        running_max = max(max_timestamp, row.max_timestamp)
        plan.partitions[key] = (start, row.last_offset + 1, running_max)
        plan.rows.append(
            (row.topic, row.partition, row.base_offset, row.last_offset, row.object_key,
             row.position, row.length, row.min_timestamp, row.max_timestamp, running_max,
             row.record_count, row.crc)
        )  # fmt: skip
    return plan
