"""Continuous queries at parallelism N (task processes, an exchange topic by key group).

- a windowed GROUP BY (TUMBLE, HOP, CUMULATE) at parallelism 1, 2 and 3, micro-batches of
  random sizes over records produced in random chunks: the sink equals DuckDB's batch answer;
- an updating GROUP BY and a stateless filter at parallelism 2 (the stateless one through the
  command line); the updating GROUP BY rescaled 2 -> 3 -> 1 (a task killed -9);
- a query stopped mid-way and restarted, and one whose task processes are killed with SIGKILL
  mid-run, then resumed: every window exactly once;
- EXPLAIN shows the exchange and the tasks (Nexmark q5's shape routed by window); bad settings
  and shapes not parallel yet are refused with one clear message (rescaling the others:
  ``test_parallel_keyed.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from parallel_cases import run_to_end, wait_for
from window_cases import oracle, rows_of, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.config import Settings
from streamhouse.errors import ConfigError, SqlError
from streamhouse.os_memory import resident_memory
from streamhouse.runtime.launch import start_query
from streamhouse.runtime.parallel import TASK_CACHE_BYTES, task_settings
from streamhouse.runtime.task_processes import Zygote

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
PARTITIONS = 3
KEYS = [f"user-{i}" for i in range(17)]

STREAM = """CREATE STREAM IF NOT EXISTS ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '3' SECOND) WITH (topic = 'ev', format = 'json');
SET 'poll-interval' = '20 ms';
SET 'idle-timeout' = '1 h';
"""
WINDOWED = (
    STREAM
    + """SET 'max-batch-records' = '{batch}';
INSERT INTO {sink}
SELECT k, window_start, window_end, COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s,
       AVG(v) AS a, MIN(v) AS lo, MAX(v) AS hi
FROM ev
GROUP BY k, {window}
"""
)
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]
WINDOWS = {
    "tumble": ("TUMBLE(t, INTERVAL '10' SECOND)", 10_000, None),
    "hop": ("HOP(t, INTERVAL '5' SECOND, INTERVAL '10' SECOND)", 10_000, 5_000),
    "cumulate": ("CUMULATE(t, INTERVAL '5' SECOND, INTERVAL '15' SECOND)", 15_000, 5_000),
}


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.create_topic("ev", partitions=PARTITIONS)
        yield conn


def events(rng: random.Random, per_partition: int) -> list[list[tuple[str, int, int | None]]]:
    """Per partition, (k, t, v) with event time rising but up to 2 s out of order (inside the
    3 s watermark delay, so no row is late at any parallelism or split)."""
    out = []
    for _ in range(PARTITIONS):
        t, rows = T0, []
        for _ in range(per_partition):
            t += rng.randrange(0, 400)
            jitter = rng.randrange(0, 2_000) if rng.random() < 0.2 else 0
            v = rng.randrange(100) if rng.random() < 0.95 else None
            rows.append((rng.choice(KEYS), t - jitter, v))
        out.append(rows)
    return out


def produce(sh: StreamHouse, rng: random.Random, parts: list[list[tuple]]) -> None:
    """Each partition's rows in random chunks (one produce each: batches of random sizes)."""
    for partition, rows in enumerate(parts):
        i = 0
        while i < len(rows):
            n = rng.randrange(1, 120)
            chunk = rows[i : i + n]
            sh.produce(
                "ev",
                [{"k": k, "t": t, "v": v} for k, t, v in chunk],
                partition=partition,
            )
            i += n


def flat(parts: list[list[tuple]]) -> list[tuple]:
    return [row for rows in parts for row in rows]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.sql"
    path.write_text(text)
    return path


