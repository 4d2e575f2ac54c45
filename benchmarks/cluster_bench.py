"""Several agents (issue 15): produce throughput through 1, 2 and 3 agents, with a consumer
on another agent than the producer, and a producer's longest stall across a kill -9.

``python benchmarks/cluster_bench.py [--records 200000] [--rounds 2] [--ttl 3]
[--postgres postgresql://postgres@127.0.0.1:5432/test] [--out benchmarks/results/cluster.json]``

Agents are ``streamhouse serve`` processes on one fresh PostgreSQL schema, sharing one data
directory's objects, each in its own zone (``z0``, ``z1``, ``z2``), so a client that names a
zone in its ``client.id`` talks to that agent alone and one that does not talks to all.

- throughput: confluent-kafka (lz4, acks=all, 100-byte values, 6 partitions) bootstrapped
  with every running agent, records/s from the first ``produce`` to the end of ``flush``;
- the same through agent z0 alone while a consumer pinned to agent z1 reads the topic as it
  is written (its records/s counted until it has them all);
- stall: an idempotent producer with default retries writes 2,000 records/s through all
  three agents; the agent leading partition 0 is killed with -9 after 4 s and started again
  after 8 s more. Reported: the longest gap between consecutive delivery reports, over all
  partitions and within the killed agent's partitions, and the delivery errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from statistics import median

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from kafka_fixtures import KafkaServer  # noqa: E402

import streamhouse  # noqa: E402

PARTITIONS = 6
VALUES = [os.urandom(50).hex().encode() for _ in range(1000)]  # 100 B, not all alike


def _brokers(server: KafkaServer) -> int:
    from confluent_kafka.admin import AdminClient

    return len(AdminClient({"bootstrap.servers": server.bootstrap}).list_topics(timeout=5).brokers)


def _wait_brokers(servers: list[KafkaServer], count: int) -> None:
    deadline = time.monotonic() + 30
    while not all(_brokers(s) == count for s in servers):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agents never agreed on {count} brokers")
        time.sleep(0.2)


def _produce(bootstrap: str, topic: str, records: int, client_id: str = "bench") -> float:
    """Records/s of ``records`` values produced and flushed."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 5,
        }
    )
    producer.list_topics(topic, timeout=10)  # connected before the clock starts
    start = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, VALUES[i % len(VALUES)])
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(120):
        raise RuntimeError("records left undelivered")
    return records / (time.perf_counter() - start)


