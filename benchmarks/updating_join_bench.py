"""Cost of joins over updating inputs (issue 13, retractions end to end): state size and time.

Usage::

    python benchmarks/updating_join_bench.py [--rows 200000] [--keys 1000] [--batch 10000]
        [--out benchmarks/results/updating_join_bench.json]

``--rows`` events (half into stream ``a(k, t, v)``, half into ``b(k, t, w)``, keys drawn
uniformly from ``--keys``) are produced into a fresh data directory, then each query below runs
continuously into a topic sink in micro-batches of at most ``--batch`` records until caught up:

- ``one_aggregate``: the count per key of ``a`` alone (a GroupAggregate: the baseline the
  join adds to);
- ``two_aggregates``: two updating aggregates joined on their key (a ChangelogJoin of two
  GroupAggregates): its state is one row per key per side, whatever the input size;
- ``stream_to_aggregate``: the b events enriched with a's current count per key (a ChangelogJoin
  of a stream and a GroupAggregate): it keeps every b event, and every change of a count
  re-emits the b events of its key;
- ``aggregate_over_join``: an aggregate over ``two_aggregates`` (a Recompute over the join's
  changelog).

Reported per query: wall and CPU seconds (with the 1-minute load average: the machine is
shared), micro-batches, input rows per second, output records (upserts and tombstones), the rows
the operators hold, RocksDB's live-data estimate and the state directory's bytes on disk, and
whether the sink read as a table equals DuckDB's answer over the same rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamhouse  # noqa: E402
from streamhouse.runtime.launch import start_query  # noqa: E402
from streamhouse.sql.engine import latest_per_key  # noqa: E402

COUNTS = "(SELECT k, COUNT(*) AS n FROM a GROUP BY k)"
TOTALS = "(SELECT k, SUM(w) AS total FROM b GROUP BY k)"
QUERIES = {
    "one_aggregate": "SELECT k, COUNT(*) AS n FROM a GROUP BY k",
    "two_aggregates": f"SELECT x.k, x.n, y.total FROM {COUNTS} AS x JOIN {TOTALS} AS y ON x.k = y.k",
    "stream_to_aggregate": f"SELECT b.k, b.t, b.w, x.n FROM {COUNTS} AS x JOIN b ON x.k = b.k",
    "aggregate_over_join": (
        f"SELECT x.n, COUNT(*) AS keys, SUM(y.total) AS total FROM {COUNTS} AS x"
        f" JOIN {TOTALS} AS y ON x.k = y.k GROUP BY x.n"
    ),
}
STREAMS = [
    f"""CREATE STREAM {name} (k STRING, t TIMESTAMP(3), {value} BIGINT,
        WATERMARK FOR t AS t - INTERVAL '2' SECOND) WITH (topic = '{name}', format = 'json',
        partitions = '4')"""
    for name, value in (("a", "v"), ("b", "w"))
]
T0 = 1_767_225_600_000


def events(rows: int, keys: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "k": pa.array([f"k{i:05d}" for i in rng.integers(0, keys, rows)]),
            "t": pa.array(T0 + np.arange(rows, dtype=np.int64) * 10, pa.int64()),
            "x": pa.array(rng.integers(0, 100, rows)),
        }
    )


def produce(sh: Any, name: str, table: pa.Table, value: str) -> None:
    rows = table.rename_columns(["k", "t", value]).to_pylist()
    for start in range(0, len(rows), 50_000):
        chunk = rows[start : start + 50_000]
        sh.produce(name, chunk, key=[r["k"] for r in chunk])


def _normal(row: dict[str, Any]) -> str:
    """A result row as comparable text: numbers as floats, the event time left out."""
    return json.dumps(
        {
            c: float(v) if isinstance(v, int | float | Decimal) else v
            for c, v in row.items()
            if c != "t"
        },
        sort_keys=True,
    )


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(sh: Any, name: str, sql: str, batch: int, inputs: dict[str, pa.Table]) -> dict[str, Any]:
    query = start_query(
        sh.engine,
        f"INSERT INTO {name}_out {sql}",
        name=name,
        state_root=sh.settings.data_dir / "queries",
        start=False,
    )
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    steps = 0
    while query.step(max_records=batch):
        steps += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    held = query.operator.state_size + sum(op.state_size for _, op in query.children.values())
    live = query.store.size_bytes()
    status = query.status()
    query.stop()
    records = sh.fetch(f"{name}_out")
    kept = latest_per_key(records)
    got = sorted(_normal(json.loads(v)) for v in records["value"].take(pa.array(kept)).to_pylist())
    con = duckdb.connect()
    con.register("a", inputs["a"].rename_columns(["k", "t", "v"]))
    con.register("b", inputs["b"].rename_columns(["k", "t", "w"]))
    want = sorted(_normal(r) for r in con.sql(sql).to_arrow_table().to_pylist())
    con.close()
    return {
        "query": sql,
        "load_1m": round(load, 2),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "micro_batches": steps,
        "input_rows_per_s": round(status["rows_in"] / wall),
        "output_records": records.num_rows,
        "tombstones": records["value"].null_count,
        "rows_held": held,
        "rocksdb_live_bytes": live,
        "state_dir_bytes": directory_bytes(query.store.path),
        "matches_duckdb": got == want,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--only", default=",".join(QUERIES))  # comma-separated names
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    inputs = {"a": events(args.rows // 2, args.keys, 1), "b": events(args.rows // 2, args.keys, 2)}
    results: dict[str, Any] = {"rows": args.rows, "keys": args.keys, "batch": args.batch}
    with tempfile.TemporaryDirectory() as directory, streamhouse.connect(directory) as sh:
        for statement in STREAMS:
            sh.sql(statement)
        produce(sh, "a", inputs["a"], "v")
        produce(sh, "b", inputs["b"], "w")
        for name in args.only.split(","):
            results[name] = run(sh, name, QUERIES[name], args.batch, inputs)
            print(name, json.dumps(results[name]), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
