"""What ``streamhouse acl add|list|delete`` mean, as Kafka's ``kafka-acls.sh`` means its
``--add``, ``--list`` and ``--remove``: the same options, defaults and checks, turned into
:class:`~streamhouse.security.acl.AclBinding` s to store and
:class:`~streamhouse.security.acl.AclFilter` s to match.

- Resources: ``--topic``, ``--group``, ``--transactional-id`` (each repeatable) and
  ``--cluster``, with ``--resource-pattern-type`` (LITERAL by default for add and delete, ANY
  for list; add takes only LITERAL or PREFIXED).
- Entries: ``--allow-principal`` / ``--deny-principal`` (repeatable), ``--allow-host`` /
  ``--deny-host`` (``*`` unless given), ``--operation`` (repeatable, ``All`` unless given;
  ``Read``, ``DESCRIBE_CONFIGS`` and ``describe-configs`` alike); each operation must be one the
  resource type has, as Kafka checks.
- ``--producer`` grants WRITE, DESCRIBE and CREATE on the topics (with ``--idempotent``
  IDEMPOTENT_WRITE on the cluster, with ``--transactional-id`` WRITE and DESCRIBE on it);
  ``--consumer`` READ and DESCRIBE on the topics and READ on the groups.
- Delete without principals removes every ACL of the resources named.

>>> spec = AclSpec(topics=("orders",), allow_principals=("User:alice",), operations=("Read",))
>>> [f"{b.principal} {b.operation.name} {b.resource_name}" for b in bindings_to_add(spec)]
['User:alice READ orders']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streamhouse.errors import ConfigError
from streamhouse.security.acl import (
    CLUSTER_NAME,
    WILDCARD,
    AclBinding,
    AclFilter,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)

__all__ = [
    "AclSpec",
    "bindings_to_add",
    "delete_filters",
    "describe",
    "list_filters",
    "operation_of",
    "pattern_of",
]

_OPS = AclOperation
VALID_OPERATIONS: dict[ResourceType, tuple[AclOperation, ...]] = {
    ResourceType.TOPIC: (_OPS.READ, _OPS.WRITE, _OPS.CREATE, _OPS.DESCRIBE, _OPS.DELETE,
                         _OPS.ALTER, _OPS.DESCRIBE_CONFIGS, _OPS.ALTER_CONFIGS, _OPS.ALL),
    ResourceType.GROUP: (_OPS.READ, _OPS.DESCRIBE, _OPS.DELETE, _OPS.ALL),
    ResourceType.CLUSTER: (_OPS.CREATE, _OPS.CLUSTER_ACTION, _OPS.DESCRIBE_CONFIGS,
                           _OPS.ALTER_CONFIGS, _OPS.IDEMPOTENT_WRITE, _OPS.ALTER, _OPS.DESCRIBE,
                           _OPS.ALL),
    ResourceType.TRANSACTIONAL_ID: (_OPS.DESCRIBE, _OPS.WRITE, _OPS.ALL),
}  # fmt: skip
"""Resource type -> the operations it has (Kafka's AclCommand.ResourceToValidOperations)."""


def _named(enum: type[AclOperation] | type[PatternType], text: str, what: str) -> int:
    wanted = text.replace("_", "").replace("-", "").upper()
    for member in enum:
        if member.name.replace("_", "") == wanted and member.name not in ("UNKNOWN", "ANY"):
            return member
    names = ", ".join(m.name for m in enum if m.name not in ("UNKNOWN", "ANY"))
    raise ConfigError(f"unknown {what} {text!r} (one of {names})")


def operation_of(text: str) -> AclOperation:
    """``Read``, ``READ``, ``DescribeConfigs`` or ``describe_configs`` as an operation.

    >>> operation_of("DescribeConfigs").name, operation_of("idempotent-write").name
    ('DESCRIBE_CONFIGS', 'IDEMPOTENT_WRITE')
    """
    return AclOperation(_named(AclOperation, text, "operation"))


def pattern_of(text: str | None, default: PatternType) -> PatternType:
    """``--resource-pattern-type`` (literal, prefixed, match or any), ``default`` if absent."""
    if text is None:
        return default
    if text.strip().upper() == "ANY":
        return PatternType.ANY
    return PatternType(_named(PatternType, text, "resource pattern type"))


@dataclass(frozen=True, slots=True)
class AclSpec:
    """The options of one ``streamhouse acl`` command."""

    topics: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    transactional_ids: tuple[str, ...] = ()
    cluster: bool = False
    pattern: str | None = None
    allow_principals: tuple[str, ...] = ()
    deny_principals: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    operations: tuple[str, ...] = ()
    producer: bool = False
    consumer: bool = False
    idempotent: bool = False

    def resources(self, pattern: PatternType) -> list[tuple[ResourceType, str, PatternType]]:
        """(type, name, pattern) of every resource named."""
        found = [(ResourceType.TOPIC, name, pattern) for name in self.topics]
        found += [(ResourceType.GROUP, name, pattern) for name in self.groups]
        found += [(ResourceType.TRANSACTIONAL_ID, name, pattern) for name in self.transactional_ids]
        if self.cluster:  # one cluster, named alike: a filter's ANY or MATCH finds it too
            literal = pattern if pattern in (PatternType.ANY, PatternType.MATCH) else None
            found.append((ResourceType.CLUSTER, CLUSTER_NAME, literal or PatternType.LITERAL))
        for _, name, _ in found:
            if not name:
                raise ConfigError("a resource name is empty")
        return found

    def entries(
        self, operations: Iterable[AclOperation] | None = None
    ) -> list[tuple[str, str, AclOperation, AclPermission]]:
        """(principal, host, operation, permission) of every entry the options name."""
        ops = list(operations) if operations is not None else self.named_operations()
        found = []
        for principals, hosts, permission in (
            (self.allow_principals, self.allow_hosts, AclPermission.ALLOW),
            (self.deny_principals, self.deny_hosts, AclPermission.DENY),
        ):
            if hosts and not principals:
                raise ConfigError(
                    f"--{permission.name.lower()}-host needs --{permission.name.lower()}-principal"
                )
            for principal in principals:
                _check_principal(principal)
                for host in hosts or (WILDCARD,):
                    found += [(principal, host, op, permission) for op in ops]
        return found

    def named_operations(self) -> list[AclOperation]:
        return [operation_of(text) for text in self.operations] or [AclOperation.ALL]


def _check_principal(principal: str) -> None:
    kind, sep, name = principal.partition(":")
    if not sep or not kind or not name:
        raise ConfigError(f"principal {principal!r} is not TYPE:NAME (e.g. User:alice)")


def _check_operations(resource_type: ResourceType, operations: Iterable[AclOperation]) -> None:
    valid = VALID_OPERATIONS[resource_type]
    bad = [op.name for op in operations if op not in valid]
    if bad:
        raise ConfigError(
            f"{resource_type.name} has no operation {', '.join(bad)}"
            f" (only {', '.join(op.name for op in valid)})"
        )


def _role_bindings(spec: AclSpec, pattern: PatternType) -> list[AclBinding]:
    """``--producer`` and ``--consumer``: Kafka's sets of operations per resource."""
    if spec.operations:
        raise ConfigError("--operation cannot go with --producer or --consumer")
    if not spec.topics:
        raise ConfigError("--producer and --consumer need --topic")
    if spec.consumer and not spec.groups:
        raise ConfigError("--consumer needs --group")
    ops = AclOperation
    plan: list[tuple[ResourceType, str, PatternType, tuple[AclOperation, ...]]] = []
    for rtype, name, pat in spec.resources(pattern):
        wanted: tuple[AclOperation, ...] = ()
        if rtype is ResourceType.TOPIC:
            wanted = (*((ops.WRITE, ops.DESCRIBE, ops.CREATE) if spec.producer else ()),
                      *((ops.READ, ops.DESCRIBE) if spec.consumer else ()))  # fmt: skip
        elif rtype is ResourceType.GROUP and spec.consumer:
            wanted = (ops.READ,)
        elif rtype is ResourceType.TRANSACTIONAL_ID and spec.producer:
            wanted = (ops.WRITE, ops.DESCRIBE)
        plan.append((rtype, name, pat, tuple(dict.fromkeys(wanted))))
    if spec.producer and (spec.idempotent or spec.transactional_ids):
        plan.append((ResourceType.CLUSTER, CLUSTER_NAME, PatternType.LITERAL,
                     (ops.IDEMPOTENT_WRITE,)))  # fmt: skip
    return [
        AclBinding(rtype, name, pat, principal, host, op, permission)
        for rtype, name, pat, wanted in plan
        for principal, host, op, permission in spec.entries(wanted)
    ]


def bindings_to_add(spec: AclSpec) -> list[AclBinding]:
    """The ACLs ``acl add`` stores; ConfigError for options Kafka refuses too."""
    pattern = pattern_of(spec.pattern, PatternType.LITERAL)
    if pattern not in (PatternType.LITERAL, PatternType.PREFIXED):
        raise ConfigError(f"an ACL's pattern type is LITERAL or PREFIXED, not {pattern.name}")
    if not spec.resources(pattern):
        raise ConfigError("name a resource: --topic, --group, --transactional-id or --cluster")
    if not spec.allow_principals and not spec.deny_principals:
        raise ConfigError("name a principal: --allow-principal or --deny-principal")
    if spec.producer or spec.consumer:
        found = _role_bindings(spec, pattern)
    else:
        ops = spec.named_operations()
        found = []
        for rtype, name, pat in spec.resources(pattern):
            _check_operations(rtype, ops)
            found += [
                AclBinding(rtype, name, pat, principal, host, op, permission)
                for principal, host, op, permission in spec.entries(ops)
            ]
    for binding in found:
        reason = binding.invalid()
        if reason is not None:
            raise ConfigError(reason)
    return list(dict.fromkeys(found))


def delete_filters(spec: AclSpec) -> tuple[list[AclFilter], bool]:
    """The filters ``acl delete`` removes by, and whether they take every ACL of the resources
    (no principal named: Kafka asks before it does that)."""
    pattern = pattern_of(spec.pattern, PatternType.LITERAL)
    resources = spec.resources(pattern)
    if not resources:
        raise ConfigError("name a resource: --topic, --group, --transactional-id or --cluster")
    if spec.producer or spec.consumer:
        raise ConfigError("--producer and --consumer are for acl add")
    entries = spec.entries()
    for rtype, _, _ in resources:
        _check_operations(rtype, spec.named_operations())
    if not entries:
        return [
            AclFilter(rtype, name, pat, None, None, AclOperation.ANY, AclPermission.ANY)
            for rtype, name, pat in resources
        ], True
    return [
        AclFilter(rtype, name, pat, principal, host, op, permission)
        for rtype, name, pat in resources
        for principal, host, op, permission in entries
    ], False


def list_filters(spec: AclSpec, principals: tuple[str, ...]) -> list[AclFilter]:
    """The filters ``acl list`` shows by (every ACL if no resource or principal is named)."""
    pattern = pattern_of(spec.pattern, PatternType.ANY)
    resources = spec.resources(pattern) or [(ResourceType.ANY, None, pattern)]
    for principal in principals:
        _check_principal(principal)
    return [
        AclFilter(rtype, name, pat, principal, None, AclOperation.ANY, AclPermission.ANY)
        for rtype, name, pat in resources
        for principal in principals or (None,)
    ]


def describe(bindings: Iterable[AclBinding]) -> list[str]:
    """Lines as kafka-acls.sh prints them: a header per resource pattern, then its entries."""
    by_resource: dict[tuple[int, str, int], list[AclBinding]] = {}
    for b in bindings:
        key = (int(b.resource_type), b.resource_name, int(b.pattern_type))
        by_resource.setdefault(key, []).append(b)
    lines = []
    for (rtype, name, pattern), found in sorted(by_resource.items()):
        lines.append(
            f"Current ACLs for resource `ResourcePattern(resourceType={ResourceType(rtype).name},"
            f" name={name}, patternType={PatternType(pattern).name})`:"
        )
        lines += [
            f" \t(principal={b.principal}, host={b.host}, operation={b.operation.name},"
            f" permissionType={b.permission.name})"
            for b in sorted(found, key=lambda b: (b.principal, b.host, b.operation, b.permission))
        ]
        lines.append("")
    return lines
