"""Nexmark on StreamHouse: generate, load, run every query bounded (and continuous), vs DuckDB.

Usage::

    python -m benchmarks.nexmark --bids 1000000 [--data-dir D] [--out results.json]
        [--queries q0,q5,q7] [--continuous] [--partitions 1] [--events-per-second 10000]

Steps, each timed with ``time.perf_counter``:

1. generate the events (:mod:`benchmarks.nexmark.generator`) and produce them into topics
   ``person``, ``auction``, ``bid`` (and ``side_input``) of the data directory; a data directory
   that already holds the same config's events (``nexmark-config.json``) is reused as it is;
2. per query of ``queries/nexmark``: its SELECT through ``sh.sql`` (bounded: decode from the log,
   plan, run) unless its file says it cannot run bounded yet; with ``--continuous``, the file as
   a continuous query (``sh.start``, then ``run_until_caught_up(final=True)``) unless it cannot
   run yet;
3. the same answer from DuckDB over the same rows (in-memory Arrow tables: DuckDB's batch time,
   the practical limit), and whether the rows agree.

Throughput is events read per second: the rows of every stream the query reads. Results go to
stdout as a table and, with ``--out``, as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

import streamhouse
from benchmarks.nexmark import (
    QUERIES,
    QUERY_DIR,
    NexmarkConfig,
    generate_tables,
    load,
    nexmark_query,
)

log = logging.getLogger("benchmarks.nexmark")

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = "nexmark-config.json"
STREAM_NAMES = ("person", "auction", "bid", "side_input")


def _reference_module() -> Any:
    """The hand-written DuckDB answers (``tests/nexmark_reference.py``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import nexmark_reference
    finally:
        sys.path.pop(0)
    return nexmark_reference


def _streams_read(name: str) -> list[str]:
    """The streams a query file declares (each file declares the ones it reads)."""
    declared = re.findall(
        r"CREATE\s+(?:STREAM|TABLE)\s+IF\s+NOT\s+EXISTS\s+(\w+)", nexmark_query(name).text
    )
    return [s for s in STREAM_NAMES if s in declared]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _prepare(
    sh: streamhouse.StreamHouse, data_dir: Path, config: NexmarkConfig, partitions: int
) -> dict[str, Any]:
    marker = data_dir / CONFIG_FILE
    wanted = {**dataclasses.asdict(config), "partitions": partitions}
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored != wanted:
            raise SystemExit(
                f"{data_dir} holds Nexmark data of another config ({marker}); "
                "give a fresh --data-dir"
            )
        log.info("reusing the events in %s", data_dir)
        return {"reused": True}
    stats = load(sh, config, partitions=partitions)
    marker.write_text(json.dumps(wanted, indent=2))
    return {"reused": False, **stats.as_dict()}


def _bounded(sh: streamhouse.StreamHouse, name: str) -> tuple[dict[str, Any], pa.Table | None]:
    query = nexmark_query(name)
    if query.blocked_bounded:
        return {"status": "cannot run bounded yet", "reason": query.blocked_bounded}, None
    try:
        for statement in query.ddl():
            sh.sql(statement)
        table, seconds = _timed(lambda: sh.sql(query.select()).to_arrow_table())
    except Exception as exc:  # a benchmark records the failure and goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}, None
    return {"status": "ok", "seconds": seconds, "rows": table.num_rows}, table


def _continuous(sh: streamhouse.StreamHouse, name: str, run: str) -> dict[str, Any]:
    query = nexmark_query(name)
    if query.blocked:
        return {"status": "cannot run yet", "reason": query.blocked}
    rows = 0

    def count(table: pa.Table) -> None:
        nonlocal rows
        rows += table.num_rows

    try:
        started = time.perf_counter()
        running = sh.start(query.path, name=f"bench_{name}_{run}", on_results=count)
        try:
            running.run_until_caught_up(final=True)
        finally:
            running.stop()
        seconds = time.perf_counter() - started
    except Exception as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    if running.error is not None:
        return {"status": "failed", "error": repr(running.error)}
    return {"status": "ok", "seconds": seconds, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark", description=__doc__)
    parser.add_argument("--bids", type=int, default=1_000_000)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the data here")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--queries", help="comma-separated, e.g. q0,q5,q7 (default: all)")
    parser.add_argument("--continuous", action="store_true", help="also run each continuously")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--events-per-second", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    names = args.queries.split(",") if args.queries else list(QUERIES)
    unknown = [n for n in names if n not in QUERIES]
    if unknown:
        parser.error(f"unknown queries {unknown}; known: {', '.join(QUERIES)}")

    config = NexmarkConfig.for_bids(
        args.bids, seed=args.seed, events_per_second=args.events_per_second
    )
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="nexmark-")) if temporary else args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    reference = _reference_module()
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],
        },
        "config": dataclasses.asdict(config),
        "queries": {},
    }
    sh = streamhouse.connect(data_dir)
    try:
        results["load"] = _prepare(sh, data_dir, config, args.partitions)
        load_stats = results["load"]
        if not load_stats["reused"]:
            print(
                f"load: {load_stats['events']:,} events in {load_stats['seconds']:.2f} s "
                f"= {load_stats['events_per_second']:,} events/s "
                f"(generate {load_stats['generate_seconds']:.2f} s, "
                f"JSON {load_stats['encode_seconds']:.2f} s, "
                f"produce {load_stats['produce_seconds']:.2f} s)"
            )
        tables, seconds = _timed(lambda: generate_tables(config))
        results["reference_tables_seconds"] = seconds
        counts = {s: tables.table(s).num_rows for s in STREAM_NAMES}
        duck = reference.connect(tables)
        run = time.strftime("%Y%m%d%H%M%S")
        print(f"{'query':6} {'streamhouse bounded':>22} {'continuous':>22} {'duckdb':>22}  match")
        for name in names:
            events = sum(counts[s] for s in _streams_read(name))
            entry: dict[str, Any] = {"events": events}
            entry["bounded"], got = _bounded(sh, name)
            if args.continuous:
                entry["continuous"] = _continuous(sh, name, run)
            want, seconds = _timed(lambda n=name: reference.reference(duck, n))
            entry["duckdb"] = {"status": "ok", "seconds": seconds, "rows": want.num_rows}
            if got is not None:
                entry["match"] = got.num_columns == want.num_columns and reference.comparable(
                    name, got
                ) == reference.comparable(name, want)
            for mode in ("bounded", "continuous", "duckdb"):
                part = entry.get(mode)
                if part and part["status"] == "ok":
                    part["events_per_second"] = round(events / max(part["seconds"], 1e-9))
            entry["peak_rss_mb"] = round(_rss_mb())
            results["queries"][name] = entry
            print(
                f"{name:6} {_cell(entry['bounded']):>22} {_cell(entry.get('continuous')):>22} "
                f"{_cell(entry['duckdb']):>22}  {entry.get('match', '-')}",
                flush=True,
            )
    finally:
        sh.close()
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["peak_rss_mb"] = round(_rss_mb())
    results["query_dir"] = str(QUERY_DIR)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(f"results: {args.out}")
    return 0


def _cell(part: dict[str, Any] | None) -> str:
    if part is None:
        return "-"
    if part["status"] != "ok":
        return part["status"]
    return f"{part['events_per_second']:,} ev/s"


if __name__ == "__main__":
    sys.exit(main())
