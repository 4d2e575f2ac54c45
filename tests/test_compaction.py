"""Compaction: small objects merged into larger per-partition ones, batches merged and
recompressed. Records must come back identical (offsets, keys, values, headers, timestamps)
through Kafka fetch and SQL, before and after the grace period; the index swap is fenced by
the partition's lease and refused when retention changed the rows; compaction concurrent with
produce loses nothing; a compactor killed with SIGKILL leaves orphans for fsck and nothing
lost. The store-level tests run on both metadata backends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition
from kafka_fixtures import REPO, KafkaServer, guarded

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import InvalidRecordError
from streamhouse.log import compaction_notes, fsck
from streamhouse.log.cleaner import Cleaner
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.metadata.swaps import SegmentSwap, SwapOutcome, lease_name
from streamhouse.log.records import Compression, build_batch, decode_batches, split_batches
from streamhouse.log.records.filter import drop_records
from streamhouse.log.records.merge import merge_batches
from streamhouse.log.segment import SEGMENT_PREFIX, SegmentBuilder, segment_key

BASE_TS = 1_767_225_600_000  # 2026-01-01


# -- merging batches --------------------------------------------------------------------------


def _random_run(rng: random.Random, producer_id: int) -> tuple[bytes, dict[int, int]]:
    """Batches of random records (null keys and values, headers, timestamps out of order, every
    codec); for an idempotent producer, the sequence number of each offset (with gaps where a
    batch's sequence does not follow on)."""
    parts, sequences, offset, sequence = [], {}, 0, 0
    for _ in range(rng.randint(1, 40)):
        n = rng.randint(1, 30)
        values = [
            None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 5, 200, 3000]))
            for _ in range(n)
        ]
        keys = [None if rng.random() < 0.3 else str(rng.randint(0, 9)).encode() for _ in range(n)]
        stamps = [BASE_TS + rng.randint(-5000, 5000) for _ in range(n)]
        headers = [[("h", b"v"), ("none", None)] if rng.random() < 0.3 else [] for _ in range(n)]
        parts.append(
            build_batch(
                values,
                keys,
                stamps,
                headers,
                compression=rng.choice(list(Compression)),
                base_offset=offset,
                producer_id=producer_id,
                producer_epoch=0 if producer_id >= 0 else -1,
                base_sequence=sequence if producer_id >= 0 else -1,
            )
        )
        sequences.update({offset + i: sequence + i for i in range(n)})
        offset, sequence = offset + n, sequence + n + (3 if rng.random() < 0.2 else 0)
    return b"".join(parts), sequences


def _same_records(a: bytes, b: bytes) -> None:
    left, right = decode_batches(a), decode_batches(b)
    for column in left.column_names:
        assert left[column].to_pylist() == right[column].to_pylist(), column


@pytest.mark.parametrize("producer_id", [-1, 7])
def test_merged_batches_keep_every_record_and_sequence(producer_id: int) -> None:
    rng = random.Random(producer_id)
    merged_any = False
    for _ in range(15):
        run, sequences = _random_run(rng, producer_id)
        limit = rng.choice([1000, 1 << 20])
        merged = merge_batches(run, max_batch_bytes=limit)
        _same_records(run, merged)
        before, after = split_batches(run), split_batches(merged)
        assert len(after) <= len(before)
        merged_any |= len(after) < len(before)
        for _, _, header in after:
            assert header.compression == Compression.ZSTD
            if producer_id >= 0:  # every record's sequence number: baseSequence + offsetDelta
                assert all(
                    sequences[header.base_offset + i] == header.base_sequence + i
                    for i in range(header.last_offset_delta + 1)
                )
    assert merged_any


def test_control_and_transactional_batches_are_kept_as_they_are() -> None:
    plain = [build_batch([b"a", b"b"], base_offset=0), build_batch([b"c"], base_offset=2)]
    control = bytearray(build_batch([b"\x00\x00\x00\x00"], base_offset=3))
    # attributes (offset 21, int16): control | transactional; the CRC is not checked here
    control[22] |= 0x30
    later = build_batch([b"d"], base_offset=4)
    run = b"".join([*plain, bytes(control), later])
    merged = merge_batches(run, compression=None)
    headers = [h for _, _, h in split_batches(merged)]
    assert [(h.base_offset, h.record_count) for h in headers] == [(0, 3), (3, 1), (4, 1)]
    assert bytes(control) in merged


def test_dropped_records_leave_the_others_and_the_offsets_as_they_were() -> None:
    rng = random.Random(3)
    for _ in range(20):
        run, _ = _random_run(rng, -1)
        everything = decode_batches(run)
        offsets = everything["offset"].to_pylist()
        keep = np.array(sorted(rng.sample(offsets, rng.randint(0, len(offsets)))), np.int64)
        cleaned = merge_batches(drop_records(run, keep))
        expected = everything.filter(pa.array(np.isin(offsets, keep)))
        table = decode_batches(cleaned)
        for column in table.column_names:
            assert table[column].to_pylist() == expected[column].to_pylist()
        headers = [h for _, _, h in split_batches(cleaned)]
        assert headers[0].base_offset == 0 and headers[-1].last_offset == offsets[-1]