def _consume(bootstrap: str, topic: str, records: int, client_id: str, out: dict) -> None:
    """Read ``topic`` from its start until ``records`` arrived; records/s into ``out``."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "client.id": client_id, "group.id": uuid.uuid4().hex}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got, start, deadline = 0, time.perf_counter(), time.monotonic() + 180
    while got < records and time.monotonic() < deadline:
        got += sum(1 for m in consumer.consume(10_000, 0.2) if not m.error())
    out["consumed"] = got
    out["consumer_records_s"] = got / (time.perf_counter() - start)
    consumer.close()


def _transactions(url: str) -> int:
    """Transactions committed in the database so far (every client's, heartbeats too)."""
    with psycopg.connect(url, autocommit=True) as conn:
        query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        return int(conn.execute(query).fetchone()[0])


def _objects(data: Path, records: int) -> dict:
    """Segment objects the agents wrote for ``records`` records, and their bytes."""
    sizes = [p.stat().st_size for p in (data / "objects").rglob("*.seg")]
    notes = sum(1 for p in (data / "objects").rglob("*") if p.is_file()) - len(sizes)
    return {
        "records": records,
        "segment_objects": len(sizes),
        "other_objects": notes,
        "segment_bytes": sum(sizes),
        "mean_object_bytes": round(sum(sizes) / max(1, len(sizes))),
        "objects_per_gib": round(len(sizes) * 2**30 / max(1, sum(sizes)), 1),
    }


def _stall(servers: list[KafkaServer], topic: str) -> dict:
    """Delivery report gaps of a steady idempotent producer across a kill -9 and restart."""
    from confluent_kafka import Producer

    bootstrap = ",".join(s.bootstrap for s in servers)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    leaders = {
        p.id: p.leader
        for p in producer.list_topics(topic, timeout=10).topics[topic].partitions.values()
    }
    brokers = producer.list_topics(timeout=10).brokers
    victim_port = brokers[leaders[0]].port
    (victim,) = [s for s in servers if s.port == victim_port]
    victim_partitions = {p for p, leader in leaders.items() if leader == leaders[0]}
    reports: list[tuple[float, int]] = []
    errors: list[str] = []

    def delivered(err: object, msg: object) -> None:
        if err is None:
            reports.append((time.monotonic(), msg.partition()))  # type: ignore[attr-defined]
        else:
            errors.append(str(err))

    start = time.monotonic()
    killed_at = restarted = None
    while time.monotonic() - start < 16:
        for value in VALUES[:20]:
            producer.produce(topic, value, on_delivery=delivered)
        producer.poll(0.01)
        elapsed = time.monotonic() - start
        if killed_at is None and elapsed >= 4:
            victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            victim.process.wait()  # type: ignore[union-attr]
            killed_at = time.monotonic()
        elif restarted is None and elapsed >= 12:
            threading.Thread(target=victim.start, daemon=True).start()
            restarted = True
    producer.flush(120)

    def longest(times: list[float]) -> float:
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)

    everything = [t for t, _ in reports]
    its = [t for t, p in reports if p in victim_partitions]
    after_kill = [t for t in its if t >= killed_at]
    return {
        "acked": len(reports),
        "delivery_errors": len(errors),
        "longest_gap_all_partitions_s": round(longest(everything), 3),
        "longest_gap_killed_agents_partitions_s": round(longest(its), 3),
        "killed_agents_partitions": sorted(victim_partitions),
        "first_ack_of_its_partitions_after_kill_s": round(after_kill[0] - killed_at, 3)
        if after_kill
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttl", type=float, default=3.0, help="agent_ttl_s of the agents")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cluster.json")
    args = parser.parse_args()

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{args.postgres}?options=-csearch_path%3D{schema}"
    servers: list[KafkaServer] = []
    result: dict = {"load_before": os.getloadavg(), "records": args.records, "ttl_s": args.ttl}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            with streamhouse.connect(data, metadata=url) as sh:
                for name in ("t", "stall"):
                    sh.create_topic(name, partitions=PARTITIONS)

            def agent(i: int) -> KafkaServer:
                server = KafkaServer(
                    data,
                    args=["--metadata", url, "--zone", f"z{i}"],
                    env={"STREAMHOUSE_AGENT_TTL_S": str(args.ttl)},
                )
                server.log_path = Path(tmp) / f"agent-{i}.log"
                servers.append(server)
                return server.start()

            commits_before = _transactions(args.postgres)
            throughput: dict[str, list[float]] = {}
            for n in (1, 2, 3):
                agent(n - 1)
                _wait_brokers(servers, n)
                bootstrap = ",".join(s.bootstrap for s in servers)
                throughput[f"{n}_agents"] = [
                    round(_produce(bootstrap, "t", args.records)) for _ in range(args.rounds)
                ]
            pinned: list[dict] = []
            for _ in range(args.rounds):
                topic = f"p{uuid.uuid4().hex[:6]}"
                with streamhouse.connect(data, metadata=url) as sh:
                    sh.create_topic(topic, partitions=PARTITIONS)
                consumed: dict = {}
                reader = threading.Thread(
                    target=_consume,
                    args=(servers[1].bootstrap, topic, args.records, "bench,zone=z1", consumed),
                )
                reader.start()
                rate = _produce(servers[0].bootstrap, topic, args.records, "bench,zone=z0")
                reader.join()
                pinned.append({"producer_records_s": round(rate), **consumed})
                pinned[-1]["consumer_records_s"] = round(pinned[-1]["consumer_records_s"])
            result["objects"] = _objects(data, args.records * args.rounds * 4)
            result["objects"]["postgres_transactions"] = (
                _transactions(args.postgres) - commits_before
            )
            result["throughput_records_s"] = throughput
            result["medians_records_s"] = {k: median(v) for k, v in throughput.items()}
            result["producer_z0_consumer_z1"] = pinned
            result["stall"] = _stall(servers, "stall")
            result["load_after"] = os.getloadavg()
    finally:
        for server in servers:
            server.kill()
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
