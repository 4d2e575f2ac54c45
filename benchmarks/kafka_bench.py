"""Kafka protocol throughput and latency, StreamHouse against librdkafka's mock cluster.

    python benchmarks/kafka_bench.py [--records 500000] [--out results/kafka_bench.json]

Starts ``streamhouse serve`` on a temporary data directory and a free loopback port (or uses
``--bootstrap``), then with confluent-kafka: produces ``--records`` values of
``--value-bytes`` bytes to ``--partitions`` partitions (lz4, linger 5 ms, acks=all),
consumes them all back from the beginning, and measures produce acknowledgement latency at
a fixed ``--rate``. The same runs against an in-process librdkafka mock cluster
(``test.mock.num.brokers``) give the ratios. Results are JSON on stdout (and ``--out``);
progress goes to stderr through ``logging``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("kafka_bench")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "streamhouse", "serve", "--data-dir", str(data_dir)]
    cmd += ["--port", str(port), "--advertised-host", "127.0.0.1"]
    process = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def _create_topic(conf: dict[str, Any], topic: str, partitions: int) -> int:
    """Create the topic; its partition count (the mock cluster auto-creates with its own)."""
    admin = AdminClient(conf)
    try:
        for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            future.result(10)
    except Exception as exc:  # librdkafka's mock cluster does not answer CreateTopics
        log.info("CreateTopics failed (%r); relying on auto-creation", exc)
    metadata = Producer(conf).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


def produce(conf: dict[str, Any], topic: str, n: int, partitions: int, value: bytes) -> float:
    """Records per second of an unthrottled lz4 producer, acks=all."""
    producer = Producer(
        {
            **conf,
            "compression.type": "lz4",
            "linger.ms": 5,
            "acks": "all",
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    failures = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal failures
        failures += err is not None

    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, value, partition=i % partitions, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{failures} records failed")
    return n / elapsed


def consume(conf: dict[str, Any], topic: str, n: int, partitions: int) -> float:
    """Records per second of one consumer reading everything from the beginning."""
    consumer = Consumer(
        {
            **conf,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got, started = 0, time.perf_counter()
    deadline = started + 120
    while got < n and time.perf_counter() < deadline:
        got += sum(1 for m in consumer.consume(10_000, timeout=0.5) if m.error() is None)
    elapsed = time.perf_counter() - started
    consumer.close()
    if got < n:
        raise RuntimeError(f"consumed {got} of {n}")
    return n / elapsed


def latency(
    conf: dict[str, Any], topic: str, rate: int, seconds: float, partitions: int, value: bytes
) -> dict[str, float]:
    """Produce acknowledgement latency percentiles (ms) at ``rate`` records per second."""
    producer = Producer({**conf, "compression.type": "lz4", "linger.ms": 5, "acks": "all"})
    samples: list[float] = []

    def delivered(err: object, msg: Any) -> None:
        if err is None:  # librdkafka's own produce() -> acknowledgement time
            samples.append(msg.latency() * 1000)

    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        while (now := time.perf_counter()) < due:
            producer.poll(0)
            time.sleep(max(0.0, min(0.0005, due - now)))
        producer.produce(topic, value, partition=i % partitions, on_delivery=delivered)
        if i % 50 == 0:  # latency() counts until the report is served: serve them promptly
            producer.poll(0)
    producer.flush(60)
    achieved = total / (time.perf_counter() - started)
    samples.sort()

    def pct(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2)

    return {"rate": round(achieved), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def run_suite(conf: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    partitions = _create_topic(conf, topic, args.partitions)
    log.info("producing %d records to %s (%d partitions)", args.records, topic, partitions)
    produced = produce(conf, topic, args.records, partitions, value)
    log.info("consuming")
    consumed = consume(conf, topic, args.records, partitions)
    log.info("latency at %d records/s", args.rate)
    lat_topic = f"{topic}-lat"
    lat_partitions = _create_topic(conf, lat_topic, args.partitions)
    lat = latency(conf, lat_topic, args.rate, args.seconds, lat_partitions, value)
    return {
        "partitions": partitions,
        "produce_records_per_s": round(produced),
        "consume_records_per_s": round(consumed),
        "latency": lat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing server (default: start one)")
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rate", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-mock", action="store_true", help="skip the mock-cluster run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    results: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}}
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        bootstrap = args.bootstrap
        if bootstrap is None:
            port = _free_port()
            server = _start_server(Path(tmp) / "data", port)
            bootstrap = f"127.0.0.1:{port}"
        try:
            results["streamhouse"] = run_suite({"bootstrap.servers": bootstrap}, args)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    if not args.no_mock:
        mock = Producer({"test.mock.num.brokers": 1})
        brokers = mock.list_topics(timeout=10).brokers.values()
        mock_bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
        results["mock"] = run_suite({"bootstrap.servers": mock_bootstrap}, args)
        del mock
        sh, mk = results["streamhouse"], results["mock"]
        results["ratio_to_mock"] = {
            "produce": round(sh["produce_records_per_s"] / mk["produce_records_per_s"], 3),
            "consume": round(sh["consume_records_per_s"] / mk["consume_records_per_s"], 3),
        }
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
