"""Kafka RecordBatch v2 (magic 2): parse, verify, re-stamp, build and decode to Arrow.

A batch is a 61-byte header followed by ``record_count`` records, possibly compressed as
one block. The layout (big-endian)::

    baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 |
    crc uint32 | attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 |
    maxTimestamp int64 | producerId int64 | producerEpoch int16 | baseSequence int32 |
    recordCount int32 | records...

``batchLength`` counts the bytes after itself; the CRC-32C covers ``attributes`` to the end,
so re-stamping ``baseOffset`` never touches it. Each record is::

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headerCount varint |
    (headerKeyLength varint | headerKey | headerValueLength varint | headerValue)*

Varints are zigzag-encoded; a length of -1 means null.

Decoding is vectorized: a tight loop finds where each record starts (each begins with its
own length, so this part is sequential), then numpy decodes every other field at once over
the array of starts, and Arrow copies keys and values out of the decompressed bytes. For SQL
sources (:func:`decode_records` with ``json_lines``) values are not copied at all: they become
views of the decompressed bytes, and the bytes between them are blanked so that the buffer is
newline-delimited JSON that pyarrow's reader parses where it lies.

>>> batch = build_batch([b"a", None], keys=[b"k", None], timestamps=[1000, 1001])
>>> decode_batches(batch).column("value").to_pylist()
[b'a', None]
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import cramjam
import crc32c
import lz4.frame
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import CorruptRecordError, RecordTooLargeError

__all__ = [
    "BATCH_OVERHEAD",
    "DECODED_SCHEMA",
    "VIEW_SCHEMA",
    "BatchHeader",
    "Compression",
    "DecodedRecords",
    "JsonLines",
    "build_batch",
    "decode_batches",
    "decode_records",
    "read_header",
    "restamp",
    "shift_offsets",
    "split_batches",
    "verify_crc",
]

logger = logging.getLogger(__name__)


class Compression(IntEnum):
    """The codec of a batch: the low three bits of its attributes."""

    NONE = 0
    GZIP = 1
    SNAPPY = 2
    LZ4 = 3
    ZSTD = 4


BATCH_OVERHEAD = 61
"""Bytes of a batch header, baseOffset through recordCount."""

_HEADER = struct.Struct(">qiibIhiqqqhii")
assert _HEADER.size == BATCH_OVERHEAD
_BASE_OFFSET = struct.Struct(">q")  # bytes 0-8 of a batch, outside the CRC
_BATCH_LENGTH = struct.Struct(">i")  # bytes 8-12: the size of the rest of the batch
_CRC_START = 21  # attributes
_LENGTH_END = 12  # batchLength counts the bytes after offset 12
_MIN_BATCH_LENGTH = BATCH_OVERHEAD - _LENGTH_END

_ATTR_COMPRESSION = 0x07
_ATTR_TIMESTAMP_TYPE = 0x08
_ATTR_TRANSACTIONAL = 0x10
_ATTR_CONTROL = 0x20

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


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The 61-byte header of one record batch."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int

    @property
    def compression(self) -> Compression:
        """The codec of the records section."""
        return Compression(self.attributes & _ATTR_COMPRESSION)

    @property
    def timestamp_type(self) -> int:
        """0 if records carry create time, 1 if the broker's log-append time (max_timestamp)."""
        return 1 if self.attributes & _ATTR_TIMESTAMP_TYPE else 0

    @property
    def is_transactional(self) -> bool:
        """True if the batch belongs to a transaction."""
        return bool(self.attributes & _ATTR_TRANSACTIONAL)

    @property
    def is_control(self) -> bool:
        """True if the batch holds transaction markers rather than data."""
        return bool(self.attributes & _ATTR_CONTROL)

    @property
    def size(self) -> int:
        """The whole batch in bytes."""
        return self.batch_length + _LENGTH_END

    @property
    def last_offset(self) -> int:
        """The offset of the last record."""
        return self.base_offset + self.last_offset_delta


# --------------------------------------------------------------------------- framing


