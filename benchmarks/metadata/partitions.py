"""A topic of 10,000 partitions through the Kafka protocol: created, produced to (every
partition), fetched from, listed, and read by SQL, with the issue's targets.

Usage: python -m benchmarks.metadata.partitions [--partitions 10000]
       [--metadata postgresql://postgres@127.0.0.1:5432/test] [--out benchmarks/results/metadata]

One ``streamhouse serve`` process (local object store in a temporary data directory, the
metadata store ``--metadata``; PostgreSQL in a fresh schema by default) and librdkafka clients
(confluent-kafka):

- ``create_s``: CreateTopics of N partitions, until the admin client has its answer
  (target < 10 s);
- ``metadata_ms``: a Metadata request for the topic (N partitions in the answer), median and
  worst of 5 (target < 200 ms);
- ``produce_s``: one record to each partition, until every delivery is acknowledged;
- ``fetch_s``: a consumer assigned every partition from offset 0, until it has all N records;
- ``list_s``: ``streamhouse topic list`` (a process of its own);
- ``sql_s``: ``SELECT count(DISTINCT _partition)`` over the topic (target: N).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

import streamhouse

TOPIC = "wide"
TARGETS = {"create_s": 10.0, "metadata_ms": 200.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data_dir: Path, metadata: str, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "streamhouse", "-v", "--data-dir", str(data_dir)]
    command += ["--metadata", metadata, "serve", "--port", str(port)]
    command += ["--advertised-host", "127.0.0.1"]
    """``streamhouse -v serve`` on ``data_dir``, logging to ``serve.log`` beside it."""
    log = (data_dir.parent / "serve.log").open("ab")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited with {server.returncode}") from None
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("serve did not listen within 60 s")


def run(data_dir: Path, metadata: str, partitions: int) -> dict[str, Any]:
    """Every phase against one fresh ``serve``; the figures (and what each phase checked)."""
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    port = free_port()
    server = serve(data_dir, metadata, port)
    bootstrap = f"127.0.0.1:{port}"
    result: dict[str, Any] = {"partitions": partitions, "load_1m": round(os.getloadavg()[0], 2)}
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        start = time.perf_counter()
        admin.create_topics([NewTopic(TOPIC, partitions, 1)])[TOPIC].result(60)
        result["create_s"] = round(time.perf_counter() - start, 3)

        waits = []
        for _ in range(5):
            start = time.perf_counter()
            answer = admin.list_topics(topic=TOPIC, timeout=30)
            waits.append(time.perf_counter() - start)
            assert len(answer.topics[TOPIC].partitions) == partitions
        result["metadata_ms"] = round(statistics.median(waits) * 1000, 1)
        result["metadata_worst_ms"] = round(max(waits) * 1000, 1)

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 0})
        failed: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failed.append(str(err))

        start = time.perf_counter()
        for p in range(partitions):
            producer.produce(TOPIC, f"p{p}".encode(), partition=p, on_delivery=delivered)
            producer.poll(0)
        assert producer.flush(120) == 0 and not failed, failed[:3]
        result["produce_s"] = round(time.perf_counter() - start, 3)

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "wide", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
        seen: dict[int, bytes] = {}
        start = time.perf_counter()
        deadline = time.monotonic() + 180
        while len(seen) < partitions and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 1.0):
                if message.error() is None:
                    seen[message.partition()] = message.value()
        result["fetch_s"] = round(time.perf_counter() - start, 3)
        consumer.close()
        result["fetched_partitions"] = len(seen)
        assert seen == {p: f"p{p}".encode() for p in range(partitions)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)

    start = time.perf_counter()
    listed = subprocess.run(
        [sys.executable, "-m", "streamhouse", "--data-dir", str(data_dir), "--metadata", metadata]
        + ["topic", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    result["list_s"] = round(time.perf_counter() - start, 3)
    assert TOPIC in listed.stdout and str(partitions) in listed.stdout, listed.stdout

    with streamhouse.connect(data_dir, metadata=metadata) as sh:
        start = time.perf_counter()
        table = sh.sql(f"SELECT count(DISTINCT _partition) AS n FROM {TOPIC}").to_arrow_table()
        result["sql_s"] = round(time.perf_counter() - start, 3)
    result["sql_distinct_partitions"] = table["n"][0].as_py()
    result["targets_met"] = {
        "create_s": result["create_s"] < TARGETS["create_s"],
        "metadata_ms": result["metadata_ms"] < TARGETS["metadata_ms"],
        "sql_every_partition": result["sql_distinct_partitions"] == partitions,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument(
        "--metadata",
        default=os.environ.get(
            "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metadata"))
    args = parser.parse_args()
    schema = None
    metadata = args.metadata
    if metadata.startswith("postgres"):
        schema = f"wide_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(metadata, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        metadata = f"{metadata}?options=-csearch_path%3D{schema}"
    try:
        with tempfile.TemporaryDirectory(prefix="wide-") as tmp:
            result = run(Path(tmp) / "data", metadata, args.partitions)
    finally:
        if schema is not None:
            with psycopg.connect(args.metadata, autocommit=True) as admin:
                admin.execute(f"DROP SCHEMA {schema} CASCADE")
    result["metadata_backend"] = "postgresql" if schema else "sqlite"
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"partitions_{result['metadata_backend']}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
