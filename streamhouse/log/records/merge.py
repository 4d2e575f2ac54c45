"""Merge consecutive record batches into fewer, larger ones, recompressed: what compaction does
to the runs it copies (:mod:`streamhouse.log.compaction`).

Every record survives byte for byte except the two varints that are relative to its batch:
``timestampDelta`` and ``offsetDelta`` are rebased on the merged batch's first timestamp and
offset, so each record keeps its offset and timestamp; its attributes byte, key, value and
headers are copied as they are. Batches are merged only where that is sound:

- data batches only: control batches (transaction markers), transactional batches, batches
  with log-append time (whose records take the batch's timestamp) and empty batches are kept
  as they are (and never merged into);
- of one producer: same producer id, producer epoch and partition leader epoch; for an
  idempotent producer (id >= 0) only when offsets and sequence numbers both follow on without
  a gap, so the merged batch's ``baseSequence + offsetDelta`` still gives every record its
  sequence number (and ``lastSequence`` the last one);
- up to ``max_batch_bytes`` of uncompressed records per merged batch.

The work is vectorized over all records at once (record boundaries as the decoder finds them,
numpy for the varints, Arrow to join the rewritten heads with the untouched tails); the only
Python loops are per batch.

>>> from streamhouse.log.records.build import build_batch
>>> from streamhouse.log.records.header import split_batches
>>> run = build_batch([b"a"], base_offset=5) + build_batch([b"b", b"c"], base_offset=6)
>>> [(h.base_offset, h.record_count) for _, _, h in split_batches(merge_batches(run))]
[(5, 3)]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records.build import binary_from_matrix, frame_batch
from streamhouse.log.records.decode import _assemble, _Region, _slices, record_ends
from streamhouse.log.records.header import (
    ATTR_COMPRESSION,
    BATCH_OVERHEAD,
    BatchHeader,
    Compression,
    split_batches,
)
from streamhouse.log.records.varints import read_varints, varint_matrix, varint_size, zigzag

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "merge_batches"]

DEFAULT_MAX_BATCH_BYTES = 1 << 20
"""Uncompressed records per merged batch (librdkafka's default fetch size per partition)."""
_INT32_MAX = 0x7FFFFFFF


def _mergeable(header: BatchHeader) -> bool:
    """A plain data batch with create-time timestamps and at least one record."""
    plain = (header.attributes & ~ATTR_COMPRESSION) == 0
    return plain and header.record_count > 0


def _follows(prev: BatchHeader, header: BatchHeader) -> bool:
    """May ``header``'s records join the merged batch whose last batch is ``prev``?"""
    if (prev.producer_id, prev.producer_epoch, prev.partition_leader_epoch) != (
        header.producer_id,
        header.producer_epoch,
        header.partition_leader_epoch,
    ):
        return False
    if header.base_offset <= prev.last_offset:
        return False
    if header.producer_id < 0:
        return True
    gap = header.base_offset - prev.base_offset
    return (
        header.base_offset == prev.last_offset + 1
        and prev.base_sequence >= 0
        and header.base_sequence == prev.base_sequence + gap
        and header.base_sequence + header.last_offset_delta <= _INT32_MAX
    )


def merge_batches(
    run: bytes | memoryview,
    *,
    compression: Compression | None = Compression.ZSTD,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> bytes:
    """``run`` (whole batches of one partition, ascending offsets) with consecutive batches
    merged where sound (see the module) and every rewritten batch compressed with
    ``compression`` (``None``: the codec of its first batch). A batch left alone whose codec
    is already the one wanted is copied as it is. ``CorruptRecordError`` for a malformed batch.
    """
    view = memoryview(run)
    # Kept batches as (start, end, header); runs of batches that may merge as lists of them.
    plan: list[tuple[int, int, BatchHeader] | list[tuple[int, int, BatchHeader]]] = []
    for item in split_batches(view):
        if not _mergeable(item[2]):
            plan.append(item)
        elif plan and isinstance(plan[-1], list) and _follows(plan[-1][-1][2], item[2]):
            plan[-1].append(item)
        else:
            plan.append([item])
    rewrite = [
        g
        for g in plan
        if isinstance(g, list)
        and (len(g) > 1 or (compression is not None and g[0][2].compression != compression))
    ]
    batches = _rewrite(view, rewrite, compression, max_batch_bytes)
    merged = dict(zip(map(id, rewrite), batches, strict=True))
    out: list[bytes | memoryview] = []
    for g in plan:
        if isinstance(g, tuple):
            out.append(view[g[0] : g[1]])
        elif id(g) in merged:
            out.append(merged[id(g)])
        else:
            out.append(view[g[0][0] : g[0][1]])
    return b"".join(out)


def _rewrite(
    view: memoryview,
    groups: list[list[tuple[int, int, BatchHeader]]],
    compression: Compression | None,
    max_batch_bytes: int,
) -> list[bytes]:
    """The merged batches of ``groups``, one ``bytes`` (one or more batches) per group."""
    if not groups:
        return []
    members = [b for g in groups for b in g]
    regions = [
        _Region(h, view[start + BATCH_OVERHEAD : end], 0, 0, 1 << 63) for start, end, h in members
    ]
    buf, sections = _assemble(regions)
    counts = np.array([h.record_count for h, _ in sections], np.int64)
    sizes = np.array([size for _, size in sections], np.int64)
    region_ends = np.cumsum(sizes)
    region_starts = region_ends - sizes
    ends = record_ends(buf, sections, region_starts, region_ends, counts)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1]

    # Which group each batch is in, and the base offset and timestamp of its group's first.
    # Each group becomes pieces of batches [lo, hi) holding up to max_batch_bytes of records
    # (at least one batch); each piece is one merged batch, rebased on its first batch.
    pieces: list[list[tuple[int, int]]] = []
    lo = 0
    size_list = sizes.tolist()
    for g in groups:
        end, group_pieces = lo + len(g), []
        while lo < end:
            hi, size = lo + 1, size_list[lo]
            while hi < end and size + size_list[hi] <= max_batch_bytes:
                size += size_list[hi]
                hi += 1
            group_pieces.append((lo, hi))
            lo = hi
        pieces.append(group_pieces)
    flat = [p for group_pieces in pieces for p in group_pieces]
    headers = [h for _, _, h in members]
    base_offset = np.array([h.base_offset for h in headers], np.int64)
    base_ts = np.array([h.base_timestamp for h in headers], np.int64)
    leader = np.repeat([lo for lo, _ in flat], [hi - lo for lo, hi in flat])
    off_shift = np.repeat(base_offset - base_offset[leader], counts)
    ts_shift = np.repeat(base_ts - base_ts[leader], counts)

    length, s = read_varints(buf, starts, 5)
    attr_at = starts + s
    ts_delta, ts_size = read_varints(buf, attr_at + 1, 10)
    off_delta, off_size = read_varints(buf, attr_at + 1 + ts_size, 5)
    tail_start = attr_at + 1 + ts_size + off_size
    if not ((s > 0) & (ts_size > 0) & (off_size > 0) & (tail_start <= ends)).all():
        raise CorruptRecordError("malformed record in a batch to merge")
    tail_len = ends - tail_start
    ts_u = zigzag(ts_delta + ts_shift)
    off_u = zigzag(off_delta + off_shift)
    ts_n, off_n = varint_size(ts_u), varint_size(off_u)
    len_u = zigzag(1 + ts_n + off_n + tail_len)
    mats = [varint_matrix(len_u, varint_size(len_u))]
    mats.append((buf[attr_at][:, None], np.ones((len(starts), 1), bool)))
    mats += [varint_matrix(ts_u, ts_n), varint_matrix(off_u, off_n)]
    head = binary_from_matrix(np.hstack([m[0] for m in mats]), np.hstack([m[1] for m in mats]))
    tail = _slices(pa.py_buffer(buf), tail_start, tail_len, np.arange(len(starts)))
    joined = pc.binary_join_element_wise(head, tail, pa.scalar(b""))
    offsets = np.frombuffer(joined.buffers()[1], np.int32)[: len(starts) + 1]
    data = memoryview(joined.buffers()[2])

    out = []
    record_at = np.concatenate([[0], np.cumsum(counts)])
    for group_pieces in pieces:
        out.append(
            b"".join(
                _frame_members(headers, lo, hi, record_at, offsets, data, compression)
                for lo, hi in group_pieces
            )
        )
    return out


def _frame_members(
    headers: list[BatchHeader],
    lo: int,
    hi: int,
    record_at: np.ndarray,
    offsets: np.ndarray,
    data: memoryview,
    compression: Compression | None,
) -> bytes:
    """One batch of the records of batches ``headers[lo:hi]`` (rewritten relative to the first)."""
    first, last = headers[lo], headers[hi - 1]
    a, b = int(record_at[lo]), int(record_at[hi])
    return frame_batch(
        data[int(offsets[a]) : int(offsets[b])],
        b - a,
        first.base_timestamp,
        max(h.max_timestamp for h in headers[lo:hi]),
        first.compression if compression is None else compression,
        first.base_offset,
        first.producer_id,
        first.producer_epoch,
        first.base_sequence,
        last_offset_delta=last.last_offset - first.base_offset,
        leader_epoch=first.partition_leader_epoch,
    )
