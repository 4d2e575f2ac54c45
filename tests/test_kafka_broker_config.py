"""Dynamic broker configs (AlterConfigs, IncrementalAlterConfigs and DescribeConfigs of a BROKER
resource), kept in the metadata store: per broker id and as the cluster-wide default (resource
name ""), on SQLite and PostgreSQL, through confluent-kafka's AdminClient and kafka-python's
KafkaAdminClient against a real ``serve``; the error codes Kafka gives for read-only, unknown
and badly typed names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KPConfigResource
from kafka.admin import ConfigResourceType
from kafka_fixtures import KafkaServer, RawClient

from streamhouse.kafka.broker_config import DYNAMIC_BROKER_CONFIGS
from streamhouse.kafka.wire import ErrorCode, messages

TIMEOUT = 20
RELOGIN = "sasl.kerberos.min.time.before.relogin"
DYNAMIC_BROKER, DYNAMIC_DEFAULT, STATIC, DEFAULT = 2, 3, 4, 5


def test_dynamic_broker_configs_in_each_metadata_store(md) -> None:
    """Per broker and cluster-wide rows are apart; set, remove and replace in one call."""
    assert md.broker_config("0") == {} and md.broker_config("") == {}
    assert md.alter_broker_config("0", {RELOGIN: "58000", "num.io.threads": "4"}) == {
        RELOGIN: "58000",
        "num.io.threads": "4",
    }
    md.alter_broker_config("", {"num.io.threads": "16"})
    md.alter_broker_config("0", {"num.io.threads": "5", RELOGIN: None})
    assert md.broker_config("0") == {"num.io.threads": "5"}
    assert md.broker_config("") == {"num.io.threads": "16"}
    assert md.broker_config("1") == {}
    assert md.alter_broker_config("0", {"background.threads": "3"}, replace=True) == {
        "background.threads": "3"
    }
    assert md.broker_config("") == {"num.io.threads": "16"}


@pytest.fixture
def server(tmp_path: Path, metadata_url: str | None) -> Iterator[KafkaServer]:
    env = {"STREAMHOUSE_METADATA": metadata_url} if metadata_url else {}
    server = KafkaServer(tmp_path / "data", env=env).start()
    yield server
    server.stop()


def _incremental(admin: AdminClient, name: str, **ops: str | None) -> None:
    entries = [
        ConfigEntry(
            key.replace("_", "."),
            value,
            incremental_operation=AlterConfigOpType.DELETE
            if value is None
            else AlterConfigOpType.SET,
        )
        for key, value in ops.items()
    ]
    resource = ConfigResource("broker", name, incremental_configs=entries)
    admin.incremental_alter_configs([resource])[resource].result(TIMEOUT)


def _raw_alter(
    server: KafkaServer, name: str, validate_only: bool = False, **ops: str | None
) -> tuple:
    """IncrementalAlterConfigs of a broker resource confluent-kafka does not take (the
    cluster-wide level "", a name that is no broker id): (error code, message)."""
    m = messages(44, 0, False)
    configs = tuple(
        m.AlterableConfig(name=k.replace("_", "."), config_operation=int(v is None), value=v)
        for k, v in ops.items()
    )
    resource = m.AlterConfigsResource(resource_type=4, resource_name=name, configs=configs)
    with RawClient(server.bootstrap) as raw:
        answer = raw.request(44, 0, resources=(resource,), validate_only=validate_only)
    (result,) = answer.responses
    return result.error_code, result.error_message


def _raw_describe(server: KafkaServer, name: str) -> dict[str, object]:
    """DescribeConfigs v3 of a broker resource with synonyms (confluent-kafka keeps one
    synonym per name, and every level of a dynamic config has the same name)."""
    m = messages(32, 3, False)
    resource = m.DescribeConfigsResource(
        resource_type=4, resource_name=name, configuration_keys=None
    )
    with RawClient(server.bootstrap) as raw:
        answer = raw.request(
            32, 3, resources=(resource,), include_synonyms=True, include_documentation=False
        )
    (result,) = answer.results
    assert result.error_code == ErrorCode.none
    return {c.name: c for c in result.configs}


def _describe(admin: AdminClient, name: str) -> dict[str, ConfigEntry]:
    resource = ConfigResource("broker", name)
    return admin.describe_configs([resource])[resource].result(TIMEOUT)


def _refused(admin: AdminClient, name: str, configs: dict[str, str]) -> KafkaError:
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in configs.items()
    ]
    resource = ConfigResource("broker", name, incremental_configs=entries)
    with pytest.raises(KafkaException) as info:
        admin.incremental_alter_configs([resource])[resource].result(TIMEOUT)
    return info.value.args[0]


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated")  # the API under test
def test_dynamic_broker_configs_with_confluent_kafka(
    server: KafkaServer, metadata_url: str | None
) -> None:
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    # the broker's id: 0 alone on SQLite, one derived from the agent's id on PostgreSQL
    (node,) = (str(b) for b in admin.list_topics(timeout=TIMEOUT).brokers)
    before = _describe(admin, node)
    assert before[RELOGIN].value == "60000" and before[RELOGIN].source == DEFAULT
    assert before["num.partitions"].source == STATIC and before["num.partitions"].is_read_only
    assert not before[RELOGIN].is_read_only
    assert set(DYNAMIC_BROKER_CONFIGS) <= set(before)

    _incremental(admin, node, **{RELOGIN: "58000"})
    assert _raw_alter(server, "", num_io_threads="16", background_threads="12") == (0, None)
    assert _raw_alter(server, "", validate_only=True, max_connections="9")[0] == 0
    _incremental(admin, node, num_io_threads="4")
    described = _describe(admin, node)
    assert (described[RELOGIN].value, described[RELOGIN].source) == ("58000", DYNAMIC_BROKER)
    assert (described["num.io.threads"].value, described["num.io.threads"].source) == (
        "4",
        DYNAMIC_BROKER,
    )
    io = _raw_describe(server, node)["num.io.threads"]
    assert [(s.name, s.value, s.source) for s in io.synonyms] == [
        ("num.io.threads", "4", DYNAMIC_BROKER),
        ("num.io.threads", "16", DYNAMIC_DEFAULT),
        ("num.io.threads", "8", DEFAULT),
    ]
    threads = described["background.threads"]
    assert (threads.value, threads.source) == ("12", DYNAMIC_DEFAULT)
    # the cluster-wide level lists what it sets, nothing else (validate_only stored nothing)
    cluster = _raw_describe(server, "")
    assert {k: (c.value, c.config_source) for k, c in cluster.items()} == {
        "background.threads": ("12", DYNAMIC_DEFAULT),
        "num.io.threads": ("16", DYNAMIC_DEFAULT),
    }

    _incremental(admin, node, num_io_threads=None)  # DELETE: back to the cluster-wide value
    assert _describe(admin, node)["num.io.threads"].value == "16"

    # Kafka's error codes: read-only, per-broker only, ssl without a listener prefix and a bad
    # value are INVALID_REQUEST; a name Kafka does not define is INVALID_CONFIG.
    read_only = _refused(admin, node, {"num.partitions": "8"})
    assert read_only.code() == KafkaError.INVALID_REQUEST
    assert "Cannot update these configs dynamically: num.partitions" in read_only.str()
    code, message = _raw_alter(server, "", **{RELOGIN: "1000"})
    assert code == ErrorCode.invalid_request and "broker id must be specified" in message
    ssl = _refused(admin, node, {"ssl.keystore.location": "/tmp/ks"})
    assert ssl.code() == KafkaError.INVALID_REQUEST and "listener prefix" in ssl.str()
    bad = _refused(admin, node, {"num.io.threads": "many"})
    assert bad.code() == KafkaError.INVALID_REQUEST and "not an integer" in bad.str()
    unknown = _refused(admin, node, {"num.io.thread": "4"})
    assert unknown.code() == KafkaError.INVALID_CONFIG and "num.io.thread" in unknown.str()
    assert _raw_alter(server, "zero", num_io_threads="4")[0] == ErrorCode.invalid_request
    # nothing refused was stored
    assert _describe(admin, node)["num.io.threads"].value == "16"

    # AlterConfigs (not incremental) replaces the broker's whole dynamic config
    whole = ConfigResource("broker", node, set_config={"num.network.threads": "6"})
    admin.alter_configs([whole])[whole].result(TIMEOUT)
    described = _describe(admin, node)
    assert described["num.network.threads"].value == "6"
    assert (described[RELOGIN].value, described[RELOGIN].source) == ("60000", DEFAULT)

    # kept across a restart, in the metadata store. A restarted agent on a shared store
    # (PostgreSQL) is a new broker with a new id: only the cluster-wide level applies to it.
    server.stop()
    server.start()
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    (after,) = (str(b) for b in admin.list_topics(timeout=TIMEOUT).brokers)
    described = _describe(admin, after)
    assert described["background.threads"].value == "12"
    network = (described["num.network.threads"].value, described["num.network.threads"].source)
    if metadata_url is None:
        assert after == node == "0" and network == ("6", DYNAMIC_BROKER)
    else:
        assert after != node and network == ("3", DEFAULT)


def test_dynamic_broker_configs_with_kafka_python(tmp_path: Path) -> None:
    server = KafkaServer(tmp_path / "data").start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
        try:
            admin.alter_configs(
                [KPConfigResource(ConfigResourceType.BROKER, "0", {"max.connections": "500"})]
            )
            answer = admin.describe_configs(
                [KPConfigResource(ConfigResourceType.BROKER, "0", ["max.connections"])]
            )
            entry = answer["broker"]["0"]["max.connections"]
            assert (entry["value"], entry["config_source"], entry["config_type"]) == (
                "500",
                "DYNAMIC_BROKER_CONFIG",
                "INT",
            )
        finally:
            admin.close()
    finally:
        server.stop()
