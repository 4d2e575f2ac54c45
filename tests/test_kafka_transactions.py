"""Kafka transactions against a real ``streamhouse serve``: confluent-kafka transactional
producers and read_committed / read_uncommitted consumers, zombie fencing, the timeout, garbage
and out-of-order requests with the raw protocol, and a consume-transform-produce loop killed
with -9 and restarted; plus the store's transaction state on both metadata backends."""

from __future__ import annotations

import queue
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import kafka_fixtures
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kafka_fixtures import KafkaServer, RawClient, produce_request, txn_offset_commit_request

from streamhouse.kafka.wire import ErrorCode, messages, ms
from streamhouse.log.metadata.transactions import State, Verdict
from streamhouse.log.records import build_batch, decode_batches
from streamhouse.log.records.build import encode_records, frame_batch
from streamhouse.log.records.control import marker_batch
from streamhouse.log.records.header import ATTR_TRANSACTIONAL, Compression

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic

TIMEOUT = 30.0
T = TypeVar("T")
LOOP = Path(__file__).with_name("txn_loop.py")


def producer(server: KafkaServer, transactional_id: str, **config: object) -> Producer:
    p = Producer(
        {
            "bootstrap.servers": server.bootstrap,
            "transactional.id": transactional_id,
            "linger.ms": 5,
            **config,
        }
    )
    p.init_transactions(TIMEOUT)
    return p


def read_all(
    server: KafkaServer, topic: str, partitions: int, isolation: str, settle: float = 2.0
) -> list[bytes]:
    """Every value a consumer of ``isolation`` reads from the start, once nothing more comes
    for ``settle`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": server.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    quiet_since = time.monotonic()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() - quiet_since < settle and time.monotonic() < deadline:
        for m in consumer.consume(100, timeout=0.2):
            assert m.error() is None, m.error()
            values.append(m.value())
            quiet_since = time.monotonic()
    consumer.close()
    return values


def eventually(read: Callable[[], T], want: T, seconds: float = 10.0) -> T:
    """``read()`` once it returns ``want``, or what it returns after ``seconds``."""
    deadline = time.monotonic() + seconds
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def send(p: Producer, topic: str, values: list[str], partitions: int = 2) -> None:
    for i, v in enumerate(values):
        p.produce(topic, v.encode(), partition=i % partitions)
    p.flush(TIMEOUT)


# 12 partitions: a read_committed fetch of more than WIDE_TOPIC_PARTITIONS partitions of a
# topic reads their transactions in one statement, not one per partition.
@pytest.mark.parametrize("partitions", [2, 12])
def test_commit_and_abort_seen_by_isolation_level(
    kafka_server: KafkaServer, new_topic, partitions: int
) -> None:
    topic = new_topic(partitions)
    p = producer(kafka_server, f"tx-{uuid.uuid4().hex[:8]}")
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    p.begin_transaction()
    send(p, topic, [f"c1-{i}" for i in range(10)], partitions)
    p.commit_transaction(TIMEOUT)
    p.begin_transaction()
    send(p, topic, [f"a-{i}" for i in range(10)], partitions)
    send(plain, topic, [f"plain-{i}" for i in range(4)], partitions)  # not in the transaction
    p.abort_transaction(TIMEOUT)
    p.begin_transaction()
    send(p, topic, [f"c2-{i}" for i in range(6)], partitions)
    p.commit_transaction(TIMEOUT)

    committed = sorted(
        v.decode() for v in read_all(kafka_server, topic, partitions, "read_committed")
    )
    everything = sorted(
        v.decode() for v in read_all(kafka_server, topic, partitions, "read_uncommitted")
    )
    expected = [f"c1-{i}" for i in range(10)] + [f"c2-{i}" for i in range(6)]
    expected += [f"plain-{i}" for i in range(4)]
    assert committed == sorted(expected)
    assert everything == sorted(expected + [f"a-{i}" for i in range(10)])


def _list_latest(server: KafkaServer, topic: str, isolation: int) -> int:
    module = messages(2, 5, False)
    with RawClient(server.bootstrap) as client:
        resp = client.request(
            2,
            5,
            replica_id=-1,
            isolation_level=isolation,
            topics=(
                module.ListOffsetsTopic(
                    name=topic,
                    partitions=(
                        module.ListOffsetsPartition(
                            partition_index=0, current_leader_epoch=-1, timestamp=-1
                        ),
                    ),
                ),
            ),
        )
    part = resp.topics[0].partitions[0]
    assert part.error_code == 0
    return part.offset


@pytest.mark.parametrize("partitions", [1, 12])
def test_open_transaction_holds_back_read_committed(
    kafka_server: KafkaServer, new_topic, partitions: int
) -> None:
    """The last stable offset stops at an open transaction's first offset: later plain
    records wait too, and appear with the transaction's once it commits."""
    topic = new_topic(partitions)
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    send(plain, topic, ["before"], partitions=1)
    p = producer(kafka_server, f"tx-{uuid.uuid4().hex[:8]}")
    p.begin_transaction()
    send(p, topic, ["t-0", "t-1"], partitions=1)
    send(plain, topic, ["after"], partitions=1)
    assert _list_latest(kafka_server, topic, 0) == 4  # before, t-0, t-1, after
    assert _list_latest(kafka_server, topic, 1) == 1  # the transaction starts at 1
    assert read_all(kafka_server, topic, partitions, "read_committed", settle=1.0) == [b"before"]
    p.commit_transaction(TIMEOUT)
    # EndTxn answers once the decision is durable; the marker follows at once
    assert eventually(lambda: _list_latest(kafka_server, topic, 1), 5) == 5  # marker: offset 4
    assert read_all(kafka_server, topic, partitions, "read_committed") == [
        b"before",
        b"t-0",
        b"t-1",
        b"after",
    ]


def test_acknowledged_transactional_records_are_in_the_high_watermark(
    kafka_server: KafkaServer, new_topic
) -> None:
    """librdkafka's 0103 (wmark_isolation_level): right after a transactional producer's
    flush, ListOffsets sees its records in the high watermark (read_uncommitted) and not in
    the last stable offset, as after a Kafka broker's acknowledgement, though serve answers
    those batches before they are durable."""
    topic = new_topic(1)
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    send(plain, topic, [f"before-{i}" for i in range(10)], partitions=1)
    p = producer(kafka_server, f"tx-{uuid.uuid4().hex[:8]}")
    for round_ in range(3):
        p.begin_transaction()
        send(p, topic, [f"t{round_}-{i}" for i in range(20)], partitions=1)
        stable = 10 + round_ * 21  # each round's 20 records and its marker before
        assert _list_latest(kafka_server, topic, 0) == stable + 20
        assert _list_latest(kafka_server, topic, 1) == stable
        p.commit_transaction(TIMEOUT)


