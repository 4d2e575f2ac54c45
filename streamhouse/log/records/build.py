"""Build one RecordBatch v2 from values (and keys, timestamps, headers): with numpy and Arrow
over whole columns, or in plain Python for a few records.

Each record is::

    length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
    keyLength varint | key | valueLength varint | value | headerCount varint |
    (headerKeyLength varint | headerKey | headerValueLength varint | headerValue)*

>>> from streamhouse.log.records.header import read_header
>>> read_header(build_batch([b"a", b"b"], timestamps=[5, 7], base_offset=10)).last_offset
11
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import RecordTooLargeError
from streamhouse.log.records.codecs import compress
from streamhouse.log.records.header import (
    BATCH_OVERHEAD,
    CRC_COVERED,
    FRAMING,
    LENGTH_END,
    Compression,
)
from streamhouse.log.records.varints import (
    SMALL,
    encode_varint,
    varint_matrix,
    varint_size,
    zigzag,
)
from streamhouse.native import load as native_library

__all__ = ["batch_parts", "build_batch", "frame_batch", "frame_parts"]


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


def binary_from_matrix(b: np.ndarray, mask: np.ndarray) -> pa.Array:
    """A binary array whose element i is the masked bytes of row i."""
    data = b[mask]
    offsets = np.zeros(len(b) + 1, np.int32)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return pa.Array.from_buffers(
        pa.binary(), len(b), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts = [encode_varint(len(headers))]
    for key, value in headers:
        k = key.encode()
        parts += (encode_varint(len(k)), k)
        if value is None:
            parts.append(encode_varint(-1))
        else:
            parts += (encode_varint(len(value)), bytes(value))
    return b"".join(parts)


def build_batch(*args: Any, **kwargs: Any) -> bytes:
    """One RecordBatch v2: :func:`batch_parts` (the same arguments) joined."""
    return b"".join(batch_parts(*args, **kwargs))


def batch_parts(
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
    flags: int = 0,
) -> list[bytes | memoryview]:
    """One RecordBatch v2 holding the records, offsets ``base_offset`` onwards (``flags``:
    attribute bits beside the codec, as :func:`frame_parts`), in parts: a writer of several
    batches joins all their parts at once, copying each (compressed) records section once.

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

    if n <= SMALL:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            values = _as_binary(values).to_pylist()
        if isinstance(keys, pa.Array | pa.ChunkedArray):
            keys = _as_binary(keys).to_pylist()
        # the parts, not joined: frame_batch joins them with the header in one copy
        records, base_ts, max_ts = _record_parts(values, keys, timestamps, headers)
    else:
        records, base_ts, max_ts = _encode_columns(values, keys, timestamps, headers)
    return frame_parts(
        records,
        n,
        base_ts,
        max_ts,
        compression,
        base_offset,
        producer_id,
        producer_epoch,
        base_sequence,
        flags=flags,
    )


_encoder = native_library(__file__, "_encode", "encode_records", 9)
"""``_encode.c``'s ``encode_records`` (None where it is not built: the numpy and Arrow path)."""


def _native_records(
    value_arr: pa.Array, key_arr: pa.Array | None, ts_delta: np.ndarray | None
) -> np.ndarray:
    """The records section of records without headers, by ``_encode.c`` in one pass (each
    value copied once, the GIL released): a uint8 array."""
    assert _encoder is not None
    n = len(value_arr)
    args: list[int | None] = []
    keep: list[object] = []  # buffers the call reads, alive until it returns
    data_bytes = 0
    for arr in (value_arr, key_arr):
        if arr is None:
            args += [None, None, None]
            continue
        offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + n + 1]
        data = arr.buffers()[2]
        nulls = None
        if arr.null_count:
            nulls = np.ascontiguousarray(arr.is_null().to_numpy(zero_copy_only=False), np.uint8)
        keep += [offsets, data, nulls]
        data_bytes += int(offsets[-1]) - int(offsets[0])
        args += [
            data.address if data is not None else None,
            offsets.ctypes.data,
            nulls.ctypes.data if nulls is not None else None,
        ]
    if ts_delta is not None:
        ts_delta = np.ascontiguousarray(ts_delta, np.int64)
    # at most: a 5-byte length, the attributes, a 10-byte timestamp delta, 5 bytes each for
    # the offset delta, key and value lengths, the header count: 32 bytes beside the data
    out = np.empty(data_bytes + 32 * n, np.uint8)
    written = _encoder(
        n, *args, ts_delta.ctypes.data if ts_delta is not None else None, out.ctypes.data
    )
    del keep
    return out[:written]


