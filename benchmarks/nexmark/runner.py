"""One StreamHouse measurement in a process of its own: a query, bounded or continuous.

The harness (:mod:`benchmarks.nexmark.__main__`) runs this module once per query and mode, so
that each figure has its own peak resident memory and CPU seconds, and no query pays for the
heap another one left behind::

    python -m benchmarks.nexmark.runner --data-dir D --query q5 --mode continuous [--parallelism 2]

prints one JSON object on stdout: ``status``, ``seconds`` (wall), ``cpu_seconds`` (this process,
all threads), ``rows`` (result rows), ``rss_before_mb`` (after opening the data directory),
``peak_rss_mb`` (the process's high-water mark), ``load_before``/``load_after`` (1-minute load
average) and, for continuous runs, the query's ``status()`` counters. A continuous run deletes
its sink topic and state afterwards, so reruns over one data directory stay alike.

At ``--parallelism`` N > 1 the continuous query runs as N task processes (``sh.start(...,
parallelism=N)``): ``cpu_seconds`` and ``peak_rss_mb`` are then summed over this (launching)
process and every task process (each task's ``VmHWM``), the task zygote's one import of the
runtime apart (``zygote_cpu_seconds``), and ``rows`` is the tasks' ``rows_out``; ``tasks``
lists each task's rows, CPU seconds and peak memory. The task zygote (the process tasks are
forked from, once per launching process) is started and has imported the runtime before the
clock starts, as PyFlink's JVM is (``zygote_start_seconds``, ``zygote_start_cpu_seconds``);
``seconds`` includes the tasks' own start-up (``startup_seconds``: forks, opening state).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

import streamhouse
from benchmarks.nexmark import NexmarkQuery
from benchmarks.nexmark.udfs import register as register_udfs

BENCH_QUERY_DIR = Path(__file__).resolve().parent / "queries"


def query_file(name: str) -> NexmarkQuery:
    """``queries/nexmark/<name>.sql``, or one of the benchmark's own (``benchmarks/nexmark/queries``)."""
    from benchmarks.nexmark import QUERY_DIR

    path = QUERY_DIR / f"{name}.sql"
    if not path.exists():
        path = BENCH_QUERY_DIR / f"{name}.sql"
    return NexmarkQuery(name, path)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would
    carry over the parent's peak across fork and exec)."""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def bounded(sh: streamhouse.StreamHouse, query: NexmarkQuery) -> dict[str, Any]:
    if query.blocked_bounded:
        return {"status": "cannot run bounded yet", "reason": query.blocked_bounded}
    for statement in query.ddl():
        sh.sql(statement)
    table = sh.sql(query.select()).to_arrow_table()
    return {"status": "ok", "rows": table.num_rows, "table": table}


def continuous(
    sh: streamhouse.StreamHouse, query: NexmarkQuery, name: str, parallelism: int = 1
) -> dict[str, Any]:
    if query.blocked:
        return {"status": "cannot run yet", "reason": query.blocked}
    if parallelism > 1:
        return _continuous_tasks(sh, query, name, parallelism)
    rows = 0

    def count(table: pa.Table) -> None:
        nonlocal rows
        rows += table.num_rows

    running = sh.start(query.path, name=name, on_results=count)
    status = _to_end(running)
    if running.error is not None:
        return {"status": "failed", "error": repr(running.error)}
    return {
        "status": "ok",
        "rows": rows,
        "updating": bool(getattr(running, "updating", False)),
        "query_status": {k: status.get(k) for k in KEPT_STATUS},
    }


def _start_zygote() -> dict[str, Any]:
    """Start the task zygote (the process the tasks are forked from) before the clock, as
    PyFlink's JVM is started before its clock: its import of the runtime, once per launching
    process, is reported apart (``zygote_start_seconds``, ``zygote_start_cpu_seconds``)."""
    from streamhouse.runtime.task_processes import Zygote, zygote_cpu_seconds

    started = time.perf_counter()
    if not Zygote.get().wait_ready(timeout=120):
        raise RuntimeError("the task zygote did not get ready in 120 s")
    return {
        "zygote_start_seconds": round(time.perf_counter() - started, 3),
        "zygote_start_cpu_seconds": round(zygote_cpu_seconds(), 3),
    }


def _to_end(running: Any) -> dict[str, Any]:
    """Run a query to the end of its sources, every window closed; its status, then stop it."""
    try:
        running.run_until_caught_up(final=True)
        return running.status()
    finally:
        running.stop()


KEPT_STATUS = ("rows_in", "rows_out", "late_rows", "rejected_rows", "batches")


