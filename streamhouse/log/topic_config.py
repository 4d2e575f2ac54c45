"""Topic configs: the names Kafka defines, their types and defaults, and what the log checks.

Every way of setting a topic config (``streamhouse topic create/alter --config``, the Python
API, Kafka CreateTopics, AlterConfigs and IncrementalAlterConfigs) goes through
:func:`validate_topic_config`: a name Kafka does not define, a value of the wrong type or out
of range raises :class:`~streamhouse.errors.InvalidConfigError` (Kafka's INVALID_CONFIG).

Those the log acts on: ``max.message.bytes`` and ``message.timestamp.type`` (on produce:
``LogAppendTime`` stamps each batch with the time of its append), ``retention.ms`` and
``retention.bytes`` (the retention pass, :mod:`streamhouse.log.retention`), ``cleanup.policy``
(``compact`` adds key compaction, :mod:`streamhouse.log.key_compaction`, with
``min.compaction.lag.ms`` and ``delete.retention.ms``; ``min.cleanable.dirty.ratio`` and
``max.compaction.lag.ms`` decide when the log cleaner runs, :mod:`streamhouse.log.cleaner`).
On a topic with a retention limit, ``segment.ms`` and ``segment.bytes`` bound the index rows
compaction merges (as do a tenth of ``retention.ms`` and ``retention.bytes``:
:func:`streamhouse.log.compaction.limits`), so retention keeps dropping rows at a fine grain;
``compression.type`` is the codec compaction recompresses to. The others are stored and
reported as given.

>>> validate_topic_config({"retention.ms": "3600000"})
{'retention.ms': '3600000'}
>>> validate_topic_config({"retention.ms": "soon"})
Traceback (most recent call last):
...
streamhouse.errors.InvalidConfigError: topic config retention.ms='soon' is not an integer
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from streamhouse.errors import InvalidConfigError

__all__ = [
    "KNOWN_TOPIC_CONFIGS",
    "INT_RANGE",
    "ConfigType",
    "Retention",
    "check_config_name",
    "topic_config_defaults",
    "validate_topic_config",
]


class ConfigType(IntEnum):
    """A config's type, numbered as in Kafka's DescribeConfigs."""

    BOOLEAN = 1
    STRING = 2
    INT = 3
    SHORT = 4
    LONG = 5
    DOUBLE = 6
    LIST = 7
    CLASS = 8


KNOWN_TOPIC_CONFIGS: dict[str, ConfigType] = {
    "cleanup.policy": ConfigType.LIST,
    "compression.type": ConfigType.STRING,
    "delete.retention.ms": ConfigType.LONG,
    "file.delete.delay.ms": ConfigType.LONG,
    "flush.messages": ConfigType.LONG,
    "flush.ms": ConfigType.LONG,
    "follower.replication.throttled.replicas": ConfigType.LIST,
    "index.interval.bytes": ConfigType.INT,
    "leader.replication.throttled.replicas": ConfigType.LIST,
    "local.retention.bytes": ConfigType.LONG,
    "local.retention.ms": ConfigType.LONG,
    "max.compaction.lag.ms": ConfigType.LONG,
    "max.message.bytes": ConfigType.INT,
    "message.downconversion.enable": ConfigType.BOOLEAN,
    "message.format.version": ConfigType.STRING,
    "message.timestamp.after.max.ms": ConfigType.LONG,
    "message.timestamp.before.max.ms": ConfigType.LONG,
    "message.timestamp.difference.max.ms": ConfigType.LONG,
    "message.timestamp.type": ConfigType.STRING,
    "min.cleanable.dirty.ratio": ConfigType.DOUBLE,
    "min.compaction.lag.ms": ConfigType.LONG,
    "min.insync.replicas": ConfigType.INT,
    "preallocate": ConfigType.BOOLEAN,
    "remote.storage.enable": ConfigType.BOOLEAN,
    "retention.bytes": ConfigType.LONG,
    "retention.ms": ConfigType.LONG,
    "segment.bytes": ConfigType.INT,
    "segment.index.bytes": ConfigType.INT,
    "segment.jitter.ms": ConfigType.LONG,
    "segment.ms": ConfigType.LONG,
    "unclean.leader.election.enable": ConfigType.BOOLEAN,
}
"""Every topic config Kafka defines, with its type."""

_LOWEST: dict[str, int] = {
    "retention.ms": -1,  # -1: no limit
    "retention.bytes": -1,
    "segment.ms": 1,
    "max.message.bytes": 1,
    "delete.retention.ms": 0,
    "file.delete.delay.ms": 0,
}
"""The smallest value the integer configs the log reads may take."""

INT_RANGE = {ConfigType.SHORT: 2**15 - 1, ConfigType.INT: 2**31 - 1, ConfigType.LONG: 2**63 - 1}
"""The largest value of each of Kafka's integer config types (the smallest is ``-max - 1``)."""


