"""``fsck`` throughput: how fast every segment object of a data dir is verified.

Usage: python benchmarks/fsck_bench.py [--objects 10000] [--out benchmarks/results/fsck.json]

Builds a data dir of ``--objects`` segment objects on the local store, as a writer under load
leaves them: each object holds one run per partition (``--partitions``), each run one LZ4
RecordBatch v2 of ``--records`` 100-byte JSON records with contiguous offsets; the index rows
go into the SQLite metadata in one transaction (``restore_segments``), as ``fsck
--rebuild-metadata`` writes them. Objects are written as plain files (no fsync: building is
not what is measured). Then :func:`streamhouse.log.fsck.check` runs ``--repeat`` times per
thread count, timed with ``time.perf_counter``; the figure is bytes of objects verified per
second (header, trailer, footer and every run's CRC-32C, plus the footer-vs-index
comparison), by the wall clock and per CPU second of the process (all its threads). The
OS page cache is warm (the objects were just written); the 1-minute load average is recorded
with each figure, as the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streamhouse.log.fsck import check, index_row
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.metadata.sqlite import SQLiteMetadata
from streamhouse.log.objectstore import LocalObjectStore
from streamhouse.log.records import Compression, build_batch
from streamhouse.log.segment import SegmentBuilder, segment_key

TOPIC = "bench"
TARGET_BYTES_PER_S = 1e9
POOL = 32  # distinct batches per partition, reused with new offsets


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _batches(partitions: int, records: int, rng: random.Random) -> list[list[bytes]]:
    """``POOL`` LZ4 batches of JSON records per partition."""
    events = ("click", "view", "purchase", "scroll")
    pool = []
    for _ in range(partitions):
        batches = []
        for _ in range(POOL):
            values = [
                json.dumps(
                    {
                        "user": rng.randrange(100_000),
                        "event": rng.choice(events),
                        "amount": round(rng.random() * 100, 2),
                        "ts": 1_780_000_000_000 + rng.randrange(10**9),
                        "page": f"/p/{rng.randrange(5000)}",
                    }
                ).encode()
                for _ in range(records)
            ]
            batches.append(build_batch(values, compression=Compression.LZ4))
        pool.append(batches)
    return pool


def build_data_dir(root: Path, objects: int, partitions: int, records: int) -> tuple[int, float]:
    """Write the objects and their index; returns (bytes of objects, seconds)."""
    started = time.perf_counter()
    rng = random.Random(7)
    pool = _batches(partitions, records, rng)
    segments = root / "objects" / "segments"
    segments.mkdir(parents=True)
    rows: list[SegmentRow] = []
    total = 0
    now_ms = int(time.time() * 1000)
    for n in range(objects):
        builder = SegmentBuilder()
        for p in range(partitions):
            base = n * records
            builder.add(
                TOPIC,
                p,
                struct.pack(">q", base) + pool[p][n % POOL][8:],  # baseOffset set
                base_offset=base,
                last_offset=base + records - 1,
                min_timestamp=now_ms + n,
                max_timestamp=now_ms + n,
                record_count=records,
            )
        data, entries = builder.build()
        key = segment_key(n + 1)
        (root / "objects" / key).write_bytes(data)
        total += len(data)
        rows.extend(index_row(key, e) for e in entries)
    with SQLiteMetadata(root / "metadata.sqlite3") as metadata:
        metadata.create_topic(TOPIC, partitions)
        metadata.restore_segments(rows)
    return total, time.perf_counter() - started


def run_check(root: Path, threads: int) -> dict[str, Any]:
    store = LocalObjectStore(root / "objects")
    with SQLiteMetadata(root / "metadata.sqlite3") as metadata:
        cpu = time.process_time()
        report = check(store, metadata, orphan_min_age_s=3600, threads=threads)
        cpu = time.process_time() - cpu
    if not report.sound:
        raise SystemExit(f"the benchmark data dir is not sound: {report.findings[:3]}")
    return {
        "objects": report.objects,
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
        "gb_per_s": round(report.bytes / report.seconds / 1e9, 3),
        "cpu_s": round(cpu, 3),
        "gb_per_cpu_s": round(report.bytes / cpu / 1e9, 3),
        "load_1m": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--records", type=int, default=500, help="records per run")
    parser.add_argument("--threads", default="1,2,4", help="thread counts to measure")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="build here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fsck.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fsck-bench-", dir=args.dir) as tmp:
        root = Path(tmp)
        size, build_s = build_data_dir(root, args.objects, args.partitions, args.records)
        print(
            f"built {args.objects} objects, {size / 1e9:.2f} GB in {build_s:.1f} s",
            file=sys.stderr,
        )
        runs: dict[str, list[dict[str, Any]]] = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            runs[str(threads)] = []
            for _ in range(args.repeat):
                result = run_check(root, threads)
                runs[str(threads)].append(result)
                print(f"threads={threads}: {result}", file=sys.stderr)
    summary = {
        threads: {
            "best_gb_per_s": max(r["gb_per_s"] for r in results),
            "median_gb_per_s": statistics.median(r["gb_per_s"] for r in results),
            "median_gb_per_cpu_s": statistics.median(r["gb_per_cpu_s"] for r in results),
        }
        for threads, results in runs.items()
    }
    best = max(s["best_gb_per_s"] for s in summary.values())
    out = {
        "config": {
            "objects": args.objects,
            "partitions": args.partitions,
            "records_per_run": args.records,
            "object_bytes_mean": size // args.objects,
            "total_bytes": size,
            "store": "local directory, warm page cache",
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_1m_at_end": load(),
        },
        "build_s": round(build_s, 1),
        "runs": runs,
        "summary": summary,
        "target_gb_per_s": TARGET_BYTES_PER_S / 1e9,
        "meets_target": best >= TARGET_BYTES_PER_S / 1e9,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
