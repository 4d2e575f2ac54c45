"""The Python API end to end: connect, topics, produce, fetch and SQL results, on a real log."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_murmur2

import streamhouse
from streamhouse import (
    RecordTooLargeError,
    SqlError,
    StreamHouse,
    StreamHouseError,
    UnknownPartitionError,
    UnknownStreamError,
    UnknownTopicError,
)
from streamhouse.log.objectstore import S3ObjectStore
from streamhouse.log.partitioner import partitions_for_keys
from streamhouse.log.records import Compression, split_batches


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


def _segment_keys(data_dir: Path) -> list[str]:
    root = data_dir / "objects"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.seg"))


# -- connect ---------------------------------------------------------------------------------


def test_connect_without_path_uses_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMHOUSE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with streamhouse.connect() as conn:
        conn.create_topic("here")
        conn.produce("here", [b"one"])
    assert (tmp_path / "streamhouse-data" / "metadata.sqlite3").is_file()
    assert len(_segment_keys(tmp_path / "streamhouse-data")) == 1
    with streamhouse.connect(tmp_path / "streamhouse-data") as again:
        assert again.fetch("here")["value"].to_pylist() == [b"one"]


def test_connect_without_path_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMHOUSE_DATA_DIR", str(tmp_path / "from-env"))
    with streamhouse.connect() as conn:
        conn.create_topic("there", partitions=2)
    with StreamHouse() as direct:  # the class itself resolves the directory the same way
        assert direct.settings.data_dir == tmp_path / "from-env"
    assert (tmp_path / "from-env" / "metadata.sqlite3").is_file()
    assert not (tmp_path / "streamhouse-data").exists()
    with streamhouse.connect(tmp_path / "from-env") as again:
        assert [(t.name, t.partitions) for t in again.topics()] == [("there", 2)]


# -- produce and fetch round trips -------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_round_trip_for_every_codec(sh: StreamHouse, codec: str) -> None:
    sh.create_topic("codecs", partitions=2)
    rng = random.Random(codec)
    values: list[object] = [
        {"i": i, "text": "é" * rng.randrange(0, 50), "pad": "x" * rng.randrange(0, 300)}
        for i in range(300)
    ]
    values += [b"\x00\xffraw bytes", "plain text", None, b""]
    keys = [f"user-{i % 7}" if i % 5 else None for i in range(len(values))]
    stamps = [1_767_225_600_000 + i * 1000 for i in range(len(values))]
    produced = sh.produce(
        "codecs",
        values,
        key=keys,
        timestamp=stamps,
        headers={"source": "test", "empty": None, "bin": b"\x01\x02"},
        compression=codec,
    )
    assert produced.records == len(values)

    table = sh.fetch("codecs")
    assert table.num_rows == len(values)
    assert table.column_names == ["partition", "offset", "timestamp", "key", "value", "headers"]
    expected_values = [
        json.dumps(v, separators=(",", ":")).encode()
        if isinstance(v, dict)
        else v.encode()
        if isinstance(v, str)
        else v
        for v in values
    ]
    by_value = {}
    for row in table.to_pylist():
        by_value.setdefault(row["value"], []).append(row)
    for i, value in enumerate(expected_values):
        row = by_value[value].pop(0)
        assert row["key"] == (keys[i].encode() if keys[i] is not None else None)
        assert row["timestamp"] == datetime(2026, 1, 1) + timedelta(seconds=i)
        assert row["headers"] == [
            {"key": "source", "value": b"test"},
            {"key": "empty", "value": None},
            {"key": "bin", "value": b"\x01\x02"},
        ]
        start, end = produced.offsets[row["partition"]]
        assert start <= row["offset"] <= end

    # The stored batches carry the codec asked for.
    for partition in range(2):
        records = sh.log.fetch("codecs", partition, 0).records
        codecs = {header.compression for _, _, header in split_batches(records)}
        assert codecs == {Compression[codec.upper()]}


def test_keys_land_where_kafka_pythons_default_partitioner_puts_them(sh: StreamHouse) -> None:
    sh.create_topic("keyed", partitions=7)

    class Cluster:  # the two questions kafka-python's partitioner asks of its cluster metadata
        def topics(self) -> set[str]:
            return {"keyed"}

        def partitions_for_topic(self, topic: str) -> set[int]:
            return set(range(7))

        available_partitions_for_topic = partitions_for_topic

    keys = [f"customer-{i}".encode() for i in range(200)] + [b"", b"\xff\x00\x80", "ü".encode()]
    sh.produce("keyed", [{"n": i} for i in range(len(keys))], key=keys)
    table = sh.fetch("keyed")
    where = dict(zip(table["key"].to_pylist(), table["partition"].to_pylist(), strict=True))
    partitioner = DefaultPartitioner()
    for key in keys:
        expected = partitioner.partition("keyed", key, key, None, None, Cluster())
        assert where[key] == expected, key
    # One key is one partition, in produce order.
    rows = [r for r in table.to_pylist() if r["key"] == b"customer-3"]
    assert len({r["partition"] for r in rows}) == 1


def test_partitions_for_keys_matches_kafka_pythons_partitioner_key_by_key() -> None:
    """The vectorized murmur2 (sink and produce paths) against kafka-python's, over keys of
    every length from 0 to 40 bytes (each tail length), sliced arrays and strings."""
    rng = np.random.default_rng(7)
    keys = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in range(41)] * 20
    keys += [
        rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8).tobytes() for _ in range(500)
    ]
    for count in (1, 2, 3, 7, 12):
        expected = [murmur2_partition(key, count) for key in keys]
        assert partitions_for_keys(pa.array(keys, pa.binary()), count).tolist() == expected
        sliced = pa.array(keys, pa.binary()).slice(13, 300)
        assert partitions_for_keys(sliced, count).tolist() == expected[13:313]
    texts = ["customer-1", "ü", ""]
    assert partitions_for_keys(pa.array(texts), 5).tolist() == [
        murmur2_partition(t.encode(), 5) for t in texts
    ]


def murmur2_partition(key: bytes, partitions: int) -> int:
    """kafka-python's default partitioner (its own murmur2), for one key."""
    return (kafka_murmur2(key) & 0x7FFFFFFF) % partitions


