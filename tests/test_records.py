"""Kafka RecordBatch v2: round trips, interop with kafka-python and aiokafka, corruption."""

from __future__ import annotations

import contextlib
import struct

import crc32c
import numpy as np
import pyarrow.compute as pc
import pytest
from aiokafka.record.default_records import DefaultRecordBatch as AioBatch
from aiokafka.record.default_records import DefaultRecordBatchBuilder as AioBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch as KpBatch
from kafka.record.default_records import DefaultRecordBatchBuilder as KpBuilder

from streamhouse.errors import CorruptRecordError
from streamhouse.log.records import (
    BATCH_OVERHEAD,
    DECODED_SCHEMA,
    BatchHeader,
    Compression,
    build_batch,
    decode,
    decode_batches,
    decode_records,
    read_header,
    shift_offsets,
    split_batches,
    verify_crc,
)
from streamhouse.log.records.codecs import decompress

T0 = 1_700_000_000_000

Rows = list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]]


def ts_ms(table) -> list[int]:
    return table.column("timestamp").cast("int64").to_pylist()


def as_tuples(table) -> Rows:
    return [
        (r["offset"], t, r["key"], r["value"], [(h["key"], h["value"]) for h in r["headers"]])
        for r, t in zip(table.to_pylist(), ts_ms(table), strict=True)
    ]


# Three copies: 15 records, past the plain-Python path for batches of <= 8 records.
SAMPLE_VALUES = [b'{"a":1}', None, b"", b"x" * 300, b"\x00\xff" * 5] * 3
SAMPLE_KEYS = [b"k1", None, b"k3", b"", b"k" * 200] * 3
SAMPLE_TS = [T0, T0 - 5, T0 + 70_000, T0 + 1, T0 + 3] * 3
SAMPLE_HEADERS = [[], [("trace", b"abc"), ("empty", None)], [], [("ü", b"")], []] * 3
SAMPLE_ROWS: Rows = [
    (100 + i, SAMPLE_TS[i], SAMPLE_KEYS[i], SAMPLE_VALUES[i], SAMPLE_HEADERS[i]) for i in range(15)
]


@pytest.mark.parametrize("codec", list(Compression))
def test_round_trip_every_codec(codec: Compression) -> None:
    batch = build_batch(
        SAMPLE_VALUES,
        SAMPLE_KEYS,
        SAMPLE_TS,
        SAMPLE_HEADERS,
        compression=codec,
        base_offset=100,
        producer_id=7,
        producer_epoch=1,
        base_sequence=40,
    )
    header = read_header(batch)
    assert header.compression is codec
    assert (header.base_offset, header.last_offset, header.record_count) == (100, 114, 15)
    assert (header.base_timestamp, header.max_timestamp) == (T0, T0 + 70_000)
    assert (header.producer_id, header.producer_epoch, header.base_sequence) == (7, 1, 40)
    assert header.size == len(batch) and header.magic == 2
    assert not header.is_control and not header.is_transactional and header.timestamp_type == 0
    assert verify_crc(batch)
    table = decode_batches(batch)
    assert table.schema == DECODED_SCHEMA
    assert as_tuples(table) == SAMPLE_ROWS


@pytest.mark.parametrize("count", [1, 5, 8, 9])
def test_small_batches_match_the_vectorized_path(count: int) -> None:
    small = build_batch(
        SAMPLE_VALUES[:count],
        SAMPLE_KEYS[:count],
        SAMPLE_TS[:count],
        SAMPLE_HEADERS[:count],
        base_offset=100,
    )
    big = build_batch(SAMPLE_VALUES, SAMPLE_KEYS, SAMPLE_TS, SAMPLE_HEADERS, base_offset=100)
    # Both paths encode records byte for byte alike.
    assert small[BATCH_OVERHEAD:] == big[BATCH_OVERHEAD : len(small)]
    assert as_tuples(decode_batches(small)) == SAMPLE_ROWS[:count]
    assert as_tuples(decode_batches(big, min_offset=115 - count)) == SAMPLE_ROWS[15 - count :]
    assert read_with(KpBatch, small) == SAMPLE_ROWS[:count]


