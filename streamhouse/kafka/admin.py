"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs.

The replication factor is accepted and ignored: durability comes from the object store, not
from replicas. Topic configs must be names Kafka knows; those the log acts on today are
``max.message.bytes`` (enforced per topic on produce). DescribeConfigs reports every default
with its source, as Kafka does, so tools that read e.g. ``retention.ms`` or
``cleanup.policy`` find them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from streamhouse.errors import LogError, StreamHouseError, TopicExistsError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import ErrorCode, RequestHeader, error_code_for, make, messages
from streamhouse.log.metadata import validate_topic_name

if TYPE_CHECKING:
    from streamhouse.config import Settings
    from streamhouse.kafka.broker import Broker

__all__ = ["HANDLERS", "KNOWN_TOPIC_CONFIGS", "MAX_PARTITIONS", "topic_config_defaults"]

log = logging.getLogger(__name__)

MAX_PARTITIONS = 10_000
"""The most partitions a topic may have through the Kafka API (a bound on what one request
can make the metadata store do)."""
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
SOURCE_DYNAMIC_TOPIC = 1
SOURCE_STATIC_BROKER = 4
SOURCE_DEFAULT = 5
TYPE_BOOLEAN, TYPE_STRING, TYPE_INT, TYPE_LONG, TYPE_DOUBLE, TYPE_LIST = 1, 2, 3, 5, 6, 7

KNOWN_TOPIC_CONFIGS: dict[str, int] = {
    "cleanup.policy": TYPE_LIST,
    "compression.type": TYPE_STRING,
    "delete.retention.ms": TYPE_LONG,
    "file.delete.delay.ms": TYPE_LONG,
    "flush.messages": TYPE_LONG,
    "flush.ms": TYPE_LONG,
    "follower.replication.throttled.replicas": TYPE_LIST,
    "index.interval.bytes": TYPE_INT,
    "leader.replication.throttled.replicas": TYPE_LIST,
    "local.retention.bytes": TYPE_LONG,
    "local.retention.ms": TYPE_LONG,
    "max.compaction.lag.ms": TYPE_LONG,
    "max.message.bytes": TYPE_INT,
    "message.downconversion.enable": TYPE_BOOLEAN,
    "message.format.version": TYPE_STRING,
    "message.timestamp.after.max.ms": TYPE_LONG,
    "message.timestamp.before.max.ms": TYPE_LONG,
    "message.timestamp.difference.max.ms": TYPE_LONG,
    "message.timestamp.type": TYPE_STRING,
    "min.cleanable.dirty.ratio": TYPE_DOUBLE,
    "min.compaction.lag.ms": TYPE_LONG,
    "min.insync.replicas": TYPE_INT,
    "preallocate": TYPE_BOOLEAN,
    "remote.storage.enable": TYPE_BOOLEAN,
    "retention.bytes": TYPE_LONG,
    "retention.ms": TYPE_LONG,
    "segment.bytes": TYPE_INT,
    "segment.index.bytes": TYPE_INT,
    "segment.jitter.ms": TYPE_LONG,
    "segment.ms": TYPE_LONG,
    "unclean.leader.election.enable": TYPE_BOOLEAN,
}
"""Every topic config Kafka defines, with its DescribeConfigs type."""


def topic_config_defaults(settings: Settings) -> dict[str, str]:
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
        "max.message.bytes": str(settings.max_message_bytes),
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


def _broker_configs(broker: Broker) -> dict[str, tuple[str, int]]:
    s = broker.settings
    return {
        "broker.id": (str(broker.node_id), TYPE_INT),
        "advertised.listeners": (f"PLAINTEXT://{broker.host}:{broker.port}", TYPE_STRING),
        "auto.create.topics.enable": (str(s.auto_create_topics).lower(), TYPE_BOOLEAN),
        "num.partitions": (str(s.default_partitions), TYPE_INT),
        "default.replication.factor": ("1", TYPE_INT),
        "message.max.bytes": (str(s.max_message_bytes), TYPE_INT),
        "log.retention.ms": ("-1", TYPE_LONG),
        "offsets.topic.replication.factor": ("1", TYPE_INT),
        "delete.topic.enable": ("true", TYPE_BOOLEAN),
    }


def _invalid_config(configs: dict[str, str]) -> str | None:
    for name, value in configs.items():
        if name not in KNOWN_TOPIC_CONFIGS:
            return f"unknown topic config {name!r}"
        if KNOWN_TOPIC_CONFIGS[name] in (TYPE_INT, TYPE_LONG):
            try:
                int(value)
            except ValueError:
                return f"topic config {name}={value!r} is not an integer"
    if "max.message.bytes" in configs and int(configs["max.message.bytes"]) <= 0:
        return "max.message.bytes must be positive"
    return None


