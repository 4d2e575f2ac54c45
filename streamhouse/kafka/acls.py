"""Authorization on the Kafka protocol: who may do what, and the APIs that say so.

With ``settings.authorizer = "acl"`` every request that touches a topic, a group or the
cluster is checked against Kafka ACLs (:mod:`streamhouse.security.acl`) for the connection's
principal and address; ``settings.super_users`` (``User:admin;User:ops``, comma or
semicolon separated) bypass them; with ``settings.allow_everyone_if_no_acl_found`` a resource
no ACL names is open to everyone (Kafka's ``allow.everyone.if.no.acl.found``). A denial
answers with Kafka's code for the resource (TOPIC/GROUP/CLUSTER_AUTHORIZATION_FAILED,
29/30/31) and an INFO audit line (rate-limited). With ``"none"`` (the default) everything is
allowed, as a Kafka broker without an authorizer, and the ACL APIs answer
``SECURITY_DISABLED`` as that broker does: ACLs stored there would decide nothing.

The ACLs live in the metadata store, so every agent shares them. Each agent keeps them in
memory (:class:`Access`), with the SCRAM credentials logins read, and reloads both when the
store's security version moves: at once after its own changes, and within ``acl_refresh_s``
after another agent's (or ``streamhouse user``'s).

CreateAcls, DescribeAcls and DeleteAcls need ALTER (DESCRIBE to describe) on the cluster;
DescribeUserScramCredentials and AlterUserScramCredentials are for super users only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from streamhouse.errors import ConfigError, StreamHouseError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.audit import AUDIT
from streamhouse.kafka.listeners import ANONYMOUS, Session
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages
from streamhouse.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclFilter,
    AclOperation,
    AclPermission,
    Authorizer,
    PatternType,
    ResourceType,
)
from streamhouse.security.scram import MECHANISMS, MIN_ITERATIONS, ScramCredential, credential_of

if TYPE_CHECKING:
    from streamhouse.config import Settings
    from streamhouse.kafka.broker import Broker
    from streamhouse.log.metadata import Metadata

__all__ = ["AUTHORIZERS", "HANDLERS", "Access", "super_users_of"]

log = logging.getLogger(__name__)

AUTHORIZERS = ("none", "acl")
DENIED: dict[ResourceType, ErrorCode] = {
    ResourceType.TOPIC: ErrorCode.topic_authorization_failed,
    ResourceType.GROUP: ErrorCode.group_authorization_failed,
    ResourceType.CLUSTER: ErrorCode.cluster_authorization_failed,
    ResourceType.TRANSACTIONAL_ID: ErrorCode.transactional_id_authorization_failed,
}
"""Resource type -> the error a denied request gets."""
SCRAM_MECHANISM_CODES = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
"""Kafka's ScramMechanism numbers."""
MAX_CACHED_CREDENTIALS = 10_000
"""Credentials (and unknown users) an agent remembers; then it starts over."""
MAX_ITERATIONS = 16384
"""Kafka refuses more iterations than this."""
NO_AUTHORIZER = "No Authorizer is configured on the broker (serve --authorizer acl)"
"""Kafka's message for an ACL API on a broker without an authorizer."""
_ACL_VERBS = {AclOperation.ALTER: "change", AclOperation.DESCRIBE: "describe"}


def super_users_of(text: str | list[str] | tuple[str, ...]) -> frozenset[str]:
    """``settings.super_users`` as principals; ConfigError for one without ``TYPE:``.

    >>> sorted(super_users_of("User:admin; User:CN=ops,O=Ex"))
    ['User:CN=ops,O=Ex', 'User:admin']
    """
    items = text if isinstance(text, list | tuple) else re.split(r";", str(text))
    found = frozenset(item.strip() for item in items if item.strip())
    bad = [p for p in found if ":" not in p]
    if bad:
        raise ConfigError(f"super_users: {', '.join(bad)} (principals are TYPE:NAME, User:admin)")
    return found