@pytest.mark.parametrize("codec", list(Compression))
def test_many_records_no_keys(codec: Compression) -> None:
    values = [b'{"id": %d, "pad": "%s"}' % (i, b"z" * (i % 300)) for i in range(3000)]
    batch = build_batch(values, compression=codec)
    table = decode_batches([batch, batch[:0]])
    assert table.column("value").to_pylist() == values
    assert table.column("key").null_count == 3000
    assert table.column("offset").to_pylist() == list(range(3000))
    assert len(set(ts_ms(table))) == 1  # default: one "now" for the whole batch


def test_default_timestamp_is_now() -> None:
    import time

    before = int(time.time() * 1000)
    header = read_header(build_batch([b"v"]))
    assert before <= header.base_timestamp <= int(time.time() * 1000)


def test_build_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        build_batch([])
    with pytest.raises(ValueError):
        build_batch([b"a", b"b"], keys=[b"k"])


def kp_batch(codec: int, rows: Rows, transactional: bool = False) -> bytes:
    builder = KpBuilder(2, codec, transactional, 5 if transactional else -1, 0, 0, 1 << 20)
    for offset, ts, key, value, headers in rows:
        builder.append(offset, ts, key, value, headers)
    return bytes(builder.build())


def aio_batch(codec: int, rows: Rows) -> bytes:
    builder = AioBuilder(2, codec, 0, -1, -1, -1, 1 << 20)
    for offset, ts, key, value, headers in rows:
        builder.append(offset, ts, key, value, headers)
    return bytes(builder.build())


def at_offset(batch: bytes, base_offset: int) -> bytes:
    """``batch`` (built by another client, at offset 0) with its baseOffset set."""
    return struct.pack(">q", base_offset) + batch[8:]


def relative(rows_: Rows, base: int = 0) -> Rows:
    return [(base + i, *r[1:]) for i, r in enumerate(rows_)]


@pytest.mark.parametrize("codec", [Compression.NONE, Compression.GZIP, Compression.LZ4])
def test_reads_kafka_python_batches(codec: Compression) -> None:
    batch = kp_batch(codec, relative(SAMPLE_ROWS))
    assert verify_crc(batch)
    assert as_tuples(decode_batches(at_offset(batch, 100))) == SAMPLE_ROWS


@pytest.mark.parametrize("codec", list(Compression))
def test_reads_aiokafka_batches(codec: Compression) -> None:
    # aiokafka writes snappy in the xerial framing Java clients use.
    batch = aio_batch(codec, relative(SAMPLE_ROWS))
    if codec is Compression.SNAPPY:
        payload = batch[BATCH_OVERHEAD:]
        assert payload.startswith(b"\x82SNAPPY\x00")
    assert as_tuples(decode_batches(at_offset(batch, 100))) == SAMPLE_ROWS


def test_reads_multi_block_xerial_snappy() -> None:
    rows_ = [(i, T0 + i, None, b"%06d" % i * 50, []) for i in range(400)]  # ~120 KB > 32 KB
    batch = aio_batch(Compression.SNAPPY, rows_)
    assert struct.unpack_from(">i", batch, BATCH_OVERHEAD + 16)[0] < len(batch) // 2
    assert as_tuples(decode_batches(batch)) == rows_


def read_with(reader, batch: bytes) -> Rows:
    b = reader(batch)
    assert b.validate_crc()
    return [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in b]


@pytest.mark.parametrize("codec", [Compression.NONE, Compression.GZIP, Compression.LZ4])
def test_kafka_python_reads_our_batches(codec: Compression) -> None:
    batch = build_batch(
        SAMPLE_VALUES, SAMPLE_KEYS, SAMPLE_TS, SAMPLE_HEADERS, compression=codec, base_offset=100
    )
    assert read_with(KpBatch, batch) == SAMPLE_ROWS


