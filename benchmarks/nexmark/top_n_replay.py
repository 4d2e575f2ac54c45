"""The Top-N operator alone (q18's deduplication, q19's top 10 per auction), replayed in-process
over a data directory's bids in fixed micro-batches: CPU seconds of the operator, without the
source's decoding or the sink's writes (which dominate a continuous run's profile)::

    python -m benchmarks.nexmark.top_n_replay --data-dir benchmarks/data/nexmark-5000000-p1 --query q19

prints one JSON object: ``query``, ``operator_cpu_seconds``, ``rows_out`` and ``state_rows``.
Alternate it between two checkouts (``PYTHONPATH``) for an A/B of the operator.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from streamhouse.sql.parse import parse
from streamhouse.sql.plan import plan_query
from streamhouse.state.store import ScopedBatch, StateStore, StateView
from streamhouse.views.top_n import TopNOperator

QUERIES = {
    "q18": "SELECT auction, bidder, price, channel, url, dateTime, extra FROM (SELECT *,"
    " ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY dateTime DESC) AS rank_number"
    " FROM bid) WHERE rank_number <= 1",
    "q19": "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC)"
    " AS rank_number FROM bid) WHERE rank_number <= 10",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nexmark.top_n_replay")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--query", choices=sorted(QUERIES), required=True)
    parser.add_argument("--batch-rows", type=int, default=192_000)
    args = parser.parse_args(argv)
    path = args.data_dir / "json" / "bid.json"
    bids = duckdb.sql(
        "SELECT auction, bidder, price, channel, url, CAST(dateTime AS TIMESTAMP(3)) AS dateTime,"
        f" extra FROM read_ndjson('{path}')"
    ).arrow()
    bids = bids.read_all() if hasattr(bids, "read_all") else bids
    plan = plan_query(parse(QUERIES[args.query])[0]).operator
    with tempfile.TemporaryDirectory() as scratch:
        store = StateStore(Path(scratch) / "state")
        operator = TopNOperator(plan, StateView(store, b"o"))
        cpu, rows_out = time.process_time(), 0
        for start in range(0, bids.num_rows, args.batch_rows):
            batch = store.batch()
            out, _ = operator.process(bids.slice(start, args.batch_rows), ScopedBatch(batch, b"o"))
            rows_out += 0 if out is None else out.num_rows
            store.commit(batch, sync=False)
            operator.commit()
        result = {
            "query": args.query,
            "operator_cpu_seconds": round(time.process_time() - cpu, 2),
            "rows_out": rows_out,
            "state_rows": operator.table.rows,
        }
        store.close()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
