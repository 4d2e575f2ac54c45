"""Log throughput through the Python API: produce, decode, fetch, and one GROUP BY vs DuckDB.

Usage: python benchmarks/log_bench.py [--records N] [--out benchmarks/results/log_bench.json]

100-byte JSON records (values passed as bytes), LZ4, 8 partitions, the local-directory object
store in a temporary data directory. Phases, each timed with ``time.perf_counter``:

- produce: ``sh.produce(topic, values)`` in calls of ``--produce-chunk`` records, each
  returning once durable;
- decode: :func:`decode_batches` over every stored run (segment -> Arrow);
- fetch: ``Log.fetch`` byte path, partition by partition, 1 MiB per request;
- sql: ``SELECT k, count(*), sum(x) FROM t GROUP BY k`` through ``sh.sql`` (a declared stream),
  against DuckDB's ``read_ndjson`` over the same values written as a JSON-lines file.

Read phases run on a freshly opened connection (an empty object cache; the OS page cache is
warm), first run and best of ``--repeat``. The 1-minute load average is recorded with each
figure: the machine is shared, so compare figures taken under similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

import streamhouse
from streamhouse.log.records import decode_batches, split_batches
from streamhouse.sql.source import decode_json, read_records, read_source, with_metadata

TOPIC = "bench"
PARTITIONS = 8
VALUE_BYTES = 100
KEYS = 1000
QUERY = "SELECT k, count(*) AS n, sum(x) AS total FROM t GROUP BY k"
VALUE_SCHEMA = pa.schema([("k", pa.string()), ("x", pa.int64())])
DUCKDB_QUERY = "SELECT k, count(*) AS n, sum(x) AS total FROM read_ndjson('{path}') GROUP BY k"
TARGETS = {
    "produce_records_per_s": 300_000,
    "decode_records_per_s": 1_000_000,
}


def load() -> float:
    return round(os.getloadavg()[0], 2)


WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "click",
    "view",
    "cart",
    "checkout",
    "search",
    "home",
    "product",
    "category",
    "mobile",
    "desktop",
    "tablet",
    "chrome",
    "firefox",
    "safari",
]


def make_values(n: int) -> list[bytes]:
    """``n`` JSON objects of exactly VALUE_BYTES bytes: k (1,000 keys), x, id, ts, and text.

    The text is random words, so LZ4 compresses the values about as much as real events
    (roughly 2x), not the 10x+ a constant padding would give.
    """
    rng = np.random.default_rng(42)
    text = " ".join(rng.choice(WORDS, size=1 << 20).tolist())
    starts = rng.integers(0, len(text) - VALUE_BYTES, size=n).tolist()
    out = []
    base = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    for i, start in enumerate(starts):
        head = (
            f'{{"k":"key{(i * 7919) % KEYS:04d}","x":{i % 997},"id":{i},'
            f'"ts":{base + i * 3},"text":"'
        )
        pad = VALUE_BYTES - len(head) - 2
        out.append((head + text[start : start + pad] + '"}').encode())
    return out


@dataclass(frozen=True, order=True)
class Timing:
    """Wall-clock seconds and CPU seconds of this process (all its threads) for one call.

    CPU seconds hardly move with the load of other processes; wall seconds do.
    """

    wall: float
    cpu: float


def timed(fn: Callable[[], Any]) -> tuple[Timing, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return Timing(time.perf_counter() - t0, time.process_time() - c0), result


def figure(records: int, timing: Timing) -> dict[str, float]:
    return {
        "records_per_s": round(records / timing.wall),
        "seconds": round(timing.wall, 3),
        "cpu_seconds": round(timing.cpu, 3),
        "load_1m": load(),
    }


def bench_produce(sh: streamhouse.StreamHouse, values: list[bytes], chunk: int) -> dict:
    def run() -> None:
        for start in range(0, len(values), chunk):
            sh.produce(TOPIC, values[start : start + chunk])

    seconds, _ = timed(run)
    return figure(len(values), seconds)


def stored_runs(sh: streamhouse.StreamHouse) -> list[bytes]:
    return [data for p in range(PARTITIONS) for _, data in sh.log.reader.runs(TOPIC, p)]


def bench_decode(sh: streamhouse.StreamHouse, n: int, repeat: int) -> dict:
    read, runs = timed(lambda: stored_runs(sh))
    out = {"read_runs_s": round(read.wall, 3), "stored_bytes": sum(len(r) for r in runs)}
    times = []
    for _ in range(repeat):
        seconds, table = timed(lambda: decode_batches(runs))
        assert table.num_rows == n, (table.num_rows, n)
        times.append(seconds)
        del table
    out |= figure(n, min(times))
    out["first_s"] = round(times[0].wall, 3)
    return out


def bench_fetch(sh: streamhouse.StreamHouse, n: int, max_bytes: int) -> dict:
    def run() -> tuple[int, int, int]:
        records = requests = size = 0
        for p in range(PARTITIONS):
            offset = 0
            while True:
                result = sh.log.fetch(TOPIC, p, offset, max_bytes)
                if not result.records:
                    break
                requests += 1
                size += len(result.records)
                last = None
                for _, _, header in split_batches(result.records):
                    if header.last_offset >= offset:
                        records += header.last_offset + 1 - max(offset, header.base_offset)
                    last = header
                offset = last.last_offset + 1
        return records, requests, size

    seconds, (records, requests, size) = timed(run)
    assert records == n, (records, n)
    out = figure(records, seconds)
    out |= {"requests": requests, "mb_per_s": round(size / seconds.wall / 1e6, 1)}
    return out


def run_datafusion(table: pa.Table) -> pa.Table:
    import datafusion

    ctx = datafusion.SessionContext()
    ctx.register_record_batches("t", [table.to_batches()])
    return ctx.sql(QUERY).to_arrow_table()


def sql_breakdown(sh: streamhouse.StreamHouse) -> dict:
    """Where a query's time goes: read runs + decode, JSON parse, metadata columns, DataFusion."""
    out: dict[str, float] = {}
    t, records = timed(lambda: read_records(sh.log, TOPIC))
    out |= {"read_records_s": round(t.wall, 3), "read_records_cpu_s": round(t.cpu, 3)}
    t, (parsed, rows, _) = timed(lambda: decode_json(records["value"], VALUE_SCHEMA))
    out |= {"decode_json_s": round(t.wall, 3), "decode_json_cpu_s": round(t.cpu, 3)}
    t, table = timed(lambda: with_metadata(parsed, records, rows))
    out |= {"with_metadata_s": round(t.wall, 3), "with_metadata_cpu_s": round(t.cpu, 3)}
    t, _ = timed(lambda: run_datafusion(table))
    out |= {"datafusion_s": round(t.wall, 3), "datafusion_cpu_s": round(t.cpu, 3)}
    records = parsed = table = None
    t, _ = timed(lambda: read_source(sh.log, TOPIC, VALUE_SCHEMA))
    out |= {"read_source_pipelined_s": round(t.wall, 3), "read_source_cpu_s": round(t.cpu, 3)}
    out["load_1m"] = load()
    return out


