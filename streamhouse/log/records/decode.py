"""Decode record batches to Arrow: :func:`decode_batches` and :func:`decode_records`.

Decoding is vectorized. Where each record starts is found in numpy steps that do not grow
with the records: one step per record index across many small batches
(:func:`_record_ends_parallel`), or, for large batches, the chain of record-start candidates
(:func:`_record_ends_chained`); a plain loop only when neither finds the records (a record
over 8 KiB, damage, which it then names). Numpy then decodes every other field at once over
the array of starts, and Arrow copies keys and values out of the decompressed bytes. For SQL
sources (:func:`decode_records` with ``json_lines``) values are not copied at all: they become
views of the decompressed bytes (see :mod:`~streamhouse.log.records.json_lines`). Chunks of
up to :data:`~streamhouse.log.records.varints.SMALL` records and 64 KiB are decoded in plain
Python.

>>> from streamhouse.log.records.build import build_batch
>>> decode_batches(build_batch([b"a", b"b"], base_offset=7)).column("offset").to_pylist()
[7, 8]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cramjam
import numpy as np
import pyarrow as pa

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records import framing
from streamhouse.log.records.codecs import decompress, lz4_blocks
from streamhouse.log.records.header import (
    ATTR_COMPRESSION,
    BATCH_OVERHEAD,
    BatchHeader,
    Compression,
    split_batches,
    verify_crc,
)
from streamhouse.log.records.json_lines import (
    JsonLines,
    blank_between_values,
    value_views,
    views_of,
)
from streamhouse.log.records.varints import SMALL, read_varint, read_varints

__all__ = [
    "DECODED_SCHEMA",
    "HEADERS_TYPE",
    "VIEW_SCHEMA",
    "DecodedRecords",
    "decode_batches",
    "decode_records",
]

logger = logging.getLogger(__name__)

HEADERS_TYPE = pa.list_(pa.struct([("key", pa.string()), ("value", pa.binary())]))
DECODED_SCHEMA = pa.schema(
    [
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("ms")),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("headers", HEADERS_TYPE),
    ]
)
"""The Arrow schema of :func:`decode_batches` output; headers is an empty list, never null."""
VIEW_SCHEMA = DECODED_SCHEMA.set(3, pa.field("value", pa.binary_view()))
"""The schema of :func:`decode_records` with ``json_lines``: values are views, not copies."""

_CHUNK_RECORDS = 1 << 18
_PARALLEL_MIN = 16  # batches' worth of records to find boundaries with numpy
_CHUNK_BYTES = 1 << 28
_PAD = 16  # zero bytes after the records so fixed-width gathers stay in bounds
_SMALL_BYTES = 1 << 16
"""Few records of more bytes than this go the columnar way too: the plain-Python decoding
copies each value three times (a parallel query's exchange records are megabytes each)."""


def _record_ends(blob: bytes, pos: int, count: int) -> list[int]:
    """Where each of ``count`` records from ``pos`` ends (the next one starts)."""
    ends = []
    append = ends.append
    for _ in range(count):
        b = blob[pos]
        if b < 0x80:
            pos += 1 + (b >> 1)
        else:
            c = blob[pos + 1]
            if c < 0x80:
                pos += 2 + (((b & 0x7F) | (c << 7)) >> 1)
            else:
                pos = _skip_record(blob, pos)
        append(pos)
    return ends


def _skip_lut() -> np.ndarray:
    """Bytes from a record's start to its end, by its first two bytes as a little-endian
    uint16 (0: a longer length varint)."""
    pair = np.arange(1 << 16, dtype=np.int64)
    b0, b1 = pair & 0xFF, pair >> 8
    one = 1 + (b0 >> 1)
    two = 2 + (((b0 & 0x7F) | (b1 << 7)) >> 1)
    return np.where(b0 < 0x80, one, np.where(b1 < 0x80, two, 0))


_SKIP = _skip_lut()


def _record_ends_parallel(
    buf: np.ndarray, region_starts: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Record ends of many batches at once, one numpy step per record index.

    Each step advances every batch's cursor by one record, so the Python cost is per
    record index, not per record. Cursors of batches already done run on harmlessly
    (clipped) and are dropped. Records with 3+ byte lengths stall (the caller checks every
    batch ends on its boundary).
    """
    steps = int(counts.max())
    out = np.empty((steps, len(counts)), np.int64)
    # Every byte with the one after it, as a uint16: a strided view, nothing copied.
    pairs = np.ndarray((len(buf) - 1,), dtype="<u2", buffer=buf, strides=(1,))
    last = len(pairs) - 1
    ptr = region_starts.astype(np.int64)
    for k in range(steps):
        np.minimum(ptr, last, out=ptr)
        ptr += _SKIP.take(pairs[ptr])  # take() would copy a strided array: index it instead
        out[k] = ptr
    taken = np.arange(steps)[None, :] < counts[:, None]
    return out.T[taken]


_CANDIDATES_PER_RECORD = 8  # more (values full of zero bytes): the chain is not looked for
_MIN_BODY = 6  # attributes, timestamp delta, offset delta, key and value lengths, header count


def _record_ends_chained(buf: np.ndarray, total: int, n: int) -> np.ndarray | None:
    """The ends of the ``n`` records filling ``buf[:total]`` back to back, in numpy steps
    that do not grow with the records of a batch (a batch of 60,000 records is one chain).

    A record starts with its length (a varint of 1 or 2 bytes here, at least
    :data:`_MIN_BODY`), then its attributes byte, which is 0. So every record start is among
    the candidates ``p``: such a length at ``p``, then a zero byte. JSON values hold no zero
    byte, so the candidates are mostly the records themselves, each ending where the next
    begins: that is checked at once. Otherwise the records are the chain of candidates from
    byte 0, listed by doubling (the first ``2**k`` links, then with jumps of ``2**k`` the next
    ``2**k``: ``log2(n)`` steps over the candidates). None when the chain breaks off before
    ``n`` records (a longer length, an attributes byte that is not 0, damage) or values hold
    too many zero bytes: the caller then finds the ends one by one, and says what is wrong.
    """
    zeros = np.flatnonzero(buf[:total] == 0)
    if len(zeros) > _CANDIDATES_PER_RECORD * n:
        return None
    one = zeros[zeros >= 1] - 1  # a 1-byte length, not negative (zigzag bit 0 clear)
    first = buf[one]
    one = one[(first & 1 == 0) & (first >= 2 * _MIN_BODY) & (first < 0x80)]
    two = zeros[zeros >= 2] - 2  # a 2-byte length
    first = buf[two]
    two = two[(first & 0x81 == 0x80) & (buf[two + 1] < 0x80)]
    starts = np.sort(np.concatenate((one, two)), kind="stable")  # two sorted runs: a merge
    if len(starts) < n or starts[0] != 0:
        return None
    pairs = np.ndarray((len(buf) - 1,), dtype="<u2", buffer=buf, strides=(1,))
    ends = starts + _SKIP[pairs[starts]]
    if len(starts) == n and np.array_equal(ends[:-1], starts[1:]):
        return ends
    m = len(starts)
    dead = m  # the node past every candidate: where a broken chain goes, and stays
    link = np.searchsorted(starts, ends)
    found = link < m
    found[found] = starts[link[found]] == ends[found]
    link[~found] = dead
    link = np.append(link, dead)
    chain = np.zeros(1, np.int64)
    while len(chain) < n:
        chain = np.concatenate((chain, link[chain]))
        if len(chain) < n:
            link = link[link]
    chain = chain[:n]
    if chain[-1] == dead:  # (a chain that goes dead stays dead: its last node tells)
        return None
    return ends[chain]


def _skip_record(blob: bytes, pos: int) -> int:
    length, pos = read_varint(blob, pos)
    return pos + abs(length)


def _empty_headers(n: int) -> pa.Array:
    return pa.Array.from_buffers(
        HEADERS_TYPE,
        n,
        [None, pa.py_buffer(np.zeros(n + 1, np.int32))],
        children=[pa.array([], HEADERS_TYPE.value_type)],
    )


def _parse_headers(blob: bytes | memoryview, pos: int, end: int) -> list[tuple[str, bytes | None]]:
    count, pos = read_varint(blob, pos)
    out = []
    for _ in range(count):
        klen, pos = read_varint(blob, pos)
        if klen < 0:
            raise CorruptRecordError("record header with a null key")
        key = bytes(blob[pos : pos + klen]).decode()
        pos += klen
        vlen, pos = read_varint(blob, pos)
        value = None
        if vlen >= 0:
            value = bytes(blob[pos : pos + vlen])
            pos += vlen
        out.append((key, value))
    if pos != end:
        raise CorruptRecordError("record headers do not end where the record does")
    return out


def _slices(data: pa.Buffer, start: np.ndarray, length: np.ndarray, keep: np.ndarray) -> pa.Array:
    """Binary array of ``data[start:start+length]`` (null where length < 0) at ``keep``.

    The slices are increasing and disjoint, so ``[s0, e0, s1, e1, ...]`` are valid offsets of
    an array whose even elements are the slices; Arrow's ``take`` copies them out in C.
    """
    n = len(start)
    end = start + np.maximum(length, 0)
    big = int(end[-1]) >= 0x7FFFFFFF
    offsets = np.empty(2 * n, np.int64 if big else np.int32)
    offsets[0::2] = start
    offsets[1::2] = end
    validity = None
    if (length < 0).any():
        valid = np.ones(2 * n - 1, bool)
        valid[0::2] = length >= 0
        validity = pa.py_buffer(np.packbits(valid, bitorder="little"))
    interleaved = pa.Array.from_buffers(
        pa.large_binary() if big else pa.binary(),
        2 * n - 1,
        [validity, pa.py_buffer(offsets), data],
    )
    out = interleaved.take(pa.array(2 * keep))
    return out.cast(pa.binary()) if big else out


class _Region:
    """The records section of one data batch, as stored (or decompressed, for most codecs)."""

    __slots__ = ("block_max", "blocks", "bound", "data", "header", "high", "low", "source")

    def __init__(
        self, header: BatchHeader, view: memoryview, source: int, low: int, high: int
    ) -> None:
        self.header = header
        self.source = source  # which input buffer the batch is in
        self.low, self.high = low, high  # the offsets wanted: low <= offset < high
        self.data: memoryview | bytes | cramjam.Buffer | None = view
        self.blocks: list[tuple[bool, memoryview]] | None = None
        self.block_max = 0
        codec = header.attributes & ATTR_COMPRESSION
        if codec == Compression.LZ4 and (framed := lz4_blocks(view)) is not None:
            self.blocks, self.block_max = framed
            self.data = None
            self.bound = sum(len(b) if stored else self.block_max for stored, b in self.blocks)
        else:
            if codec:
                self.data = decompress(codec, view)
            self.bound = len(self.data)

    def copy_into(self, out: memoryview) -> int:
        """Write the records section at the start of ``out``; returns its length."""
        if self.blocks is None:
            n = len(self.data)  # type: ignore[arg-type]
            out[:n] = self.data  # type: ignore[index]
            return n
        pos = 0
        try:
            for stored, block in self.blocks:
                if stored:
                    out[pos : pos + len(block)] = block
                    pos += len(block)
                else:
                    end = pos + self.block_max
                    pos += cramjam.lz4.decompress_block_into(block, out[pos:end])
        except CorruptRecordError:
            raise
        except Exception as exc:
            raise CorruptRecordError(f"cannot decompress LZ4 records: {exc}") from exc
        return pos


def _assemble(regions: list[_Region]) -> tuple[np.ndarray, list[tuple[BatchHeader, int]]]:
    """The records sections of ``regions`` back to back in one buffer (zero-padded), and each
    batch's header and section length. LZ4 blocks decompress straight into the buffer."""
    buf = np.empty(sum(r.bound for r in regions) + _PAD, np.uint8)
    view = memoryview(buf)
    pos = 0
    batches = []
    for region in regions:
        size = region.copy_into(view[pos:])
        header = region.header
        if header.record_count * 7 > size:  # a record takes 7 bytes or more
            raise CorruptRecordError(
                f"batch at offset {header.base_offset} claims {header.record_count} records "
                f"in {size} bytes"
            )
        batches.append((header, size))
        pos += size
    buf[pos : pos + _PAD] = 0
    return buf[: pos + _PAD], batches


def record_ends(
    buf: np.ndarray,
    batches: Sequence[tuple[BatchHeader, int]],
    region_starts: np.ndarray,
    region_ends: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """Where each record of the records sections ``batches`` (``(header, size)``, back to back
    in ``buf`` from ``region_starts``) ends; ``CorruptRecordError`` if a batch's records do
    not fill it."""
    n = int(counts.sum())
    if n >= _PARALLEL_MIN * int(counts.max()):  # many short batches: a step per record index
        nxt = _record_ends_parallel(buf, region_starts, counts)
    else:
        nxt = _record_ends_chained(buf, int(region_ends[-1]), n)
    if nxt is not None and not np.array_equal(nxt[np.cumsum(counts) - 1], region_ends):
        nxt = None
    if nxt is None:  # a long record or a corrupt batch: find out which, one by one
        logger.debug("record boundaries: numpy search stalled, using the per-record loop")
        blob = buf.tobytes()
        ends: list[int] = []
        for (header, size), start, end in zip(
            batches, region_starts.tolist(), region_ends.tolist(), strict=True
        ):
            try:
                batch_ends = _record_ends(blob, start, header.record_count)
            except IndexError:
                batch_ends = [-1]
            if batch_ends[-1] != end:
                raise CorruptRecordError(
                    f"records of the batch at offset {header.base_offset} do not fill its "
                    f"{size} bytes"
                )
            ends += batch_ends
        nxt = np.array(ends, np.int64)

    return nxt


def _frame_numpy(
    buf: np.ndarray,
    batches: Sequence[tuple[BatchHeader, int]],
    region_starts: np.ndarray,
    region_ends: np.ndarray,
    counts: np.ndarray,
) -> framing.Frames:
    """:func:`~streamhouse.log.records.framing.frame` in numpy steps (without views);
    ``CorruptRecordError`` naming what is malformed."""
    total = int(region_ends[-1])
    n = int(counts.sum())
    nxt = record_ends(buf, batches, region_starts, region_ends, counts)

    p = np.empty(n, np.int64)
    p[0] = 0
    p[1:] = nxt[:-1]

    length, s = read_varints(buf, p, 5)
    body = p + s
    ok = (s > 0) & (length >= 0) & (body + length == nxt)
    q = body + 1  # skip the record's attributes byte
    ts_delta, s = read_varints(buf, q, 10)
    ok &= s > 0
    q += s
    off_delta, s = read_varints(buf, q, 5)
    ok &= s > 0
    q += s
    key_len, s = read_varints(buf, q, 5)
    ok &= (s > 0) & (key_len >= -1)
    key_start = q + s
    q = key_start + np.maximum(key_len, 0)
    value_len, s = read_varints(buf, np.minimum(q, total), 5)
    ok &= (s > 0) & (value_len >= -1)
    value_start = q + s
    q = value_start + np.maximum(value_len, 0)
    header_count, s = read_varints(buf, np.minimum(q, total), 5)
    plain = header_count == 0
    ok &= (s > 0) & (header_count >= 0) & (~plain | (q + s == nxt))
    ok &= plain | (q < nxt)
    if not ok.all():
        bad = int(np.argmin(ok))
        raise CorruptRecordError(f"malformed record at byte {int(p[bad])} of a batch")

    return framing.Frames(
        p, nxt, ts_delta, off_delta, key_start, key_len, value_start, value_len, header_count, None
    )


def _decode_chunk(regions: list[_Region], json_lines: bool) -> _Chunk | None:
    """Decode the records sections of ``regions`` (one per data batch) in one go."""
    buf, batches = _assemble(regions)
    total = len(buf) - _PAD
    counts = np.array([h.record_count for h, _ in batches], np.int64)
    region_ends = np.cumsum([size for _, size in batches], dtype=np.int64)
    region_starts = region_ends - [size for _, size in batches]
    n = int(counts.sum())
    if n <= SMALL and total <= _SMALL_BYTES:
        return _decode_small(buf.tobytes(), regions, batches, json_lines)
    views = json_lines and len(buf) < 1 << 31  # a view's offset is an int32
    frames = (
        framing.frame(buf, region_starts, region_ends, counts, views) if framing.native else None
    )
    if frames is None:  # no C framing, or a malformed record (named here)
        frames = _frame_numpy(buf, batches, region_starts, region_ends, counts)
    off_delta, ts_delta = frames.off_delta, frames.ts_delta
    key_start, key_len = frames.key_start, frames.key_len
    value_start, value_len = frames.value_start, frames.value_len
    plain, nxt = frames.header_count == 0, frames.end

    base_offset = np.repeat(np.array([h.base_offset for h, _ in batches], np.int64), counts)
    offsets = base_offset + off_delta
    base_ts = np.array(
        [h.max_timestamp if h.timestamp_type else h.base_timestamp for h, _ in batches],
        np.int64,
    )
    log_append = np.repeat(np.array([h.timestamp_type for h, _ in batches], bool), counts)
    timestamps = np.repeat(base_ts, counts) + np.where(log_append, 0, ts_delta)

    low = np.repeat(np.array([r.low for r in regions], np.int64), counts)
    high = np.repeat(np.array([r.high for r in regions], np.int64), counts)
    wanted = (offsets >= low) & (offsets < high)
    kept = np.flatnonzero(wanted) if not wanted.all() else np.arange(n)
    if len(kept) == 0:
        return None
    source = np.repeat(np.array([r.source for r in regions], np.int32), counts)[kept]
    data = pa.py_buffer(buf)
    if plain.all():
        headers = _empty_headers(len(kept))
    else:
        hstart = value_start + np.maximum(value_len, 0)
        blob = memoryview(buf)  # not a copy of the records (megabytes in an exchange record)
        rows: list[list[tuple[str, bytes | None]]] = []
        try:
            for i in kept.tolist():
                rows.append([] if plain[i] else _parse_headers(blob, int(hstart[i]), int(nxt[i])))
        except (IndexError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"malformed record headers: {exc}") from exc
        headers = pa.array(rows, HEADERS_TYPE)
    if (key_len < 0).all():  # no keys (as most producers send)
        keys = pa.nulls(len(kept), pa.binary())
    else:  # copied out before the buffer is blanked
        keys = _slices(data, key_start, key_len, kept)
    lines = None
    if json_lines:
        if frames.views is not None:
            values = views_of(data, frames.views, value_len, kept, n)
        elif views:
            values = value_views(data, buf, value_start[kept], value_len[kept])
        else:
            values = _slices(data, value_start, value_len, kept).cast(pa.binary_view())
        lines = blank_between_values(buf, total, value_start[kept], value_len[kept])
    else:
        values = _slices(data, value_start, value_len, kept)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(offsets[kept], pa.int64()),
            pa.array(timestamps[kept].view("datetime64[ms]"), pa.timestamp("ms")),
            keys,
            values,
            headers,
        ],
        schema=VIEW_SCHEMA if json_lines else DECODED_SCHEMA,
    )
    return _Chunk(batch, source, lines)


def _decode_small(
    blob: bytes,
    regions: list[_Region],
    batches: list[tuple[BatchHeader, int]],
    json_lines: bool,
) -> _Chunk | None:
    """Decode a few records in plain Python (numpy's per-call cost dominates below ~10)."""
    cols: tuple[list, list, list, list, list] = ([], [], [], [], [])
    source: list[int] = []
    pos = 0
    for region, (header, size) in zip(regions, batches, strict=True):
        end_of_region = pos + size
        try:
            for _ in range(header.record_count):
                length, pos = read_varint(blob, pos)
                end = pos + length
                if length < 0 or end > end_of_region:
                    raise CorruptRecordError("record length runs past its batch")
                ts_delta, pos = read_varint(blob, pos + 1)
                off_delta, pos = read_varint(blob, pos)
                fields = []
                for _ in range(2):
                    size_, pos = read_varint(blob, pos)
                    if size_ < -1 or pos + size_ > end:
                        raise CorruptRecordError("record key or value runs past its record")
                    fields.append(None if size_ < 0 else blob[pos : pos + size_])
                    pos += max(size_, 0)
                record_headers = _parse_headers(blob, pos, end)
                pos = end
                offset = header.base_offset + off_delta
                if not region.low <= offset < region.high:
                    continue
                if header.timestamp_type:
                    ts = header.max_timestamp
                else:
                    ts = header.base_timestamp + ts_delta
                for col, item in zip(cols, (offset, ts, *fields, record_headers), strict=True):
                    col.append(item)
                source.append(region.source)
        except (IndexError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"malformed record: {exc}") from exc
        if pos != end_of_region:
            raise CorruptRecordError(
                f"records of the batch at offset {header.base_offset} do not fill its {size} bytes"
            )
    if not cols[0]:
        return None
    schema = VIEW_SCHEMA if json_lines else DECODED_SCHEMA
    batch = pa.RecordBatch.from_arrays(
        [pa.array(col, field.type) for col, field in zip(cols, schema, strict=True)],
        schema=schema,
    )
    lines = None
    if json_lines:
        rows = [i for i, value in enumerate(cols[3]) if value]
        text = b"".join(cols[3][i] + b"\n" for i in rows)
        sizes = [len(cols[3][i]) + 1 for i in rows]
        starts = np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)))
        lines = JsonLines(np.array(rows, np.int64), lambda: (pa.py_buffer(text), starts))
    return _Chunk(batch, np.array(source, np.int32), lines)