# -- the index swap ---------------------------------------------------------------------------


def _commit(md: object, key: str, base: int, count: int, length: int = 100) -> None:
    entry = SimpleNamespace(
        topic="t", partition=0, base_offset=base, last_offset=base + count - 1, position=8,
        length=length, min_timestamp=BASE_TS, max_timestamp=BASE_TS + base, record_count=count,
        crc=base,
    )  # fmt: skip
    md.commit_segment(key, [entry])  # type: ignore[attr-defined]


def test_swap_is_one_fenced_transaction(md: object) -> None:
    md.create_topic("t")  # type: ignore[attr-defined]
    for i, key in enumerate(["a", "b", "c", "d"]):
        _commit(md, key, 10 * i, 10)
    rows = md.segments("t", 0)  # type: ignore[attr-defined]
    new = SegmentRow("ab", "t", 0, 0, 19, 8, 150, BASE_TS, BASE_TS + 10, 20, 1)
    swap = SegmentSwap(tuple(rows[:2]), new)
    with pytest.raises(ValueError, match="offsets"):
        SegmentSwap(tuple(rows[:3]), new)

    other = md.acquire_lease(lease_name("t", 0), "agent-b", 100)  # type: ignore[attr-defined]
    time.sleep(0.2)  # agent-b's lease expires; agent-a takes over at a higher epoch
    lease = md.acquire_lease(lease_name("t", 0), "agent-a", 10_000)  # type: ignore[attr-defined]
    assert md.replace_segments(swap, other) is SwapOutcome.FENCED  # type: ignore[attr-defined]
    assert md.segments("t", 0) == rows  # type: ignore[attr-defined]
    assert md.replace_segments(swap, lease) is SwapOutcome.SWAPPED  # type: ignore[attr-defined]
    after = md.segments("t", 0)  # type: ignore[attr-defined]
    assert [(r.object_key, r.base_offset, r.last_offset) for r in after] == [
        ("ab", 0, 19),
        ("c", 20, 29),
        ("d", 30, 39),
    ]
    assert md.due_objects(1 << 62) == ["a", "b"]  # type: ignore[attr-defined]
    # the time index still finds the first row at or after a timestamp
    assert md.segment_for_timestamp("t", 0, BASE_TS + 20).object_key == "c"  # type: ignore[attr-defined]
    assert md.replace_segments(swap, lease) is SwapOutcome.CHANGED  # type: ignore[attr-defined]

    md.delete_records("t", {0: 30})  # type: ignore[attr-defined]  # retention took row c
    later = SegmentSwap(tuple(after[1:]), SegmentRow("cd", "t", 0, 20, 39, 8, 90, 0, 0, 20, 2))
    assert md.replace_segments(later, lease) is SwapOutcome.CHANGED  # type: ignore[attr-defined]
    assert [r.object_key for r in md.segments("t", 0)] == ["d"]  # type: ignore[attr-defined]


