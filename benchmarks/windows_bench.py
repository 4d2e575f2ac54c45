"""Window aggregation benchmarks (issue 4): TUMBLE, HOP and SESSION on Nexmark bids, and state.

Usage::

    python benchmarks/windows_bench.py [--bids 5000000] [--peers flink]
        [--curve 1000,10000,100000,1000000,10000000] [--e2e-max 1000000]
        [--out benchmarks/results/windows_bench.json]

Three parts, every figure with the 1-minute load average and CPU seconds next to it (the
machine is shared, so wall-clock figures move with the load):

1. **queries**: the benchmark window queries of ``benchmarks/nexmark/queries`` over the bids in
   the log (JSON), through :mod:`benchmarks.nexmark` (``tumble``: COUNT and SUM per auction per
   10 s; ``hop``: COUNT per auction, 2 s slide, 10 s size; ``session``: COUNT per bidder session,
   10 s gap), continuous and bounded, against DuckDB over the same rows;
2. **operator**: the same three plans fed the generated bids as Arrow batches of 200,000 rows
   (the per-batch SQL projection on DataFusion, window assignment, partial aggregation, state
   merge, RocksDB commit, emission, the final SELECT): the window engine's own speed, without
   reading the log or parsing JSON;
3. **state**: resident memory as open window state grows, each size in a fresh process:
   ``e2e`` produces one record per key (``{"k":..,"v":..,"t":..}``, all in one open 1-hour
   tumbling window) into a topic and runs the continuous query over them without a final
   watermark, so every key stays open; ``operator`` feeds the same keys straight to the window
   operator. Reported: resident memory before and after (``VmRSS``), the peak (``VmHWM``), and
   the query's state size in RocksDB.
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

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamhouse  # noqa: E402
from benchmarks.nexmark import NexmarkConfig, generate_tables, json_values  # noqa: E402
from benchmarks.nexmark.runner import query_file  # noqa: E402
from streamhouse.sql.execute import run_sql  # noqa: E402
from streamhouse.sql.nodes import FLOWS  # noqa: E402
from streamhouse.sql.parse import parse  # noqa: E402
from streamhouse.sql.plan import plan_query  # noqa: E402
from streamhouse.state.store import StateStore  # noqa: E402
from streamhouse.windows.operator import make_operator  # noqa: E402
from streamhouse.windows.table import event_time_ms  # noqa: E402

KINDS = ("tumble", "hop", "session")
BATCH_ROWS = 200_000
DELAY_MS = 4_000
FINAL_WATERMARK = 1 << 62
BASE_MS = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
STATE_SQL = {
    "tumble": "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s "
    "FROM TABLE(TUMBLE(TABLE wb_state, DESCRIPTOR(t), INTERVAL '1' HOUR)) "
    "GROUP BY k, window_start, window_end",
    "session": "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s "
    "FROM TABLE(SESSION(TABLE wb_state PARTITION BY k, DESCRIPTOR(t), INTERVAL '1' HOUR)) "
    "GROUP BY k, window_start, window_end",
}
STATE_DDL = (
    "CREATE STREAM IF NOT EXISTS wb_state (k BIGINT, v BIGINT, t TIMESTAMP(3), "
    "WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'wb_state', format = 'json')"
)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _since(wall: float, cpu: float, load_before: float) -> dict[str, float]:
    """Wall and CPU seconds since ``wall``/``cpu``, load average around, and memory now."""
    return {
        "seconds": round(time.perf_counter() - wall, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "load_before": load_before,
        "load_after": load(),
        "rss_after_mb": rss_mb(),
        "peak_rss_mb": rss_mb("VmHWM"),
    }


# -- 1. queries ---------------------------------------------------------------------------------


def run_queries(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The window queries through the Nexmark harness (its own processes and data directory)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.nexmark",
        "--bids",
        str(args.bids),
        "--queries",
        ",".join(KINDS),
        "--out",
        str(out),
    ]
    if args.peers:
        command += ["--peers", args.peers]
    subprocess.run(command, check=True, cwd=str(ROOT))
    return json.loads(out.read_text())


# -- 2. operator --------------------------------------------------------------------------------


def _plan(kind: str) -> Any:
    return plan_query(parse(query_file(kind).select())[0]).operator


def drive(plan: Any, store: StateStore, batches: list[pa.Table], final: bool) -> dict[str, Any]:
    """Run ``plan``'s window operator over ``batches`` as the runtime does, minus the log.

    Per batch: the projection (DataFusion), assignment and partial aggregation, merge into
    state, emission of closed windows and the final SELECT (DataFusion), one RocksDB commit.
    """
    operator = make_operator(plan, store)
    watermark = -(1 << 62)
    rows_out = late = 0
    for table in [*batches, None]:
        batch = store.batch()
        if table is not None:
            pre = run_sql(plan.pre_sql, {plan.source: table}, ordered=True)
            ts, valid = event_time_ms(pre, "__ts")
            if not valid.all():
                pre, ts = pre.filter(pa.array(valid)), ts[valid]
            late += len(operator.process(pre, ts, watermark, batch))
            watermark = max(watermark, int(ts.max()) - DELAY_MS)
        elif final:
            watermark = FINAL_WATERMARK
        emitted = operator.emit(watermark, batch)
        if emitted is not None and emitted.num_rows:
            rows_out += run_sql(plan.post_sql, {FLOWS: emitted}, ordered=True).num_rows
        store.commit(batch)
        operator.commit()
    return {"rows_out": rows_out, "late_rows": late, "open_windows": operator.open_windows}


def _with_metadata(table: pa.Table) -> pa.Table:
    n = table.num_rows
    return table.append_column("_partition", pa.array(np.zeros(n, np.int32))).append_column(
        "_offset", pa.array(np.arange(n, dtype=np.int64))
    )


def run_operator(bids: int) -> dict[str, Any]:
    """Events/s of each window plan over the generated bids, fed as Arrow batches."""
    bid = _with_metadata(generate_tables(NexmarkConfig.for_bids(bids)).bid)
    batches = [bid.slice(i, BATCH_ROWS) for i in range(0, bid.num_rows, BATCH_ROWS)]
    out = {}
    for kind in KINDS:
        with tempfile.TemporaryDirectory(prefix="windows-bench-") as state_dir:
            store = StateStore(Path(state_dir))
            try:
                wall, cpu, before = time.perf_counter(), time.process_time(), load()
                counters = drive(_plan(kind), store, batches, final=True)
                seconds = time.perf_counter() - wall
                out[kind] = {
                    "events": bid.num_rows,
                    "seconds": round(seconds, 3),
                    "cpu_seconds": round(time.process_time() - cpu, 3),
                    "events_per_second": round(bid.num_rows / seconds),
                    "load_before": before,
                    "load_after": load(),
                    **counters,
                }
            finally:
                store.close()
        print(f"operator {kind:8} {out[kind]['events_per_second']:>12,} events/s", flush=True)
    return out


# -- 3. state -----------------------------------------------------------------------------------


def _state_rows(keys: int) -> pa.Table:
    """One row per key, times spread over the first 10 minutes of one hour: all stay open."""
    k = np.arange(keys, dtype=np.int64)
    t = BASE_MS + (k * 600_000) // max(keys, 1)
    return pa.table({"k": k, "v": k % 1000, "t": pa.array(t, pa.int64()).cast(pa.timestamp("ms"))})


def state_worker(spec: str, work_dir: Path) -> dict[str, Any]:
    """``<e2e|operator>:<tumble|session>:<keys>``: resident memory with that many open keys."""
    mode, kind, count = spec.split(":")
    keys = int(count)
    rows = _state_rows(keys)
    result: dict[str, Any] = {"mode": mode, "kind": kind, "keys": keys}
    if mode == "e2e":
        sh = streamhouse.connect(work_dir)
        sh.create_topic("wb_state", partitions=1)
        for start in range(0, keys, 500_000):
            values = json_values(rows.slice(start, 500_000)).to_pylist()
            sh.produce("wb_state", values, partition=0)
        del rows
        sh.sql(STATE_DDL)
        from streamhouse.runtime.launch import start_query

        query = start_query(
            sh.engine,
            STATE_SQL[kind],
            name=f"state_{kind}",
            state_root=work_dir / "queries",
            start=False,
        )
        result["rss_before_mb"] = rss_mb()
        wall, cpu, before = time.perf_counter(), time.process_time(), load()
        query.run_until_caught_up(final=False)
        status = query.status()
        result.update(
            _since(wall, cpu, before),
            open_keys=query.operator.executor.open_keys(),
            rows_in=status["rows_in"],
            state_bytes=status["state_bytes"],
        )
        query.stop()
        sh.close()
        return result
    sql = STATE_SQL[kind].replace("wb_state", "bid")
    plan = plan_query(parse(sql)[0]).operator
    pre_rows = rows.rename_columns(["k", "v", "t"])
    batches = [_with_metadata(pre_rows.slice(i, BATCH_ROWS)) for i in range(0, keys, BATCH_ROWS)]
    del rows, pre_rows
    store = StateStore(work_dir / "state")
    result["rss_before_mb"] = rss_mb()
    wall, cpu, before = time.perf_counter(), time.process_time(), load()
    counters = drive(plan, store, batches, final=False)
    del batches
    operator_keys = counters.pop("open_windows")
    result.update(
        _since(wall, cpu, before),
        open_windows=operator_keys,
        state_bytes=store.size_bytes(),
        **counters,
    )
    store.close()
    return result


def run_state(curve: list[int], e2e_max: int) -> list[dict[str, Any]]:
    out = []
    for kind in ("tumble", "session"):
        for keys in curve:
            for mode in ("operator", "e2e"):
                if mode == "e2e" and keys > e2e_max:
                    continue
                with tempfile.TemporaryDirectory(prefix="windows-state-") as work:
                    done = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--state-worker",
                            f"{mode}:{kind}:{keys}",
                            "--work-dir",
                            work,
                        ],
                        capture_output=True,
                        text=True,
                        cwd=str(ROOT),
                    )
                lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
                if done.returncode != 0 or not lines:
                    entry = {"mode": mode, "kind": kind, "keys": keys, "status": "failed"}
                    entry["error"] = done.stderr[-1000:]
                else:
                    entry = {"status": "ok", **json.loads(lines[-1])}
                    grown = entry["rss_after_mb"] - entry["rss_before_mb"]
                    print(
                        f"state {mode:8} {kind:7} {keys:>10,} keys: RSS {entry['rss_before_mb']:,.0f}"
                        f" -> {entry['rss_after_mb']:,.0f} MB (+{grown:,.0f}), peak "
                        f"{entry['peak_rss_mb']:,.0f} MB",
                        flush=True,
                    )
                out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bids", type=int, default=5_000_000)
    parser.add_argument("--peers", default="", help="'flink' adds PyFlink to the query part")
    parser.add_argument("--curve", default="1000,10000,100000,1000000,10000000")
    parser.add_argument("--e2e-max", type=int, default=1_000_000)
    parser.add_argument("--parts", default="queries,operator,state")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/windows_bench.json")
    parser.add_argument("--state-worker", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.state_worker:
        json.dump(state_worker(args.state_worker, args.work_dir), sys.stdout)
        print()
        return 0
    parts = args.parts.split(",")
    results: dict[str, Any] = {
        "command": " ".join(["python benchmarks/windows_bench.py", *(argv or sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if "operator" in parts:
        results["operator"] = run_operator(args.bids)
        args.out.write_text(json.dumps(results, indent=2))
    if "state" in parts:
        curve = [int(x) for x in args.curve.split(",")]
        results["state"] = run_state(curve, args.e2e_max)
        args.out.write_text(json.dumps(results, indent=2))
    if "queries" in parts:
        nexmark_out = args.out.with_name(args.out.stem + "_queries.json")
        results["queries"] = run_queries(args, nexmark_out)["queries"]
    results["load_average_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
