"""Nexmark on StreamHouse, side by side with DuckDB and (optionally) PyFlink, in one run.

Usage::

    python -m benchmarks.nexmark --bids 5000000 [--peers flink] [--queries q0,q5,tumble]
        [--data-dir D] [--out benchmarks/results/nexmark.json] [--partitions 1]
        [--parallelism 1,2 --partitions 2]

Steps, each timed (wall seconds with ``time.perf_counter``, CPU seconds of the measuring
process, the 1-minute load average next to each figure: the machine is shared):

1. generate the events (:mod:`benchmarks.nexmark.generator`) and produce them into topics
   ``person``, ``auction``, ``bid`` and ``side_input`` of the data directory (default
   ``benchmarks/data/nexmark-<bids>-p<partitions>``); a directory that already holds the same
   config's events is reused. The load time is reported on its own;
2. the same rows as JSON lines files (``<data dir>/json``), for DuckDB's JSON reader and PyFlink;
3. per query (every ``queries/nexmark/qN.sql`` and the benchmark's own window queries
   ``tumble``, ``hop``, ``session`` in ``benchmarks/nexmark/queries``), each in a fresh process
   (:mod:`benchmarks.nexmark.runner`), so each has its own peak memory:

   - **bounded**: its SELECT through ``sh.sql(...).to_arrow_table()`` (unless its file says it
     cannot run bounded yet), compared with DuckDB's answer;
   - **continuous**: the file through ``sh.start`` and ``run_until_caught_up(final=True)`` over
     the loaded events (results go to the file's sink topic, as in production);
   - with ``--parallelism 1,2``, continuous again at each parallelism N > 1
     (``continuous_pN``): N task processes, CPU seconds and peak memory summed over the launcher
     and its tasks. Tasks split the source partitions, so load the events with ``--partitions``
     >= N (a stateless query's extra tasks otherwise have nothing to read);

4. DuckDB's batch answer over the same rows twice: from the generated Arrow tables in memory
   (no parsing: the practical limit) and from the JSON lines (``read_ndjson``: parsing included);
5. with ``--peers flink``, PyFlink over the JSON lines (filesystem source, window TVFs,
   WATERMARK, blackhole sink), at parallelism 1 and 2 (:mod:`benchmarks.nexmark.flink_peer`);
   or, with ``--peers-from EARLIER.json``, PyFlink's figures from an earlier run over the same
   events, marked as such in the results (PyFlink's runs take most of an hour).

Throughput is events read per second: the rows of every stream the query reads. Results: JSON
(``--out``), a Markdown table (same name, ``.md``) and a PNG chart (``.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.feather as feather

import streamhouse
from benchmarks.nexmark import QUERIES, NexmarkConfig, generate_tables, load, peers
from benchmarks.nexmark.report import carry_peers, markdown_table, write_chart
from benchmarks.nexmark.runner import query_file

log = logging.getLogger("benchmarks.nexmark")

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = "nexmark-config.json"
STREAM_NAMES = ("person", "auction", "bid", "side_input")
EXTRA_QUERIES = ("tumble", "hop", "session")
ALL_QUERIES = (*QUERIES, *EXTRA_QUERIES)
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "nexmark.json"
FLINK_VENV = ROOT / "benchmarks" / "data" / "flink-venv"


def streams_read(name: str) -> list[str]:
    """The streams a query file declares (each file declares the ones it reads)."""
    declared = re.findall(
        r"CREATE\s+(?:STREAM|TABLE)\s+IF\s+NOT\s+EXISTS\s+(\w+)", query_file(name).text
    )
    return [s for s in STREAM_NAMES if s in declared]


def machine() -> dict[str, Any]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) // 1024
    import duckdb
    import pyarrow

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mb": memory,
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "duckdb": duckdb.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def prepare(data_dir: Path, config: NexmarkConfig, partitions: int) -> dict[str, Any]:
    """Load the events into the log of ``data_dir``, unless it holds them already."""
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / CONFIG_FILE
    wanted = {**dataclasses.asdict(config), "partitions": partitions}
    if marker.exists():
        stored = json.loads(marker.read_text())
        if stored.get("config", stored) != wanted:
            raise SystemExit(f"{data_dir} holds Nexmark data of another config ({marker})")
        log.info("reusing the events in %s", data_dir)
        return {"reused": True, **stored.get("load", {})}
    sh = streamhouse.connect(data_dir)
    try:
        cpu = time.process_time()
        stats = load(sh, config, partitions=partitions).as_dict()
        stats["cpu_seconds"] = round(time.process_time() - cpu, 2)
        stats["load_average"] = round(os.getloadavg()[0], 2)
    finally:
        sh.close()
    marker.write_text(json.dumps({"config": wanted, "load": stats}, indent=2))
    return {"reused": False, **stats}


def run_streamhouse(
    data_dir: Path,
    name: str,
    mode: str,
    timeout: float,
    result_file: Path | None = None,
    parallelism: int = 1,
) -> dict[str, Any]:
    """One query in one mode, in a process of its own (:mod:`benchmarks.nexmark.runner`)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.nexmark.runner",
        "--data-dir",
        str(data_dir),
        "--query",
        name,
        "--mode",
        mode,
    ]
    if result_file is not None:
        command += ["--result-file", str(result_file)]
    if parallelism > 1:
        command += ["--parallelism", str(parallelism)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT)
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": timeout}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"status": "failed", "error": done.stderr.strip()[-1500:]}
    return json.loads(lines[-1])


