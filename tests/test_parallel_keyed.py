"""Keyed continuous queries at parallelism N whose source rows cross tasks by key group
(:mod:`streamhouse.runtime.routing`): stream joins (interval, regular outer), window joins,
joins over an updating GROUP BY (ChangelogJoin), SESSION windows, Top-N and deduplication.

Each runs over two streams produced in random chunks (``ev`` in 3 partitions, ``ev2`` in 2)
at parallelism 2 (and the join also at 1 and 3) and must equal DuckDB's batch answer over the
same rows; the interval join also with its task processes killed -9 mid-run and restarted
(every output row exactly once); a windowed GROUP BY, a SESSION window, the interval join, a
window join, a LEFT JOIN, a Top-N, a deduplication, a join over an updating GROUP BY, OVER
aggregations (a ROWS frame, running totals) and a temporal join rescaled 2 -> 3 -> 1 mid-run
(a stateless SELECT rescaled: ``test_parallel.py``). Operators that do not run in parallel yet, and statement sets,
are refused naming what is not parallel.

The queries of a test run side by side (threads of the test, each query's tasks processes of
their own): a task waiting on its log or disk leaves the cores to the others, which keeps the
module's wall time down.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from parallel_cases import freeze, run_to_end, wait_for
from window_cases import oracle, rows_of, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.runtime.launch import start_query
from streamhouse.runtime.rescale import RESCALED, finish

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
KEYS = [f"user-{i}" for i in range(17)]
PARTITIONS = {"ev": 3, "ev2": 2}

STREAMS = """CREATE STREAM IF NOT EXISTS ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '3' SECOND) WITH (topic = 'ev', format = 'json');
CREATE STREAM IF NOT EXISTS ev2 (k STRING, t TIMESTAMP(3), w BIGINT,
    WATERMARK FOR t AS t - INTERVAL '3' SECOND) WITH (topic = 'ev2', format = 'json');
