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
   the query's state size in RocksDB;
4. **parallel state** (``--parts parallel``, issue 16): the same keys at ``--parallelism``
   (default 1,2): one process produces them into ``--state-partitions`` topic partitions, a
   fresh launcher process starts the query (``INSERT INTO`` a topic) at that parallelism and
   waits until every record is read and no task has worked for ``QUIET_S`` (every key is in
   the windows' state, none closed), then stops it (a checkpoint); meanwhile this process
   samples every process of the launcher's tree (the launcher, its task-process zygote, the
   tasks) from ``/proc`` every ``SAMPLE_S``. Reported: each process's peak (``VmHWM``) and
   their sum (an upper bound: pages a forked task shares with the zygote count in both), the
   highest sampled sum of resident (``VmRSS``) and proportional (``Pss``: a shared page split
   among its sharers) memory, the query's status (the tasks' own memory and state bytes).
   A third process then resumes the query and runs it to the end, closing every window: its
   output rows must equal the keys (measured apart, as ``close``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
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


# -- 4. parallel state -------------------------------------------------------------------------

SAMPLE_S = 0.5
"""How often the memory of the launcher's processes is sampled."""
QUIET_S = 10.0
"""How long no task may have worked before every key counts as in the state."""
PRODUCE_ROWS = 500_000


def _parallel_sql(kind: str, parallelism: int, sink: str) -> str:
    return (
        f"SET 'parallelism' = '{parallelism}';\n{STATE_DDL};\nINSERT INTO {sink} {STATE_SQL[kind]};"
    )


def produce_state(keys: int, partitions: int, work_dir: Path) -> dict[str, Any]:
    """One JSON record per key (``_state_rows``), in ``PRODUCE_ROWS`` chunks round-robin over
    ``partitions`` partitions: each partition's event time rises."""
    wall = time.perf_counter()
    with streamhouse.connect(work_dir / "data") as sh:
        sh.create_topic("wb_state", partitions=partitions)
        rows = _state_rows(keys)
        for chunk, start in enumerate(range(0, keys, PRODUCE_ROWS)):
            values = json_values(rows.slice(start, PRODUCE_ROWS)).to_pylist()
            sh.produce("wb_state", values, partition=chunk % partitions)
    return {"keys": keys, "partitions": partitions, "seconds": round(time.perf_counter() - wall, 1)}


def launch_state(
    kind: str, keys: int, parallelism: int, name: str, work_dir: Path, close: bool
) -> dict[str, Any]:
    """Run query ``name`` until every key is in its state (or, with ``close``, to the end)."""
    from streamhouse.runtime.launch import start_query

    sink = f"{name}_out"
    path = work_dir / f"{name}.sql"
    path.write_text(_parallel_sql(kind, parallelism, sink))
    wall, cpu, before = time.perf_counter(), time.process_time(), load()
    with streamhouse.connect(work_dir / "data") as sh:
        query = start_query(sh.engine, path, state_root=work_dir / "queries", start=False)
        if close:
            query.run_until_caught_up(final=True)
        elif parallelism == 1:
            query.run_until_caught_up(final=False)
        else:
            query.start()
            _wait_quiet(query, keys)
        status = query.status()
        query.stop()
        offsets = sh.log.metadata.partition_offsets(sink) if sh.log.get_topic(sink) else {}
        out_rows = sum(o.high_watermark for o in offsets.values())
    return {
        **_since(wall, cpu, before),
        "rows_in": status["rows_in"],
        "rows_out": status["rows_out"],
        "sink_records": out_rows,
        "state_bytes": status.get("state_bytes")
        or sum(t.get("state_bytes", 0) for t in status.get("tasks", [])),
        "tasks": [
            {
                k: t.get(k)
                for k in (
                    "task",
                    "pid",
                    "rows_in",
                    "state_bytes",
                    "rss_bytes",
                    "peak_rss_bytes",
                    "cpu_seconds",
                )
            }
            for t in status.get("tasks", [])
        ],
    }


def _wait_quiet(query: Any, keys: int) -> None:
    """Until the tasks read every key and none wrote its status (it does after each step that
    did something) for ``QUIET_S``."""
    last, since = None, time.monotonic()
    while True:
        if query.error is not None:
            raise query.error
        status = query.status()
        marks = [t.get("updated_at") for t in status["tasks"]]
        if marks != last:
            last, since = marks, time.monotonic()
        elif status["rows_in"] >= keys and time.monotonic() - since >= QUIET_S:
            return
        time.sleep(SAMPLE_S)


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, over every process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc(int(entry.name), "stat")
            if stat:  # "pid (comm) state ppid ...": comm may hold spaces
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def _kb(text: str, field: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class TreeMemory(threading.Thread):
    """Samples the memory of process ``root`` and its descendants until stopped."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[int, dict[str, Any]] = {}  # pid -> role, VmHWM, ...
        self.peak_rss_sum = self.peak_pss_sum = self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        children = _children()
        tree, roles = [self.root], {self.root: "launcher"}
        for pid in tree:
            for child in children.get(pid, []):
                tree.append(child)
                if roles[pid] == "zygote":  # forked, not run: the zygote's command line
                    roles[child] = "task"
                elif "task_processes" in _proc(child, "cmdline"):
                    roles[child] = "zygote"
                else:
                    roles[child] = "child"
        rss = pss = 0
        for pid in tree:
            status = _proc(pid, "status")
            hwm = _kb(status, "VmHWM")
            if not hwm:
                continue
            rss += _kb(status, "VmRSS")
            pss += _kb(_proc(pid, "smaps_rollup"), "Pss")
            entry = self.peaks.setdefault(pid, {"pid": pid, "role": roles[pid]})
            entry["peak_rss_bytes"] = max(entry.get("peak_rss_bytes", 0), hwm)
        self.samples += 1
        self.peak_rss_sum = max(self.peak_rss_sum, rss)
        self.peak_pss_sum = max(self.peak_pss_sum, pss)

    def report(self) -> dict[str, Any]:
        processes = sorted(self.peaks.values(), key=lambda e: e["pid"])
        return {
            "processes": processes,
            "sum_of_peaks_bytes": sum(p["peak_rss_bytes"] for p in processes),
            "peak_sampled_rss_sum_bytes": self.peak_rss_sum,
            "peak_sampled_pss_sum_bytes": self.peak_pss_sum,
            "samples": self.samples,
        }


def _measured(command: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a worker, sampling its process tree; (its JSON line, the memory report)."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT)
    )
    sampler = TreeMemory(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.done.set()
    sampler.join()
    lines = [x for x in stdout.splitlines() if x.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"{command[-3:]} failed: {stderr[-2000:]}")
    return json.loads(lines[-1]), sampler.report()


def run_parallel_state(
    kinds: list[str], keys: int, parallelisms: list[int], partitions: int, keep: Path | None
) -> list[dict[str, Any]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="windows-parallel-") as scratch:
        work = keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        worker = [sys.executable, __file__, "--work-dir", str(work), "--state-worker"]
        if not (work / "produced.json").exists():
            produced, _ = _measured([*worker, f"produce:{keys}:{partitions}"])
            (work / "produced.json").write_text(json.dumps(produced))
            print(f"produced {keys:,} keys in {produced['seconds']} s", flush=True)
        for kind in kinds:
            for parallelism in parallelisms:
                entry: dict[str, Any] = {"kind": kind, "keys": keys, "parallelism": parallelism}
                name = f"state_{kind}_p{parallelism}_{os.urandom(4).hex()}"  # fresh state
                for phase in ("open", "close"):
                    role = "launch" if phase == "open" else "close"
                    spec = f"{role}:{kind}:{keys}:{parallelism}:{name}"
                    result, memory = _measured([*worker, spec])
                    entry[phase] = {**result, "memory": memory}
                    print(
                        f"{kind} p={parallelism} {phase}: {result['rows_in']:,} rows in,"
                        f" {result['rows_out']:,} out; peaks summed"
                        f" {memory['sum_of_peaks_bytes'] / 2**30:.2f} GiB, sampled RSS"
                        f" {memory['peak_sampled_rss_sum_bytes'] / 2**30:.2f} GiB, PSS"
                        f" {memory['peak_sampled_pss_sum_bytes'] / 2**30:.2f} GiB;"
                        f" {result['seconds']} s, load {result['load_after']}",
                        flush=True,
                    )
                entry["every_key_out_once"] = entry["close"]["rows_out"] == keys
                out.append(entry)
    return out


def parallel_worker(spec: str, work_dir: Path) -> dict[str, Any]:
    role, *rest = spec.split(":")
    if role == "produce":
        return produce_state(int(rest[0]), int(rest[1]), work_dir)
    kind, keys, parallelism, name = rest[0], int(rest[1]), int(rest[2]), rest[3]
    return launch_state(kind, keys, parallelism, name, work_dir, close=role == "close")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bids", type=int, default=5_000_000)
    parser.add_argument("--peers", default="", help="'flink' adds PyFlink to the query part")
    parser.add_argument("--curve", default="1000,10000,100000,1000000,10000000")
    parser.add_argument("--e2e-max", type=int, default=1_000_000)
    parser.add_argument("--parts", default="queries,operator,state")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/windows_bench.json")
    parser.add_argument("--parallelism", default="1,2", help="parallel state: parallelisms")
    parser.add_argument("--parallel-keys", type=int, default=10_000_000)
    parser.add_argument("--parallel-kinds", default="tumble,session")
    parser.add_argument("--state-partitions", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="parallel state: keep the data here, reuse it")
    parser.add_argument("--state-worker", help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.state_worker:
        parallel = args.state_worker.split(":")[0] in ("produce", "launch", "close")
        worker = parallel_worker if parallel else state_worker
        json.dump(worker(args.state_worker, args.work_dir), sys.stdout)
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
    if "parallel" in parts:
        results["parallel_state"] = run_parallel_state(
            args.parallel_kinds.split(","),
            args.parallel_keys,
            [int(x) for x in args.parallelism.split(",")],
            args.state_partitions,
            args.keep,
        )
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
