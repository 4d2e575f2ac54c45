"""Kafka's ACL model and the authorizer that decides with it.

An ACL binding says: ``principal`` from ``host`` is ALLOWed (or DENYed) ``operation`` on
resources of ``resource_type`` whose name is ``resource_name`` (pattern LITERAL; the literal
name ``*`` matches every name) or starts with it (PREFIXED). The numbers are Kafka's own
(``org.apache.kafka.common.acl``), so they cross the wire as they are.

A decision, as Kafka's ``AclAuthorizer`` makes it: a super user may do anything; else any
matching DENY refuses; else a matching ALLOW grants, where ``ALL`` grants every operation,
READ, WRITE, DELETE or ALTER grant DESCRIBE, and ALTER_CONFIGS grants DESCRIBE_CONFIGS;
with no match the answer is no. A principal matches its own name or ``User:*``, a host its
own address or ``*``.

:class:`Authorizer` indexes the bindings by (resource type, name) and remembers every decision
until the bindings change, so a request costs one dict lookup per resource it names.

>>> allow_read = AclBinding(ResourceType.TOPIC, "orders-", PatternType.PREFIXED, "User:alice",
...                         "*", AclOperation.READ, AclPermission.ALLOW)
>>> deny = AclBinding(ResourceType.TOPIC, "orders-secret", PatternType.LITERAL, "User:*",
...                   "*", AclOperation.ALL, AclPermission.DENY)
>>> auth = Authorizer([allow_read, deny])
>>> check = auth.allowed
>>> check("User:alice", "1.2.3.4", AclOperation.DESCRIBE, ResourceType.TOPIC, "orders-eu")
True
>>> check("User:alice", "1.2.3.4", AclOperation.READ, ResourceType.TOPIC, "orders-secret")
False
>>> check("User:alice", "1.2.3.4", AclOperation.WRITE, ResourceType.TOPIC, "orders-eu")
False
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "CLUSTER_NAME",
    "AclBinding",
    "AclFilter",
    "AclOperation",
    "AclPermission",
    "Authorizer",
    "PatternType",
    "ResourceType",
]

CLUSTER_NAME = "kafka-cluster"
"""The one CLUSTER resource's name, as Kafka spells it."""


class ResourceType(IntEnum):
    __hash__ = int.__hash__  # C speed: Enum's own hash is a Python call (~0.1 µs)

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    __hash__ = int.__hash__  # C speed: Enum's own hash is a Python call (~0.1 µs)

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    __hash__ = int.__hash__  # C speed: Enum's own hash is a Python call (~0.1 µs)

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class AclPermission(IntEnum):
    __hash__ = int.__hash__  # C speed: Enum's own hash is a Python call (~0.1 µs)

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


WILDCARD = "*"
WILDCARD_PRINCIPAL = "User:*"

_GRANTED_BY: dict[AclOperation, frozenset[AclOperation]] = {
    op: frozenset({op, AclOperation.ALL}) for op in AclOperation
}
_GRANTED_BY[AclOperation.DESCRIBE] = frozenset(
    {AclOperation.DESCRIBE, AclOperation.ALL, AclOperation.READ, AclOperation.WRITE,
     AclOperation.DELETE, AclOperation.ALTER}
)  # fmt: skip
_GRANTED_BY[AclOperation.DESCRIBE_CONFIGS] = frozenset(
    {AclOperation.DESCRIBE_CONFIGS, AclOperation.ALL, AclOperation.ALTER_CONFIGS}
)
"""Operation -> the operations whose ALLOW grants it (Kafka's implications)."""


@dataclass(frozen=True, slots=True)
class AclBinding:
    """One ACL: a resource pattern and an access control entry."""

    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: AclOperation
    permission: AclPermission

    def invalid(self) -> str | None:
        """Why this binding cannot be stored (Kafka's INVALID_REQUEST reasons), or None."""
        if self.resource_type in (ResourceType.UNKNOWN, ResourceType.ANY):
            return f"resource type {self.resource_type.name} is not a resource"
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            return f"pattern type {self.pattern_type.name}: ACLs are LITERAL or PREFIXED"
        if self.operation in (AclOperation.UNKNOWN, AclOperation.ANY):
            return f"operation {self.operation.name} is not an operation"
        if self.permission not in (AclPermission.ALLOW, AclPermission.DENY):
            return f"permission {self.permission.name}: ACLs ALLOW or DENY"
        if not self.resource_name:
            return "the resource name is empty"
        if ":" not in self.principal:
            return f"principal {self.principal!r} is not TYPE:NAME (e.g. User:alice)"
        if self.resource_type is ResourceType.CLUSTER and self.resource_name != CLUSTER_NAME:
            return f"the CLUSTER resource is named {CLUSTER_NAME!r}"
        return None