def _encode_columns(
    values: Sequence[bytes | None] | pa.Array | pa.ChunkedArray,
    keys: Sequence[bytes | None] | pa.Array | pa.ChunkedArray | None,
    timestamps: Sequence[int] | None,
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
) -> tuple[memoryview, int, int]:
    """Records section of many records, column by column with numpy and Arrow:
    (bytes, base ts, max ts)."""
    n = len(values)
    value_arr = _as_binary(values)
    if timestamps is None:
        base_ts = max_ts = int(time.time() * 1000)
        ts_delta = np.zeros(n, np.int64)
    else:
        ts = np.asarray(timestamps, dtype=np.int64)
        base_ts, max_ts = int(ts[0]), int(ts.max())
        ts_delta = ts - base_ts
    if _encoder is not None and (headers is None or not any(headers)):
        key_values = _as_binary(keys) if keys is not None else None
        records = _native_records(
            value_arr, key_values, ts_delta if timestamps is not None else None
        )
        return memoryview(records), base_ts, max_ts
    value_len = _binary_lengths(value_arr)
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
        zigzag(ts_delta),
        zigzag(np.arange(n, dtype=np.int64)),
        zigzag(key_len),
        zigzag(value_len),
    ]
    sizes = [varint_size(u) for u in fields]
    body_len = 1 + sum(sizes) + np.maximum(key_len, 0) + np.maximum(value_len, 0) + tail_len
    length_u = zigzag(body_len)
    fields.insert(0, length_u)
    sizes.insert(0, varint_size(length_u))
    mats = [varint_matrix(u, s) for u, s in zip(fields, sizes, strict=True)]
    attr = (np.zeros((n, 1), np.uint8), np.ones((n, 1), bool))
    # length | attributes | timestampDelta | offsetDelta | keyLength  [key]  valueLength
    head = [mats[0], attr, mats[1], mats[2], mats[3]]
    if key_arr is None:
        head.append(mats[4])
        prefix = binary_from_matrix(
            np.hstack([m[0] for m in head]), np.hstack([m[1] for m in head])
        )
        parts = [prefix, value_arr, tail]
    else:
        prefix = binary_from_matrix(
            np.hstack([m[0] for m in head]), np.hstack([m[1] for m in head])
        )
        middle = binary_from_matrix(*mats[4])
        parts = [prefix, key_arr, middle, value_arr, tail]
    joined = pc.binary_join_element_wise(
        *parts, pa.scalar(b""), null_handling="replace", null_replacement=""
    )
    offsets = np.frombuffer(joined.buffers()[1], np.int32)
    records = memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[n])]
    return records, base_ts, max_ts


def frame_batch(*args: Any, **kwargs: Any) -> bytes:
    """One batch: :func:`frame_parts` (the same arguments) joined."""
    return b"".join(frame_parts(*args, **kwargs))


def frame_parts(
    records: bytes | memoryview | list[bytes | memoryview],
    n: int,
    base_ts: int,
    max_ts: int,
    compression: Compression,
    base_offset: int,
    producer_id: int,
    producer_epoch: int,
    base_sequence: int,
    *,
    last_offset_delta: int | None = None,
    leader_epoch: int = -1,
    flags: int = 0,
) -> list[bytes | memoryview]:
    """Compress the ``n`` records and put the batch header with its CRC in front (offsets
    ``base_offset`` to ``base_offset + last_offset_delta``, by default ``n - 1``); ``flags``
    are attribute bits beside the codec (``ATTR_TRANSACTIONAL``, ``ATTR_CONTROL``).

    ``records`` may be the records section in parts (uncompressed, they are then copied once,
    into the batch, not joined first: an exchange record's value is megabytes)."""
    if isinstance(records, list):
        parts = records if compression == Compression.NONE else None
        if parts is None:
            records = b"".join(records)
    else:
        parts = None
    payload_parts = parts if parts is not None else [compress(compression, records)]
    size = sum(len(part) for part in payload_parts)
    batch_length = BATCH_OVERHEAD - LENGTH_END + size
    if batch_length > 0x7FFFFFFF:
        raise RecordTooLargeError(f"record batch of {batch_length} bytes exceeds 2 GiB")
    body = CRC_COVERED.pack(  # attributes .. recordCount
        int(compression) | flags,
        n - 1 if last_offset_delta is None else last_offset_delta,
        base_ts,
        max_ts,
        producer_id,
        producer_epoch,
        base_sequence,
        n,
    )
    crc = crc32c.crc32c(body)
    for part in payload_parts:
        crc = crc32c.crc32c(part, crc)
    framing = FRAMING.pack(base_offset, batch_length, leader_epoch, 2, crc)  # magic 2
    return [framing + body, *payload_parts]


def encode_records(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None,
    timestamps: Sequence[int] | None,
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
) -> tuple[bytes, int, int]:
    """Records section of a few records, in plain Python: (bytes, base ts, max ts)."""
    parts, base_ts, max_ts = _record_parts(values, keys, timestamps, headers)
    return b"".join(parts), base_ts, max_ts


def _record_parts(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None,
    timestamps: Sequence[int] | None,
    headers: Sequence[Sequence[tuple[str, bytes | None]]] | None,
) -> tuple[list[bytes | memoryview], int, int]:
    """:func:`encode_records`' section as its parts, the values among them as given."""
    if timestamps is None:
        timestamps = [int(time.time() * 1000)] * len(values)
    base_ts = int(timestamps[0])
    parts: list[bytes | memoryview] = []
    for i, value in enumerate(values):
        key = keys[i] if keys is not None else None
        body = [
            b"\x00",
            encode_varint(int(timestamps[i]) - base_ts),
            encode_varint(i),
            *_sized(key),
            *_sized(value),
            _encode_headers(headers[i]) if headers is not None else b"\x00",
        ]
        parts += (encode_varint(sum(len(b) for b in body)), *body)
    return parts, base_ts, max(int(t) for t in timestamps)


def _sized(field: bytes | None) -> tuple[bytes | memoryview, ...]:
    """A record's key or value as its varint length and its bytes (length -1 for null)."""
    if field is None:
        return (encode_varint(-1),)
    view = memoryview(field)  # bytes, or any buffer (an Arrow IPC stream), not copied
    return encode_varint(view.nbytes), view
