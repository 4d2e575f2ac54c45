"""Bounded queries at growing topic sizes beside DuckDB (issue 23): time and peak memory.

Usage::

    python benchmarks/scan_bench.py [--records 1000000 4000000 16000000] [--repeat 2]
        [--memory-limit 512MB] [--out benchmarks/results/scan.json]

Per size, a fresh data directory gets a 4-partition topic ``t`` of JSON records
``{"k": 17, "x": 8.5, "s": "name-17", "ts": "2026-01-01T00:00:17"}`` and the same records
as a JSON-lines file. Then, each in a new process (its peak resident memory: ``VmHWM``),
through the Python API:

- ``group``: ``SELECT k, count(*), sum(x) FROM t GROUP BY k ORDER BY k``, cold (the
  columnar cache emptied first), then ``group_warm``: the same again, from the cache;
- ``group_whole``: the same over the whole-table path (every source decoded into one table
  first, as before issue 23: ``engine.stream_sources = False``);
- ``limit``: ``SELECT * FROM t LIMIT 10`` (cold);
- ``tail``: ``SELECT count(*) FROM t WHERE _offset >= H``, H keeping the last 1% of each
  partition (the partitions are equal: records go round-robin; cold);
- ``duckdb``: the ``group`` query in DuckDB over the JSON-lines file (2 threads, as the
  machine has 2 cores), checked equal to StreamHouse's answer.

With ``--as-installed`` the measured processes cannot import pandas, as in an install of
StreamHouse without its test extras (pandas is one of them, not a dependency): pyarrow
imports pandas whenever it is installed, at its first array built from Python values, which
costs 33 MB of resident memory (305 MB against 337 at 4M).

The commands run round-robin ``--repeat`` times; times are each one's best, memory its
largest; every run carries the 1-minute load average and what the scan read (objects, bytes,
runs from the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamhouse  # noqa: E402

PARTITIONS = 4
CHUNK = 250_000
GROUP = "SELECT k, count(*) AS n, sum(x) AS sx FROM t GROUP BY k ORDER BY k"
QUERIES = {  # name: (SQL, whether the columnar cache is emptied first, the path)
    "group": (GROUP, True, "stream"),
    "group_warm": (GROUP, False, "stream"),
    "group_whole": (GROUP, True, "whole"),
    "limit": ("SELECT * FROM t LIMIT 10", True, "stream"),
    "tail": ("SELECT count(*) AS n FROM t WHERE _offset >= {tail}", True, "stream"),
}
NO_PANDAS = """
import sys
class _NoPandas:  # the test extras' pandas hidden, as in a plain install (--as-installed)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError("pandas is hidden (--as-installed)", name=name)
sys.meta_path.insert(0, _NoPandas())
"""
PEAK_MB = """
import resource
def cpu_s():  # the query's CPU seconds, over all its threads (load-robust beside the wall)
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
def peak_mb():  # this process's own peak (ru_maxrss would carry the forking parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
STREAMHOUSE_SCRIPT = (
    PEAK_MB
    + """
import json, sys, time
import streamhouse
sh = streamhouse.connect(sys.argv[1], **json.loads(sys.argv[3]))
sh.engine.stream_sources = sys.argv[4] != "whole"
c0, t0 = cpu_s(), time.perf_counter()
rel = sh.sql(sys.argv[2])
table = rel.to_arrow_table()
seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
stats = rel.stats
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": table.num_rows,
    "answer": table.slice(0, 20).to_pylist() if table.num_rows <= 1000 else None,
    "objects_read": stats.objects_read, "bytes_read": stats.bytes_read,
    "cached_runs": stats.cached_runs,
    "peak_mb": peak_mb()}, default=str))
"""
)
DUCKDB_SCRIPT = (
    PEAK_MB
    + """
import json, sys, time
import duckdb
con = duckdb.connect(config={"threads": 2})
con.execute("SET enable_progress_bar = false")
c0, t0 = cpu_s(), time.perf_counter()
table = con.sql(sys.argv[2].replace("FROM t", "FROM read_json('" + sys.argv[1] + "', "
    "columns={k: 'BIGINT', x: 'DOUBLE', s: 'VARCHAR', ts: 'TIMESTAMP'}, format='newline_delimited')")).arrow()
if not hasattr(table, "num_rows"):
    table = table.read_all()
seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "rows": table.num_rows,
    "answer": table.slice(0, 20).to_pylist(),
    "peak_mb": peak_mb()}, default=str))
"""
)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def lines(start: int, stop: int) -> list[bytes]:
    return [
        b'{"k": %d, "x": %d.5, "s": "name-%d", "ts": "2026-01-01T%02d:%02d:%02d"}'
        % (i % 1000, i % 977, i % 1000, (i // 3600) % 24, (i // 60) % 60, i % 60)
        for i in range(start, stop)
    ]


def make_data(data_dir: Path, json_path: Path, records: int) -> None:
    with streamhouse.connect(data_dir) as sh, json_path.open("wb") as out:
        sh.create_topic("t", partitions=PARTITIONS)
        for start in range(0, records, CHUNK):
            values = lines(start, min(records, start + CHUNK))
            for p in range(PARTITIONS):
                sh.produce("t", values[p::PARTITIONS], partition=p)
            out.write(b"\n".join(values) + b"\n")


CODE = ROOT  # the StreamHouse the measured processes import (--code: another checkout)
AS_INSTALLED = False  # --as-installed: the measured processes without pandas


def run(script: str, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(CODE)}
    before = load()
    done = subprocess.run(
        [sys.executable, "-c", (NO_PANDAS if AS_INSTALLED else "") + script, *args],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise RuntimeError(f"{args[1][:60]}: {lines[-1]}")
    answer = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    return {**json.loads(answer), "load": before}


def bench(records: int, repeat: int, settings: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="scan-bench-"))
    try:
        started = time.perf_counter()
        make_data(work / "data", work / "t.jsonl", records)
        print(f"{records:,} records made in {time.perf_counter() - started:.0f} s", flush=True)
        tail = records // PARTITIONS - records // PARTITIONS // 100
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in [*QUERIES, "duckdb"]}
        for _ in range(repeat):
            for name, (sql, cold, path) in QUERIES.items():
                if cold:
                    shutil.rmtree(work / "data" / "scan-cache", ignore_errors=True)
                args = [str(work / "data"), sql.format(tail=tail), json.dumps(settings), path]
                runs[name].append(run(STREAMHOUSE_SCRIPT, args))
            runs["duckdb"].append(run(DUCKDB_SCRIPT, [str(work / "t.jsonl"), GROUP]))
            print({k: round(v[-1]["seconds"], 2) for k, v in runs.items()}, flush=True)
        result: dict[str, Any] = {"records": records, "as_installed": AS_INSTALLED, "runs": runs}
        for name, measured in runs.items():
            result[name] = {
                "seconds": min(r["seconds"] for r in measured),
                "cpu_seconds": min(r.get("cpu_seconds", float("nan")) for r in measured),
                "peak_mb": max(r["peak_mb"] for r in measured),
            }
            for key in ("objects_read", "bytes_read", "cached_runs"):
                if key in measured[0]:
                    result[name][key] = measured[0][key]
        result["answers_match"] = runs["group"][0]["answer"] == [
            {**row, "sx": float(row["sx"])} for row in runs["duckdb"][0]["answer"]
        ]
        result["group_vs_duckdb_time"] = result["group"]["seconds"] / result["duckdb"]["seconds"]
        result["group_vs_duckdb_rounds"] = [  # each round runs both, one after the other
            a["seconds"] / b["seconds"] for a, b in zip(runs["group"], runs["duckdb"], strict=True)
        ]
        result["group_vs_duckdb_cpu"] = (
            result["group"]["cpu_seconds"] / result["duckdb"]["cpu_seconds"]
        )
        result["warm_vs_duckdb_time"] = (
            result["group_warm"]["seconds"] / result["duckdb"]["seconds"]
        )
        result["tail_vs_group_time"] = result["tail"]["seconds"] / result["group"]["seconds"]
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--as-installed", action="store_true", help="hide pandas (a test extra)")
    args = parser.parse_args()
    global CODE, AS_INSTALLED
    CODE, AS_INSTALLED = args.code, args.as_installed
    settings = {} if args.memory_limit is None else {"memory_limit": args.memory_limit}
    results = []
    for records in args.records:
        results.append(bench(records, args.repeat, settings))
        if args.out is not None:  # after every size: a later one may take long
            args.out.write_text(json.dumps({"peak_rss_unit": "MB", "results": results}, indent=1))
    for r in results:
        print(
            f"{r['records']:>11,}  group {r['group']['seconds']:.2f} s {r['group']['peak_mb']:.0f} MB"
            f"  warm {r['group_warm']['seconds']:.2f} s"
            f"  whole {r['group_whole']['seconds']:.2f} s {r['group_whole']['peak_mb']:.0f} MB"
            f"  duckdb {r['duckdb']['seconds']:.2f} s {r['duckdb']['peak_mb']:.0f} MB"
            f"  limit {r['limit']['seconds']:.2f} s  tail {r['tail']['seconds']:.2f} s"
            f"  match {r['answers_match']}"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"peak_rss_unit": "MB", "results": results}, indent=1))


if __name__ == "__main__":
    main()
