"""Scaling curves: one query's throughput and memory as partitions and data grow.

    python -m benchmarks.nexmark.scaling [--query tumble] [--partitions 1,10,100,1000]
        [--bids 1000000,5000000,10000000,20000000]

Each point is one run of the harness (:mod:`benchmarks.nexmark`): its own data directory
(generated and loaded once, then reused), StreamHouse bounded and continuous in fresh
processes, DuckDB over the same rows. The partition curve holds the data at the first
``--bids`` value; the data curve holds one partition. Results: ``results/scaling.json`` and a
Markdown table beside it. The key curve (1K -> 10M open keys) is ``benchmarks/windows_bench.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.nexmark.__main__ import ROOT
from benchmarks.nexmark.__main__ import main as run_harness

OUT = ROOT / "benchmarks" / "results" / "scaling.json"


def point(query: str, bids: int, partitions: int) -> dict[str, Any]:
    """One harness run of ``query`` over ``bids`` bids in ``partitions`` partitions."""
    with tempfile.TemporaryDirectory(prefix="scaling-") as scratch:
        out = Path(scratch) / "point.json"
        argv = ["--bids", str(bids), "--partitions", str(partitions), "--queries", query]
        run_harness([*argv, "--out", str(out)])
        results = json.loads(out.read_text())
    entry = results["queries"][query]
    return {
        "bids": bids,
        "partitions": partitions,
        "events": entry["events"],
        "load_events_per_second": results["load"].get("events_per_second"),
        **{
            mode: {
                k: entry.get(mode, {}).get(k)
                for k in (
                    "status",
                    "events_per_second",
                    "cpu_seconds",
                    "peak_rss_mb",
                    "load_before",
                )
            }
            for mode in ("bounded", "continuous", "duckdb_json")
        },
        "match": entry.get("match"),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Query `{results['query']}`; events/s (CPU s), peak RSS MB of the measuring process.",
        "",
        "| curve | bids | partitions | bounded | continuous | cont. peak RSS | DuckDB JSON | match |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for curve in ("partitions", "data"):
        for p in results[curve]:
            cells = []
            for mode in ("bounded", "continuous"):
                m = p[mode]
                ok = m.get("status") == "ok"
                cells.append(f"{m['events_per_second']:,} ({m['cpu_seconds']:.1f})" if ok else "-")
            rss = p["continuous"].get("peak_rss_mb")
            duck = p["duckdb_json"].get("events_per_second")
            lines.append(
                f"| {curve} | {p['bids']:,} | {p['partitions']:,} | {cells[0]} | {cells[1]} "
                f"| {f'{rss:,.0f}' if rss else '-'} | {f'{duck:,}' if duck else '-'} "
                f"| {p['match']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.scaling")
    parser.add_argument("--query", default="tumble")
    parser.add_argument("--partitions", default="1,10,100,1000")
    parser.add_argument("--bids", default="1000000,5000000,10000000,20000000")
    parser.add_argument("--curves", default="partitions,data")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--update", action="store_true", help="measure only these points again, keep the others"
    )
    args = parser.parse_args(argv)
    bids = [int(b) for b in args.bids.split(",")]
    command = " ".join(["python -m benchmarks.nexmark.scaling", *(argv or sys.argv[1:])])
    results: dict[str, Any] = {"query": args.query, "partitions": [], "data": [], "runs": []}
    if args.update and args.out.exists():
        results = json.loads(args.out.read_text())
    results["runs"] = [*results.get("runs", []), command]
    results["started"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    curves = args.curves.split(",")
    plan = [("partitions", bids[0], int(p)) for p in args.partitions.split(",")] * (
        "partitions" in curves
    ) + [("data", count, 1) for count in bids] * ("data" in curves)
    for curve, count, partitions in plan:
        measured = point(args.query, count, partitions)
        kept = [p for p in results[curve] if (p["bids"], p["partitions"]) != (count, partitions)]
        results[curve] = sorted([*kept, measured], key=lambda p: (p["bids"], p["partitions"]))
        args.out.write_text(json.dumps(results, indent=2))
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    args.out.write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
