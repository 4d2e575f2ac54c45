"""Broker configs as Kafka keeps them: static ones, which ``serve`` started with, and dynamic
ones, set with AlterConfigs or IncrementalAlterConfigs of a BROKER resource and kept in the
metadata store (``broker_configs``), for one broker id or, under the resource name ``""``, as the
cluster-wide default of every broker.

DescribeConfigs of a broker lists both. A dynamic config takes its value from the first level
that sets it: the broker's own (source DYNAMIC_BROKER_CONFIG), the cluster-wide default
(DYNAMIC_DEFAULT_BROKER_CONFIG), else Kafka's default (DEFAULT_CONFIG); with
``include_synonyms`` each level that has a value is listed, in that order. Describing ``""``
lists the cluster-wide defaults only, as Kafka does.

Which names may be altered follows Kafka's broker (``DynamicBrokerConfig``):

- a config that cannot change while the broker runs (``broker.id``, ``num.partitions`` ...)
  gets INVALID_REQUEST, "Cannot update these configs dynamically"; so do the dynamic configs of
  Kafka whose value ``serve`` acts on, as it reads them at start only (``message.max.bytes``,
  ``log.retention.ms``, ``advertised.listeners``, the topic defaults ...);
- a listener or SASL config at the cluster-wide level gets INVALID_REQUEST ("broker id must be
  specified"), an ``ssl.*`` config without a listener prefix the same, and so does a value of
  the wrong type (Kafka answers INVALID_REQUEST for these, KAFKA-13609);
- a name Kafka's broker does not define gets INVALID_CONFIG. (Kafka stores unknown names, for
  the plugins it may load; ``serve`` loads none, so a misspelt name is refused instead.)

The dynamic configs stored are those ``serve`` has no use for (Kerberos, thread pools,
connection limits, the cleaner's buffers): they are kept and described as a Kafka broker
describes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamhouse.errors import InvalidBrokerConfigError, InvalidConfigError
from streamhouse.log.topic_config import INT_RANGE, ConfigType

if TYPE_CHECKING:
    from streamhouse.log.metadata import Metadata

__all__ = [
    "DYNAMIC_BROKER_CONFIGS",
    "READ_ONLY_BROKER_CONFIGS",
    "BrokerConfigEntry",
    "ConfigSource",
    "alter_broker_config",
    "describe_broker",
]

CLUSTER_DEFAULT = ""
"""The resource name of the cluster-wide default of every broker's dynamic configs."""


class ConfigSource:
    """Kafka's DescribeConfigs config sources."""

    DYNAMIC_BROKER = 2
    DYNAMIC_DEFAULT_BROKER = 3
    STATIC_BROKER = 4
    DEFAULT = 5


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    kind: ConfigType
    default: str | None
    per_broker: bool = False
    """Only for one broker id, never cluster-wide (Kafka's listener and SASL configs)."""


