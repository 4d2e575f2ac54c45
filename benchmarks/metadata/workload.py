"""The roadmap's tiny-batch workload: P partitions x B batches of one 10-byte record each,
produced through the Kafka protocol to one ``serve`` on PostgreSQL metadata, then consumed.

Usage: python -m benchmarks.metadata.workload [--partitions 1000] [--batches 1000]
       [--metadata postgresql://postgres@127.0.0.1:5432/test | sqlite]
       [--out benchmarks/results/metadata]

The producer (librdkafka, linger 5 ms, ``batch.num.messages`` 1, acks=all) sends round after
round, one record to each partition per round, every record a RecordBatch of its own; ``ack_ms`` are
librdkafka's per-message latencies (``produce()`` to acknowledgement). A consumer then reads
everything back. The server's metadata cache logs its hit rate when it stops (INFO), which is
read back from its log, and the server's CPU seconds during the produce phase (per record: a
figure the machine's load moves less than latencies). ``--rate`` paces the producer (records/s), so that ack latencies are the
server's and not those of a client queue holding 100,000 records. Targets (issue 14): produce
ack p99 < 500 ms, cache hit rate > 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.log.kafka import _process_cpu
from benchmarks.metadata.partitions import free_port, serve

TOPIC = "tiny"


def run(
    data_dir: Path, metadata: str, partitions: int, batches: int, rate: float = 0
) -> dict[str, Any]:
    """Produce (at ``rate`` records/s if set, else as fast as the client queues), consume,
    and read the server's cache hit rate from its log."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    port = free_port()
    server = serve(data_dir, metadata, port)
    bootstrap = f"127.0.0.1:{port}"
    result: dict[str, Any] = {"partitions": partitions, "batches_per_partition": batches}
    result["rate"] = rate or "unpaced"
    result["load_1m"] = round(os.getloadavg()[0], 2)
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result(60)
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 5,
                "batch.num.messages": 1,
                "log_level": 0,
            }
        )
        latencies: list[float] = []
        failed: list[str] = []

        def delivered(err: object, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                latencies.append(msg.latency())

        start, cpu = time.perf_counter(), _process_cpu(server.pid)
        for round_no in range(batches):
            due = start + round_no * partitions / rate if rate else 0.0
            while time.perf_counter() < due:  # paced: latencies are the server's
                producer.poll(0.005)  # serves delivery reports, returns early when it does
            for p in range(partitions):
                while True:
                    try:
                        producer.produce(TOPIC, b"0123456789", partition=p, on_delivery=delivered)
                        break
                    except BufferError:  # 100,000 records in flight: wait for acknowledgements
                        producer.poll(0.05)
                producer.poll(0)
            producer.poll(0.001)
        assert producer.flush(300) == 0 and not failed, failed[:3]
        wall = time.perf_counter() - start
        server_cpu = _process_cpu(server.pid) - cpu
        ordered = sorted(latencies)
        result["produce"] = {
            "records": len(ordered),
            "records_per_s": round(len(ordered) / wall),
            "ack_p50_ms": round(statistics.median(ordered) * 1000, 1),
            "ack_p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
            "wall_s": round(wall, 2),
            "server_cpu_s": round(server_cpu, 2),
            "server_cpu_us_per_record": round(server_cpu / len(ordered) * 1e6, 1),
            "load_1m_after": round(os.getloadavg()[0], 2),
        }
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "tiny", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
        count, start = 0, time.perf_counter()
        deadline = time.monotonic() + 300
        while count < partitions * batches and time.monotonic() < deadline:
            count += sum(m.error() is None for m in consumer.consume(10_000, 1.0))
        result["consume"] = {"records": count, "wall_s": round(time.perf_counter() - start, 2)}
        consumer.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    log = (data_dir.parent / "serve.log").read_text()
    stats = re.findall(r"metadata cache: ([\d.]+)% hits \(([^)]*)\)", log)
    result["cache_hit_rate_pct"], result["cache_detail"] = (
        (float(stats[-1][0]), stats[-1][1]) if stats else (None, None)
    )
    result["targets_met"] = {
        "ack_p99_under_500_ms": result["produce"]["ack_p99_ms"] < 500,
        "cache_hit_rate_over_90": (result["cache_hit_rate_pct"] or 0) > 90,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0, help="records/s (default: unpaced)")
    parser.add_argument(
        "--metadata",
        default=os.environ.get(
            "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metadata"))
    args = parser.parse_args()
    schema = f"tiny_{uuid.uuid4().hex[:8]}" if args.metadata.startswith("postgres") else None
    metadata = args.metadata
    if schema is not None:
        with psycopg.connect(args.metadata, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        metadata = f"{args.metadata}?options=-csearch_path%3D{schema}"
    try:
        with tempfile.TemporaryDirectory(prefix="tiny-") as tmp:
            if schema is None:  # SQLite: in the data directory
                metadata = f"sqlite:///{tmp}/data/metadata.sqlite3"
            result = run(Path(tmp) / "data", metadata, args.partitions, args.batches, args.rate)
    finally:
        if schema is not None:
            with psycopg.connect(args.metadata, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    result["metadata_backend"] = "postgresql" if schema else "sqlite"
    args.out.mkdir(parents=True, exist_ok=True)
    paced = f"_at_{args.rate:.0f}" if args.rate else ""
    name = f"workload_{result['metadata_backend']}_{args.partitions}x{args.batches}{paced}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