def test_zombie_producer_is_fenced(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic(2)
    transactional_id = f"tx-{uuid.uuid4().hex[:8]}"
    old = producer(kafka_server, transactional_id)
    old.begin_transaction()
    send(old, topic, [f"zombie-{i}" for i in range(4)])
    new = producer(kafka_server, transactional_id)  # aborts the old one's transaction
    for i in range(4):
        old.produce(topic, f"late-{i}".encode(), partition=i % 2)
    with pytest.raises(KafkaException) as failed:
        old.commit_transaction(TIMEOUT)
    assert "fenced" in str(failed.value).lower() or failed.value.args[0].fatal()
    new.begin_transaction()
    send(new, topic, [f"new-{i}" for i in range(4)])
    new.commit_transaction(TIMEOUT)

    committed = sorted(v.decode() for v in read_all(kafka_server, topic, 2, "read_committed"))
    everything = sorted(v.decode() for v in read_all(kafka_server, topic, 2, "read_uncommitted"))
    assert committed == [f"new-{i}" for i in range(4)]
    assert not [v for v in everything if v.startswith("late-")]  # nothing written once fenced
    assert everything == sorted([f"new-{i}" for i in range(4)] + [f"zombie-{i}" for i in range(4)])


def test_transaction_left_open_is_aborted_at_its_timeout(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic(1)
    p = producer(kafka_server, f"tx-{uuid.uuid4().hex[:8]}", **{"transaction.timeout.ms": 1500})
    p.begin_transaction()
    send(p, topic, ["abandoned-0", "abandoned-1"], partitions=1)
    deadline = time.monotonic() + 10
    while _list_latest(kafka_server, topic, 1) == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _list_latest(kafka_server, topic, 1) == 3  # two records and the ABORT marker
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    send(plain, topic, ["later"], partitions=1)
    assert read_all(kafka_server, topic, 1, "read_committed") == [b"later"]
    with pytest.raises(KafkaException):
        p.commit_transaction(TIMEOUT)  # fenced by the coordinator's abort


def test_consume_transform_produce_killed_and_restarted_outputs_each_once(
    kafka_server: KafkaServer, new_topic
) -> None:
    source, sink = new_topic(2), new_topic(2)
    n = 400
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    send(plain, source, [f"in-{i}" for i in range(n)])
    group, transactional_id = f"g-{uuid.uuid4().hex[:8]}", f"loop-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, str(LOOP), kafka_server.bootstrap, source, sink, group]
    command += [transactional_id, "2"]
    rng = random.Random(18)
    for _ in range(3):  # start, let it commit a little, kill -9 at a random moment
        loop = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert loop.stdout is not None
        line = loop.stdout.readline()
        assert line.startswith("committed"), line
        time.sleep(rng.uniform(0.0, 0.3))
        loop.kill()
        loop.wait()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr

    committed = Counter(v.decode() for v in read_all(kafka_server, sink, 2, "read_committed"))
    assert committed == Counter(f"out-in-{i}" for i in range(n)), (
        f"duplicates {[v for v, c in committed.items() if c > 1][:5]}, missing {n - len(committed)}"
    )
    everything = Counter(v.decode() for v in read_all(kafka_server, sink, 2, "read_uncommitted"))
    assert set(everything) == set(committed) and everything.total() >= n


class _Loop:
    """``txn_loop.py`` in a subprocess, its output lines gathered by a thread."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def committed(self, timeout: float) -> bool:
        """Whether it commits a transaction within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.lines.get(timeout=0.2).startswith("committed"):
                    return True
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    return False
        return False

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def test_consume_transform_produce_survives_server_kills(tmp_path: Path) -> None:
    """The server killed with -9 and restarted twice under the loop: a read_committed
    consumer still sees every output exactly once. The loop aborts and rewinds, or exits
    fenced, or hangs in ``send_offsets_to_transaction`` (librdkafka issues #5456 and #5511:
    a cached group coordinator that went away is never asked again, whatever the timeout):
    then it is killed and started again, which exactly-once must survive too."""
    server = KafkaServer(tmp_path / "data").start()
    loop: _Loop | None = None
    try:
        admin_topics(server, ("in", 2), ("out", 2))
        n = 2000  # about 100 transactions: the loop is still busy when the server dies
        plain = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 5})
        send(plain, "in", [f"in-{i}" for i in range(n)])
        command = [sys.executable, str(LOOP), server.bootstrap, "in", "out", "g", "loop", "2"]
        rng = random.Random(180)
        loop = _Loop(command)
        restarts = 0
        for _ in range(2):
            if not loop.committed(30):
                loop.kill()
                loop = _Loop(command)
                restarts += 1
                assert loop.committed(60)
            time.sleep(rng.uniform(0.0, 0.3))
            server.kill()
            time.sleep(0.5)
            server.start()
            if not loop.committed(15):
                loop.kill()
                loop = _Loop(command)
                restarts += 1
        for _ in range(5):  # to the end: started again if it stopped early or hung
            while loop.committed(15):
                pass
            if _committed_input(server, "g", "in", 2) == n:
                break
            loop.kill()
            loop = _Loop(command)
            restarts += 1
        loop.kill()
        assert _committed_input(server, "g", "in", 2) == n
        committed = Counter(v.decode() for v in read_all(server, "out", 2, "read_committed"))
        assert committed == Counter(f"out-in-{i}" for i in range(n)), (
            f"duplicates {[v for v, c in committed.items() if c > 1][:5]},"
            f" missing {n - len(committed)} ({restarts} loop restarts)"
        )
    finally:
        if loop is not None:
            loop.kill()
        server.stop()


def _committed_input(server: KafkaServer, group: str, topic: str, partitions: int) -> int:
    """How many input records the group's committed offsets account for."""
    consumer = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group})
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(wanted, timeout=TIMEOUT))
    finally:
        consumer.close()


def admin_topics(server: KafkaServer, *topics: tuple[str, int]) -> None:
    module = messages(19, 4, False)
    with RawClient(server.bootstrap) as c:
        resp = c.request(
            19,
            4,
            topics=tuple(
                module.CreatableTopic(
                    name=name,
                    num_partitions=count,
                    replication_factor=1,
                    assignments=(),
                    configs=(),
                )
                for name, count in topics
            ),
            timeout=ms(30_000),
            validate_only=False,
        )
    assert all(t.error_code == 0 for t in resp.topics), resp


# -- the raw protocol: garbage and out-of-order requests --------------------------------------


def _init(
    client: RawClient, transactional_id: str, timeout_ms: int = 60_000
) -> tuple[int, int, int]:
    resp = client.request(
        22, 1, transactional_id=transactional_id, transaction_timeout=ms(timeout_ms)
    )
    return resp.error_code, resp.producer_id, resp.producer_epoch


def _add(client: RawClient, version: int, tid: str, pid: int, epoch: int, *parts) -> dict:
    module = messages(24, version, False)
    topics: dict[str, list[int]] = {}
    for topic, partition in parts:
        topics.setdefault(topic, []).append(partition)
    resp = client.request(
        24,
        version,
        v3_and_below_transactional_id=tid,
        v3_and_below_producer_id=pid,
        v3_and_below_producer_epoch=epoch,
        v3_and_below_topics=tuple(
            module.AddPartitionsToTxnTopic(name=t, partitions=tuple(ps)) for t, ps in topics.items()
        ),
    )
    return {
        (t.name, r.partition_index): r.partition_error_code
        for t in resp.results_by_topic_v3_and_below
        for r in t.results_by_partition
    }


def _end(client: RawClient, version: int, tid: str, pid: int, epoch: int, commit: bool) -> int:
    resp = client.request(
        26, version, transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit
    )
    return resp.error_code


def _txn_batch(pid: int, epoch: int, sequence: int, values: list[bytes]) -> bytes:
    records, base_ts, max_ts = encode_records(values, None, [1000] * len(values), None)
    return frame_batch(
        records, len(values), base_ts, max_ts, Compression.NONE, 0, pid, epoch, sequence,
        flags=ATTR_TRANSACTIONAL,
    )  # fmt: skip


