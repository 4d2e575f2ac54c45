"""The integrated log under the API: one object per flush, damaged objects, list offsets."""

from __future__ import annotations

from pathlib import Path

import pytest

import streamhouse
from streamhouse import (
    CorruptSegmentError,
    DamagedRangeError,
    OffsetOutOfRangeError,
    StorageError,
    StreamHouse,
)
from streamhouse.config import Settings
from streamhouse.log import Log
from streamhouse.log.records import build_batch, decode_batches


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _write_three_partitions(data_dir: Path) -> str:
    """Produce 10 records to each of three partitions in one flush; returns the object key."""
    with Log.open(Settings.load(data_dir=data_dir, linger_ms=60_000, linger_when_idle=True)) as log:
        log.create_topic("t", partitions=3)
        futures = [
            log.append("t", p, build_batch([f"p{p}-{i}".encode() for i in range(10)]))
            for p in range(3)
        ]
        log.flush()  # one flush, long before the linger runs out
        assert [f.result(timeout=10) for f in futures] == [0, 0, 0]
        keys = {row.object_key for p in range(3) for row in log.metadata.segments("t", p)}
    (key,) = keys
    return key


def _values(sh: StreamHouse, partition: int) -> list[bytes]:
    return sh.fetch("t", partition)["value"].to_pylist()


def test_one_flush_writes_one_object_for_many_partitions(data_dir: Path) -> None:
    key = _write_three_partitions(data_dir)
    assert [p.name for p in (data_dir / "objects" / "segments").iterdir()] == [key.split("/")[1]]
    with streamhouse.connect(data_dir) as sh:
        for p in range(3):
            assert _values(sh, p) == [f"p{p}-{i}".encode() for i in range(10)]
            (row,) = sh.log.metadata.segments("t", p)
            assert (row.base_offset, row.last_offset, row.record_count) == (0, 9, 10)


def test_corrupt_run_fails_only_its_partition(data_dir: Path) -> None:
    key = _write_three_partitions(data_dir)
    path = data_dir / "objects" / key
    with streamhouse.connect(data_dir) as sh:
        (row,) = sh.log.metadata.segments("t", 1)
    data = bytearray(path.read_bytes())
    data[row.position + row.length - 3] ^= 0x40  # inside the last record of partition 1
    path.write_bytes(bytes(data))

    with streamhouse.connect(data_dir) as sh:  # a fresh process: nothing cached
        with pytest.raises(
            DamagedRangeError, match=r"topic 't' partition 1 offsets \[0, 9\] .*checksum mismatch"
        ) as err:
            sh.fetch("t", 1)
        assert err.value.key == key and key in str(err.value)
        with pytest.raises(CorruptSegmentError, match=key):
            sh.log.fetch("t", 1, 0)  # the Kafka fetch path
        with pytest.raises(CorruptSegmentError, match=key):
            sh.sql("SELECT count(*) FROM t").to_arrow_table()
        assert _values(sh, 0) == [f"p0-{i}".encode() for i in range(10)]
        assert _values(sh, 2) == [f"p2-{i}".encode() for i in range(10)]
        # Fetching keeps failing the same way (a damaged object is never served).
        with pytest.raises(CorruptSegmentError, match=key):
            sh.fetch("t", 1)
        # The partitions still take writes; new records are served after the damaged ones.
        assert sh.produce("t", [b"new"], partition=1).offsets == {1: (10, 10)}
        assert sh.fetch("t", 1, offset=10)["value"].to_pylist() == [b"new"]


def test_truncated_object_fails_the_cut_partition_and_serves_the_rest(data_dir: Path) -> None:
    key = _write_three_partitions(data_dir)
    path = data_dir / "objects" / key
    with streamhouse.connect(data_dir) as sh:
        (row,) = sh.log.metadata.segments("t", 2)  # the last run in the object
    data = path.read_bytes()
    path.write_bytes(data[: row.position + row.length // 2])

    with streamhouse.connect(data_dir) as sh:
        with pytest.raises(
            DamagedRangeError, match=r"partition 2 offsets \[0, 9\] .*run truncated"
        ) as err:
            sh.fetch("t", 2)
        assert err.value.key == key
        assert _values(sh, 0) == [f"p0-{i}".encode() for i in range(10)]
        assert _values(sh, 1) == [f"p1-{i}".encode() for i in range(10)]


def test_a_missing_object_is_a_storage_error_naming_it(data_dir: Path) -> None:
    key = _write_three_partitions(data_dir)
    (data_dir / "objects" / key).unlink()
    with streamhouse.connect(data_dir) as sh, pytest.raises(StorageError, match=key):
        sh.fetch("t", 0)


def test_blocked_object_directory_fails_the_flush_then_recovers(data_dir: Path) -> None:
    with streamhouse.connect(data_dir, linger_ms=1) as sh:
        sh.create_topic("t", partitions=2)
        sh.produce("t", [b"a", b"b"], partition=0)
        segments = data_dir / "objects" / "segments"
        segments.rename(data_dir / "objects" / "moved")
        segments.write_bytes(b"")  # a file where the directory should be
        with pytest.raises(StorageError, match="cannot write object 'segments/"):
            sh.produce("t", [b"lost"], partition=0)
        with pytest.raises(StorageError):
            sh.produce("t", [b"lost too"], partition=1)
        segments.unlink()
        (data_dir / "objects" / "moved").rename(segments)
        # Offsets continue where the acknowledged records ended: the failures took none.
        assert sh.produce("t", [b"c"], partition=0).offsets == {0: (2, 2)}
        assert sh.produce("t", [b"d"], partition=1).offsets == {1: (0, 0)}
    with streamhouse.connect(data_dir) as sh:
        assert _values(sh, 0) == [b"a", b"b", b"c"]
        assert _values(sh, 1) == [b"d"]


def test_list_offsets_by_earliest_latest_and_timestamp(data_dir: Path) -> None:
    with streamhouse.connect(data_dir, linger_ms=1) as sh:
        sh.create_topic("t")
        base = 1_767_225_600_000
        for start in range(0, 30, 10):  # three objects, timestamps base + 0..29 s
            sh.produce(
                "t", [b"v"] * 10, timestamp=[base + i * 1000 for i in range(start, start + 10)]
            )
        offsets = sh.log.offsets("t", 0)
        assert (offsets.log_start_offset, offsets.high_watermark) == (0, 30)
        assert sh.log.offset_for_timestamp("t", 0, base) == (0, base)
        assert sh.log.offset_for_timestamp("t", 0, base + 12_500) == (13, base + 13_000)
        assert sh.log.offset_for_timestamp("t", 0, base + 29_000) == (29, base + 29_000)
        assert sh.log.offset_for_timestamp("t", 0, base + 30_000) is None
        with pytest.raises(OffsetOutOfRangeError, match=r"offset 31 of t-0 is outside \[0, 30\]"):
            sh.log.fetch("t", 0, 31)
        assert sh.log.fetch("t", 0, 30).records == b""
        # A fetch from the middle of a batch returns whole batches from the one holding it.
        table = decode_batches(sh.log.fetch("t", 0, 15, max_bytes=1).records, min_offset=15)
        assert table["offset"].to_pylist() == list(range(15, 20))