def started_tumble(
    sh: StreamHouse, tmp_path: Path, rng: random.Random, per_partition: int, batch: int
) -> tuple[list[list[tuple]], Any]:
    """Events produced, and the windowed query over them (TUMBLE 10 s, sink ``out``) started
    at parallelism 2."""
    parts = events(rng, per_partition)
    produce(sh, rng, parts)
    text = WINDOWED.format(batch=batch, sink="out", window=WINDOWS["tumble"][0])
    return parts, sh.start(write(tmp_path, "agg", text), parallelism=2)


@pytest.mark.parametrize(
    ("parallelism", "window"), [(1, "tumble"), (2, "hop"), (3, "tumble"), (2, "cumulate")]
)
def test_windowed_count_equals_duckdb_at_any_parallelism(
    sh: StreamHouse, tmp_path: Path, parallelism: int, window: str
) -> None:
    rng = random.Random(f"{parallelism}{window}")
    parts = events(rng, 500)
    produce(sh, rng, parts)
    spec, size, slide = WINDOWS[window]
    batch = rng.choice([37, 160, 5_000])
    path = write(tmp_path, "agg", WINDOWED.format(batch=batch, sink="out", window=spec))
    status = run_to_end(sh, path, parallelism)
    expected = oracle(flat(parts), window, size, slide)
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == expected
    assert status["rows_in"] == PARTITIONS * 500
    assert status["late_rows"] == 0
    assert status["rows_out"] == len(expected)
    if parallelism > 1:
        assert status["parallelism"] == parallelism
        # task i wrote sink partition i, and every task wrote some of the windows
        assert sh.log.topic("out").partitions == parallelism
        offsets = sh.log.metadata.partition_offsets("out")
        assert all(offsets[p].high_watermark > 0 for p in range(parallelism))
        assert sum(t["rows_out"] for t in status["tasks"]) == len(expected)