@pytest.mark.parametrize("codec", list(Compression))
def test_aiokafka_reads_our_batches(codec: Compression) -> None:
    batch = build_batch(
        SAMPLE_VALUES, SAMPLE_KEYS, SAMPLE_TS, SAMPLE_HEADERS, compression=codec, base_offset=100
    )
    assert read_with(AioBatch, batch) == SAMPLE_ROWS


def test_crc_does_not_cover_base_offset() -> None:
    batch = build_batch([b"a", b"b", b"c"], timestamps=[T0] * 3)
    moved = build_batch([b"a", b"b", b"c"], timestamps=[T0] * 3, base_offset=1_000_000_007)
    assert len(moved) == len(batch) and moved[8:] == batch[8:]
    assert verify_crc(moved)
    assert read_header(moved).last_offset == 1_000_000_009
    assert decode_batches(moved).column("offset").to_pylist() == [
        1_000_000_007,
        1_000_000_008,
        1_000_000_009,
    ]


def test_split_and_min_offset_over_concatenations() -> None:
    batches = [
        build_batch([b"v%d" % i for i in range(n)], base_offset=base, compression=codec)
        for base, n, codec in [(0, 3, Compression.NONE), (3, 1, Compression.LZ4), (4, 5, 4)]
    ]
    data = b"".join(batches)
    spans = split_batches(data)
    assert [(s, e) for s, e, _ in spans] == [
        (0, len(batches[0])),
        (len(batches[0]), len(batches[0]) + len(batches[1])),
        (len(data) - len(batches[2]), len(data)),
    ]
    assert all(isinstance(h, BatchHeader) for _, _, h in spans)
    assert [h.base_offset for _, _, h in spans] == [0, 3, 4]
    assert split_batches(memoryview(data)) == spans
    assert split_batches(b"") == []
    assert decode_batches(data).column("offset").to_pylist() == list(range(9))
    assert decode_batches(data, min_offset=2).column("offset").to_pylist() == list(range(2, 9))
    assert decode_batches(batches, min_offset=6).column("value").to_pylist() == [
        b"v2",
        b"v3",
        b"v4",
    ]
    empty = decode_batches(data, min_offset=9)
    assert empty.num_rows == 0 and empty.schema == DECODED_SCHEMA
    assert decode_batches([]).num_rows == 0


def test_many_small_batches_take_the_parallel_path() -> None:
    # Batches of 1-3 records, one with a long (3-byte length) record that stalls the
    # vectorized boundary search and falls back to the per-record loop.
    batches = [
        build_batch([b"%d-%d" % (i, j) for j in range(1 + i % 3)], base_offset=10 * i)
        for i in range(60)
    ]
    expected = [b"%d-%d" % (i, j) for i in range(60) for j in range(1 + i % 3)]
    assert decode_batches(batches).column("value").to_pylist() == expected
    batches[30] = build_batch([b"L" * 20_000], base_offset=300)
    expected = [b"L" * 20_000 if v == b"30-0" else v for v in expected]
    assert decode_batches(batches).column("value").to_pylist() == expected


def test_control_batches_are_skipped() -> None:
    data_batch = kp_batch(0, [(0, T0, b"k", b"v", [])], transactional=True)
    control = bytearray(
        build_batch([b"\x00\x00\x00\x00\x00\x00"], [b"\x00\x00\x00\x00"], base_offset=1)
    )
    control[21:23] = struct.pack(">h", 0x20 | 0x10)  # control + transactional
    control[17:21] = struct.pack(">I", crc32c.crc32c(bytes(control[21:])))
    assert read_header(bytes(control)).is_control
    assert read_header(data_batch).is_transactional
    table = decode_batches([data_batch, bytes(control)])
    assert table.column("offset").to_pylist() == [0]