def test_timestamps_as_datetimes_and_milliseconds(sh: StreamHouse) -> None:
    sh.create_topic("times")
    moments = [
        datetime(2026, 1, 1, 0, 0, 0, 123000),  # naive: UTC
        datetime(2026, 1, 1, 1, 0, 0, 999000, tzinfo=timezone(timedelta(hours=1))),
        datetime(1969, 12, 31, 23, 59, 59, 1000, tzinfo=UTC),  # before the epoch
        1_767_225_600_007,
    ]
    sh.produce("times", ["a", "b", "c", "d"], timestamp=moments)
    got = sh.fetch("times")["timestamp"].cast(pa.int64()).to_pylist()
    assert got == [1_767_225_600_123, 1_767_225_600_999, -999, 1_767_225_600_007]

    before = int(datetime.now(UTC).timestamp() * 1000)
    sh.produce("times", ["now"])
    after = int(datetime.now(UTC).timestamp() * 1000)
    (now,) = sh.fetch("times", offset=4)["timestamp"].cast(pa.int64()).to_pylist()
    assert before <= now <= after + 1

    with pytest.raises(StreamHouseError, match="2 timestamps given for 3 records"):
        sh.produce("times", ["x", "y", "z"], timestamp=[1, 2])
    assert sh.log.offsets("times", 0).high_watermark == 5


def test_headers_as_pairs_keep_order_and_duplicates(sh: StreamHouse) -> None:
    sh.create_topic("headers")
    sh.produce("headers", [b"v"], headers=[("h", "1"), ("h", b"2"), ("ütf", None)])
    (row,) = sh.fetch("headers").to_pylist()
    assert row["headers"] == [
        {"key": "h", "value": b"1"},
        {"key": "h", "value": b"2"},
        {"key": "ütf", "value": None},
    ]


