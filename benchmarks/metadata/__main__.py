"""Metadata store benchmark: commit latency, lookup latency and operations per second against
SQLite and PostgreSQL at 1, 1,000, 10,000 and 100,000 partitions (metadata only: no object is
written).

Usage: python -m benchmarks.metadata [--partitions 1,1000,10000,100000]
       [--postgres postgresql://postgres@127.0.0.1:5432/test] [--out benchmarks/results/metadata]

For each backend and partition count, in a fresh SQLite file or PostgreSQL schema:

- ``create``: one topic of N partitions (``create_topic``);
- ``commit_1``: ``--commits`` flushes of one run each (a random partition), one at a time, as
  the writer's committer does; latency per ``commit_segment`` and commits/s;
- ``commit_wide``: ``--wide-commits`` flushes with a run in each of min(N, 1,000) random
  partitions (one transaction each, four statements on PostgreSQL whatever the width): latency
  per flush and index rows/s;
- ``lookup_store``/``lookup_cached``: ``--lookups`` random (partition, offset) lookups of the
  fetch path (``partition_offset`` + ``segments(..., limit=16)``) on the store itself and
  through :class:`~streamhouse.log.metadata.cache.CachedMetadata` (warmed by one pass), with
  its hit rate.

Writes ``metadata.json`` and ``metadata.md`` (a table) under ``--out``; each figure carries the
1-minute load average, as the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from streamhouse.log.metadata import Metadata
from streamhouse.log.metadata.cache import CachedMetadata, CacheStats
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.sqlite import SQLiteMetadata
from streamhouse.log.segment import SegmentEntry

TOPIC = "bench"
WIDE = 1000


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "per_s": round(len(ordered) / sum(ordered), 1),
    }


@contextmanager
def _sqlite() -> Iterator[Callable[[], Metadata]]:
    with tempfile.TemporaryDirectory(prefix="metadata-bench-") as tmp:
        yield lambda: SQLiteMetadata(Path(tmp) / "metadata.sqlite3")


@contextmanager
def _postgres(url: str) -> Iterator[Callable[[], Metadata]]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield lambda: PostgresMetadata(f"{url}?options=-csearch_path%3D{schema}")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _commits(md: Metadata, partitions: list[int], rounds: int, rng: random.Random) -> list[float]:
    """Latency of ``rounds`` commits, each with a run of 10 offsets in ``partitions`` (sampled
    anew each round when there are more partitions than ``WIDE``)."""
    latencies = []
    for i in range(rounds):
        chosen = sorted(rng.sample(partitions, WIDE)) if len(partitions) > WIDE else partitions
        entries = [
            SegmentEntry(TOPIC, p, 0, 9, j * 4096, 4096, 0, 0, 10, 0) for j, p in enumerate(chosen)
        ]
        start = time.perf_counter()
        md.commit_segment(f"segments/{i:020d}-{uuid.uuid4().hex[:8]}.seg", entries)
        latencies.append(time.perf_counter() - start)
    return latencies


def _lookups(md: Metadata, partitions: int, count: int, rng: random.Random) -> list[float]:
    """Latency of the fetch path's metadata reads for ``count`` random (partition, offset)."""
    latencies = []
    for _ in range(count):
        p = rng.randrange(partitions)
        start = time.perf_counter()
        high_watermark = md.partition_offset(TOPIC, p).high_watermark
        md.segments(TOPIC, p, rng.randrange(max(high_watermark, 1)), limit=16)
        latencies.append(time.perf_counter() - start)
    return latencies


def run_one(
    backend: str, opener: Callable[[], Metadata], n: int, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(n)
    md = opener()
    result: dict[str, Any] = {"backend": backend, "partitions": n, "load_1m": load()}
    try:
        start = time.perf_counter()
        md.create_topic(TOPIC, partitions=n)
        result["create_s"] = round(time.perf_counter() - start, 3)
        everyone = list(range(n))
        single = [_commits(md, [rng.randrange(n)], 1, rng)[0] for _ in range(args.commits)]
        result["commit_1"] = _ms(single)
        wide = _commits(md, everyone, args.wide_commits, rng)
        result["commit_wide"] = {**_ms(wide), "runs": min(n, WIDE)}
        result["commit_wide"]["rows_per_s"] = round(min(n, WIDE) * result["commit_wide"]["per_s"])
        result["lookup_store"] = _ms(_lookups(md, n, args.lookups, rng))
        cached = CachedMetadata(opener())
        try:
            deadline = time.monotonic() + 10
            while not cached.live and time.monotonic() < deadline:
                time.sleep(0.01)
            _lookups(cached, n, args.lookups, random.Random(1))  # warm
            cached.stats = CacheStats()
            result["lookup_cached"] = _ms(_lookups(cached, n, args.lookups, random.Random(1)))
            result["lookup_cached"]["hit_rate"] = round(cached.stats.hit_rate, 4)
        finally:
            cached.close()
    finally:
        md.close()
    result["load_1m_after"] = load()
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "| backend | partitions | create s | commit 1 run p50 / p99 ms | commits/s"
        " | commit 1,000 runs p50 / p99 ms | index rows/s | lookup p50 / p99 ms (store)"
        " | lookup p50 / p99 ms (cache) | cache hit rate | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c1, cw, ls, lc = r["commit_1"], r["commit_wide"], r["lookup_store"], r["lookup_cached"]
        lines.append(
            f"| {r['backend']} | {r['partitions']:,} | {r['create_s']} | {c1['p50_ms']} / {c1['p99_ms']}"
            f" | {c1['per_s']:,.0f} | {cw['p50_ms']} / {cw['p99_ms']} ({cw['runs']:,} runs)"
            f" | {cw['rows_per_s']:,} | {ls['p50_ms']} / {ls['p99_ms']} | {lc['p50_ms']} / {lc['p99_ms']}"
            f" | {lc['hit_rate']:.1%} | {r['load_1m']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="1,1000,10000,100000")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--wide-commits", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metadata"))
    args = parser.parse_args()
    results = []
    for backend in args.backends.split(","):
        for n in (int(x) for x in args.partitions.split(",")):
            opened = _sqlite() if backend == "sqlite" else _postgres(args.postgres)
            with opened as opener:
                results.append(run_one(backend, opener, n, args))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.platform(), "cpus": os.cpu_count(), "results": results}
    (args.out / "metadata.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "metadata.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
