"""One consumer-group member for the group tests, run as its own process.

``python tests/kafka_group_member.py BOOTSTRAP TOPIC GROUP OUT_FILE STRATEGY``

Consumes with confluent-kafka and writes one line per record (``rec PARTITION OFFSET``) and
one per assignment change (``assign P,P,...``) to OUT_FILE, flushing before it commits the
batch synchronously. SIGTERM closes the consumer cleanly (it leaves the group).
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer


def main() -> None:
    bootstrap, topic, group, out_path, strategy = sys.argv[1:6]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 4000,
            "heartbeat.interval.ms": 300,
            "partition.assignment.strategy": strategy,
        }
    )
    with open(out_path, "a", buffering=1) as out:
        owned: set[int] = set()

        def on_assign(c: Consumer, partitions: list) -> None:
            if strategy == "cooperative-sticky":
                owned.update(p.partition for p in partitions)
                c.incremental_assign(partitions)
            else:
                owned.clear()
                owned.update(p.partition for p in partitions)
                c.assign(partitions)
            out.write(f"assign {','.join(map(str, sorted(owned)))}\n")

        def on_revoke(c: Consumer, partitions: list) -> None:
            if strategy == "cooperative-sticky":
                owned.difference_update(p.partition for p in partitions)
                c.incremental_unassign(partitions)
            else:
                owned.clear()
                c.unassign()
            out.write(f"assign {','.join(map(str, sorted(owned)))}\n")

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_revoke)
        out.write("ready\n")
        while not stopping:
            batch = consumer.consume(100, timeout=0.2)
            good = [m for m in batch if m.error() is None]
            for m in good:
                out.write(f"rec {m.partition()} {m.offset()}\n")
            if good:
                out.flush()
                consumer.commit(asynchronous=False)
        consumer.close()
        out.write("closed\n")


if __name__ == "__main__":
    main()
