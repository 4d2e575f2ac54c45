"""A continuous query's output and its checkpoint commit atomically (issue 18): the query writes
its sink as a Kafka transaction that commits once the checkpoint recording it is durable.

- ``serve --queries`` killed with -9 between a micro-batch's sink write and its checkpoint
  (twice, by a start-up hook that kills the process there), then at random points: a
  read_committed confluent-kafka consumer of the output sees every window once, equal to
  DuckDB's answer, while a read_uncommitted one also sees the rows of the rolled-back
  attempts (aborted transactions);
- a crash after the checkpoint and before the commit: the restart commits (rolls forward)
  the recorded transaction instead of running the batch again;
- a parallel query's tasks write with producers of their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from kafka_fixtures import KafkaServer
from test_kafka_transactions import read_all
from window_cases import start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.runtime.launch import start_query
from streamhouse.runtime.two_phase import TRANSACTION, TwoPhaseCommit, transactional_id

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC, in seconds
KEYS = ("a", "b", "c", "d")
SECONDS = 150
PARTITIONS = 3

QUERY = """CREATE STREAM ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json');
SET 'poll-interval' = '20 ms';
SET 'max-batch-records' = '24';
INSERT INTO counts
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS s FROM ev
GROUP BY k, TUMBLE(t, INTERVAL '5' SECOND);
"""

CRASH_HOOK = """
import os
after = int(os.environ.get("SINK_WRITES_BEFORE_KILL", "0"))
if after:
    import signal
    from streamhouse.runtime.sink import TopicSink

    write = TopicSink.write
    writes = [0]

    def write_then_die(self, *args, **kwargs):
        write(self, *args, **kwargs)
        writes[0] += 1
        if writes[0] >= after:  # the records are durable, the checkpoint not yet written
            os.kill(os.getpid(), signal.SIGKILL)

    TopicSink.write = write_then_die
"""


def _events() -> list[dict[str, object]]:
    """One event per key a second."""
    out: list[dict[str, object]] = []
    for s in range(SECONDS):
        stamp = datetime.fromtimestamp(T0 + s, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out += [{"k": k, "t": stamp, "v": s * 10 + i} for i, k in enumerate(KEYS)]
    return out


def _produce(sh: StreamHouse, events: list[dict[str, object]]) -> None:
    """``events`` keyed by ``k``, then on every partition of ``ev`` one far later (key ``z``)
    that closes every earlier window."""
    sh.produce("ev", events, key=[str(e["k"]) for e in events])
    late = datetime.fromtimestamp(T0 + SECONDS + 60, UTC).strftime("%Y-%m-%d %H:%M:%S")
    for partition in range(sh.log.topic("ev").partitions):
        sh.produce("ev", [{"k": "z", "t": late, "v": 0}], partition=partition)


def _expected(events: list[dict[str, object]]) -> Counter[tuple[str, str, int, int]]:
    """DuckDB's answer: every 5 s window per key that the last event closes."""
    con = duckdb.connect()
    con.execute("CREATE TABLE ev (k VARCHAR, t TIMESTAMP, v BIGINT)")
    con.executemany("INSERT INTO ev VALUES (?, ?, ?)", [(e["k"], e["t"], e["v"]) for e in events])
    rows = con.execute(
        "SELECT k, strftime(time_bucket(INTERVAL 5 SECOND, t), '%Y-%m-%d %H:%M:%S'),"
        " COUNT(*), SUM(v) FROM ev WHERE k <> 'z' GROUP BY ALL"
    ).fetchall()
    return Counter((k, start, int(n), int(s)) for k, start, n, s in rows)


def _windows(values: list[bytes]) -> Counter[tuple[str, str, int, int]]:
    rows = [json.loads(v) for v in values]
    return Counter((r["k"], r["window_start"], r["n"], r["s"]) for r in rows)


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    """(data dir, queries dir, environment of a server the crash hook is loaded into)."""
    data, queries, hook = tmp_path / "data", tmp_path / "queries", tmp_path / "hook"
    queries.mkdir()
    hook.mkdir()
    (queries / "counts.sql").write_text(QUERY)
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    yield data, queries, {"PYTHONPATH": path}


