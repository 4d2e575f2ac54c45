"""Retention: topic configs, DeleteRecords, the retention pass and the deletion of objects
after a grace period — through the Python API (on both metadata backends) and through a real
server with kafka-python and confluent-kafka clients reading while the log start moves."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaException
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource as KPConfigResource
from kafka_fixtures import KafkaServer, RawClient, fetch_request, guarded

import streamhouse
from streamhouse import InvalidConfigError, OffsetOutOfRangeError, StreamHouse
from streamhouse.cli import main
from streamhouse.errors import OutOfOrderSequenceError
from streamhouse.log import fsck
from streamhouse.log.records import build_batch
from streamhouse.log.segment import SEGMENT_PREFIX

HOUR_MS = 3_600_000


@pytest.fixture
def sh(tmp_path: Path, metadata_url: str | None) -> Iterator[StreamHouse]:
    """A connection on each metadata backend, with a one-second grace before deletion."""
    conn = streamhouse.connect(
        tmp_path / "data", metadata=metadata_url, linger_ms=1, object_delete_delay_s=1.0
    )
    yield conn
    conn.close()


def seqs(sh: StreamHouse, topic: str) -> list[int]:
    return sorted(sh.sql(f"SELECT seq FROM {topic}").to_arrow_table()["seq"].to_pylist())


def produce(sh: StreamHouse, topic: str, first: int, count: int, **kwargs: object) -> None:
    """Records ``{"seq": first}`` ... in one call (one index row per partition)."""
    sh.produce(topic, [{"seq": i} for i in range(first, first + count)], **kwargs)  # type: ignore[arg-type]


# -- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"retention.mss": "1"}, "unknown topic config 'retention.mss'"),
        ({"retention.ms": "soon"}, "retention.ms='soon' is not an integer"),
        ({"retention.bytes": "-2"}, "retention.bytes=-2 is out of range"),
        ({"segment.ms": "0"}, "segment.ms=0 is out of range"),
        ({"cleanup.policy": "shred"}, "expected 'delete', 'compact' or both"),
        ({"cleanup.policy": "compact,shred"}, "expected 'delete', 'compact' or both"),
        ({"preallocate": "maybe"}, "is not true or false"),
    ],
)
def test_invalid_configs_are_refused_with_the_reason(
    tmp_path: Path, config: dict[str, str], reason: str
) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        with pytest.raises(InvalidConfigError, match=reason):
            sh.create_topic("t", config=config)
        assert sh.topics() == []
        sh.create_topic("t", config={"retention.ms": "60000"})
        with pytest.raises(InvalidConfigError, match=reason):
            sh.alter_topic("t", config)
        assert sh.topic("t").config == {"retention.ms": "60000"}


def test_alter_sets_and_resets_configs(sh: StreamHouse) -> None:
    sh.create_topic("t", config={"retention.ms": "3600000", "segment.ms": "60000"})
    info = sh.alter_topic("t", {"retention.bytes": "1000", "retention.ms": None})
    assert info.config == {"retention.bytes": "1000", "segment.ms": "60000"}
    assert sh.topic("t").config == info.config
    with pytest.raises(InvalidConfigError, match="unknown topic config 'nope'"):
        sh.alter_topic("t", {"nope": None})


# -- DeleteRecords and the retention pass (Python API, both metadata backends) ------------------


def test_delete_records_moves_the_log_start_and_sql_never_reads_below(sh: StreamHouse) -> None:
    sh.create_topic("t", partitions=2)
    produce(sh, "t", 0, 10, partition=0)
    produce(sh, "t", 100, 10, partition=1)
    assert sh.delete_records("t", {0: 4, 1: -1}) == {0: 4, 1: 10}
    assert sh.log.offsets("t", 0).log_start_offset == 4
    assert seqs(sh, "t") == list(range(4, 10))  # 4 is inside the kept index row
    with pytest.raises(OffsetOutOfRangeError, match="high watermark 10"):
        sh.delete_records("t", {0: 11})
    with pytest.raises(OffsetOutOfRangeError):
        sh.log.fetch("t", 0, 3)
    assert sh.delete_records("t", {0: 2}) == {0: 4}  # never backwards
    produce(sh, "t", 10, 3, partition=0)
    assert seqs(sh, "t") == list(range(4, 13))


def test_offset_for_timestamp_never_answers_below_the_log_start(sh: StreamHouse) -> None:
    sh.create_topic("t")
    produce(sh, "t", 0, 10, timestamp=[1000 + i for i in range(10)])  # one row 0-9
    produce(sh, "t", 10, 5, timestamp=[5000, 5009, 5001, 5002, 5003])  # one row 10-14
    sh.delete_records("t", {0: 4})
    assert sh.log.offset_for_timestamp("t", 0, 0) == (4, 1004)
    assert sh.log.offset_for_timestamp("t", 0, 1006) == (6, 1006)
    sh.delete_records("t", {0: 10})  # row 0-9 goes
    assert sh.log.offset_for_timestamp("t", 0, 0) == (10, 5000)
    produce(sh, "t", 15, 5, timestamp=[9000 + i for i in range(5)])
    sh.delete_records("t", {0: 12})  # inside row 10-14
    assert sh.log.offset_for_timestamp("t", 0, 5001) == (12, 5001)
    # Only offset 11 (below the log start) of row 10-14 is at or after 5005: the next row.
    assert sh.log.offset_for_timestamp("t", 0, 5005) == (15, 9000)
    assert sh.log.offset_for_timestamp("t", 0, 9003) == (18, 9003)
    assert sh.log.offset_for_timestamp("t", 0, 9005) is None


def test_objects_are_deleted_after_the_grace_period_and_only_when_unreferenced(
    sh: StreamHouse,
) -> None:
    sh.create_topic("a")
    sh.create_topic("b")
    produce(sh, "a", 0, 5)
    produce(sh, "b", 0, 5)  # objects hold one partition each here
    keys = set(sh.log.store.list(SEGMENT_PREFIX))
    assert len(keys) == 2
    (a_row,) = sh.log.metadata.segments("a", 0)
    sh.delete_records("a", {0: -1})
    sh.delete_records("b", {0: 3})  # b's row still holds offsets 3 and 4: its object stays
    report = sh.enforce_retention()
    assert report.deleted_objects == []  # within the grace period
    assert set(sh.log.store.list(SEGMENT_PREFIX)) == keys
    assert sh.log.reader.run_bytes(a_row)  # a reader that found the row before still reads it
    time.sleep(1.1)
    report = sh.enforce_retention()
    assert report.deleted_objects == [a_row.object_key]
    assert set(sh.log.store.list(SEGMENT_PREFIX)) == keys - {a_row.object_key}
    assert seqs(sh, "b") == [3, 4]


def test_a_retention_pass_forgets_idle_producers(tmp_path: Path, metadata_url: str | None) -> None:
    """Producer states older than producer_id_expiration_s go (then the producer starts
    afresh: any sequence is taken); a pass over named topics leaves them."""
    with streamhouse.connect(
        tmp_path / "data", metadata=metadata_url, linger_ms=1, producer_id_expiration_s=0.2
    ) as sh:
        sh.create_topic("t")

        def idempotent(seq: int) -> int:
            batch = build_batch([b"v"], producer_id=3, producer_epoch=0, base_sequence=seq)
            return sh.log.append("t", 0, batch).result(10)

        assert idempotent(0) == 0
        with pytest.raises(OutOfOrderSequenceError):
            idempotent(7)
        time.sleep(0.3)
        assert sh.enforce_retention(["t"]).forgotten_producers == 0
        assert sh.enforce_retention().forgotten_producers == 1
        assert idempotent(7) == 1


def test_fsck_does_not_take_objects_awaiting_deletion_for_orphans(sh: StreamHouse) -> None:
    sh.create_topic("t")
    produce(sh, "t", 0, 5)
    (row,) = sh.log.metadata.segments("t", 0)
    sh.delete_records("t", {0: -1})
    report = fsck.check(sh.log.store, sh.log.metadata, orphan_min_age_s=0)
    assert report.sound and report.retiring == [row.object_key] and report.objects == 1


def test_cli_topic_alter_and_compact(tmp_path: Path) -> None:
    def run(*args: str, ok: bool = True) -> str:
        result = CliRunner().invoke(main, ["--data-dir", str(tmp_path / "data"), *args])
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    run("topic", "create", "t", "--config", "retention.ms=3600000")
    assert "unknown topic config 'retention.mss'" in run(
        "topic", "create", "u", "--config", "retention.mss=1", ok=False
    )
    with streamhouse.connect(tmp_path / "data") as sh:
        for first in range(0, 30, 10):
            produce(sh, "t", first, 10)
        newest = sh.log.metadata.segments("t", 0)[-1].length
    out = run("topic", "alter", "t", "--config", f"retention.bytes={newest}",
              "--delete-config", "retention.ms")  # fmt: skip
    assert f"altered topic t: retention.bytes={newest}" in out
    assert "is not an integer" in run("topic", "alter", "t", "-c", "retention.ms=x", ok=False)
    out = run("compact", "t")
    assert "t-0: log start offset 0 -> 20" in out
    assert "1 partition(s) advanced" in out
    assert "merged into larger per-partition objects" in run("compact", "--help").replace("\n", " ")
    with streamhouse.connect(tmp_path / "data") as sh:
        assert seqs(sh, "t") == list(range(20, 30))


def test_retention_by_time_drops_whole_rows_older_than_retention_ms(sh: StreamHouse) -> None:
    now = int(time.time() * 1000)
    sh.create_topic("t")
    produce(sh, "t", 0, 4, timestamp=now - 3 * HOUR_MS)  # row 0-3
    produce(sh, "t", 4, 4, timestamp=now - 2 * HOUR_MS)  # row 4-7
    produce(sh, "t", 8, 4, timestamp=now - 10_000)  # row 8-11
    produce(sh, "t", 12, 4, timestamp=now - 4 * HOUR_MS)  # row 12-15: old, but after a new one
    assert sh.enforce_retention().advanced == {}  # no retention.ms: nothing moves
    sh.alter_topic("t", {"retention.ms": str(int(2.5 * HOUR_MS))})
    assert sh.enforce_retention().advanced == {("t", 0): (0, 4)}
    sh.alter_topic("t", {"retention.ms": str(HOUR_MS)})
    assert sh.enforce_retention().advanced == {("t", 0): (4, 8)}  # stops at the first new row
    assert seqs(sh, "t") == list(range(8, 16))
    sh.alter_topic("t", {"retention.ms": "1000"})
    sh.enforce_retention()
    assert sh.log.offsets("t", 0).log_start_offset == 16  # every row expired: the HW
    assert sh.log.metadata.segments("t", 0) == []


def test_retention_by_bytes_keeps_at_least_retention_bytes(sh: StreamHouse) -> None:
    sh.create_topic("t")
    for first in range(0, 50, 10):
        produce(sh, "t", first, 10)
    rows = sh.log.metadata.segments("t", 0)
    assert len(rows) == 5
    newest_two = rows[-1].length + rows[-2].length
    sh.alter_topic("t", {"retention.bytes": str(newest_two)})
    assert sh.enforce_retention(["t"]).advanced == {("t", 0): (0, 30)}
    assert seqs(sh, "t") == list(range(30, 50))
    sh.alter_topic("t", {"retention.bytes": str(newest_two + 1)})
    assert sh.enforce_retention(["t"]).advanced == {}  # never below the limit


def test_a_continuous_query_behind_the_log_start_resumes_there(sh: StreamHouse) -> None:
    sh.create_topic("s")
    sh.sql("CREATE STREAM s (seq BIGINT) WITH (topic = 's', format = 'json')")
    query_sql = "SET 'poll-interval' = '20 ms'; INSERT INTO out SELECT seq FROM s"
    produce(sh, "s", 0, 50)
    query = sh.start(query_sql, name="copy")
    query.run_until_caught_up()
    query.stop()
    produce(sh, "s", 50, 50)  # one index row 50-99
    sh.delete_records("s", {0: 70})  # inside it, above the query's position 50
    query = sh.start(query_sql, name="copy")
    try:
        query.run_until_caught_up()
    finally:
        query.stop()
    assert seqs(sh, "out") == [*range(50), *range(70, 100)]


# -- through a real server: Kafka APIs, and readers while the log start moves -------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KafkaServer]:
    env = {
        "STREAMHOUSE_RETENTION_CHECK_INTERVAL_S": "0.2",
        "STREAMHOUSE_OBJECT_DELETE_DELAY_S": "1",
        "STREAMHOUSE_LINGER_MS": "1",
    }
    server = KafkaServer(tmp_path / "data", env=env).start()
    yield server
    server.stop()


def _admin(server: KafkaServer) -> AdminClient:
    return AdminClient({"bootstrap.servers": server.bootstrap})


def sh_config(server: KafkaServer, topic: str) -> dict[str, str]:
    """The topic's stored config, read from the metadata (not through the server)."""
    with streamhouse.connect(server.data_dir) as sh:
        return sh.topic(topic).config


