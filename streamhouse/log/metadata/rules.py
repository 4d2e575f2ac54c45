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
    InvalidProducerEpochError,
    LogError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    ProducerSequenceError,
    RefusedBatchesError,
    SqlError,
    UnknownPartitionError,
    UnknownTopicError,
)
from streamhouse.log.metadata import CATALOG_KINDS, ProducerBatch, SegmentEntryLike, SegmentRow

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


def changed_config(config: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``config`` with ``changes`` applied: a value sets its key, ``None`` removes it.

    >>> changed_config({"a": "1", "b": "2"}, {"a": None, "c": "3"})
    {'b': '2', 'c': '3'}
    """
    result = dict(config)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return topic_config(result)


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


MAX_REMEMBERED_BATCHES = 5
"""Batches remembered per producer and partition: the most a Kafka producer has in flight."""
SEQUENCE_MODULO = 2**31
"""Sequence numbers wrap to 0 after 2**31 - 1."""

ProducerKey = tuple[str, int, int]
"""(topic, partition, producer id)."""

PRODUCER_COLUMNS = (
    "topic, partition_id, producer_id, producer_epoch, last_sequence, recent_batches, updated_ms"
)
"""The columns of ``producer_sequences``, in the order :func:`producer_rows` gives them."""
PRODUCER_UPSERT = (
    " ON CONFLICT (topic, partition_id, producer_id) DO UPDATE SET"
    " producer_epoch = excluded.producer_epoch, last_sequence = excluded.last_sequence,"
    " recent_batches = excluded.recent_batches, updated_ms = excluded.updated_ms"
)
"""What an insert of an existing producer's row does instead."""

FORGET_PRODUCERS = "DELETE FROM producer_sequences WHERE updated_ms < ?"
"""Forget producer states last written before the parameter (milliseconds)."""


@dataclass(frozen=True, slots=True)
class ProducerState:
    """What the store keeps of one producer on one partition: its epoch, the last sequence
    number indexed, and ``(first sequence, last sequence, base offset)`` of its last
    :data:`MAX_REMEMBERED_BATCHES` batches, oldest first.

    >>> state = ProducerState.decode(3, 9, "0:4:100,5:9:120")
    >>> state.recent, state.encode_recent()
    (((0, 4, 100), (5, 9, 120)), '0:4:100,5:9:120')
    """

    epoch: int
    last_sequence: int
    recent: tuple[tuple[int, int, int], ...]

    @classmethod
    def decode(cls, epoch: int, last_sequence: int, recent: str) -> ProducerState:
        if not recent:
            return cls(epoch, last_sequence, ())
        numbers = list(map(int, recent.replace(",", ":").split(":")))  # every commit reads some
        firsts, lasts, offsets = numbers[::3], numbers[1::3], numbers[2::3]
        return cls(epoch, last_sequence, tuple(zip(firsts, lasts, offsets, strict=True)))

    def encode_recent(self) -> str:
        return ",".join(f"{first}:{last}:{offset}" for first, last, offset in self.recent)


def producer_keys(
    entries: Sequence[SegmentEntryLike], batches: Sequence[ProducerBatch]
) -> list[ProducerKey]:
    """The producers whose state a commit of ``batches`` reads, sorted."""
    return sorted(
        {(entries[b.entry].topic, entries[b.entry].partition, b.producer_id) for b in batches}
    )


def check_producer_batches(
    entries: Sequence[SegmentEntryLike],
    bases: Sequence[int],
    batches: Sequence[ProducerBatch],
    states: Mapping[ProducerKey, ProducerState],
) -> dict[ProducerKey, ProducerState]:
    """Judge ``batches`` in order against ``states`` (read in the commit transaction, with
    their partitions locked) and return the states to write; ``bases`` are the base offsets
    the commit gives ``entries``.

    As Kafka: a batch of an older epoch is refused (``InvalidProducerEpochError``); one of a
    newer epoch, or of a producer the store has no state of, starts the state afresh; one
    whose sequences equal a remembered batch's is a duplicate, answered with that batch's
    offset; one that does not start right after the last sequence is out of order. If any
    batch is refused, ``RefusedBatchesError`` names them all (the caller rolls back).

    A transaction marker (a batch without sequence numbers, ``first_sequence`` -1) sets the
    producer's epoch on its partition: the coordinator writes the ABORT markers of a fenced
    producer at a bumped epoch, so whatever that producer sends there afterwards, through any
    agent, is refused here, in the commit transaction.

    >>> from types import SimpleNamespace as Entry
    >>> entries = [Entry(topic="t", partition=0)]
    >>> first = [ProducerBatch(0, 0, 7, 0, 0, 4)]
    >>> states = check_producer_batches(entries, [100], first, {})
    >>> states
    {('t', 0, 7): ProducerState(epoch=0, last_sequence=4, recent=((0, 4, 100),))}
    >>> check_producer_batches(entries, [200], first, states)
    Traceback (most recent call last):
    ...
    streamhouse.errors.RefusedBatchesError: 1 idempotent producer batch(es) refused
    """
    changed: dict[ProducerKey, ProducerState] = {}
    verdicts: dict[int, int | ProducerSequenceError] = {}
    for index, batch in enumerate(batches):
        entry = entries[batch.entry]
        key = (entry.topic, entry.partition, batch.producer_id)
        state = changed.get(key) or states.get(key)
        first, last = batch.first_sequence, batch.last_sequence
        if first < 0 and (state is None or batch.producer_epoch > state.epoch):
            changed[key] = ProducerState(batch.producer_epoch, -1, ())  # a marker, fencing
            continue
        if first < 0 and batch.producer_epoch == state.epoch:  # type: ignore[union-attr]
            continue  # a marker of the current epoch: the sequences go on
        if state is not None and batch.producer_epoch < state.epoch:
            verdicts[index] = InvalidProducerEpochError(
                f"producer {batch.producer_id} on {entry.topic}/{entry.partition}:"
                f" epoch {batch.producer_epoch} is older than {state.epoch}"
            )
            continue
        if state is None or batch.producer_epoch > state.epoch:
            recent: tuple[tuple[int, int, int], ...] = ()
        else:
            duplicate = [o for f, la, o in state.recent if f == first and la == last]
            if duplicate:
                verdicts[index] = duplicate[0]
                continue
            expected = (state.last_sequence + 1) % SEQUENCE_MODULO
            if first != expected:
                verdicts[index] = OutOfOrderSequenceError(
                    f"producer {batch.producer_id} on {entry.topic}/{entry.partition}:"
                    f" sequence {first}, expected {expected}"
                )
                continue
            recent = state.recent[1 - MAX_REMEMBERED_BATCHES :]
        offset = bases[batch.entry] + batch.delta
        changed[key] = ProducerState(batch.producer_epoch, last, (*recent, (first, last, offset)))
    if verdicts:
        raise RefusedBatchesError(verdicts)
    return changed


def producer_rows(states: Mapping[ProducerKey, ProducerState]) -> list[tuple]:
    """``states`` as ``producer_sequences`` rows (:data:`PRODUCER_COLUMNS`), stamped now."""
    now = now_ms()
    return [
        (topic, partition, producer_id, s.epoch, s.last_sequence, s.encode_recent(), now)
        for (topic, partition, producer_id), s in states.items()
    ]


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


HIGH_WATERMARK = -1
"""A DeleteRecords offset meaning "up to the high watermark", as in Kafka."""

OLDEST_ROW_WITHIN_BYTES = (
    "SELECT min(base_offset) FROM ("
    " SELECT base_offset, byte_length, sum(byte_length) OVER ("
    "  ORDER BY base_offset DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS newer_bytes"
    " FROM segments WHERE topic = ? AND partition_id = ?) AS r"
    " WHERE newer_bytes - byte_length < ?"
)
"""The base offset of the oldest row retention by bytes keeps: as Kafka, a row goes only if
the rows after it hold at least the limit (parameters: topic, partition, limit)."""

MARK_UNREFERENCED = (
    "INSERT INTO deleted_objects (object_key, unreferenced_ms) SELECT ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM segments WHERE object_key = ?)"
    " ON CONFLICT (object_key) DO NOTHING"
)
"""Queue an object for deletion if no index row names it (parameters: key, now, key)."""

DUE_OBJECTS = (
    "SELECT object_key FROM deleted_objects AS d WHERE unreferenced_ms <= ?"
    " AND NOT EXISTS (SELECT 1 FROM segments AS s WHERE s.object_key = d.object_key)"
    " ORDER BY object_key"
)
"""Queued objects unreferenced since at most the parameter, still named by no index row."""


def plan_delete_records(
    topic: str, offsets: Mapping[int, int], current: Mapping[int, tuple[int, int]]
) -> dict[int, int]:
    """The log start offset each partition of ``offsets`` has after deleting the records
    before its offset; ``current`` is ``(log_start_offset, high_watermark)`` per partition.

    The log start never moves back; :data:`HIGH_WATERMARK` means the high watermark.
    ``OffsetOutOfRangeError`` for an offset above the high watermark or below -1;
    ``UnknownTopicError``/``UnknownPartitionError`` for unknown ones. Nothing is checked
    partially: the whole request is valid or refused.

    >>> plan_delete_records("t", {0: 5, 1: -1}, {0: (0, 9), 1: (2, 7)})
    {0: 5, 1: 7}
    """
    if not current:
        raise UnknownTopicError(topic)
    starts = {}
    for partition, offset in offsets.items():
        if partition not in current:
            raise UnknownPartitionError(topic, partition)
        start, high_watermark = current[partition]
        target = high_watermark if offset == HIGH_WATERMARK else offset
        if not 0 <= target <= high_watermark:
            raise OffsetOutOfRangeError(
                f"cannot delete the records of {topic}-{partition} before offset {offset}:"
                f" it must be between 0 and the high watermark {high_watermark} (or -1 for it)"
            )
        starts[partition] = max(start, target)
    return starts