def test_updating_group_by_at_parallelism_2(sh: StreamHouse, tmp_path: Path) -> None:
    rng = random.Random(7)
    sh.create_topic("nums", partitions=4)
    rows = [{"id": rng.randrange(300), "x": rng.randrange(-50, 50)} for _ in range(4_000)]
    for i in range(0, len(rows), 250):
        sh.produce("nums", rows[i : i + 250], partition=(i // 250) % 4)
    sh.produce("nums", [b"not json"], partition=3)
    path = write(
        tmp_path,
        "upd",
        "SET 'max-batch-records' = '300';\n"
        "INSERT INTO totals SELECT id, COUNT(*) AS n, SUM(x) AS s, MAX(x) AS hi"
        " FROM nums GROUP BY id",
    )
    status = run_to_end(sh, path, 2)
    assert status["rejected_rows"] == 1
    dead = sh.fetch("upd.dlq")
    assert dead["value"].to_pylist() == [b"not json"]
    latest = {}
    for record in topic_rows(sh, "totals"):  # by partition, then offset: upserts in order
        latest[record["id"]] = (record["id"], record["n"], record["s"], record["hi"])
    con = duckdb.connect()
    con.register("tbl", pa.Table.from_pylist(rows))
    expected = con.execute("SELECT id, COUNT(*), SUM(x), MAX(x) FROM tbl GROUP BY id").fetchall()
    assert sorted(latest.values()) == sorted(expected)
    # each key's upserts all come from one task: one sink partition per key
    by_key: dict[int, set[int]] = {}
    table = sh.fetch("totals")
    for partition, value in zip(
        table["partition"].to_pylist(), table["value"].to_pylist(), strict=True
    ):
        by_key.setdefault(json.loads(value)["id"], set()).add(partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert {p for ps in by_key.values() for p in ps} == {0, 1}


def test_exchange_records_larger_than_the_topic_limit(tmp_path: Path) -> None:
    """An exchange record carries a whole micro-batch's rows for one task: with the broker's
    limit at 64 KiB (8 MiB by default; Nexmark q16's 200,000 bids at parallelism 2 came to 15
    MB), rows of about 1 MB per task still cross, in a query made before and after the exchange
    topics had their own limit (then raised)."""
    rng = random.Random(29)
    with streamhouse.connect(tmp_path / "data", linger_ms=1, max_message_bytes=65_536) as sh:
        sh.create_topic("wide", partitions=2)
        rows = [{"id": rng.randrange(500), "pad": "x" * 200} for _ in range(8_000)]
        for i in range(0, len(rows), 200):
            sh.produce("wide", rows[i : i + 200], partition=(i // 200) % 2)
        path = write(
            tmp_path,
            "wide_q",
            "SET 'max-batch-records' = '10000';\n"
            "INSERT INTO wide_n SELECT id, COUNT(*) AS n, MAX(pad) AS p FROM wide GROUP BY id",
        )
        sh.create_topic("wide_q.exchange", partitions=2)  # as before: the broker's limit
        status = run_to_end(sh, path, 2)
        assert status["rows_in"] == len(rows)
        latest = {r["id"]: r["n"] for r in topic_rows(sh, "wide_n")}
        expected: dict[int, int] = {}
        for row in rows:
            expected[row["id"]] = expected.get(row["id"], 0) + 1
        assert latest == expected
        info = sh.log.get_topic("wide_q.exchange")
        assert sh.log.max_message_bytes(info) == 1 << 30


UPDATING = (
    STREAM
    + """SET 'max-batch-records' = '{batch}';
INSERT INTO totals SELECT k, COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s, MAX(v) AS hi
FROM ev GROUP BY k HAVING COUNT(*) % 4 <> 1
"""
)


def test_updating_group_by_rescaled_2_to_3_to_1(sh: StreamHouse, tmp_path: Path) -> None:
    """An updating GROUP BY (COUNT DISTINCT; HAVING drops and brings back keys: tombstones)
    started over a third of the input at parallelism 2 and stopped, restarted at 3 over the
    next third (a task killed -9 before the stop), then at 1 to the end: its groups move by
    key group, each key's upserts stay in one sink partition, no record is read twice, and the
    latest row per key equals DuckDB's answer."""
    rng = random.Random(29)
    parts = events(rng, 300)
    path = write(tmp_path, "upd", UPDATING.format(batch=53))
    for stage, parallelism in enumerate((2, 3)):
        produce(sh, rng, [rows[stage * 100 : (stage + 1) * 100] for rows in parts])
        query = sh.start(path, parallelism=parallelism)
        read = PARTITIONS * 100 * (stage + 1)
        wait_for(lambda q=query, n=read: q.status()["rows_in"] >= n)
        if parallelism == 3:
            query.processes[2].kill()
        query.stop()
    produce(sh, rng, [rows[200:] for rows in parts])
    status = run_to_end(sh, path, 1)
    assert status["rows_in"] == PARTITIONS * 300  # none read twice, none skipped
    assert [p.name for p in (sh.settings.data_dir / "queries").glob("upd.p*")] == ["upd.p1"]
    latest: dict[bytes, dict | None] = {}
    partitions: dict[bytes, set[int]] = {}
    table = sh.fetch("totals")
    for partition, key, value in zip(
        table["partition"].to_pylist(),
        table["key"].to_pylist(),
        table["value"].to_pylist(),
        strict=True,
    ):
        latest[key] = json.loads(value) if value is not None else None
        partitions.setdefault(key, set()).add(partition)
    assert sh.log.topic("totals").partitions == 2  # created at 2, never grown
    assert all(len(p) == 1 for p in partitions.values())  # a key's upserts in one partition
    assert {p for ps in partitions.values() for p in ps} == {0, 1}
    assert any(v is None for v in latest.values())  # HAVING dropped some key
    columns = ["k", "n", "nd", "s", "hi"]
    got = rows_of([v for v in latest.values() if v is not None], columns)
    con = duckdb.connect()
    k, t, v = zip(*flat(parts), strict=True)
    con.register("ev", pa.table({"k": k, "t": t, "v": v}))
    expected = con.execute(
        "SELECT k, COUNT(*), COUNT(DISTINCT v), SUM(v), MAX(v) FROM ev GROUP BY k"
        " HAVING COUNT(*) % 4 <> 1"
    ).fetchall()
    assert got == rows_of([dict(zip(columns, row, strict=True)) for row in expected], columns)


def test_runs_to_the_end_one_after_another_take_all_their_input(
    sh: StreamHouse, tmp_path: Path
) -> None:
    """An updating GROUP BY run to the end at parallelism 3, four times with more input before
    each: every run takes all of it (the watermark is final from the start of a later run,
    so a task no longer ends on it alone: it waits for every task's producers to finish and
    takes every exchange record they appended)."""
    rng = random.Random(31)
    parts = events(rng, 200)
    path = write(tmp_path, "upd", UPDATING.format(batch=37))
    con = duckdb.connect()
    columns = ["k", "n", "nd", "s", "hi"]
    for stage in range(4):
        produce(sh, rng, [rows[stage * 50 : (stage + 1) * 50] for rows in parts])
        status = run_to_end(sh, path, 3)
        assert status["rows_in"] == PARTITIONS * 50 * (stage + 1)
        latest: dict[bytes, dict | None] = {}
        table = sh.fetch("totals")
        for key, value in zip(table["key"].to_pylist(), table["value"].to_pylist(), strict=True):
            latest[key] = json.loads(value) if value is not None else None
        got = rows_of([v for v in latest.values() if v is not None], columns)
        k, t, v = zip(*[r for rows in parts for r in rows[: (stage + 1) * 50]], strict=True)
        con.register("ev", pa.table({"k": k, "t": t, "v": v}))
        expected = con.execute(
            "SELECT k, COUNT(*), COUNT(DISTINCT v), SUM(v), MAX(v) FROM ev GROUP BY k"
            " HAVING COUNT(*) % 4 <> 1"
        ).fetchall()
        want = rows_of([dict(zip(columns, row, strict=True)) for row in expected], columns)
        assert got == want, f"run {stage + 1}"


def test_stateless_filter_through_the_command_line(sh: StreamHouse, tmp_path: Path) -> None:
    rng = random.Random(3)
    parts = events(rng, 400)
    produce(sh, rng, parts)
    path = write(
        tmp_path,
        "flt",
        STREAM
        + "SET 'max-batch-records' = '90';\nINSERT INTO big SELECT k, v FROM ev WHERE v > 60",
    )
    data_dir = sh.settings.data_dir
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamhouse",
            "run",
            str(path),
            "--until-end",
            "--parallelism",
            "2",
            "--format",
            "json",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    expected = sorted((k, v) for k, _, v in flat(parts) if v is not None and v > 60)
    got = sorted((r["k"], r["v"]) for r in topic_rows(sh, "big"))
    assert got == expected
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert sorted((r["k"], r["v"]) for r in printed) == expected  # the tasks' rows, as at 1
    assert f"{PARTITIONS * 400} rows in, {len(expected)} rows out" in result.stderr
    # and each task's share: rows, rate, watermark, state size, offsets (2 tasks, 3 partitions)
    tasks = re.findall(
        r"task (\d): (\d+) rows in, \d+ rows out, ([\d.]+) rows/s; watermark (.+?); state (\d+)"
        r" bytes; memory ([\d,.]+) MiB resident, peak ([\d,.]+) MiB; pid (\d+); offsets (.*)",
        result.stderr,
    )
    assert [t[0] for t in tasks] == ["0", "1"]
    assert sum(int(t[1]) for t in tasks) == PARTITIONS * 400
    assert all(float(t[2]) > 0 and int(t[4]) > 0 for t in tasks)
    assert tasks[0][3] == tasks[1][3] == "end of input"
    assert [json.loads(t[8]) for t in tasks] == [{"0": 400, "2": 400}, {"1": 400}]
    # each task process's memory at its end, and at its peak (it imported Arrow: tens of MiB)
    mib = [(float(t[5].replace(",", "")), float(t[6].replace(",", ""))) for t in tasks]
    assert all(20 < now <= peak for now, peak in mib), mib
    assert len({t[7] for t in tasks}) == 2  # two processes
    total = re.search(r"tasks' memory: ([\d,.]+) MiB resident, peak ([\d,.]+) MiB", result.stderr)
    assert total is not None
    assert float(total[2].replace(",", "")) == pytest.approx(sum(p for _, p in mib), abs=0.2)


def test_results_reach_the_caller_at_parallelism_2(sh: StreamHouse, tmp_path: Path) -> None:
    """A SELECT's ``results()`` and ``on_results`` of an INSERT at parallelism 2 get every
    row the tasks produce, with the types of parallelism 1, each once; the SELECT restarted at
    parallelism 3 (rescaled) returns only the rows produced since."""
    rng = random.Random(23)
    parts = events(rng, 200)
    produce(sh, rng, parts)
    everything = [list(rows) for rows in parts]
    selected = STREAM + "SELECT k, t, v FROM ev WHERE v > 60"
    for parallelism in (2, 3):  # then rescaled: only the rows produced since
        query = sh.start(selected, parallelism=parallelism, name="sel")
        expected = sorted((k, t, v) for k, t, v in flat(parts) if v is not None and v > 60)
        got: list[tuple] = []
        try:
            for batch in query.results(timeout=30):
                assert batch.schema.field("t").type == pa.timestamp("ms")
                got += [(r["k"], to_ms(r["t"]), r["v"]) for r in batch.to_pylist()]
                if len(got) >= len(expected):
                    break
        finally:
            query.stop()
        assert sorted(got) == expected
        later = 100_000 * parallelism  # after the rows before, in event time too
        parts = [[(k, t + later, v) for k, t, v in rows] for rows in events(rng, 30)]
        produce(sh, rng, parts)
        everything = [a + b for a, b in zip(everything, parts, strict=True)]

    delivered: list[pa.Table] = []
    path = write(
        tmp_path, "agg", WINDOWED.format(batch=97, sink="out", window=WINDOWS["tumble"][0])
    )
    query = start_query(
        sh.engine,
        path,
        state_root=sh.settings.data_dir / "queries",
        options={"parallelism": 2},
        on_results=delivered.append,
        start=False,
    )
    query.run_until_caught_up(final=True)
    expected = oracle(flat(everything), "tumble", 10_000)
    assert rows_of(pa.concat_tables(delivered).to_pylist(), COLUMNS) == expected
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == expected


def test_stop_kill_9_and_restart_give_every_window_once(sh: StreamHouse, tmp_path: Path) -> None:
    rng = random.Random(11)
    parts = events(rng, 900)
    path = write(tmp_path, "agg", WINDOWED.format(batch=157, sink="out", window=WINDOWS["hop"][0]))
    thirds = [[rows[i * 300 : (i + 1) * 300] for rows in parts] for i in range(3)]

    # 1. runs in the background over the first third; task 0 killed -9 at once is restarted by
    #    the launcher from its checkpoint; then stopped cleanly (SIGTERM)
    produce(sh, rng, thirds[0])
    query = sh.start(path, parallelism=2)
    time.sleep(rng.uniform(0, 0.3))
    killed = query.processes[0].pid
    query.processes[0].kill()
    wait_for(lambda: query.status()["restarts"] == 1)
    assert query.processes[0].pid != killed
    wait_for(lambda: query.status()["rows_in"] >= PARTITIONS * 300)
    query.stop()
    first = len(topic_rows(sh, "out"))
    assert first > 0

    # 2. the second third produced in 3 slices; after each, the query resumed and its tasks
    #    killed -9 one after the other at random moments (mid-batch, or idle)
    for round_ in range(3):
        produce(sh, rng, [rows[round_ * 100 : (round_ + 1) * 100] for rows in thirds[1]])
        query = sh.start(path, parallelism=2)
        read = PARTITIONS * (300 + round_ * 100)
        wait_for(lambda read=read: query.status()["rows_in"] > read)  # noqa: B023
        victim = rng.randrange(2)
        time.sleep(rng.uniform(0, 0.2))
        assert query.processes[victim].poll() is None  # killed while it runs
        query.processes[victim].kill()
        time.sleep(rng.uniform(0, 0.3))
        query.processes[1 - victim].kill()
        query.stop()

    # 3. resumed to the end with the last third
    produce(sh, rng, thirds[2])
    status = run_to_end(sh, path, 2)
    assert status["watermark"] == "end of input"
    expected = oracle(flat(parts), "hop", 10_000, 5_000)
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == expected  # none lost, none twice


def test_started_query_runs_until_caught_up_then_on(sh: StreamHouse, tmp_path: Path) -> None:
    """``sh.start(..., parallelism=2)`` then ``run_until_caught_up``, as at parallelism 1: the
    running tasks stop (checkpointed) for the run to the end (two processes of one task failed
    on its state's lock before), every window once, and the tasks run on after it."""
    rng = random.Random(16)
    parts, query = started_tumble(sh, tmp_path, rng, 300, 113)
    try:
        time.sleep(rng.uniform(0, 0.3))  # the tasks set up, or mid-way
        query.run_until_caught_up(final=True)
        assert query.error is None
        expected = oracle(flat(parts), "tumble", 10_000)
        assert rows_of(topic_rows(sh, "out"), COLUMNS) == expected
        assert query.status()["state"] == "running"
        assert all(process.poll() is None for process in query.processes)
    finally:
        query.stop()
    assert query.status()["state"] == "stopped"


def test_explain_and_refusals(sh: StreamHouse, tmp_path: Path) -> None:
    sh.sql(STREAM.split(";")[0])
    sh.sql("SET 'parallelism' = '3'")
    plan = "\n".join(
        sh.sql(
            "EXPLAIN INSERT INTO out SELECT k, window_start, COUNT(*) AS n FROM ev"
            " GROUP BY k, TUMBLE(t, INTERVAL '10' SECOND)"
        )
        .to_arrow_table()["plan"]
        .to_pylist()
    )
    assert "Parallel  3 tasks (processes)" in plan
    assert "Exchange  topic <query>.exchange (3 partitions, Arrow IPC records)" in plan
    assert "by key group of (k), 128 key groups" in plan
    assert "partial aggregates per key and pane are exchanged, not rows" in plan
    assert "WindowAggregate  TUMBLE(t, size=10000ms)" in plan

    with pytest.raises(ConfigError, match="parallelism must be an integer from 1 to 128"):
        sh.start("SET 'parallelism' = '0';\nINSERT INTO o SELECT k FROM ev", name="zero")
    with pytest.raises(SqlError, match="'checkpoint.object-store' is not supported at paral"):
        sh.start(
            "SET 'checkpoint.object-store' = 'true';\nINSERT INTO o SELECT k, window_start,"
            " COUNT(*) AS n FROM ev GROUP BY k, TUMBLE(t, INTERVAL '10' SECOND)",
            name="uploaded",
            parallelism=2,
        )
    with pytest.raises(SqlError, match=r"parallelism > 1 does not run OverAggregate \(an OVER"):
        sh.start(
            "INSERT INTO o SELECT k, SUM(v) OVER (ORDER BY t"
            " ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM ev",
            parallelism=2,
        )
    # Nexmark q5's shape: two window aggregates joined on their (renamed) window bounds only;
    # a bound is no column of the stream to route its rows by: routed by window (a key of
    # the stream's rows failed in the tasks before)
    counts = (
        "SELECT k, COUNT(*) AS num, window_start AS starttime, window_end AS endtime"
        " FROM TABLE(HOP(TABLE ev, DESCRIPTOR(t), INTERVAL '2' SECOND, INTERVAL '10' SECOND))"
        " GROUP BY k, window_start, window_end"
    )
    hot = "\n".join(
        sh.sql(
            f"EXPLAIN INSERT INTO o SELECT hot.k, hot.num FROM ({counts}) AS hot JOIN"
            f" (SELECT MAX(c.num) AS maxn, c.starttime, c.endtime FROM ({counts}) AS c"
            " GROUP BY c.starttime, c.endtime) AS top ON hot.starttime = top.starttime"
            " AND hot.endtime = top.endtime AND hot.num >= top.maxn"
        )
        .to_arrow_table()["plan"]
        .to_pylist()
    )
    assert "the rows of ev by window: to every task owning a window the row falls in" in hot
    assert "then per-window query over the rows of the windows the task owns" in hot

    # Nexmark q7's shape: the stream joined to its window aggregate by a bound on time, routed
    # by window, each row also to the windows it can join
    maxima = (
        "SELECT MAX(v) AS top, window_end AS t FROM TABLE({tvf}(TABLE ev, DESCRIPTOR(t),"
        " INTERVAL '10' SECOND{step})) GROUP BY window_start, window_end"
    )
    tumble = maxima.format(tvf="TUMBLE", step="")

    def q7(join: str = "JOIN", window: str = tumble, bound: str = "AND e.t <= m.t") -> str:
        return (
            f"INSERT INTO o SELECT e.k, e.v, e.t FROM ev e {join} ({window}) AS m"
            f" ON e.v = m.top AND e.t >= m.t - INTERVAL '10' SECOND {bound}"
        )

    highest = "\n".join(sh.sql(f"EXPLAIN {q7()}").to_arrow_table()["plan"].to_pylist())
    assert "and to every task owning a window starting -10000 to 0 ms from the row's" in highest
    assert "then StreamJoin over a window aggregate over the rows of the windows" in highest
    refused = {
        "it is an outer join of a window aggregate": q7(join="LEFT JOIN"),
        "it reads a subquery that is not a TUMBLE or HOP aggregate": q7(
            window=maxima.format(tvf="CUMULATE", step=", INTERVAL '20' SECOND")
        ),
        "its condition bounds the time of ev by no window column": q7(bound=""),
    }
    for why, text in refused.items():
        with pytest.raises(SqlError, match=f"StreamJoin \\(a stream join\\) yet: {why}"):
            sh.start(text, parallelism=2)


def test_an_idle_task_does_not_hold_the_watermark_back(sh: StreamHouse, tmp_path: Path) -> None:
    """Partition 2 (all of task 2's input at parallelism 3) gets one early record and then
    nothing while partitions 0 and 1 go on: once it is idle, the other tasks' windows close
    without it, as at parallelism 1."""
    rng = random.Random(13)
    parts = events(rng, 300)
    parts[2] = parts[2][:1]
    text = WINDOWED.format(batch=1000, sink="out", window=WINDOWS["tumble"][0])
    path = write(tmp_path, "idle", text.replace("'1 h'", "'1 s'"))
    produce(sh, rng, [rows[:20] for rows in parts])
    query = sh.start(path, parallelism=3)
    try:
        for i in range(20, 300, 10):  # partitions 0 and 1 stay active (a chunk every ~0.1 s,
            time.sleep(0.1)  # well inside the idle timeout, also under load), 2 goes idle
            produce(sh, rng, [parts[0][i : i + 10], parts[1][i : i + 10], []])
        # the watermark without partition 2: the lowest of partitions 0 and 1, minus the delay
        watermark = min(max(t for _, t, _ in rows) for rows in parts[:2]) - 3_000
        closed = [r for r in oracle(flat(parts), "tumble", 10_000) if r[2] <= watermark]
        assert len(closed) > 20
        wait_for(lambda: len(topic_rows(sh, "out")) >= len(closed), timeout=30)
        assert query.status()["late_rows"] == 0
    finally:
        query.stop()
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == closed


def test_status_reports_each_task_process_memory(sh: StreamHouse, tmp_path: Path) -> None:
    """A running query at parallelism 2: each task's resident memory now and at its peak, read
    from the task process itself (a child of the task launcher this process started), and
    their sums; after a stop, the memory each task last reported."""
    rng = random.Random(37)
    parts, query = started_tumble(sh, tmp_path, rng, 200, 50)
    try:
        wait_for(lambda: query.status()["rows_in"] >= PARTITIONS * 200)
        status = query.status()
        launcher = Zygote.get().process.pid
        assert _parent(launcher) == os.getpid()
        pids = [task["pid"] for task in status["tasks"]]
        assert pids == [process.pid for process in query.processes]
        for task, pid in zip(status["tasks"], pids, strict=True):
            assert _parent(pid) == launcher  # a task process, forked by the launcher
            now, peak = resident_memory(pid) or (0, 0)
            assert 20 * 2**20 < task["rss_bytes"] <= task["peak_rss_bytes"] <= peak, task
            assert now > 0
        assert status["rss_bytes"] == sum(t["rss_bytes"] for t in status["tasks"])
        assert status["peak_rss_bytes"] == sum(t["peak_rss_bytes"] for t in status["tasks"])
    finally:
        query.stop()
    stopped = query.status()
    assert stopped["state"] == "stopped"
    assert all(
        0 < t["rss_bytes"] <= t["peak_rss_bytes"] and t["pid"] in pids for t in stopped["tasks"]
    )


def _parent(pid: int) -> int:
    """The parent process id of ``pid`` (from ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no parent in /proc/{pid}/status")


@pytest.mark.parametrize("width", [1, 1_000, 10_000])
def test_window_tasks_hash_each_distinct_start_as_every_start(width: int) -> None:
    """Hashing each distinct window start once (by pane index) gives every start the key group
    its own hash gives: state kept per key group stays where rows are routed."""
    import numpy as np

    from streamhouse.runtime.key_groups import MAX_PARALLELISM, _integer_groups, window_tasks

    rng = np.random.default_rng(16)
    for spread in (5, 50_000):  # few windows per batch (the table), or more than rows (hashed)
        starts = (rng.integers(-spread, spread, (400, 3)) * width).astype(np.int64)
        for parallelism in (2, 3, 7):
            groups = _integer_groups(pa.table({"s": starts.ravel()}), ["s"])
            expected = (groups * parallelism // MAX_PARALLELISM).reshape(starts.shape)
            assert (window_tasks(starts, parallelism, width) == expected).all()
            assert (
                window_tasks(starts + 1, parallelism, width)
                == window_tasks(starts + 1, parallelism)
            ).all()  # not multiples of the width: hashed one by one


def test_a_task_process_keeps_the_launchers_settings_with_a_smaller_log_cache(
    tmp_path: Path,
) -> None:
    """A task's log caches at most TASK_CACHE_BYTES of segment objects (it reads its sources
    and exchange partition once: the 256 MiB default, full in every task, held 220-240 MiB per
    task of 10M open SESSION keys); a smaller configured cache is kept, and nothing else
    changes."""
    for cache_bytes, expected in [(256 << 20, TASK_CACHE_BYTES), (1 << 20, 1 << 20)]:
        settings = Settings(data_dir=tmp_path / "data", cache_bytes=cache_bytes, linger_ms=3.0)
        raw = {  # as the launcher sends them (ParallelQuery._spec)
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(settings).items()
        }
        got = task_settings(json.loads(json.dumps(raw)))
        assert got.cache_bytes == expected
        assert dataclasses.replace(got, cache_bytes=cache_bytes) == settings
