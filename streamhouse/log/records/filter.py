"""Drop records from stored batches by offset, keeping every other byte of the rest: what key
compaction does to a run (:mod:`streamhouse.log.key_compaction`).

Each data batch keeps its header fields — base offset, last offset delta, base timestamp,
producer id, epoch and base sequence — so the records that stay keep their offsets,
timestamps and sequence numbers (their deltas are relative to those fields, which do not
move), as Kafka's log cleaner keeps them; only the record count, the CRC and the length change.
A batch left without records is dropped, except the run's first and last (kept empty, so the
run still spans its offsets) and an idempotent producer's (its sequence numbers stay known).
Control, transactional and log-append-time batches are copied as they are.

>>> from streamhouse.log.records.build import build_batch
>>> from streamhouse.log.records.decode import decode_batches
>>> run = build_batch([b"a", b"b", b"c"], keys=[b"k", b"k", b"j"])
>>> decode_batches(drop_records(run, np.array([1, 2]))).column("offset").to_pylist()
[1, 2]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamhouse.log.records.build import frame_batch
from streamhouse.log.records.decode import _assemble, _Region, _slices, record_ends
from streamhouse.log.records.header import (
    ATTR_COMPRESSION,
    ATTR_CONTROL,
    BATCH_OVERHEAD,
    Compression,
    split_batches,
)
from streamhouse.log.records.varints import read_varints

__all__ = ["drop_records"]


def drop_records(run: bytes | memoryview, keep: np.ndarray) -> bytes:
    """``run`` without the records whose offsets are not in ``keep`` (sorted int64 offsets)."""
    view = memoryview(run)
    batches = split_batches(view)
    data = [
        i
        for i, (_, _, h) in enumerate(batches)
        if not h.attributes & ATTR_CONTROL and h.record_count > 0
    ]
    if not data:
        return bytes(view)
    regions = [
        _Region(batches[i][2], view[batches[i][0] + BATCH_OVERHEAD : batches[i][1]], 0, 0, 1 << 63)
        for i in data
    ]
    buf, sections = _assemble(regions)
    counts = np.array([h.record_count for h, _ in sections], np.int64)
    sizes = np.array([size for _, size in sections], np.int64)
    region_ends = np.cumsum(sizes)
    ends = record_ends(buf, sections, region_ends - sizes, region_ends, counts)
    starts = np.concatenate([[0], ends[:-1]])
    _, length_size = read_varints(buf, starts, 5)
    _, ts_size = read_varints(buf, starts + length_size + 1, 10)
    off_delta, _ = read_varints(buf, starts + length_size + 1 + ts_size, 5)
    offsets = np.repeat([h.base_offset for h, _ in sections], counts) + off_delta
    kept = np.isin(offsets, keep)
    records = _slices(pa.py_buffer(buf), starts, ends - starts, np.flatnonzero(kept))
    values = memoryview(records.buffers()[2]) if len(records) else memoryview(b"")
    value_at = np.frombuffer(records.buffers()[1], np.int32)[records.offset :]
    kept_per_batch = np.add.reduceat(kept.astype(np.int64), np.cumsum(counts) - counts)
    first_kept = np.cumsum(kept_per_batch) - kept_per_batch

    rebuilt: dict[int, bytes | None] = {}
    for j, i in enumerate(data):
        header = sections[j][0]
        n = int(kept_per_batch[j])
        if n == header.record_count:
            continue  # untouched: copied as it is
        if n == 0 and 0 < i < len(batches) - 1 and header.producer_id < 0:
            rebuilt[i] = None
            continue
        a = int(first_kept[j])
        rebuilt[i] = frame_batch(
            values[int(value_at[a]) : int(value_at[a + n])] if n else b"",
            n,
            header.base_timestamp,
            header.max_timestamp,
            header.compression if n else Compression.NONE,  # no records: nothing to compress
            header.base_offset,
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
            last_offset_delta=header.last_offset_delta,
            leader_epoch=header.partition_leader_epoch,
            flags=header.attributes & ~ATTR_COMPRESSION,  # transactional, log-append time
        )
    out: list[bytes | memoryview] = []
    for i, (start, end, _) in enumerate(batches):
        if i not in rebuilt:
            out.append(view[start:end])
        elif (batch := rebuilt[i]) is not None:
            out.append(batch)
    return b"".join(out)