@dataclass(frozen=True, slots=True)
class _Chunk:
    batch: pa.RecordBatch
    source: np.ndarray
    lines: JsonLines | None


@dataclass(frozen=True, slots=True)
class DecodedRecords:
    """What :func:`decode_records` returns.

    ``table`` has one chunk per decoded chunk; ``source[i]`` is the index of the input buffer
    row ``i`` came from; ``lines`` (when asked for) holds each chunk's values as JSON lines.
    """

    table: pa.Table
    source: np.ndarray
    lines: list[JsonLines]


_ALL = (0, (1 << 63) - 1)


def _aborted(header: BatchHeader, aborted: Sequence[tuple[int, int, int]]) -> bool:
    """Whether the batch belongs to one of the ``aborted`` transactions of its partition."""
    if not header.is_transactional:
        return False
    offset = header.base_offset
    return any(
        producer == header.producer_id and first <= offset <= last
        for producer, first, last in aborted
    )


def decode_batches(
    data: bytes | memoryview | Sequence[bytes | memoryview],
    *,
    min_offset: int = 0,
    verify: bool = True,
) -> pa.Table:
    """All records of the concatenated batches in ``data`` as one table of DECODED_SCHEMA.

    Records below ``min_offset`` are dropped and control batches (transaction markers)
    skipped; records of aborted transactions are not filtered out. CorruptRecordError on
    truncation, a bad CRC (when ``verify``) or a malformed record.
    """
    buffers = [data] if isinstance(data, bytes | bytearray | memoryview) else data
    ranges = [(min_offset, _ALL[1])] * len(buffers)
    return decode_records(buffers, ranges, verify=verify).table


