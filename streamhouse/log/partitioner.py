"""Kafka's default partitioner: murmur2 of the key bytes, made positive, modulo partitions.

Keyed records land on the partition the Java client, librdkafka's ``murmur2_random`` and
kafka-python would choose, so a topic can be fed from any of them and from StreamHouse alike.

>>> murmur2(b"21")
-973932308
>>> partition_for_key(b"21", 8)
4
>>> partitions_for_keys(pa.array([b"21", b"", b"hello world"]), 8).tolist()
[4, 1, 3]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The 32-bit murmur2 hash Kafka uses, as a signed int (as Java returns it)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    end = length & ~3
    for i in range(0, end, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def partitions_for_keys(keys: pa.Array, partitions: int) -> np.ndarray:
    """:func:`partition_for_key` of every key of ``keys`` (binary or string, no nulls) at
    once: murmur2 in numpy, a step per 4-byte word of the longest key, not per key."""
    keys = keys.cast(pa.large_binary())
    n = len(keys)
    offsets = np.frombuffer(keys.buffers()[1], np.int64)[keys.offset : keys.offset + n + 1]
    body = keys.buffers()[2]
    data = np.frombuffer(body, np.uint8) if body is not None else np.zeros(0, np.uint8)
    data = np.concatenate([data, np.zeros(4, np.uint8)])  # every gather below stays inside
    starts, lengths = offsets[:-1], np.diff(offsets)
    mask, m = np.uint64(_MASK), np.uint64(_M)
    h = (np.uint64(_SEED) ^ lengths.astype(np.uint64)) & mask
    words = lengths // 4
    for j in range(int(words.max()) if n else 0):
        at = np.where(words > j, starts + 4 * j, 0)
        k = data[at].astype(np.uint64)
        for b in range(1, 4):
            k |= data[at + b].astype(np.uint64) << np.uint64(8 * b)
        k = (k * m) & mask
        k ^= k >> np.uint64(24)
        k = (k * m) & mask
        h = np.where(words > j, ((h * m) & mask) ^ k, h)
    extra, end = lengths & 3, starts + (lengths & ~3)
    tail = np.minimum(end, len(data) - 3)
    h ^= np.where(extra == 3, data[tail + 2].astype(np.uint64) << np.uint64(16), 0).astype(
        np.uint64
    )
    h ^= np.where(extra >= 2, data[tail + 1].astype(np.uint64) << np.uint64(8), 0).astype(np.uint64)
    h = np.where(extra >= 1, ((h ^ data[tail].astype(np.uint64)) * m) & mask, h)
    h ^= h >> np.uint64(13)
    h = (h * m) & mask
    h ^= h >> np.uint64(15)
    return ((h & np.uint64(0x7FFFFFFF)) % np.uint64(partitions)).astype(np.int64)