def _produce(client: RawClient, topic: str, tid: str | None, records: bytes) -> int:
    fields = produce_request(topic, 0, records)
    fields["transactional_id"] = tid
    resp = client.request(0, 8, **fields)
    return resp.responses[0].partition_responses[0].error_code


def test_garbage_and_out_of_order_requests_get_kafka_errors(
    kafka_server: KafkaServer, new_topic
) -> None:
    topic = new_topic(1)
    tid = f"raw-{uuid.uuid4().hex[:8]}"
    with RawClient(kafka_server.bootstrap) as c:
        versions = {k.api_key: (k.min_version, k.max_version) for k in c.request(18, 0).api_keys}
        assert [versions.get(k) for k in (22, 24, 25, 26, 28)] == [(0, 4)] + [(0, 2)] * 4
        assert [versions.get(k) for k in (65, 66)] == [(0, 0), (0, 0)]
        assert 27 not in versions  # WriteTxnMarkers: markers are written by the coordinator
        assert _end(c, 2, tid, 5, 0, True) == 49  # EndTxn before InitProducerId
        assert _init(c, tid, 0)[0] == 50  # INVALID_TRANSACTION_TIMEOUT
        assert _init(c, tid, 10_000_000)[0] == 50
        error, pid, epoch = _init(c, tid)
        assert (error, epoch) == (0, 0) and pid > 0
        assert _end(c, 2, tid, pid, epoch, True) == 48  # nothing begun: INVALID_TXN_STATE
        assert _end(c, 2, tid, pid + 1, epoch, True) == 49  # another producer id
        assert _add(c, 2, tid, pid, epoch + 1, (topic, 0)) == {(topic, 0): 90}  # PRODUCER_FENCED
        assert _add(c, 1, tid, pid, epoch + 1, (topic, 0)) == {(topic, 0): 47}  # before v2
        assert _add(c, 2, tid, pid, epoch, ("ghost", 0), (topic, 0)) == {
            ("ghost", 0): 3,  # UNKNOWN_TOPIC_OR_PARTITION
            (topic, 0): 55,  # OPERATION_NOT_ATTEMPTED
        }
        batch = _txn_batch(pid, epoch, 0, [b"x"])
        assert _produce(c, topic, tid, batch) == 48  # partition not in the transaction
        assert _produce(c, topic, None, batch) == 87  # transactional batch, no transactional id
        marker = marker_batch(pid, epoch, commit=True)
        assert _produce(c, topic, None, marker) == 87  # clients never write markers
        assert _produce(c, topic, tid, marker) == 87
        plain = build_batch([b"plain"], producer_id=pid, producer_epoch=epoch, base_sequence=0)
        assert _produce(c, topic, tid, plain) == 87  # not transactional
        assert _add(c, 2, tid, pid, epoch, (topic, 0)) == {(topic, 0): 0}
        assert _produce(c, topic, tid, batch) == 0
        assert _produce(c, topic, tid, _txn_batch(pid, epoch + 1, 1, [b"y"])) == 47
        error, pid2, epoch2 = _init(c, tid)  # a new producer: the open transaction is aborted
        assert (error, pid2, epoch2) == (0, pid, epoch + 2)
        assert _produce(c, topic, tid, _txn_batch(pid, epoch, 1, [b"z"])) == 47  # fenced
        assert _end(c, 2, tid, pid, epoch, True) == 90
        assert _end(c, 1, tid, pid, epoch, True) == 47
        resp = c.request(
            25, 2, transactional_id=tid, producer_id=pid, producer_epoch=epoch, group_id="g"
        )
        assert resp.error_code == 90
        resp = c.request(28, 2, **txn_offset_commit_request(tid, "g", pid, epoch, [topic], 1))
        assert resp.topics[0].partitions[0].error_code == 47

        def bump(version: int, producer_id: int, producer_epoch: int) -> tuple[int, int, int]:
            resp = c.request(
                22,
                version,
                transactional_id=tid,
                transaction_timeout=ms(60_000),
                producer_id=producer_id,
                producer_epoch=producer_epoch,
            )
            return resp.error_code, resp.producer_id, resp.producer_epoch

        # KIP-360 (v3+): the producer bumps its own epoch, if it is still the current one
        assert bump(3, pid, epoch + 2) == (0, pid, epoch + 3)
        assert bump(4, pid, epoch + 2)[0] == 90  # PRODUCER_FENCED
        assert bump(3, pid, epoch + 2)[0] == 47  # INVALID_PRODUCER_EPOCH before v4
        assert bump(4, pid + 1, epoch + 3)[0] == 49  # INVALID_PRODUCER_ID_MAPPING
        assert bump(4, pid, epoch + 3) == (0, pid, epoch + 4)
        fetched = c.fetch(topic, [(0, 0)])[0]

        # answered before they are durable, a batch the segment commit refuses (a sequence
        # gap) fails the commit as abortable with an epoch bump (UNKNOWN_PRODUCER_ID)
        gap_topic, gap_tid = new_topic(1), f"{tid}-gap"
        error, gap_pid, gap_epoch = _init(c, gap_tid)
        assert _add(c, 2, gap_tid, gap_pid, gap_epoch, (gap_topic, 0)) == {(gap_topic, 0): 0}
        for sequence in (0, 5):  # 1-4 missing
            batch = _txn_batch(gap_pid, gap_epoch, sequence, [b"gap"])
            assert _produce(c, gap_topic, gap_tid, batch) == 0
        assert _end(c, 2, gap_tid, gap_pid, gap_epoch, True) == 59
        assert _end(c, 2, gap_tid, gap_pid, gap_epoch, False) == 0
        assert c.fetch(gap_topic, [(0, 0)])[0].high_watermark == 2  # first record, marker
    assert _list_latest(kafka_server, gap_topic, 1) == 2  # ended
    assert read_all(kafka_server, gap_topic, 1, "read_committed", settle=0.5) == []
    # the aborted record (read_uncommitted) is shown, the ABORT marker after it is not
    assert decode_batches(fetched.records).num_rows == 1
    assert fetched.high_watermark == 2


# 8 partitions: one store statement per partition; 12: one for all (a wide fetch)
@pytest.mark.parametrize("partitions", [8, 12])
def test_records_held_back_by_an_open_transaction_leave_room_for_the_others(
    kafka_server: KafkaServer, new_topic, partitions: int
) -> None:
    """A read_committed fetch whose byte limit the first partition's records would fill
    alone, all of them in an open transaction, still answers the next partition's records:
    what the last stable offset holds back counts for nothing against the limit."""
    topic = new_topic(partitions)
    tid = f"held-{uuid.uuid4().hex[:8]}"
    with RawClient(kafka_server.bootstrap) as c:
        error, pid, epoch = _init(c, tid)
        assert error == 0
        assert _add(c, 2, tid, pid, epoch, (topic, 0)) == {(topic, 0): 0}
        assert _produce(c, topic, tid, _txn_batch(pid, epoch, 0, [b"t" * 4000])) == 0
        for p in range(1, partitions):
            assert c.produce(topic, p, build_batch([f"plain-{p}".encode()]))[0] == 0
        everything = [(p, 0) for p in range(partitions)]
        held = c.fetch(topic, everything, max_bytes=1000, isolation_level=0)
        assert len(held[0].records) > 1000 and not held[1].records  # the limit as such
        got = c.fetch(topic, everything, max_bytes=1000, isolation_level=1)
        assert (got[0].records, got[0].last_stable_offset) == (b"", 0)
        assert decode_batches(got[1].records).column("value").to_pylist() == [b"plain-1"]
        assert got[1].last_stable_offset == 1
        assert _end(c, 2, tid, pid, epoch, False) == 0


