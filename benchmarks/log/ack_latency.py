"""Acknowledgement latency one message at a time, and where it goes.

    python -m benchmarks.log.ack_latency [--messages 2000] [--backend local|postgres-s3|both]

librdkafka's ``0055_producer_latency`` as a benchmark: a confluent-kafka producer with
``acks=all`` and ``linger.ms=0`` sends one message, waits for its acknowledgement, and sends
the next, against a fresh ``streamhouse serve``. Reported: the mean, p50, p99 and max of the
client's produce() -> acknowledgement time, and a breakdown of it:

- ``round trip without storage``: an ApiVersions request on a raw socket (socket write and
  read both ways, the server's frame read, dispatch and response write);
- ``decode + encode``: the server's Produce parsing, batch validation and response encoding,
  timed in this process on the same request shape;
- every stage of a flush as the server measured it (its ``produce path`` log line when it
  stops): waiting for the writer thread, encoding the segment, the object write, its fsync, the
  rename and directory fsync (or the PUT on S3), waiting for the committer, the metadata
  commit, and waking the event loop with the result.

The stages of a flush overlap where the writer runs them at once, so they need not add up
to the mean. Figures go to ``benchmarks/results/ack_latency.json`` with the load average.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import re
import signal
import socket
import struct
import tempfile
import time
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.log.kafka import _free_port, _start_server

log = logging.getLogger("ack_latency")

RESULTS = Path(__file__).resolve().parent.parent / "results" / "ack_latency.json"
POSTGRES_URL = os.environ.get(
    "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
_STAGES = re.compile(r"produce path, mean per flush: (\{.*\})")


def _summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {
        "messages": len(ordered),
        "mean_ms": round(sum(ordered) / len(ordered), 3),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }


def one_at_a_time(bootstrap: str, topic: str, messages: int) -> dict[str, float]:
    """Send ``messages`` 100-byte messages, each after the previous one was acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    value = os.urandom(50).hex().encode()
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for _ in range(20):  # connections and metadata first
        producer.produce(topic, value, partition=0, on_delivery=delivered)
        producer.flush(30)
    samples: list[float] = []
    clock = time.perf_counter
    for _ in range(messages):
        started = clock()
        producer.produce(topic, value, partition=0, on_delivery=delivered)
        producer.flush(30)
        samples.append((clock() - started) * 1000)
    if failures:
        raise RuntimeError(f"{len(failures)} messages failed: {failures[0]}")
    return _summary(samples)


def round_trip_without_storage(port: int, requests: int = 500) -> dict[str, float]:
    """ApiVersions v0 on a raw socket: the round trip of a request that touches no storage."""
    body = struct.pack(">hhih", 18, 0, 1, 5) + b"bench"
    frame = struct.pack(">i", len(body)) + body
    samples: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(requests):
            started = time.perf_counter()
            sock.sendall(frame)
            size = struct.unpack(">i", _read(sock, 4))[0]
            _read(sock, size)
            samples.append((time.perf_counter() - started) * 1000)
    return _summary(samples)


def _read(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise RuntimeError("connection closed")
        chunks += chunk
    return bytes(chunks)


def decode_and_encode(iterations: int = 5000) -> dict[str, float]:
    """The server's Produce v8 parse, batch split and response encode for one 100-byte record."""
    from kio.serial import entity_writer

    from streamhouse.kafka.produce import encode_produce_response, parse_produce
    from streamhouse.kafka.wire import messages as kafka_messages
    from streamhouse.log.records import build_batch, split_batches

    module = kafka_messages(0, 8, False)
    batch = build_batch([os.urandom(100)])
    request = module.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(milliseconds=30000),
        topic_data=(
            module.TopicProduceData(
                name="latency",
                partition_data=(module.PartitionProduceData(index=0, records=batch),),
            ),
        ),
    )
    header_cls = request.__header_schema__
    buf = io.BytesIO()
    header = header_cls(
        request_api_key=0, request_api_version=8, correlation_id=7, client_id="rdkafka"
    )
    entity_writer(header_cls)(buf, header)
    entity_writer(type(request))(buf, request)
    frame = buf.getvalue()
    acknowledged: Future[int] = Future()
    acknowledged.set_result(0)
    started = time.perf_counter()
    for _ in range(iterations):
        parsed = parse_produce(frame)
        records = parsed.topics[0][1][0][1]
        split_batches(records)
        encode_produce_response(7, 8, [("latency", [(0, acknowledged)])])  # type: ignore[list-item]
    return {"mean_ms": round((time.perf_counter() - started) * 1000 / iterations, 4)}


def run_backend(name: str, messages: int, env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ack-latency-") as tmp:
        port = _free_port()
        server_log = Path(tmp) / "serve.log"
        process = _start_server(Path(tmp) / "data", port, env=env, log_path=server_log)
        try:
            bootstrap = f"127.0.0.1:{port}"
            topic = f"latency-{uuid.uuid4().hex[:8]}"
            admin = AdminClient({"bootstrap.servers": bootstrap})
            admin.create_topics([NewTopic(topic, 1)])[topic].result(30)
            load0 = os.getloadavg()[0]
            acks = one_at_a_time(bootstrap, topic, messages)
            rtt = round_trip_without_storage(port)
            load1 = os.getloadavg()[0]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
        text = server_log.read_text()
        found = _STAGES.findall(text)
        if not found:
            raise RuntimeError(f"no stage times in the server's log: {text[-2000:]}")
        return {
            "backend": name,
            "acknowledgement": acks,
            "round trip without storage": rtt,
            "server stages (mean per flush)": json.loads(found[-1]),
            "load_1m": [round(load0, 2), round(load1, 2)],
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--backend", choices=["local", "postgres-s3", "both"], default="both")
    parser.add_argument("--postgres", default=POSTGRES_URL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs: list[dict[str, Any]] = []
    if args.backend in ("local", "both"):
        log.info("local store, SQLite metadata")
        runs.append(run_backend("local + SQLite", args.messages, {}))
    if args.backend in ("postgres-s3", "both"):
        runs.append(_postgres_s3(args))
    result = {
        "label": args.label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "decode + encode": decode_and_encode(),
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    previous = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.write_text(json.dumps([*previous, result], indent=2) + "\n")


def _postgres_s3(args: argparse.Namespace) -> dict[str, Any]:
    """The same against PostgreSQL metadata (a fresh schema) and S3 (a moto server)."""
    import psycopg
    from moto.server import ThreadedMotoServer

    schema = f"ack_latency_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        bucket = f"latency-{uuid.uuid4().hex[:8]}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", **credentials
        ).create_bucket(Bucket=bucket)
        separator = "&" if "?" in args.postgres else "?"
        env = {
            "STREAMHOUSE_METADATA": f"{args.postgres}{separator}options=-csearch_path%3D{schema}",
            "STREAMHOUSE_OBJECT_STORE": f"s3://{bucket}/log",
            "STREAMHOUSE_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        log.info("S3 (moto) store, PostgreSQL metadata")
        return run_backend("S3 (moto) + PostgreSQL", args.messages, env)
    finally:
        moto.stop()
        with psycopg.connect(args.postgres, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
