"""Where one transactional producer's time goes: ``serve`` in this process, one confluent
producer committing transactions of ``--per-transaction`` records (100-byte values, lz4,
linger 5 ms) over ``--partitions`` partitions, the client's phases timed around its calls and
the server's spans timed by wrapping the coordinator's and the writer's methods (a span a tree
does not have is left out, so the same script times an older tree). Medians after ``--warm-up``
transactions.

    python -m benchmarks.txn_timeline [--transactions 120] [--metadata postgresql://host/db
        (a fresh schema)] [--json benchmarks/results/txn_timeline.json]

Spans: ``add_partitions`` (AddPartitionsToTxn), ``end`` (EndTxn, all of it), ``end.records``
(waiting for the records produce answered early), ``end.finish`` (markers and completion),
``writer.put`` (encode and put one segment object), ``writer.commit`` (one group commit);
``flushes_per_transaction`` counts the puts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.checkpoint_bench import fresh_schema
from streamhouse.config import Settings
from streamhouse.kafka import server
from streamhouse.kafka.transactions import TransactionCoordinator
from streamhouse.log import Log
from streamhouse.log.writer import LogWriter

_SPANS: dict[str, list[float]] = defaultdict(list)


def _time(owner: type, name: str, label: str) -> None:
    """Record the duration of each call of ``owner.name`` under ``label`` (if it has one)."""
    original: Callable[..., Any] | None = getattr(owner, name, None)
    if original is None:
        return
    if asyncio.iscoroutinefunction(original):

        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                _SPANS[label].append(time.perf_counter() - began)

        setattr(owner, name, timed_async)
        return

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _SPANS[label].append(time.perf_counter() - began)

    setattr(owner, name, timed)


def _serve(settings: Settings) -> None:
    """Start ``serve`` on a thread of its own; return once it listens."""
    log_ = Log.open(settings)
    ready = threading.Event()

    async def main() -> None:
        listening = asyncio.Event()
        serving = asyncio.create_task(server.serve(log_, settings, ready=listening))
        await listening.wait()
        ready.set()
        await serving

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    if not ready.wait(60):
        raise RuntimeError("serve did not start")


def run(args: argparse.Namespace) -> dict[str, Any]:
    for owner, name, label in (
        (TransactionCoordinator, "add_partitions", "add_partitions"),
        (TransactionCoordinator, "end", "end"),
        (TransactionCoordinator, "_records_durable", "end.records"),
        (TransactionCoordinator, "_finish", "end.finish"),
        (LogWriter, "_write", "writer.put"),
        (LogWriter, "_commit_group", "writer.commit"),
    ):
        _time(owner, name, label)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="sh-txn-timeline-"))
    settings = Settings(
        data_dir=data,
        port=port,
        advertised_host="127.0.0.1",
        metadata=fresh_schema(args.metadata, "txn_timeline"),
    )
    _serve(settings)
    bootstrap = f"127.0.0.1:{port}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("timeline", args.partitions, 1)])["timeline"].result(30)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": "timeline",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    producer.init_transactions(30)
    value = b"x" * 100
    phases: list[tuple[float, float, float]] = []
    for i in range(args.warm_up + args.transactions):
        if i == args.warm_up:
            _SPANS.clear()
        began = time.perf_counter()
        producer.begin_transaction()
        for j in range(args.per_transaction):
            producer.produce("timeline", value, partition=j % args.partitions)
        producer.flush(30)
        flushed = time.perf_counter()
        producer.commit_transaction(30)
        done = time.perf_counter()
        if i >= args.warm_up:
            phases.append((done - began, flushed - began, done - flushed))

    def median_ms(values: list[float]) -> float:
        return round(statistics.median(values) * 1000, 2)

    per_transaction = statistics.median(p[0] for p in phases)
    return {
        "metadata": "postgresql" if args.metadata else "sqlite",
        "transactions": args.transactions,
        "per_transaction": args.per_transaction,
        "client_ms": {
            "transaction": median_ms([p[0] for p in phases]),
            "produce_and_flush": median_ms([p[1] for p in phases]),
            "commit": median_ms([p[2] for p in phases]),
        },
        "records_per_s": round(args.per_transaction / per_transaction),
        "server_ms": {label: median_ms(values) for label, values in sorted(_SPANS.items())},
        "flushes_per_transaction": round(len(_SPANS["writer.put"]) / args.transactions, 2),
        "load_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=120)
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--per-transaction", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--metadata", help="a PostgreSQL database (default: SQLite)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    os._exit(0)  # the server thread is a daemon; its log is left as it is


if __name__ == "__main__":
    main()
