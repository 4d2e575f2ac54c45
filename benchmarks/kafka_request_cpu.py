"""The Kafka server's CPU per transactional request, two checkouts side by side (issue 18):

    python -m benchmarks.kafka_request_cpu A_REPO B_REPO [--producers 16] [--batches 6]
        [--per-batch 20] [--out benchmarks/results/kafka_request_cpu_ab.json]

Each checkout serves its own data directory (``streamhouse serve``, SQLite, local objects,
``PYTHONPATH`` the checkout, bytecode cached per checkout); each gets ``--producers``
confluent transactional producers (distinct ``transactional.id``, lz4, linger 5 ms, acks=all)
writing transactions of ``--per-transaction`` records of 100 bytes round-robin over 8
partitions, as ``python -m benchmarks.log --transactions`` does. After a warm-up batch the
servers take turns: a batch of ``--per-batch`` transactions per producer against A, then one
against B, and so on (A first in odd batches, B first in even ones), so a machine whose speed
drifts slows both alike. Per batch: the server's CPU (user + system, /proc) and its event
loop thread's (the main thread: ``serve`` runs ``asyncio.run`` there), per transaction, and
the requests the producers sent per transaction (librdkafka's statistics). The summary gives
the medians and the ratios B/A of the batches taken in pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from benchmarks.log.kafka import _create_topic, _free_port, _process_cpu, _producer_conf

PARTITIONS = 8


def _thread_cpu(pid: int, tid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one thread of another process."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class Server:
    """``streamhouse serve`` from one checkout, with its producers."""

    def __init__(self, repo: str, work: Path, producers: int) -> None:
        self.repo = repo
        self.port = _free_port()
        env = {
            **os.environ,
            "PYTHONPATH": repo,
            "PYTHONPYCACHEPREFIX": str(work / "pycache"),
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cmd = [sys.executable, "-m", "streamhouse", "serve", "--data-dir", str(work / "data")]
        cmd += ["--port", str(self.port), "--advertised-host", "127.0.0.1"]
        self.process = subprocess.Popen(cmd, env=env, cwd=repo, stderr=subprocess.DEVNULL)
        self.conf = {"bootstrap.servers": f"127.0.0.1:{self.port}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                _create_topic({**self.conf, "socket.timeout.ms": 2000}, "t", PARTITIONS, mock=False)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.requests: list[dict[str, int]] = [{} for _ in range(producers)]
        self.producers = [self._producer(k) for k in range(producers)]

    def _producer(self, k: int) -> Producer:
        def stats(text: str) -> None:
            counts: dict[str, int] = {}
            for broker in json.loads(text)["brokers"].values():
                for name, n in broker.get("req", {}).items():
                    counts[name] = counts.get(name, 0) + n
            self.requests[k] = counts

        producer = Producer(
            {
                **_producer_conf(self.conf, False),
                "transactional.id": f"cpu-{uuid.uuid4().hex[:8]}",
                "statistics.interval.ms": 500,
                "stats_cb": stats,
            }
        )
        producer.init_transactions(30)
        producer.list_topics("t", timeout=10)
        return producer

    def cpu(self) -> tuple[float, tuple[float, float]]:
        """CPU seconds so far: the whole process's, the event loop thread's (user, system)."""
        pid = self.process.pid
        return _process_cpu(pid), _thread_cpu(pid, pid)

    def request_counts(self) -> dict[str, int]:
        """Requests sent by all producers so far, by API (fresh statistics first)."""
        time.sleep(0.6)
        for producer in self.producers:
            producer.poll(0)
        total: dict[str, int] = {}
        for counts in self.requests:
            for name, n in counts.items():
                total[name] = total.get(name, 0) + n
        return total

    def batch(self, transactions: int, per: int, value: bytes) -> dict[str, Any]:
        """``transactions`` per producer, all producers at once; its figures."""

        def run(producer: Producer) -> None:
            for t in range(transactions):
                producer.begin_transaction()
                for i in range(per):
                    producer.produce("t", value, partition=(t * per + i) % PARTITIONS)
                producer.commit_transaction(30)

        requests0 = self.request_counts()
        (cpu0, loop0), wall0 = self.cpu(), time.perf_counter()
        threads = [threading.Thread(target=run, args=(p,)) for p in self.producers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - wall0
        cpu1, loop1 = self.cpu()
        requests1 = self.request_counts()
        n = transactions * len(self.producers)
        sent = {k: v - requests0.get(k, 0) for k, v in requests1.items()}
        sent = {k: v for k, v in sent.items() if v}
        return {
            "transactions": n,
            "transactions_per_s": round(n / wall, 1),
            "server_cpu_ms_per_transaction": round(1000 * (cpu1 - cpu0) / n, 3),
            "loop_cpu_ms_per_transaction": round(1000 * (sum(loop1) - sum(loop0)) / n, 3),
            "loop_system_ms_per_transaction": round(1000 * (loop1[1] - loop0[1]) / n, 3),
            "requests_per_transaction": round(sum(sent.values()) / n, 2),
            "requests": sent,
            "load_1m": round(os.getloadavg()[0], 2),
        }

    def close(self) -> None:
        for producer in self.producers:
            producer.flush(10)
        self.producers.clear()  # before the server goes: no reconnecting
        self.process.terminate()
        self.process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--per-batch", type=int, default=20, help="transactions per producer")
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    value = os.urandom(50).hex().encode()
    work = Path(tempfile.mkdtemp(prefix="request-cpu-"))
    servers: dict[str, Server] = {}
    batches: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    load_before = os.getloadavg()[0]
    try:
        for name, repo in (("a", args.a), ("b", args.b)):
            (work / name).mkdir()
            servers[name] = Server(repo, work / name, args.producers)
        for server in servers.values():
            server.batch(5, args.per_transaction, value)  # warm-up
        for k in range(args.batches):
            order = ("a", "b") if k % 2 == 0 else ("b", "a")
            for name in order:
                figures = servers[name].batch(args.per_batch, args.per_transaction, value)
                batches[name].append(figures)
                print(name, json.dumps(figures), file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(work, ignore_errors=True)

    def median(name: str, key: str) -> float:
        return round(statistics.median(b[key] for b in batches[name]), 3)

    keys = (
        "server_cpu_ms_per_transaction",
        "loop_cpu_ms_per_transaction",
        "loop_system_ms_per_transaction",
        "transactions_per_s",
        "requests_per_transaction",
    )
    result = {
        "repos": {"a": args.a, "b": args.b},
        "config": {k: v for k, v in vars(args).items() if k not in ("a", "b", "out")},
        "load_1m_before": round(load_before, 2),
        "batches": batches,
        "medians": {name: {key: median(name, key) for key in keys} for name in batches},
        "ratios_b_over_a": {
            key: [
                round(b[key] / a[key], 3)
                for a, b in zip(batches["a"], batches["b"], strict=True)
                if a[key]
            ]
            for key in keys
        },
    }
    result["median_ratio_b_over_a"] = {
        key: round(statistics.median(r), 3) for key, r in result["ratios_b_over_a"].items() if r
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
