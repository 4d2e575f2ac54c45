"""One StreamHouse measurement in a process of its own: a query, bounded or continuous.

The harness (:mod:`benchmarks.nexmark.__main__`) runs this module once per query and mode, so
that each figure has its own peak resident memory and CPU seconds, and no query pays for the
heap another one left behind::

    python -m benchmarks.nexmark.runner --data-dir D --query q5 --mode continuous

prints one JSON object on stdout: ``status``, ``seconds`` (wall), ``cpu_seconds`` (this process,
all threads), ``rows`` (result rows), ``rss_before_mb`` (after opening the data directory),
``peak_rss_mb`` (the process's high-water mark), ``load_before``/``load_after`` (1-minute load
average) and, for continuous runs, the query's ``status()`` counters. A continuous run deletes
its sink topic and state afterwards, so reruns over one data directory stay alike.
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


def continuous(sh: streamhouse.StreamHouse, query: NexmarkQuery, name: str) -> dict[str, Any]:
    if query.blocked:
        return {"status": "cannot run yet", "reason": query.blocked}
    rows = 0

    def count(table: pa.Table) -> None:
        nonlocal rows
        rows += table.num_rows

    running = sh.start(query.path, name=name, on_results=count)
    try:
        running.run_until_caught_up(final=True)
        status = running.status()
    finally:
        running.stop()
    if running.error is not None:
        return {"status": "failed", "error": repr(running.error)}
    keep = ("rows_in", "rows_out", "late_rows", "rejected_rows", "batches")
    return {
        "status": "ok",
        "rows": rows,
        "updating": bool(getattr(running, "updating", False)),
        "query_status": {k: status.get(k) for k in keep},
    }


def measure(data_dir: Path, name: str, mode: str, options: dict[str, Any]) -> dict[str, Any]:
    query = query_file(name)
    sh = streamhouse.connect(data_dir)
    register_udfs(sh)
    run_name = f"bench_{name}_{os.getpid()}"
    sink = _sink_topic(query)
    try:
        result: dict[str, Any] = {"rss_before_mb": round(current_rss_mb(), 1)}
        result["load_before"] = round(os.getloadavg()[0], 2)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            if mode == "bounded":
                outcome = bounded(sh, query)
            else:
                outcome = continuous(sh, query, run_name)
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
        result.update(outcome)
        return result
    finally:
        if mode == "continuous":
            if sink and sink in {t.name for t in sh.topics()}:
                sh.delete_topic(sink)
            for leftover in (f"{run_name}.dlq",):
                if leftover in {t.name for t in sh.topics()}:
                    sh.delete_topic(leftover)
        sh.close()
        if mode == "continuous":
            shutil.rmtree(data_dir / "queries" / run_name, ignore_errors=True)


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
    args = parser.parse_args(argv)
    result = measure(args.data_dir, args.query, args.mode, {"result_file": args.result_file})
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
