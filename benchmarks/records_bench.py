"""Throughput of record batch build and decode (records/s), with aiokafka's C reader as baseline.

Usage: python benchmarks/records_bench.py [--batches N] [--repeat R] [--json PATH]

Batches of 1,000 records with ~100-byte JSON values and no keys; best of R runs, so the
figures are what the code can do rather than what a busy machine let it do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import pyarrow as pa

from streamhouse.log.records import DECODED_SCHEMA, Compression, build_batch, decode_batches

RECORDS_PER_BATCH = 1000


def _values(n: int) -> list[bytes]:
    return [
        json.dumps(
            {"id": i, "user": f"user{i % 977:05d}", "score": i * 0.25, "tags": ["a", "b"]}
        ).encode()
        + b" " * (i % 23)
        for i in range(n)
    ]


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _aiokafka_decode(batches: list[bytes]) -> pa.Table:
    """The baseline: aiokafka's Cython reader, records gathered into Arrow columns."""
    from aiokafka.record.default_records import DefaultRecordBatch

    offsets, timestamps, keys, values, headers = [], [], [], [], []
    for data in batches:
        for r in DefaultRecordBatch(data):
            offsets.append(r.offset)
            timestamps.append(r.timestamp)
            keys.append(r.key)
            values.append(r.value)
            headers.append([{"key": k, "value": v} for k, v in r.headers])
    return pa.table(
        [
            pa.array(offsets, pa.int64()),
            pa.array(timestamps, pa.int64()).cast(pa.timestamp("ms")),
            pa.array(keys, pa.binary()),
            pa.array(values, pa.binary()),
            pa.array(headers, DECODED_SCHEMA.field("headers").type),
        ],
        schema=DECODED_SCHEMA,
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    values = _values(RECORDS_PER_BATCH)
    now = int(time.time() * 1000)
    timestamps = [now + 3 * i for i in range(RECORDS_PER_BATCH)]
    total = args.batches * RECORDS_PER_BATCH
    figures: dict[str, float] = {}
    for codec in (Compression.NONE, Compression.LZ4, Compression.ZSTD):
        name = codec.name.lower()
        batch = build_batch(values, timestamps=timestamps, compression=codec)
        data = [batch] * args.batches
        decode_batches(data)
        figures[f"decode_{name}_records_per_s"] = total / _best(
            lambda data=data: decode_batches(data), args.repeat
        )
        figures[f"decode_{name}_single_batch_records_per_s"] = RECORDS_PER_BATCH / _best(
            lambda batch=batch: decode_batches(batch), args.repeat * 5
        )
        figures[f"aiokafka_decode_{name}_records_per_s"] = total / _best(
            lambda data=data: _aiokafka_decode(data), max(1, args.repeat // 2)
        )

        def build(codec: Compression = codec) -> None:
            for _ in range(args.batches):
                build_batch(values, timestamps=timestamps, compression=codec)

        figures[f"build_{name}_records_per_s"] = total / _best(build, args.repeat)
    for key, value in figures.items():
        print(f"{key:48s} {value:>12,.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
