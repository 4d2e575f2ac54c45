"""Lookup join against PostgreSQL: rows/s with a cold cache (every key new: one ``= ANY``
query per micro-batch) and with a warm cache (no query), over a 1M-key dimension table.

    python benchmarks/lookup_bench.py [--keys 1000000] [--batch 50000] [--out results/lookup.json]
    python benchmarks/lookup_bench.py --pairs 3   # cold A/B: rows read as CSV vs through psycopg

Rows are read as one CSV text per batch (PostgreSQL's ``string_agg``, parsed by Arrow) when every
column's type allows; ``--pairs`` alternates that with psycopg's rows on the same table, cold, and gives
each pair's ratio (the shared machine's speed drifts; pairs keep the ratio meaningful).

Needs a PostgreSQL server (``$STREAMHOUSE_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``); a fresh database is created and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql

from streamhouse.joins.lookup import JdbcLookupOptions, LookupJoin, PostgresLookup

DIM_SCHEMA = pa.schema([("k", pa.int64()), ("name", pa.string()), ("price", pa.float64())])


def fill(url: str, keys: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE dim (k BIGINT PRIMARY KEY, name TEXT, price DOUBLE PRECISION)")
        conn.execute(
            "INSERT INTO dim SELECT g, 'name-' || g, g * 0.5 FROM generate_series(0, %s) g",
            (keys - 1,),
        )
        conn.execute("ANALYZE dim")


def run(
    url: str,
    keys: int,
    batch: int,
    seed: int,
    csv: bool = True,
    phases: tuple[str, ...] = ("cold", "warm"),
) -> dict[str, float]:
    options = JdbcLookupOptions.from_options(
        {
            "connector": "jdbc",
            "url": url,
            "table-name": "dim",
            "lookup.cache.max-rows": str(keys),
            "lookup.cache.ttl": "1 h",
        }
    )
    source = PostgresLookup(options, DIM_SCHEMA, "k")
    if not csv:
        source.csv_query = None  # psycopg's rows, as before
    join = LookupJoin(source, "k", prefix="d_")
    order = np.random.default_rng(seed).permutation(keys)
    probe = pa.table({"id": np.arange(keys), "k": order, "v": order * 2.0})
    batches = [probe.slice(i, batch) for i in range(0, keys, batch)]
    figures: dict[str, float] = {}
    for phase in phases:
        lookups = join.lookups
        start = time.perf_counter()
        rows = sum(join.join(b).num_rows for b in batches)
        seconds = time.perf_counter() - start
        assert rows == keys, (phase, rows)
        figures[f"{phase}_rows_per_s"] = round(keys / seconds)
        figures[f"{phase}_seconds"] = round(seconds, 3)
        figures[f"{phase}_queries"] = join.lookups - lookups
    join.source.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--pairs", type=int, default=0, help="cold A/B pairs: CSV vs rows")
    args = parser.parse_args()
    server = os.environ.get(
        "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    )
    database = f"lookup_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = urlunsplit(urlsplit(server)._replace(path=f"/{database}"))
    try:
        fill(url, args.keys)
        if args.pairs:
            pairs = []
            for seed in range(args.pairs):
                csv = run(url, args.keys, args.batch, seed, True, ("cold",))["cold_rows_per_s"]
                rows = run(url, args.keys, args.batch, seed, False, ("cold",))["cold_rows_per_s"]
                pairs.append({"csv": csv, "rows": rows, "ratio": round(csv / rows, 3)})
                print(json.dumps(pairs[-1]), flush=True)
            ratios = [p["ratio"] for p in pairs]
            print(json.dumps({"median_ratio": float(np.median(ratios)), "load": os.getloadavg()}))
            return
        runs = []
        for seed in range(args.runs):
            runs.append(run(url, args.keys, args.batch, seed))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
    result = {
        "keys": args.keys,
        "batch_rows": args.batch,
        "load_average": os.getloadavg(),
        "runs": runs,
        "median_cold_rows_per_s": float(np.median([r["cold_rows_per_s"] for r in runs])),
        "median_warm_rows_per_s": float(np.median([r["warm_rows_per_s"] for r in runs])),
        "targets": {"warm_rows_per_s": 200_000, "cold_rows_per_s": 50_000},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