def test_log_append_time_uses_max_timestamp() -> None:
    batch = bytearray(build_batch([b"a", b"b"], timestamps=[T0, T0 + 10]))
    batch[21:23] = struct.pack(">h", 0x08)
    batch[35:43] = struct.pack(">q", T0 + 99)  # maxTimestamp, set by the broker
    batch[17:21] = struct.pack(">I", crc32c.crc32c(bytes(batch[21:])))
    assert read_header(bytes(batch)).timestamp_type == 1
    assert ts_ms(decode_batches(bytes(batch))) == [T0 + 99, T0 + 99]


def test_corrupt_crc_raises() -> None:
    batch = bytearray(build_batch([b"hello", b"world"]))
    batch[-3] ^= 0x01
    assert not verify_crc(batch)
    with pytest.raises(CorruptRecordError, match="CRC"):
        decode_batches(bytes(batch))
    decode_batches(bytes(batch), verify=False)  # a flipped value byte still parses


@pytest.mark.parametrize("cut", [1, 30, BATCH_OVERHEAD, -1])
def test_truncated_input_raises(cut: int) -> None:
    batch = build_batch([b"hello", b"world"])
    with pytest.raises(CorruptRecordError):
        split_batches(batch + batch[:cut])
    with pytest.raises(CorruptRecordError):
        decode_batches(batch + batch[:cut])