def decode_records(
    buffers: Sequence[bytes | memoryview],
    ranges: Sequence[tuple[int, int]] | None = None,
    *,
    verify: bool = True,
    json_lines: bool = False,
    aborted: Sequence[Sequence[tuple[int, int, int]]] | None = None,
) -> DecodedRecords:
    """The records of ``buffers`` (each holding whole batches) with offsets in ``ranges[i]``
    (``low <= offset < high``, per buffer), in order, and which buffer each came from.

    ``aborted[i]`` lists the aborted transactions of buffer ``i``'s partition as (producer
    id, first offset, marker offset): their batches are left out whole (a transactional batch
    belongs to one transaction), so a record is never looked at on its own.

    With ``json_lines``, values are not copied out: the ``value`` column holds views of the
    decoded bytes (:data:`VIEW_SCHEMA`), and the bytes between values are blanked so that
    ``lines`` hands them to a JSON reader as they lie. Control batches are skipped.
    """
    out: list[_Chunk] = []
    regions: list[_Region] = []
    pending_records = pending_bytes = 0
    for index, buffer in enumerate(buffers):
        low, high = ranges[index] if ranges is not None else _ALL
        view = memoryview(buffer)
        for start, end, header in split_batches(view):
            if verify and not verify_crc(view, start, end):
                raise CorruptRecordError(
                    f"CRC mismatch in the batch at offset {header.base_offset} (byte {start})"
                )
            if header.is_control or header.record_count <= 0:
                continue
            if header.last_offset < low or header.base_offset >= high:
                continue
            if aborted is not None and aborted[index] and _aborted(header, aborted[index]):
                continue
            region = _Region(header, view[start + BATCH_OVERHEAD : end], index, low, high)
            regions.append(region)
            pending_records += header.record_count
            pending_bytes += region.bound
            if pending_records >= _CHUNK_RECORDS or pending_bytes >= _CHUNK_BYTES:
                if (chunk := _decode_chunk(regions, json_lines)) is not None:
                    out.append(chunk)
                regions = []
                pending_records = pending_bytes = 0
    if regions and (chunk := _decode_chunk(regions, json_lines)) is not None:
        out.append(chunk)
    schema = VIEW_SCHEMA if json_lines else DECODED_SCHEMA
    return DecodedRecords(
        pa.Table.from_batches([c.batch for c in out], schema=schema),
        np.concatenate([c.source for c in out]) if out else np.zeros(0, np.int32),
        [c.lines for c in out if c.lines is not None],
    )
