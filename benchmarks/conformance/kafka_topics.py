"""The ``kafka-topics.sh`` subset librdkafka's tests call, through the Kafka admin API.

Some of the suite's tests (0045's topic removal and partition change, 0052, 0077) change
topics with the Kafka distribution's ``kafka-topics.sh`` (``$KAFKA_PATH/bin``). This does the
same with confluent-kafka's AdminClient against ``--bootstrap-server``: ``--create`` (with
``--partitions``, ``--replication-factor``, ``--config k=v``), ``--delete`` and ``--alter
--partitions``. It exits 1 with the broker's error if the change fails, as the tool does.
"""

from __future__ import annotations

import sys

from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from benchmarks.conformance.kafka_cli import run_command, tool_parser


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("kafka-topics.sh", ("create", "delete", "alter"))
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int)
    parser.add_argument("--replication-factor", type=int, default=1)
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args(argv)
    admin = AdminClient({"bootstrap.servers": args.bootstrap_server})
    topic = args.topic.strip('"')
    if args.create:
        configs = dict(c.split("=", 1) for c in args.config)
        new = NewTopic(topic, args.partitions or 1, args.replication_factor, config=configs)
        futures = admin.create_topics([new], operation_timeout=30)
    elif args.delete:
        futures = admin.delete_topics([topic], operation_timeout=30)
    else:
        if args.partitions is None:
            parser.error("--alter needs --partitions")
        futures = admin.create_partitions([NewPartitions(topic, args.partitions)])
    return run_command("topic", lambda: futures[topic].result(60))


if __name__ == "__main__":
    sys.exit(main())
