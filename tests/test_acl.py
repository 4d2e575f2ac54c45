"""Kafka ACLs and the SCRAM credential APIs: a ``serve --authorizer acl`` with a SASL listener,
managed through confluent-kafka's AdminClient and kafka-python's KafkaAdminClient; literal,
prefixed, group and deny ACLs checked with real producers and consumers; a non-superuser
cannot grant; a user made over AlterUserScramCredentials logs in. The authorizer's decisions
and the ACL store are checked directly too."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from kafka_fixtures import KafkaServer, RawClient, txn_offset_commit_request
from tls_fixtures import free_ports

from streamhouse.cli import main as cli
from streamhouse.kafka.wire import messages, ms
from streamhouse.security import acl
from streamhouse.security.acl import AclFilter, Authorizer

TIMEOUT = 30
PASSWORD = "s3cret-pw"
USERS = ("admin", "alice", "bob")


# -- the authorizer alone -----------------------------------------------------------------


def _binding(name: str, op: acl.AclOperation, *, prefixed: bool = False, deny: bool = False,
             principal: str = "User:alice", rtype: acl.ResourceType = acl.ResourceType.TOPIC,
             host: str = "*") -> acl.AclBinding:  # fmt: skip
    return acl.AclBinding(
        rtype,
        name,
        acl.PatternType.PREFIXED if prefixed else acl.PatternType.LITERAL,
        principal,
        host,
        op,
        acl.AclPermission.DENY if deny else acl.AclPermission.ALLOW,
    )


def test_authorizer_decides_as_kafka() -> None:
    op, topic, group = acl.AclOperation, acl.ResourceType.TOPIC, acl.ResourceType.GROUP
    auth = Authorizer(
        [
            _binding("orders", op.WRITE),
            _binding("logs-", op.READ, prefixed=True),
            _binding("logs-secret", op.ALL, deny=True, principal="User:*"),
            _binding("*", op.DESCRIBE, principal="User:bob"),
            _binding("g-", op.READ, prefixed=True, rtype=group),
            _binding("pinned", op.READ, host="10.0.0.1"),
        ],
        super_users=["User:admin"],
    )

    def ok(principal: str, operation: acl.AclOperation, rtype: acl.ResourceType, name: str,
           host: str = "127.0.0.1") -> bool:  # fmt: skip
        return auth.allowed(principal, host, operation, rtype, name)

    assert ok("User:alice", op.WRITE, topic, "orders")
    assert ok("User:alice", op.DESCRIBE, topic, "orders")  # WRITE implies DESCRIBE
    assert not ok("User:alice", op.READ, topic, "orders")
    assert not ok("User:alice", op.WRITE, topic, "orders2")  # literal is exact
    assert ok("User:alice", op.READ, topic, "logs-eu") and ok("User:alice", op.READ, topic, "logs-")
    assert not ok("User:alice", op.READ, topic, "logs")  # shorter than the prefix
    assert not ok("User:alice", op.READ, topic, "logs-secret")  # DENY wins
    assert not ok("User:bob", op.DESCRIBE, topic, "logs-secret")  # even over a wildcard ALLOW
    assert ok("User:bob", op.DESCRIBE, topic, "anything") and not ok(
        "User:bob", op.READ, topic, "x"
    )
    assert ok("User:alice", op.READ, group, "g-1") and not ok("User:alice", op.READ, group, "h")
    assert ok("User:alice", op.READ, topic, "pinned", "10.0.0.1")
    assert not ok("User:alice", op.READ, topic, "pinned", "10.0.0.2")
    assert ok("User:admin", op.DELETE, topic, "logs-secret")  # super users bypass
    assert not ok("User:carol", op.DESCRIBE, topic, "orders")  # no ACL: no
    assert auth.writes_some_topic("User:alice", "1.2.3.4")
    assert not auth.writes_some_topic("User:bob", "1.2.3.4")


def test_allow_if_no_acl_opens_only_resources_no_acl_names() -> None:
    """Kafka's ``allow.everyone.if.no.acl.found``: a resource with no ACL at all is open; one
    ACL on it, even for someone else, closes it to the others; DENY still wins."""
    op, topic = acl.AclOperation, acl.ResourceType.TOPIC
    bindings = [_binding("orders", op.WRITE), _binding("logs-", op.READ, prefixed=True),
                _binding("closed", op.ALL, deny=True, principal="User:*")]  # fmt: skip
    auth = Authorizer(bindings, allow_if_no_acl=True)
    strict = Authorizer(bindings)

    def ok(a: Authorizer, principal: str, operation: acl.AclOperation, name: str) -> bool:
        return a.allowed(principal, "127.0.0.1", operation, topic, name)

    assert ok(auth, "User:ANONYMOUS", op.WRITE, "anything")  # no ACL names it
    assert not ok(strict, "User:ANONYMOUS", op.WRITE, "anything")
    assert ok(auth, "User:alice", op.WRITE, "orders")
    assert not ok(auth, "User:bob", op.WRITE, "orders")  # an ACL for alice closes it to bob
    assert not ok(auth, "User:bob", op.READ, "logs-eu")  # so does a prefixed one
    assert not ok(auth, "User:ANONYMOUS", op.DESCRIBE, "closed")  # DENY wins
    assert ok(auth, "User:ANONYMOUS", op.READ, "open")


def test_filters_match_as_describe_and_delete_do() -> None:
    op = acl.AclOperation
    literal = _binding("orders", op.WRITE)
    prefixed = _binding("ord", op.READ, prefixed=True)
    wildcard = _binding("*", op.DESCRIBE, principal="User:bob")

    def f(name: str | None, pattern: acl.PatternType, principal: str | None = None) -> AclFilter:
        return AclFilter(acl.ResourceType.ANY, name, pattern, principal, None, op.ANY,
                         acl.AclPermission.ANY)  # fmt: skip

    every = [literal, prefixed, wildcard]
    assert [b for b in every if f(None, acl.PatternType.ANY).matches(b)] == every
    assert [b for b in every if f("orders", acl.PatternType.LITERAL).matches(b)] == [literal]
    assert [b for b in every if f("orders", acl.PatternType.MATCH).matches(b)] == every
    assert [b for b in every if f("ord", acl.PatternType.PREFIXED).matches(b)] == [prefixed]
    assert [b for b in every if f(None, acl.PatternType.ANY, "User:bob").matches(b)] == [wildcard]


def test_acls_in_each_metadata_store(md) -> None:
    """SQLite and PostgreSQL keep the same ACLs; each change moves the version."""
    op = acl.AclOperation
    first = [_binding("orders", op.WRITE), _binding("logs-", op.READ, prefixed=True)]
    v0 = md.security_version()
    md.create_acls(first)
    md.create_acls(first[:1])  # again: kept once
    assert sorted(md.list_acls(), key=str) == sorted(first, key=str)
    v1 = md.security_version()
    md.delete_acls(first[:1])
    assert md.list_acls() == first[1:]
    assert v0 < v1 < md.security_version()


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """``--authorizer acl --super-users User:admin``: SASL_PLAINTEXT with SCRAM and PLAIN; users
    admin, alice and bob."""
    data = tmp_path_factory.mktemp("acl") / "data"
    for user in USERS:
        added = CliRunner().invoke(
            cli, ["user", "add", user, "--password-stdin", "--data-dir", str(data)],
            input=PASSWORD + "\n",
        )  # fmt: skip
        assert added.exit_code == 0, added.output
    port, sasl = free_ports(2)
    server = KafkaServer(
        data,
        port,
        args=["--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl}",
              "--sasl-mechanisms", "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
              "--authorizer", "acl", "--super-users", "User:admin"],
    )  # fmt: skip
    server.sasl_port = sasl  # type: ignore[attr-defined]
    server.start()
    try:
        admin = AdminClient(_config(server, "admin"))
        topics = ["orders", "logs-a", "logs-secret", "private"]
        for future in admin.create_topics([NewTopic(t, 1) for t in topics]).values():
            future.result(TIMEOUT)
        yield server
    finally:
        assert server.stop() == 0, server.log()


def _config(server: KafkaServer, user: str, mechanism: str = "PLAIN") -> dict:
    return {
        "bootstrap.servers": f"127.0.0.1:{server.sasl_port}",  # type: ignore[attr-defined]
        "security.protocol": "sasl_plaintext",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": PASSWORD,
    }


def _grant(server: KafkaServer, *bindings: AclBinding) -> None:
    admin = AdminClient(_config(server, "admin"))
    for future in admin.create_acls(list(bindings)).values():
        future.result(TIMEOUT)


def _acl(name: str, op: AclOperation, *, user: str = "alice", prefixed: bool = False,
         deny: bool = False, rtype: ResourceType = ResourceType.TOPIC) -> AclBinding:  # fmt: skip
    return AclBinding(
        rtype,
        name,
        ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL,
        f"User:{user}",
        "*",
        op,
        AclPermissionType.DENY if deny else AclPermissionType.ALLOW,
    )


def _produce(server: KafkaServer, user: str, topic: str) -> KafkaError | None:
    """Produce one record as ``user``; the delivery error, if any."""
    return _delivery_error(_config(server, user), topic)


def _delivery_error(config: dict, topic: str) -> KafkaError | None:
    """Produce one record with the client ``config``; the delivery error, if any."""
    errors: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": 5000})
    producer.produce(topic, b"v", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(TIMEOUT)
    assert len(errors) == 1
    return errors[0]


def _consume(server: KafkaServer, user: str, topic: str, group: str) -> list[bytes] | KafkaError:
    consumer = Consumer(
        {**_config(server, user), "group.id": group, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and not values:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                return msg.error()
            values.append(msg.value())
    finally:
        consumer.close()
    return values


def test_literal_acl_lets_one_user_write_and_no_other(acl_server: KafkaServer) -> None:
    _grant(acl_server, _acl("orders", AclOperation.WRITE))
    assert _produce(acl_server, "alice", "orders") is None
    refused = _produce(acl_server, "bob", "orders")
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert "audit: denied DESCRIBE on TOPIC 'orders' to User:bob" in acl_server.log()


def test_prefixed_and_group_acls_let_a_consumer_read(acl_server: KafkaServer) -> None:
    _grant(
        acl_server,
        _acl("logs-", AclOperation.READ, prefixed=True),
        _acl("readers-", AclOperation.READ, prefixed=True, rtype=ResourceType.GROUP),
        _acl("logs-a", AclOperation.WRITE, user="admin"),
    )
    assert _produce(acl_server, "admin", "logs-a") is None
    assert _consume(acl_server, "alice", "logs-a", "readers-1") == [b"v"]
    refused = _consume(acl_server, "alice", "logs-a", "others")
    assert isinstance(refused, KafkaError)
    assert refused.code() == KafkaError.GROUP_AUTHORIZATION_FAILED


def test_deny_wins_and_metadata_lists_only_describable_topics(acl_server: KafkaServer) -> None:
    _grant(
        acl_server,
        _acl("logs-", AclOperation.READ, prefixed=True, user="bob"),
        _acl("logs-secret", AclOperation.ALL, deny=True, user="bob"),
        _acl("readers-", AclOperation.READ, prefixed=True, rtype=ResourceType.GROUP, user="bob"),
    )
    listed = AdminClient(_config(acl_server, "bob")).list_topics(timeout=TIMEOUT)
    assert sorted(listed.topics) == ["logs-a"]  # READ implies DESCRIBE; the DENY hides one
    everything = AdminClient(_config(acl_server, "admin")).list_topics(timeout=TIMEOUT)
    assert {"orders", "logs-a", "logs-secret", "private"} <= set(everything.topics)
    refused = _consume(acl_server, "bob", "logs-secret", "readers-bob")
    assert isinstance(refused, KafkaError)
    assert refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@contextlib.contextmanager
def _kafka_python_admin(server: KafkaServer, user: str) -> Iterator[Any]:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=f"127.0.0.1:{server.sasl_port}",  # type: ignore[attr-defined]
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user,
        sasl_plain_password=PASSWORD,
    )
    try:
        yield admin
    finally:
        admin.close()


def test_transaction_apis_need_their_acls(acl_server: KafkaServer) -> None:
    """The coordinator's APIs check Kafka's ACLs: WRITE on the transactional id for all of
    them, WRITE on each topic added, READ on the group whose offsets join and on each topic
    committed, DESCRIBE for DescribeTransactions and ListTransactions (raw requests as the
    anonymous principal of the plaintext listener)."""
    _grant(
        acl_server,
        _acl("anon-", AclOperation.WRITE, prefixed=True, rtype=ResourceType.TRANSACTIONAL_ID,
             user="ANONYMOUS"),
        _acl("orders", AclOperation.WRITE, user="ANONYMOUS"),
        _acl("logs-a", AclOperation.READ, user="ANONYMOUS"),
        _acl("anon-g", AclOperation.READ, rtype=ResourceType.GROUP, user="ANONYMOUS"),
    )  # fmt: skip
    tid = f"anon-{uuid.uuid4().hex[:6]}"
    hidden = Producer({**_config(acl_server, "admin"), "transactional.id": "hidden"})
    hidden.init_transactions(TIMEOUT)  # a transactional id the anonymous may not describe
    with RawClient(acl_server.bootstrap) as c:

        def init(transactional_id: str) -> Any:
            return c.request(
                22, 1, transactional_id=transactional_id, transaction_timeout=ms(60_000)
            )

        def add(transactional_id: str, pid: int, epoch: int, *topics: str) -> dict[str, int]:
            module = messages(24, 2, False)
            resp = c.request(
                24,
                2,
                v3_and_below_transactional_id=transactional_id,
                v3_and_below_producer_id=pid,
                v3_and_below_producer_epoch=epoch,
                v3_and_below_topics=tuple(
                    module.AddPartitionsToTxnTopic(name=t, partitions=(0,)) for t in topics
                ),
            )
            return {
                t.name: t.results_by_partition[0].partition_error_code
                for t in resp.results_by_topic_v3_and_below
            }

        assert init("other").error_code == 53  # TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        resp = init(tid)
        assert resp.error_code == 0
        pid, epoch = resp.producer_id, resp.producer_epoch
        assert add("other", pid, epoch, "orders") == {"orders": 53}
        # TOPIC_AUTHORIZATION_FAILED, and OPERATION_NOT_ATTEMPTED for the allowed one
        assert add(tid, pid, epoch, "orders", "private") == {"orders": 55, "private": 29}
        assert add(tid, pid, epoch, "orders") == {"orders": 0}

        def add_offsets(group: str) -> int:
            return c.request(
                25, 2, transactional_id=tid, producer_id=pid, producer_epoch=epoch, group_id=group
            ).error_code

        assert add_offsets("not-ours") == 30  # GROUP_AUTHORIZATION_FAILED
        assert add_offsets("anon-g") == 0

        def commit_offsets(transactional_id: str, group: str) -> dict[str, int]:
            fields = txn_offset_commit_request(
                transactional_id, group, pid, epoch, ["logs-a", "orders"], 0
            )
            return {t.name: t.partitions[0].error_code for t in c.request(28, 2, **fields).topics}

        assert commit_offsets(tid, "not-ours") == {"logs-a": 30, "orders": 30}
        assert commit_offsets("other", "anon-g") == {"logs-a": 53, "orders": 53}
        assert commit_offsets(tid, "anon-g") == {"logs-a": 0, "orders": 29}  # no READ on it

        def end(transactional_id: str) -> int:
            return c.request(
                26,
                2,
                transactional_id=transactional_id,
                producer_id=pid,
                producer_epoch=epoch,
                committed=True,
            ).error_code

        (mine,) = c.request(65, 0, transactional_ids=(tid,)).transaction_states
        assert (mine.error_code, mine.transaction_state) == (0, "Ongoing")  # WRITE: DESCRIBE
        # denied: start time -1 on the wire, which kio cannot decode; the error code is byte 11
        c.send_frame(c.encode(65, 0, transactional_ids=("other",))[1])
        assert c.read_frame()[11] == 53
        assert end("other") == 53
        assert end(tid) == 0
        listed = c.request(66, 0, state_filters=(), producer_id_filters=()).transaction_states
        assert [t.transactional_id for t in listed] == [tid]  # not "hidden"


def test_kafka_python_describes_and_deletes_acls(acl_server: KafkaServer) -> None:
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
    )
    from kafka.admin import NewTopic as KNewTopic
    from kafka.admin import ResourceType as KResourceType

    with _kafka_python_admin(acl_server, "admin") as admin:
        name = f"kp-{uuid.uuid4().hex[:6]}"
        made = admin.create_acls(
            [ACL("User:bob", "*", ACLOperation.WRITE, ACLPermissionType.ALLOW,
                 ResourcePattern(KResourceType.TOPIC, name, ACLResourcePatternType.LITERAL))]
        )  # fmt: skip
        assert not made["failed"] and len(made["succeeded"]) == 1
        admin.create_topics([KNewTopic(name, 1, 1)])
        assert _produce(acl_server, "bob", name) is None
        wanted = ACLFilter(
            "User:bob", None, ACLOperation.ANY, ACLPermissionType.ANY,
            ResourcePatternFilter(KResourceType.TOPIC, name, ACLResourcePatternType.LITERAL),
        )  # fmt: skip
        found, error = admin.describe_acls(wanted)
        assert error.errno == 0
        assert [(a.principal, a.operation, a.resource_pattern.resource_name) for a in found] == [
            ("User:bob", ACLOperation.WRITE, name)
        ]
        deleted = admin.delete_acls([wanted])
        (_, matched, error), *_ = deleted
        assert [a.resource_pattern.resource_name for a in matched] == [name] and error.errno == 0
        assert admin.describe_acls(wanted)[0] == []
        refused = _produce(acl_server, "bob", name)
        assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_confluent_describes_and_deletes_acls(acl_server: KafkaServer) -> None:
    _grant(acl_server, _acl("private", AclOperation.DESCRIBE, user="bob"))
    admin = AdminClient(_config(acl_server, "admin"))
    wanted = AclBindingFilter(ResourceType.TOPIC, "private", ResourcePatternType.MATCH,
                              "User:bob", None, AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
    found = admin.describe_acls(wanted).result(TIMEOUT)
    assert [(b.name, b.operation) for b in found] == [("private", AclOperation.DESCRIBE)]
    (deleted,) = admin.delete_acls([wanted]).values()
    assert [b.name for b in deleted.result(TIMEOUT)] == ["private"]
    assert admin.describe_acls(wanted).result(TIMEOUT) == []


def test_acl_apis_without_an_authorizer_answer_security_disabled(tmp_path: Path) -> None:
    """A serve without --authorizer answers CreateAcls and DescribeAcls SECURITY_DISABLED, as
    a Kafka broker with no authorizer does, instead of storing ACLs that decide nothing."""
    server = KafkaServer(tmp_path / "data").start()
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        (created,) = admin.create_acls([_acl("orders", AclOperation.WRITE)]).values()
        with pytest.raises(KafkaException) as raised:
            created.result(TIMEOUT)
        assert raised.value.args[0].code() == KafkaError.SECURITY_DISABLED
        with RawClient(server.bootstrap) as client:  # confluent-kafka drops this error
            described = client.request(
                29, 1, resource_type_filter=1, resource_name_filter=None, pattern_type_filter=1,
                principal_filter=None, host_filter=None, operation=1, permission_type=1,
            )  # fmt: skip
        assert described.error_code == KafkaError.SECURITY_DISABLED
        assert described.error_message.startswith("No Authorizer is configured on the broker")
    finally:
        assert server.stop() == 0, server.log()


def _produce_plain(server: KafkaServer, topic: str) -> KafkaError | None:
    return _delivery_error({"bootstrap.servers": server.bootstrap}, topic)


def test_allow_everyone_if_no_acl_found_as_librdkafkas_brokers(tmp_path: Path) -> None:
    """``--authorizer acl`` with ``allow_everyone_if_no_acl_found`` (the broker configuration
    librdkafka's own suite runs against): anonymous clients may do anything no ACL speaks of;
    a DENY of everyone on one topic (librdkafka's 0109) shuts that topic alone, and the ACLs
    anonymous clients create are the ones DescribeAcls lists (0081)."""
    server = KafkaServer(
        tmp_path / "data",
        env={"STREAMHOUSE_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"},
        args=["--authorizer", "acl"],
    ).start()
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        for future in admin.create_topics([NewTopic(t, 1) for t in ("open", "shut")]).values():
            future.result(TIMEOUT)
        assert _produce_plain(server, "shut") is None
        deny = _acl("shut", AclOperation.ALL, user="*", deny=True)
        (created,) = admin.create_acls([deny]).values()
        created.result(TIMEOUT)
        refused = _produce_plain(server, "shut")
        assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
        assert _produce_plain(server, "open") is None
        everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None,
                                      None, AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
        found = admin.describe_acls(everything).result(TIMEOUT)
        assert [(b.name, b.principal, b.permission_type) for b in found] == [
            ("shut", "User:*", AclPermissionType.DENY)
        ]
        listed = admin.list_topics(timeout=TIMEOUT).topics
        assert "open" in listed and "shut" not in listed
    finally:
        assert server.stop() == 0, server.log()


# -- streamhouse acl: the command line ------------------------------------------------------


def _acl_cli(data: Any, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(cli, ["acl", *args, "--data-dir", str(data)], input=stdin)


def _until(check: Any, timeout: float = 10.0) -> Any:
    """``check()`` once it is truthy (the server reloads ACLs within acl_refresh_s)."""
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def test_acl_cli_grants_and_revokes_on_a_running_server(acl_server: KafkaServer) -> None:
    """``acl add --producer`` lets bob write (the server picks it up from the store); ``acl
    list`` shows what the Kafka Admin API describes; ``acl delete`` takes it back."""
    topic = f"cli-{uuid.uuid4().hex[:6]}"
    admin = AdminClient(_config(acl_server, "admin"))
    for future in admin.create_topics([NewTopic(topic, 1)]).values():
        future.result(TIMEOUT)
    refused = _produce(acl_server, "bob", topic)
    assert refused is not None and refused.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    data = acl_server.data_dir
    added = _acl_cli(data, "add", "--allow-principal", "User:bob", "--producer", "--topic", "cli-",
                     "--resource-pattern-type", "prefixed")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert _until(lambda: _produce(acl_server, "bob", topic) is None)
    wanted = AclBindingFilter(ResourceType.TOPIC, "cli-", ResourcePatternType.PREFIXED,
                              None, None, AclOperation.ANY, AclPermissionType.ANY)  # fmt: skip
    seen = admin.describe_acls(wanted).result(TIMEOUT)
    assert sorted((b.principal, b.host, b.operation.name) for b in seen) == [
        ("User:bob", "*", "CREATE"), ("User:bob", "*", "DESCRIBE"), ("User:bob", "*", "WRITE")
    ]  # fmt: skip
    listed = _acl_cli(data, "list", "--topic", "cli-", "--resource-pattern-type", "prefixed")
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[:4] == [
        "Current ACLs for resource `ResourcePattern(resourceType=TOPIC, name=cli-,"
        " patternType=PREFIXED)`:",
        *(f" \t(principal=User:bob, host=*, operation={op}, permissionType=ALLOW)"
          for op in ("WRITE", "CREATE", "DESCRIBE")),
    ]  # fmt: skip
    assert _acl_cli(data, "delete", "--topic", "cli-", "--resource-pattern-type",
                    "prefixed").exit_code == 1  # asks first; no answer: nothing deleted  # fmt: skip
    assert len(admin.describe_acls(wanted).result(TIMEOUT)) == 3
    deleted = _acl_cli(data, "delete", "--topic", "cli-", "--resource-pattern-type", "prefixed",
                       "--force")  # fmt: skip
    assert deleted.exit_code == 0, deleted.output
    assert admin.describe_acls(wanted).result(TIMEOUT) == []

    def bob_refused() -> bool:
        error = _produce(acl_server, "bob", topic)
        return error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    assert _until(bob_refused)


def _listed(data: Any, *args: str) -> list[tuple[str, ...]]:
    """(resource, principal, host, operation, permission) of what ``acl list`` prints."""
    out = _acl_cli(data, "list", *args)
    assert out.exit_code == 0, out.output
    found, resource = [], ""
    for line in out.output.splitlines():
        if line.startswith("Current ACLs for resource"):
            resource = line.split("(", 1)[1].split(")`")[0]
        elif line.strip():
            fields = dict(part.split("=", 1) for part in line.strip(" \t()").split(", "))
            found.append((resource, fields["principal"], fields["host"], fields["operation"],
                          fields["permissionType"]))  # fmt: skip
    return found


def test_acl_cli_follows_kafka_acls_options(tmp_path: Any) -> None:
    """Hosts default to *, operations to All; --consumer and --idempotent grant Kafka's sets;
    delete matches the operation given (All unless given), as kafka-acls.sh --remove."""
    data = tmp_path / "data"
    topic_orders = "resourceType=TOPIC, name=orders, patternType=LITERAL"
    assert _acl_cli(data, "add", "--allow-principal", "User:alice", "--topic", "orders",
                    "--deny-principal", "User:bob", "--deny-host", "10.0.0.9").exit_code == 0  # fmt: skip
    assert _listed(data) == [(topic_orders, "User:alice", "*", "ALL", "ALLOW"),
                             (topic_orders, "User:bob", "10.0.0.9", "ALL", "DENY")]  # fmt: skip
    added = _acl_cli(data, "add", "--allow-principal", "User:carol", "--consumer", "--topic",
                     "orders", "--group", "g1", "--allow-host", "10.0.0.1")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert [row for row in _listed(data, "--principal", "User:carol")] == [
        (topic_orders, "User:carol", "10.0.0.1", "READ", "ALLOW"),
        (topic_orders, "User:carol", "10.0.0.1", "DESCRIBE", "ALLOW"),
        ("resourceType=GROUP, name=g1, patternType=LITERAL", "User:carol", "10.0.0.1", "READ",
         "ALLOW"),
    ]  # fmt: skip
    added = _acl_cli(data, "add", "--allow-principal", "User:dave", "--producer", "--idempotent",
                     "--topic", "out")  # fmt: skip
    assert added.exit_code == 0, added.output
    assert ("resourceType=CLUSTER, name=kafka-cluster, patternType=LITERAL", "User:dave", "*",
            "IDEMPOTENT_WRITE", "ALLOW") in _listed(data, "--cluster")  # fmt: skip
    assert [row[3] for row in _listed(data, "--topic", "out")] == ["WRITE", "CREATE", "DESCRIBE"]
    # --remove's default operation is All: carol's READ stays; READ named goes (both hosts' rows)
    kept = _acl_cli(data, "delete", "--topic", "orders", "--allow-principal", "User:carol")
    assert kept.exit_code == 0 and len(_listed(data, "--principal", "User:carol")) == 3
    gone = _acl_cli(data, "delete", "--topic", "orders", "--allow-principal", "User:carol",
                    "--allow-host", "10.0.0.1", "--operation", "read")  # fmt: skip
    assert gone.exit_code == 0 and "deleted 1 ACL(s)" in gone.output
    assert [row[3] for row in _listed(data, "--principal", "User:carol", "--topic", "orders")] == [
        "DESCRIBE"
    ]
    assert _listed(data, "--topic", "orders-eu", "--resource-pattern-type", "match") == []
    everything = _acl_cli(data, "delete", "--topic", "orders", stdin="y\n")
    assert everything.exit_code == 0 and "deleted 3 ACL(s)" in everything.output
    assert _listed(data, "--topic", "orders") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "--allow-principal", "alice", "--topic", "t"], "is not TYPE:NAME"),
        (["add", "--allow-principal", "User:a", "--operation", "Fly", "--topic", "t"],
         "unknown operation 'Fly'"),
        (["add", "--allow-principal", "User:a", "--operation", "Write", "--group", "g"],
         "GROUP has no operation WRITE"),
        (["add", "--allow-principal", "User:a"], "name a resource"),
        (["add", "--topic", "t"], "name a principal"),
        (["add", "--allow-principal", "User:a", "--topic", "t", "--resource-pattern-type",
          "match"], "LITERAL or PREFIXED"),
        (["add", "--allow-principal", "User:a", "--consumer", "--topic", "t"], "needs --group"),
        (["add", "--allow-host", "1.2.3.4", "--deny-principal", "User:a", "--topic", "t"],
         "--allow-host needs --allow-principal"),
        (["list", "--resource-pattern-type", "fuzzy"], "unknown resource pattern type"),
        (["delete", "--allow-principal", "User:a"], "name a resource"),
    ],
)  # fmt: skip
def test_acl_cli_refuses_bad_options_in_one_line(
    tmp_path: Any, args: list[str], message: str
) -> None:
    out = _acl_cli(tmp_path / "data", *args)
    assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, and of every UDP socket
    it has bound (/proc: the process's socket inodes, looked up in /proc/PID/net)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            listens = fields[3] == "0A" if table.startswith("tcp") else True
            if listens and fields[9] in inodes:
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((str(ipaddress.ip_address(words)), int(port, 16)))
    return found


def test_serve_listens_on_its_listeners_and_nothing_else(acl_server: KafkaServer) -> None:
    """No metrics or HTTP port, no UDP socket: the Kafka listeners named are the only ports."""
    assert acl_server.process is not None
    assert _listening(acl_server.process.pid) == {
        ("127.0.0.1", acl_server.port),
        ("127.0.0.1", acl_server.sasl_port),  # type: ignore[attr-defined]
    }


def test_a_non_superuser_cannot_grant_or_manage_users(acl_server: KafkaServer) -> None:
    alice = AdminClient(_config(acl_server, "alice"))
    (future,) = alice.create_acls([_acl("private", AclOperation.ALL)]).values()
    with pytest.raises(KafkaException) as raised:
        future.result(TIMEOUT)
    assert raised.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
    )
    from kafka.admin import ResourceType as KResourceType
    from kafka.errors import ClusterAuthorizationFailedError

    every = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY,
                      ResourcePatternFilter(KResourceType.ANY, None, ACLResourcePatternType.ANY))  # fmt: skip
    audited = "audit: denied DESCRIBE on CLUSTER 'kafka-cluster' to User:alice"
    deadline = time.monotonic() + 30
    while True:
        with (
            _kafka_python_admin(acl_server, "alice") as kp_alice,
            pytest.raises(ClusterAuthorizationFailedError),
        ):
            kp_alice.describe_acls(every)
        # the audit log writes 10 lines a second at most: under load, the client's other
        # denied requests may take a second's share; a later second has room again
        if audited in acl_server.log(5000) or time.monotonic() > deadline:
            break
        time.sleep(1.1)
    assert audited in acl_server.log(5000)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    (future,) = alice.alter_user_scram_credentials(
        [UserScramCredentialUpsertion("mallory", info, b"pw")]
    ).values()
    with pytest.raises(KafkaException):
        future.result(TIMEOUT)


def test_a_user_created_over_the_admin_api_logs_in(acl_server: KafkaServer) -> None:
    admin = AdminClient(_config(acl_server, "admin"))
    user = f"carol{uuid.uuid4().hex[:4]}"
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096)
    for future in admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, PASSWORD.encode())]
    ).values():
        future.result(TIMEOUT)
    described = admin.describe_user_scram_credentials([user])[user].result(TIMEOUT)
    infos = described.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_256, 4096)]
    _grant(acl_server, _acl("private", AclOperation.DESCRIBE, user=user))
    listed = AdminClient(_config(acl_server, user, "SCRAM-SHA-256")).list_topics(timeout=TIMEOUT)
    assert sorted(listed.topics) == ["private"]
    with pytest.raises(KafkaException):  # no SHA-512 credential was made
        AdminClient(_config(acl_server, user, "SCRAM-SHA-512")).list_topics(timeout=3)


def test_an_agent_learns_of_acls_changed_elsewhere_on_reload(md) -> None:
    """An agent's copy changes only when the store's security version moved: another agent's
    CreateAcls, or a user added, is seen at the next reload (every acl_refresh_s)."""
    from streamhouse.config import Settings
    from streamhouse.kafka.acls import Access
    from streamhouse.kafka.listeners import Listener, Session
    from streamhouse.security.scram import make_credential

    access = Access(md, Settings(authorizer="acl", super_users="User:root"))
    assert access.reload() and not access.reload()
    session = Session(Listener("PLAINTEXT", "127.0.0.1", 0, "127.0.0.1"), "User:alice")
    write, topic = acl.AclOperation.WRITE, acl.ResourceType.TOPIC
    assert not access.allowed(session, write, topic, "orders")
    md.create_acls([_binding("orders", write)])  # through another agent
    assert not access.allowed(session, write, topic, "orders")  # until the reload
    assert access.reload() and access.allowed(session, write, topic, "orders")
    md.put_credentials("zed", [make_credential("SCRAM-SHA-256", "pw", user="zed")])
    assert access.reload()  # a credential change moves the version too


def test_audit_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    from streamhouse.kafka.audit import AUDIT_LINES_PER_S, Audit

    audit = Audit()
    with caplog.at_level("INFO", logger="streamhouse.kafka.audit"):
        for i in range(AUDIT_LINES_PER_S * 5):
            audit.line("denied %s", i)
    lines = [r.getMessage() for r in caplog.records]
    assert 1 <= len(lines) <= 2 * AUDIT_LINES_PER_S + 1  # a second boundary may fall inside
    assert lines[0] == "audit: denied 0"


def test_serve_warns_of_a_data_dir_others_may_write(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    from streamhouse.cli import _warn_if_others_may_write

    tmp_path.chmod(0o700)
    with caplog.at_level("WARNING", logger="streamhouse"):
        _warn_if_others_may_write(tmp_path)
        assert not caplog.records
        tmp_path.chmod(0o777)
        _warn_if_others_may_write(tmp_path)
    tmp_path.chmod(0o700)
    assert "world-writable (mode 777)" in caplog.records[0].getMessage()
