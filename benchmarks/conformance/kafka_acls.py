"""The ``kafka-acls.sh`` subset librdkafka's tests call, through the Kafka admin API.

0109 denies a topic to everyone with the Kafka distribution's ``kafka-acls.sh --add
--deny-principal 'User:*' --operation All --deny-host '*' --topic T``. This does the same with
confluent-kafka's AdminClient against ``--bootstrap-server``: ``--add`` and ``--remove`` of
the bindings named by ``--allow-principal``/``--deny-principal`` (each with every
``--operation`` and every ``--allow-host``/``--deny-host``, ``*`` by default) on ``--topic``,
``--group``, ``--transactional-id`` or ``--cluster``, and ``--list``. It exits 1 with the
broker's error if the change fails, as the tool does.
"""

from __future__ import annotations

import argparse
import re
import sys

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from benchmarks.conformance.kafka_cli import run_command, tool_parser

CLUSTER = "kafka-cluster"


def _operation(name: str) -> AclOperation:
    """Kafka's operation names (``All``, ``Read``, ``IdempotentWrite``) as the enum."""
    return AclOperation[re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).upper()]


def _resources(args: argparse.Namespace) -> list[tuple[ResourceType, str]]:
    found = [(ResourceType.TOPIC, t) for t in args.topic]
    found += [(ResourceType.GROUP, g) for g in args.group]
    found += [(ResourceType.TRANSACTIONAL_ID, t) for t in args.transactional_id]
    if args.cluster:
        found.append((ResourceType.BROKER, CLUSTER))  # Kafka's CLUSTER (4)
    return found


def _bindings(args: argparse.Namespace, kind: type[AclBinding] = AclBinding) -> list[AclBinding]:
    pattern = ResourcePatternType[args.resource_pattern_type.upper()]
    grants = [(AclPermissionType.ALLOW, p, args.allow_host or ["*"]) for p in args.allow_principal]
    grants += [(AclPermissionType.DENY, p, args.deny_host or ["*"]) for p in args.deny_principal]
    return [
        kind(rtype, name, pattern, principal, host, _operation(op), permission)
        for rtype, name in _resources(args)
        for permission, principal, hosts in grants
        for host in hosts
        for op in args.operation or ["All"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("kafka-acls.sh", ("add", "remove", "list"))
    for many in ("allow-principal", "deny-principal", "allow-host", "deny-host", "operation",
                 "topic", "group", "transactional-id"):  # fmt: skip
        parser.add_argument(f"--{many}", action="append", default=[])
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--resource-pattern-type", default="literal")
    parser.add_argument("--force", action="store_true")  # no prompt to skip here
    args = parser.parse_args(argv)
    for name in ("topic", "group", "transactional_id"):
        setattr(args, name, [value.strip("'\"") for value in getattr(args, name)])
    admin = AdminClient({"bootstrap.servers": args.bootstrap_server})
    if args.list:
        return run_command("ACL", lambda: _print_acls(admin))
    bindings = _bindings(args, AclBinding if args.add else AclBindingFilter)
    if not bindings:
        parser.error("nothing to add or remove: name a principal and a resource")

    def change() -> None:
        for future in (admin.create_acls if args.add else admin.delete_acls)(bindings).values():
            future.result(60)

    return run_command("ACL", change)


def _print_acls(admin: AdminClient) -> None:
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    for binding in admin.describe_acls(every).result(60):
        print(binding)


if __name__ == "__main__":
    sys.exit(main())