def bench_pipelined(sh: streamhouse.StreamHouse, n: int, repeat: int) -> tuple[dict, pa.Table]:
    """The query as the engine runs it with read_source (decode and JSON parse overlapped)."""

    def run() -> pa.Table:
        return run_datafusion(read_source(sh.log, TOPIC, VALUE_SCHEMA, {"k", "x"}).table)

    times = []
    answer = None
    for _ in range(repeat):
        seconds, answer = timed(run)
        times.append(seconds)
    assert answer is not None
    out = figure(n, min(times))
    out["first_s"] = round(times[0].wall, 3)
    return out, answer


def bench_sql(sh: streamhouse.StreamHouse, n: int, repeat: int) -> tuple[dict, pa.Table]:
    sh.sql(f"CREATE STREAM t (k VARCHAR, x BIGINT, id BIGINT) WITH (topic='{TOPIC}')")
    times = []
    answer = None
    for _ in range(repeat):
        seconds, answer = timed(lambda: sh.sql(QUERY).to_arrow_table())
        times.append(seconds)
    assert answer is not None
    assert sum(answer["n"].to_pylist()) == n
    out = figure(n, min(times))
    out["first_s"] = round(times[0].wall, 3)
    return out, answer


def bench_duckdb(path: Path, n: int, repeat: int) -> tuple[dict, pa.Table]:
    times = []
    answer = None
    con = duckdb.connect()
    for _ in range(repeat):
        seconds, answer = timed(lambda: con.sql(DUCKDB_QUERY.format(path=path)).to_arrow_table())
        times.append(seconds)
    assert answer is not None
    out = figure(n, min(times))
    out["first_s"] = round(times[0].wall, 3)
    out["threads"] = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    return out, answer


