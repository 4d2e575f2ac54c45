"""Bounded Nexmark A/B: this checkout against a base checkout (e.g. ``main``), and DuckDB's
``read_ndjson`` over the same rows, in alternating runs, cold and warm.

Usage::

    python -m benchmarks.nexmark.bounded_ab --data-dir D --base /path/to/main/checkout \\
        --queries q3,q5,hop --pairs 3 --out benchmarks/nexmark/bounded_ab.json

``D`` is a data directory the Nexmark harness loaded (``python -m benchmarks.nexmark
--modes bounded --data-dir D``: its log and its ``json/`` files); use a copy, since queries
write a scan cache under it. Each run is a process of its own: the DDL and the SELECT through
``sh.sql(...).to_arrow_table()``, as the harness's bounded mode times them. Cold runs have no
scan cache (``STREAMHOUSE_SCAN_CACHE_BYTES=0``: every segment decoded and parsed); warm runs
read the cache a first, uncounted run of the same side filled. Each run reports wall and CPU
seconds (all threads) and the CPU seconds of its busiest thread, a floor for the wall on an
idle host, since on a shared one the wall says more about the other processes. DuckDB runs
the reference SQL over ``read_ndjson`` views of the JSON files (its default threads, one per
core), one query per process, after one uncounted run of the same query.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[2]  # this checkout


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out[stat.parent.name] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _timed(run: Any) -> dict[str, Any]:
    before = _thread_cpu()
    wall, cpu = time.perf_counter(), time.process_time()
    rows = run()
    result = {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    after = _thread_cpu()
    result["busiest_thread_cpu_seconds"] = max(
        (v - before.get(k, 0.0) for k, v in after.items()), default=0.0
    )
    result["rows"] = rows
    result["load"] = round(os.getloadavg()[0], 2)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}


def one_streamhouse(data_dir: Path, name: str) -> dict[str, Any]:
    """One bounded query, in this process, with the ``streamhouse`` on ``sys.path``."""
    import streamhouse
    from benchmarks.nexmark.runner import query_file
    from benchmarks.nexmark.udfs import register as register_udfs

    query = query_file(name)
    sh = streamhouse.connect(data_dir)
    register_udfs(sh)
    for statement in query.ddl():  # views persist in the catalog: the DDL creates them again
        if view := re.match(r"\s*CREATE\s+VIEW\s+(\w+)", statement, re.IGNORECASE):
            sh.sql(f"DROP VIEW IF EXISTS {view.group(1)}")

    def run() -> int:
        for statement in query.ddl():
            sh.sql(statement)
        return sh.sql(query.select()).to_arrow_table().num_rows

    try:
        return _timed(run)
    finally:
        sh.close()


def one_duckdb(data_dir: Path, name: str) -> dict[str, Any]:
    from benchmarks.nexmark import peers

    paths = {p.stem: p for p in (data_dir / "json").glob("*.json")}
    con = peers.duckdb_over_json(paths)
    con.sql(peers.reference_sql(name)).to_arrow_table()  # uncounted: the files in page cache
    return _timed(lambda: con.sql(peers.reference_sql(name)).to_arrow_table().num_rows)


def _run(tree: Path, kind: str, data_dir: Path, name: str, cold: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if cold:
        env["STREAMHOUSE_SCAN_CACHE_BYTES"] = "0"
    else:
        env.pop("STREAMHOUSE_SCAN_CACHE_BYTES", None)
    command = [sys.executable, str(Path(__file__).resolve()), "--one", kind]
    command += ["--data-dir", str(data_dir), "--queries", name]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"status": "failed", "error": done.stderr.strip().splitlines()[-1:]}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get("status") == "ok"]
    return round(statistics.median(values), 3) if values else None


def _ratios(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str) -> list[float]:
    return [
        round(x[key] / y[key], 3)
        for x, y in zip(a, b, strict=False)
        if x.get("status") == y.get("status") == "ok" and y[key]
    ]


def compare(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"branch": HERE, "base": args.base.resolve()}
    out: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "branch": _head(HERE),
        "base": _head(trees["base"]),
        "cpus": os.cpu_count(),
        "queries": {},
    }
    for name in args.queries.split(","):
        entry: dict[str, Any] = {}
        for mode in args.modes.split(","):
            cold = mode == "cold"
            runs: dict[str, list[dict[str, Any]]] = {"branch": [], "base": [], "duckdb": []}
            if not cold:  # fill the cache: one uncounted run of each side
                for tree in trees.values():
                    _run(tree, "streamhouse", args.data_dir, name, cold)
            for _ in range(args.pairs):
                for side, tree in trees.items():
                    runs[side].append(_run(tree, "streamhouse", args.data_dir, name, cold))
                if cold:  # DuckDB parses the JSON each time: once per pair, beside the cold runs
                    runs["duckdb"].append(_run(HERE, "duckdb", args.data_dir, name, True))
            summary = {
                f"{side}_{key}": _median(runs[side], key)
                for side in runs
                for key in ("seconds", "cpu_seconds", "busiest_thread_cpu_seconds")
            }
            summary["branch_over_base_cpu"] = _ratios(runs["branch"], runs["base"], "cpu_seconds")
            summary["branch_over_base_wall"] = _ratios(runs["branch"], runs["base"], "seconds")
            entry[mode] = {"summary": summary, "runs": runs}
            print(name, mode, json.dumps(summary), flush=True)
        for mode in entry:
            cold_duck = entry.get("cold", {}).get("summary", {})
            summary = entry[mode]["summary"]
            for key in ("cpu_seconds", "seconds"):
                duck = cold_duck.get(f"duckdb_{key}")
                for side in ("branch", "base"):
                    mine = summary.get(f"{side}_{key}")
                    if duck and mine:
                        summary[f"{side}_over_duckdb_{key}"] = round(mine / duck, 2)
        out["queries"][name] = entry
        if args.out:
            args.out.write_text(json.dumps(out, indent=1) + "\n")
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


def _head(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.bounded_ab")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--base", type=Path, help="the checkout to compare with")
    parser.add_argument("--queries", required=True)
    parser.add_argument("--modes", default="cold,warm")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", choices=("streamhouse", "duckdb"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        sys.path.insert(0, os.getcwd())  # the checkout the run is of
        run = one_streamhouse if args.one == "streamhouse" else one_duckdb
        print(json.dumps(run(args.data_dir, args.queries)))
        return 0
    if args.base is None:
        parser.error("--base is required")
    compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