def test_describe_and_list_transactions(kafka_server: KafkaServer, new_topic) -> None:
    topic = new_topic(2)
    tid = f"described-{uuid.uuid4().hex[:8]}"
    with RawClient(kafka_server.bootstrap) as c:
        error, pid, epoch = _init(c, tid, 45_000)
        assert _add(c, 2, tid, pid, epoch, (topic, 1), (topic, 0)) == {(topic, 0): 0, (topic, 1): 0}
        (mine,) = c.request(65, 0, transactional_ids=(tid,)).transaction_states
        assert (mine.transactional_id, mine.error_code) == (tid, 0)
        assert (mine.transaction_state, mine.producer_id, mine.producer_epoch) == (
            "Ongoing",
            pid,
            epoch,
        )
        assert [(t.topic, t.partitions) for t in mine.topics] == [(topic, (0, 1))]
        assert mine.transaction_timeout == ms(45_000)
        assert abs(mine.transaction_start_time.timestamp() - time.time()) < 60
        listed = c.request(66, 0, state_filters=("Ongoing", "Bogus"), producer_id_filters=(pid,))
        assert [(t.transactional_id, t.transaction_state) for t in listed.transaction_states] == [
            (tid, "Ongoing")
        ]
        assert listed.unknown_state_filters == ("Bogus",)
        # an unknown id: start time -1 on the wire, as Kafka (which kio cannot decode)
        c.send_frame(c.encode(65, 0, transactional_ids=("ghost",))[1])
        frame = c.read_frame()
        # correlation id, tagged fields, throttle time, compact array of one, then error code
        assert frame[4:11] == bytes([0, 0, 0, 0, 0, 2, 0]) and frame[11] == 105
        # the entry ends: start time, producer id, epoch (all -1), topics [], tagged fields x2
        assert frame[-21:] == b"\xff" * 18 + bytes([1, 0, 0])
        assert _end(c, 2, tid, pid, epoch, False) == 0

        def states() -> list[tuple[str, str]]:
            listed = c.request(66, 0, state_filters=(), producer_id_filters=(pid,))
            return [(t.transactional_id, t.transaction_state) for t in listed.transaction_states]

        # PrepareAbort while its markers are written (EndTxn answered once it was decided)
        assert eventually(states, [(tid, "CompleteAbort")]) == [(tid, "CompleteAbort")]


# -- the store, on both backends ---------------------------------------------------------------


def test_store_moves_transactions_on_by_their_expected_state(md) -> None:
    md.create_topic("t", partitions=2)
    store = md.transactions
    assert store.register("a", 60_000, None, 7, 0) is Verdict.OK
    assert store.register("a", 60_000, None, 8, 0) is Verdict.BUSY  # it is known now
    assert store.add_partitions("a", 7, 0, [("t", 0), ("t", 5)]) == (Verdict.OK, [("t", 5)])
    assert store.add_partitions("a", 7, 1, [("t", 0)]) == (Verdict.FENCED, [])
    assert store.add_partitions("a", 7, 0, [("t", 0), ("t", 1)]) == (Verdict.OK, [])
    assert store.last_stable_offset("t", 0) == 0
    assert store.commit_offsets("a", 7, 0, "g", {("t", 0): (3, "m")}) is Verdict.OK
    verdict, txn = store.prepare("a", 7, 0, True)
    assert verdict is Verdict.OK and txn is not None and txn.state is State.PREPARE_COMMIT
    assert store.add_partitions("a", 7, 0, [("t", 0)]) == (Verdict.BUSY, [])
    assert [t.transactional_id for t in store.due()] == ["a"]  # decided, markers unwritten
    assert store.complete(txn, {("t", 0): 4, ("t", 1): 9})
    assert not store.complete(txn, {("t", 0): 4, ("t", 1): 9})  # finished already
    assert md.group_offsets("g")[("t", 0)].offset == 3
    assert store.last_stable_offset("t", 0) is None and store.due() == []
    assert store.prepare("a", 7, 0, True) == (Verdict.OK, None)  # a retried EndTxn
    assert store.prepare("a", 7, 0, False)[0] is Verdict.INVALID_STATE
    store.add_partitions("a", 7, 0, [("t", 1)])
    verdict, txn = store.prepare("a", 7, 0, False, new_epoch=1)
    assert verdict is Verdict.OK and txn is not None and txn.producer_epoch == 1
    assert store.complete(txn, {("t", 1): 12})
    assert store.aborted("t", 1, 0, 20) == [(7, 0)]  # from its high watermark on joining
    store.add_partitions("a", 7, 1, [("t", 0)])  # open again: holds partition 0 at 0
    whole = store.topic_stability("t")  # every partition in one statement
    assert (whole.open_from, whole.aborted) == ({0: 0}, {1: [(7, 0, 12)]})
    assert set(whole.high_watermarks) == {0, 1}
    assert store.topic_stability("t", 13).aborted == {}  # markers below 13 left out
    verdict, txn = store.prepare("a", 7, 1, True)
    assert store.complete(txn, {("t", 0): 5})
    assert store.aborted("t", 1, 13, 20) == []
    assert store.forget_aborted() == 0  # the log start (0) is below its marker
    with md._transaction("retention, by hand") as conn:  # as retention would have moved it
        conn.execute("UPDATE partitions SET log_start_offset = 13, high_watermark = 13")
    assert store.forget_aborted() == 1
    assert store.aborted("t", 1, 0, 20) == []
    assert store.get("a").producer_epoch == 1
    assert store.add_partitions("a", 7, 1, [("t", 1)]) == (Verdict.OK, [])
    verdict, txn = store.prepare("a", 7, 1, False)
    assert store.complete(txn, {("t", 1): 14})
    assert store.aborted("t", 1, 0, 20) == [(7, 13)]
    md.delete_topic("t")
    assert store.aborted("t", 1, 0, 20) == []


def test_store_adds_partitions_of_several_producers_in_one_transaction(md) -> None:
    """A group commit of AddPartitionsToTxn: each addition gets the verdict it would get
    alone, and only the accepted ones change anything."""
    md.create_topic("t", partitions=2)
    store = md.transactions
    for tid, pid in (("a", 7), ("b", 8), ("c", 9)):
        assert store.register(tid, 60_000, None, pid, 0) is Verdict.OK
    results = store.add_partitions_of(  # not in the order of their ids (written in it)
        [
            ("c", 9, 0, [("t", 1), ("t", 4)]),  # a partition that does not exist
            ("a", 7, 0, [("t", 0), ("t", 1)]),
            ("d", 10, 0, [("t", 0)]),  # never registered
            ("b", 8, 1, [("t", 0)]),  # wrong epoch
        ]
    )
    assert results == [
        (Verdict.OK, [("t", 4)]),
        (Verdict.OK, []),
        (Verdict.UNKNOWN, []),
        (Verdict.FENCED, []),
    ]
    assert [(p.topic, p.partition) for p in store.get("a").partitions] == [("t", 0), ("t", 1)]
    assert store.get("a").state is State.ONGOING
    for tid in ("b", "c"):
        assert store.get(tid).partitions == () and store.get(tid).state is State.EMPTY