@pytest.mark.slow
def test_kill_9_between_sink_write_and_checkpoint_leaves_only_aborted_rows(
    hooked: tuple[Path, Path, dict[str, str]],
) -> None:
    data, queries, env = hooked
    events = _events()
    expected = _expected(events)
    with streamhouse.connect(data) as sh:
        sh.create_topic("ev", partitions=2)
        sh.create_topic("counts", partitions=PARTITIONS)
        _produce(sh, events)
    args = ["--queries", str(queries)]
    for writes in (1, 3):  # killed right after its first, then its third sink write
        server = KafkaServer(data, env={**env, "SINK_WRITES_BEFORE_KILL": str(writes)}, args=args)
        with contextlib.suppress(RuntimeError):  # killed before it answered
            server.start()
        assert server.process is not None
        assert server.process.wait(120) == -signal.SIGKILL, server.log()
    server = KafkaServer(data, port=server.port, args=args)
    try:
        rng = random.Random()
        for _ in range(2):  # then killed at random points while it catches up
            server.start()
            time.sleep(rng.uniform(0.1, 0.8))
            server.kill()
        server.start()
        deadline = time.monotonic() + 120
        committed = _windows(read_all(server, "counts", PARTITIONS, "read_committed", 1.0))
        while sum(committed.values()) < sum(expected.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            committed = _windows(read_all(server, "counts", PARTITIONS, "read_committed", 1.0))
        everything = _windows(read_all(server, "counts", PARTITIONS, "read_uncommitted", 1.0))
    finally:
        server.stop()
    assert committed == expected  # every window once, none of a rolled-back attempt
    assert max(committed.values()) == 1
    # the attempts cut short are in the log, in aborted transactions: the same windows again
    aborted = everything - committed
    assert sum(aborted.values()) > 0
    assert set(aborted) <= set(expected)
    with streamhouse.connect(data) as sh:
        states = {t.transactional_id: t.state.value for t in sh.log.metadata.transactions.list()}
        assert list(states) == [transactional_id("counts")]
        assert states[transactional_id("counts")] in ("CompleteCommit", "Empty")  # none open
        assert _windows([json.dumps(r).encode() for r in topic_rows(sh, "counts")]) == expected


def test_a_crash_after_the_checkpoint_commits_the_recorded_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint is durable but the process dies before EndTxn: the records are held back
    from read_committed readers until the query starts again and commits that transaction
    first (the batch is not run again)."""
    events = _events()
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.create_topic("ev")
        sh.create_topic("counts", partitions=PARTITIONS)
        _produce(sh, events)
        sql = QUERY.replace("'24'", "'100000'")  # one micro-batch
        commit = TwoPhaseCommit.commit

        def die(self: TwoPhaseCommit) -> None:
            raise KeyboardInterrupt  # stands for the process dying

        monkeypatch.setattr(TwoPhaseCommit, "commit", die)
        query = start_paused(sh, sql, "counts")
        with pytest.raises(KeyboardInterrupt):
            query.step()
        assert query.store.get_json(TRANSACTION) is not None  # recorded in the checkpoint
        query.store.close()
        monkeypatch.setattr(TwoPhaseCommit, "commit", commit)
        written = len(topic_rows(sh, "counts", "read_uncommitted"))
        assert written > 0
        assert topic_rows(sh, "counts") == []  # held back: the transaction is open
        query = start_paused(sh, sql, "counts")  # commits it before anything else
        try:
            assert len(topic_rows(sh, "counts")) == written
            assert query.store.get_json(TRANSACTION) is None
            assert not query.step()  # the batch was done: nothing to run again
        finally:
            query.stop()
        assert len(topic_rows(sh, "counts", "read_uncommitted")) == written  # nothing aborted
        got = _windows([json.dumps(r).encode() for r in topic_rows(sh, "counts")])
    assert got == _expected(events)


def test_parallel_tasks_write_with_producers_of_their_own(tmp_path: Path) -> None:
    events = _events()
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.create_topic("ev", partitions=2)
        sh.create_topic("counts", partitions=2)
        _produce(sh, events)
        path = tmp_path / "counts.sql"
        path.write_text(QUERY)
        query = start_query(
            sh.engine,
            path,
            state_root=sh.settings.data_dir / "queries",
            options={"parallelism": 2},
            start=False,
        )
        query.run_until_caught_up(final=True)  # closes the last window too
        rows = [r for r in topic_rows(sh, "counts") if r["k"] != "z"]
        got = _windows([json.dumps(r).encode() for r in rows])
        producers = {t.transactional_id for t in sh.log.metadata.transactions.list()}
    assert got == _expected(events)
    assert producers == {transactional_id("counts", 0), transactional_id("counts", 1)}