@dataclass(frozen=True, slots=True)
class AclFilter:
    """What DescribeAcls and DeleteAcls match: ANY and None match everything; pattern MATCH
    matches the bindings that would apply to the named resource."""

    resource_type: ResourceType
    resource_name: str | None
    pattern_type: PatternType
    principal: str | None
    host: str | None
    operation: AclOperation
    permission: AclPermission

    def matches(self, b: AclBinding) -> bool:
        if self.resource_type is not ResourceType.ANY and self.resource_type != b.resource_type:
            return False
        if self.operation is not AclOperation.ANY and self.operation != b.operation:
            return False
        if self.permission is not AclPermission.ANY and self.permission != b.permission:
            return False
        if self.principal is not None and self.principal != b.principal:
            return False
        if self.host is not None and self.host != b.host:
            return False
        return self._matches_pattern(b)

    def _matches_pattern(self, b: AclBinding) -> bool:
        name, pattern = self.resource_name, self.pattern_type
        if pattern is PatternType.MATCH:
            if name is None:
                return True
            if b.pattern_type is PatternType.PREFIXED:
                return name.startswith(b.resource_name)
            return b.resource_name in (name, WILDCARD)
        if pattern is not PatternType.ANY and pattern != b.pattern_type:
            return False
        return name is None or name == b.resource_name


class Authorizer:
    """Decisions over a set of bindings; build a new one when they change.

    ``super_users`` are principals allowed everything (``User:admin``). With
    ``allow_if_no_acl`` (Kafka's ``allow.everyone.if.no.acl.found``) a resource that no binding
    names (literally, by prefix or by the wildcard) is open to everyone; one binding on it, for
    whoever, closes it to the others.
    """

    def __init__(
        self,
        bindings: Iterable[AclBinding],
        super_users: Iterable[str] = (),
        *,
        allow_if_no_acl: bool = False,
    ) -> None:
        self.bindings = tuple(bindings)
        self.super_users = frozenset(super_users)
        self.allow_if_no_acl = allow_if_no_acl
        self._literal: dict[tuple[int, str], list[AclBinding]] = {}
        self._prefixed: dict[tuple[int, str], list[AclBinding]] = {}
        self._prefix_lengths: dict[int, list[int]] = {}
        for b in self.bindings:
            key = (int(b.resource_type), b.resource_name)
            if b.pattern_type is PatternType.PREFIXED:
                self._prefixed.setdefault(key, []).append(b)
                lengths = self._prefix_lengths.setdefault(int(b.resource_type), [])
                if len(b.resource_name) not in lengths:
                    lengths.append(len(b.resource_name))
            else:
                self._literal.setdefault(key, []).append(b)
        self._decisions: dict[tuple[str, str, int, int, str], bool] = {}

    def allowed(
        self,
        principal: str,
        host: str,
        operation: AclOperation,
        resource_type: ResourceType,
        name: str,
    ) -> bool:
        """Whether ``principal`` connecting from ``host`` may do ``operation`` on the resource."""
        key = (principal, host, operation, resource_type, name)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(key)
            if len(self._decisions) >= 100_000:
                self._decisions.clear()  # a bound: names seen once do not pile up
            self._decisions[key] = decision
        return decision

    def writes_some_topic(self, principal: str, host: str) -> bool:
        """Whether an ALLOW of WRITE (or ALL) on some topic names this principal."""
        if principal in self.super_users:
            return True
        return any(
            b.resource_type is ResourceType.TOPIC
            and b.permission is AclPermission.ALLOW
            and b.operation in (AclOperation.WRITE, AclOperation.ALL)
            and b.principal in (principal, WILDCARD_PRINCIPAL)
            and b.host in (host, WILDCARD)
            for b in self.bindings
        )

    def _matching(self, resource_type: ResourceType, name: str) -> list[AclBinding]:
        rtype = int(resource_type)
        found = [*self._literal.get((rtype, name), ()), *self._literal.get((rtype, WILDCARD), ())]
        for length in self._prefix_lengths.get(rtype, ()):
            if length <= len(name):
                found.extend(self._prefixed.get((rtype, name[:length]), ()))
        return found

    def _decide(self, key: tuple[str, str, AclOperation, ResourceType, str]) -> bool:
        principal, host, operation, resource_type, name = key
        if principal in self.super_users:
            return True
        granted_by = _GRANTED_BY[AclOperation(operation)]
        allow = False
        matching = self._matching(resource_type, name)
        if not matching and self.allow_if_no_acl:
            return True
        for b in matching:
            if b.principal not in (principal, WILDCARD_PRINCIPAL) or b.host not in (host, WILDCARD):
                continue
            if b.permission is AclPermission.DENY:
                if b.operation in (operation, AclOperation.ALL):
                    return False
            elif b.operation in granted_by:
                allow = True
        return allow
