"""Bounded Nexmark q1, q2, q5, q7 over a stream with an Iceberg table, beside the log's JSON
path and DuckDB over the same Parquet files (issue 17's target).

Usage::

    python benchmarks/iceberg_bench.py [--bids 5000000] [--partitions 4] [--repeat 2]
        [--queries q1,q2,q5,q7] [--data-dir D] [--out benchmarks/results/iceberg.json]
        [--baseline DIR]

1. The Nexmark events are generated and produced into the log (as ``python -m
   benchmarks.nexmark`` does; a data directory holding them is reused), stream ``bid`` is
   declared ``WITH ('iceberg' = 'true')`` and one Tableflow pass appends every bid to its
   Iceberg table (timed: rows per second);
2. per query, each in a process of its own, round-robin ``--repeat`` times: its SELECT
   through ``sh.sql`` with ``SET 'read.iceberg' = 'true'`` (Parquet files, then the log tail:
   none here) and ``'false'`` (every record decoded from the log and its JSON parsed: the
   path before issue 17; the columnar cache of decoded runs is off, ``scan_cache_bytes=0``, so
   both read cold); the two answers are checked equal (DuckDB ``EXCEPT ALL`` both ways);
3. DuckDB (2 threads: the machine's cores) runs the suite's reference SQL for the query over
   the table's Parquet files (``read_parquet``), its row count checked against StreamHouse's;
4. with ``--baseline DIR`` (a copy of another commit's tree, e.g. ``git archive main | tar -x
   -C DIR``), the table path again with that code, in the same rounds (A/B alternating).

Times are each one's best (wall seconds, and CPU seconds of the process: all its threads,
``system_seconds`` the kernel's part); each run carries the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

import streamhouse  # noqa: E402
from benchmarks.nexmark import NexmarkConfig  # noqa: E402
from benchmarks.nexmark.__main__ import prepare  # noqa: E402
from benchmarks.nexmark.peers import reference_sql  # noqa: E402
from streamhouse.os_memory import keep_off_huge_pages  # noqa: E402

QUERIES = ["q1", "q2", "q5", "q7"]
BID_STREAM = """CREATE STREAM IF NOT EXISTS bid (
    auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR,
    dateTime TIMESTAMP(3), extra VARCHAR,
    WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH (topic = 'bid', format = 'json', 'iceberg' = 'true')"""
RUN_SCRIPT = """
import json, os, sys, time
import pyarrow.parquet as pq
import streamhouse
from benchmarks.nexmark.runner import query_file
from benchmarks.nexmark.udfs import register
sh = streamhouse.connect(sys.argv[1], scan_cache_bytes=0)
register(sh)
query = query_file(sys.argv[2])
for statement in query.ddl():
    sh.sql(statement)
sh.sql(f"SET 'read.iceberg' = '{sys.argv[3]}'")
load = os.getloadavg()[0]
t0, c0, s0 = time.perf_counter(), time.process_time(), os.times().system
rel = sh.sql(query.select())
table = rel.to_arrow_table()
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
system = os.times().system - s0
pq.write_table(table, sys.argv[4])
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "system_seconds": system,
    "rows": table.num_rows,
    "iceberg_files": rel.stats.iceberg_files, "objects_read": rel.stats.objects_read,
    "load": round(max(load, os.getloadavg()[0]), 2)}))
"""


def run(data_dir: Path, query: str, iceberg: bool, out: Path, root: Path = ROOT) -> dict[str, Any]:
    """One SELECT of ``query`` in a process of its own, with the code of tree ``root``."""
    command = [sys.executable, "-c", RUN_SCRIPT, str(data_dir), query, str(iceberg).lower()]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [*command, str(out)], capture_output=True, text=True, cwd=root, env=env, check=False
    )
    if done.returncode != 0:
        return {"status": "failed", "error": done.stderr[-1500:]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def paired(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[float]:
    """Wall time of each run of ``a`` over that of the same round's run of ``b``."""
    return [round(x["seconds"] / y["seconds"], 2) for x, y in zip(a, b, strict=False)]


def same_rows(left: Path, right: Path) -> bool:
    con = duckdb.connect()
    con.execute(f"CREATE VIEW l AS SELECT * FROM '{left}'")
    con.execute(f"CREATE VIEW r AS SELECT * FROM '{right}'")
    for a, b in (("l", "r"), ("r", "l")):
        (n,) = con.execute(f"SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})").fetchone()
        if n:
            return False
    return con.execute("SELECT (SELECT count(*) FROM l) = (SELECT count(*) FROM r)").fetchone()[0]


