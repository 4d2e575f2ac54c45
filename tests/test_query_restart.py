"""Restarts of continuous queries: the output topic gets every window exactly once.

- a process running a query is killed with SIGKILL at random points, several times, and
  restarted; the output topic then equals the output of an uninterrupted run, record for record;
- a crash between writing a micro-batch's output and committing its checkpoint, injected
  in-process, first for the very first output of a query: the attempt's transaction is aborted
  (its rows hidden from read_committed readers), the batch runs again;
- a stopped query restarted under the same name resumes from its checkpoint.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import oracle, rows_of, start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import StorageError
from streamhouse.runtime.sink import TopicSink
from streamhouse.state.store import StateStore

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
SECOND = 1_000

QUERY = """CREATE STREAM IF NOT EXISTS ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '3' SECOND) WITH (topic = 'ev', format = 'json');
SET 'max-batch-records' = '7';
SET 'poll-interval' = '20 ms';
INSERT INTO {sink}
SELECT k, window_start, window_end, COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s,
       AVG(v) AS a, MIN(v) AS lo, MAX(v) AS hi
FROM ev
GROUP BY k, HOP(t, INTERVAL '5' SECOND, INTERVAL '10' SECOND)
"""
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]

CHILD = """
import sys, time
import streamhouse

data, path = sys.argv[1], sys.argv[2]
sh = streamhouse.connect(data, linger_ms=1)
query = sh.start(path, name="hop")
print("ready", flush=True)
while query.status()["state"] == "running":
    time.sleep(0.02)
print(query.status()["error"], flush=True)
"""


def events(n: int, seed: int) -> list[tuple[str, int, int]]:
    """``n`` events a second apart, disordered by up to the declared 3 s delay."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append((rng.choice("abc"), T0 + i * SECOND - rng.randint(0, 3) * SECOND, i % 7))
    return out


def produce(sh: StreamHouse, rows: list[tuple[str, int, int | None]]) -> None:
    sh.produce("ev", [{"k": k, "t": t, "v": v} for k, t, v in rows])


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


@pytest.mark.slow
def test_kill_9_at_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rows = events(160, seed=7)
    (tmp_path / "hop.sql").write_text(QUERY.format(sink="out"))
    (tmp_path / "child.py").write_text(CHILD)
    with streamhouse.connect(data, linger_ms=1) as sh:
        sh.sql(QUERY.split(";")[0])
        produce(sh, rows)
        # The uninterrupted run, in this process, into its own topic.
        reference = start_paused(sh, QUERY.format(sink="reference"), "reference")
        try:
            reference.run_until_caught_up(final=True)
        finally:
            reference.stop()
        expected = sh.fetch("reference")["value"].to_pylist()

    rng = random.Random()
    written: list[int] = []
    for _ in range(4):
        child = subprocess.Popen(
            [sys.executable, str(tmp_path / "child.py"), str(data), str(tmp_path / "hop.sql")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.25))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        with streamhouse.connect(data, linger_ms=1) as sh:
            written.append(len(topic_rows(sh, "out")))

    with streamhouse.connect(data, linger_ms=1) as sh:
        query = start_paused(sh, tmp_path / "hop.sql", "hop")
        try:
            query.run_until_caught_up(final=True)
            assert query.status()["rows_in"] == len(rows)
        finally:
            query.stop()
        got = sh.fetch("out")["value"].to_pylist()
    assert written[0] < len(expected), "the first kill came after the query had finished"
    assert len(got) == len(expected)
    assert got == expected
    assert rows_of(topic_rows_of(got), COLUMNS) == oracle(rows, "hop", 10 * SECOND, 5 * SECOND)


def topic_rows_of(values: list[bytes]) -> list[dict]:
    return [json.loads(v) for v in values]


class Crash(Exception):
    """Stands for the process dying."""


def crash_after_sink_write(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Fail the checkpoint of the micro-batch that writes output for the ``nth`` time, after
    its rows are in the sink topic (and its intent, the pending record, is committed)."""
    write, commit = TopicSink.write, StateStore.commit
    state = {"writes": 0, "crash": False}

    def counting_write(sink: TopicSink, *args, **kwargs):
        marks = write(sink, *args, **kwargs)
        state["writes"] += 1
        state["crash"] = state["writes"] == nth
        return marks

    def failing_commit(store: StateStore, batch) -> None:
        if state["crash"]:
            state["crash"] = False
            raise Crash
        commit(store, batch)

    monkeypatch.setattr(TopicSink, "write", counting_write)
    monkeypatch.setattr(StateStore, "commit", failing_commit)


@pytest.mark.parametrize("nth", [1, 3])
def test_a_crash_between_output_and_checkpoint_is_replayed_exactly_once(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    rows = events(60, seed=nth)
    sql = QUERY.format(sink="out")
    sh.sql(QUERY.split(";")[0])
    produce(sh, rows)
    crash_after_sink_write(monkeypatch, nth)
    query = start_paused(sh, sql, "hop")
    with pytest.raises(Crash):
        query.run_until_caught_up()
    committed = len(topic_rows(sh, "out"))
    # the crashed batch's rows are in the topic already, in a transaction not committed
    assert len(topic_rows(sh, "out", "read_uncommitted")) > committed
    query.store.close()  # the process died: nothing else is cleaned up
    monkeypatch.undo()
    query = start_paused(sh, sql, "hop")
    try:
        assert len(topic_rows(sh, "out")) == committed  # the start aborted it
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    answer = oracle(rows, "hop", 10 * SECOND, 5 * SECOND)
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == answer
    # read_uncommitted: the aborted attempt's rows as well
    assert len(topic_rows(sh, "out", "read_uncommitted")) > len(answer)


def test_a_restarted_query_resumes_from_its_checkpoint(sh: StreamHouse) -> None:
    rows = events(40, seed=3)
    sh.sql(QUERY.split(";")[0])
    produce(sh, rows[:20])
    query = sh.start(QUERY.format(sink="out"), name="hop")
    query.run_until_caught_up()
    first = query.status()
    query.stop()
    assert first["rows_in"] == 20 and first["rows_out"] > 0
    produce(sh, rows[20:])
    query = sh.start(QUERY.format(sink="out"), name="hop")
    try:
        query.run_until_caught_up(final=True)
        # read on from the checkpoint: the first 20 records are neither read nor counted twice
        assert query.status()["rows_in"] == 40
        assert query.status()["offsets"] == {0: 40}
    finally:
        query.stop()
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(rows, "hop", 10 * SECOND, 5 * SECOND)


def test_one_process_per_query_state(sh: StreamHouse) -> None:
    sh.sql(QUERY.split(";")[0])
    query = start_paused(sh, QUERY.format(sink="out"), "hop")
    try:
        with pytest.raises(StorageError):
            start_paused(sh, QUERY.format(sink="out"), "hop")
    finally:
        query.stop()
