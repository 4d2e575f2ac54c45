"""The metadata cache: answers from memory, agrees with the store, hears other processes'
commits (SQLite polling, PostgreSQL LISTEN/NOTIFY), and wakes a long-polling Kafka fetch in
one ``serve`` process within 100 ms of a commit by another."""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from kafka_fixtures import KafkaServer
from test_metadata import Entry

from streamhouse.log.metadata import SegmentRow
from streamhouse.log.metadata.cache import CachedMetadata
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.sqlite import SQLiteMetadata

Store = SQLiteMetadata | PostgresMetadata


@pytest.fixture
def stores(tmp_path: Path, metadata_url: str | None) -> Iterator[tuple[CachedMetadata, Store]]:
    """A cached store, and the same store opened again uncached (as another process would)."""

    def store() -> Store:
        if metadata_url is None:
            return SQLiteMetadata(tmp_path / "metadata.sqlite3")
        return PostgresMetadata(metadata_url)

    cached, other = CachedMetadata(store()), store()
    try:
        _until(lambda: cached.live, "the commit feed never became live")
        yield cached, other
    finally:
        cached.close()
        other.close()


def _until(condition, message: str, timeout: float = 10.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held; fails with ``message`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, message
        time.sleep(0.002)
    return time.monotonic() - start


def test_the_cache_answers_as_the_store_does(stores: tuple[CachedMetadata, Store]) -> None:
    cached, other = stores
    cached.create_topic("t", partitions=2)
    rng = random.Random(14)
    for i in range(200):  # commits of this process (extending the index) and of another
        writer = cached if rng.random() < 0.7 else other
        size = rng.randrange(1, 5)
        writer.commit_segment(f"o{i}", [Entry("t", i % 2, 0, size - 1, position=i)])
        if writer is other:  # wait for the feed, or read a stale high watermark
            p, hw = i % 2, other.partition_offset("t", i % 2).high_watermark
            _until(lambda p=p, hw=hw: cached.partition_offset("t", p).high_watermark == hw, "lost")
    for p in (0, 1):
        assert cached.partition_offset("t", p) == other.partition_offset("t", p)
        high_watermark = other.partition_offset("t", p).high_watermark
        for _ in range(300):
            start = rng.randrange(0, high_watermark + 2)
            end = rng.choice([None, rng.randrange(start, high_watermark + 3)])
            limit = rng.choice([None, 1, 3, 16])
            assert cached.segments("t", p, start, end, limit=limit) == other.segments(
                "t", p, start, end, limit=limit
            ), (p, start, end, limit)
    stats = cached.stats
    assert stats.index_hits > 500 and stats.offset_hits > 0
    assert stats.hit_rate > 0.9, stats


def test_segments_of_many_partitions_at_once_are_each_partitions_segments(
    stores: tuple[CachedMetadata, Store],
) -> None:
    """One read for a topic's partitions (a bounded scan of a wide topic) gives what a read
    per partition gives, cached or not, with other processes' commits heard in between."""
    cached, other = stores
    cached.create_topic("w", partitions=12)
    rng = random.Random(23)
    for i in range(120):
        writer = cached if i % 3 else other
        entries = [Entry("w", p, 0, rng.randrange(0, 3)) for p in rng.sample(range(12), 4)]
        writer.commit_segment(f"w{i}", entries)
    _until(
        lambda: all(
            cached.partition_offset("w", p) == other.partition_offset("w", p) for p in range(12)
        ),
        "the cache never heard the other process's commits",
    )
    cached.segments("w", 3, 5)  # one partition cached from offset 5 on, the rest not
    found = 0
    for _ in range(40):
        ranges: dict[int, tuple[int, int | None]] = {}
        for p in rng.sample(range(12), rng.choice([1, 5, 12])):
            start = rng.randrange(0, 40)
            ranges[p] = (start, rng.choice([None, start + rng.randrange(0, 20)]))
        expected = {p: other.segments("w", p, start, end) for p, (start, end) in ranges.items()}
        assert other.segments_of_partitions("w", ranges) == expected, ranges
        assert cached.segments_of_partitions("w", ranges) == expected, ranges
        found += sum(len(rows) for rows in expected.values())
    assert found > 100
    # warm: what a wide fetch calls first; the reads that follow are all hits
    cached.warm("w", dict.fromkeys(range(12), 0))
    misses = (cached.stats.index_misses, cached.stats.offset_misses)
    for p in range(12):
        assert cached.segments("w", p) == other.segments("w", p)
    assert (cached.stats.index_misses, cached.stats.offset_misses) == misses
    # partitions a fetch names that the topic lacks (it answers them an error): nothing is
    # read or kept for them, however many a client names
    indexes = len(cached._indexes)
    cached.warm("w", dict.fromkeys([-1, *range(12, 5012)], 0))
    assert (cached.stats.index_misses, cached.stats.offset_misses) == misses
    assert len(cached._indexes) == indexes


def test_the_hit_rate_is_logged_at_close(
    stores: tuple[CachedMetadata, Store], caplog: pytest.LogCaptureFixture
) -> None:
    """The hit rate is in the logs (at INFO: ``streamhouse -v``) when the store closes."""
    cached, _ = stores
    cached.create_topic("t", partitions=2)
    for _ in range(9):
        assert cached.get_topic("t") is not None
    rate = cached.stats.hit_rate
    assert rate > 0.5
    with caplog.at_level(logging.INFO, logger="streamhouse.log.metadata.cache"):
        cached.close()
    (line,) = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("metadata cache")
    ]
    assert line.startswith(f"metadata cache: {100 * rate:.1f}% hits (topics ")


def test_commits_of_other_processes_are_heard_and_wake_listeners(
    stores: tuple[CachedMetadata, Store],
) -> None:
    cached, other = stores
    cached.create_topic("t", partitions=3)
    assert cached.partition_offsets("t")[1].high_watermark == 0  # now cached
    heard: list[tuple[str, int, int]] = []
    event = threading.Event()

    def listener(topic: str, partition: int, high_watermark: int) -> None:
        heard.append((topic, partition, high_watermark))
        event.set()

    cached.add_listener(listener)
    waits = []
    for i in range(10):
        event.clear()
        started = time.monotonic()
        other.commit_segment(f"x{i}", [Entry("t", 1, 0, 4)])
        assert event.wait(5), "the commit of another process was never heard"
        waits.append(time.monotonic() - started)
    assert heard[-1] == ("t", 1, 50)
    assert cached.partition_offset("t", 1).high_watermark == 50
    rows = cached.segments("t", 1, 47)
    assert [(r.object_key, r.base_offset) for r in rows] == [("x9", 45)]
    assert statistics.median(waits) < 0.1, waits


def test_a_deleted_and_recreated_topic_is_not_served_stale(
    stores: tuple[CachedMetadata, Store],
) -> None:
    cached, other = stores
    cached.create_topic("t")
    cached.commit_segment("a", [Entry("t", 0, 0, 9)])
    assert [r.object_key for r in cached.segments("t", 0)] == ["a"]
    other.delete_topic("t")
    other.create_topic("t", partitions=2)
    other.commit_segment("b", [Entry("t", 0, 0, 1)])
    time.sleep(1.1)  # the topic TTL
    assert cached.get_topic("t").partitions == 2  # type: ignore[union-attr]
    assert cached.partition_offset("t", 0).high_watermark == 2
    assert [r.object_key for r in cached.segments("t", 0)] == ["b"]


def test_postgresql_feed_reconnects_and_the_cache_stays_correct(postgres_url: str) -> None:
    cached, other = CachedMetadata(PostgresMetadata(postgres_url)), PostgresMetadata(postgres_url)
    try:
        _until(lambda: cached.live, "never live")
        cached.create_topic("t")
        cached.commit_segment("a", [Entry("t", 0, 0, 9)])
        assert cached.segments("t", 0)[0].object_key == "a"
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # kill the LISTEN session
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            ).fetchall()
        assert killed
        other.commit_segment("b", [Entry("t", 0, 0, 4)])  # maybe missed by the dead feed
        _until(lambda: cached.partition_offset("t", 0).high_watermark == 15, "stale for good")
        rows: list[SegmentRow] = cached.segments("t", 0)
        assert [(r.object_key, r.base_offset) for r in rows] == [("a", 0), ("b", 10)]
    finally:
        cached.close()
        other.close()


def test_a_long_poll_in_one_serve_process_wakes_on_a_commit_of_another(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two ``streamhouse serve`` processes on one PostgreSQL database and one object store:
    a consumer long-polling (fetch.wait.max.ms 5 s) on one gets each record produced through
    the other within 100 ms (median) of its acknowledgement."""
    from confluent_kafka import Consumer, Producer

    env = {"STREAMHOUSE_METADATA": postgres_url}
    data = tmp_path / "data"
    a, b = KafkaServer(data, env=env).start(), KafkaServer(data, env=env).start()
    try:
        producer = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 0})
        consumer = Consumer(
            {
                "bootstrap.servers": b.bootstrap,
                "group.id": "g",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 5000,
                "enable.auto.commit": False,
            }
        )
        producer.produce("lat", b"warm-up")
        producer.flush(30)
        consumer.subscribe(["lat"])
        received: dict[bytes, float] = {}

        def consume() -> None:
            deadline = time.monotonic() + 60
            while len(received) < 21 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    received[message.value()] = time.monotonic()

        reader = threading.Thread(target=consume)
        reader.start()
        _until(lambda: b"warm-up" in received, "the consumer never read", timeout=60)
        time.sleep(1.0)  # the consumer is now waiting in a long poll
        acked: dict[bytes, float] = {}
        for i in range(20):
            value = f"m{i}".encode()
            producer.produce("lat", value)
            producer.flush(10)
            acked[value] = time.monotonic()
            time.sleep(0.3)  # let each fetch go back to waiting
        reader.join(70)
        consumer.close()
        latencies = sorted(received[v] - t for v, t in acked.items() if v in received)
        assert len(latencies) == 20, f"received {len(latencies)} of 20"
        assert statistics.median(latencies) < 0.1, latencies
        assert latencies[-1] < 1.0, latencies  # never the 5 s of a fetch nobody woke
    finally:
        for server in (a, b):
            assert server.stop() == 0, server.log()


def test_records_deleted_by_another_process_are_heard(stores: tuple[CachedMetadata, Store]) -> None:
    cached, other = stores
    cached.create_topic("t")
    for i in range(4):
        cached.commit_segment(f"o{i}", [Entry("t", 0, 0, 9)])
    assert (
        len(cached.segments("t", 0)) == 4 and cached.partition_offset("t", 0).log_start_offset == 0
    )
    assert other.delete_records("t", {0: 25}) == {0: 25}
    _until(lambda: cached.partition_offset("t", 0).log_start_offset == 25, "never heard")
    assert [r.object_key for r in cached.segments("t", 0)] == ["o2", "o3"]


def test_an_index_taken_before_records_were_deleted_elsewhere_has_no_hole(
    stores: tuple[CachedMetadata, Store],
) -> None:
    """A query that took a partition's cached index just before another process committed
    more and deleted records past that index's end (its log start heard only after) reads
    the partition again: it never answers with the rows below the deletion, then a hole, then
    the rows after (a SQL answer concurrent with DeleteRecords missed offsets 1400-1439 so)."""
    cached, other = stores
    cached.create_topic("t")
    for i in range(4):
        cached.commit_segment(f"o{i}", [Entry("t", 0, 0, 9)])
    assert len(cached.segments("t", 0)) == 4
    index = cached._indexes[("t", 0)]  # held by a query while the rest happens
    other.commit_segment("o4", [Entry("t", 0, 0, 9)])
    other.commit_segment("o5", [Entry("t", 0, 0, 9)])
    assert other.delete_records("t", {0: 55}) == {0: 55}
    _until(lambda: cached.partition_offset("t", 0).high_watermark == 60, "never heard")
    rows = cached._select(("t", 0), index, 0, None)
    assert [r.object_key for r in rows] == ["o5"]
    assert [r.object_key for r in cached.segments("t", 0)] == ["o5"]