def test_fetch_one_partition_from_an_offset(sh: StreamHouse) -> None:
    sh.create_topic("paged", partitions=2)
    sh.produce("paged", [str(i) for i in range(10)], partition=1)
    sh.produce("paged", [str(i) for i in range(10, 20)], partition=1)
    table = sh.fetch("paged", partition=1, offset=7, max_records=5)
    assert table["offset"].to_pylist() == [7, 8, 9, 10, 11]
    assert table["value"].to_pylist() == [b"7", b"8", b"9", b"10", b"11"]
    assert sh.fetch("paged", partition=0).num_rows == 0
    assert sh.fetch("paged", partition=1, offset=20).num_rows == 0
    with pytest.raises(UnknownPartitionError, match="has no partition 2"):
        sh.fetch("paged", partition=2)


def test_produce_call_offsets_are_contiguous_per_partition(sh: StreamHouse) -> None:
    sh.create_topic("spread", partitions=3)
    produced = sh.produce("spread", [f"r{i}" for i in range(30)])
    assert produced.records == 30
    assert sum(last - first + 1 for first, last in produced.offsets.values()) == 30
    table = sh.fetch("spread")
    for partition, (first, last) in produced.offsets.items():
        rows = table.filter(pa.compute.equal(table["partition"], partition))
        assert rows["offset"].to_pylist() == list(range(first, last + 1))


# -- bad input ---------------------------------------------------------------------------------


def test_unknown_topic_is_a_clear_error(sh: StreamHouse) -> None:
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        sh.produce("nope", [b"x"])
    with pytest.raises(UnknownTopicError, match="unknown topic 'nope'"):
        sh.fetch("nope")
    with pytest.raises(UnknownTopicError):
        sh.delete_topic("nope")
    with pytest.raises(UnknownStreamError, match=r"'nope' \(line 1, column 15\)"):
        sh.sql("SELECT * FROM nope")
    sh.create_topic("one", partitions=2)
    with pytest.raises(UnknownPartitionError, match="'one' has no partition 5"):
        sh.produce("one", [b"x"], partition=5)
    with pytest.raises(StreamHouseError, match="unknown compression 'brotli'"):
        sh.produce("one", [b"x"], compression="brotli")
    assert sh.fetch("one").num_rows == 0


