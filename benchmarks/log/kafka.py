"""Kafka protocol throughput and latency: StreamHouse against librdkafka's mock cluster.

    python -m benchmarks.log [--records 1000000] [--rate 50000] [--seconds 5]
        [--out benchmarks/results/kafka_bench.json] [--bootstrap HOST:PORT] [--no-mock]

Starts ``streamhouse serve`` on a temporary data directory and a free loopback port (or uses
``--bootstrap``), runs the phases below with confluent-kafka, then runs them again against an
in-process librdkafka mock cluster (``test.mock.num.brokers``) and reports the ratios:

1. **produce**: ``--records`` values of ``--value-bytes`` bytes, round-robin over
   ``--partitions`` partitions, lz4, linger 5 ms, acks=all; records/s from the first
   ``produce()`` until ``flush()`` returns with nothing outstanding. Delivery reports are
   requested for failures only (``delivery.report.only.error``): a Python callback per record
   costs the client more CPU than the broker spends on it (``--per-record-callbacks`` restores
   one per record, as earlier versions of this benchmark did).
2. **consume**: one consumer reads every record from the beginning (topic metadata fetched
   before ``assign``, as a long-running consumer has it; ``fetch.queue.backoff.ms`` 20 ms
   instead of librdkafka's 1 s pause whenever 100,000 records are queued); records/s from
   ``assign`` to the last record, and the time to the first one.
3. **ack latency**: produce at ``--rate`` records/s for ``--seconds``; percentiles of
   librdkafka's own per-message latency (``produce()`` call to acknowledgement).
4. **end-to-end latency**: the same rate with a consumer tailing the topic; percentiles of
   the time from ``produce()`` (the record's create timestamp, ms) to the consumer holding it.

Every phase records the 1-minute load average and the CPU seconds of this process (the client,
and the mock broker when it runs) and of the server process: the machine may be shared, and
wall-clock figures move with its load. A short fsync probe in the data directory's file system
(write + fsync a file + fsync its directory, every 5 ms) shows what durability costs on this
disk: StreamHouse acknowledges a produce only once its segment object and index rows are
durable, the mock cluster keeps everything in memory.

``--transactions`` runs issue 18's phases instead, against StreamHouse only, alternating
``--rounds`` times (the machine's speed drifts; quote the medians):

- **idempotent produce**: phase 1 with ``enable.idempotence``;
- **transactional produce**: ``--transactional-records`` (20,000) with the same producer
  settings, ``--per-transaction`` records (100) per transaction, each committed before the
  next begins (as a consume-transform-produce loop does); then, for each count N of
  ``--producers`` (4 and 16), N such producers at once (distinct ``transactional.id``, as
  Kafka's own transactional perf tests run several), each sending that many: records/s from
  their start (``init_transactions`` included) to the last commit. One producer's
  transactions are serial, each waiting for its commit, so its figure is a latency; the
  throughput of transactional producing is that of the largest N
  (``transactional_to_idempotent``; ``transactional_to_idempotent_by_producers`` has all);
- **read_committed vs read_uncommitted fetch**: phase 2 over the topic the largest N wrote
  (transactions of 100 records, a marker per partition of each) with each ``isolation.level``,
  in the order A B B A (a reader after another finds warmer caches: measured up to 2x), each
  level's figure the mean of its two reads.

The mock cluster cannot create topics with a chosen partition count (it answers no
CreateTopics), so its topics are auto-created with librdkafka's default of 4 partitions.
Results are JSON on stdout and in ``--out``; progress goes to stderr through ``logging``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger("benchmarks.log.kafka")

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "kafka_bench.json"


# -- processes and measurements ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(
    data_dir: Path, port: int, *, env: dict[str, str] | None = None, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """``streamhouse serve`` on ``data_dir``; with ``log_path``, its INFO log goes there."""
    cmd = [sys.executable, "-m", "streamhouse", *(["-v"] if log_path else []), "serve"]
    cmd += ["--data-dir", str(data_dir), "--port", str(port), "--advertised-host", "127.0.0.1"]
    stderr = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(cmd, stderr=stderr, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def _process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of another process so far; 0 if there is none."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(server_pid: int | None, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``phase``; add wall and CPU seconds and the load average to its figures."""
    server0, client0, wall0 = _process_cpu(server_pid), os.times(), time.perf_counter()
    figures = phase()
    wall = time.perf_counter() - wall0
    client1, server1 = os.times(), _process_cpu(server_pid)
    figures["wall_s"] = round(wall, 3)
    figures["client_cpu_s"] = round(
        client1.user + client1.system - client0.user - client0.system, 3
    )
    if server_pid is not None:
        figures["server_cpu_s"] = round(server1 - server0, 3)
    figures["load_1m"] = round(os.getloadavg()[0], 2)
    return figures


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    samples = sorted(samples)

    def pct(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2)

    return {"p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def fsync_probe(directory: Path, seconds: float = 2.0, size: int = 16_384) -> dict[str, Any]:
    """Latency of write + fsync(file) + fsync(directory), every 5 ms, in ``directory``."""
    probe = directory / f"fsync-probe-{uuid.uuid4().hex[:8]}"
    probe.mkdir(parents=True)
    data = os.urandom(size)
    samples: list[float] = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            fd = os.open(probe / f"{len(samples)}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            dir_fd = os.open(probe, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            samples.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return {"samples": len(samples), **_percentiles(samples), "load_1m": os.getloadavg()[0]}


# -- phases --------------------------------------------------------------------------------


def _create_topic(conf: dict[str, Any], topic: str, partitions: int, *, mock: bool) -> int:
    """Create the topic (the mock auto-creates it); its partition count."""
    if not mock:
        admin = AdminClient(conf)
        for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            future.result(30)
    metadata = Producer(conf).list_topics(topic, timeout=10)
    return len(metadata.topics[topic].partitions)


def _producer_conf(conf: dict[str, Any], per_record: bool) -> dict[str, Any]:
    return {
        **conf,
        "compression.type": "lz4",
        "linger.ms": 5,
        "acks": "all",
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 2_000_000,
        "delivery.report.only.error": not per_record,
    }


def produce(
    conf: dict[str, Any], topic: str, n: int, partitions: int, value: bytes, per_record: bool
) -> dict[str, Any]:
    """Records per second of an unthrottled lz4 producer, acks=all."""
    producer = Producer(_producer_conf(conf, per_record))
    producer.list_topics(topic, timeout=10)  # connected, metadata known
    failures = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal failures
        failures += err is not None

    started = time.perf_counter()
    send = producer.produce
    for i in range(n):
        while True:
            try:
                send(topic, value, partition=i % partitions, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    outstanding = producer.flush(120)
    elapsed = time.perf_counter() - started
    if failures or outstanding:
        raise RuntimeError(f"{failures} records failed, {outstanding} unacknowledged")
    return {"records": n, "records_per_s": round(n / elapsed)}


def _transactional_producer(
    conf: dict[str, Any], topic: str, records: range, partitions: int, value: bytes, per: int
) -> None:
    """Send ``records`` (indexes: their partitions) in transactions of ``per``."""
    producer = Producer(
        {**_producer_conf(conf, False), "transactional.id": f"bench-{uuid.uuid4().hex[:8]}"}
    )
    producer.init_transactions(30)
    producer.list_topics(topic, timeout=10)
    send = producer.produce
    for start in range(records.start, records.stop, per):
        producer.begin_transaction()
        for i in range(start, min(start + per, records.stop)):
            send(topic, value, partition=i % partitions)
        producer.commit_transaction(30)  # flushes the transaction's records first


def produce_transactions(
    conf: dict[str, Any],
    topic: str,
    n: int,
    partitions: int,
    value: bytes,
    per_transaction: int,
    producers: int = 1,
) -> dict[str, Any]:
    """Records per second of ``producers`` transactional producers at once, each committing
    every ``per_transaction`` records (set-up and ``init_transactions`` included)."""
    share = -(-n // producers)
    threads = [
        threading.Thread(
            target=_transactional_producer,
            args=(conf, topic, range(k * share, min(n, (k + 1) * share)), partitions, value),
            kwargs={"per": per_transaction},
        )
        for k in range(producers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "records": n,
        "producers": producers,
        "records_per_s": round(n / elapsed),
        "transactions_per_s": round(n / per_transaction / elapsed, 1),
    }


def consume(
    conf: dict[str, Any], topic: str, n: int, partitions: int, isolation: str = "read_uncommitted"
) -> dict[str, Any]:
    """Records per second of one consumer reading everything from the beginning."""
    consumer = Consumer(
        {
            **conf,
            "isolation.level": isolation,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 52_428_800,
            "max.partition.fetch.bytes": 10_485_760,
            # Once its queue holds queued.min.messages (100,000), librdkafka stops fetching
            # for fetch.queue.backoff.ms (1 s by default): a reader that catches up from the
            # beginning would sit idle for seconds between fetches.
            "fetch.queue.backoff.ms": 20,
        }
    )
    consumer.list_topics(topic, timeout=10)  # leaders known: offsets are asked for at once
    got, first = 0, None
    started = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    deadline = started + 120
    while got < n and time.perf_counter() < deadline:
        batch = consumer.consume(10_000, timeout=0.5)
        if batch and first is None:
            first = time.perf_counter() - started
        got += sum(1 for m in batch if m.error() is None)
    elapsed = time.perf_counter() - started
    consumer.close()
    if got < n:
        raise RuntimeError(f"consumed {got} of {n}")
    return {
        "records": n,
        "records_per_s": round(n / elapsed),
        "first_record_ms": round((first or 0) * 1000, 1),
    }


def _produce_at_rate(
    producer: Producer, topic: str, rate: int, seconds: float, partitions: int, value: bytes,
    delivered: Callable[[Any, Any], None] | None,
) -> float:  # fmt: skip
    """Produce ``rate * seconds`` records at ``rate`` per second; the rate achieved."""
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        while (now := time.perf_counter()) < due:
            producer.poll(0)
            time.sleep(max(0.0, min(0.0005, due - now)))
        if delivered is None:
            producer.produce(topic, value, partition=i % partitions)
        else:
            producer.produce(topic, value, partition=i % partitions, on_delivery=delivered)
        if i % 50 == 0:  # latency() counts until the report is served: serve them promptly
            producer.poll(0)
    producer.flush(60)
    return total / (time.perf_counter() - started)


def ack_latency(
    conf: dict[str, Any], topic: str, rate: int, seconds: float, partitions: int, value: bytes
) -> dict[str, Any]:
    """Produce acknowledgement latency percentiles (ms) at ``rate`` records per second."""
    producer = Producer({**conf, "compression.type": "lz4", "linger.ms": 5, "acks": "all"})
    producer.list_topics(topic, timeout=10)
    samples: list[float] = []

    def delivered(err: object, msg: Any) -> None:
        if err is None:  # librdkafka's own produce() -> acknowledgement time
            samples.append(msg.latency() * 1000)

    achieved = _produce_at_rate(producer, topic, rate, seconds, partitions, value, delivered)
    return {"rate": round(achieved), **_percentiles(samples)}


def end_to_end_latency(
    conf: dict[str, Any], topic: str, rate: int, seconds: float, partitions: int, value: bytes
) -> dict[str, Any]:
    """Produce-to-consume latency percentiles (ms) at ``rate``, a consumer tailing the topic."""
    total = int(rate * seconds)
    delays: list[float] = []
    ready = threading.Event()

    def tail() -> None:
        consumer = Consumer(
            {**conf, "group.id": f"bench-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        )
        consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        warm_until = time.monotonic() + 1.0  # fetch sessions established before producing
        while time.monotonic() < warm_until:
            consumer.consume(1000, timeout=0.1)
        ready.set()
        deadline = time.monotonic() + seconds + 60
        poll, clock = consumer.poll, time.time
        while len(delays) < total and time.monotonic() < deadline:
            # poll(), not consume(n): consume waits for n records or its timeout, whichever
            # comes first, which would be measured as latency.
            message = poll(0.1)
            if message is not None and message.error() is None:
                delays.append(clock() * 1000 - message.timestamp()[1])
        consumer.close()

    consumer_thread = threading.Thread(target=tail, daemon=True)
    consumer_thread.start()
    ready.wait(30)
    producer = Producer({**conf, "compression.type": "lz4", "linger.ms": 5, "acks": "all"})
    producer.list_topics(topic, timeout=10)
    achieved = _produce_at_rate(producer, topic, rate, seconds, partitions, value, None)
    consumer_thread.join(seconds + 90)
    return {"rate": round(achieved), "consumed": len(delays), **_percentiles(delays)}


def run_suite(
    conf: dict[str, Any], args: argparse.Namespace, *, mock: bool, server_pid: int | None = None
) -> dict[str, Any]:
    """Every phase against one cluster."""
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    partitions = _create_topic(conf, topic, args.partitions, mock=mock)
    out: dict[str, Any] = {"partitions": partitions}
    log.info("producing %d records to %s (%d partitions)", args.records, topic, partitions)
    out["produce"] = _measured(
        server_pid,
        lambda: produce(conf, topic, args.records, partitions, value, args.per_record_callbacks),
    )
    log.info("consuming them")
    out["consume"] = _measured(server_pid, lambda: consume(conf, topic, args.records, partitions))
    log.info("acknowledgement latency at %d records/s", args.rate)
    lat_topic = f"{topic}-lat"
    lat_partitions = _create_topic(conf, lat_topic, args.partitions, mock=mock)
    out["ack_latency"] = _measured(
        server_pid,
        lambda: ack_latency(conf, lat_topic, args.rate, args.seconds, lat_partitions, value),
    )
    log.info("end-to-end latency at %d records/s", args.rate)
    e2e_topic = f"{topic}-e2e"
    e2e_partitions = _create_topic(conf, e2e_topic, args.partitions, mock=mock)
    out["end_to_end_latency"] = _measured(
        server_pid,
        lambda: end_to_end_latency(conf, e2e_topic, args.rate, args.seconds, e2e_partitions, value),
    )
    return out


def _transaction_round(
    conf: dict[str, Any], args: argparse.Namespace, server_pid: int | None, first: str
) -> dict[str, Any]:
    """One round of issue 18's phases on fresh topics; ``first`` isolation level reads first."""
    value = os.urandom(args.value_bytes // 2).hex().encode()[: args.value_bytes]
    n, m, per = args.records, args.transactional_records, args.per_transaction
    plain, one = (f"bench-{kind}-{uuid.uuid4().hex[:8]}" for kind in ("idem", "one"))
    many = {k: f"bench-{k}-{uuid.uuid4().hex[:8]}" for k in args.producers}
    partitions = _create_topic(conf, plain, args.partitions, mock=False)
    for topic in (one, *many.values()):
        _create_topic(conf, topic, args.partitions, mock=False)
    idempotent = {**conf, "enable.idempotence": True}
    figures = {
        "idempotent_produce": _measured(
            server_pid, lambda: produce(idempotent, plain, n, partitions, value, False)
        ),
        "transactional_produce": _measured(
            server_pid, lambda: produce_transactions(conf, one, m, partitions, value, per)
        ),
    }
    for k, topic in many.items():
        figures[f"transactional_produce_{k}"] = _measured(
            server_pid,
            lambda k=k, topic=topic: produce_transactions(  # type: ignore[misc]
                conf, topic, m * k, partitions, value, per, k
            ),
        )
    widest = max(many)
    many_n = m * widest
    levels = sorted(["read_committed", "read_uncommitted"], key=lambda level: level != first)
    reads: dict[str, list[dict[str, Any]]] = {level: [] for level in levels}
    for isolation in [*levels, *reversed(levels)]:  # A B B A: a warming trend cancels out
        reads[isolation].append(
            _measured(
                server_pid,
                lambda i=isolation: consume(conf, many[widest], many_n, partitions, i),  # type: ignore[misc]
            )
        )
    for isolation, runs in reads.items():
        figures[f"{isolation}_fetch"] = {
            "records_per_s": round(sum(r["records_per_s"] for r in runs) / len(runs)),
            "runs": runs,
        }
    return figures


def run_transactions(
    conf: dict[str, Any], args: argparse.Namespace, server_pid: int | None
) -> dict[str, Any]:
    """Issue 18's phases, alternating ``args.rounds`` times; medians of records/s."""
    rounds = []
    for r in range(args.rounds):
        log.info("round %d: idempotent and transactional produce, then both fetches", r + 1)
        # each isolation level reads first in turn, so neither always finds a warmer cache
        first = "read_committed" if r % 2 == 0 else "read_uncommitted"
        rounds.append(_transaction_round(conf, args, server_pid, first))

    def median(phase: str) -> float:
        values = sorted(f[phase]["records_per_s"] for f in rounds)
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2

    by_producers = {1: "transactional_produce"}
    by_producers.update((k, f"transactional_produce_{k}") for k in args.producers)
    phases = (
        "idempotent_produce",
        *by_producers.values(),
        "read_committed_fetch",
        "read_uncommitted_fetch",
    )
    medians = {phase: median(phase) for phase in phases}
    ratios = {
        k: round(medians[phase] / medians["idempotent_produce"], 3)
        for k, phase in by_producers.items()
    }
    return {
        "rounds": rounds,
        "median_records_per_s": medians,
        "transactional_to_idempotent": ratios[max(ratios)],
        "transactional_to_idempotent_by_producers": ratios,
        "read_committed_to_uncommitted": round(
            medians["read_committed_fetch"] / medians["read_uncommitted_fetch"], 3
        ),
    }


def _machine() -> dict[str, Any]:
    import confluent_kafka

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "load_1m_at_start": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", help="an existing server (default: start one)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rate", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--per-record-callbacks", action="store_true")
    parser.add_argument("--no-mock", action="store_true", help="skip the mock-cluster run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--transactions", action="store_true", help="issue 18's phases (see module)"
    )
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--transactional-records", type=int, default=20_000)
    parser.add_argument(
        "--producers", type=int, nargs="+", default=[4, 16], help="counts of producers at once"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.transactions and args.out == DEFAULT_OUT:
        args.out = DEFAULT_OUT.with_name("kafka_transactions.json")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    results: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": _machine(),
    }
    with tempfile.TemporaryDirectory(prefix="kafka-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        results["fsync_probe"] = fsync_probe(Path(tmp))
        server = None
        bootstrap = args.bootstrap
        if bootstrap is None:
            port = _free_port()
            server = _start_server(data_dir, port)
            bootstrap = f"127.0.0.1:{port}"
        try:
            pid = None if server is None else server.pid
            conf = {"bootstrap.servers": bootstrap}
            if args.transactions:
                results["transactions"] = run_transactions(conf, args, pid)
            else:
                results["streamhouse"] = run_suite(conf, args, mock=False, server_pid=pid)
        finally:
            if server is not None:
                server.terminate()
                server.wait(30)
    if not args.no_mock and not args.transactions:
        cluster = Producer({"test.mock.num.brokers": 1})
        brokers = cluster.list_topics(timeout=10).brokers.values()
        mock_bootstrap = ",".join(f"{b.host}:{b.port}" for b in brokers)
        results["mock"] = run_suite({"bootstrap.servers": mock_bootstrap}, args, mock=True)
        del cluster
        sh, mk = results["streamhouse"], results["mock"]
        results["ratio_to_mock"] = {
            "produce": round(sh["produce"]["records_per_s"] / mk["produce"]["records_per_s"], 3),
            "consume": round(sh["consume"]["records_per_s"] / mk["consume"]["records_per_s"], 3),
        }
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