def test_partitions_leased_elsewhere_are_passed_over(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.create_topic("t", partitions=2)
        for i in range(5):
            sh.produce("t", [{"seq": i}, {"seq": i + 100}], key=None)
        sh.log.metadata.acquire_lease(lease_name("t", 0), "another-agent", 60_000)
        report = sh.compact(["t"])
        assert report.busy == [("t", 0)]
        rows = {p: sh.log.metadata.segments("t", p) for p in range(2)}
        assert len(rows[0]) == 5
        assert len(rows[1]) == 1 and rows[1][0].record_count == sum(r.record_count for r in rows[0])


def test_compaction_keeps_retention_fine_grained(tmp_path: Path, metadata_url: str | None) -> None:
    """Rows are merged only within a tenth of retention.ms and retention.bytes, so retention
    still drops exactly the old records after compaction."""
    with streamhouse.connect(
        tmp_path / "data", metadata=metadata_url, linger_ms=1, object_delete_delay_s=0
    ) as sh:
        hour = 3_600_000
        sh.create_topic("t", config={"retention.ms": str(hour)})
        sh.create_topic("u", config={"retention.bytes": "20000"})
        old = int(time.time() * 1000) - 3 * hour
        for i in range(30):
            sh.produce("t", [{"seq": 10 * i + j} for j in range(10)], timestamp=old + i)
            sh.produce("u", [{"seq": 10 * i + j, "pad": "z" * 40} for j in range(10)])
        for i in range(30, 60):
            sh.produce("t", [{"seq": 10 * i + j} for j in range(10)])
        report = sh.compact()
        assert report.rows_replaced > 0
        rows = sh.log.metadata.inner.segments("t", 0)
        assert all(r.last_offset < 300 or r.base_offset >= 300 for r in rows)
        assert all(r.length <= 2000 for r in sh.log.metadata.inner.segments("u", 0))
        sh.enforce_retention()
        assert sh.log.offsets("t", 0).log_start_offset == 300
        seqs = sh.sql("SELECT seq FROM t").to_arrow_table()["seq"].to_pylist()
        assert sorted(seqs) == list(range(300, 600))


def _latest_per_key(sh: StreamHouse, topic: str) -> dict:
    """key -> (offset, value) of every record as fetched, the latest record per key."""
    table = sh.fetch(topic, 0)
    latest: dict = {}
    for key, offset, value in zip(
        table["key"].to_pylist(), table["offset"].to_pylist(), table["value"].to_pylist(),
        strict=True,
    ):  # fmt: skip
        latest[key] = (offset, value)
    return latest


def test_key_compaction_keeps_the_latest_record_per_key(
    tmp_path: Path, metadata_url: str | None
) -> None:
    """cleanup.policy=compact against a dict of the latest value per key: offsets never
    change, tombstones stay for delete.retention.ms, the last row is never cleaned."""
    rng = random.Random(5)
    with streamhouse.connect(
        tmp_path / "data", metadata=metadata_url, linger_ms=1, object_delete_delay_s=0
    ) as sh:
        sh.create_topic("kv", config={"cleanup.policy": "compact"})
        expected: dict[bytes, tuple[int, bytes | None]] = {}
        offset = 0
        for flush in range(40):
            keys = [f"k{rng.randint(0, 19)}".encode() for _ in range(10)]
            values = [None if rng.random() < 0.15 else f"v{flush}-{i}".encode() for i in range(10)]
            sh.produce("kv", values, key=keys)
            for key, value in zip(keys, values, strict=True):
                expected[key] = (offset, value)
                offset += 1
        everything = sh.fetch("kv", 0)
        last_row = sh.log.metadata.inner.segments("kv", 0)[-1]

        report = sh.compact(["kv"])
        assert report.rows_replaced == 39 and report.records < offset  # not the last row
        table = sh.fetch("kv", 0)
        assert _latest_per_key(sh, "kv") == expected  # the latest value of every key
        kept = dict(zip(everything["offset"].to_pylist(), everything["value"].to_pylist(),
                        strict=True))  # fmt: skip
        for o, v in zip(table["offset"].to_pylist(), table["value"].to_pylist(), strict=True):
            assert kept[o] == v  # offsets never change
        latest = {o for o, _ in expected.values()}
        cleaned = [o for o in table["offset"].to_pylist() if o < last_row.base_offset]
        assert set(cleaned) <= latest  # only the latest record of a key stays in cleaned rows
        assert any(v is None for _, v in expected.values())  # tombstones kept (1 day)
        assert sh.log.metadata.inner.segments("kv", 0)[-1] == last_row
        assert sh.log.offsets("kv", 0).high_watermark == offset

        sh.alter_topic("kv", {"delete.retention.ms": "0"})
        sh.compact(["kv"])
        after = _latest_per_key(sh, "kv")
        gone = {k for k, (o, v) in expected.items() if v is None and o < last_row.base_offset}
        assert gone and set(after) == set(expected) - gone
        assert {k: ov for k, ov in expected.items() if k not in gone} == after
        sql = sh.sql("SELECT _offset FROM kv").to_arrow_table()["_offset"].to_pylist()
        assert sorted(sql) == sh.fetch("kv", 0)["offset"].to_pylist()
        report = fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0)
        assert report.findings == []


def test_key_compaction_of_transactions_keeps_what_read_committed_readers_see(
    tmp_path: Path,
) -> None:
    """Transactional records are cleaned like others (a query's sink writes in transactions),
    but an aborted record is never its key's latest (the committed value before it stays),
    and nothing at or after an open transaction's first offset is cleaned."""
    with streamhouse.connect(tmp_path / "data", linger_ms=1, object_delete_delay_s=0) as sh:
        sh.create_topic("kv", config={"cleanup.policy": "compact"})
        for round_ in range(6):
            with sh.transaction() as txn:
                txn.produce("kv", [f"c{round_}-{k}" for k in "abc"], key=list("abc"))
        with pytest.raises(RuntimeError), sh.transaction() as txn:
            txn.produce("kv", ["aborted-a"], key=["a"])  # the latest record of "a", aborted
            raise RuntimeError("abort it")
        sh.produce("kv", ["plain-c"], key=["c"])
        opened = sh.transaction()
        opened.__enter__()
        opened.produce("kv", ["open-b"], key=["b"])  # stays open through the compaction
        sh.produce("kv", ["after-a"], key=["a"])  # beyond the open transaction's first offset
        sh.produce("kv", ["last"], key=["z"])  # the active segment
        written = sh.fetch("kv", 0, isolation_level="read_uncommitted").num_rows

        assert sh.compact(["kv"]).rows_replaced > 0
        committed = sh.fetch("kv", 0)
        assert dict(
            zip(committed["key"].to_pylist(), committed["value"].to_pylist(), strict=True)
        ) == {  # fmt: skip
            b"a": b"c5-a",  # after-a waits behind the open transaction
            b"b": b"c5-b",
            b"c": b"plain-c",
        }
        assert committed.num_rows == 3  # older committed values of a, b, c cleaned
        everything = sh.fetch("kv", 0, isolation_level="read_uncommitted")
        values = everything["value"].to_pylist()
        assert b"aborted-a" not in values  # cleaned with the values it did not replace
        assert {b"open-b", b"after-a", b"last"} <= set(values)  # not cleaned: open from there
        assert everything.num_rows < written
        opened.__exit__(None, None, None)  # commit
        final = sh.fetch("kv", 0)
        assert (
            dict(zip(final["key"].to_pylist(), final["value"].to_pylist(), strict=False))[b"b"]
            == b"open-b"
        )


