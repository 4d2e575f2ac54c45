"""LZ4 record batches decode alike whatever frame options the producer chose.

Frames of independent blocks are decompressed block by block straight into the decode buffer;
anything else (linked blocks, a dictionary, stored blocks, checksums) must decode the same.
"""

from __future__ import annotations

import itertools
import os
import struct

import crc32c
import lz4.frame
import pyarrow as pa
import pytest

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records import (
    BATCH_OVERHEAD,
    Compression,
    build_batch,
    decode_batches,
)
from streamhouse.log.records.codecs import lz4_blocks


def _batch(payload: bytes, count: int) -> bytes:
    """A RecordBatch v2 around an LZ4 ``payload`` of ``count`` records."""
    body = struct.pack(">hiqqqhii", int(Compression.LZ4), count - 1, 0, 0, -1, -1, -1, count)
    crc = crc32c.crc32c(payload, crc32c.crc32c(body))
    length = BATCH_OVERHEAD - 12 + len(payload)
    return struct.pack(">qiibI", 0, length, -1, 2, crc) + body + payload


VALUES = [os.urandom(i % 40) + b"x" * (i % 300) for i in range(4000)]
RECORDS = build_batch(VALUES)[BATCH_OVERHEAD:]


@pytest.mark.parametrize(
    ("linked", "size", "block_checksum", "content_checksum", "block_size"),
    list(
        itertools.product(
            [False, True],
            [False, True],
            [False, True],
            [False, True],
            [lz4.frame.BLOCKSIZE_MAX64KB, lz4.frame.BLOCKSIZE_MAX4MB],
        )
    ),
)
def test_frame_options(
    linked: bool, size: bool, block_checksum: bool, content_checksum: bool, block_size: int
) -> None:
    payload = lz4.frame.compress(
        RECORDS,
        block_linked=linked,
        store_size=size,
        block_checksum=block_checksum,
        content_checksum=content_checksum,
        block_size=block_size,
    )
    batch = _batch(payload, len(VALUES))
    assert decode_batches([batch, batch]).column("value").to_pylist() == VALUES + VALUES


def test_stored_blocks() -> None:
    header = bytes([0x04, 0x22, 0x4D, 0x18, 0x60, 0x40, 0x82])  # independent blocks, 64 KiB
    blocks = b"".join(
        struct.pack("<I", len(part) | 0x80000000) + part
        for part in (RECORDS[i : i + 65536] for i in range(0, len(RECORDS), 65536))
    )
    payload = header + blocks + b"\0\0\0\0"
    parsed = lz4_blocks(memoryview(payload))
    assert parsed is not None and all(stored for stored, _ in parsed[0])
    assert decode_batches(_batch(payload, len(VALUES))).column("value").to_pylist() == VALUES


def test_frames_that_are_not_plain_block_lists_are_decompressed_whole() -> None:
    payload = lz4.frame.compress(RECORDS, block_linked=False, store_size=False)
    assert lz4_blocks(memoryview(payload)) is not None
    assert lz4_blocks(memoryview(payload[:-4])) is None  # no end mark
    assert lz4_blocks(memoryview(payload + payload)) is None  # two frames
    doubled = _batch(payload + payload, 2 * len(VALUES))  # what a frame decoder makes of it
    table = decode_batches(doubled)
    assert table.num_rows == 2 * len(VALUES)


def test_corrupt_block_is_a_corrupt_record_error() -> None:
    payload = bytearray(lz4.frame.compress(RECORDS, block_linked=False, store_size=False))
    payload[20:40] = b"\xff" * 20
    with pytest.raises(CorruptRecordError):
        decode_batches(_batch(bytes(payload), len(VALUES)), verify=False)


def test_arrow_values_and_keys_build_the_same_batch() -> None:
    values = pa.array(["v" * i for i in range(30)] + [None])
    keys = pa.array([str(i) for i in range(31)])
    as_lists = build_batch(
        [v.encode() if v is not None else None for v in values.to_pylist()],
        [k.encode() for k in keys.to_pylist()],
        timestamps=[5] * 31,
    )
    assert build_batch(values, keys, timestamps=[5] * 31) == as_lists
    assert build_batch(values.slice(1, 3), keys.slice(1, 3), timestamps=[5] * 3) == build_batch(
        [b"v", b"vv", b"vvv"], [b"1", b"2", b"3"], timestamps=[5] * 3
    )