SET 'poll-interval' = '20 ms';
SET 'idle-timeout' = '1 h';
SET 'max-batch-records' = '{batch}';
"""

Rows = dict[str, list[list[tuple[str, int, int | None]]]]


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        for topic, partitions in PARTITIONS.items():
            conn.create_topic(topic, partitions=partitions)
        yield conn


def generate(rng: random.Random, per_partition: int) -> Rows:
    """Per stream and partition, (k, t, v) with event time rising but up to 2 s out of order
    (inside the 3 s watermark delay: no row is late at any parallelism or split)."""
    out: Rows = {}
    for stream, partitions in PARTITIONS.items():
        out[stream] = []
        for _ in range(partitions):
            t, rows = T0, []
            for _ in range(per_partition):
                t += rng.randrange(0, 600)
                jitter = rng.randrange(0, 2_000) if rng.random() < 0.2 else 0
                v = rng.randrange(100) if rng.random() < 0.95 else None
                rows.append((rng.choice(KEYS), t - jitter, v))
            out[stream].append(rows)
    return out


def unique_times(rows: Rows) -> None:
    """Drop the rows of a stream whose key already has a row at that event time."""
    for stream, parts in rows.items():
        seen: set[tuple[str, int]] = set()
        rows[stream] = [
            [r for r in part if (r[0], r[1]) not in seen and not seen.add((r[0], r[1]))]
            for part in parts
        ]


def produce(sh: StreamHouse, rng: random.Random, rows: Rows, start: int = 0, end: int = 0) -> None:
    """Rows ``[start, end)`` of each partition (all: ``end`` 0) in random chunks."""
    for stream, parts in rows.items():
        column = "v" if stream == "ev" else "w"
        for partition, part in enumerate(parts):
            part = part[start : end or len(part)]
            i = 0
            while i < len(part):
                n = rng.randrange(1, 90)
                sh.produce(
                    stream,
                    [{"k": k, "t": t, column: v} for k, t, v in part[i : i + n]],
                    partition=partition,
                )
                i += n


def duck(rows: Rows, sql: str) -> list[tuple]:
    """``sql`` over ``ev(k, t, v)`` and ``ev2(k, t, w)`` (``t`` in ms) in DuckDB."""
    con = duckdb.connect()
    for stream, parts in rows.items():
        flat = [r for part in parts for r in part]
        con.register(
            stream,
            pa.table(
                {
                    "k": pa.array([k for k, _, _ in flat], pa.string()),
                    "t": pa.array([t for _, t, _ in flat], pa.int64()),
                    "v" if stream == "ev" else "w": pa.array([v for _, _, v in flat], pa.int64()),
                }
            ),
        )
    return sorted(con.execute(sql).fetchall(), key=repr)


def appended(sh: StreamHouse, topic: str, columns: list[str], times: set[str]) -> list[tuple]:
    """Every record of ``topic``, ``times`` columns as epoch ms."""
    records = topic_rows(sh, topic)
    for record in records:
        for column in times:
            record[column] = to_ms(record[column]) if record[column] is not None else None
    return rows_of(records, columns)


def upserted(sh: StreamHouse, topic: str, columns: list[str], times: set[str]) -> list[tuple]:
    """The latest row of every record key of ``topic`` (a tombstone drops it)."""
    table = sh.fetch(topic)
    latest: dict[tuple[int, bytes], bytes | None] = {}
    for partition, key, value in zip(
        table["partition"].to_pylist(),
        table["key"].to_pylist(),
        table["value"].to_pylist(),
        strict=True,
    ):
        latest[(partition, key)] = value
    keys = [k for _, k in latest]
    assert len(keys) == len(set(keys)), "a record key written by two tasks"

    records = [json.loads(v) for v in latest.values() if v is not None]
    for record in records:
        for column in times:
            record[column] = to_ms(record[column]) if record[column] is not None else None
    return rows_of(records, columns)


def write(tmp_path: Path, name: str, text: str, batch: int) -> Path:
    path = tmp_path / f"{name}.sql"
    path.write_text(STREAMS.format(batch=batch) + text)
    return path


def write_all(tmp_path: Path, runs: dict[str, tuple[Any, ...]]) -> dict[str, Path]:
    """Query files ``{name: (text, batch, ...)}`` (``text`` an INSERT INTO ``{sink}``, written
    into a sink of the query's name), their paths by name."""
    return {
        name: write(tmp_path, name, text.format(sink=name), batch)
        for name, (text, batch, *_) in runs.items()
    }


def start_all(
    pool: ThreadPoolExecutor, sh: StreamHouse, paths: dict[str, Path], parallelism: int
) -> dict[str, Any]:
    """The query files ``paths`` started side by side at ``parallelism``, by name."""
    starts = [pool.submit(sh.start, path, parallelism=parallelism) for path in paths.values()]
    return dict(zip(paths, [future.result() for future in starts], strict=True))


def declare(sh: StreamHouse) -> None:
    """The files' streams, declared before queries start side by side (each file's CREATE
    STREAM IF NOT EXISTS checks, then creates: two at once would both create)."""
    for statement in STREAMS.split(";")[:2]:
        sh.sql(statement)


def run_all(
    sh: StreamHouse, tmp_path: Path, runs: dict[str, tuple[str, int, int]]
) -> dict[str, dict[str, Any]]:
    """Query files ``{name: (text, batch, parallelism)}`` (``text`` an INSERT INTO ``{sink}``,
    written into a sink of the query's name) run to the end side by side (a task waiting on
    its log or its disk leaves the cores to the others); their statuses by name."""
    paths = write_all(tmp_path, runs)
    declare(sh)
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {name: pool.submit(run_to_end, sh, paths[name], runs[name][2]) for name in runs}
        return {name: future.result() for name, future in futures.items()}


def at_1_and_2(sh: StreamHouse, tmp_path: Path, cases: dict[str, tuple[str, int]]) -> None:
    """Each case ``{name: (text, batch)}`` run to the end at parallelism 1 and 2, all side by
    side, as queries (and into sinks) ``<name>1`` and ``<name>2``."""
    runs = {
        f"{name}{parallelism}": (text, batch, parallelism)
        for name, (text, batch) in cases.items()
        for parallelism in (1, 2)
    }
    for status in run_all(sh, tmp_path, runs).values():
        assert status["late_rows"] == 0  # none is: the rows are inside the watermark's delay


def sinks_of(name: str) -> list[str]:
    return [f"{name}1", f"{name}2"]


INTERVAL_JOIN = """INSERT INTO joined
SELECT a.k, a.t AS at, a.v, b.t AS bt, b.w FROM ev a JOIN ev2 b
ON a.k = b.k AND a.t BETWEEN b.t - INTERVAL '2' SECOND AND b.t + INTERVAL '1' SECOND"""
INTERVAL_ORACLE = """SELECT a.k, a.t, a.v, b.t, b.w FROM ev a JOIN ev2 b
ON a.k = b.k AND a.t BETWEEN b.t - 2000 AND b.t + 1000"""
JOIN_COLUMNS = ["k", "at", "v", "bt", "w"]


def test_interval_join_at_parallelism_1_and_3_equals_duckdb(
    sh: StreamHouse, tmp_path: Path
) -> None:
    rng = random.Random(3)
    rows = generate(rng, 300)
    produce(sh, rng, rows)
    text = INTERVAL_JOIN.replace("joined", "{sink}")
    statuses = run_all(sh, tmp_path, {"ij1": (text, 53, 1), "ij3": (text, 400, 3)})
    expected = duck(rows, INTERVAL_ORACLE)
    assert len(expected) > 200
    for name, status in statuses.items():
        assert appended(sh, name, JOIN_COLUMNS, {"at", "bt"}) == expected
        assert status["rows_in"] == 300 * 5
        assert status["rows_out"] == len(expected)
    assert all(t["rows_out"] > 0 for t in statuses["ij3"]["tasks"])  # each task joined keys


def test_interval_join_kill_9_and_restart_exactly_once(sh: StreamHouse, tmp_path: Path) -> None:
    """Tasks killed -9 mid-run (restarted by the launcher from their checkpoints), the query
    stopped and resumed over more input, a task killed again: every joined row once."""
    rng = random.Random(21)
    rows = generate(rng, 600)
    path = write(tmp_path, "ij", INTERVAL_JOIN, 97)
    produce(sh, rng, rows, 0, 300)
    query = sh.start(path, parallelism=2)
    wait_for(lambda: query.status()["rows_in"] > 200)
    killed = query.processes[1].pid
    query.processes[1].kill()  # mid-run: its producing and consuming sides at once
    wait_for(lambda: query.status()["restarts"] == 1)
    assert query.processes[1].pid != killed
    wait_for(lambda: query.status()["rows_in"] >= 300 * 5)
    query.stop()
    assert topic_rows(sh, "joined")

    produce(sh, rng, rows, 300, 450)
    query = sh.start(path, parallelism=2)
    wait_for(lambda: query.status()["rows_in"] > 300 * 5)
    time.sleep(rng.uniform(0, 0.2))
    query.processes[0].kill()
    query.stop()

    produce(sh, rng, rows, 450, 600)
    status = run_to_end(sh, path, 2)
    assert status["watermark"] == "end of input"
    expected = duck(rows, INTERVAL_ORACLE)
    assert appended(sh, "joined", JOIN_COLUMNS, {"at", "bt"}) == expected  # none lost, none twice


WINDOWED_COUNT = """INSERT INTO counted SELECT k, window_start, COUNT(*) AS n, SUM(v) AS s
FROM ev GROUP BY k, TUMBLE(t, INTERVAL '5' SECOND)"""
SESSIONS = """INSERT INTO sessions SELECT k, window_start, window_end, COUNT(*) AS n, SUM(w) AS s
FROM ev2 GROUP BY k, SESSION(t, INTERVAL '2' SECOND)"""
WINDOW_JOIN = """INSERT INTO {sink} SELECT L.k, L.window_start, L.v, R.w
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(t), INTERVAL '5' SECOND)) L
JOIN TABLE(TUMBLE(TABLE ev2, DESCRIPTOR(t), INTERVAL '5' SECOND)) R
ON L.k = R.k AND L.window_start = R.window_start AND L.window_end = R.window_end"""
WINDOW_JOIN_ORACLE = """SELECT a.k, a.t - a.t % 5000, a.v, b.w FROM ev a JOIN ev2 b
ON a.k = b.k AND a.t - a.t % 5000 = b.t - b.t % 5000"""


LEFT_JOIN = """INSERT INTO {sink} SELECT a.k, a.t AS at, a.v, b.w FROM ev a LEFT JOIN ev2 b
ON a.k = b.k AND a.v = b.w"""
LEFT_JOIN_ORACLE = "SELECT a.k, a.t, a.v, b.w FROM ev a LEFT JOIN ev2 b ON a.k = b.k AND a.v = b.w"

TOP_3 = """INSERT INTO {sink} SELECT k, t, v, rn FROM (SELECT *, ROW_NUMBER() OVER
(PARTITION BY k ORDER BY v DESC, t) AS rn FROM ev) WHERE rn <= 3"""
TOP_3_ORACLE = """SELECT k, t, v, rn FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k
ORDER BY v DESC NULLS FIRST, t) AS rn FROM ev) WHERE rn <= 3"""
TOP_3_FILTERED = TOP_3.replace("WHERE rn <= 3", "WHERE rn <= 3 AND v >= 10")
TOP_3_FILTERED_ORACLE = TOP_3_ORACLE.replace("WHERE rn <= 3", "WHERE rn <= 3 AND v >= 10")
"""A Top-3 whose WHERE also filters on a column: a (key, rank) whose row it drops is
tombstoned."""
FIRST = """INSERT INTO {sink} SELECT k, t, w FROM (SELECT *, ROW_NUMBER() OVER
(PARTITION BY k ORDER BY t) AS rn FROM ev2) WHERE rn = 1"""
FIRST_ORACLE = """SELECT k, t, w FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t)
AS rn FROM ev2) WHERE rn = 1"""
COUNTS_JOINED = """INSERT INTO {sink} SELECT a.k, a.n, b.t AS bt, b.w
FROM (SELECT k, COUNT(*) AS n FROM ev GROUP BY k) a JOIN ev2 b ON a.k = b.k"""
COUNTS_JOINED_ORACLE = """SELECT a.k, a.n, b.t, b.w
FROM (SELECT k, COUNT(*) AS n FROM ev GROUP BY k) a JOIN ev2 b ON a.k = b.k"""
FIRST_JOINED = """INSERT INTO {sink} SELECT a.k, a.t AS at, a.v, b.w FROM ev a JOIN
(SELECT k, w FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t) AS rn
FROM ev2) WHERE rn = 1) b ON a.k = b.k"""
FIRST_JOINED_ORACLE = FIRST_JOINED.replace("INSERT INTO {sink} ", "").replace(" AS at", "")
"""Each ``ev`` row joined to the first ``w`` of its key in ``ev2`` (a join over a
deduplication: a task that lost the first rows would take a later one)."""
OVER_ROWS = """INSERT INTO {sink} SELECT k, t, v, SUM(v) OVER (PARTITION BY k ORDER BY t
ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM ev"""
OVER_ROWS_ORACLE = """SELECT k, t, v, SUM(v) OVER (PARTITION BY k ORDER BY t
ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM ev"""
OVER_LEAD = OVER_ROWS.replace(
    " AS s", " AS s, LEAD(v, 2, -1) OVER (PARTITION BY k ORDER BY t) AS nx"
)
OVER_LEAD_ORACLE = OVER_ROWS_ORACLE.replace(
    " FROM ev", ", LEAD(v, 2, -1) OVER (PARTITION BY k ORDER BY t) FROM ev"
)
"""The ROWS frame and a LEAD: each row waits for the two after it in its partition."""
OVER_RUNNING = """INSERT INTO {sink} SELECT k, t, w, COUNT(*) OVER (PARTITION BY k ORDER BY t)
AS c, MAX(w) OVER (PARTITION BY k ORDER BY t) AS m FROM ev2"""
OVER_RUNNING_ORACLE = """SELECT k, t, w, COUNT(*) OVER (PARTITION BY k ORDER BY t),
MAX(w) OVER (PARTITION BY k ORDER BY t) FROM ev2"""
VERSIONED = """CREATE STREAM ver (k STRING, t TIMESTAMP(3), w BIGINT,
PRIMARY KEY (k) NOT ENFORCED, WATERMARK FOR t AS t - INTERVAL '3' SECOND)
WITH (topic = 'ev2', format = 'json')"""
TEMPORAL = """INSERT INTO {sink} SELECT ev.k, ev.t, ev.v, ver.w, ver.t AS bt FROM ev
LEFT JOIN ver FOR SYSTEM_TIME AS OF ev.t ON ev.k = ver.k"""
TEMPORAL_ORACLE = """SELECT a.k, a.t, a.v, b.w, b.t FROM ev a
ASOF LEFT JOIN ev2 b ON a.k = b.k AND a.t >= b.t"""


def test_rescale_2_to_3_to_1_mid_run_equals_duckdb(
    sh: StreamHouse, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A windowed GROUP BY, a SESSION window, an interval join, a window join and a LEFT JOIN
    (updating: padded rows tombstoned when their match comes, maybe after a move), each run
    over the first third of the input at parallelism 2 and stopped with windows and join rows
    held, restarted at 3 over the second third, then at 1 to the end: their state moved by key
    group each time, every output row equals DuckDB's, none twice, and no source record read
    twice. At 2, the window join's task 1 is frozen (SIGSTOP) from the start and
    killed -9 in the stop, so task 0's exchange records to it are left to drain; at 3, the
    interval join's task 1 and the LEFT JOIN's task 2 are killed -9 just before the stop (a
    batch may be left half sent)."""
    rng = random.Random(33)
    rows = generate(rng, 240)
    runs = {
        "counted": (WINDOWED_COUNT, 41, 1),
        "sessions": (SESSIONS, 59, 1),
        "joined": (INTERVAL_JOIN, 67, 1),
        "wj": (WINDOW_JOIN, 73, 1),
        "lj": (LEFT_JOIN, 61, 1),
    }
    paths = write_all(tmp_path, runs)
    reads = {
        "counted": 240 * 3,
        "sessions": 240 * 2,
        "joined": 240 * 5,
        "wj": 240 * 5,
        "lj": 240 * 5,
    }
    caplog.set_level(logging.INFO, "streamhouse.runtime.parallel")
    declare(sh)
    with ThreadPoolExecutor(len(runs)) as pool:
        for start, end, parallelism in [(0, 80, 2), (80, 160, 3)]:
            produce(sh, rng, rows, start, end)
            running = start_all(pool, sh, paths, parallelism)
            frozen = running["wj"].processes[1] if parallelism == 2 else None
            if frozen is not None:
                freeze(frozen.pid, tmp_path / "data" / "metadata.sqlite3")
            try:
                for name, query in running.items():
                    if query.processes[1] is frozen:  # task 0's share: ev 0 and 2, ev2 0
                        share = (end - start) * 3
                        wait_for(lambda q=query, n=share: q.status()["tasks"][0]["rows_in"] >= n)
                    else:
                        total = reads[name] * end // 240
                        wait_for(lambda q=query, total=total: q.status()["rows_in"] >= total)
                    assert query.status()["parallelism"] == parallelism
                if parallelism == 3:
                    running["joined"].processes[1].kill()
                    running["lj"].processes[2].kill()
            finally:
                for query in running.values():
                    if query.processes[1] is frozen:
                        stopping = threading.Thread(target=query.stop)
                        stopping.start()  # task 0 ends (SIGTERM); frozen task 1 cannot
                        wait_for(lambda q=query: q.processes[0].poll() is not None)
                        frozen.kill()
                        stopping.join()
                    else:
                        query.stop()
    assert "query wj: draining its 2 tasks (consumers)" in caplog.text
    produce(sh, rng, rows, 160)
    for name, status in run_all(sh, tmp_path, runs).items():
        assert status["rows_in"] == reads[name]  # nothing read twice, nothing skipped
        assert status["late_rows"] == 0
        assert [p.name for p in (sh.settings.data_dir / "queries").glob(f"{name}.p*")] == [
            f"{name}.p1"
        ]
    expected = duck(
        rows,
        "SELECT k, t - t % 5000, COUNT(*), SUM(v) FROM ev GROUP BY k, t - t % 5000",
    )
    got = appended(sh, "counted", ["k", "window_start", "n", "s"], {"window_start"})
    assert got == expected
    flat = [r for part in rows["ev2"] for r in part]
    sessions = [row[:4] + row[5:6] for row in oracle(flat, "session", 2_000)]
    assert len(sessions) > 30
    columns = ["k", "window_start", "window_end", "n", "s"]
    assert rows_of(topic_rows(sh, "sessions"), columns) == sessions
    assert appended(sh, "joined", JOIN_COLUMNS, {"at", "bt"}) == duck(rows, INTERVAL_ORACLE)
    expected = duck(rows, WINDOW_JOIN_ORACLE)
    assert len(expected) > 100
    assert appended(sh, "wj", ["k", "window_start", "v", "w"], set()) == expected
    expected = duck(rows, LEFT_JOIN_ORACLE)  # padded rows tombstoned across the moves
    assert any(r[3] is None for r in expected) and any(r[3] is not None for r in expected)
    assert upserted(sh, "lj", ["k", "at", "v", "w"], {"at"}) == expected


def read_by(rows: Rows, streams: tuple[str, ...], end: int) -> int:
    """Source records of ``streams`` produced up to row ``end`` of each partition."""
    return sum(min(end, len(part)) for stream in streams for part in rows[stream])


def rescaled(
    sh: StreamHouse,
    tmp_path: Path,
    rows: Rows,
    rng: random.Random,
    runs: dict[str, tuple[str, int, tuple[str, ...]]],
    killed: dict[int, str],
) -> None:
    """Queries ``{name: (text, batch, streams read)}`` run side by side over the first third
    of each partition at parallelism 2 and stopped, over the second third at 3, then to the end
    at 1 (their state moved by key group each time); at parallelism ``p`` the last task of
    query ``killed[p]`` is killed -9 just before the stop (a batch may be left half sent, or
    exchange records untaken). Each reads every source record once, late none, and leaves its
    state at parallelism 1 only."""
    paths = write_all(tmp_path, runs)
    declare(sh)
    with ThreadPoolExecutor(len(runs)) as pool:
        for start, end, parallelism in [(0, 80, 2), (80, 160, 3)]:
            produce(sh, rng, rows, start, end)
            running = start_all(pool, sh, paths, parallelism)
            try:
                for name, query in running.items():
                    total = read_by(rows, runs[name][2], end)
                    wait_for(lambda q=query, total=total: q.status()["rows_in"] >= total)
                    assert query.status()["parallelism"] == parallelism
                running[killed[parallelism]].processes[-1].kill()
            finally:
                for query in running.values():
                    query.stop()
    produce(sh, rng, rows, 160)
    statuses = run_all(sh, tmp_path, {n: (t, b, 1) for n, (t, b, _) in runs.items()})
    for name, status in statuses.items():
        assert status["rows_in"] == read_by(rows, runs[name][2], 240)  # none twice, none skipped
        assert status["late_rows"] == 0
        assert [p.name for p in (sh.settings.data_dir / "queries").glob(f"{name}.p*")] == [
            f"{name}.p1"
        ]


def test_top_n_dedup_and_changelog_join_rescaled_2_to_3_to_1(
    sh: StreamHouse, tmp_path: Path
) -> None:
    """A Top-3 per key (ranks whose row has a NULL or small ``v`` tombstoned), a deduplication
    (the first row per key), a join of an updating GROUP BY to a stream and a join of a stream
    to a deduplication (the first row per key), rescaled 2 -> 3 -> 1 mid-run with a task
    killed -9 before each stop: the kept rows, the groups and the joins' rows moved by key
    group; the final upserted row of every record key equals DuckDB's answer, each key in one
    sink partition."""
    rng = random.Random(41)
    rows = generate(rng, 240)
    unique_times(rows)
    runs = {
        "top": (TOP_3_FILTERED, 37, ("ev",)),
        "first": (FIRST, 43, ("ev2",)),
        "cj": (COUNTS_JOINED, 53, ("ev", "ev2")),
        "lt": (FIRST_JOINED, 59, ("ev", "ev2")),
    }
    rescaled(sh, tmp_path, rows, rng, runs, {2: "cj", 3: "lt"})
    expected = duck(rows, TOP_3_FILTERED_ORACLE)
    assert 0 < len(expected) < 3 * len(KEYS)  # some ranks' rows filtered out (tombstoned)
    assert upserted(sh, "top", ["k", "t", "v", "rn"], {"t"}) == expected
    expected = duck(rows, FIRST_ORACLE)
    assert upserted(sh, "first", ["k", "t", "w"], {"t"}) == expected
    expected = duck(rows, COUNTS_JOINED_ORACLE)
    assert upserted(sh, "cj", ["k", "n", "bt", "w"], {"bt"}) == expected
    expected = duck(rows, FIRST_JOINED_ORACLE)
    assert upserted(sh, "lt", ["k", "at", "v", "w"], {"at"}) == expected


def test_over_and_temporal_join_rescaled_2_to_3_to_1(sh: StreamHouse, tmp_path: Path) -> None:
    """An OVER with a ROWS frame and a LEAD, running OVER aggregates (UNBOUNDED PRECEDING) and
    a LEFT temporal join, rescaled 2 -> 3 -> 1 mid-run with a task killed -9 before each stop:
    rows waiting for the watermark, the history frames reach, rows waiting for their LEAD, the
    running totals, the waiting probe rows and the kept versions moved by key group; every row
    equals DuckDB's, none twice."""
    rng = random.Random(52)
    rows = generate(rng, 240)
    unique_times(rows)
    sh.sql(VERSIONED)
    runs = {
        "over": (OVER_LEAD, 47, ("ev",)),
        "run": (OVER_RUNNING, 39, ("ev2",)),
        "tj": (TEMPORAL, 61, ("ev", "ev2")),
    }
    rescaled(sh, tmp_path, rows, rng, runs, {2: "tj", 3: "over"})
    expected = duck(rows, OVER_LEAD_ORACLE)
    assert appended(sh, "over", ["k", "t", "v", "s", "nx"], {"t"}) == expected
    expected = duck(rows, OVER_RUNNING_ORACLE)
    assert appended(sh, "run", ["k", "t", "w", "c", "m"], {"t"}) == expected
    expected = duck(rows, TEMPORAL_ORACLE)
    assert any(r[3] is None for r in expected) and any(r[3] is not None for r in expected)
    assert appended(sh, "tj", ["k", "t", "v", "w", "bt"], {"t", "bt"}) == expected


def test_a_rescale_stopped_after_its_rename_is_finished(tmp_path: Path) -> None:
    """The new state was renamed into place but the old not yet deleted (a kill between the
    two): the next start deletes the old, and only the moved state is left."""
    old, moved = tmp_path / "q.p2", tmp_path / "q.p3"
    (old / "task-0").mkdir(parents=True)
    (moved / "task-0").mkdir(parents=True)
    (moved / RESCALED).write_text(json.dumps({"from": old.name}))
    finish(moved)
    assert not old.exists() and not (moved / RESCALED).exists()
    assert (moved / "task-0").is_dir()
    finish(moved)  # nothing left to finish
    assert (moved / "task-0").is_dir()


def test_left_join_window_join_and_changelog_join_at_parallelism_2(
    sh: StreamHouse, tmp_path: Path
) -> None:
    rng = random.Random(8)
    rows = generate(rng, 150)
    produce(sh, rng, rows)
    at_1_and_2(
        sh,
        tmp_path,
        {
            # a regular LEFT JOIN: updating, padded rows tombstoned when their first match comes
            "lj": (LEFT_JOIN, 71),
            # a window join (TUMBLE 5 s) on the key
            "wj": (WINDOW_JOIN, 133),
            # an updating GROUP BY joined to a stream on its key (ChangelogJoin)
            "cj": (COUNTS_JOINED, 89),
        },
    )
    expected = duck(rows, LEFT_JOIN_ORACLE)
    assert any(r[3] is None for r in expected) and any(r[3] is not None for r in expected)
    for sink in sinks_of("lj"):
        assert upserted(sh, sink, ["k", "at", "v", "w"], {"at"}) == expected

    expected = duck(rows, WINDOW_JOIN_ORACLE)
    assert len(expected) > 100
    for sink in sinks_of("wj"):
        assert appended(sh, sink, ["k", "window_start", "v", "w"], set()) == expected

    expected = duck(rows, COUNTS_JOINED_ORACLE)
    for sink in sinks_of("cj"):
        assert upserted(sh, sink, ["k", "n", "bt", "w"], {"bt"}) == expected


def test_session_window_top_n_and_dedup_at_parallelism_2(sh: StreamHouse, tmp_path: Path) -> None:
    rng = random.Random(4)
    rows = generate(rng, 180)
    produce(sh, rng, rows)
    at_1_and_2(
        sh,
        tmp_path,
        {
            "ses": (
                "INSERT INTO {sink} SELECT k, window_start, window_end, COUNT(*) AS n,"
                " COUNT(DISTINCT v) AS nd, SUM(v) AS s, AVG(v) AS a, MIN(v) AS lo, MAX(v) AS hi"
                " FROM ev GROUP BY k, SESSION(t, INTERVAL '2' SECOND)",
                61,
            ),
            "top": (TOP_3, 77),
            # tombstones keyed as the rows, not by task (the tasks' tombstones were prefixed
            # with their task and deleted nothing, so dropped ranks stayed)
            "topf": (TOP_3_FILTERED, 53),
            "first": (FIRST, 45),
        },
    )
    expected = oracle([r for part in rows["ev"] for r in part], "session", 2_000)
    assert len(expected) > 40
    columns = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]
    for sink in sinks_of("ses"):
        assert rows_of(topic_rows(sh, sink), columns) == expected

    assert sh.log.get_topic("top2").config.get("cleanup.policy") == "compact"
    expected = duck(rows, TOP_3_ORACLE)
    for sink in sinks_of("top"):
        assert upserted(sh, sink, ["k", "t", "v", "rn"], {"t"}) == expected
    expected = duck(rows, TOP_3_FILTERED_ORACLE)
    assert 0 < len(expected) < 3 * len(KEYS)
    for sink in sinks_of("topf"):
        assert upserted(sh, sink, ["k", "t", "v", "rn"], {"t"}) == expected

    expected = duck(rows, FIRST_ORACLE)
    for sink in sinks_of("first"):
        assert upserted(sh, sink, ["k", "t", "w"], {"t"}) == expected


def test_over_temporal_join_and_union_all_at_parallelism_2(sh: StreamHouse, tmp_path: Path) -> None:
    """An OVER aggregation by partition; a LEFT temporal join of ``ev`` to the versions of
    ``ev2`` (PRIMARY KEY k), each probe row getting the version of its key current at its time,
    as DuckDB's ASOF join; and a UNION ALL of filters."""
    rng = random.Random(12)
    rows = generate(rng, 150)
    unique_times(rows)  # no ties to order, no two versions (or probes) of a key at one time
    produce(sh, rng, rows)
    sh.sql(VERSIONED)
    at_1_and_2(
        sh,
        tmp_path,
        {
            "over": (OVER_ROWS, 59),
            "tj": (TEMPORAL, 67),
            "un": (
                "INSERT INTO {sink} SELECT k, t, v AS x FROM ev WHERE v > 50"
                " UNION ALL SELECT k, t, w AS x FROM ev2 WHERE w < 20",
                83,
            ),
        },
    )
    expected = duck(rows, OVER_ROWS_ORACLE)
    for sink in sinks_of("over"):
        assert appended(sh, sink, ["k", "t", "v", "s"], {"t"}) == expected

    expected = duck(rows, TEMPORAL_ORACLE)
    assert any(r[3] is None for r in expected) and any(r[3] is not None for r in expected)
    for sink in sinks_of("tj"):
        assert appended(sh, sink, ["k", "t", "v", "w", "bt"], {"t", "bt"}) == expected

    expected = duck(
        rows, "SELECT k, t, v FROM ev WHERE v > 50 UNION ALL SELECT k, t, w FROM ev2 WHERE w < 20"
    )
    for sink in sinks_of("un"):
        assert appended(sh, sink, ["k", "t", "x"], {"t"}) == expected


def test_explain_and_what_is_refused(sh: StreamHouse, tmp_path: Path) -> None:
    for statement in STREAMS.format(batch=100).split(";")[:2]:
        sh.sql(statement)
    sh.sql("SET 'parallelism' = '2'")
    plan = "\n".join(sh.sql(f"EXPLAIN {INTERVAL_JOIN}").to_arrow_table()["plan"].to_pylist())
    assert (
        "Exchange  topic <query>.exchange (2 partitions, Arrow IPC records): the rows of ev" in plan
    )
    assert (
        "Exchange  topic <query>.exchange1 (2 partitions, Arrow IPC records): the rows of ev2"
        in plan
    )
    assert "by key group of (k), 128 key groups" in plan
    assert "then StreamJoin over the rows of the task's key groups" in plan

    refused = {
        "OverAggregate (an OVER aggregation)": "INSERT INTO o SELECT k, SUM(v) OVER"
        " (ORDER BY t ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM ev",
        "UnionAll (UNION ALL)": "INSERT INTO o SELECT k, COUNT(*) AS n FROM ev GROUP BY k"
        " UNION ALL SELECT k, COUNT(*) AS n FROM ev2 GROUP BY k",
        "StreamJoin (a stream join)": "INSERT INTO o SELECT a.k, b.w FROM ev a JOIN ev2 b"
        " ON a.t BETWEEN b.t - INTERVAL '1' SECOND AND b.t",
        "TimeSort (ORDER BY on the time attribute)": "INSERT INTO o SELECT k, t FROM ev ORDER BY t",
    }
    for what, statement in refused.items():
        with pytest.raises(
            SqlError,
            match=f"parallelism > 1 does not run {what.replace('(', '[(]').replace(')', '[)]')} yet",
        ):
            sh.start(statement, parallelism=2, name="refused")
    with pytest.raises(SqlError, match="no equality between a column of each input"):
        sh.start(refused["StreamJoin (a stream join)"], parallelism=2, name="refused")
    # a join over an updating GROUP BY on a column that is not its group key: a group's rows
    # would be split over tasks
    with pytest.raises(
        SqlError,
        match=r"ChangelogJoin \(a join over an updating input\) yet: .*\(a group key or PARTITION",
    ):
        sh.start(
            "INSERT INTO o SELECT a.k, a.n, b.w FROM (SELECT k, MAX(v) AS n FROM ev GROUP BY k) a"
            " JOIN ev2 b ON a.n = b.w",
            parallelism=2,
            name="refused",
        )
    with pytest.raises(SqlError, match="parallelism > 1 does not run a statement set yet"):
        sh.start(
            "EXECUTE STATEMENT SET BEGIN INSERT INTO o1 SELECT k FROM ev;"
            " INSERT INTO o2 SELECT k FROM ev2; END",
            parallelism=2,
            name="set",
        )


def test_a_partition_left_for_a_later_batch_is_not_idle(sh: StreamHouse, tmp_path: Path) -> None:
    """At parallelism 1 too: partition 2 holds early rows but the batch budget goes to
    partitions 0 and 1 first, for longer than the idle timeout. Records waiting in it keep it
    active, so the watermark waits for them and none is late (found by parallel_bench under
    load: a starved partition counted as idle and a window was lost)."""
    rows = {"ev": [[("a", T0 + i * 100, i) for i in range(200)] for _ in range(2)], "ev2": []}
    rows["ev"].append([("b", T0 + i, i) for i in range(20)])
    produce(sh, random.Random(1), rows)
    text = (
        "INSERT INTO w SELECT k, window_start, COUNT(*) AS n FROM ev"
        " GROUP BY k, TUMBLE(t, INTERVAL '1' SECOND)"
    )
    path = write(tmp_path, "starved", text, 50)
    path.write_text(path.read_text().replace("'1 h'", "'50 ms'"))
    query = start_query(sh.engine, path, state_root=sh.settings.data_dir / "queries", start=False)
    try:
        while query.step():
            time.sleep(0.08)  # past the idle timeout between batches
        query.step(final=True)
        assert query.status()["late_rows"] == 0
    finally:
        query.stop()
    assert {"k": "b", "n": 20} in [{"k": r["k"], "n": r["n"]} for r in topic_rows(sh, "w")]


def test_latest_offset_starts_every_task_at_the_end(sh: StreamHouse, tmp_path: Path) -> None:
    """``scan.startup.mode = 'latest-offset'`` at parallelism 2: the tasks' producing sides
    start at the end of the sources, so rows produced before the query joins nothing."""
    rng = random.Random(30)
    before, after = generate(rng, 40), generate(rng, 40)
    produce(sh, rng, before)
    text = INTERVAL_JOIN.replace("INSERT", "SET 'scan.startup.mode' = 'latest-offset';\nINSERT")
    query = sh.start(write(tmp_path, "late", text, 1000), parallelism=2)
    try:
        wait_for(lambda: all("ready_at" in t for t in query.status()["tasks"]))
        produce(sh, rng, after)
        expected = duck(after, INTERVAL_ORACLE)
        assert expected and len(expected) < len(
            duck({s: before[s] + after[s] for s in after}, INTERVAL_ORACLE)
        )
        wait_for(lambda: query.status()["rows_in"] >= 40 * 5)
        wait_for(lambda: len(topic_rows(sh, "joined")) >= len(expected), timeout=30)
    finally:
        query.stop()
    got = appended(sh, "joined", JOIN_COLUMNS, {"at", "bt"})
    assert query.status()["rows_in"] == 40 * 5
    assert got == expected  # none of the rows produced before the start