def flink_queries(names: list[str]) -> dict[str, str]:
    """Flink SQL per query: its views and functions (not the stream DDL), then its SELECT."""
    out = {}
    for name in names:
        query = query_file(name)
        extra = [
            s
            for s in query.ddl()
            if not re.match(r"\s*CREATE\s+(STREAM|TABLE)\s", _code(s), re.IGNORECASE)
            and not re.match(r"\s*SET\s", _code(s), re.IGNORECASE)
        ]
        text = ";\n".join([*(_code(s) for s in extra), query.select()])
        # DATETIME is a reserved word in Flink 2's parser; the suite's column needs quoting.
        out[name] = re.sub(r"(?<!`)\bdateTime\b(?!`)", "`dateTime`", text)
    return out


def continuous_key(parallelism: int) -> str:
    """A query's entry for its continuous run at ``parallelism`` (``continuous`` at 1, as
    before parallel runs were measured; ``continuous_p2`` at 2)."""
    return "continuous" if parallelism == 1 else f"continuous_p{parallelism}"


def _code(text: str) -> str:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def _rate(entry: dict[str, Any] | None, events: int) -> None:
    if entry and entry.get("status") == "ok" and entry.get("seconds"):
        entry["events_per_second"] = round(events / entry["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark", description=__doc__)
    parser.add_argument("--bids", type=int, default=5_000_000)
    parser.add_argument("--data-dir", type=Path, help="default: benchmarks/data/nexmark-<bids>")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (.md, .png)")
    parser.add_argument("--queries", help=f"comma-separated (default: all of {ALL_QUERIES})")
    parser.add_argument("--modes", default="bounded,continuous", help="bounded,continuous")
    parser.add_argument("--peers", default="", help="'flink' adds PyFlink (DuckDB always runs)")
    parser.add_argument("--flink-parallelism", default="1,2")
    parser.add_argument(
        "--parallelism",
        default="1",
        help="StreamHouse continuous parallelisms, e.g. 1,2 (N > 1: N task processes; load the"
        " events with --partitions >= N)",
    )
    parser.add_argument("--flink-python", type=Path, help="a Python with apache-flink")
    parser.add_argument(
        "--peers-from",
        type=Path,
        help="take PyFlink's figures from an earlier results JSON of the same data (recorded "
        "as such in the results) instead of running it again",
    )
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--events-per-second", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    names = args.queries.split(",") if args.queries else list(ALL_QUERIES)
    unknown = [n for n in names if n not in ALL_QUERIES]
    if unknown:
        parser.error(f"unknown queries {unknown}; known: {', '.join(ALL_QUERIES)}")
    modes = [m for m in args.modes.split(",") if m]
    parallelisms = sorted({int(p) for p in args.parallelism.split(",") if p})
    if max(parallelisms) > args.partitions:
        log.warning(
            "parallelism %d over %d partition(s): tasks split the source partitions, so some"
            " have nothing to read (pass --partitions %d)",
            max(parallelisms),
            args.partitions,
            max(parallelisms),
        )

    config = NexmarkConfig.for_bids(
        args.bids, seed=args.seed, events_per_second=args.events_per_second
    )
    data_dir = args.data_dir or ROOT / "benchmarks" / "data" / (
        f"nexmark-{args.bids}-p{args.partitions}-s{args.seed}"
    )
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.nexmark", *(argv or sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "config": dataclasses.asdict(config),
        "partitions": args.partitions,
        "data_dir": str(data_dir),
        "queries": {},
    }
    results["load"] = prepare(data_dir, config, args.partitions)
    load_stats = results["load"]
    if "seconds" in load_stats:
        print(
            f"load ({'reused' if load_stats['reused'] else 'this run'}): "
            f"{load_stats['events']:,} events in {load_stats['seconds']:.1f} s = "
            f"{load_stats['events_per_second']:,} events/s",
            flush=True,
        )
    started = time.perf_counter()
    tables = generate_tables(config)
    results["generate_tables_seconds"] = round(time.perf_counter() - started, 2)
    counts = {s: tables.table(s).num_rows for s in STREAM_NAMES}
    results["rows"] = counts
    paths = peers.export_json(tables, data_dir / "json")
    duck_arrow = peers.duckdb_over_arrow(tables)
    duck_json = peers.duckdb_over_json(paths)

    header = f"{'query':8} {'bounded':>14} {'continuous':>14} {'duckdb arrow':>14} "
    print(header + f"{'duckdb json':>14}  match", flush=True)
    with tempfile.TemporaryDirectory(prefix="nexmark-results-") as scratch:
        for name in names:
            events = sum(counts[s] for s in streams_read(name))
            entry: dict[str, Any] = {"events": events, "streams": streams_read(name)}
            result_file = Path(scratch) / f"{name}.feather"
            if "bounded" in modes:
                entry["bounded"] = run_streamhouse(
                    data_dir, name, "bounded", args.timeout, result_file
                )
            if "continuous" in modes:
                for parallelism in parallelisms:
                    key = continuous_key(parallelism)
                    entry[key] = run_streamhouse(
                        data_dir, name, "continuous", args.timeout, parallelism=parallelism
                    )
            for label, con in (("duckdb_arrow", duck_arrow), ("duckdb_json", duck_json)):
                try:
                    entry[label], want = peers.time_duckdb(con, name)
                except Exception as exc:
                    entry[label], want = {"status": "failed", "error": str(exc)[:300]}, None
                if label == "duckdb_arrow" and want is not None and result_file.exists():
                    got = feather.read_table(result_file)
                    entry["match"] = got.num_rows == want.num_rows and peers.comparable(
                        name, got
                    ) == peers.comparable(name, want)
                    result_file.unlink()
            for parallelism in parallelisms:
                key = continuous_key(parallelism)
                cont = entry.get(key) or {}
                if cont.get("status") == "ok" and not cont.get("updating"):  # upserts: not rows
                    entry[f"match_{key}_rows"] = cont.get("rows") == entry["duckdb_arrow"].get(
                        "rows"
                    )
            keys = [continuous_key(p) for p in parallelisms]
            for mode in ("bounded", *keys, "duckdb_arrow", "duckdb_json"):
                _rate(entry.get(mode), events)
            results["queries"][name] = entry
            others = "".join(
                f"  p{p} {_cell(entry.get(continuous_key(p)))}" for p in parallelisms if p > 1
            )
            print(
                f"{name:8} {_cell(entry.get('bounded')):>14} {_cell(entry.get('continuous')):>14} "
                f"{_cell(entry['duckdb_arrow']):>14} {_cell(entry['duckdb_json']):>14}  "
                f"{entry.get('match', '-')}{others}",
                flush=True,
            )
            _write(results, args.out)

    if "flink" in args.peers.split(","):
        python = args.flink_python or peers.flink_python(FLINK_VENV, install=True)
        runnable = [
            n
            for n in names
            if not modes
            or any(
                outcome.get("status") == "ok"
                for key, outcome in results["queries"][n].items()
                for m in modes
                if key == m or key.startswith(f"{m}_p")  # continuous_p2: at parallelism 2
            )
            or n == "q11"
        ]
        results["flink"] = {}
        for parallelism in [int(p) for p in args.flink_parallelism.split(",")]:
            run = peers.run_flink(
                python, paths, flink_queries(runnable), parallelism, args.timeout * len(runnable)
            )
            results["flink"][f"p{parallelism}"] = {k: v for k, v in run.items() if k != "queries"}
            for name, outcome in run.get("queries", {}).items():
                _rate(outcome, results["queries"][name]["events"])
                results["queries"][name][f"flink_p{parallelism}"] = outcome
                print(f"flink p{parallelism} {name:8} {_cell(outcome):>14}", flush=True)
            _write(results, args.out)
    elif args.peers_from is not None:
        carry_peers(results, json.loads(args.peers_from.read_text()), args.peers_from)
        _write(results, args.out)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    _write(results, args.out)
    print(f"results: {args.out} (+ .md, .png)")
    return 0


def _write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown_table(results))
    write_chart(results, out.with_suffix(".png"))


def _cell(part: dict[str, Any] | None) -> str:
    if part is None:
        return "-"
    if part.get("status") != "ok":
        return str(part.get("status"))
    return f"{part['events_per_second']:,}"


if __name__ == "__main__":
    sys.exit(main())