class Access:
    """This agent's copies of the ACLs and the SCRAM credentials, and the decisions made with
    them (event loop thread). Both are reloaded when the store's security version moves."""

    def __init__(self, metadata: Metadata, settings: Settings) -> None:
        if settings.authorizer not in AUTHORIZERS:
            raise ConfigError(
                f"authorizer: {settings.authorizer!r} (one of {', '.join(AUTHORIZERS)})"
            )
        self.enabled = settings.authorizer == "acl"
        self.super_users = super_users_of(settings.super_users)
        self.allow_if_no_acl = settings.allow_everyone_if_no_acl_found
        self.refresh_s = settings.acl_refresh_s
        self.metadata = metadata
        self.authorizer = Authorizer((), self.super_users, allow_if_no_acl=self.allow_if_no_acl)
        self.version = -1
        self._credentials: dict[tuple[str, str], ScramCredential | None] = {}

    def reload(self) -> bool:
        """Read the ACLs again and forget the credentials read, if the store's version moved
        (blocking: a worker thread)."""
        version = self.metadata.security_version()
        if version == self.version:
            return False
        if self.enabled:
            bindings = self.metadata.list_acls()
            self.authorizer = Authorizer(
                bindings, self.super_users, allow_if_no_acl=self.allow_if_no_acl
            )
            log.debug("ACLs reloaded: %d binding(s), version %d", len(bindings), version)
        self._credentials = {}
        self.version = version
        return True

    async def refresh(self) -> None:
        """Reload now and then, for ACLs and users changed through other agents."""
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await asyncio.to_thread(self.reload)
            except StreamHouseError as exc:
                log.warning("ACLs not reloaded (the last ones stay in force): %s", exc)

    async def credential(self, user: str, mechanism: str) -> ScramCredential | None:
        """``user``'s SCRAM credential (None: no such user), read from the store once per
        version: a login costs no store read (an unknown user is remembered too, up to
        :data:`MAX_CACHED_CREDENTIALS` entries)."""
        key = (user, mechanism)
        cached = self._credentials
        if key in cached:
            return cached[key]
        found = await asyncio.to_thread(self.metadata.get_credential, user, mechanism)
        if len(cached) >= MAX_CACHED_CREDENTIALS:
            cached.clear()
        cached[key] = found
        return found

    def is_super(self, session: Session | None) -> bool:
        return session is not None and session.principal in self.super_users

    def allowed(
        self,
        session: Session | None,
        operation: AclOperation,
        resource_type: ResourceType,
        name: str,
        *,
        audit: bool = True,
    ) -> bool:
        """Whether the connection may; a denial is audited unless ``audit`` is False (a
        Metadata listing leaves out what a client may not see without a line each)."""
        if not self.enabled:
            return True
        principal, host = (session.principal, session.host) if session else (ANONYMOUS, "")
        if self.authorizer.allowed(principal, host, operation, resource_type, name):
            return True
        if audit:
            AUDIT.line(
                "denied %s on %s %r to %s from %s",
                operation.name,
                resource_type.name,
                name,
                principal,
                host or "?",
            )
        return False

    def denied(
        self,
        session: Session | None,
        operation: AclOperation,
        resource_type: ResourceType,
        name: str,
    ) -> ErrorCode | None:
        """The error of a denied request, or None if allowed."""
        if self.allowed(session, operation, resource_type, name):
            return None
        return DENIED[resource_type]

    def may_write_idempotently(self, session: Session | None) -> bool:
        """IDEMPOTENT_WRITE on the cluster, or WRITE allowed on some topic (Kafka 3's rule for
        InitProducerId without a transactional id)."""
        if not self.enabled:
            return True
        principal, host = (session.principal, session.host) if session else (ANONYMOUS, "")
        if self.authorizer.writes_some_topic(principal, host):
            return True
        return self.allowed(
            session, AclOperation.IDEMPOTENT_WRITE, ResourceType.CLUSTER, CLUSTER_NAME
        )

    def cluster_denied(self, session: Session | None, operation: AclOperation) -> ErrorCode | None:
        return self.denied(session, operation, ResourceType.CLUSTER, CLUSTER_NAME)

    def acl_api_refused(
        self, session: Session | None, operation: AclOperation
    ) -> tuple[ErrorCode, str] | None:
        """Why an ACL API (CreateAcls, DescribeAcls, DeleteAcls) is refused, if it is: no
        authorizer (``SECURITY_DISABLED``, as from Kafka), or ``operation`` on the cluster
        denied."""
        if not self.enabled:
            return ErrorCode.security_disabled, NO_AUTHORIZER
        if self.cluster_denied(session, operation) is not None:
            return (
                ErrorCode.cluster_authorization_failed,
                f"{operation.name} on the cluster is needed to {_ACL_VERBS[operation]} ACLs",
            )
        return None


# -- ACL APIs ---------------------------------------------------------------------------------


def _binding(c: Any) -> AclBinding:
    return AclBinding(
        ResourceType(c.resource_type),
        c.resource_name,
        PatternType(getattr(c, "resource_pattern_type", PatternType.LITERAL)),
        c.principal,
        c.host,
        AclOperation(c.operation),
        AclPermission(c.permission_type),
    )


def _filter(f: Any) -> AclFilter:
    """A DescribeAcls request or a DeleteAcls filter (their fields are named alike)."""
    return AclFilter(
        ResourceType(f.resource_type_filter),
        f.resource_name_filter,
        PatternType(getattr(f, "pattern_type_filter", PatternType.LITERAL)),
        f.principal_filter,
        f.host_filter,
        AclOperation(f.operation),
        AclPermission(f.permission_type),
    )