@pytest.mark.parametrize("n", [2, 20])
def test_bad_magic_and_malformed_records_raise(n: int) -> None:
    values = [b"hello", b"world"] * (n // 2)
    batch = bytearray(build_batch(values))
    batch[16] = 1
    with pytest.raises(CorruptRecordError, match="magic"):
        read_header(bytes(batch))
    with pytest.raises(CorruptRecordError):
        read_header(b"\x00" * 10)
    # A record count that does not match the records, with a valid CRC.
    batch = bytearray(build_batch(values))
    batch[57:61] = struct.pack(">i", n + 1)
    batch[17:21] = struct.pack(">I", crc32c.crc32c(bytes(batch[21:])))
    with pytest.raises(CorruptRecordError):
        decode_batches(bytes(batch))
    # An unknown codec.
    batch = bytearray(build_batch([b"hello"]))
    batch[22] = 6
    batch[17:21] = struct.pack(">I", crc32c.crc32c(bytes(batch[21:])))
    with pytest.raises(CorruptRecordError, match="codec"):
        decode_batches(bytes(batch))
    # Garbage where LZ4 records should be.
    batch = bytearray(build_batch([b"hello"], compression=Compression.LZ4))
    batch[BATCH_OVERHEAD:] = b"\x00" * (len(batch) - BATCH_OVERHEAD)
    with pytest.raises(CorruptRecordError, match="decompress"):
        decode_batches(bytes(batch), verify=False)
    # A value length running past its record.
    batch = bytearray(build_batch(values, timestamps=[T0] * n))
    assert batch[BATCH_OVERHEAD + 5] == 10  # zigzag(5)
    batch[BATCH_OVERHEAD + 5] = 12
    with pytest.raises(CorruptRecordError):
        decode_batches(bytes(batch), verify=False)
    with pytest.raises(CorruptRecordError):
        decode_batches([bytes(batch)] * 20, verify=False)  # the many-batch path


records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=200)),
        st.one_of(st.none(), st.binary(max_size=20)),
        st.integers(min_value=0, max_value=2**42),
        st.lists(
            st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8))),
            max_size=2,
        ),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records,
    st.sampled_from(list(Compression)),
    st.integers(min_value=0, max_value=2**40),
    st.booleans(),
)
def test_round_trip_property(recs, codec, base_offset, with_keys) -> None:
    values = [r[0] for r in recs]
    keys = [r[1] for r in recs] if with_keys else None
    timestamps = [r[2] for r in recs]
    headers = [r[3] for r in recs]
    batch = build_batch(
        values, keys, timestamps, headers, compression=codec, base_offset=base_offset
    )
    expected = [
        (base_offset + i, timestamps[i], keys[i] if keys else None, values[i], headers[i])
        for i in range(len(recs))
    ]
    assert as_tuples(decode_batches(batch)) == expected
    assert read_with(AioBatch, batch) == expected
    # The same records in many batches go through the vectorized boundary search.
    many = decode_batches(
        [
            build_batch(
                values,
                keys,
                timestamps,
                headers,
                compression=codec,
                base_offset=base_offset + k * len(recs),
            )
            for k in range(20)
        ]
    )
    assert many.num_rows == 20 * len(recs)
    assert as_tuples(many.slice(19 * len(recs))) == [
        (o + 19 * len(recs), *rest) for o, *rest in expected
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records,
    st.sampled_from(list(Compression)),
    st.integers(min_value=1, max_value=20),
    st.data(),
)
def test_json_lines_decode_equals_the_copying_decode(recs, codec, copies, data) -> None:
    """Values left in place as views, and the bytes between them blanked into JSON lines: the
    same rows as decode_batches, within each buffer's offset range, each value on its line."""
    buffers = [
        build_batch(
            [r[0] for r in recs],
            [r[1] for r in recs],
            [r[2] for r in recs],
            [r[3] for r in recs],
            compression=codec,
            base_offset=k * len(recs),
        )
        for k in range(copies)
    ]
    ranges = [
        tuple(
            sorted(data.draw(st.lists(st.integers(0, copies * len(recs)), min_size=2, max_size=2)))
        )
        for _ in buffers
    ]
    decoded = decode_records(buffers, ranges, verify=True, json_lines=True)
    expected, source = [], []
    for index, (buffer, (low, high)) in enumerate(zip(buffers, ranges, strict=True)):
        table = decode_batches(buffer, min_offset=low)
        table = table.filter(pc.less(table["offset"], high))
        expected += as_tuples(table)
        source += [index] * table.num_rows
    assert (
        as_tuples(decoded.table.set_column(3, "value", decoded.table["value"].cast("binary")))
        == expected
    )
    assert decoded.source.tolist() == source
    chunks = decoded.table["value"].chunks
    assert len(decoded.lines) == len(chunks)
    for lines, chunk in zip(decoded.lines, chunks, strict=True):
        values = chunk.to_pylist()
        assert lines.rows.tolist() == [i for i, v in enumerate(values) if v]
        text = lines.buffer.to_pybytes()
        for i, row in enumerate(lines.rows.tolist()):
            line = text[lines.starts[i] : lines.starts[i + 1]]
            value = values[row]
            assert line[: len(value) + 1] == value + b"\n"
            assert line[len(value) + 1 :].strip(b" ") == b""


FUZZ_BATCH = build_batch(
    [b"v%d" % i * (i % 7) for i in range(30)],
    [b"k"] * 30,
    [T0 + 1000 * i for i in range(30)],
    [[("h", b"x")] if i % 4 == 0 else [] for i in range(30)],
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(BATCH_OVERHEAD - 4, len(FUZZ_BATCH) - 1), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    )
)
def test_damaged_records_raise_only_corrupt_record_error(flips) -> None:
    damaged = bytearray(FUZZ_BATCH)
    for pos, byte in flips:
        damaged[pos] = byte
    for data in (bytes(damaged), [bytes(damaged)] * 20):
        with contextlib.suppress(CorruptRecordError):
            decode_batches(data, verify=False)


