"""What running a continuous query under a lease costs: each micro-batch that writes output
first uploads the query's state to the object store and records it under the lease (so that
another agent can take the query over exactly once). Same query, same input, run to the end
of its input in fixed micro-batches, with and without a lease; median of ``--rounds``
alternating runs each.

    python -m benchmarks.checkpoint_bench [--records 400000] [--keys 1000] [--batch 20000]
        [--metadata postgresql://host/db (a fresh schema per run)] [--rounds 3] [--json benchmarks/results/checkpoints.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

import streamhouse
from streamhouse.runtime.launch import start_query
from streamhouse.state.remote import PREFIX

QUERY = """
SET 'idle-timeout' = '1 hour';
INSERT INTO per_window
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
FROM ev GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)
"""


def fresh_schema(metadata: str | None, prefix: str = "ckpt_bench") -> str | None:
    """A fresh schema of the PostgreSQL database ``metadata`` names (SQLite: None, a new file)."""
    if metadata is None:
        return None
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(metadata, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{metadata}{'&' if '?' in metadata else '?'}options=-csearch_path%3D{schema}"


def run(records: int, keys: int, batch: int, metadata: str | None, leased: bool) -> dict[str, Any]:
    metadata = fresh_schema(metadata)
    with (
        tempfile.TemporaryDirectory(prefix="sh-ckpt-bench-") as tmp,
        streamhouse.connect(Path(tmp) / "data", metadata=metadata) as sh,
    ):
        sh.sql(
            "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
            " WITH (topic = 'ev', partitions = '1')"
        )
        ids = np.arange(records)
        rows = [{"k": f"user-{i % keys}", "v": int(i), "t": int(i) * 10} for i in ids.tolist()]
        for start in range(0, records, 100_000):
            chunk = rows[start : start + 100_000]
            sh.produce("ev", chunk, key=[r["k"] for r in chunk])
        lease = None
        if leased:
            lease = sh.log.metadata.acquire_lease("query/bench", "bench", 600_000)
        query = start_query(
            sh.engine,
            QUERY,
            name="bench",
            state_root=Path(tmp) / "state",
            start=False,
            fence=lease,
        )
        publishes: list[float] = []
        if query.checkpoints is not None:  # time each upload + record + prune
            publish = query.checkpoints.publish

            def timed(store: Any) -> str:
                began = time.perf_counter()
                try:
                    return publish(store)
                finally:
                    publishes.append(time.perf_counter() - began)

            query.checkpoints.publish = timed  # type: ignore[method-assign]
        started = time.perf_counter()
        batches = 0
        while query.step(max_records=batch):
            batches += 1
        elapsed = time.perf_counter() - started
        out = sh.log.offsets("per_window", 0).high_watermark
        stored = sh.log.store.list(f"{PREFIX}/bench/")
        size = sum(len(sh.log.store.get(k)) for k in stored if not k.endswith("MANIFEST"))
        query.stop(checkpoint=False)
    return {
        "leased": leased,
        "seconds": round(elapsed, 3),
        "batches": batches,
        "output_records": out,
        "checkpoint_bytes": size if leased else 0,
        "ms_per_batch": round(elapsed / max(batches, 1) * 1000, 1),
        "checkpoints": len(publishes),
        "ms_per_checkpoint": round(statistics.median(publishes) * 1000, 1) if publishes else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--metadata", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(args.rounds):
        for leased in (False, True):
            result = run(args.records, args.keys, args.batch, args.metadata, leased)
            runs[leased].append(result)
            print(json.dumps(result))
    plain = statistics.median(r["seconds"] for r in runs[False])
    leased = statistics.median(r["seconds"] for r in runs[True])
    batches = runs[True][0]["batches"]
    summary = {
        "records": args.records,
        "keys": args.keys,
        "batch_records": args.batch,
        "metadata": "postgresql" if args.metadata else "sqlite",
        "object_store": "local directory",
        "median_seconds_plain": plain,
        "median_seconds_leased": leased,
        "overhead_ms_per_batch": round((leased - plain) / batches * 1000, 1),
        "checkpoint_bytes": runs[True][0]["checkpoint_bytes"],
        "median_ms_per_checkpoint": statistics.median(r["ms_per_checkpoint"] for r in runs[True]),
        "runs": runs[False] + runs[True],
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