def _continuous_tasks(
    sh: streamhouse.StreamHouse, query: NexmarkQuery, name: str, parallelism: int
) -> dict[str, Any]:
    """The query as ``parallelism`` task processes, run to the end of the loaded events (not
    started first: its tasks would only stop for the run to the end). No ``on_results``: a
    parallel query would then also copy every result row into a results topic for this
    process, work a query with a sink does not do in production."""
    from streamhouse.runtime.launch import start_query
    from streamhouse.runtime.task_processes import zygote_cpu_seconds

    zygote_before = zygote_cpu_seconds()
    started_at = time.time()
    running = start_query(
        sh.engine,
        query.path,
        name=name,
        state_root=sh.settings.data_dir / "queries",
        options={"parallelism": parallelism},
        start=False,
    )
    status = _to_end(running)
    if running.error is not None:
        return {"status": "failed", "error": repr(running.error)}
    tasks = [
        {
            "task": t.get("task"),
            "rows_in": t.get("rows_in"),
            "rows_out": t.get("rows_out"),
            "cpu_seconds": t.get("cpu_seconds"),
            "setup_cpu_seconds": t.get("setup_cpu_seconds"),
            "peak_rss_mb": round(t.get("peak_rss_bytes", 0) / 2**20, 1),
        }
        for t in status["tasks"]
    ]
    return {
        "status": "ok",
        "parallelism": parallelism,
        "rows": status["rows_out"],
        "updating": bool(running.plan.operator.updating),
        "query_status": {k: status.get(k) for k in KEPT_STATUS},
        "tasks": tasks,
        "tasks_cpu_seconds": round(sum(t["cpu_seconds"] or 0 for t in tasks), 3),
        "tasks_peak_rss_mb": round(sum(t["peak_rss_mb"] for t in tasks), 1),
        "zygote_cpu_seconds": round(zygote_cpu_seconds() - zygote_before, 3),
        # from the start to the last task set up (forks, opening their state)
        "startup_seconds": round(max(t["ready_at"] for t in status["tasks"]) - started_at, 3),
    }


def measure(data_dir: Path, name: str, mode: str, options: dict[str, Any]) -> dict[str, Any]:
    query = query_file(name)
    sh = streamhouse.connect(data_dir)
    register_udfs(sh)
    parallelism = options.get("parallelism", 1)
    run_name = f"bench_{name}_{os.getpid()}"
    sink = _sink_topic(query)
    try:
        result: dict[str, Any] = {"rss_before_mb": round(current_rss_mb(), 1)}
        if mode == "continuous" and parallelism > 1:
            result.update(_start_zygote())
        result["load_before"] = round(os.getloadavg()[0], 2)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            if mode == "bounded":
                outcome = bounded(sh, query)
            else:
                outcome = continuous(sh, query, run_name, parallelism)
        except Exception as exc:  # a benchmark records the failure and goes on
            outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = time.perf_counter() - wall
        result["cpu_seconds"] = time.process_time() - cpu
        result["load_after"] = round(os.getloadavg()[0], 2)
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        table = outcome.pop("table", None)
        if table is not None and options.get("result_file"):
            import pyarrow.feather as feather

            feather.write_feather(table, options["result_file"], compression="uncompressed")
        if "tasks_cpu_seconds" in outcome:  # the launcher's and its task processes' together
            result["launcher_cpu_seconds"] = result["cpu_seconds"]
            result["launcher_peak_rss_mb"] = result["peak_rss_mb"]
            result["cpu_seconds"] += outcome["tasks_cpu_seconds"]
            result["peak_rss_mb"] = round(result["peak_rss_mb"] + outcome["tasks_peak_rss_mb"], 1)
        result.update(outcome)
        return result
    finally:
        if mode == "continuous":
            if sink and sink in {t.name for t in sh.topics()}:
                sh.delete_topic(sink)
            topics = {t.name for t in sh.topics()}
            for leftover in sorted(topics):  # its dead letters, exchange and results topics
                if leftover.startswith(f"{run_name}."):
                    sh.delete_topic(leftover)
        sh.close()
        if mode == "continuous":
            shutil.rmtree(data_dir / "queries" / run_name, ignore_errors=True)
            shutil.rmtree(data_dir / "queries" / f"{run_name}.p{parallelism}", ignore_errors=True)


def _sink_topic(query: NexmarkQuery) -> str | None:
    import re

    match = re.search(r"INSERT\s+INTO\s+(\w+)", query.text, re.IGNORECASE)
    return match.group(1) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.runner")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--mode", choices=("bounded", "continuous"), required=True)
    parser.add_argument("--result-file", help="write a bounded result here (Feather)")
    parser.add_argument("--parallelism", type=int, default=1, help="continuous: task processes")
    args = parser.parse_args(argv)
    options = {"result_file": args.result_file, "parallelism": args.parallelism}
    result = measure(args.data_dir, args.query, args.mode, options)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