_T = ConfigType
DYNAMIC_BROKER_CONFIGS: dict[str, DynamicConfig] = {
    # Listener and SASL configs (Kafka's DynamicListenerConfig): per broker.
    "principal.builder.class": DynamicConfig(
        _T.CLASS,
        "org.apache.kafka.common.security.authenticator.DefaultKafkaPrincipalBuilder",
        True,
    ),
    "sasl.enabled.mechanisms": DynamicConfig(_T.LIST, "GSSAPI", True),
    "sasl.kerberos.kinit.cmd": DynamicConfig(_T.STRING, "/usr/bin/kinit", True),
    "sasl.kerberos.min.time.before.relogin": DynamicConfig(_T.LONG, "60000", True),
    "sasl.kerberos.principal.to.local.rules": DynamicConfig(_T.LIST, "DEFAULT", True),
    "sasl.kerberos.service.name": DynamicConfig(_T.STRING, None, True),
    "sasl.kerberos.ticket.renew.jitter": DynamicConfig(_T.DOUBLE, "0.05", True),
    "sasl.kerberos.ticket.renew.window.factor": DynamicConfig(_T.DOUBLE, "0.8", True),
    "sasl.login.refresh.buffer.seconds": DynamicConfig(_T.SHORT, "300", True),
    "sasl.login.refresh.min.period.seconds": DynamicConfig(_T.SHORT, "60", True),
    "sasl.login.refresh.window.factor": DynamicConfig(_T.DOUBLE, "0.8", True),
    "sasl.login.refresh.window.jitter": DynamicConfig(_T.DOUBLE, "0.05", True),
    # Thread pools, connection limits, the cleaner's buffers, metrics: per broker or
    # cluster-wide.
    "background.threads": DynamicConfig(_T.INT, "10"),
    "log.cleaner.dedupe.buffer.size": DynamicConfig(_T.LONG, "134217728"),
    "log.cleaner.io.buffer.load.factor": DynamicConfig(_T.DOUBLE, "0.9"),
    "log.cleaner.io.buffer.size": DynamicConfig(_T.INT, "524288"),
    "log.cleaner.io.max.bytes.per.second": DynamicConfig(_T.DOUBLE, "1.7976931348623157E308"),
    "log.cleaner.threads": DynamicConfig(_T.INT, "1"),
    "max.connection.creation.rate": DynamicConfig(_T.INT, "2147483647"),
    "max.connections": DynamicConfig(_T.INT, "2147483647"),
    "max.connections.per.ip": DynamicConfig(_T.INT, "2147483647"),
    "max.connections.per.ip.overrides": DynamicConfig(_T.STRING, ""),
    "metric.reporters": DynamicConfig(_T.LIST, ""),
    "num.io.threads": DynamicConfig(_T.INT, "8"),
    "num.network.threads": DynamicConfig(_T.INT, "3"),
    "num.recovery.threads.per.data.dir": DynamicConfig(_T.INT, "2"),
    "num.replica.fetchers": DynamicConfig(_T.INT, "1"),
    "producer.id.expiration.ms": DynamicConfig(_T.INT, "86400000"),
}
"""The dynamic broker configs ``serve`` stores and describes, with Kafka's types and
defaults."""

READ_ONLY_BROKER_CONFIGS = frozenset(
    {
        # read-only in Kafka
        "auto.create.topics.enable", "broker.id", "broker.rack", "controller.quorum.voters",
        "default.replication.factor", "delete.topic.enable", "group.initial.rebalance.delay.ms",
        "inter.broker.listener.name", "log.dir", "log.dirs", "log.retention.check.interval.ms",
        "node.id", "num.partitions", "offsets.topic.replication.factor", "process.roles",
        "transaction.state.log.replication.factor", "zookeeper.connect",
        # dynamic in Kafka; serve acts on them and reads them at start only
        "advertised.listeners", "compression.type", "listeners", "log.cleaner.backoff.ms",
        "log.cleanup.policy", "log.message.timestamp.type", "log.retention.bytes",
        "log.retention.hours", "log.retention.minutes", "log.retention.ms", "log.roll.hours",
        "log.roll.ms", "log.segment.bytes", "message.max.bytes", "min.insync.replicas",
        "unclean.leader.election.enable",
    }
)  # fmt: skip
"""Broker configs Kafka defines that cannot be altered here (INVALID_REQUEST)."""


@dataclass(frozen=True, slots=True)
class BrokerConfigEntry:
    """One config of a DescribeConfigs answer: its value and source, and each level that sets
    it (name, value, source), first the one that wins."""

    name: str
    value: str | None
    source: int
    kind: ConfigType
    read_only: bool
    synonyms: tuple[tuple[str, str | None, int], ...]


def broker_of(resource_name: str) -> str:
    """The stored name of a BROKER resource: ``""`` or a broker id in decimal; else
    ``InvalidBrokerConfigError``."""
    if resource_name == CLUSTER_DEFAULT or (resource_name.isdigit() and resource_name.isascii()):
        return resource_name if resource_name == CLUSTER_DEFAULT else str(int(resource_name))
    raise InvalidBrokerConfigError(
        f"unable to parse broker name {resource_name!r}: a broker id, or '' for the"
        " cluster-wide default"
    )


def _problem(name: str, value: str, kind: ConfigType) -> str | None:
    if kind in INT_RANGE:
        try:
            number = int(value)
        except ValueError:
            return f"{name}={value!r} is not an integer"
        if not -INT_RANGE[kind] - 1 <= number <= INT_RANGE[kind]:
            return f"{name}={value} is out of range"
    elif kind is ConfigType.DOUBLE:
        try:
            float(value)
        except ValueError:
            return f"{name}={value!r} is not a number"
    elif kind is ConfigType.BOOLEAN and value.lower() not in ("true", "false"):
        return f"{name}={value!r} is not true or false"
    return None


