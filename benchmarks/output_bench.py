"""``streamhouse query`` output of a large result in every format: time to the first byte, total
time, CPU seconds and peak memory (issue 21, part 6).

Usage::

    python benchmarks/output_bench.py [--rows 2000000] [--repeat 5]
        [--out benchmarks/results/output.json]

A fresh data directory gets a 4-partition topic of ``--rows`` JSON records
(``{"i": 17, "s": "name-17", "x": 8.5}``). Then ``SELECT * FROM big ORDER BY i`` runs as
``python -m streamhouse query`` in a new process per format (table, csv, json, arrow), stdout a
pipe read to its end. Per run: seconds from the start to the first byte on stdout and to the
end, the process's CPU seconds and peak resident memory (``ru_maxrss`` from ``wait4``), bytes
written. ``api`` is the same query through the Python API into one Arrow table
(``to_arrow_table()``), in its own process: the query's time without any output. The commands
run round-robin ``--repeat`` times, so a busy spell of the (shared) machine hits every format
alike; times are each format's best run, memory its largest, and the table/csv first-byte ratio
is also given as the median of the rounds' ratios. Every run carries the 1-minute load average.
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

import streamhouse  # noqa: E402

SQL = "SELECT * FROM big ORDER BY i"
FORMATS = ("table", "csv", "json", "arrow")
PRODUCE_CHUNK = 200_000
API_SCRIPT = (
    "import sys, time, streamhouse\n"
    "sh = streamhouse.connect(sys.argv[1])\n"
    "t0 = time.perf_counter()\n"
    "rows = sh.sql(sys.argv[2]).to_arrow_table().num_rows\n"
    "print(rows, time.perf_counter() - t0)\n"
)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_data(data_dir: Path, rows: int) -> None:
    with streamhouse.connect(data_dir) as sh:
        sh.create_topic("big", partitions=4)
        for start in range(0, rows, PRODUCE_CHUNK):
            stop = min(rows, start + PRODUCE_CHUNK)
            sh.produce(
                "big", [{"i": i, "s": f"name-{i % 1000}", "x": i * 0.5} for i in range(start, stop)]
            )


def measure(command: list[str]) -> dict[str, Any]:
    """Run ``command``; time its first byte and its end on stdout, its CPU and peak memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = load()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.read(1)
    first_byte = time.perf_counter() - started
    size = len(first)
    last = first
    while chunk := proc.stdout.read(1 << 20):
        size += len(chunk)
        last = chunk
    ended = time.perf_counter() - started
    stderr = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed: {stderr}")
    return {
        "first_byte_seconds": round(first_byte, 3),
        "seconds": round(ended, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "bytes": size,
        "stderr": stderr.strip().splitlines()[-1:] if stderr.strip() else [],
        "tail": last[-80:].decode(errors="replace") if size else "",
        "load_before": before,
        "load_after": load(),
    }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run's figures, with the largest peak memory of all runs."""
    fastest = min(runs, key=lambda r: r["seconds"])
    return {
        **fastest,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "runs_first_byte_seconds": [r["first_byte_seconds"] for r in runs],
        "runs_seconds": [r["seconds"] for r in runs],
        "runs_cpu_seconds": [r["cpu_seconds"] for r in runs],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "output.json"))
    args = parser.parse_args(argv)

    report: dict[str, Any] = {
        "command": "python benchmarks/output_bench.py " + " ".join(argv or sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "sql": SQL,
        "load_average_at_start": list(os.getloadavg()),
    }
    with tempfile.TemporaryDirectory(prefix="output-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        t0 = time.perf_counter()
        make_data(data_dir, args.rows)
        report["produce_seconds"] = round(time.perf_counter() - t0, 1)
        cli = [sys.executable, "-m", "streamhouse", "--data-dir", str(data_dir), "query", SQL]
        api = [sys.executable, "-c", API_SCRIPT, str(data_dir), SQL]
        commands = [("api", api)] + [(f, [*cli, "--format", f]) for f in FORMATS]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in commands}
        for round_ in range(args.repeat):  # round-robin: a busy spell hits every format alike
            for name, command in commands:
                r = measure(command)
                runs[name].append(r)
                print(
                    f"{round_} {name:6} first byte {r['first_byte_seconds']:6.2f} s"
                    f"  end {r['seconds']:6.2f} s  cpu {r['cpu_seconds']:6.2f} s"
                    f"  peak {r['peak_rss_mb']:7.1f} MB  {r['bytes']:>11,} bytes"
                    f"  load {r['load_before']}",
                    flush=True,
                )
        report["results"] = {name: best(r) for name, r in runs.items()}
    ratios = sorted(
        t["first_byte_seconds"] / c["first_byte_seconds"]
        for t, c in zip(runs["table"], runs["csv"], strict=True)
    )
    table, csv = report["results"]["table"], report["results"]["csv"]
    report["table_first_byte_over_csv_first_byte"] = {
        "best_over_best": round(table["first_byte_seconds"] / csv["first_byte_seconds"], 2),
        "median_of_rounds": round(ratios[len(ratios) // 2], 2),
    }
    print(f"table's first byte / csv's: {report['table_first_byte_over_csv_first_byte']}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