def topic_config_defaults(max_message_bytes: int) -> dict[str, str]:
    """The value each topic config has when a topic does not set it.

    Retention is unlimited (-1): the log keeps every record.
    """
    return {
        "cleanup.policy": "delete",
        "compression.type": "producer",
        "delete.retention.ms": "86400000",
        "file.delete.delay.ms": "60000",
        "flush.messages": "9223372036854775807",
        "flush.ms": "9223372036854775807",
        "follower.replication.throttled.replicas": "",
        "index.interval.bytes": "4096",
        "leader.replication.throttled.replicas": "",
        "local.retention.bytes": "-2",
        "local.retention.ms": "-2",
        "max.compaction.lag.ms": "9223372036854775807",
        "max.message.bytes": str(max_message_bytes),
        "message.downconversion.enable": "true",
        "message.format.version": "3.0-IV1",
        "message.timestamp.after.max.ms": "9223372036854775807",
        "message.timestamp.before.max.ms": "9223372036854775807",
        "message.timestamp.difference.max.ms": "9223372036854775807",
        "message.timestamp.type": "CreateTime",
        "min.cleanable.dirty.ratio": "0.5",
        "min.compaction.lag.ms": "0",
        "min.insync.replicas": "1",
        "preallocate": "false",
        "remote.storage.enable": "false",
        "retention.bytes": "-1",
        "retention.ms": "-1",
        "segment.bytes": "1073741824",
        "segment.index.bytes": "10485760",
        "segment.jitter.ms": "0",
        "segment.ms": "604800000",
        "unclean.leader.election.enable": "false",
    }


def _problem(name: str, value: object) -> str | None:
    """Why ``name=value`` is refused, or ``None``."""
    kind = KNOWN_TOPIC_CONFIGS.get(name) if isinstance(name, str) else None
    if kind is None:
        return f"unknown topic config {name!r}"
    if not isinstance(value, str):
        return f"topic config {name} must be a string, got {type(value).__name__}"
    if kind in INT_RANGE:
        try:
            number = int(value)
        except ValueError:
            return f"topic config {name}={value!r} is not an integer"
        lowest = _LOWEST.get(name, -INT_RANGE[kind] - 1)
        if not lowest <= number <= INT_RANGE[kind]:
            return f"topic config {name}={value} is out of range: at least {lowest}"
    elif kind is ConfigType.BOOLEAN and value.lower() not in ("true", "false"):
        return f"topic config {name}={value!r} is not true or false"
    elif name == "message.timestamp.type" and value not in ("CreateTime", "LogAppendTime"):
        return f"message.timestamp.type={value!r}: expected 'CreateTime' or 'LogAppendTime'"
    elif name == "cleanup.policy":
        policies = {p.strip() for p in value.split(",")}
        if not policies or not policies <= {"delete", "compact"}:
            return f"cleanup.policy={value!r}: expected 'delete', 'compact' or both"
    return None


def check_config_name(name: str) -> None:
    """``InvalidConfigError`` unless Kafka defines a topic config ``name``."""
    if name not in KNOWN_TOPIC_CONFIGS:
        raise InvalidConfigError(f"unknown topic config {name!r}")


def validate_topic_config(config: Mapping[str, str] | None) -> dict[str, str]:
    """``config`` as a dict if every entry is valid, else ``InvalidConfigError`` (one line)."""
    result = dict(config or {})
    for name, value in result.items():
        problem = _problem(name, value)
        if problem is not None:
            raise InvalidConfigError(problem)
    return result


@dataclass(frozen=True, slots=True)
class Retention:
    """A topic's retention limits; ``None`` means none.

    >>> Retention.of({"retention.ms": "60000"})
    Retention(ms=60000, bytes=None)
    """

    ms: int | None
    bytes: int | None

    @classmethod
    def of(cls, config: Mapping[str, str]) -> Retention:
        ms, size = int(config.get("retention.ms", -1)), int(config.get("retention.bytes", -1))
        return cls(ms if ms >= 0 else None, size if size >= 0 else None)

    @property
    def limited(self) -> bool:
        return self.ms is not None or self.bytes is not None
