"""Bounded queries at growing topic sizes beside DuckDB (issue 23): time and peak memory.

Usage::

    python benchmarks/scan_bench.py [--records 1000000 4000000 16000000] [--repeat 2]
        [--memory-limit 512MB] [--out benchmarks/results/scan.json] [--data DIR]
        [--only group duckdb] [--code CHECKOUT] [--as-installed]

Per size, a fresh data directory gets a 4-partition topic ``t`` of JSON records
``{"k": 17, "x": 8.5, "s": "name-17", "ts": "2026-01-01T00:00:17"}`` and the same records
as a JSON-lines file (deleted at the end). With ``--data DIR`` they are kept in
``DIR/<records>/`` (``data/`` and ``t.jsonl``) and reused by later runs naming the same
``DIR``: generate 64M records once (``--data /big/disk/scan-data --records 64000000
--repeat 0`` only makes them), measure later on a quiet machine. A directory is reused only
if its generation finished (a ``complete`` file holds the record count); a half-made one is
made again. The cold queries empty its columnar cache (``data/scan-cache``) first, as
always; nothing else in it changes. ``--only`` runs some of the queries below (and
``duckdb``); ``--code`` measures another checkout's StreamHouse over the same data (A/B).
Then, each in a new process (its peak resident memory: ``VmHWM``),
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


def prepared(data: Path | None, records: int) -> Path:
    """The directory holding ``data/`` and ``t.jsonl`` of ``records`` records: ``data``'s
    (``--data``) if it was made before, else made now (in a new temporary directory when
    ``data`` is None)."""
    work = Path(tempfile.mkdtemp(prefix="scan-bench-")) if data is None else data / str(records)
    complete = work / "complete"
    if complete.exists() and complete.read_text().strip() == str(records):
        print(f"{records:,} records reused from {work}", flush=True)
        return work
    shutil.rmtree(work / "data", ignore_errors=True)  # a generation that did not finish
    (work / "t.jsonl").unlink(missing_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    make_data(work / "data", work / "t.jsonl", records)
    complete.write_text(f"{records}\n")
    print(f"{records:,} records made in {time.perf_counter() - started:.0f} s", flush=True)
    return work


def bench(
    records: int,
    repeat: int,
    settings: dict[str, Any],
    data: Path | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    work = prepared(data, records)
    queries = {n: q for n, q in QUERIES.items() if only is None or n in only}
    try:
        tail = records // PARTITIONS - records // PARTITIONS // 100
        names = [*queries, *(["duckdb"] if only is None or "duckdb" in only else [])]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(repeat):
            for name, (sql, cold, path) in queries.items():
                if cold:
                    shutil.rmtree(work / "data" / "scan-cache", ignore_errors=True)
                args = [str(work / "data"), sql.format(tail=tail), json.dumps(settings), path]
                runs[name].append(run(STREAMHOUSE_SCRIPT, args))
            if "duckdb" in runs:
                runs["duckdb"].append(run(DUCKDB_SCRIPT, [str(work / "t.jsonl"), GROUP]))
            print(
                {
                    k: (round(v[-1]["seconds"], 2), round(v[-1]["cpu_seconds"], 2))
                    for k, v in runs.items()
                },
                flush=True,
            )
        result: dict[str, Any] = {"records": records, "as_installed": AS_INSTALLED, "runs": runs}
        if repeat == 0:
            return result
        for name, measured in runs.items():
            result[name] = {
                "seconds": min(r["seconds"] for r in measured),
                "cpu_seconds": min(r.get("cpu_seconds", float("nan")) for r in measured),
                "peak_mb": max(r["peak_mb"] for r in measured),
            }
            for key in ("objects_read", "bytes_read", "cached_runs"):
                if key in measured[0]:
                    result[name][key] = measured[0][key]
        _compare(result, runs)
        return result
    finally:
        if data is None:
            shutil.rmtree(work, ignore_errors=True)


def _compare(result: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> None:
    """The ratios of ``result`` (the queries' best times), where both queries ran."""
    if "group" in runs and "duckdb" in runs:
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
    if "group_warm" in runs and "duckdb" in runs:
        result["warm_vs_duckdb_time"] = (
            result["group_warm"]["seconds"] / result["duckdb"]["seconds"]
        )
    if "tail" in runs and "group" in runs:
        result["tail_vs_group_time"] = result["tail"]["seconds"] / result["group"]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--memory-limit", default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--as-installed", action="store_true", help="hide pandas (a test extra)")
    parser.add_argument(
        "--data", type=Path, default=None, help="keep the generated data here and reuse it"
    )
    parser.add_argument(
        "--only", nargs="+", choices=[*QUERIES, "duckdb"], default=None, help="these queries"
    )
    args = parser.parse_args()
    global CODE, AS_INSTALLED
    CODE, AS_INSTALLED = args.code, args.as_installed
    settings = {} if args.memory_limit is None else {"memory_limit": args.memory_limit}
    results = []
    for records in args.records:
        results.append(bench(records, args.repeat, settings, args.data, args.only))
        if args.out is not None:  # after every size: a later one may take long
            args.out.write_text(json.dumps({"peak_rss_unit": "MB", "results": results}, indent=1))
    for r in results:
        measured = [
            f"{name} {r[name]['seconds']:.2f} s"
            f" ({r[name]['cpu_seconds']:.2f} CPU s) {r[name]['peak_mb']:.0f} MB"
            for name in [*QUERIES, "duckdb"]
            if name in r
        ]
        match = f"  match {r['answers_match']}" if "answers_match" in r else ""
        print(f"{r['records']:>11,}  " + "  ".join(measured) + match)
    if args.out is not None:
        args.out.write_text(json.dumps({"peak_rss_unit": "MB", "results": results}, indent=1))


if __name__ == "__main__":
    main()