def test_kafka_clients_read_a_key_compacted_topic_with_its_gaps(tmp_path: Path) -> None:
    """confluent-kafka and kafka-python read the cleaned rows (offset gaps, batches left empty
    at a row's start or end) and get exactly the records that stayed."""
    with streamhouse.connect(tmp_path / "data", linger_ms=1, object_delete_delay_s=0) as sh:
        sh.create_topic("kv", config={"cleanup.policy": "compact"})
        with pytest.raises(InvalidRecordError, match="cannot accept message without key"):
            sh.produce("kv", ["no key"])
        for flush in range(11):  # every flush overwrites the keys of the one before
            sh.produce("kv", [f"v{flush}-{i}" for i in range(6)], key=[f"k{i}" for i in range(6)])
        sh.produce("kv", ["last-0", "last-1", "last-2"], key=["k0", "k1", "k2"])
        sh.compact(["kv"])
        table = sh.fetch("kv", 0)
        stayed = list(zip(table["offset"].to_pylist(), table["value"].to_pylist(), strict=True))
    # k3..k5 of flush 10 (offsets 63-65: 0-62 went), then the last row, never cleaned
    assert stayed == [(63, b"v10-3"), (64, b"v10-4"), (65, b"v10-5")] + [
        (66 + i, f"last-{i}".encode()) for i in range(3)
    ]
    server = KafkaServer(tmp_path / "data").start()
    try:
        errors: list = []
        producer = Producer({"bootstrap.servers": server.bootstrap, "retries": 0})
        producer.produce("kv", b"no key", on_delivery=lambda err, _: errors.append(err))
        producer.flush(15)
        assert [e.name() for e in errors] == ["INVALID_RECORD"]  # as Kafka refuses it
        consumer = Consumer(
            {"bootstrap.servers": server.bootstrap, "group.id": "g", "enable.auto.commit": False}
        )
        consumer.assign([CTopicPartition("kv", 0, 0)])
        got: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + 30
        while len(got) < len(stayed) and time.monotonic() < deadline:
            got += [(m.offset(), m.value()) for m in consumer.consume(100, timeout=0.5)]
        consumer.close()
        assert got == stayed
        kp = KafkaConsumer(bootstrap_servers=server.bootstrap, consumer_timeout_ms=10_000)
        kp.assign([TopicPartition("kv", 0)])
        kp.seek(TopicPartition("kv", 0), 0)
        read = []
        for m in kp:
            read.append((m.offset, m.value))
            if len(read) == len(stayed):
                break
        kp.close()
        assert read == stayed
    finally:
        server.stop()


def test_the_cleaner_cleans_partitions_as_kafkas_dirty_ratio_and_lag_say(tmp_path: Path) -> None:
    """Kafka's cleaner rules: a compacted partition is cleaned when the bytes written since its
    last cleaning are more than ``min.cleanable.dirty.ratio`` of its cleanable bytes, or its
    oldest uncleaned record is older than ``max.compaction.lag.ms``; never the active row; a
    partition with nothing new is not touched; topics that are not compacted never."""
    with streamhouse.connect(tmp_path / "data", linger_ms=1, object_delete_delay_s=0) as sh:
        sh.create_topic("kv", partitions=2, config={"cleanup.policy": "compact"})
        sh.create_topic("plain")
        for flush in range(10):  # unique keys that stay, and "a" written over and over
            keys = [f"u{flush}-{i}" for i in range(5)] + ["a"]
            for partition in range(2):
                sh.produce("kv", ["x" * 200] * 6, key=keys, partition=partition)
            sh.produce("plain", [f"v{flush}"])
        plain_rows = sh.log.metadata.inner.segments("plain", 0)
        cleaner = Cleaner(sh.log)

        def a_offsets(partition: int) -> list[int]:
            table = sh.fetch("kv", partition)
            keys, offsets = table["key"].to_pylist(), table["offset"].to_pylist()
            assert {k for k in keys if k != b"a"} == {
                f"u{f}-{i}".encode() for f in range(10) for i in range(5)
            }
            return [o for k, o in zip(keys, offsets, strict=True) if k == b"a"]  # fmt: skip

        report = cleaner.run_once()  # never cleaned: all dirty (ratio 1 > 0.5)
        assert report is not None and report.rows_replaced == 2 * 9  # not the active rows
        assert a_offsets(0) == a_offsets(1) == [59]  # the latest "a", in the active row
        assert sh.log.metadata.inner.segments("plain", 0) == plain_rows
        assert cleaner.run_once() is None  # nothing written since
        untouched = sh.log.metadata.inner.segments("kv", 1)

        sh.produce("kv", ["y"], key=["a"], partition=0)  # the last row (with an "a") is dirty
        assert cleaner.run_once() is None  # a dirty ratio below 0.5
        sh.alter_topic("kv", {"min.cleanable.dirty.ratio": "0.01"})
        assert cleaner.run_once() is not None
        assert a_offsets(0) == [60]  # only the latest "a" is left
        assert sh.log.metadata.inner.segments("kv", 1) == untouched

        sh.alter_topic("kv", {"min.cleanable.dirty.ratio": "0.99"})
        sh.produce("kv", ["z"], key=["a"], partition=0)
        time.sleep(0.01)
        assert cleaner.run_once() is None  # little dirty, and no max.compaction.lag.ms
        sh.alter_topic("kv", {"max.compaction.lag.ms": "1"})
        assert cleaner.run_once() is not None  # its oldest dirty record is older than that
        assert a_offsets(0) == [61]


