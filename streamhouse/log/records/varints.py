"""Zigzag varints, in two styles: one value at a time in plain Python, for batches of up to
:data:`SMALL` records, and a whole column at once with numpy, for larger ones.

>>> encode_varint(-1), read_varint(encode_varint(300), 0)
(b'\\x01', (300, 2))
>>> values, sizes = read_varints(np.frombuffer(b"\\x01\\xd8\\x04", np.uint8), np.array([0, 1]), 5)
>>> values.tolist(), sizes.tolist()
([-1, 300], [1, 2])
"""

from __future__ import annotations

import numpy as np

from streamhouse.errors import CorruptRecordError

__all__ = [
    "SMALL",
    "encode_uvarint",
    "encode_varint",
    "read_varint",
    "read_varints",
    "varint_matrix",
    "varint_size",
    "zigzag",
]

SMALL = 8
"""Batches of this many records or fewer are built and decoded in plain Python."""

_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)
_COLS = np.arange(10, dtype=np.int64)


# --------------------------------------------------------------------------- plain Python


def encode_varint(value: int) -> bytes:
    """``value`` zigzagged, as varint bytes."""
    return encode_uvarint((value << 1) ^ (value >> 63))


def encode_uvarint(u: int) -> bytes:
    """A non-negative ``u`` as unsigned varint bytes (Kafka's compact lengths)."""
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
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


# --------------------------------------------------------------------------- numpy


def read_varints(buf: np.ndarray, pos: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Zigzag varints at every ``pos``: (values int64, sizes int64); size 0 if unterminated.

    Columns of 1- and 2-byte varints are read a byte at a time; longer ones of up to 4 bytes
    (offset deltas past 8,191 records) as one little-endian word each, their 7-bit groups
    packed with word operations; longer still (timestamp deltas of hours), byte by byte."""
    b0 = buf.take(pos, mode="clip").astype(np.int64)
    more = b0 >= 0x80
    if not more.any():
        return (b0 >> 1) ^ -(b0 & 1), np.ones(len(pos), np.int64)
    b1 = buf.take(pos + 1, mode="clip").astype(np.int64)
    if not (more & (b1 >= 0x80)).any():
        u = np.where(more, (b0 & 0x7F) | (b1 << 7), b0)
        return (u >> 1) ^ -(u & 1), more + 1
    if width < 4 or len(buf) < 4 or int(pos.max()) > len(buf) - 4:
        return _read_varints_bytewise(buf, pos, width)
    words = np.ndarray((len(buf) - 3,), dtype="<u4", buffer=buf, strides=(1,))[pos]
    stop = ~words & _STOPS  # the high bit of each byte that would end the varint
    last = stop & (~stop + np.uint32(1))  # the first of them
    size = (last > 0x80).astype(np.int64) + (last > 0x8000) + (last > 0x800000) + 1
    kept = words & ((last << np.uint32(1)) - np.uint32(1))  # the varint's bytes only
    u = (
        (kept & 0x7F)
        | ((kept >> 1) & 0x3F80)
        | ((kept >> 2) & 0x1FC000)
        | ((kept >> 3) & 0xFE00000)
    ).astype(np.int64)
    values = (u >> 1) ^ -(u & 1)
    long = np.flatnonzero(last == 0)
    if len(long):  # 5 bytes or more (or none ending within ``width``)
        values[long], size[long] = _read_varints_bytewise(buf, pos[long], width)
    return values, size


_STOPS = np.uint32(0x80808080)


def _read_varints_bytewise(
    buf: np.ndarray, pos: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_varints` of up to ``width`` bytes each, as a matrix of their bytes."""
    b = buf.take(pos[:, None] + _COLS[:width], mode="clip")
    last = b < 0x80
    size = last.argmax(axis=1) + 1
    size[~last.any(axis=1)] = 0
    groups = (b & 0x7F).astype(np.uint64) << _SHIFTS[:width]
    groups[_COLS[:width] >= size[:, None]] = 0
    u = groups.sum(axis=1, dtype=np.uint64)
    v = (u >> np.uint64(1)).astype(np.int64) ^ -(u & np.uint64(1)).astype(np.int64)
    return v, size


def zigzag(v: np.ndarray) -> np.ndarray:
    """``v`` zigzag-encoded, as uint64."""
    v = v.astype(np.int64)
    return ((v << 1) ^ (v >> 63)).view(np.uint64)


def varint_size(u: np.ndarray) -> np.ndarray:
    """Bytes of the varint of each ``u`` (already zigzagged)."""
    size = np.ones(len(u), np.int64)
    for k in range(1, 10):
        big = u >= np.uint64(1 << (7 * k))
        if not big.any():
            break
        size += big
    return size


def varint_matrix(u: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of ``u`` (already zigzagged) as an (n, width) matrix and its valid mask."""
    width = int(size.max()) if len(size) else 1
    if width == 1:
        return u.astype(np.uint8)[:, None], np.ones((len(u), 1), bool)
    cols = _COLS[:width]
    b = ((u[:, None] >> _SHIFTS[:width]) & np.uint64(0x7F)).astype(np.uint8)
    b |= (cols < (size[:, None] - 1)).view(np.uint8) << 7
    return b, cols < size[:, None]