def same_answer(a: pa.Table, b: pa.Table) -> bool:
    a, b = a.sort_by("k"), b.sort_by("k")
    return (
        a["k"].to_pylist() == b["k"].to_pylist()
        and np.array_equal(a["n"].to_numpy(), b["n"].to_numpy())
        and np.array_equal(a["total"].to_numpy(), b["total"].to_numpy())
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5_000_000)
    parser.add_argument("--produce-chunk", type=int, default=100_000)
    parser.add_argument("--fetch-bytes", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/log_bench.json")
    parser.add_argument("--skip", nargs="*", default=[], help="phases to skip: fetch sql breakdown")
    args = parser.parse_args(argv)
    n = args.records

    results: dict[str, Any] = {
        "records": n,
        "value_bytes": VALUE_BYTES,
        "partitions": PARTITIONS,
        "compression": "lz4",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "duckdb": duckdb.__version__,
            "load_1m_at_start": load(),
        },
    }

    def report(name: str, value: dict) -> None:
        results[name] = value
        print(f"{name:10s} {json.dumps(value)}", flush=True)

    with tempfile.TemporaryDirectory(prefix="sh-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        t, values = timed(lambda: make_values(n))
        print(f"generated {n:,} values in {t.wall:.1f}s", file=sys.stderr)
        jsonl = Path(tmp) / "values.jsonl"
        with jsonl.open("wb") as f:
            f.write(b"\n".join(values))
            f.write(b"\n")

        with streamhouse.connect(data_dir) as sh:
            sh.create_topic(TOPIC, partitions=PARTITIONS)
            report("produce", bench_produce(sh, values, args.produce_chunk))
        del values

        with streamhouse.connect(data_dir) as sh:  # an empty object cache
            report("decode", bench_decode(sh, n, args.repeat))
        if "fetch" not in args.skip:
            with streamhouse.connect(data_dir) as sh:
                report("fetch", bench_fetch(sh, n, args.fetch_bytes))
        if "breakdown" not in args.skip:
            with streamhouse.connect(data_dir) as sh:
                report("sql_breakdown", sql_breakdown(sh))
        if "sql" not in args.skip:
            with streamhouse.connect(data_dir) as sh:
                sql, ours = bench_sql(sh, n, args.repeat)
            report("sql", sql)
            with streamhouse.connect(data_dir) as sh:
                pipelined, ours_pipelined = bench_pipelined(sh, n, args.repeat)
            report("sql_pipelined", pipelined)
            duck, theirs = bench_duckdb(jsonl, n, args.repeat)
            report("duckdb", duck)
            results["sql_vs_duckdb"] = round(sql["seconds"] / duck["seconds"], 2)
            results["sql_pipelined_vs_duckdb"] = round(pipelined["seconds"] / duck["seconds"], 2)
            results["sql_vs_duckdb_cpu"] = round(sql["cpu_seconds"] / duck["cpu_seconds"], 2)
            results["sql_answer_matches_duckdb"] = same_answer(ours, theirs) and same_answer(
                ours_pipelined, theirs
            )
            print(
                f"sql/duckdb {results['sql_vs_duckdb']}x, pipelined "
                f"{results['sql_pipelined_vs_duckdb']}x "
                f"(answers match: {results['sql_answer_matches_duckdb']})"
            )

    results["targets"] = {
        "produce_records_per_s": [
            TARGETS["produce_records_per_s"],
            results["produce"]["records_per_s"] >= TARGETS["produce_records_per_s"],
        ],
        "decode_records_per_s": [
            TARGETS["decode_records_per_s"],
            results["decode"]["records_per_s"] >= TARGETS["decode_records_per_s"],
        ],
    }
    if "sql_vs_duckdb" in results:
        results["targets"]["sql_within_3x_duckdb"] = [3, results["sql_vs_duckdb"] <= 3]
        results["targets"]["sql_pipelined_within_3x_duckdb"] = [
            3,
            results["sql_pipelined_vs_duckdb"] <= 3,
        ]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