async def handle_create_topics(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.CREATE_TOPICS, header.api_version, True)
    results = []
    seen: set[str] = set()
    for topic in request.topics:
        error, message = ErrorCode.none, None
        configs = {c.name: c.value for c in topic.configs if c.value is not None}
        partitions = topic.num_partitions
        if partitions == -1:
            partitions = broker.settings.default_partitions
        if topic.assignments:
            partitions = len(topic.assignments)
        if topic.name in seen:
            error, message = ErrorCode.invalid_request, "topic named twice in one request"
        else:
            seen.add(topic.name)
            try:
                validate_topic_name(topic.name)
                problem = _invalid_config(configs)
                if not 1 <= partitions <= MAX_PARTITIONS:
                    error = ErrorCode.invalid_partitions
                    message = f"partitions must be between 1 and {MAX_PARTITIONS}"
                elif problem is not None:
                    error, message = ErrorCode.invalid_config, problem
                elif broker.log.get_topic(topic.name) is not None:
                    error = ErrorCode.topic_already_exists
                    message = f"topic {topic.name!r} already exists"
                elif not request.validate_only:
                    broker.log.create_topic(topic.name, partitions=partitions, config=configs)
            except TopicExistsError as exc:
                error, message = ErrorCode.topic_already_exists, str(exc)
            except LogError as exc:
                error, message = ErrorCode.invalid_topic_exception, str(exc)
            except StreamHouseError as exc:
                error, message = error_code_for(exc), str(exc)
        results.append(
            make(
                module.CreatableTopicResult,
                name=topic.name,
                error_code=error,
                error_message=message,
            )
        )
    return make(module.CreateTopicsResponse, throttle_time=0, topics=tuple(results))


async def handle_delete_topics(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_TOPICS, header.api_version, True)
    results = []
    for name in request.topic_names:
        error = ErrorCode.none
        try:
            if broker.log.get_topic(name) is None:
                error = ErrorCode.unknown_topic_or_partition
            else:
                broker.log.delete_topic(name)
                broker.producers.forget_topic(name)
        except StreamHouseError as exc:
            error = error_code_for(exc)
        results.append(module.DeletableTopicResult(name=name, error_code=error))
    return make(module.DeleteTopicsResponse, throttle_time=0, responses=tuple(results))


async def handle_create_partitions(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.CREATE_PARTITIONS, header.api_version, True)
    results = []
    for topic in request.topics:
        error, message = ErrorCode.none, None
        info = broker.log.get_topic(topic.name)
        if info is None:
            error = ErrorCode.unknown_topic_or_partition
        elif not info.partitions < topic.count <= MAX_PARTITIONS:
            error = ErrorCode.invalid_partitions
            message = (
                f"topic has {info.partitions} partitions, asked for {topic.count}"
                f" (at most {MAX_PARTITIONS})"
            )
        elif not request.validate_only:
            try:
                broker.log.set_partitions(topic.name, topic.count)
            except StreamHouseError as exc:
                error, message = ErrorCode.invalid_partitions, str(exc)
        results.append(
            make(
                module.CreatePartitionsTopicResult,
                name=topic.name,
                error_code=error,
                error_message=message,
            )
        )
    return make(module.CreatePartitionsResponse, throttle_time=0, results=tuple(results))


def _entry(module: Any, name: str, value: str, source: int, kind: int) -> Any:
    return make(
        module.DescribeConfigsResourceResult,
        name=name,
        value=value,
        read_only=source != SOURCE_DYNAMIC_TOPIC and source != SOURCE_DEFAULT,
        config_source=source,
        is_sensitive=False,
        synonyms=(),
        config_type=kind,
        documentation=None,
    )


async def handle_describe_configs(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DESCRIBE_CONFIGS, header.api_version, True)
    results = []
    for resource in request.resources:
        error, message, entries = ErrorCode.none, None, []
        wanted = resource.configuration_keys
        if resource.resource_type == RESOURCE_TOPIC:
            info = broker.log.get_topic(resource.resource_name)
            if info is None:
                error = ErrorCode.unknown_topic_or_partition
                message = f"unknown topic {resource.resource_name!r}"
            else:
                values = {
                    k: (v, SOURCE_DEFAULT)
                    for k, v in topic_config_defaults(broker.settings).items()
                }
                values.update({k: (v, SOURCE_DYNAMIC_TOPIC) for k, v in info.config.items()})
                for name, (value, source) in sorted(values.items()):
                    if wanted is None or not wanted or name in wanted:
                        kind = KNOWN_TOPIC_CONFIGS.get(name, TYPE_STRING)
                        entries.append(_entry(module, name, value, source, kind))
        elif resource.resource_type == RESOURCE_BROKER:
            for name, (value, kind) in sorted(_broker_configs(broker).items()):
                if wanted is None or not wanted or name in wanted:
                    entries.append(_entry(module, name, value, SOURCE_STATIC_BROKER, kind))
        else:
            error = ErrorCode.invalid_request
            message = f"resource type {resource.resource_type} is not supported"
        results.append(
            make(
                module.DescribeConfigsResult,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                configs=tuple(entries),
            )
        )
    return make(module.DescribeConfigsResponse, throttle_time=0, results=tuple(results))


HANDLERS = {
    ApiKey.CREATE_TOPICS: handle_create_topics,
    ApiKey.DELETE_TOPICS: handle_delete_topics,
    ApiKey.DESCRIBE_CONFIGS: handle_describe_configs,
    ApiKey.CREATE_PARTITIONS: handle_create_partitions,
}
"""API key -> handler."""
