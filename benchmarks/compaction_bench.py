"""Compaction: throughput, objects and stored bytes before and after, and a Kafka-fetch scan
and a SQL scan over the topic compacted vs uncompacted.

Usage: python benchmarks/compaction_bench.py [--flushes N] [--out benchmarks/results/compaction.json]

A topic of 8 partitions written as a producer writing 10 ms flushes does: ``--flushes`` calls
of ``sh.produce`` with ``--flush-records`` 100-byte JSON records each (the values of
``log_bench.py``, LZ4 as the producer sent them), each call one segment object holding a
small run of every partition, on the local-directory object store. Then, each phase on a
freshly opened connection (empty object cache, warm OS page cache), best of ``--repeat``:

- fetch: ``Log.fetch`` partition by partition, 1 MiB per request (the Kafka fetch path);
- sql: ``SELECT k, count(*), sum(x) FROM t GROUP BY k`` (a declared stream);

over the uncompacted topic, then ``sh.compact()`` (timed: MB/s of index-row bytes read and
rewritten; the default 16 MiB target and zstd), a retention pass that deletes the replaced
objects (``object_delete_delay_s=0``), and the same reads over the compacted topic.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
from log_bench import PARTITIONS, TOPIC, bench_fetch, figure, load, make_values, timed

import streamhouse
from streamhouse.log.segment import SEGMENT_PREFIX

QUERY = f"SELECT k, count(*) AS n, sum(x) AS sx FROM {TOPIC}_s GROUP BY k"


def stored(sh: streamhouse.StreamHouse) -> dict[str, int]:
    infos = sh.log.store.list_info(SEGMENT_PREFIX)
    rows = [r for p in range(PARTITIONS) for r in sh.log.metadata.inner.segments(TOPIC, p)]
    return {
        "objects": len(infos),
        "object_bytes": sum(i.size for i in infos),
        "index_rows": len(rows),
        "run_bytes": sum(r.length for r in rows),
    }


def reads(data: Path, n: int, repeat: int) -> tuple[dict, pa.Table]:
    fetches, queries, answer = [], [], None
    for _ in range(repeat):
        with streamhouse.connect(data) as sh:
            fetches.append(bench_fetch(sh, n, 1 << 20))
        with streamhouse.connect(data) as sh:
            seconds, answer = timed(lambda: sh.sql(QUERY).to_arrow_table())
            queries.append((seconds, figure(n, seconds)))
    fetch = min(fetches, key=lambda f: f["seconds"])
    sql = min(queries)[1]
    assert answer is not None
    return {"fetch": fetch, "sql": sql}, answer.sort_by("k")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flushes", type=int, default=2000)
    parser.add_argument("--flush-records", type=int, default=80)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    n = args.flushes * args.flush_records
    values = make_values(n)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        with streamhouse.connect(data, linger_ms=1) as sh:
            sh.create_topic(TOPIC, partitions=PARTITIONS)
            sh.sql(
                f"CREATE STREAM {TOPIC}_s (k STRING, x BIGINT, id BIGINT)"
                f" WITH (topic = '{TOPIC}', format = 'json')"
            )
            step = args.flush_records
            produced, _ = timed(
                lambda: [sh.produce(TOPIC, values[i : i + step]) for i in range(0, n, step)]
            )
            before = stored(sh)
        uncompacted, answer_before = reads(data, n, args.repeat)

        with streamhouse.connect(data, object_delete_delay_s=0) as sh:
            seconds, report = timed(sh.compact)
            assert report.records == n, (report.records, n)
            compaction = {
                "seconds": round(seconds.wall, 3),
                "cpu_seconds": round(seconds.cpu, 3),
                "mb_per_s": round(report.bytes_read / seconds.wall / 1e6, 1),
                "mb_per_cpu_s": round(report.bytes_read / seconds.cpu / 1e6, 1),
                "records_per_s": round(n / seconds.wall),
                "rows_replaced": report.rows_replaced,
                "objects_written": len(report.objects_written),
                "bytes_read": report.bytes_read,
                "bytes_written": report.bytes_written,
                "load_1m": load(),
            }
            deleted = sh.enforce_retention().deleted_objects
            after = stored(sh)
        compacted, answer_after = reads(data, n, args.repeat)
    assert answer_before.equals(answer_after)
    result = {
        "records": n,
        "flushes": args.flushes,
        "partitions": PARTITIONS,
        "produce": figure(n, produced),
        "before": before,
        "compaction": compaction,
        "deleted_objects": len(deleted),
        "after": after,
        "uncompacted": uncompacted,
        "compacted": compacted,
        "ratios": {
            "objects": round(before["objects"] / after["objects"], 1),
            "stored_bytes_saved": round(1 - after["object_bytes"] / before["object_bytes"], 3),
            "fetch_speedup": round(
                uncompacted["fetch"]["seconds"] / compacted["fetch"]["seconds"], 2
            ),
            "sql_speedup": round(uncompacted["sql"]["seconds"] / compacted["sql"]["seconds"], 2),
        },
        "same_sql_answer": True,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