def test_serve_cleans_a_compacted_topic_within_its_cleaner_backoff(tmp_path: Path) -> None:
    """librdkafka's 0077 against serve: a topic created with cleanup.policy=compact and
    min.cleanable.dirty.ratio=0.01 through the admin API is cleaned by the log cleaner
    (log_cleaner_backoff_s), not the hourly compaction pass; consumers then read the latest
    record of each key at its offset."""
    env = _env(None, retention_check_interval_s="3600", log_cleaner_backoff_s="0.5")
    server = KafkaServer(tmp_path / "data", env=env).start()
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        config = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01",
                  "segment.ms": "10000", "segment.bytes": "10000"}  # fmt: skip
        admin.create_topics([NewTopic("kv", 1, 1, config=config)])["kv"].result(30)
        producer = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 0})
        for i in range(10):
            producer.produce("kv", f"v{i}".encode(), key=b"k1")
            assert producer.flush(30) == 0  # one batch, one index row each
        producer.produce("kv", b"tombstone-next", key=b"k2")
        producer.produce("kv", None, key=b"k2")
        assert producer.flush(30) == 0
        producer.produce("kv", b"filler", key=b"k3")  # the active row
        assert producer.flush(30) == 0
        cleaned = [(9, b"k1", b"v9"), (11, b"k2", None), (12, b"k3", b"filler")]
        deadline = time.monotonic() + 60
        while (got := _read_kv(server.bootstrap)) != cleaned:
            assert time.monotonic() < deadline, f"not cleaned: {got}"
            time.sleep(0.3)
    finally:
        assert server.stop() == 0, server.log()


def _read_kv(bootstrap: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of the records of kv-0 from its start, until the high watermark."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "r", "enable.partition.eof": True}
    )
    consumer.assign([CTopicPartition("kv", 0, 0)])
    got: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                return got
            got.append((m.offset(), m.key(), m.value()))
        raise AssertionError(f"no end of kv-0 within 30 s: {got}")
    finally:
        consumer.close()


def test_compaction_on_s3(tmp_path: Path, moto_server: str, s3_url: Callable[[str], str]) -> None:
    """Range reads of the old runs and the put of the new object go through S3 (moto)."""
    url = s3_url("compaction")
    with streamhouse.connect(
        tmp_path, object_store=url, s3_endpoint_url=moto_server, linger_ms=1,
        object_delete_delay_s=0,
    ) as sh:  # fmt: skip
        sh.create_topic("t", partitions=2)
        for i in range(20):
            sh.produce(
                "t", [{"seq": 10 * i + j} for j in range(10)], key=[str(j) for j in range(10)]
            )
        before = sh.fetch("t")
        assert len(_objects(sh)) == 20
        report = sh.compact()
        assert report.rows_replaced == 40 and len(report.objects_written) == 2
        assert sorted(sh.enforce_retention().deleted_objects) != []
        assert _objects(sh) == set(report.objects_written)
        assert sh.fetch("t").equals(before)
        assert fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0).findings == []


def _rebuild(data: Path) -> None:
    (data / "metadata.sqlite3").unlink()  # the metadata is lost
    for extra in data.glob("metadata.sqlite3-*"):
        extra.unlink()
    result = CliRunner().invoke(main, ["--data-dir", str(data), "fsck", "--rebuild-metadata"])
    # the replaced objects are orphans now (fsck --delete-orphans removes them); nothing else
    findings = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert all(line.startswith("orphan ") for line in findings), result.output


