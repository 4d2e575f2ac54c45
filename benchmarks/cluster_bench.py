"""Several agents (issue 15): produce throughput through 1, 2 and 3 agents, with a consumer
on another agent than the producer, a producer's longest stall across a kill -9, and a
continuous query's failover.

``python benchmarks/cluster_bench.py [--records 200000] [--rounds 2] [--stalls 3]
[--failovers 2] [--ttl S] [--parts throughput,stall,failover]
[--postgres postgresql://postgres@127.0.0.1:5432/test] [--out benchmarks/results/cluster.json]``

Agents are ``streamhouse serve`` processes on one fresh PostgreSQL schema, sharing one data
directory's objects, each in its own zone (``z0``, ``z1``, ``z2``), so a client that names a
zone in its ``client.id`` talks to that agent alone and one that does not talks to all. They
run with their default settings (``agent_ttl_s``, ``query_lease_ttl_s``) unless ``--ttl`` sets
``agent_ttl_s``.

- throughput: confluent-kafka (lz4, acks=all, 100-byte values, 6 partitions) bootstrapped
  with every running agent, records/s from the first ``produce`` to the end of ``flush``;
- the same through agent z0 alone while a consumer pinned to agent z1 reads the topic as it
  is written (its records/s counted until it has them all);
- stall, ``--stalls`` times: an idempotent producer with default retries writes 2,000
  records/s through all three agents; the agent leading partition 0 is killed with -9 after
  4 s and started again after 8 s more. Reported: the longest gap between consecutive delivery
  reports, over all partitions and within the killed agent's partitions, and the delivery
  errors; once with ``topic.metadata.refresh.interval.ms`` 1000 and once with librdkafka's
  defaults (5 minutes);
- failover, ``--failovers`` times: three agents run the roadmap's windowed query
  (``queries/clicks.sql``, as tests/test_query_failover.py); the agent holding it is killed
  with -9 and started again: seconds from the kill to the first output record only a new
  holder could write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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


def _stall(servers: list[KafkaServer], topic: str, **config: object) -> dict:
    """Delivery report gaps of a steady idempotent producer across a kill -9 and restart."""
    from confluent_kafka import Producer

    _wait_brokers(servers, len(servers))
    bootstrap = ",".join(s.bootstrap for s in servers)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, **config}
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
            restarted = threading.Thread(target=victim.start, daemon=True)
            restarted.start()
    producer.flush(120)
    if restarted is not None:
        restarted.join()

    def longest(times: list[float]) -> float:
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)

    everything = [t for t, _ in reports]
    its = [t for t, p in reports if p in victim_partitions]
    after_kill = [t for t in its if t >= killed_at]
    return {
        "config": config,
        "load": os.getloadavg()[0],
        "acked": len(reports),
        "delivery_errors": len(errors),
        "longest_gap_all_partitions_s": round(longest(everything), 3),
        "longest_gap_killed_agents_partitions_s": round(longest(its), 3),
        "killed_agents_partitions": sorted(victim_partitions),
        "first_ack_of_its_partitions_after_kill_s": round(after_kill[0] - killed_at, 3)
        if after_kill
        else None,
    }


def _failover(tmp: Path, url: str, rounds: int) -> dict:
    """Seconds from a kill -9 of the agent running the roadmap's query to its first output
    record written by another, ``rounds`` times (the killed agent is started again)."""
    from test_query_failover import Cluster as QueryCluster
    from test_query_failover import _events, _minute

    cluster = QueryCluster(tmp, url, lease_ttl_s=None)
    took: list[float] = []
    loads: list[float] = []
    try:
        cluster.output()  # opens the store
        assert cluster.sh is not None
        cluster.sh.create_topic("events", partitions=4)
        for _ in range(3):
            cluster.start_agent()
        cluster.holder(60)
        second = 0
        cluster.append(_events(range(second, second + 600)))  # ten minutes of event time
        second += 600
        for _ in range(rounds):
            done = second // 60 - 2  # every window but the last closed
            cluster.wait_for(lambda rows, done=done: _minute(rows, done), 120)
            victim, _ = cluster.holder(60)
            victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            killed_at = time.monotonic()
            victim.process.wait()  # type: ignore[union-attr]
            loads.append(os.getloadavg()[0])
            cluster.append(_events(range(second, second + 600)))  # closes the last window
            second += 600
            cluster.wait_for(lambda rows, done=done: _minute(rows, done + 1), 120)
            took.append(round(time.monotonic() - killed_at, 2))
            victim.start()
    finally:
        cluster.close()
    return {"kill_to_first_new_output_s": took, "load": loads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stalls", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=2)
    parser.add_argument("--ttl", type=float, help="agent_ttl_s of the agents (their default)")
    parser.add_argument("--parts", default="throughput,stall,failover")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "STREAMHOUSE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/cluster.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    result: dict = {"load_before": os.getloadavg(), "records": args.records, "ttl_s": args.ttl}
    if args.ttl is None:
        from streamhouse.config import Settings

        defaults = Settings()
        result["ttl_s"] = defaults.agent_ttl_s
        result["query_lease_ttl_s"] = defaults.query_lease_ttl_s
    if parts & {"throughput", "stall"}:
        with _schema(args.postgres) as url:
            result.update(_agents_runs(args, url, parts))
    if "failover" in parts:
        with _schema(args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
            result["failover"] = _failover(Path(tmp), url, args.failovers)
    result["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


@contextlib.contextmanager
def _schema(postgres: str) -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema, dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{postgres}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def _agents_runs(args: argparse.Namespace, url: str, parts: set[str]) -> dict:
    """The throughput and stall parts, on three agents in zones z0-z2."""
    servers: list[KafkaServer] = []
    result: dict = {}
    env = {} if args.ttl is None else {"STREAMHOUSE_AGENT_TTL_S": str(args.ttl)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            with streamhouse.connect(data, metadata=url) as sh:
                for name in ("t", "stall"):
                    sh.create_topic(name, partitions=PARTITIONS)

            def agent(i: int) -> KafkaServer:
                server = KafkaServer(data, args=["--metadata", url, "--zone", f"z{i}"], env=env)
                server.log_path = Path(tmp) / f"agent-{i}.log"
                servers.append(server)
                return server.start()

            if "throughput" in parts:
                result.update(_throughput(args, url, data, servers, agent))
            else:
                for i in range(3):
                    agent(i)
            if "stall" in parts:
                result["stall"] = [
                    _stall(servers, "stall", **{"topic.metadata.refresh.interval.ms": 1000})
                    for _ in range(args.stalls)
                ]
                result["stall_client_defaults"] = [
                    _stall(servers, "stall") for _ in range(args.stalls)
                ]
    finally:
        for server in servers:
            server.kill()
    return result


def _throughput(
    args: argparse.Namespace,
    url: str,
    data: Path,
    servers: list[KafkaServer],
    agent: Callable[[int], KafkaServer],
) -> dict:
    """Records/s through 1, 2 and 3 agents, then pinned producer and consumer."""
    result: dict = {}
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
    result["objects"]["postgres_transactions"] = _transactions(args.postgres) - commits_before
    result["throughput_records_s"] = throughput
    result["medians_records_s"] = {k: median(v) for k, v in throughput.items()}
    result["producer_z0_consumer_z1"] = pinned
    return result


if __name__ == "__main__":
    main()
