"""One consumer-group member for the group tests, run as its own process.

``python tests/kafka_group_member.py CLIENT BOOTSTRAP TOPIC GROUP OUT_FILE STRATEGY [INSTANCE]``

CLIENT is ``confluent-kafka``, ``kafka-python`` or ``aiokafka``; STRATEGY an assignor name
the client knows (``range``, ``roundrobin``, ``cooperative-sticky`` for librdkafka). The
member writes one line per record (``rec PARTITION OFFSET``) and one per assignment change
(``assign P,P,...``) to OUT_FILE, flushing before it commits each batch synchronously.
SIGTERM makes it close its consumer cleanly (it leaves the group, unless it is a static
member: INSTANCE, confluent-kafka only, is its ``group.instance.id``; then its session timeout
is STATIC_SESSION_TIMEOUT_MS, long enough for a restart).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import IO

SESSION_TIMEOUT_MS = 4000
STATIC_SESSION_TIMEOUT_MS = 10_000
HEARTBEAT_MS = 300
stopping = False


def _stop(*_: object) -> None:
    global stopping
    stopping = True


def _assign_line(out: IO[str], owned: set[int]) -> None:
    out.write(f"assign {','.join(map(str, sorted(owned)))}\n")


def run_confluent(
    bootstrap: str, topic: str, group: str, out: IO[str], strategy: str, instance: str | None = None
) -> None:
    from confluent_kafka import Consumer, KafkaException

    config = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "partition.assignment.strategy": strategy,
    }
    if instance is not None:
        config["group.instance.id"] = instance
        config["session.timeout.ms"] = STATIC_SESSION_TIMEOUT_MS
    consumer = Consumer(config)
    owned: set[int] = set()
    cooperative = strategy == "cooperative-sticky"

    def on_assign(c: Consumer, partitions: list) -> None:
        if not cooperative:
            owned.clear()
        owned.update(p.partition for p in partitions)
        c.incremental_assign(partitions) if cooperative else c.assign(partitions)
        _assign_line(out, owned)

    def on_revoke(c: Consumer, partitions: list) -> None:
        owned.difference_update(p.partition for p in partitions)
        c.incremental_unassign(partitions) if cooperative else c.unassign()
        _assign_line(out, owned)

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
    while not stopping:
        good = [m for m in consumer.consume(100, timeout=0.2) if m.error() is None]
        for m in good:
            out.write(f"rec {m.partition()} {m.offset()}\n")
        if good:
            out.flush()
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:  # a rebalance under way: as an application would,
                out.write(f"commitfail {exc}\n")  # go on; the records come again
    consumer.close()


def run_kafka_python(bootstrap: str, topic: str, group: str, out: IO[str], strategy: str) -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    assignor = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_MS,
        partition_assignment_strategy=[assignor[strategy]],
    )

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked: object) -> None:
            _assign_line(out, set())

        def on_partitions_assigned(self, assigned: list) -> None:
            _assign_line(out, {tp.partition for tp in assigned})

    consumer.subscribe([topic], listener=Listener())
    while not stopping:
        batches = consumer.poll(timeout_ms=200)
        records = [m for batch in batches.values() for m in batch]
        for m in records:
            out.write(f"rec {m.partition} {m.offset}\n")
        if records:
            out.flush()
            consumer.commit()
    consumer.close()


def run_aiokafka(bootstrap: str, topic: str, group: str, out: IO[str], strategy: str) -> None:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
    from aiokafka.coordinator.assignors.range import RangePartitionAssignor
    from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

    assignor = {"range": RangePartitionAssignor, "roundrobin": RoundRobinPartitionAssignor}

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: object) -> None:
            _assign_line(out, set())

        async def on_partitions_assigned(self, assigned: object) -> None:
            _assign_line(out, {tp.partition for tp in assigned})  # type: ignore[attr-defined]

    async def run() -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=HEARTBEAT_MS,
            partition_assignment_strategy=(assignor[strategy],),
        )
        await consumer.start()
        consumer.subscribe([topic], listener=Listener())
        while not stopping:
            batches = await consumer.getmany(timeout_ms=200)
            records = [m for batch in batches.values() for m in batch]
            for m in records:
                out.write(f"rec {m.partition} {m.offset}\n")
            if records:
                out.flush()
                await consumer.commit()
        await consumer.stop()

    asyncio.run(run())


RUNNERS = {
    "confluent-kafka": run_confluent,
    "kafka-python": run_kafka_python,
    "aiokafka": run_aiokafka,
}


def main() -> None:
    client, bootstrap, topic, group, out_path, strategy = sys.argv[1:7]
    static = sys.argv[7:8]  # a group.instance.id: confluent-kafka only
    signal.signal(signal.SIGTERM, _stop)
    with open(out_path, "a", buffering=1) as out:
        out.write("ready\n")
        RUNNERS[client](bootstrap, topic, group, out, strategy, *static)
        out.write("closed\n")


if __name__ == "__main__":
    main()
