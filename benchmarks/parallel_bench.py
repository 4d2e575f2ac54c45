"""Parallel continuous queries (issue 16): a windowed COUNT, a filter, Nexmark q4's, q5's or
q7's shape or an interval join, at parallelism 1 vs 2.

Usage::

    python benchmarks/parallel_bench.py [--query tumble|stateless|q4|q5|q7|join] [--events 1000000]
        [--partitions 4] [--pairs 3] [--out benchmarks/results/parallel.json]
    python benchmarks/parallel_bench.py --data DIR --only 2   # one run over DIR (for whole-process timing)

Produces ``--events`` click events (``{"user_id", "url", "ts"}``, 1,000 users, event time
rising) into ``--partitions`` partitions once, and as many page views (``{"user_id", "page",
"ts"}``, same users and hour: the two streams advance together in event time, micro-batches
take an equal share of each) for the join, then runs the query to the end of the log
(``run --until-end``: every window closed) at parallelism 1 and 2 in turn, ``--pairs`` times
(A B A B: the machine is shared, and pairing keeps the ratio meaningful while its load drifts).
Each run is a fresh query (its own name and sink topic) and is timed from its start (the task
processes' start-up included) to the last window written. Reported per run: wall seconds,
events/s, the same after the tasks were set up, CPU seconds (the launcher's and every task
process's), the 1-minute load average; and the median of the paired ratios.

    -- tumble
    INSERT INTO <sink> SELECT user_id, window_start, COUNT(*) AS clicks
    FROM clicks GROUP BY user_id, TUMBLE(ts, INTERVAL '1' MINUTE)
    -- stateless: a filter and projection (no exchange)
    INSERT INTO <sink> SELECT user_id, url, ts FROM clicks WHERE user_id % 4 <> 0
    -- q5: the users with the most clicks per HOP window (2 s slide, 10 s size), Nexmark q5's
    -- join of two window aggregates on their bounds (routed by window at parallelism > 1)
    -- q7: the clicks of the highest user id of each 10 s window, Nexmark q7's join of a
    -- stream to a keyless window aggregate of itself with a BETWEEN (routed by window)
    -- join: each click with the user's page views of the 2 seconds before it
    -- q4: Nexmark q4's shape, an AVG per page of the COUNT per (user, page) of that join
    INSERT INTO <sink> SELECT c.user_id, c.url, c.ts, v.page FROM clicks c JOIN views v
    ON c.user_id = v.user_id AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '2' SECOND
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamhouse  # noqa: E402
from streamhouse import StreamHouse  # noqa: E402
from streamhouse.runtime.launch import start_query  # noqa: E402
from streamhouse.runtime.task_processes import zygote_cpu_seconds  # noqa: E402

STREAM = """CREATE STREAM clicks (user_id BIGINT, url VARCHAR, ts TIMESTAMP(3),
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (topic = 'clicks', format = 'json')"""
VIEWS = """CREATE STREAM views (user_id BIGINT, page VARCHAR, ts TIMESTAMP(3),
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (topic = 'views', format = 'json')"""
_HOP_COUNTS = """SELECT user_id, COUNT(*) AS num, window_start AS starttime,
    window_end AS endtime
  FROM TABLE(HOP(TABLE clicks, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
  GROUP BY user_id, window_start, window_end"""
QUERIES = {
    "stateless": """INSERT INTO {sink} SELECT user_id, url, ts FROM clicks
WHERE user_id % 4 <> 0""",
    "tumble": """INSERT INTO {sink} SELECT user_id, window_start, COUNT(*) AS clicks
FROM clicks GROUP BY user_id, TUMBLE(ts, INTERVAL '1' MINUTE)""",
    "q5": f"""INSERT INTO {{sink}} SELECT hot.user_id, hot.num FROM ({_HOP_COUNTS}) AS hot
JOIN (SELECT MAX(counts.num) AS maxn, counts.starttime, counts.endtime
  FROM ({_HOP_COUNTS}) AS counts GROUP BY counts.starttime, counts.endtime) AS top
ON hot.starttime = top.starttime AND hot.endtime = top.endtime AND hot.num >= top.maxn""",
    "q7": """INSERT INTO {sink} SELECT c.user_id, c.url, c.ts FROM clicks c
JOIN (SELECT MAX(user_id) AS top, window_end AS ts
  FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
  GROUP BY window_start, window_end) AS m
ON c.user_id = m.top WHERE c.ts BETWEEN m.ts - INTERVAL '10' SECOND AND m.ts""",
    "join": """SET 'max-batch-records' = '20000';
INSERT INTO {sink} SELECT c.user_id, c.url, c.ts, v.page FROM clicks c JOIN views v
ON c.user_id = v.user_id AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '2' SECOND""",
    "q4": """SET 'max-batch-records' = '20000';
INSERT INTO {sink} SELECT Q.page, AVG(Q.n) AS avg_n FROM (
  SELECT c.user_id, v.page, COUNT(*) AS n FROM clicks c JOIN views v
  ON c.user_id = v.user_id AND c.ts BETWEEN v.ts AND v.ts + INTERVAL '2' SECOND
  GROUP BY c.user_id, v.page) Q
GROUP BY Q.page""",
}
UPDATING = {"q4"}
"""Queries whose upserts (rows_out) depend on where micro-batches split."""
BENCHMARKS = {
    "stateless": "a filter and projection of the clicks, to the end of the log (no exchange)",
    "q5": "Nexmark q5's shape over the clicks: the users with the most clicks per HOP"
    " window (2 s slide, 10 s size), a join of two window aggregates",
    "tumble": "windowed COUNT per user, TUMBLE 1 minute, to the end of the log",
    "q7": "Nexmark q7's shape over the clicks: each click of the highest user id of its 10 s"
    " TUMBLE window, a stream joined to a window aggregate of itself (routed by window)",
    "join": "interval join of clicks and page views on user_id (2 s), to the end of the log",
    "q4": "Nexmark q4's shape over clicks and views: the interval join, a COUNT per (user,"
    " page), then the AVG of those per page (two stages at parallelism 2: by user, then by"
    " page through a second exchange), to the end of the log",
}
T0 = 1_767_225_600_000
USERS = 1_000


def produce(data: Path, events: int, partitions: int) -> None:
    rng = np.random.default_rng(16)
    with streamhouse.connect(data) as sh:
        for topic, stream, count, column in (
            ("clicks", STREAM, events, "url"),
            ("views", VIEWS, events, "page"),
        ):
            sh.create_topic(topic, partitions=partitions)
            sh.sql(stream)
            per = count // partitions
            for p in range(partitions):
                for start in range(0, per, 50_000):
                    n = min(50_000, per - start)
                    ts = T0 + (np.arange(start, start + n) * 3_600_000 // per)
                    table = pa.table(
                        {
                            "user_id": rng.integers(0, USERS, n),
                            column: pc.binary_join_element_wise(
                                "/page/", pa.array(rng.integers(0, 50, n)).cast(pa.string()), ""
                            ),
                            "ts": pa.array(ts, pa.timestamp("ms")),
                        }
                    )
                    values = [json.dumps(r).encode() for r in _records(table)]
                    sh.produce(topic, values, partition=p)


def _records(table: pa.Table) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    for row in rows:
        row["ts"] = row["ts"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return rows


def _query_file(sh: StreamHouse, name: str, query_name: str) -> tuple[int, Path]:
    """The events the query reads (its topics' records) and its query file, sinking into
    ``out_<name>``."""
    topics = ["clicks", "views"] if query_name in ("join", "q4") else ["clicks"]
    events = sum(
        o.high_watermark
        for topic in topics
        for o in sh.log.metadata.partition_offsets(topic).values()
    )
    path = Path(tempfile.mkdtemp()) / f"{name}.sql"
    path.write_text(QUERIES[query_name].format(sink=f"out_{name}") + ";")
    return events, path


def run_once(data: Path, parallelism: int, query_name: str = "tumble") -> dict[str, Any]:
    name = f"bench_{parallelism}_{uuid.uuid4().hex[:8]}"
    with streamhouse.connect(data) as sh:
        events, path = _query_file(sh, name, query_name)
        zygote_before = zygote_cpu_seconds()
        started, started_at, cpu = time.perf_counter(), time.time(), time.process_time()
        query = start_query(
            sh.engine,
            path,
            state_root=sh.settings.data_dir / "queries",
            options={"parallelism": parallelism},
            start=False,
        )
        ready_at = time.time()
        setup_cpu = time.process_time() - cpu
        query.run_until_caught_up(final=True)
        seconds = time.perf_counter() - started
        status = query.status()
        ended_at = time.time()
        cpu = time.process_time() - cpu
        launcher_cpu = cpu
        if parallelism > 1:  # the task processes say when they were set up, and their CPU
            ready_at = max(t["ready_at"] for t in status["tasks"])
            cpu += sum(t["cpu_seconds"] for t in status["tasks"])
            setup_cpu = sum(t.get("setup_cpu_seconds", 0) for t in status["tasks"])
        zygote_cpu = zygote_cpu_seconds() - zygote_before
        query.stop()
    return {
        "parallelism": parallelism,
        "seconds": round(seconds, 3),
        "events": events,
        "events_per_s": round(events / seconds),
        "startup_seconds": round(ready_at - started_at, 3),
        "processing_seconds": round(ended_at - ready_at, 3),
        "events_per_s_after_startup": round(events / (ended_at - ready_at)),
        "rows_out": status["rows_out"],
        "cpu_seconds": round(cpu, 3),
        "launcher_cpu_seconds": round(launcher_cpu, 3),
        "setup_cpu_seconds": round(setup_cpu, 3),  # the launcher's at p1, the tasks' at p > 1
        # the task zygote's own (importing the runtime, once per launching process: in a run
        # of its own, --only, this run's; else the first p > 1 run's), not in cpu_seconds
        "zygote_cpu_seconds": round(zygote_cpu, 3),
        "load_1m": os.getloadavg()[0],
    }


def run_steady(
    data: Path, parallelism: int, query_name: str = "tumble", low: float = 0.1, high: float = 0.9
) -> dict[str, Any]:
    """The query as a continuous one (started, not run to the end) over the backlog: events/s
    and CPU seconds per event between reading ``low`` and ``high`` of the events, so neither the
    tasks' set-up nor the end of the run is in the figure (a continuous query's throughput).
    The rows read and the CPU seconds are sampled together (at parallelism > 1 from each
    task's status, written after each of its micro-batches)."""
    name = f"steady_{parallelism}_{uuid.uuid4().hex[:8]}"
    with streamhouse.connect(data) as sh:
        events, path = _query_file(sh, name, query_name)
        query = start_query(
            sh.engine,
            path,
            state_root=sh.settings.data_dir / "queries",
            options={"parallelism": parallelism},
        )
        marks: list[tuple[float, int, float]] = []  # (time, rows read, CPU s) at low and high
        try:
            while len(marks) < 2:
                status = query.status()
                if status["state"] == "failed":
                    raise RuntimeError(f"query failed: {status}")
                rows = status["rows_in"]
                cpu = time.process_time()
                if parallelism > 1:
                    cpu += sum(t.get("cpu_seconds", 0.0) for t in status["tasks"])
                if rows >= (low if not marks else high) * events:
                    marks.append((time.perf_counter(), rows, cpu))
                time.sleep(0.02)
        finally:
            query.stop()
    (t0, rows0, cpu0), (t1, rows1, cpu1) = marks
    if rows1 == rows0:
        raise SystemExit(
            f"{name} at parallelism {parallelism}: the whole backlog was read between two status"
            " samples, so there is no steady window to measure; generate more events"
        )
    return {
        "parallelism": parallelism,
        "events": rows1 - rows0,
        "seconds": round(t1 - t0, 3),
        "events_per_s": round((rows1 - rows0) / (t1 - t0)),
        "cpu_seconds": round(cpu1 - cpu0, 3),
        "cpu_us_per_event": round((cpu1 - cpu0) / (rows1 - rows0) * 1e6, 3),
        "load_1m": os.getloadavg()[0],
    }


def _has_views(data: Path) -> bool:
    with streamhouse.connect(data) as sh:
        return sh.log.get_topic("views") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", choices=sorted(QUERIES), default="tumble")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--data", type=Path, help="an existing data dir (else a fresh one)")
    parser.add_argument("--only", type=int, help="one run at this parallelism, then exit")
    parser.add_argument(
        "--steady",
        action="store_true",
        help="continuous queries over the backlog: events/s and CPU per event between 10%%"
        " and 90%% of the events read (no set-up, no end of run)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/parallel.json")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp()) / "data"
    if not (data / "metadata.sqlite3").exists() or not _has_views(data):
        started = time.perf_counter()
        produce(data, args.events, args.partitions)
        print(
            f"produced {args.events} events in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
    if args.only is not None:
        print(json.dumps(run_once(data, args.only, args.query)))
        return
    if args.steady:
        _steady_pairs(args, data)
        return
    runs, ratios, steady, cpu = [], [], [], []
    for _ in range(args.pairs):
        one = run_once(data, 1, args.query)
        two = run_once(data, 2, args.query)
        assert args.query in UPDATING or one["rows_out"] == two["rows_out"], (one, two)
        runs += [one, two]
        ratios.append(one["seconds"] / two["seconds"])
        steady.append(one["processing_seconds"] / two["processing_seconds"])
        cpu.append(two["cpu_seconds"] / one["cpu_seconds"])
        print(json.dumps([one, two]), file=sys.stderr)
    result = {
        "benchmark": BENCHMARKS[args.query],
        "query": QUERIES[args.query].format(sink="<sink>"),
        "events": runs[0]["events"],
        "partitions": args.partitions,
        "cores": os.cpu_count(),
        "runs": runs,
        "speedup_2_vs_1_paired": [round(r, 3) for r in ratios],
        "speedup_2_vs_1_median": round(statistics.median(ratios), 3),
        "speedup_after_startup_paired": [round(r, 3) for r in steady],
        "speedup_after_startup_median": round(statistics.median(steady), 3),
        # CPU seconds per event at parallelism 2 over parallelism 1 (launcher and tasks; the
        # zygote's one import is apart, zygote_cpu_seconds of the first p2 run)
        "cpu_2_vs_1_paired": [round(r, 3) for r in cpu],
        "cpu_2_vs_1_median": round(statistics.median(cpu), 3),
        "load_1m_range": [min(r["load_1m"] for r in runs), max(r["load_1m"] for r in runs)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _steady_pairs(args: argparse.Namespace, data: Path) -> None:
    runs, speed, cpu = [], [], []
    for _ in range(args.pairs):
        one = run_steady(data, 1, args.query)
        two = run_steady(data, 2, args.query)
        runs += [one, two]
        speed.append(two["events_per_s"] / one["events_per_s"])
        cpu.append(two["cpu_us_per_event"] / one["cpu_us_per_event"])
        print(json.dumps([one, two]), file=sys.stderr)
    result = {
        "benchmark": BENCHMARKS[args.query] + "; continuous, between 10% and 90% of the backlog",
        "query": QUERIES[args.query].format(sink="<sink>"),
        "partitions": args.partitions,
        "cores": os.cpu_count(),
        "runs": runs,
        "speedup_2_vs_1_paired": [round(r, 3) for r in speed],
        "speedup_2_vs_1_median": round(statistics.median(speed), 3),
        "cpu_per_event_2_vs_1_paired": [round(r, 3) for r in cpu],
        "cpu_per_event_2_vs_1_median": round(statistics.median(cpu), 3),
        "load_1m_range": [min(r["load_1m"] for r in runs), max(r["load_1m"] for r in runs)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