def test_shift_offsets_moves_every_batch_and_keeps_crcs() -> None:
    run = b"".join(
        build_batch([b"x"] * n, base_offset=base, compression=codec)
        for base, n, codec in [
            (0, 2, Compression.NONE),
            (2, 3, Compression.ZSTD),
            (5, 1, Compression.LZ4),
        ]
    )
    shifted = shift_offsets(run, 1000)
    assert len(shifted) == len(run)
    assert [h.base_offset for _, _, h in split_batches(shifted)] == [1000, 1002, 1005]
    assert all(verify_crc(shifted, start, end) for start, end, _ in split_batches(shifted))
    assert decode_batches(shift_offsets(shifted, -1000)).column("offset").to_pylist() == list(
        range(6)
    )
    with pytest.raises(CorruptRecordError, match="truncated"):
        shift_offsets(run[:-1], 1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.binary(min_size=0, max_size=150), min_size=9, max_size=300),
    st.booleans(),
    st.sampled_from([Compression.NONE, Compression.LZ4]),
)
def test_one_large_batch_is_cut_without_a_per_record_loop(values, json_like, codec) -> None:
    """A batch too large for the step-per-record search is cut by the chained search (every
    record ends where the next one's length and zero attributes byte begin); its records
    are the per-record loop's, for JSON-like values (no zero bytes: the chain is found) and
    for any bytes (found, or left to the loop)."""
    if json_like:
        values = [b'{"v": "%s"}' % v.hex().encode() for v in values]
    batch = build_batch(values, timestamps=[T0 + i for i in range(len(values))], compression=codec)
    table = decode_batches(batch)
    assert table.column("value").to_pylist() == values
    assert table.column("offset").to_pylist() == list(range(len(values)))
    section = memoryview(batch)[BATCH_OVERHEAD:]
    if codec != Compression.NONE:
        section = memoryview(decompress(codec, section))
    buf = np.frombuffer(bytes(section) + b"\x00" * 16, np.uint8)
    total = len(buf) - 16
    chained = decode._record_ends_chained(buf, total, len(values))
    expected = decode._record_ends(buf.tobytes(), 0, len(values))
    if json_like:
        assert chained is not None
    if chained is not None:
        assert chained.tolist() == expected


def test_a_damaged_large_batch_still_fails_as_corrupt() -> None:
    values = [b'{"k": %d}' % i for i in range(500)]
    batch = bytearray(build_batch(values, timestamps=[T0] * 500))
    record = BATCH_OVERHEAD + 200 * 12  # inside the records: a length made longer
    for pos in range(record, record + 12):
        damaged = bytearray(batch)
        damaged[pos] ^= 0x04
        with contextlib.suppress(CorruptRecordError):
            table = decode_batches(bytes(damaged), verify=False)
            assert table.num_rows == 500  # a flip inside a value leaves 500 records


@pytest.mark.parametrize("commit", [True, False])
def test_marker_batches_are_what_encoding_their_record_afresh_gives(commit: bool) -> None:
    """Markers reuse their encoded record: byte for byte the batch built from scratch, at any
    timestamp, producer and coordinator epoch."""
    from streamhouse.log.records.build import encode_records, frame_batch
    from streamhouse.log.records.control import marker_batch
    from streamhouse.log.records.header import ATTR_CONTROL, ATTR_TRANSACTIONAL

    for stamp, producer_id, epoch, coordinator_epoch in [
        (0, 0, 0, 0),
        (1_796_700_000_123, 42, 7, 3),
        (5, 2**40, 32_000, 2**31 - 1),
    ]:
        key = struct.pack(">hh", 0, 1 if commit else 0)
        value = struct.pack(">hi", 0, coordinator_epoch)
        records, base_ts, max_ts = encode_records([value], [key], [stamp], None)
        expected = frame_batch(
            records,
            1,
            base_ts,
            max_ts,
            Compression.NONE,
            0,
            producer_id,
            epoch,
            -1,
            flags=ATTR_TRANSACTIONAL | ATTR_CONTROL,
        )
        got = marker_batch(
            producer_id,
            epoch,
            commit=commit,
            coordinator_epoch=coordinator_epoch,
            timestamp_ms=stamp,
        )
        assert got == expected