def test_concurrent_add_partitions_share_store_transactions(tmp_path: Path) -> None:
    """AddPartitionsToTxn of producers at once are grouped into fewer store transactions,
    each answered only after the one holding it committed (the partitions are in the store
    when it answers)."""
    import asyncio

    from streamhouse.config import Settings
    from streamhouse.kafka.transactions import TransactionCoordinator
    from streamhouse.log import Log

    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t", partitions=4)
        coordinator = TransactionCoordinator(log, lambda keys: None, early_answers=True)

        async def run() -> list[tuple[Verdict, list[tuple[str, int]]]]:
            ids = [f"x{i}" for i in range(12)]
            producers = [await coordinator.init_producer(tid, 60_000) for tid in ids]

            async def add(tid: str, pid: int, epoch: int) -> tuple[Verdict, list]:
                added = await coordinator.add_partitions(tid, pid, epoch, [("t", pid % 4)])
                stored = log.metadata.transactions.get(tid)
                assert [(p.topic, p.partition) for p in stored.partitions] == [("t", pid % 4)]
                return added

            return await asyncio.gather(
                *(add(tid, pid, epoch) for tid, (_, pid, epoch) in zip(ids, producers, strict=True))
            )

        assert asyncio.run(run()) == [(Verdict.OK, [])] * 12
        group = coordinator._additions
        assert group.items == 12 and group.commits < 12


def test_commit_in_decides_only_a_transaction_whose_records_are_all_indexed(md) -> None:
    """What EndTxn runs in the commit of its markers: nothing unless the transaction is the
    producer's, ongoing, on exactly those partitions, and every record it answered early is
    indexed (the producer's last sequence on each partition); then committed and completed
    at once: the partitions leave it (the last stable offset moves) and its offsets publish."""
    from streamhouse.log.metadata import ProducerBatch
    from streamhouse.log.segment import SegmentEntry

    md.create_topic("t", partitions=2)
    store = md.transactions
    assert store.register("a", 60_000, None, 7, 0) is Verdict.OK
    assert store.add_partitions("a", 7, 0, [("t", 0), ("t", 1)]) == (Verdict.OK, [])
    assert store.commit_offsets("a", 7, 0, "g", {("t", 0): (3, "m")}) is Verdict.OK
    records = SegmentEntry("t", 0, 0, 1, 0, 100, 0, 0, 2, 0)  # sequences 0-1 of producer 7
    assert md.commit_segment("s", [records], [ProducerBatch(0, 0, 7, 0, 0, 1)]) == [0]
    both = [("t", 0), ("t", 1)]
    with md._transaction("decide, by hand") as conn:
        assert store.commit_in(conn, "a", 7, 0, both, {("t", 0): 2}) is Verdict.UNDURABLE
        assert store.commit_in(conn, "a", 7, 0, both, {("t", 1): 0}) is Verdict.UNDURABLE
        assert store.commit_in(conn, "a", 7, 0, both[:1], {("t", 0): 1}) is Verdict.INVALID_STATE
        assert store.commit_in(conn, "a", 7, 1, both, {("t", 0): 1}) is Verdict.FENCED
        assert store.commit_in(conn, "a", 8, 0, both, {("t", 0): 1}) is Verdict.UNKNOWN
    assert store.get("a").state is State.ONGOING and store.last_stable_offset("t", 0) == 0
    with md._transaction("decide, by hand") as conn:
        assert store.commit_in(conn, "a", 7, 0, both, {("t", 0): 1}) is Verdict.OK
    txn = store.get("a")
    assert (txn.state, txn.partitions) == (State.COMPLETE_COMMIT, ())
    assert store.last_stable_offset("t", 0) is None and store.due() == []
    assert md.group_offsets("g")[("t", 0)].offset == 3
    assert store.prepare("a", 7, 0, True) == (Verdict.OK, None)  # a retried EndTxn


def test_concurrent_commits_killed_mid_flight_are_whole_or_absent(tmp_path: Path) -> None:
    """Eight transactional producers commit transactions of 20 records over 4 partitions while
    the server is killed with -9; after a restart a read_committed consumer sees every
    transaction whose commit was acknowledged, and each transaction whole or not at all (the
    records, markers and decision of a commit are made durable together)."""
    server = KafkaServer(tmp_path / "data").start()
    script = tmp_path / "committers.py"
    script.write_text(_COMMITTERS)
    try:
        admin_topics(server, ("t", 4))
        committers = _Loop([sys.executable, str(script), server.bootstrap, "t"])
        acknowledged: set[str] = set()
        deadline = time.monotonic() + TIMEOUT
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            acknowledged.update(_acknowledged(committers.lines.get(timeout=TIMEOUT)))
        time.sleep(random.Random(18).uniform(0.0, 0.2))
        server.kill()
        committers.kill()
        while not committers.lines.empty():
            acknowledged.update(_acknowledged(committers.lines.get()))
        server.start()
        # the transactions the kill left open hold the last stable offset back until the sweep
        # aborts them (transaction.timeout.ms 3 s): read until they have
        deadline = time.monotonic() + TIMEOUT
        while True:
            seen = Counter(
                v.decode().rsplit("-", 1)[0] for v in read_all(server, "t", 4, "read_committed")
            )
            if acknowledged <= set(seen) or time.monotonic() > deadline:
                break
        assert acknowledged <= set(seen), sorted(acknowledged - set(seen))[:5]
        assert set(seen.values()) == {20}, {t: n for t, n in seen.items() if n != 20}
    finally:
        server.stop()


def _acknowledged(line: str) -> list[str]:
    """The transaction a ``committed <name>`` line acknowledges (none for a line cut short by
    the kill)."""
    words = line.split()
    return words[1:2] if len(words) == 2 and words[0] == "committed" and line.endswith("\n") else []


_COMMITTERS = """
import os, sys, threading, uuid
from confluent_kafka import Producer

def commit_forever(bootstrap, topic):
    name = uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": name, "linger.ms": 5,
                  "transaction.timeout.ms": 3000})
    p.init_transactions(30)
    for n in range(10**9):
        p.begin_transaction()
        for i in range(20):
            p.produce(topic, f"{name}.{n}-{i}".encode(), partition=i % 4)
        p.commit_transaction(30)
        os.write(1, f"committed {name}.{n}\\n".encode())  # one write: threads do not interleave

for _ in range(8):
    threading.Thread(target=commit_forever, args=sys.argv[1:3], daemon=True).start()
threading.Event().wait()
"""


# -- restarts ------------------------------------------------------------------------------------


