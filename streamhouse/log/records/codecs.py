"""The codecs of a batch's records section: decompress (with the framings Kafka clients
write: xerial snappy, LZ4 frames of independent blocks) and compress.

>>> bytes(decompress(Compression.ZSTD, memoryview(compress(Compression.ZSTD, b"abc"))))
b'abc'
"""

from __future__ import annotations

import struct

import cramjam
import lz4.frame

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records.header import Compression

__all__ = ["compress", "decompress", "lz4_blocks"]

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


def lz4_blocks(data: memoryview) -> tuple[list[tuple[bool, memoryview]], int] | None:
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


def decompress(codec: int, data: memoryview) -> bytes | cramjam.Buffer:
    """The records section ``data`` compressed with ``codec``; CorruptRecordError if it is not."""
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


def compress(codec: Compression, data: bytes | memoryview) -> bytes | memoryview:
    """The records section ``data`` compressed with ``codec`` (as it is for NONE)."""
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
