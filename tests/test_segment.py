"""Segment objects: layout round trip, corruption and truncation detection, tail reads."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhouse.errors import CorruptSegmentError
from streamhouse.log.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore, validate_key
from streamhouse.log.segment import (
    MAGIC,
    TAIL_READ_SIZE,
    TRAILER_SIZE,
    SegmentBuilder,
    SegmentEntry,
    check_entry,
    read_entry_from_store,
    read_footer,
    read_footer_from_store,
    segment_key,
)

KEY = "segments/00000000000000000001-abcd0123.seg"


def add(builder: SegmentBuilder, topic: str, partition: int, data: bytes, base: int = 0) -> None:
    builder.add(
        topic,
        partition,
        data,
        base_offset=base,
        last_offset=base + len(data) - 1,
        min_timestamp=1000 + base,
        max_timestamp=2000 + base,
        record_count=len(data),
    )


def sample() -> tuple[bytes, list[SegmentEntry], dict[tuple[str, int], bytes]]:
    runs = {
        ("orders", 1): b"o1" * 50,
        ("clicks", 0): b"c0" * 70,
        ("orders", 0): b"o0" * 30,
        ("ünïcode-topic", 3): b"u3" * 10,
    }
    builder = SegmentBuilder()
    for (topic, partition), data in runs.items():
        add(builder, topic, partition, data)
    data, entries = builder.build()
    return data, entries, runs


def test_round_trip() -> None:
    data, entries, runs = sample()
    assert data.startswith(MAGIC) and data.endswith(MAGIC)
    assert read_footer(data, KEY) == entries
    assert [(e.topic, e.partition) for e in entries] == sorted(runs)
    for entry in entries:
        run = runs[(entry.topic, entry.partition)]
        assert check_entry(data, entry, KEY) == run
        assert data[entry.position : entry.position + entry.length] == run
        assert (entry.base_offset, entry.last_offset) == (0, len(run) - 1)
        assert (entry.min_timestamp, entry.max_timestamp, entry.record_count) == (
            1000,
            2000,
            len(run),
        )
    # Runs are contiguous and the footer follows the last.
    ends = [e.position + e.length for e in entries]
    assert [e.position for e in entries[1:]] == ends[:-1]


def test_adding_a_partition_again_extends_its_run() -> None:
    builder = SegmentBuilder()
    add(builder, "t", 0, b"abc", base=10)
    add(builder, "u", 0, b"zz", base=0)
    add(builder, "t", 0, b"defg", base=13)
    assert len(builder) == 2
    assert builder.size == len(MAGIC) + 9
    data, entries = builder.build()
    t0 = entries[0]
    assert (t0.topic, t0.base_offset, t0.last_offset, t0.record_count) == ("t", 10, 16, 7)
    assert (t0.min_timestamp, t0.max_timestamp) == (1010, 2013)
    assert check_entry(data, t0, KEY) == b"abcdefg"
    with pytest.raises(ValueError, match="not after"):
        add(builder, "t", 0, b"x", base=16)


def test_add_rejects_bad_input() -> None:
    builder = SegmentBuilder()
    with pytest.raises(ValueError):
        add(builder, "t", 0, b"")
    with pytest.raises(ValueError):
        builder.add(
            "t", 0, b"x", base_offset=5, last_offset=4, min_timestamp=0, max_timestamp=0,
            record_count=1,
        )  # fmt: skip
    assert len(builder) == 0


def test_empty_segment() -> None:
    data, entries = SegmentBuilder().build()
    assert entries == [] and read_footer(data, KEY) == []


def test_corrupt_run_is_detected_and_other_runs_still_check_out() -> None:
    data, entries, runs = sample()
    victim = entries[1]
    corrupt = bytearray(data)
    corrupt[victim.position + victim.length // 2] ^= 0x40
    corrupt = bytes(corrupt)
    assert read_footer(corrupt, KEY) == entries  # the footer is intact
    with pytest.raises(CorruptSegmentError, match=KEY) as info:
        check_entry(corrupt, victim, KEY)
    assert info.value.key == KEY
    assert f"{victim.topic}/{victim.partition}" in str(info.value)
    for entry in entries:
        if entry is not victim:
            assert check_entry(corrupt, entry, KEY) == runs[(entry.topic, entry.partition)]


def test_check_entry_accepts_just_the_run() -> None:
    data, entries, runs = sample()
    e = entries[0]
    assert check_entry(data[e.position : e.position + e.length], e, KEY) == runs[(e.topic, 0)]
    with pytest.raises(CorruptSegmentError, match="truncated"):
        check_entry(data[: e.position + 3], e, KEY)


def test_truncated_object_is_corrupt() -> None:
    data, _, _ = sample()
    for cut in range(len(data)):
        with pytest.raises(CorruptSegmentError, match=KEY):
            read_footer(data[:cut], KEY)


@pytest.mark.parametrize("where", ["header", "footer", "trailer"])
def test_corrupt_header_footer_or_trailer(where: str) -> None:
    data, entries, _ = sample()
    footer_start = entries[-1].position + entries[-1].length
    index = {"header": 2, "footer": footer_start + 5, "trailer": len(data) - 20}[where]
    corrupt = bytearray(data)
    corrupt[index] ^= 0x01
    with pytest.raises(CorruptSegmentError, match=KEY):
        read_footer(bytes(corrupt), KEY)


def test_not_a_segment() -> None:
    with pytest.raises(CorruptSegmentError, match="magic"):
        read_footer(os.urandom(100), KEY)


runs_strategy = st.dictionaries(
    st.tuples(st.text(min_size=1, max_size=12), st.integers(0, 2**31 - 1)),
    st.binary(min_size=1, max_size=200),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(runs_strategy)
def test_round_trip_property(runs: dict[tuple[str, int], bytes]) -> None:
    builder = SegmentBuilder()
    for (topic, partition), data in runs.items():
        add(builder, topic, partition, data, base=2**40)
    data, entries = builder.build()
    assert read_footer(data, KEY) == entries
    assert {(e.topic, e.partition): check_entry(data, e, KEY) for e in entries} == runs


def test_encoding_is_fast() -> None:
    chunk = os.urandom(8 * 1024 * 1024 // 512)
    start = time.perf_counter()
    builder = SegmentBuilder()
    for p in range(512):
        add(builder, f"topic-{p % 8}", p, chunk)
    data, entries = builder.build()
    elapsed = time.perf_counter() - start
    assert len(entries) == 512 and len(data) > 8 * 1024 * 1024
    assert elapsed < 1.0, elapsed  # about 10 ms on a laptop


def test_segment_keys_sort_by_sequence() -> None:
    keys = [segment_key(n) for n in (0, 9, 10, 10**12)]
    assert keys == sorted(keys)
    assert all(validate_key(k) and k.startswith("segments/") for k in keys)
    assert segment_key(3) != segment_key(3)
    with pytest.raises(ValueError):
        segment_key(-1)


# -- reading footers from stores -----------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path)
    make: Callable[..., S3ObjectStore] = request.getfixturevalue("s3_store")
    return make("seg-tests")


@pytest.mark.parametrize("shape", ["small", "big-data", "big-footer"])
def test_read_footer_from_store(store: ObjectStore, shape: str) -> None:
    builder = SegmentBuilder()
    if shape == "small":
        add(builder, "t", 0, b"tiny")
    elif shape == "big-data":  # the tail read holds the whole footer
        add(builder, "t", 0, os.urandom(3 * TAIL_READ_SIZE))
    else:  # the footer is longer than the tail read: a second range-read
        for p in range(TAIL_READ_SIZE // 64 + 100):
            add(builder, "t", p, b"x")
    data, entries = builder.build()
    store.put(KEY, data)
    assert read_footer_from_store(store, KEY) == entries
    for entry in entries[:3] + entries[-3:]:
        assert read_entry_from_store(store, KEY, entry) == check_entry(data, entry, KEY)


def test_read_footer_from_store_detects_damage(store: ObjectStore) -> None:
    data, entries, _ = sample()
    store.put(KEY, data[:-1])
    with pytest.raises(CorruptSegmentError, match=KEY):
        read_footer_from_store(store, KEY)
    store.put(KEY, data[: TRAILER_SIZE - 1])
    with pytest.raises(CorruptSegmentError, match=KEY):
        read_footer_from_store(store, KEY)
    corrupt = bytearray(data)
    corrupt[entries[0].position] ^= 0xFF
    store.put(KEY, bytes(corrupt))
    entry = read_footer_from_store(store, KEY)[0]
    with pytest.raises(CorruptSegmentError, match=KEY):
        read_entry_from_store(store, KEY, entry)