def test_transactions_survive_a_kill_and_a_decided_one_is_finished(tmp_path: Path) -> None:
    """An open transaction still holds back read_committed after a kill -9 and restart; its
    records were answered before they were durable (they need be only once it commits), so
    its commit is refused as abortable (the server cannot tell they all survived): the client
    aborts and its next transaction commits. A transaction decided (PrepareCommit stored) by a
    coordinator that died before its markers is committed by the next one's sweep."""
    from streamhouse.log.metadata.sqlite import SQLiteMetadata

    server = KafkaServer(tmp_path / "data").start()
    try:
        admin_topics(server, ("t", 1))
        p = producer(server, "crashed")
        p.begin_transaction()
        send(p, "t", ["crash-0", "crash-1"], partitions=1)
        server.kill()
        server.start()
        assert _list_latest(server, "t", 1) == 0  # still open after the restart
        kept = _list_latest(server, "t", 0)
        assert 0 <= kept <= 2  # flushed by the linger before the kill, or lost with it
        with pytest.raises(KafkaException) as refused:
            p.commit_transaction(TIMEOUT)
        assert refused.value.args[0].txn_requires_abort(), refused.value
        p.abort_transaction(TIMEOUT)  # InitProducerId with its producer id and epoch
        assert _list_latest(server, "t", 0) == kept + 1  # the ABORT marker
        p.begin_transaction()
        send(p, "t", ["again-0", "again-1"], partitions=1)
        p.commit_transaction(TIMEOUT)
        assert read_all(server, "t", 1, "read_committed", settle=1.0) == [b"again-0", b"again-1"]
        before = _list_latest(server, "t", 1)
        assert before == kept + 4  # the ABORT marker, two records, the COMMIT marker

        with RawClient(server.bootstrap) as c:
            error, pid, epoch = _init(c, "decided")
            assert error == 0
            assert _add(c, 2, "decided", pid, epoch, ("t", 0)) == {("t", 0): 0}
            assert _produce(c, "t", "decided", _txn_batch(pid, epoch, 0, [b"kept"])) == 0
        assert server.stop() == 0  # flushes the record, answered before it was durable
        with SQLiteMetadata(tmp_path / "data" / "metadata.sqlite3") as md:
            verdict, txn = md.transactions.prepare("decided", pid, epoch, True)
            assert verdict is Verdict.OK and txn is not None
        server.start()
        deadline = time.monotonic() + 10
        while _list_latest(server, "t", 1) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _list_latest(server, "t", 1) == before + 2  # the record and its COMMIT marker
        assert read_all(server, "t", 1, "read_committed", settle=1.0) == [
            b"again-0",
            b"again-1",
            b"kept",
        ]
    finally:
        server.stop()


# -- a second client library -------------------------------------------------------------------


def test_aiokafka_transactions_commit_abort_fence_and_send_offsets(
    kafka_server: KafkaServer, new_topic
) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from aiokafka.structs import TopicPartition as AioPartition

    topic, source = new_topic(2), new_topic(1)
    transactional_id, group = f"aio-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    send(plain, source, [f"in-{i}" for i in range(5)], partitions=1)

    async def scenario() -> list[str]:
        def new() -> AIOKafkaProducer:
            return AIOKafkaProducer(
                bootstrap_servers=kafka_server.bootstrap, transactional_id=transactional_id
            )

        old = new()
        await old.start()
        try:
            async with old.transaction():
                for i in range(4):
                    await old.send_and_wait(topic, f"ok-{i}".encode(), partition=i % 2)
                await old.send_offsets_to_transaction({AioPartition(source, 0): 3}, group)
            await old.begin_transaction()
            for i in range(4):
                await old.send_and_wait(topic, f"aborted-{i}".encode(), partition=i % 2)
            await old.abort_transaction()
            await old.begin_transaction()
            await old.send_and_wait(topic, b"zombie", partition=0)
            fresh = new()
            await fresh.start()  # fences the old producer, aborting its transaction
            try:
                with pytest.raises(KafkaError):
                    await old.send_and_wait(topic, b"late", partition=1)
                    await old.commit_transaction()
                async with fresh.transaction():
                    await fresh.send_and_wait(topic, b"fresh", partition=1)
            finally:
                await fresh.stop()
        finally:
            await old.stop()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_server.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            consumer.assign([AioPartition(topic, 0), AioPartition(topic, 1)])
            await consumer.seek_to_beginning()
            got: list[str] = []
            for _ in range(20):  # until the five committed records and one empty poll
                batches = await consumer.getmany(timeout_ms=300)
                if not batches and len(got) >= 5:
                    break
                got += [m.value.decode() for ms_ in batches.values() for m in ms_]
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(scenario())
    expected = sorted([f"ok-{i}" for i in range(4)] + ["fresh"])
    assert sorted(got) == expected
    assert (
        sorted(v.decode() for v in read_all(kafka_server, topic, 2, "read_committed")) == expected
    )
    everything = {v.decode() for v in read_all(kafka_server, topic, 2, "read_uncommitted")}
    assert {f"aborted-{i}" for i in range(4)} | {"zombie"} <= everything
    assert "late" not in everything
    committed = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": group})
    offsets = committed.committed([TopicPartition(source, 0)], timeout=TIMEOUT)
    committed.close()
    assert offsets[0].offset == 3  # sent inside the committed transaction


def test_markers_set_the_producer_epoch_the_store_checks() -> None:
    """An ABORT marker at a bumped epoch fences the old epoch in the commit transaction (any
    agent's batches); a marker of the current epoch leaves the sequences going on."""
    from types import SimpleNamespace

    from streamhouse.errors import RefusedBatchesError
    from streamhouse.log.metadata import ProducerBatch
    from streamhouse.log.metadata.rules import ProducerState, check_producer_batches

    entries = [SimpleNamespace(topic="t", partition=0)]
    key = ("t", 0, 7)
    data = ProducerBatch(0, 0, 7, 3, 0, 4)
    states = check_producer_batches(entries, [10], [data], {})
    assert states[key] == ProducerState(3, 4, ((0, 4, 10),))
    same_epoch_marker = ProducerBatch(0, 5, 7, 3, -1, -1)
    assert check_producer_batches(entries, [10], [same_epoch_marker], states) == {}
    fencing_marker = ProducerBatch(0, 5, 7, 4, -1, -1)
    fenced = check_producer_batches(entries, [10], [fencing_marker], states)
    assert fenced[key] == ProducerState(4, -1, ())
    with pytest.raises(RefusedBatchesError) as refused:
        check_producer_batches(entries, [20], [ProducerBatch(0, 0, 7, 3, 5, 5)], fenced)
    assert "epoch 3 is older than 4" in str(refused.value.verdicts[0])
    assert check_producer_batches(entries, [20], [ProducerBatch(0, 0, 7, 4, 0, 1)], fenced)[
        key
    ] == ProducerState(4, 1, ((0, 1, 20),))


# -- two agents on PostgreSQL ------------------------------------------------------------------


def test_two_agents_share_transactions_and_fence_across_them(
    tmp_path: Path, postgres_url: str
) -> None:
    """The old producer coordinated by one agent, the new one by the other: the new one's
    InitProducerId aborts the old transaction through the store, the old producer's later
    batches and commit are refused whichever agent they reach, and read_committed consumers
    of either agent see the committed records only."""
    import streamhouse

    data = tmp_path / "data"
    with streamhouse.connect(data, metadata=postgres_url) as sh:
        sh.create_topic("shared", partitions=4)
    agents = [KafkaServer(data, args=["--metadata", postgres_url]) for _ in range(2)]
    try:
        for agent in agents:
            agent.start()
        old = producer(agents[0], "two-agents")
        old.begin_transaction()
        send(old, "shared", [f"zombie-{i}" for i in range(4)])
        new = producer(agents[1], "two-agents")
        for i in range(4):
            old.produce("shared", f"late-{i}".encode(), partition=i % 2)
        with pytest.raises(KafkaException):
            old.commit_transaction(TIMEOUT)
        new.begin_transaction()
        send(new, "shared", [f"new-{i}" for i in range(4)])
        new.commit_transaction(TIMEOUT)
        for partition in range(4):  # one partition per transaction: an agent leading two
            new.begin_transaction()  # meets a partition its last transaction did not have
            new.produce("shared", f"one-{partition}".encode(), partition=partition)
            new.commit_transaction(TIMEOUT)
        expected = sorted([f"new-{i}" for i in range(4)] + [f"one-{p}" for p in range(4)])
        for agent in agents:
            committed = read_all(agent, "shared", 4, "read_committed", settle=1.0)
            assert sorted(v.decode() for v in committed) == expected
            everything = {v.decode() for v in read_all(agent, "shared", 4, "read_uncommitted")}
            assert not {v for v in everything if v.startswith("late-")}, agent.log()
    finally:
        for agent in agents:
            agent.stop()