def test_a_rebuild_indexes_compacted_records_once(tmp_path: Path) -> None:
    """Lost metadata rebuilt while replaced objects are still there (the grace period), or
    beside a killed compactor's orphan: every record once, at its offset."""
    data = tmp_path / "data"
    with streamhouse.connect(data, linger_ms=1, object_delete_delay_s=3600) as sh:
        sh.create_topic("t", partitions=2)
        for i in range(12):
            sh.produce(
                "t", [{"seq": 10 * i + j} for j in range(10)], key=[str(j) for j in range(10)]
            )
        before = sh.fetch("t")
        assert len(sh.compact().objects_written) == 2
        sources = _objects(sh)
    _rebuild(data)
    with streamhouse.connect(data) as sh:
        assert sh.fetch("t").equals(before)
        rows = [r for p in range(2) for r in sh.log.metadata.inner.segments("t", p)]
        assert len(rows) == 2  # the compacted runs, not the 24 they replaced
        # A compactor killed before its swap: the old rows are indexed, its object an orphan.
        sh.produce("t", [{"seq": 1000 + j} for j in range(4)], key=["a", "b", "c", "d"])
        sh.produce("t", [{"seq": 2000 + j} for j in range(4)], key=["a", "b", "c", "d"])
        before = sh.fetch("t")
        p = next(p for p in range(2) if len(sh.log.metadata.inner.segments("t", p)) == 3)
        group = sh.log.metadata.inner.segments("t", p)[1:]
        run = b"".join(sh.log.reader.run_bytes(r) for r in group)
        builder = SegmentBuilder()
        builder.add(
            "t", p, run, base_offset=group[0].base_offset, last_offset=group[-1].last_offset,
            min_timestamp=0, max_timestamp=0, record_count=sum(r.record_count for r in group),
        )  # fmt: skip
        orphan = segment_key(time.time_ns() // 1000)
        sh.log.store.put(orphan, builder.build()[0])
        compaction_notes.write_note(sh.log.store, orphan, group)
        assert sources < _objects(sh)
    _rebuild(data)
    with streamhouse.connect(data) as sh:
        assert sh.fetch("t").equals(before)


def test_an_updating_materialized_view_writes_to_a_key_compacted_topic(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data", linger_ms=1, object_delete_delay_s=0) as sh:
        sh.sql("CREATE STREAM s (k STRING, v BIGINT) WITH (topic = 's', format = 'json')")
        sh.sql(
            "CREATE MATERIALIZED VIEW v AS SELECT k, COUNT(*) AS n, SUM(v) AS sv FROM s GROUP BY k"
        )
        (view,) = sh._queries
        assert sh.topic("v").config == {"cleanup.policy": "compact"}
        for i in range(12):  # each round updates every key: a row per key per round
            sh.produce("s", [{"k": f"k{j}", "v": i * j} for j in range(5)])
            view.run_until_caught_up()
        answer = sh.sql("SELECT * FROM v").to_arrow_table().sort_by("k")
        written = sh.fetch("v").num_rows
        assert sh.compact(["v"]).rows_replaced > 0
        assert sh.fetch("v").num_rows < written
        assert sh.sql("SELECT * FROM v").to_arrow_table().sort_by("k").equals(answer)
        assert answer.to_pydict() == {
            "k": [f"k{j}" for j in range(5)],
            "n": [12] * 5,
            "sv": [sum(i * j for i in range(12)) for j in range(5)],
        }
        view.stop()


# -- through a real server, on both metadata backends -----------------------------------------

TOPIC = "clicks"
PARTITIONS = 3


def _produce_small_flushes(bootstrap: str, first: int, count: int, flush_every: int = 10) -> None:
    """Records with keys, headers and explicit timestamps, flushed every few records (each
    flush is one small multi-partition object)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(first, first + count):
        producer.produce(
            TOPIC,
            json.dumps({"seq": i, "page": f"/p/{i % 13}", "pad": "x" * (i % 50)}).encode(),
            key=None if i % 5 == 0 else f"user-{i % 7}".encode(),
            partition=i % PARTITIONS,
            timestamp=BASE_TS + (i * 7919) % 100_000,
            headers=[("i", str(i).encode()), ("empty", b"")] if i % 3 else None,
        )
        if (i + 1) % flush_every == 0:
            producer.flush(15)
    producer.flush(15)


def _consume_all(bootstrap: str) -> list[tuple]:
    """Every record of every partition through Kafka fetch, by (partition, offset)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "check", "enable.auto.commit": False}
    )
    try:
        tps = [CTopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)]
        ends = {p: consumer.get_watermark_offsets(tp, timeout=15)[1] for p, tp in enumerate(tps)}
        consumer.assign(tps)
        got: dict[tuple[int, int], tuple] = {}
        deadline = time.monotonic() + 60
        while sum(1 for p, o in got if o < ends[p]) < sum(ends.values()):
            assert time.monotonic() < deadline, "consumer did not reach the high watermarks"
            for m in consumer.consume(500, timeout=1):
                assert m.error() is None, m.error()
                got[(m.partition(), m.offset())] = (
                    m.key(),
                    m.value(),
                    m.headers(),
                    m.timestamp(),
                )
    finally:
        consumer.close()
    return sorted((*k, *v) for k, v in got.items())