def _enum_error(exc: ValueError) -> str:
    return f"unknown ACL field value: {exc}"


async def handle_create_acls(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.CREATE_ACLS, header.api_version, True)
    refused = broker.access.acl_api_refused(header.session, AclOperation.ALTER)
    results: list[tuple[ErrorCode, str | None]] = []
    valid: list[AclBinding] = []
    for creation in request.creations:
        if refused is not None:
            results.append(refused)
            continue
        try:
            binding = _binding(creation)
        except ValueError as exc:
            results.append((ErrorCode.invalid_request, _enum_error(exc)))
            continue
        reason = binding.invalid()
        if reason is not None:
            results.append((ErrorCode.invalid_request, reason))
            continue
        valid.append(binding)
        results.append((ErrorCode.none, None))
    if valid:
        try:
            await asyncio.to_thread(_store, broker, broker.log.metadata.create_acls, valid)
        except StreamHouseError as exc:
            results = [
                (ErrorCode.kafka_storage_error, str(exc)) if e is ErrorCode.none else (e, m)
                for e, m in results
            ]
    return make(
        module.CreateAclsResponse,
        throttle_time=0,
        results=tuple(module.AclCreationResult(error_code=e, error_message=m) for e, m in results),
    )


def _store(broker: Broker, change: Any, bindings: list[AclBinding]) -> None:
    change(bindings)
    broker.access.reload()


async def handle_describe_acls(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DESCRIBE_ACLS, header.api_version, True)
    refused = broker.access.acl_api_refused(header.session, AclOperation.DESCRIBE)
    resources: dict[tuple[int, str, int], list[AclBinding]] = {}
    error, message = ErrorCode.none, None
    if refused is not None:
        error, message = refused
    else:
        try:
            wanted = _filter(request)
            await asyncio.to_thread(broker.access.reload)
        except ValueError as exc:
            error, message = ErrorCode.invalid_request, _enum_error(exc)
        else:
            for b in broker.access.authorizer.bindings:
                if wanted.matches(b):
                    key = (int(b.resource_type), b.resource_name, int(b.pattern_type))
                    resources.setdefault(key, []).append(b)
    return make(
        module.DescribeAclsResponse,
        throttle_time=0,
        error_code=error,
        error_message=message,
        resources=tuple(
            make(
                module.DescribeAclsResource,
                resource_type=rtype,
                resource_name=name,
                pattern_type=pattern,
                acls=tuple(
                    module.AclDescription(
                        principal=b.principal,
                        host=b.host,
                        operation=int(b.operation),
                        permission_type=int(b.permission),
                    )
                    for b in bindings
                ),
            )
            for (rtype, name, pattern), bindings in sorted(resources.items())
        ),
    )


async def handle_delete_acls(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_ACLS, header.api_version, True)
    refused = broker.access.acl_api_refused(header.session, AclOperation.ALTER)
    if refused is None:
        await asyncio.to_thread(broker.access.reload)
    current = broker.access.authorizer.bindings
    results: list[tuple[ErrorCode, str | None, list[AclBinding]]] = []
    gone: dict[AclBinding, None] = {}
    for f in request.filters:
        if refused is not None:
            results.append((*refused, []))
            continue
        try:
            wanted = _filter(f)
        except ValueError as exc:
            results.append((ErrorCode.invalid_request, _enum_error(exc), []))
            continue
        matching = [b for b in current if wanted.matches(b)]
        gone.update(dict.fromkeys(matching))
        results.append((ErrorCode.none, None, matching))
    if gone:
        try:
            await asyncio.to_thread(_store, broker, broker.log.metadata.delete_acls, list(gone))
        except StreamHouseError as exc:
            results = [(ErrorCode.kafka_storage_error, str(exc), []) for _ in results]
    return make(
        module.DeleteAclsResponse,
        throttle_time=0,
        filter_results=tuple(
            module.DeleteAclsFilterResult(
                error_code=error,
                error_message=message,
                matching_acls=tuple(
                    make(
                        module.DeleteAclsMatchingAcl,
                        error_code=ErrorCode.none,
                        error_message=None,
                        resource_type=int(b.resource_type),
                        resource_name=b.resource_name,
                        pattern_type=int(b.pattern_type),
                        principal=b.principal,
                        host=b.host,
                        operation=int(b.operation),
                        permission_type=int(b.permission),
                    )
                    for b in matching
                ),
            )
            for error, message, matching in results
        ),
    )


# -- SCRAM credential APIs --------------------------------------------------------------------

_SUPER_ONLY = "only a super user may manage SCRAM credentials"