def _offset_fetch(server: KafkaServer, version: int, group: str, topics, **extra) -> dict:
    """OffsetFetch at ``version``: (topic, partition) -> (offset, error code)."""
    with RawClient(server.bootstrap) as client:
        answer = client.request(9, version, group_id=group, topics=topics, **extra)
    assert answer.error_code == 0
    return {
        (t.name, p.partition_index): (p.committed_offset, p.error_code)
        for t in answer.topics
        for p in t.partitions
    }


def test_offset_fetch_v7_require_stable_waits_for_transactional_offsets(
    kafka_server: KafkaServer, new_topic
) -> None:
    """OffsetFetch v7 (KIP-447): while a transaction holds a group's offset, require_stable
    answers UNSTABLE_OFFSET_COMMIT for it (and the last committed one without it); after the
    commit both see the new offset. v6 (flexible) with null topics lists every partition."""
    source = new_topic(2)
    group, tid = f"g-{uuid.uuid4().hex[:8]}", f"stable-{uuid.uuid4().hex[:8]}"
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap})
    send(plain, source, [f"in-{i}" for i in range(6)], partitions=2)
    committer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": group})
    committer.commit(offsets=[TopicPartition(source, 1, 2)], asynchronous=False)
    committer.close()
    p = producer(kafka_server, tid)
    consumer = Consumer({"bootstrap.servers": kafka_server.bootstrap, "group.id": group})
    p.begin_transaction()
    p.send_offsets_to_transaction(
        [TopicPartition(source, 0, 3), TopicPartition(source, 1, 4)],
        consumer.consumer_group_metadata(),
        TIMEOUT,
    )
    fetch = messages(9, 7, False)
    topics = (fetch.OffsetFetchRequestTopic(name=source, partition_indexes=(0, 1)),)
    unstable = ErrorCode.unstable_offset_commit
    assert _offset_fetch(kafka_server, 7, group, topics, require_stable=True) == {
        (source, 0): (-1, unstable),
        (source, 1): (-1, unstable),
    }
    assert _offset_fetch(kafka_server, 7, group, topics, require_stable=False) == {
        (source, 0): (-1, 0),
        (source, 1): (2, 0),
    }
    p.commit_transaction(TIMEOUT)
    consumer.close()
    assert _offset_fetch(kafka_server, 7, group, topics, require_stable=True) == {
        (source, 0): (3, 0),
        (source, 1): (4, 0),
    }
    assert _offset_fetch(kafka_server, 6, group, None) == {(source, 0): (3, 0), (source, 1): (4, 0)}


@pytest.mark.parametrize("failed_before_end_txn", [True, False])
def test_a_commit_at_once_is_refused_when_an_early_answered_batch_was_lost(
    tmp_path: Path, failed_before_end_txn: bool
) -> None:
    """The first transaction of a producer epoch: its first batch on a partition is answered
    early and then lost (the put of its object fails), its second is indexed (or, answered
    with the offset behind the first, refused: it would be indexed elsewhere). The store
    starts a producer's sequences afresh at a new epoch whatever the first sequence, so the
    last sequence alone matches: the commit must still be refused (``UNDURABLE``, the client
    aborts), not acknowledged with the first batch missing. The loss is known before EndTxn,
    or only while its markers are on their way (the put fails slowly, the second batch and
    the markers share the next object)."""
    import asyncio
    from types import SimpleNamespace

    from streamhouse.config import Settings
    from streamhouse.errors import StorageError
    from streamhouse.kafka.produce import Early, _start_append
    from streamhouse.kafka.producers import ProducerRegistry
    from streamhouse.kafka.transactions import TransactionCoordinator
    from streamhouse.log import Log

    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t")
        coordinator = TransactionCoordinator(log, lambda keys: None, early_answers=True)
        broker = SimpleNamespace(log=log, transactions=coordinator, producers=ProducerRegistry())
        put = log.writer._store.put
        puts = 0

        def failing_first_put(key: str, data: bytes) -> None:
            nonlocal puts
            puts += 1
            if puts == 1:
                time.sleep(0 if failed_before_end_txn else 0.3)
                raise StorageError("put failed")
            put(key, data)

        log.writer._store.put = failing_first_put  # type: ignore[method-assign]

        async def run() -> tuple[Verdict, list[object]]:
            verdict, pid, epoch = await coordinator.init_producer("x", 60_000)
            assert verdict is Verdict.OK
            added = await coordinator.add_partitions("x", pid, epoch, [("t", 0)])
            assert added == (Verdict.OK, [])
            outcomes = []
            for sequence, values in ((0, [b"a0", b"a1"]), (2, [b"b0", b"b1"])):
                data = build_batch(
                    values,
                    producer_id=pid,
                    producer_epoch=epoch,
                    base_sequence=sequence,
                    flags=ATTR_TRANSACTIONAL,
                )
                outcomes.append(_start_append(broker, "t", 0, memoryview(data), "x"))  # type: ignore[arg-type]
                if failed_before_end_txn:
                    await coordinator.appended()  # each batch in an object of its own
                else:
                    log.writer.hurry()  # the first batch's object alone
                    await asyncio.sleep(0.05)
            return await coordinator.end("x", pid, epoch, commit=True), outcomes

        verdict, outcomes = asyncio.run(run())
        # both answered early, with the offsets reserved for them: the second behind the
        # first (known late) or, the loss known before it was queued, at the first's
        assert outcomes == [Early(0), Early(0 if failed_before_end_txn else 2)]
        # Known late, the second batch shared an object with the markers, was written again
        # without them (refused by their commit hook).
        assert puts == (2 if failed_before_end_txn else 3)
        # the first batch is lost; the second, known late, was answered with offset 2 and
        # is refused rather than indexed at 0
        assert decode_batches(log.fetch("t", 0, 0, 1 << 20).records).column("value").to_pylist()[
            :2
        ] == ([b"b0", b"b1"] if failed_before_end_txn else [])
        assert verdict is Verdict.UNDURABLE
        assert log.metadata.transactions.get("x").state is State.ONGOING


