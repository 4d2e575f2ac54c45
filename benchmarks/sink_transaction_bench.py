"""What the two-phase commit of a continuous query's sink costs per checkpoint (issue 18): the
same windowed query over the same input, run to its end in fixed micro-batches that each
write output; the time per micro-batch, and the sink transaction's own spans (joining the
sink partitions to the transaction, and its commit after the checkpoint: decision, markers'
flush, completion), timed by wrapping :class:`~streamhouse.runtime.two_phase.TwoPhaseCommit`.

Run against another tree (``PYTHONPATH=<tree>``) to compare with a build without it (its
spans are then absent): alternate the two, as in benchmarks/README.md.

    python -m benchmarks.sink_transaction_bench [--records 200000] [--batch 2000]
        [--partitions 4] [--rounds 3] [--json benchmarks/results/sink_transactions.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import streamhouse
from streamhouse.runtime.launch import start_query

QUERY = """
SET 'idle-timeout' = '1 hour';
INSERT INTO per_window
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
FROM ev GROUP BY k, TUMBLING(t, INTERVAL '1' SECOND)
"""


def _timed(owner: Any, name: str, spans: list[float]) -> None:
    """Time every call of ``owner.name`` into ``spans``."""
    method = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spans.append(time.perf_counter() - began)

    setattr(owner, name, timed)


def run(records: int, batch: int, partitions: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="sh-sink-txn-bench-") as tmp,
        streamhouse.connect(Path(tmp) / "data", linger_ms=1) as sh,
    ):
        sh.sql(
            "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
            " WITH (topic = 'ev', partitions = '1')"
        )
        sh.create_topic("per_window", partitions=partitions)
        # 100 keys, 1 ms apart: a 1 s window closes every 1,000 records, so every micro-batch
        # of at least that many writes output
        rows = [{"k": f"user-{i % 100}", "v": i, "t": i} for i in range(records)]
        for start in range(0, records, 100_000):
            sh.produce("ev", rows[start : start + 100_000])
        query = start_query(
            sh.engine, QUERY, name="bench", state_root=Path(tmp) / "state", start=False
        )
        spans: dict[str, list[float]] = {"join": [], "commit": []}
        transaction = getattr(query, "sink_transaction", None)
        if transaction is not None:
            _timed(transaction, "join", spans["join"])
            _timed(transaction, "commit", spans["commit"])
        steps: list[float] = []
        while True:
            began = time.perf_counter()
            if not query.step(max_records=batch):
                break
            steps.append(time.perf_counter() - began)
        out = sh.fetch("per_window").num_rows  # committed (markers take offsets too)
        query.stop()
    return {
        "batches": len(steps),
        "output_records": out,
        "seconds": round(sum(steps), 3),
        "ms_per_batch_median": round(statistics.median(steps) * 1000, 2),
        "ms_join_median": round(statistics.median(spans["join"]) * 1000, 2)
        if spans["join"]
        else None,
        "ms_commit_median": round(statistics.median(spans["commit"]) * 1000, 2)
        if spans["commit"]
        else None,
        "transactions": len(spans["commit"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for _ in range(args.rounds):
        result = run(args.records, args.batch, args.partitions)
        result["load"] = round(os.getloadavg()[0], 1)
        runs.append(result)
        print(json.dumps(result), flush=True)
    summary = {
        "records": args.records,
        "batch_records": args.batch,
        "sink_partitions": args.partitions,
        "ms_per_batch_median": statistics.median(r["ms_per_batch_median"] for r in runs),
        "runs": runs,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