def test_oversized_record_fails_the_call_and_writes_nothing(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path, max_message_bytes=4096, linger_ms=1) as conn:
        conn.create_topic("small", partitions=1, config={"max.message.bytes": "1000"})
        conn.create_topic("default")
        # Many records that fit one by one are split into batches within the limit.
        produced = conn.produce("small", [b"x" * 600] * 20, compression="none")
        assert produced.offsets == {0: (0, 19)}
        batches = split_batches(conn.log.fetch("small", 0, 0, max_bytes=1 << 20).records)
        assert len(batches) == 20 and all(end - start <= 1000 for start, end, _ in batches)

        with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes=1000 of topic 'small'"):
            conn.produce("small", [b"ok", b"y" * 2000], compression="none")
        assert conn.log.offsets("small", 0).high_watermark == 20

        # Without a topic config, the setting applies.
        conn.produce("default", [b"z" * 3000], compression="none")
        with pytest.raises(RecordTooLargeError, match=r"max\.message\.bytes=4096"):
            conn.produce("default", [bytes(range(256)) * 20], compression="none")
        assert conn.fetch("default")["value"].to_pylist() == [b"z" * 3000]
        # A record that compresses below the limit is accepted, as Kafka does.
        conn.produce("small", [b"a" * 5000], compression="lz4")
        assert conn.fetch("small", offset=20)["value"].to_pylist() == [b"a" * 5000]


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_producer_threads_get_contiguous_offsets(sh: StreamHouse) -> None:
    sh.create_topic("busy", partitions=3)
    acks: list[tuple[int, int, bytes]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def producer(worker: int) -> None:
        rng = random.Random(worker)
        try:
            for call in range(40):
                values = [f"w{worker}-c{call}-r{i}".encode() for i in range(rng.randrange(1, 8))]
                produced = sh.produce("busy", values, partition=rng.randrange(3))
                ((partition, (first, last)),) = produced.offsets.items()
                assert last - first + 1 == len(values)
                with lock:
                    acks.extend((partition, first + i, value) for i, value in enumerate(values))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = sh.fetch("busy")
    stored = {
        (p, o): v
        for p, o, v in zip(
            table["partition"].to_pylist(),
            table["offset"].to_pylist(),
            table["value"].to_pylist(),
            strict=True,
        )
    }
    assert len(stored) == table.num_rows == len(acks)
    assert {(p, o): v for p, o, v in acks} == stored
    for partition in range(3):
        offsets = sorted(o for p, o in stored if p == partition)
        assert offsets == list(range(len(offsets)))
        assert sh.log.offsets("busy", partition).high_watermark == len(offsets)


def test_two_connections_on_one_directory_are_fenced_and_retry(
    tmp_path: Path, metadata_url: str | None
) -> None:
    first = streamhouse.connect(tmp_path, linger_ms=1, metadata=metadata_url)
    second = streamhouse.connect(tmp_path, linger_ms=1, metadata=metadata_url)
    try:
        first.create_topic("shared", partitions=2)
        assert first.produce("shared", ["a0", "a1"], partition=0).offsets == {0: (0, 1)}
        # `first` now believes partition 0 continues at offset 2; `second` takes it first.
        assert second.produce("shared", ["b0", "b1", "b2"], partition=0).offsets == {0: (2, 4)}
        # The stale commit of `first` is refused; it re-stamps from the new high watermark.
        assert first.produce("shared", ["a2"], partition=0).offsets == {0: (5, 5)}
        assert second.produce("shared", ["b3"], partition=0).offsets == {0: (6, 6)}
        values = first.fetch("shared", partition=0)["value"].to_pylist()
        assert values == [b"a0", b"a1", b"b0", b"b1", b"b2", b"a2", b"b3"]
        # The object of the refused commit was deleted: every object on disk is indexed.
        indexed = {row.object_key for row in first.log.metadata.segments("shared", 0)}
        assert set(_segment_keys(tmp_path)) == indexed
        assert len(indexed) == 4
    finally:
        first.close()
        second.close()


# -- results -----------------------------------------------------------------------------------


def test_sql_results_are_lazy_and_speak_arrow(sh: StreamHouse) -> None:
    sh.create_topic("clicks", partitions=2)
    sh.produce("clicks", [{"user": u, "n": i} for i, u in enumerate("abcab")])
    relation = sh.sql("SELECT user, sum(n) AS total FROM clicks GROUP BY user ORDER BY user")
    sh.produce("clicks", [{"user": "c", "n": 100}])  # the query runs when read
    expected = {"user": ["a", "b", "c"], "total": [3, 5, 102]}
    assert relation.to_arrow_table().to_pydict() == expected
    assert pa.table(relation).to_pydict() == expected  # __arrow_c_stream__
    assert relation.to_arrow_reader().read_all().to_pydict() == expected
    assert relation.df()["total"].tolist() == [3, 5, 102]
    assert relation.pl()["user"].to_list() == ["a", "b", "c"]
    assert relation.fetchall() == [("a", 3), ("b", 5), ("c", 102)]


def test_delete_topic_removes_its_objects(sh: StreamHouse) -> None:
    sh.create_topic("gone", partitions=2)
    sh.create_topic("kept")
    sh.produce("gone", [b"1", b"2", b"3"])
    sh.produce("kept", [b"k"])
    kept = {row.object_key for row in sh.log.metadata.segments("kept", 0)}
    gone = {row.object_key for p in range(2) for row in sh.log.metadata.segments("gone", p)}
    assert set(_segment_keys(sh.settings.data_dir)) == kept | gone
    sh.delete_topic("gone")
    assert [t.name for t in sh.topics()] == ["kept"]
    assert set(_segment_keys(sh.settings.data_dir)) == kept
    with pytest.raises(UnknownTopicError):
        sh.fetch("gone")
    sh.create_topic("gone")  # re-created empty, offsets from 0
    assert sh.produce("gone", [b"new"]).offsets == {0: (0, 0)}
    assert sh.fetch("gone")["value"].to_pylist() == [b"new"]
    assert sh.fetch("kept")["value"].to_pylist() == [b"k"]


# -- S3 --------------------------------------------------------------------------------------


def test_the_whole_api_on_s3(
    tmp_path: Path,
    moto_server: str,
    s3_store: Callable[..., S3ObjectStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # moto's, as in conftest's s3_store
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = s3_store().bucket  # creates the bucket
    url = f"s3://{bucket}/cluster-1"
    with streamhouse.connect(
        tmp_path, object_store=url, s3_endpoint_url=moto_server, linger_ms=1
    ) as conn:
        conn.create_topic("orders", partitions=2)
        rows = [{"id": i, "region": "eu" if i % 3 else "us", "amount": i * 1.5} for i in range(50)]
        produced = conn.produce("orders", rows, key=[str(r["id"]) for r in rows])
        assert produced.records == 50
        assert not (tmp_path / "objects").exists()  # nothing went to the local directory
        indexed = {
            row.object_key for p in range(2) for row in conn.log.metadata.segments("orders", p)
        }
    assert set(s3_store("cluster-1").list()) == indexed  # under the prefix, nothing else

    # A new connection (nothing cached) reads everything back from the bucket.
    with streamhouse.connect(tmp_path, object_store=url, s3_endpoint_url=moto_server) as conn:
        table = conn.fetch("orders")
        assert sorted(json.loads(v)["id"] for v in table["value"].to_pylist()) == list(range(50))
        answer = conn.sql(
            "SELECT region, count(*) AS n, sum(amount) AS total FROM orders"
            " GROUP BY region ORDER BY region"
        ).to_arrow_table()
        assert answer.to_pydict() == {
            "region": ["eu", "us"],
            "n": [33, 17],
            "total": [
                sum(i * 1.5 for i in range(50) if i % 3),
                sum(i * 1.5 for i in range(0, 50, 3)),
            ],
        }
    assert not (tmp_path / "objects").exists()


def test_python_functions_results_are_cast_to_the_declared_type_or_named(sh: StreamHouse) -> None:
    import pyarrow.compute as pc

    sh.create_topic("words")
    sh.produce("words", [{"w": "banana"}, {"w": "kiwi"}])
    # pc.count_substring gives int32; int64 is declared
    sh.register_function(
        "t_count_a", lambda s: pc.count_substring(s, "a"), [pa.string()], pa.int64()
    )
    table = sh.sql("SELECT w, t_count_a(w) AS n FROM words ORDER BY w").to_arrow_table()
    assert table.schema.field("n").type == pa.int64()
    assert table.to_pylist() == [{"w": "banana", "n": 3}, {"w": "kiwi", "n": 0}]
    sh.register_function("t_as_int", lambda s: s, [pa.string()], pa.int64())
    with pytest.raises(
        SqlError, match="function 't_as_int' returned string, not the declared int64"
    ):
        sh.sql("SELECT t_as_int(w) FROM words").to_arrow_table()
    sh.register_function("t_divide", lambda s: 1 / 0, [pa.string()], pa.int64())
    with pytest.raises(
        SqlError, match="a Python function raised ZeroDivisionError: division by zero"
    ):
        sh.sql("SELECT t_divide(w) FROM words").to_arrow_table()


def test_an_invalid_array_from_the_engine_is_an_error_not_a_crash() -> None:
    """DataFusion 55 once built a Utf8 array whose offsets ran past its empty data buffer
    (CASE over Utf8 and Utf8View branches, sorted); reading it crashed the process."""
    from streamhouse.result import check_batch, conform

    offsets = bytearray(pa.array([0, 1, 2, 3], pa.int32()).buffers()[1])
    array = pa.Array.from_buffers(
        pa.string(), 3, [None, pa.py_buffer(offsets), pa.py_buffer(b"abc")]
    )
    batch = pa.RecordBatch.from_arrays([array], names=["s"])
    offsets[12:16] = (300).to_bytes(4, "little")  # the last offset now runs past the data
    with pytest.raises(SqlError, match="the query engine produced an invalid result"):
        check_batch(batch)
    with pytest.raises(SqlError, match="invalid result"):
        list(conform(iter([batch]), batch.schema))
