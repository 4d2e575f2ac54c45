"""Nexmark on PyFlink, the peer: run by a Python that has ``apache-flink`` (not StreamHouse's).

Reads a JSON spec on stdin (written by :func:`benchmarks.nexmark.peers.run_flink`)::

    {"parallelism": 2, "sources": {"bid": "/path/bid.json", ...},
     "schemas": {"bid": [["auction", "BIGINT"], ...], ...},
     "queries": {"q5": "SELECT ...", "q12": "CREATE VIEW ...;\\nSELECT ..."}}

and prints one JSON object: per query its status and seconds. One streaming TableEnvironment
(one JVM) serves every query: each stream is a ``filesystem`` table of JSON lines with
``WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND`` (the Nexmark DDL), each query
writes to a ``blackhole`` sink (as the nexmark/nexmark suite does), and its time runs from
submitting the job to its end. The sources are bounded, so each job ends, with a final
watermark that closes every window. Peak resident memory is the JVM's (``VmHWM``), sampled at
the end of each query.

This file imports nothing from StreamHouse: it runs in another virtual environment.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _descendants() -> list[tuple[str, list[str], str]]:
    """(pid, fields of /proc/pid/stat after the name, name) of every process below this one."""
    table: dict[str, tuple[str, list[str], str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        table[stat.parent.name] = (stat.parent.name, text[text.rindex(")") + 2 :].split(), name)
    found, frontier = [], {str(os.getpid())}
    while frontier:
        children = [entry for entry in table.values() if entry[1][1] in frontier]
        found += children
        frontier = {pid for pid, _, _ in children}
    return found


def _jvm_peak_mb() -> float | None:
    """Peak resident memory (VmHWM) of the JVM this process started."""
    peaks = []
    for pid, _, name in _descendants():
        if name != "java":
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks) if peaks else None


def _jvm_cpu_seconds() -> float | None:
    """CPU seconds (user + system) the JVM this process started has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    times = [
        (int(fields[11]) + int(fields[12])) / tick
        for _, fields, name in _descendants()
        if name == "java"
    ]
    return sum(times) if times else None


def _own_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    spec = json.loads(sys.stdin.read())
    from pyflink.table import EnvironmentSettings, TableDescriptor, TableEnvironment
    from pyflink.version import __version__

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(spec["parallelism"]))
    config.set("table.exec.resource.default-parallelism", str(spec["parallelism"]))
    config.set("pipeline.object-reuse", "true")
    for stream, path in spec["sources"].items():
        columns = [f"`{name}` {kind}" for name, kind in spec["schemas"][stream]]
        if any(name == "dateTime" for name, _ in spec["schemas"][stream]):
            columns.append("WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '4' SECOND")
        env.execute_sql(
            f"CREATE TABLE {stream} ({', '.join(columns)}) WITH ("
            f"'connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json')"
        )
    results: dict[str, dict] = {}
    for name, text in spec["queries"].items():
        statements = [s.strip() for s in text.split(";\n") if s.strip()]
        wall = time.perf_counter()
        cpu = _jvm_cpu_seconds()
        try:
            for statement in statements[:-1]:
                env.execute_sql(statement)
            table = env.sql_query(statements[-1])
            job = table.execute_insert(TableDescriptor.for_connector("blackhole").build())
            job.wait()
            seconds = time.perf_counter() - wall
            after = _jvm_cpu_seconds()
            results[name] = {
                "status": "ok",
                "seconds": seconds,
                "jvm_cpu_seconds": after - cpu if after is not None and cpu is not None else None,
                "jvm_peak_rss_mb": _jvm_peak_mb(),
                "load": round(os.getloadavg()[0], 2),
            }
        except Exception as exc:  # a benchmark records the failure and goes on
            message = str(exc).strip().splitlines()
            results[name] = {"status": "failed", "error": " ".join(message[:3])[:500]}
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "status": "ok",
                "flink_version": __version__,
                "parallelism": spec["parallelism"],
                "python_peak_rss_mb": _own_peak_mb(),
                "queries": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