def read_header(buf: bytes | memoryview, pos: int = 0) -> BatchHeader:
    """Parse the batch header at ``pos``; CorruptRecordError if short or not magic 2."""
    if len(buf) - pos < BATCH_OVERHEAD:
        raise CorruptRecordError(
            f"truncated batch header at byte {pos}: {len(buf) - pos} of {BATCH_OVERHEAD} bytes"
        )
    header = BatchHeader(*_HEADER.unpack_from(buf, pos))
    if header.magic != 2:
        raise CorruptRecordError(f"batch at byte {pos} has magic {header.magic}, expected 2")
    if header.batch_length < _MIN_BATCH_LENGTH:
        raise CorruptRecordError(f"batch at byte {pos} has batchLength {header.batch_length}")
    return header


def split_batches(buf: bytes | memoryview) -> list[tuple[int, int, BatchHeader]]:
    """The ``(start, end, header)`` of each batch in concatenated batches.

    CorruptRecordError if the last batch is truncated or any batch is not magic 2.
    """
    out: list[tuple[int, int, BatchHeader]] = []
    pos, total = 0, len(buf)
    while pos < total:
        header = read_header(buf, pos)
        end = pos + header.size
        if end > total:
            raise CorruptRecordError(
                f"truncated batch at byte {pos}: {total - pos} of {header.size} bytes"
            )
        out.append((pos, end, header))
        pos = end
    return out