def test_batches_of_a_transaction_whose_end_txn_is_under_way_are_refused(
    tmp_path: Path,
) -> None:
    """A produce request arriving while EndTxn's markers are on their way (the transaction is
    still ongoing in the store) is refused (``INVALID_TXN_STATE``): taken, it would land
    behind the COMMIT markers, a transactional batch in no transaction (no marker, nothing
    holding the last stable offset), and reloading the transaction into the coordinator's
    cache let the next transaction's batches to a partition it did not add through too."""
    import asyncio
    import threading as threads
    from types import SimpleNamespace

    from streamhouse.config import Settings
    from streamhouse.kafka.produce import Early, _start_append
    from streamhouse.kafka.producers import ProducerRegistry
    from streamhouse.kafka.transactions import TransactionCoordinator
    from streamhouse.kafka.wire import ErrorCode
    from streamhouse.log import Log
    from streamhouse.log.records import split_batches

    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t")
        coordinator = TransactionCoordinator(log, lambda keys: None, early_answers=True)
        broker = SimpleNamespace(log=log, transactions=coordinator, producers=ProducerRegistry())
        put, entered, release = log.writer._store.put, threads.Event(), threads.Event()

        def held_put(key: str, data: bytes) -> None:
            entered.set()
            release.wait(10)
            put(key, data)

        def batch(pid: int, epoch: int, sequence: int) -> bytes:
            return build_batch(
                [b"v"],
                producer_id=pid,
                producer_epoch=epoch,
                base_sequence=sequence,
                flags=ATTR_TRANSACTIONAL,
            )

        async def run() -> tuple[Verdict, ErrorCode | None]:
            verdict, pid, epoch = await coordinator.init_producer("x", 60_000)
            assert await coordinator.add_partitions("x", pid, epoch, [("t", 0)]) == (
                Verdict.OK,
                [],
            )
            assert _start_append(broker, "t", 0, memoryview(batch(pid, epoch, 0)), "x") == Early(0)  # type: ignore[arg-type]
            log.writer._store.put = held_put  # type: ignore[method-assign]
            ending = asyncio.ensure_future(coordinator.end("x", pid, epoch, commit=True))
            while not entered.is_set():  # the record and the markers' object is being put
                await asyncio.sleep(0.01)
            header = split_batches(memoryview(batch(pid, epoch, 1)))[0][2]
            assert log.metadata.transactions.get("x").state is State.ONGOING
            assert coordinator.refusal("x", "t", 0, [header]) is ErrorCode.invalid_txn_state
            release.set()
            verdict = await ending
            log.writer._store.put = put  # type: ignore[method-assign]
            return verdict, coordinator.refusal("x", "t", 0, [header])

        verdict, refused = asyncio.run(run())
        assert verdict is Verdict.OK
        assert log.metadata.transactions.get("x").state is State.COMPLETE_COMMIT
        assert refused is ErrorCode.invalid_txn_state


def test_delivery_reports_carry_the_offsets_consumers_read_the_records_at(
    kafka_server: KafkaServer, new_topic
) -> None:
    """Transactional records are answered before they are durable, with the offsets reserved
    for them: librdkafka's delivery reports (the base offset plus each record's position)
    name where a consumer then reads each record, over several transactions and partitions,
    interleaved with an idempotent producer writing to the same partitions."""
    topic = new_topic(3)
    p = producer(kafka_server, f"tx-{uuid.uuid4().hex[:8]}")
    plain = Producer(
        {"bootstrap.servers": kafka_server.bootstrap, "enable.idempotence": True, "linger.ms": 2}
    )
    reported: dict[bytes, tuple[int, int]] = {}

    def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
        assert err is None, err
        reported[msg.value()] = (msg.partition(), msg.offset())

    for n in range(4):
        p.begin_transaction()
        for i in range(12):
            p.produce(topic, f"t{n}-{i}".encode(), partition=i % 3, on_delivery=delivered)
            if i % 4 == 0:
                plain.produce(topic, f"i{n}-{i}".encode(), partition=i % 3, on_delivery=delivered)
                plain.poll(0)
            p.poll(0)
        p.flush(TIMEOUT)  # delivery reports before the commit: the early answers
        p.commit_transaction(TIMEOUT)
        assert plain.flush(TIMEOUT) == 0
    assert len(reported) == 4 * (12 + 3)
    assert all(offset >= 0 for _, offset in reported.values())
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_server.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, part, 0) for part in range(3)])
    read: dict[bytes, tuple[int, int]] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(read) < len(reported) and time.monotonic() < deadline:
        for m in consumer.consume(100, timeout=0.2):
            assert m.error() is None, m.error()
            read[m.value()] = (m.partition(), m.offset())
    consumer.close()
    assert read == reported


def _pipelined_produce(c: RawClient, *requests: tuple[str, str, bytes]) -> list[tuple[int, int]]:
    """Produce requests ``(topic, transactional id, batch)`` sent together on one connection
    (the server takes them in order), then their ``(error code, base offset)``."""
    correlations = []
    for topic, tid, records in requests:
        fields = produce_request(topic, 0, records)
        fields["transactional_id"] = tid
        correlation, frame = c.encode(0, 8, **fields)
        c.send_frame(frame)
        correlations.append(correlation)
    answers = []
    for correlation in correlations:
        got, resp = c.decode(0, 8, c.read_frame())
        assert got == correlation
        part = resp.responses[0].partition_responses[0]
        answers.append((part.error_code, part.base_offset))
    return answers


def test_a_transaction_whose_answered_offsets_shifted_is_not_committed(
    kafka_server: KafkaServer, new_topic
) -> None:
    """A batch queued ahead of a transactional batch answered early is refused by the store
    (a sequence gap), so the records behind it would land on other offsets than the early
    answer named: they are refused too, and their transaction's commit is refused
    (UNKNOWN_PRODUCER_ID, abortable); nothing of it is in the log at any offset. The next
    transaction is answered with the offsets it gets."""
    topic = new_topic(1)
    ahead, behind = f"ahead-{uuid.uuid4().hex[:8]}", f"behind-{uuid.uuid4().hex[:8]}"
    with RawClient(kafka_server.bootstrap) as c:
        _, a_pid, a_epoch = _init(c, ahead)
        _, b_pid, b_epoch = _init(c, behind)
        assert _add(c, 2, ahead, a_pid, a_epoch, (topic, 0)) == {(topic, 0): 0}
        assert _add(c, 2, behind, b_pid, b_epoch, (topic, 0)) == {(topic, 0): 0}
        first = _txn_batch(a_pid, a_epoch, 0, [b"a0"])
        gap = _txn_batch(a_pid, a_epoch, 5, [b"gap", b"gap"])  # sequences 1-4 missing
        shifted = _txn_batch(b_pid, b_epoch, 0, [b"b0", b"b1", b"b2"])
        answers = _pipelined_produce(
            c, (topic, ahead, first), (topic, ahead, gap), (topic, behind, shifted)
        )
        assert answers == [(0, 0), (0, 1), (0, 3)]  # the gap batch's two records ahead
        assert _end(c, 2, behind, b_pid, b_epoch, True) == 59  # UNKNOWN_PRODUCER_ID
        assert _end(c, 2, behind, b_pid, b_epoch, False) == 0
        assert _end(c, 2, ahead, a_pid, a_epoch, True) == 59
        assert _end(c, 2, ahead, a_pid, a_epoch, False) == 0
        uncommitted = c.fetch(topic, [(0, 0)])[0]
        assert decode_batches(uncommitted.records).column("value").to_pylist() == [b"a0"]
        # the behind producer bumps its epoch (InitProducerId again) and commits
        _, b_pid, b_epoch = _init(c, behind)
        assert _add(c, 2, behind, b_pid, b_epoch, (topic, 0)) == {(topic, 0): 0}
        batch = _txn_batch(b_pid, b_epoch, 0, [b"again-0", b"again-1"])
        [(error, base)] = _pipelined_produce(c, (topic, behind, batch))
        assert _end(c, 2, behind, b_pid, b_epoch, True) == 0
        fetched = c.fetch(topic, [(0, base)], isolation_level=1)[0]
    assert error == 0 and base == uncommitted.high_watermark  # after a0 and the ABORT markers
    assert decode_batches(fetched.records).column("value").to_pylist() == [b"again-0", b"again-1"]
    assert read_all(kafka_server, topic, 1, "read_committed", settle=0.5) == [
        b"again-0",
        b"again-1",
    ]