def _fetch_all(sh: StreamHouse) -> list[tuple]:
    """Every record through the log's Kafka fetch path in this process, as :func:`_consume_all`
    gives them."""
    out = []
    for p in range(PARTITIONS):
        offset, end = 0, sh.log.offsets(TOPIC, p).high_watermark
        while offset < end:
            batches = sh.log.fetch(TOPIC, p, offset, max_bytes=4096).records
            for r in decode_batches(batches, min_offset=offset).to_pylist():
                headers = [(h["key"], h["value"]) for h in r["headers"]] or None
                stamp = (1, int(r["timestamp"].timestamp() * 1000))  # create time
                out.append((p, r["offset"], r["key"], r["value"], headers, stamp))
                offset = r["offset"] + 1
    return sorted(out)


def _sql(sh: StreamHouse) -> list[dict]:
    return (
        sh.sql(f"SELECT _partition, _offset, _timestamp, _key, seq, page FROM {TOPIC}")
        .to_arrow_table()
        .sort_by([("_partition", "ascending"), ("_offset", "ascending")])
        .to_pylist()
    )


def _objects(sh: StreamHouse) -> set[str]:
    return set(sh.log.store.list(SEGMENT_PREFIX))


def _env(metadata_url: str | None, **settings: str) -> dict[str, str]:
    env = {f"STREAMHOUSE_{k.upper()}": v for k, v in settings.items()}
    return {"STREAMHOUSE_LINGER_MS": "1", **env} | (
        {"STREAMHOUSE_METADATA": metadata_url} if metadata_url else {}
    )


def test_compaction_keeps_every_record_through_kafka_and_sql(
    tmp_path: Path, metadata_url: str | None
) -> None:
    env = _env(metadata_url, retention_check_interval_s="3600")
    server = KafkaServer(tmp_path / "data", env=env).start()
    sh = streamhouse.connect(tmp_path / "data", metadata=metadata_url, object_delete_delay_s=1.0)
    try:
        sh.create_topic(TOPIC, partitions=PARTITIONS)
        _produce_small_flushes(server.bootstrap, 0, 600)
        fetched, answer = _consume_all(server.bootstrap), _sql(sh)
        assert len(fetched) == len(answer) == 600
        old_objects = _objects(sh)
        old_rows = [r for p in range(PARTITIONS) for r in sh.log.metadata.inner.segments(TOPIC, p)]
        assert len(old_objects) >= 50 and len(old_rows) >= 150  # many small flushes
        old_bytes = sum(r.length for r in old_rows)

        url = ["--metadata", metadata_url] if metadata_url else []
        result = CliRunner().invoke(main, [*url, "--data-dir", str(tmp_path / "data"), "compact"])
        assert result.exit_code == 0, result.output
        assert f"{len(old_rows)} index row(s) merged into {PARTITIONS} object(s)" in result.output

        rows = [r for p in range(PARTITIONS) for r in sh.log.metadata.inner.segments(TOPIC, p)]
        assert len(rows) == PARTITIONS and {r.object_key for r in rows}.isdisjoint(old_objects)
        assert sum(r.length for r in rows) < 0.5 * old_bytes  # larger batches, zstd
        # A fetch or query that read the index before the swap still finds its objects.
        _same_records(
            b"".join(sh.log.reader.run_bytes(r) for r in old_rows if r.partition == 0),
            sh.log.reader.run_bytes(rows[0]),
        )
        assert _consume_all(server.bootstrap) == fetched  # the server's cache holds old rows
        assert _sql(sh) == answer
        report = fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0)
        assert report.findings == [] and sorted(report.retiring) == sorted(old_objects)

        time.sleep(1.1)  # the grace period
        deleted = sh.enforce_retention().deleted_objects
        assert sorted(deleted) == sorted(old_objects)
        assert _objects(sh) == {r.object_key for r in rows}
        assert _sql(sh) == answer
        assert fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0).findings == []
        assert _fetch_all(sh) == fetched  # the fetch path over the compacted objects alone
    finally:
        sh.close()
        server.stop()