def verify_crc(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> bool:
    """True if the CRC-32C stored in the batch ``buf[start:end]`` matches its contents."""
    view = memoryview(buf)
    if end is None:
        end = len(view)
    if end - start < BATCH_OVERHEAD:
        return False
    (stored,) = struct.unpack_from(">I", view, start + 17)
    return crc32c.crc32c(view[start + _CRC_START : end]) == stored


def restamp(batch: bytes, base_offset: int) -> bytes:
    """The batch with baseOffset replaced; the CRC stays valid as it does not cover it."""
    return struct.pack(">q", base_offset) + batch[8:]


def first_base_offset(run: bytes | memoryview) -> int:
    """The baseOffset of the first batch of ``run``."""
    return _BASE_OFFSET.unpack_from(run, 0)[0]


def shift_offsets(run: bytes | memoryview, delta: int) -> bytes:
    """A copy of the whole batches ``run`` with ``delta`` added to each baseOffset.

    Only the 8 bytes of each header change (outside every CRC); the offsets are added in one
    numpy operation. CorruptRecordError if a batch is cut short.

    >>> run = build_batch([b"a", b"b"], base_offset=0) + build_batch([b"c"], base_offset=2)
    >>> [h.base_offset for _, _, h in split_batches(shift_offsets(run, 40))]
    [40, 42]
    """
    view = memoryview(run)
    starts, pos, total = [], 0, len(view)
    while pos < total:  # one step per batch, not per record
        if total - pos < _LENGTH_END:
            raise CorruptRecordError(f"truncated batch header at byte {pos}")
        starts.append(pos)
        pos += _LENGTH_END + _BATCH_LENGTH.unpack_from(view, pos + 8)[0]
    if pos != total:
        raise CorruptRecordError(f"truncated batch at byte {starts[-1]}")
    out = np.frombuffer(bytearray(view), dtype=np.uint8)
    where = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(8)
    offsets = out[where].copy().view(">i8")[:, 0] + np.int64(delta)
    out[where] = offsets.astype(">i8").view(np.uint8).reshape(-1, 8)
    return out.tobytes()


# --------------------------------------------------------------------------- codecs

_XERIAL_MAGIC = b"\x82SNAPPY\x00"


def _snappy_decompress(data: bytes | memoryview) -> bytes | cramjam.Buffer:
    """Raw snappy, or the xerial framing Kafka clients write."""
    view = memoryview(data)
    if bytes(view[:8]) != _XERIAL_MAGIC:
        return cramjam.snappy.decompress_raw(view)
    blocks, pos, total = [], 16, len(view)
    while pos < total:
        if pos + 4 > total:
            raise CorruptRecordError("truncated xerial snappy block length")
        (length,) = struct.unpack_from(">i", view, pos)
        pos += 4
        if length < 0 or pos + length > total:
            raise CorruptRecordError("truncated xerial snappy block")
        blocks.append(cramjam.snappy.decompress_raw(view[pos : pos + length]))
        pos += length
    return b"".join(blocks)


def _lz4_decompress(data: memoryview) -> bytes | cramjam.Buffer:
    """An LZ4 frame; cramjam is ~5x faster when the frame omits its content size."""
    try:
        return cramjam.lz4.decompress(data)
    except Exception:  # e.g. a bad header checksum some old clients wrote: lz4 ignores it
        return lz4.frame.decompress(data)


_LZ4_MAGIC = 0x184D2204
_LZ4_BLOCK_MAX = {4: 1 << 16, 5: 1 << 18, 6: 1 << 20, 7: 1 << 22}


def _lz4_blocks(data: memoryview) -> tuple[list[tuple[bool, memoryview]], int] | None:
    """The blocks of one LZ4 frame of independent blocks: ([(stored, block)], max block size).

    None when the frame is anything else (linked blocks, a dictionary, several frames, or not
    well formed): such a frame is decompressed whole. A frame has a block per 64 KiB or more of
    data, so this loop runs per block, never per record.
    """
    total = len(data)
    if total < 7 or struct.unpack_from("<I", data, 0)[0] != _LZ4_MAGIC:
        return None
    flags, descriptor = data[4], data[5]
    block_max = _LZ4_BLOCK_MAX.get((descriptor >> 4) & 0x07)
    if flags >> 6 != 1 or not flags & 0x20 or flags & 0x01 or block_max is None:
        return None  # not version 1, linked blocks, or a dictionary id
    pos = 7 + (8 if flags & 0x08 else 0)  # FLG, BD, [content size], header checksum
    block_checksum = 4 if flags & 0x10 else 0
    blocks: list[tuple[bool, memoryview]] = []
    unpack = struct.Struct("<I").unpack_from
    while pos + 4 <= total:
        (word,) = unpack(data, pos)
        pos += 4
        if word == 0:
            end = pos + (4 if flags & 0x04 else 0)  # content checksum
            return (blocks, block_max) if end == total else None
        size = word & 0x7FFFFFFF
        if size > block_max or pos + size + block_checksum > total:
            return None
        blocks.append((bool(word >> 31), data[pos : pos + size]))
        pos += size + block_checksum
    return None


def _decompress(codec: int, data: memoryview) -> bytes | cramjam.Buffer:
    try:
        if codec == Compression.LZ4:
            return _lz4_decompress(data)
        if codec == Compression.ZSTD:
            return cramjam.zstd.decompress(data)
        if codec == Compression.SNAPPY:
            return _snappy_decompress(data)
        if codec == Compression.GZIP:
            return cramjam.gzip.decompress(data)
    except CorruptRecordError:
        raise
    except Exception as exc:
        raise CorruptRecordError(
            f"cannot decompress {Compression(codec).name} records: {exc}"
        ) from exc
    raise CorruptRecordError(f"unknown compression codec {codec}")


def _compress(codec: Compression, data: bytes | memoryview) -> bytes | memoryview:
    if codec == Compression.NONE:
        return data
    if codec == Compression.LZ4:
        # Independent blocks and no content size: what every Kafka client can read.
        return lz4.frame.compress(data, block_linked=False, store_size=False)
    if codec == Compression.ZSTD:
        return bytes(cramjam.zstd.compress(data))
    if codec == Compression.SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == Compression.GZIP:
        return bytes(cramjam.gzip.compress(data))
    raise ValueError(f"unknown compression {codec!r}")


# --------------------------------------------------------------------------- varints

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)
_COLS = np.arange(10, dtype=np.int64)
_SMALL = 8  # batches this small are built and decoded in plain Python
_PAD = 16  # zero bytes after the records so fixed-width gathers stay in bounds