def check_broker_changes(broker: str, changes: Mapping[str, str | None]) -> None:
    """``InvalidConfigError`` for a name Kafka's broker does not define;
    ``InvalidBrokerConfigError`` for one that cannot be altered (at this level) or a bad
    value, with Kafka's wording."""
    unknown = sorted(
        n
        for n in changes
        if n not in DYNAMIC_BROKER_CONFIGS
        and n not in READ_ONLY_BROKER_CONFIGS
        and not n.startswith("ssl.")
    )
    if unknown:
        raise InvalidConfigError(f"unknown broker config(s): {', '.join(unknown)}")
    for names, message in (
        (
            [n for n in changes if n in READ_ONLY_BROKER_CONFIGS],
            "Cannot update these configs dynamically",
        ),
        (
            [n for n in changes if n.startswith("ssl.")],
            "These security configs can be dynamically updated only per-listener using the"
            " listener prefix",
        ),
        (
            [
                n
                for n in changes
                if n in DYNAMIC_BROKER_CONFIGS and DYNAMIC_BROKER_CONFIGS[n].per_broker
            ]
            if broker == CLUSTER_DEFAULT
            else [],
            "Cannot update these configs at default cluster level, broker id must be specified",
        ),
    ):
        if names:
            raise InvalidBrokerConfigError(f"{message}: {', '.join(sorted(names))}")
    for name, value in changes.items():
        problem = (
            None if value is None else _problem(name, value, DYNAMIC_BROKER_CONFIGS[name].kind)
        )
        if problem is not None:
            raise InvalidBrokerConfigError(f"invalid value for broker config {problem}")


def alter_broker_config(
    metadata: Metadata,
    resource_name: str,
    changes: Mapping[str, str | None],
    *,
    replace: bool,
    validate_only: bool,
) -> None:
    """Check and (unless ``validate_only``) store changes of one BROKER resource: set (a value)
    or remove (``None``) each named config; ``replace`` (AlterConfigs) first removes the
    others."""
    broker = broker_of(resource_name)
    check_broker_changes(broker, changes)
    if not validate_only:
        metadata.alter_broker_config(broker, changes, replace=replace)


def describe_broker(
    metadata: Metadata,
    resource_name: str,
    node_id: int,
    static: Mapping[str, tuple[str, ConfigType]],
) -> list[BrokerConfigEntry]:
    """The configs of one BROKER resource, by name: for ``""`` the cluster-wide defaults
    stored; for ``node_id`` its ``static`` configs and every dynamic one;
    ``InvalidBrokerConfigError`` for another broker (its own answers for it)."""
    broker = broker_of(resource_name)
    defaults = metadata.broker_config(CLUSTER_DEFAULT)
    if broker == CLUSTER_DEFAULT:
        return [
            _entry(name, [(value, ConfigSource.DYNAMIC_DEFAULT_BROKER)])
            for name, value in sorted(defaults.items())
        ]
    if broker != str(node_id):
        raise InvalidBrokerConfigError(
            f"unexpected broker id, expected {node_id} or empty string, but received"
            f" {resource_name}"
        )
    own = metadata.broker_config(broker)
    entries = [
        BrokerConfigEntry(
            name, value, ConfigSource.STATIC_BROKER, kind, True,
            ((name, value, ConfigSource.STATIC_BROKER),),
        )
        for name, (value, kind) in static.items()
        if name not in DYNAMIC_BROKER_CONFIGS
    ]  # fmt: skip
    for name, config in DYNAMIC_BROKER_CONFIGS.items():
        levels = [
            (value, source)
            for value, source in (
                (own.get(name), ConfigSource.DYNAMIC_BROKER),
                (defaults.get(name), ConfigSource.DYNAMIC_DEFAULT_BROKER),
            )
            if value is not None
        ]
        entries.append(_entry(name, [*levels, (config.default, ConfigSource.DEFAULT)]))
    return sorted(entries, key=lambda e: e.name)


def _entry(name: str, levels: Iterable[tuple[str | None, int]]) -> BrokerConfigEntry:
    """A dynamic config's entry from the levels that set it, the winning one first."""
    synonyms = tuple((name, value, source) for value, source in levels)
    kind = (
        DYNAMIC_BROKER_CONFIGS[name].kind if name in DYNAMIC_BROKER_CONFIGS else ConfigType.STRING
    )
    return BrokerConfigEntry(name, synonyms[0][1], synonyms[0][2], kind, False, synonyms)