def duckdb_over_parquet(files: list[str], query: str) -> dict[str, Any]:
    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    listed = ", ".join(f"'{f}'" for f in files)
    con.execute(
        "CREATE VIEW bid AS SELECT auction, bidder, price, channel, url,"
        f' "dateTime"::TIMESTAMP AS "dateTime", extra FROM read_parquet([{listed}])'
    )
    load = os.getloadavg()[0]
    t0, c0, s0 = time.perf_counter(), time.process_time(), os.times().system
    rows = con.sql(reference_sql(query)).to_arrow_table().num_rows
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "system_seconds": os.times().system - s0,
        "rows": rows,
        "load": round(max(load, os.getloadavg()[0]), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bids", type=int, default=5_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/iceberg.json")
    parser.add_argument("--baseline", type=Path, help="another commit's tree, run alternately")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or ROOT / f"benchmarks/data/nexmark-{args.bids}-p{args.partitions}"
    config = NexmarkConfig.for_bids(args.bids)
    results: dict[str, Any] = {
        "bids": args.bids,
        "partitions": args.partitions,
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    results["load"] = prepare(data_dir, config, args.partitions)
    with streamhouse.connect(data_dir) as sh:
        sh.sql(BID_STREAM)
        if "'iceberg'" not in next(
            e.sql for e in sh.log.metadata.list_catalog() if e.name == "bid"
        ):
            sh.sql("ALTER STREAM bid SET ('iceberg' = 'true')")
        t0, load = time.perf_counter(), os.getloadavg()[0]
        appended = sh.append_iceberg(["bid"])
        seconds = time.perf_counter() - t0
        rows = appended.rows.get("bid", 0)
        results["append"] = {
            "rows": rows,
            "snapshots": appended.snapshots,
            "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds) if rows else None,
            "load": round(max(load, os.getloadavg()[0]), 2),
        }
        props = sh.iceberg_catalog()
    # connect() turned transparent huge pages off for this process, and its children would
    # inherit that: each query's process starts as one from a shell does, its code deciding
    keep_off_huge_pages(allowed=True)
    print(json.dumps(results["append"]), file=sys.stderr)
    from pyiceberg.catalog import load_catalog

    table = load_catalog(**props).load_table("streamhouse.bid")
    files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
    results["parquet_files"] = len(files)
    results["parquet_bytes"] = sum(os.path.getsize(f) for f in files)
    results["queries"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.queries.split(","):
            runs: dict[str, list[dict[str, Any]]] = {"iceberg": [], "log": [], "duckdb": []}
            if args.baseline:
                runs["baseline"] = []
            for _ in range(args.repeat):
                for path in ("iceberg", "log"):
                    out = Path(tmp) / f"{name}-{path}.parquet"
                    runs[path].append(run(data_dir, name, path == "iceberg", out))
                runs["duckdb"].append(duckdb_over_parquet(files, name))
                if args.baseline:
                    out = Path(tmp) / f"{name}-baseline.parquet"
                    runs["baseline"].append(run(data_dir, name, True, out, args.baseline))
                print(name, json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr)
            ok = all(r.get("status", "ok") == "ok" for rs in runs.values() for r in rs)
            best = {k: min(r["seconds"] for r in rs) for k, rs in runs.items()} if ok else {}
            results["queries"][name] = {
                "runs": runs,
                "best_seconds": best,
                "same_answer": ok
                and same_rows(
                    Path(tmp) / f"{name}-iceberg.parquet", Path(tmp) / f"{name}-log.parquet"
                ),
                "rows_match_duckdb": ok
                and runs["iceberg"][-1]["rows"] == runs["duckdb"][-1]["rows"],
                "speedup_vs_log": round(best["log"] / best["iceberg"], 2) if ok else None,
                "vs_duckdb": round(best["iceberg"] / best["duckdb"], 2) if ok else None,
                # each round's table run against the same round's DuckDB and baseline runs
                "vs_duckdb_by_round": paired(runs["iceberg"], runs["duckdb"]) if ok else None,
                "vs_baseline_by_round": paired(runs["iceberg"], runs.get("baseline", []))
                if ok
                else None,
                # CPU seconds (every thread of the process), best of each: the ratio other
                # processes' load shifts less than the wall one
                "cpu_vs_duckdb": round(
                    min(r["cpu_seconds"] for r in runs["iceberg"])
                    / min(r["cpu_seconds"] for r in runs["duckdb"]),
                    2,
                )
                if ok
                else None,
            }
    results["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, q in results["queries"].items():
        print(name, q["best_seconds"], q["speedup_vs_log"], q["vs_duckdb"], q["same_answer"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