async def handle_describe_user_scram_credentials(
    broker: Broker, header: RequestHeader, request: Any
) -> Any:
    module = messages(ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS, header.api_version, True)
    if not broker.access.is_super(header.session):
        return make(
            module.DescribeUserScramCredentialsResponse,
            throttle_time=0,
            error_code=ErrorCode.cluster_authorization_failed,
            error_message=_SUPER_ONLY,
            results=(),
        )
    rows = await asyncio.to_thread(broker.log.metadata.list_credentials)
    codes = {name: code for code, name in SCRAM_MECHANISM_CODES.items()}
    by_user: dict[str, list[tuple[int, int]]] = {}
    for user, mechanism, iterations in rows:
        by_user.setdefault(user, []).append((codes[mechanism], iterations))
    asked = [u.name for u in request.users] if request.users else sorted(by_user)
    results = []
    for user in dict.fromkeys(asked):
        infos = by_user.get(user)
        results.append(
            module.DescribeUserScramCredentialsResult(
                user=user,
                error_code=ErrorCode.none if infos else ErrorCode.resource_not_found,
                error_message=None if infos else f"no SCRAM credential of user {user!r}",
                credential_infos=tuple(
                    module.CredentialInfo(mechanism=m, iterations=i) for m, i in infos or ()
                ),
            )
        )
    return make(
        module.DescribeUserScramCredentialsResponse,
        throttle_time=0,
        error_code=ErrorCode.none,
        error_message=None,
        results=tuple(results),
    )


def _alter_credentials(metadata: Metadata, request: Any) -> dict[str, tuple[ErrorCode, str | None]]:
    """Apply deletions and upsertions user by user (worker thread); the outcome per user."""
    outcome: dict[str, tuple[ErrorCode, str | None]] = {}
    changes: dict[str, dict[str, ScramCredential | None]] = {}
    for item in (*request.deletions, *request.upsertions):
        mechanism = SCRAM_MECHANISM_CODES.get(item.mechanism)
        upsert = hasattr(item, "salted_password")
        if mechanism is None:
            outcome[item.name] = (ErrorCode.unsupported_sasl_mechanism, "unknown SCRAM mechanism")
        elif not item.name:
            outcome[item.name] = (ErrorCode.unacceptable_credential, "the user name is empty")
        elif upsert and not MIN_ITERATIONS <= item.iterations <= MAX_ITERATIONS:
            outcome[item.name] = (
                ErrorCode.unacceptable_credential,
                f"iterations must be {MIN_ITERATIONS}..{MAX_ITERATIONS}",
            )
        else:
            changes.setdefault(item.name, {})[mechanism] = (
                credential_of(item.name, mechanism, bytes(item.salt), item.iterations,
                              bytes(item.salted_password))
                if upsert else None
            )  # fmt: skip
    for user, change in changes.items():
        if user in outcome:
            continue
        current = {m: metadata.get_credential(user, m) for m in MECHANISMS}
        if any(new is None and current[m] is None for m, new in change.items()):
            outcome[user] = (ErrorCode.resource_not_found, "no such credential to delete")
            continue
        current.update(change)
        metadata.put_credentials(user, [c for c in current.values() if c is not None])
        outcome[user] = (ErrorCode.none, None)
    return outcome


async def handle_alter_user_scram_credentials(
    broker: Broker, header: RequestHeader, request: Any
) -> Any:
    module = messages(ApiKey.ALTER_USER_SCRAM_CREDENTIALS, header.api_version, True)
    users = dict.fromkeys([*(d.name for d in request.deletions),
                           *(u.name for u in request.upsertions)])  # fmt: skip
    if not broker.access.is_super(header.session):
        AUDIT.line(
            "denied %s on SCRAM credentials of %s to %s",
            "ALTER",
            ", ".join(users),
            header.session.principal if header.session else ANONYMOUS,
        )
        outcome = dict.fromkeys(users, (ErrorCode.cluster_authorization_failed, _SUPER_ONLY))
    else:
        try:
            outcome = await asyncio.to_thread(_alter_credentials, broker.log.metadata, request)
            await asyncio.to_thread(broker.access.reload)
        except StreamHouseError as exc:
            outcome = dict.fromkeys(users, (ErrorCode.kafka_storage_error, str(exc)))
    return make(
        module.AlterUserScramCredentialsResponse,
        throttle_time=0,
        results=tuple(
            module.AlterUserScramCredentialsResult(user=u, error_code=e, error_message=m)
            for u, (e, m) in outcome.items()
        ),
    )


HANDLERS = {
    ApiKey.CREATE_ACLS: handle_create_acls,
    ApiKey.DESCRIBE_ACLS: handle_describe_acls,
    ApiKey.DELETE_ACLS: handle_delete_acls,
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: handle_describe_user_scram_credentials,
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: handle_alter_user_scram_credentials,
}
"""API key -> handler."""