def _result(futures: dict, key: object) -> object:
    return futures[key].result(timeout=15)


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")  # the API under test
def test_kafka_admin_configs_and_delete_records(server: KafkaServer) -> None:
    admin = _admin(server)
    bad = NewTopic("bad", 1, 1, config={"retention.ms": "x"})
    with pytest.raises(KafkaException) as info:
        _result(admin.create_topics([bad]), "bad")
    assert info.value.args[0].name() == "INVALID_CONFIG"
    assert "retention.ms='x' is not an integer" in info.value.args[0].str()
    shred = NewTopic("bad", 1, 1, config={"cleanup.policy": "shred"})
    with pytest.raises(KafkaException, match="expected 'delete', 'compact' or both"):
        _result(admin.create_topics([shred]), "bad")
    _result(admin.create_topics([NewTopic("kv", 1, 1, config={"cleanup.policy": "compact"})]), "kv")
    _result(admin.create_topics([NewTopic("t", 2, 1, config={"retention.ms": "3600000"})]), "t")

    ops = [
        ConfigEntry("retention.bytes", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
    ]
    resource = ConfigResource("topic", "t", incremental_configs=ops)
    _result(admin.incremental_alter_configs([resource]), resource)
    described = _result(admin.describe_configs([resource]), resource)
    assert described["retention.bytes"].value == "5000"
    assert described["retention.bytes"].source == 1  # DYNAMIC_TOPIC_CONFIG
    assert described["retention.ms"].value == "-1" and described["retention.ms"].is_default
    unknown = ConfigResource("topic", "t", set_config={"retention.mss": "1"})
    with pytest.raises(KafkaException) as info:
        _result(admin.alter_configs([unknown]), unknown)
    assert info.value.args[0].name() == "INVALID_CONFIG"

    producer = KafkaProducer(bootstrap_servers=server.bootstrap, linger_ms=0)
    for i in range(20):
        producer.send("t", json.dumps({"seq": i}).encode(), partition=0).get(timeout=15)
    producer.close()
    deleted = admin.delete_records([CTopicPartition("t", 0, 12)])
    (tp,) = deleted
    assert deleted[tp].result(timeout=15).low_watermark == 12
    kp_admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
    try:  # kafka-python's admin client too
        kp_deleted = kp_admin.delete_records({TopicPartition("t", 0): 14})
        assert [v["low_watermark"] for v in kp_deleted.values()] == [14]
        kp_admin.alter_configs([KPConfigResource("TOPIC", "t", {"retention.ms": "7200000"})])
        # kafka-python picks IncrementalAlterConfigs when offered: the other entry stays
        assert sh_config(server, "t") == {"retention.bytes": "5000", "retention.ms": "7200000"}
    finally:
        kp_admin.close()
    whole = ConfigResource("topic", "t", set_config={"retention.ms": "3600000"})
    _result(admin.alter_configs([whole]), whole)  # AlterConfigs: the whole new config
    assert sh_config(server, "t") == {"retention.ms": "3600000"}
    too_far = admin.delete_records([CTopicPartition("t", 0, 21)])
    with pytest.raises(KafkaException) as info:
        next(iter(too_far.values())).result(timeout=15)
    assert info.value.args[0].name() == "OFFSET_OUT_OF_RANGE"

    with RawClient(server.bootstrap) as raw:
        fetched = raw.request(1, 11, **fetch_request("t", [(0, 5)]))
        assert fetched.responses[0].partitions[0].error_code == 1  # OFFSET_OUT_OF_RANGE
        assert fetched.responses[0].partitions[0].log_start_offset == 14

    consumer = KafkaConsumer(
        bootstrap_servers=server.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000
    )
    consumer.assign([TopicPartition("t", 0)])
    assert consumer.beginning_offsets([TopicPartition("t", 0)]) == {TopicPartition("t", 0): 14}
    consumer.seek(TopicPartition("t", 0), 3)  # below the log start: reset to it
    got = [json.loads(m.value)["seq"] for m in consumer]
    consumer.close()
    assert got == list(range(14, 20))


class Readers:
    """A kafka-python consumer and repeated bounded SQL queries reading ``topic`` in threads
    (of the test process: another process than the server's) until :meth:`stop`."""

    def __init__(self, server: KafkaServer, sh: StreamHouse, topic: str) -> None:
        self.server, self.sh, self.topic = server, sh, topic
        self.consumed: list[tuple[int, int]] = []  # (offset, seq)
        self.answers: list[list[int]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=guarded(self._consume, self.errors), daemon=True),
            threading.Thread(target=guarded(self._query, self.errors), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _consume(self) -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=self.server.bootstrap,
            auto_offset_reset="earliest",
            max_poll_records=50,
            fetch_max_bytes=4096,
            max_partition_fetch_bytes=4096,
        )
        consumer.assign([TopicPartition(self.topic, 0)])
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=100).values():
                    self.consumed += [(r.offset, json.loads(r.value)["seq"]) for r in records]
                time.sleep(0.02)  # a slow reader, overtaken by the log start now and then
        finally:
            consumer.close()

    def _query(self) -> None:
        while not self._stop.is_set():
            self.answers.append(seqs(self.sh, self.topic))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _log_start(sh: StreamHouse, topic: str) -> int:
    return sh.log.metadata.partition_offset(topic, 0).log_start_offset


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_retention_while_a_consumer_and_sql_read(tmp_path: Path, metadata_url: str | None) -> None:
    """Retention by time, then by bytes, then DeleteRecords, each while a kafka-python
    consumer and SQL queries read: no error, and no record above the log start offset lost
    or read twice; unreferenced objects go after the grace period, referenced ones stay."""
    env = {
        "STREAMHOUSE_RETENTION_CHECK_INTERVAL_S": "0.2",
        "STREAMHOUSE_OBJECT_DELETE_DELAY_S": "1",
        "STREAMHOUSE_LINGER_MS": "1",
        # Compaction off: the figures below count on one index row per flush (compaction
        # would merge the old rows with the new before retention.ms is set, as a Kafka
        # segment holds old and new records; test_compaction covers the two together).
        "STREAMHOUSE_COMPACTION_TARGET_BYTES": "0",
        **({"STREAMHOUSE_METADATA": metadata_url} if metadata_url else {}),
    }
    server = KafkaServer(tmp_path / "data", env=env).start()
    sh = streamhouse.connect(tmp_path / "data", metadata=metadata_url)
    admin = _admin(server)
    producer = KafkaProducer(bootstrap_servers=server.bootstrap, linger_ms=2)
    sent = 0

    def send(count: int, timestamp_ms: int | None = None) -> None:
        nonlocal sent
        for _ in range(count):
            value = json.dumps({"seq": sent, "pad": "x" * 40}).encode()
            producer.send("live", value, partition=0, timestamp_ms=timestamp_ms)
            sent += 1
            if sent % 20 == 0:  # many small flushes, many index rows
                producer.flush()

    def alter(**ops: str | None) -> None:
        entries = [
            ConfigEntry(name.replace("_", "."), value, incremental_operation=op)
            for name, value in ops.items()
            for op in [AlterConfigOpType.DELETE if value is None else AlterConfigOpType.SET]
        ]
        resource = ConfigResource("topic", "live", incremental_configs=entries)
        _result(admin.incremental_alter_configs([resource]), resource)

    try:
        _result(admin.create_topics([NewTopic("live", 1, 1)]), "live")
        send(600, timestamp_ms=int(time.time() * 1000) - 3 * HOUR_MS)  # old records
        producer.flush()
        send(200)
        producer.flush()
        readers = Readers(server, sh, "live")
        objects_before = len(sh.log.store.list(SEGMENT_PREFIX))

        alter(retention_ms=str(HOUR_MS))  # 1. by time: exactly the old rows go
        _wait_for(lambda: _log_start(sh, "live") == 600, "retention by time")
        send(400)
        producer.flush()

        alter(retention_ms=None, retention_bytes="20000")  # 2. by bytes
        _wait_for(lambda: _log_start(sh, "live") > 600, "retention by bytes")
        send(400)
        producer.flush()
        _wait_for(lambda: _log_start(sh, "live") > 1000, "retention by bytes again")

        alter(retention_bytes=None)  # 3. DeleteRecords
        target = sent - 150
        deleted = admin.delete_records([CTopicPartition("live", 0, target)])
        assert next(iter(deleted.values())).result(timeout=15).low_watermark == target
        send(100)
        producer.flush()

        _wait_for(lambda: readers.consumed and readers.consumed[-1][0] == sent - 1, "consumer")
        _wait_for(  # a query that started once the last record was there answers it all
            lambda: len(readers.answers) > 5 and readers.answers[-1][-1:] == [sent - 1],
            "a query over the final log",
        )
        readers.stop()
        assert readers.errors == []
        start = _log_start(sh, "live")
        assert start == target

        offsets = [offset for offset, _ in readers.consumed]
        assert all(offset == seq for offset, seq in readers.consumed)  # right values
        assert offsets == sorted(set(offsets))  # none twice, in order
        assert set(range(start, sent)) <= set(offsets)  # none lost above the log start
        gaps = [(a, b) for a, b in zip(offsets, offsets[1:], strict=False) if b != a + 1]
        assert all(b <= start for _, b in gaps)  # skipped only what was deleted
        assert len(readers.answers) > 5
        for answer in readers.answers:  # each query: one contiguous run, nothing twice
            assert answer == list(range(answer[0], answer[0] + len(answer)))
        assert readers.answers[-1] == list(range(start, sent))

        index_keys = {row.object_key for row in sh.log.metadata.segments("live", 0)}
        _wait_for(
            lambda: set(sh.log.store.list(SEGMENT_PREFIX)) == index_keys,
            "unreferenced objects to go after the grace period",
        )
        assert len(index_keys) < objects_before
    finally:
        producer.close()
        sh.close()
        server.stop()
