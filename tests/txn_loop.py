"""A consume-transform-produce loop with confluent-kafka transactions, run as a subprocess by
``test_kafka_transactions`` (which kills it, or the server, with -9 and starts it again).

Usage: ``python txn_loop.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID PARTITIONS``.
It resumes each input partition from the group's committed offset, and per poll of up to 20
records: begins a transaction, produces ``out-<input value>`` for each, sends the consumed
offsets to the transaction and commits. It prints ``committed <n>`` after each commit and
exits once nothing came for 3 seconds. A transaction that fails (the server went away) is
aborted and the input rewound to the committed offsets, as the confluent-kafka examples do;
a fatal error (fenced) exits with status 3.
"""

from __future__ import annotations

import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def rewind(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Back to the group's committed offsets (the last committed transaction's)."""
    committed = consumer.committed(partitions, timeout=30)
    consumer.assign([TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)) for tp in committed])


def main() -> None:
    bootstrap, source, sink, group, transactional_id, partitions = sys.argv[1:7]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5}
        | ({"debug": "eos,protocol,msg"} if os.environ.get("LOOP_DEBUG") else {})
    )
    producer.init_transactions(60)
    wanted = [TopicPartition(source, p) for p in range(int(partitions))]
    rewind(consumer, wanted)
    idle_since = time.monotonic()
    total = 0
    while time.monotonic() - idle_since < 3:
        messages = [m for m in consumer.consume(20, timeout=0.5) if m.error() is None]
        if not messages:
            continue
        idle_since = time.monotonic()
        try:
            producer.begin_transaction()
            for m in messages:
                producer.produce(sink, b"out-" + m.value(), key=m.key(), partition=m.partition())
            producer.flush(30)
            time.sleep(0.02)  # a kill lands inside a transaction now and then
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30
            )
            producer.commit_transaction(60)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                print(f"fatal {error}", flush=True)
                sys.exit(3)
            print(f"aborting: {error}", flush=True)
            try:
                producer.abort_transaction(60)
            except KafkaException as again:
                print(f"abort failed: {again}", flush=True)
                sys.exit(3)
            rewind(consumer, wanted)
            continue
        total += len(messages)
        print(f"committed {total}", flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