class _Readers:
    """A confluent-kafka consumer through the server and bounded SQL queries in this process,
    in threads, until :meth:`stop`."""

    def __init__(self, server: KafkaServer, sh: StreamHouse) -> None:
        self.consumed: list[tuple[int, int, int]] = []  # (partition, offset, seq)
        self.answers = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=guarded(lambda: self._consume(server), self.errors)),
            threading.Thread(target=guarded(lambda: self._query(sh), self.errors)),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()

    def _consume(self, server: KafkaServer) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": server.bootstrap,
                "group.id": "live",
                "enable.auto.commit": False,
                "max.partition.fetch.bytes": 2048,  # a few batches per fetch
            }
        )
        consumer.assign([CTopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        try:
            while not self._stop.is_set():
                for m in consumer.consume(200, timeout=0.1):
                    if m.error() is not None:
                        raise RuntimeError(str(m.error()))
                    seq = json.loads(m.value())["seq"]
                    self.consumed.append((m.partition(), m.offset(), seq))
        finally:
            consumer.close()

    def _query(self, sh: StreamHouse) -> None:
        while not self._stop.is_set():
            seqs = sh.sql("SELECT seq FROM declared").to_arrow_table()["seq"].to_pylist()
            if len(seqs) != len(set(seqs)):
                raise AssertionError("a query read a record twice")
            self.answers += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_background_compaction_while_producing_and_reading_loses_nothing(
    tmp_path: Path, metadata_url: str | None
) -> None:
    env = _env(
        metadata_url,
        retention_check_interval_s="0.3",
        object_delete_delay_s="15",  # longer than the metadata caches' 10 s refresh
        compaction_target_bytes="8192",
    )
    server = KafkaServer(tmp_path / "data", env=env).start()
    sh = streamhouse.connect(tmp_path / "data", metadata=metadata_url)
    try:
        sh.create_topic(TOPIC, partitions=PARTITIONS)
        sh.sql(f"CREATE STREAM declared (seq BIGINT) WITH (topic = '{TOPIC}', format = 'json')")
        readers = _Readers(server, sh)
        total = 900
        for first in range(0, total, 300):  # while the server compacts in the background
            _produce_small_flushes(server.bootstrap, first, 300, flush_every=5)
            time.sleep(0.3)
        deadline = time.monotonic() + 60
        while len({(p, o) for p, o, _ in readers.consumed}) < total:
            assert readers.errors == []
            assert time.monotonic() < deadline, "the consumer did not get every record"
            time.sleep(0.1)
        time.sleep(0.6)  # a last pass or two
        readers.stop()
        assert readers.errors == [] and readers.answers > 0
        by_position = {(p, o): seq for p, o, seq in readers.consumed}
        assert len(by_position) == total and sorted(by_position.values()) == list(range(total))
        for p in range(PARTITIONS):  # offsets dense, seqs in produce order within a partition
            mine = sorted((o, s) for (q, o), s in by_position.items() if q == p)
            assert [o for o, _ in mine] == list(range(len(mine)))
            assert [s for _, s in mine] == sorted(s for _, s in mine)
        assert sorted(r["seq"] for r in _sql(sh)) == list(range(total))
        rows = [r for p in range(PARTITIONS) for r in sh.log.metadata.inner.segments(TOPIC, p)]
        assert len(rows) < (total // 5) // 2  # the flushes' rows were merged
        assert len({r.object_key for r in rows}) <= len(rows)
        assert fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0).findings == []
    finally:
        sh.close()
        server.stop()


def test_kill_9_during_compaction_leaves_a_consistent_store(
    tmp_path: Path, metadata_url: str | None
) -> None:
    data = tmp_path / "data"
    with streamhouse.connect(data, metadata=metadata_url, linger_ms=1) as sh:
        sh.create_topic(TOPIC, partitions=8)
        pad = "y" * 300
        for first in range(0, 12_000, 100):  # 120 flushes of 100 records over 8 partitions
            sh.produce(
                TOPIC, [{"seq": i, "page": "/", "pad": pad} for i in range(first, first + 100)]
            )
        before = _sql(sh)
        objects = _objects(sh)
        flushed = [len(sh.log.metadata.inner.segments(TOPIC, p)) for p in range(8)]
    url = ["--metadata", metadata_url] if metadata_url else []
    command = [sys.executable, "-m", "streamhouse", *url, "--data-dir", str(data), "compact"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "STREAMHOUSE_COMPACTION_LEASE_S": "1",
            # A small target: the pass writes dozens of objects (a partition's 30 KB of lz4
            # runs in several), so the kill lands inside it however fast the compactor runs.
            "STREAMHOUSE_COMPACTION_TARGET_BYTES": "4096",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    with streamhouse.connect(data, metadata=metadata_url) as sh:
        while len(_objects(sh)) <= len(objects):  # the compactor's first object landed
            assert process.poll() is None, "compaction ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with streamhouse.connect(data, metadata=metadata_url, object_delete_delay_s=0) as sh:
        assert _sql(sh) == before
        report = fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0)
        assert {f.kind for f in report.findings} <= {fsck.FindingKind.ORPHAN}
        rows = {p: sh.log.metadata.inner.segments(TOPIC, p) for p in range(8)}
        # Killed before the pass ended: some partition's flushed rows are all still there.
        assert any(len(rows[p]) == flushed[p] for p in range(8)), [len(r) for r in rows.values()]
        time.sleep(1.0)  # the killed compactor's lease expires
        done = sh.compact()  # the next pass finishes the work
        assert done.busy == []
        assert done.objects_written
        assert _sql(sh) == before
        report = fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0)
        orphans = report.of_kind(fsck.FindingKind.ORPHAN)
        assert [f.kind for f in report.findings] == [fsck.FindingKind.ORPHAN] * len(orphans)
        fsck.delete_orphans(sh.log.store, sh.log.metadata.inner, report, orphan_min_age_s=0)
        sh.enforce_retention()
        assert fsck.check(sh.log.store, sh.log.metadata.inner, orphan_min_age_s=0).findings == []
        named = {r.object_key for p in range(8) for r in sh.log.metadata.inner.segments(TOPIC, p)}
        assert _objects(sh) == named and len(named) == 8
        assert _sql(sh) == before