def _read_varints(buf: np.ndarray, pos: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag varints at every ``pos``: (values int64, sizes int64); size 0 if unterminated."""
    b0 = buf.take(pos, mode="clip").astype(np.int64)
    more = b0 >= 0x80
    if not more.any():
        return (b0 >> 1) ^ -(b0 & 1), np.ones(len(pos), np.int64)
    b1 = buf.take(pos + 1, mode="clip").astype(np.int64)
    if not (more & (b1 >= 0x80)).any():
        u = np.where(more, (b0 & 0x7F) | (b1 << 7), b0)
        return (u >> 1) ^ -(u & 1), more + 1
    b = buf.take(pos[:, None] + _COLS[:width], mode="clip")
    last = b < 0x80
    size = last.argmax(axis=1) + 1
    size[~last.any(axis=1)] = 0
    groups = (b & 0x7F).astype(np.uint64) << _SHIFTS[:width]
    groups[_COLS[:width] >= size[:, None]] = 0
    u = groups.sum(axis=1, dtype=np.uint64)
    v = (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)
    return v, size


def _zigzag(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).view(np.uint64)


def _varint_size(u: np.ndarray) -> np.ndarray:
    size = np.ones(len(u), np.int64)
    for k in range(1, 10):
        big = u >= np.uint64(1 << (7 * k))
        if not big.any():
            break
        size += big
    return size


def _varint_matrix(u: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of ``u`` (already zigzagged) as an (n, width) matrix and its valid mask."""
    width = int(size.max()) if len(size) else 1
    if width == 1:
        return u.astype(np.uint8)[:, None], np.ones((len(u), 1), bool)
    cols = _COLS[:width]
    b = ((u[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    b |= (cols < (size[:, None] - 1)).view(np.uint8) << 7
    return b, cols < size[:, None]


def _encode_varint(value: int) -> bytes:
    u = (value << 1) ^ (value >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """One zigzag varint at ``pos``: (value, next position)."""
    u, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        u |= (b & 0x7F) << shift
        if b < 0x80:
            return (u >> 1) ^ -(u & 1), pos
        shift += 7
        if shift > 63:
            raise CorruptRecordError("varint longer than 10 bytes")


# --------------------------------------------------------------------------- build


def _as_binary(values: Sequence[bytes | None] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """``values`` as one Arrow binary array (Arrow string arrays are reinterpreted, not copied)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        return pa.array(values, pa.binary())
    if values.type != pa.binary():
        values = values.cast(pa.binary())
    return values


def _binary_lengths(arr: pa.Array) -> np.ndarray:
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets).astype(np.int64)
    if arr.null_count:
        lengths[arr.is_null().to_numpy(zero_copy_only=False)] = -1
    return lengths


def _binary_from_matrix(b: np.ndarray, mask: np.ndarray) -> pa.Array:
    """A binary array whose element i is the masked bytes of row i."""
    data = b[mask]
    offsets = np.zeros(len(b) + 1, np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(b), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts = [_encode_varint(len(headers))]
    for key, value in headers:
        k = key.encode()
        parts += (_encode_varint(len(k)), k)
        if value is None:
            parts.append(_encode_varint(-1))
        else:
            parts += (_encode_varint(len(value)), bytes(value))
    return b"".join(parts)


def build_batch(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    timestamps: Sequence[int] | None = None,
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None = None,
    *,
    compression: Compression = Compression.NONE,
    base_offset: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """One RecordBatch v2 holding the records, offsets ``base_offset`` onwards.

    ``values`` and ``keys`` may be Arrow binary or string arrays (taken as they are, without a
    round trip through Python objects). ``timestamps`` are ms since the epoch (default: now,
    for all records). ValueError if the batch would be empty or the sequences differ in length.
    """
    n = len(values)
    if n == 0:
        raise ValueError("a record batch holds at least one record")
    for name, seq in (("keys", keys), ("timestamps", timestamps), ("headers", headers)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} items, values has {n}")
    compression = Compression(compression)

    if n <= _SMALL:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            values = _as_binary(values).to_pylist()
        if isinstance(keys, pa.Array | pa.ChunkedArray):
            keys = _as_binary(keys).to_pylist()
        data, base_ts, max_ts = _encode_records(values, keys, timestamps, headers)
        return _frame(
            data,
            n,
            base_ts,
            max_ts,
            compression,
            base_offset,
            producer_id,
            producer_epoch,
            base_sequence,
        )
    value_arr = _as_binary(values)
    value_len = _binary_lengths(value_arr)
    if timestamps is None:
        base_ts = max_ts = int(time.time() * 1000)
        ts_delta = np.zeros(n, np.int64)
    else:
        ts = np.asarray(timestamps, dtype=np.int64)
        base_ts, max_ts = int(ts[0]), int(ts.max())
        ts_delta = ts - base_ts
    if keys is None:
        key_arr, key_len = None, np.full(n, -1, np.int64)
    else:
        key_arr = _as_binary(keys)
        key_len = _binary_lengths(key_arr)
    if headers is None or not any(headers):
        tail: pa.Array | pa.Scalar = pa.scalar(b"\x00")
        tail_len = np.ones(n, np.int64)
    else:
        tail = pa.array([_encode_headers(h) for h in headers], pa.binary())
        tail_len = _binary_lengths(tail)

    fields = [
        _zigzag(ts_delta),
        _zigzag(np.arange(n, dtype=np.int64)),
        _zigzag(key_len),
        _zigzag(value_len),
    ]
    sizes = [_varint_size(u) for u in fields]
    body_len = 1 + sum(sizes) + np.maximum(key_len, 0) + np.maximum(value_len, 0) + tail_len
    length_u = _zigzag(body_len)
    fields.insert(0, length_u)
    sizes.insert(0, _varint_size(length_u))
    mats = [_varint_matrix(u, s) for u, s in zip(fields, sizes, strict=True)]
    attr = (np.zeros((n, 1), np.uint8), np.ones((n, 1), bool))
    # length | attributes | timestampDelta | offsetDelta | keyLength  [key]  valueLength
    head = [mats[0], attr, mats[1], mats[2], mats[3]]
    if key_arr is None:
        head.append(mats[4])
        prefix = _binary_from_matrix(
            np.hstack([m[0] for m in head]), np.hstack([m[1] for m in head])
        )
        parts = [prefix, value_arr, tail]
    else:
        prefix = _binary_from_matrix(
            np.hstack([m[0] for m in head]), np.hstack([m[1] for m in head])
        )
        middle = _binary_from_matrix(*mats[4])
        parts = [prefix, key_arr, middle, value_arr, tail]
    joined = pc.binary_join_element_wise(
        *parts, pa.scalar(b""), null_handling="replace", null_replacement=""
    )
    offsets = np.frombuffer(joined.buffers()[1], np.int32)
    records = memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[n])]

    return _frame(
        records,
        n,
        base_ts,
        max_ts,
        compression,
        base_offset,
        producer_id,
        producer_epoch,
        base_sequence,
    )


def _frame(
    records: bytes | memoryview,
    n: int,
    base_ts: int,
    max_ts: int,
    compression: Compression,
    base_offset: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
) -> bytes:
    """Compress the records and put the batch header with its CRC in front."""
    payload = _compress(compression, records)
    batch_length = BATCH_OVERHEAD - _LENGTH_END + len(payload)
    if batch_length > 0x7FFFFFFF:
        raise RecordTooLargeError(f"record batch of {batch_length} bytes exceeds 2 GiB")
    body = struct.pack(
        ">hiqqqhii",
        int(compression),
        n - 1,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        n,
    )
    crc = crc32c.crc32c(payload, crc32c.crc32c(body))
    return b"".join((struct.pack(">qiibI", base_offset, batch_length, -1, 2, crc), body, payload))


def _encode_records(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None,
    timestamps: Sequence[int] | None,
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
) -> tuple[bytes, int, int]:
    """Records section of a few records, in plain Python: (bytes, base ts, max ts)."""
    if timestamps is None:
        timestamps = [int(time.time() * 1000)] * len(values)
    base_ts = int(timestamps[0])
    parts = []
    for i, value in enumerate(values):
        key = keys[i] if keys is not None else None
        body = [
            b"\x00",
            _encode_varint(int(timestamps[i]) - base_ts),
            _encode_varint(i),
            _encode_varint(-1) if key is None else _encode_varint(len(key)) + bytes(key),
            _encode_varint(-1) if value is None else _encode_varint(len(value)) + bytes(value),
            _encode_headers(headers[i]) if headers is not None else b"\x00",
        ]
        record = b"".join(body)
        parts += (_encode_varint(len(record)), record)
    return b"".join(parts), base_ts, max(int(t) for t in timestamps)


# --------------------------------------------------------------------------- decode

_CHUNK_RECORDS = 1 << 18
_PARALLEL_MIN = 16  # batches' worth of records to find boundaries with numpy
_CHUNK_BYTES = 1 << 28


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


def _skip_record(blob: bytes, pos: int) -> int:
    length, pos = _read_varint(blob, pos)
    return pos + abs(length)


def _empty_headers(n: int) -> pa.Array:
    return pa.Array.from_buffers(
        HEADERS_TYPE,
        n,
        [None, pa.py_buffer(np.zeros(n + 1, np.int32))],
        children=[pa.array([], HEADERS_TYPE.value_type)],
    )


def _parse_headers(blob: bytes, pos: int, end: int) -> list[tuple[str, bytes | None]]:
    count, pos = _read_varint(blob, pos)
    out = []
    for _ in range(count):
        klen, pos = _read_varint(blob, pos)
        if klen < 0:
            raise CorruptRecordError("record header with a null key")
        key = blob[pos : pos + klen].decode()
        pos += klen
        vlen, pos = _read_varint(blob, pos)
        value = None
        if vlen >= 0:
            value = blob[pos : pos + vlen]
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
        codec = header.attributes & _ATTR_COMPRESSION
        if codec == Compression.LZ4 and (framed := _lz4_blocks(view)) is not None:
            self.blocks, self.block_max = framed
            self.data = None
            self.bound = sum(len(b) if stored else self.block_max for stored, b in self.blocks)
        else:
            if codec:
                self.data = _decompress(codec, view)
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


def _decode_chunk(regions: list[_Region], json_lines: bool) -> _Chunk | None:
    """Decode the records sections of ``regions`` (one per data batch) in one go."""
    buf, batches = _assemble(regions)
    total = len(buf) - _PAD
    counts = np.array([h.record_count for h, _ in batches], np.int64)
    region_ends = np.cumsum([size for _, size in batches], dtype=np.int64)
    region_starts = region_ends - [size for _, size in batches]
    n = int(counts.sum())
    if n <= _SMALL:
        return _decode_small(buf.tobytes(), regions, batches, json_lines)
    nxt = None
    if n >= _PARALLEL_MIN * int(counts.max()):
        nxt = _record_ends_parallel(buf, region_starts, counts)
        if not np.array_equal(nxt[np.cumsum(counts) - 1], region_ends):
            logger.debug("record boundaries: numpy search stalled, using the per-record loop")
            nxt = None  # a long record or a corrupt batch: find out which, one by one
    if nxt is None:
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

    p = np.empty(n, np.int64)
    p[0] = 0
    p[1:] = nxt[:-1]

    length, s = _read_varints(buf, p, 5)
    body = p + s
    ok = (s > 0) & (length >= 0) & (body + length == nxt)
    q = body + 1  # skip the record's attributes byte
    ts_delta, s = _read_varints(buf, q, 10)
    ok &= s > 0
    q += s
    off_delta, s = _read_varints(buf, q, 5)
    ok &= s > 0
    q += s
    key_len, s = _read_varints(buf, q, 5)
    ok &= (s > 0) & (key_len >= -1)
    key_start = q + s
    q = key_start + np.maximum(key_len, 0)
    value_len, s = _read_varints(buf, np.minimum(q, total), 5)
    ok &= (s > 0) & (value_len >= -1)
    value_start = q + s
    q = value_start + np.maximum(value_len, 0)
    header_count, s = _read_varints(buf, np.minimum(q, total), 5)
    plain = header_count == 0
    ok &= (s > 0) & (header_count >= 0) & (~plain | (q + s == nxt))
    ok &= plain | (q < nxt)
    if not ok.all():
        bad = int(np.argmin(ok))
        raise CorruptRecordError(f"malformed record at byte {int(p[bad])} of a batch")

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
        blob = buf.tobytes()
        rows: list[list[tuple[str, bytes | None]]] = []
        try:
            for i in kept.tolist():
                rows.append([] if plain[i] else _parse_headers(blob, int(hstart[i]), int(nxt[i])))
        except (IndexError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"malformed record headers: {exc}") from exc
        headers = pa.array(rows, HEADERS_TYPE)
    keys = _slices(data, key_start, key_len, kept)  # copied out before the buffer is blanked
    lines = None
    if json_lines:
        if len(buf) < 1 << 31:  # a view's offset is an int32
            values = _views(data, buf, value_start[kept], value_len[kept])
        else:
            values = _slices(data, value_start, value_len, kept).cast(pa.binary_view())
        lines = _blank_between_values(buf, total, value_start[kept], value_len[kept])
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


def _views(data: pa.Buffer, buf: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.Array:
    """Binary view array of ``buf[start:start+length]`` (null where length < 0), without
    copying: a value longer than 12 bytes is a view into ``data``; a shorter one is inlined."""
    n = len(start)
    size = np.maximum(length, 0)
    words = np.zeros((n, 4), np.int32)  # length | inline bytes, or prefix | buffer 0 | offset
    words[:, 0] = size
    long = size > 12
    words[long, 3] = start[long]
    raw = words.view(np.uint8).reshape(n, 16)
    short = np.flatnonzero(~long)
    for k in range(4):  # a long value's first four bytes
        raw[:, 4 + k] = buf.take(start + k, mode="clip")
    if len(short):  # a short value is inlined, zero-padded
        head = buf.take(start[short, None] + _COLS12, mode="clip")
        head[_COLS12[None, :] >= size[short, None]] = 0
        raw[short, 4:] = head
    validity = None
    if (length < 0).any():
        validity = pa.py_buffer(np.packbits(length >= 0, bitorder="little"))
    return pa.Array.from_buffers(pa.binary_view(), n, [validity, pa.py_buffer(raw), data])


_COLS12 = np.arange(12, dtype=np.int64)
_BLANK_GAPS = 1 << 14


def _blank_between_values(
    buf: np.ndarray, total: int, start: np.ndarray, length: np.ndarray
) -> JsonLines:
    """The values in ``buf[:total]`` as newline-delimited text, made in place when first
    asked for: every byte outside the values (non-empty ones) becomes a space, and a newline
    follows each value (over the byte after it, which is part of its record). The caller
    copies out what it needs of those bytes (keys, headers) first."""
    rows = np.flatnonzero(length > 0)
    lo, end = start[rows], start[rows] + length[rows]

    def blank() -> tuple[pa.Buffer, np.ndarray]:
        gap_lo = np.concatenate(([0], end))
        gap_hi = np.concatenate((lo, [total]))
        gap = gap_hi - gap_lo
        index = np.int32 if total < 1 << 31 else np.int64
        for i in range(0, len(gap), _BLANK_GAPS):  # small index arrays: no fresh pages to fault
            g, at = gap[i : i + _BLANK_GAPS], gap_lo[i : i + _BLANK_GAPS]
            first = np.cumsum(g) - g
            spaces = np.repeat((at - first).astype(index), g)
            spaces += np.arange(len(spaces), dtype=index)
            buf[spaces] = 0x20
        buf[end] = 0x0A
        return pa.py_buffer(buf[:total]), np.concatenate((lo, [total]))

    return JsonLines(rows, blank)


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
                length, pos = _read_varint(blob, pos)
                end = pos + length
                if length < 0 or end > end_of_region:
                    raise CorruptRecordError("record length runs past its batch")
                ts_delta, pos = _read_varint(blob, pos + 1)
                off_delta, pos = _read_varint(blob, pos)
                fields = []
                for _ in range(2):
                    size_, pos = _read_varint(blob, pos)
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


class JsonLines:
    """The values of some decoded records as newline-delimited text, ready for a JSON reader.

    Line ``i`` is ``buffer[starts[i]:starts[i + 1]]``: the value of row ``rows[i]``, a newline,
    then blanks. Rows with a null or empty value have no line. ``buffer`` and ``starts`` are
    made on first use (by blanking the bytes between the values in place, or by joining the
    values): a reader that takes the values one by one, from the ``value`` column, never
    pays for them.
    """

    __slots__ = ("_make", "_text", "rows")

    def __init__(self, rows: np.ndarray, make: Callable[[], tuple[pa.Buffer, np.ndarray]]) -> None:
        self.rows = rows
        self._make: Callable[[], tuple[pa.Buffer, np.ndarray]] | None = make
        self._text: tuple[pa.Buffer, np.ndarray] | None = None

    def _made(self) -> tuple[pa.Buffer, np.ndarray]:
        if self._text is None:
            self._text = self._make()  # type: ignore[misc]
            self._make = None
        return self._text

    @property
    def buffer(self) -> pa.Buffer:
        return self._made()[0]

    @property
    def starts(self) -> np.ndarray:
        return self._made()[1]


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


VIEW_SCHEMA = DECODED_SCHEMA.set(3, pa.field("value", pa.binary_view()))
"""The schema of :func:`decode_records` with ``json_lines``: values are views, not copies."""

_ALL = (0, (1 << 63) - 1)


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
) -> DecodedRecords:
    """The records of ``buffers`` (each holding whole batches) with offsets in ``ranges[i]``
    (``low <= offset < high``, per buffer), in order, and which buffer each came from.

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
