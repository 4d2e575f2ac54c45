"""Topic administration: CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
AlterConfigs, IncrementalAlterConfigs and DeleteRecords.

The replication factor is accepted and ignored: durability comes from the object store, not
from replicas. Topic configs are checked by :mod:`streamhouse.log.topic_config` (unknown or bad
ones get INVALID_CONFIG with the reason); the log acts on ``max.message.bytes``,
``retention.ms``, ``retention.bytes``, ``cleanup.policy`` (``delete``, ``compact``),
``min.compaction.lag.ms``, ``delete.retention.ms``, ``segment.ms``, ``segment.bytes`` and
``compression.type`` (the last five in compaction). DescribeConfigs reports
every default with its source, as Kafka does. AlterConfigs replaces a topic's whole config;
IncrementalAlterConfigs sets or deletes single entries (APPEND and SUBTRACT, for list configs,
are refused: set ``cleanup.policy`` whole, e.g. ``compact,delete``).
DeleteRecords moves log start offsets forward (``-1``: to the high watermark).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from streamhouse.errors import (
    InvalidConfigError,
    LogError,
    StreamHouseError,
    TopicExistsError,
    UnknownTopicError,
)
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.broker_config import (
    BrokerConfigEntry,
    alter_broker_config,
    describe_broker,
)
from streamhouse.kafka.metadata import NO_TOPIC_ID
from streamhouse.kafka.wire import ErrorCode, RequestHeader, error_code_for, make, messages
from streamhouse.log.metadata import validate_topic_name
from streamhouse.log.topic_config import KNOWN_TOPIC_CONFIGS, ConfigType, validate_topic_config
from streamhouse.log.topic_config import topic_config_defaults as config_defaults
from streamhouse.security.acl import CLUSTER_NAME, AclOperation, ResourceType

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
SOURCE_DEFAULT = 5


def topic_config_defaults(settings: Settings) -> dict[str, str]:
    """The value each topic config has when a topic does not set it (retention unlimited)."""
    return config_defaults(settings.max_message_bytes)


def _broker_configs(broker: Broker) -> dict[str, tuple[str, int]]:
    s = broker.settings
    return {
        "broker.id": (str(broker.node_id), ConfigType.INT),
        "advertised.listeners": (
            ",".join(
                f"{lst.protocol}://{lst.advertised_host}:{lst.advertised_port}"
                for lst in broker.listeners
            )
            or f"PLAINTEXT://{broker.host}:{broker.port}",
            ConfigType.STRING,
        ),
        "auto.create.topics.enable": (str(s.auto_create_topics).lower(), ConfigType.BOOLEAN),
        "num.partitions": (str(s.default_partitions), ConfigType.INT),
        "default.replication.factor": ("1", ConfigType.INT),
        "message.max.bytes": (str(s.max_message_bytes), ConfigType.INT),
        "log.retention.ms": ("-1", ConfigType.LONG),
        "log.retention.check.interval.ms": (
            str(int(s.retention_check_interval_s * 1000)),
            ConfigType.LONG,
        ),
        "log.cleaner.backoff.ms": (str(int(s.log_cleaner_backoff_s * 1000)), ConfigType.LONG),
        "offsets.topic.replication.factor": ("1", ConfigType.INT),
        "group.initial.rebalance.delay.ms": (
            f"{s.group_initial_rebalance_delay_ms:g}",
            ConfigType.INT,
        ),
        "delete.topic.enable": ("true", ConfigType.BOOLEAN),
    }


def _topic_denied(
    broker: Broker, header: RequestHeader, operation: AclOperation, name: str
) -> tuple[ErrorCode, str] | None:
    """TOPIC_AUTHORIZATION_FAILED and why, if the connection may not; else None."""
    if broker.access.allowed(header.session, operation, ResourceType.TOPIC, name):
        return None
    return ErrorCode.topic_authorization_failed, f"not authorized to {operation.name} {name!r}"


async def handle_create_topics(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.CREATE_TOPICS, header.api_version, True)
    results = []
    seen: set[str] = set()
    access = broker.access
    on_cluster = access.allowed(
        header.session, AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, audit=False
    )
    for topic in request.topics:
        error, message, created = ErrorCode.none, None, None
        denied = (
            None if on_cluster else _topic_denied(broker, header, AclOperation.CREATE, topic.name)
        )
        configs = {c.name: c.value for c in topic.configs if c.value is not None}
        partitions = topic.num_partitions
        if partitions == -1:
            partitions = broker.settings.default_partitions
        if topic.assignments:
            partitions = len(topic.assignments)
        if denied is not None:
            error, message = denied
        elif topic.name in seen:
            error, message = ErrorCode.invalid_request, "topic named twice in one request"
        else:
            seen.add(topic.name)
            try:
                validate_topic_name(topic.name)
                validate_topic_config(configs)
                if not 1 <= partitions <= MAX_PARTITIONS:
                    error = ErrorCode.invalid_partitions
                    message = f"partitions must be between 1 and {MAX_PARTITIONS}"
                elif broker.log.get_topic(topic.name) is not None:
                    error = ErrorCode.topic_already_exists
                    message = f"topic {topic.name!r} already exists"
                elif not request.validate_only:
                    created = broker.log.create_topic(
                        topic.name, partitions=partitions, config=configs
                    )
            except (TopicExistsError, InvalidConfigError) as exc:
                error, message = error_code_for(exc), str(exc)
            except LogError as exc:
                error, message = ErrorCode.invalid_topic_exception, str(exc)
            except StreamHouseError as exc:
                error, message = error_code_for(exc), str(exc)
        ok = error is ErrorCode.none
        results.append(
            make(
                module.CreatableTopicResult,
                name=topic.name,
                topic_id=uuid.UUID(created.topic_id) if created else NO_TOPIC_ID,  # v7+
                error_code=error,
                error_message=message,
                num_partitions=partitions if ok else -1,  # v5+
                replication_factor=1 if ok else -1,
                configs=_created_configs(module, configs)
                if ok and header.api_version >= 5
                else None,
            )
        )
    return make(module.CreateTopicsResponse, throttle_time=0, topics=tuple(results))


def _created_configs(module: Any, configs: dict[str, str]) -> tuple[Any, ...]:
    """CreateTopics v5+: the configs the topic was created with (the others are defaults)."""
    return tuple(
        module.CreatableTopicConfigs(
            name=name,
            value=value,
            read_only=False,
            config_source=SOURCE_DYNAMIC_TOPIC,
            is_sensitive=False,
        )
        for name, value in sorted(configs.items())
    )


async def handle_delete_topics(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_TOPICS, header.api_version, True)
    results = []
    for name, topic_id in _topics_to_delete(broker, header.api_version, request):
        error = ErrorCode.none
        try:
            if name is None:
                error = ErrorCode.unknown_topic_id
            elif _topic_denied(broker, header, AclOperation.DELETE, name):
                error = ErrorCode.topic_authorization_failed
            elif broker.log.get_topic(name) is None:
                error = ErrorCode.unknown_topic_or_partition
            else:
                broker.log.delete_topic(name)
                broker.producers.forget_topic(name)
        except StreamHouseError as exc:
            error = error_code_for(exc)
        results.append(
            make(module.DeletableTopicResult, name=name, topic_id=topic_id, error_code=error)
        )
    return make(module.DeleteTopicsResponse, throttle_time=0, responses=tuple(results))


def _topics_to_delete(
    broker: Broker, api_version: int, request: Any
) -> list[tuple[str | None, uuid.UUID]]:
    """(name, topic id) of each topic a DeleteTopics request names: by name before v6; from
    v6 (KIP-516) by name or by id, an id no topic has giving no name."""
    if api_version < 6:
        return [(name, NO_TOPIC_ID) for name in request.topic_names]
    by_id = {uuid.UUID(t.topic_id): t.name for t in broker.log.list_topics()}
    named = []
    for topic in request.topics:
        if topic.name is not None and topic.topic_id in (None, NO_TOPIC_ID):  # by name
            info = broker.log.get_topic(topic.name)
            named.append((topic.name, uuid.UUID(info.topic_id) if info else NO_TOPIC_ID))
        else:
            named.append((by_id.get(topic.topic_id), topic.topic_id))
    return named


async def handle_create_partitions(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.CREATE_PARTITIONS, header.api_version, True)
    results = []
    for topic in request.topics:
        error, message = ErrorCode.none, None
        info = broker.log.get_topic(topic.name)
        denied = _topic_denied(broker, header, AclOperation.ALTER, topic.name)
        if denied is not None:
            error, message = denied
        elif info is None:
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


def _broker_entry(module: Any, entry: BrokerConfigEntry, synonyms: bool) -> Any:
    return make(
        module.DescribeConfigsResourceResult,
        name=entry.name,
        value=entry.value,
        read_only=entry.read_only,
        config_source=entry.source,
        is_sensitive=False,
        synonyms=tuple(
            make(module.DescribeConfigsSynonym, name=n, value=v, source=source)
            for n, v, source in entry.synonyms
        )
        if synonyms
        else (),
        config_type=entry.kind,
        documentation=None,
    )


async def handle_describe_configs(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DESCRIBE_CONFIGS, header.api_version, True)
    results = []
    for resource in request.resources:
        error, message, entries = ErrorCode.none, None, []
        wanted = resource.configuration_keys
        denied = _config_denied(broker, header, resource, AclOperation.DESCRIBE_CONFIGS)
        if denied is not None:
            error, message = denied
        elif resource.resource_type == RESOURCE_TOPIC:
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
                        kind = KNOWN_TOPIC_CONFIGS.get(name, ConfigType.STRING)
                        entries.append(_entry(module, name, value, source, kind))
        elif resource.resource_type == RESOURCE_BROKER:
            synonyms = request.include_synonyms  # v1+ (v0 is not offered)
            try:
                described = await asyncio.to_thread(
                    describe_broker,
                    broker.log.metadata,
                    resource.resource_name,
                    broker.node_id,
                    _broker_configs(broker),
                )
            except StreamHouseError as exc:
                error, message, described = error_code_for(exc), str(exc), []
            entries = [
                _broker_entry(module, e, synonyms)
                for e in described
                if wanted is None or not wanted or e.name in wanted
            ]
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


def _config_denied(
    broker: Broker, header: RequestHeader, resource: Any, operation: AclOperation
) -> tuple[ErrorCode, str] | None:
    """The error of a config resource the connection may not describe or alter, or None."""
    if resource.resource_type == RESOURCE_TOPIC:
        return _topic_denied(broker, header, operation, resource.resource_name)
    if broker.access.allowed(header.session, operation, ResourceType.CLUSTER, CLUSTER_NAME):
        return None
    return ErrorCode.cluster_authorization_failed, f"not authorized to {operation.name} brokers"


OP_SET, OP_DELETE = 0, 1
"""IncrementalAlterConfigs operations the log takes (APPEND=2 and SUBTRACT=3 are refused)."""


def _changes(resource: Any, incremental: bool) -> dict[str, str | None]:
    """The entries of one AlterConfigs resource (each a value, ``None`` to remove it) or of an
    IncrementalAlterConfigs one (SET or DELETE)."""
    if not incremental:  # AlterConfigs: the request is the whole new config
        return {c.name: c.value for c in resource.configs if c.value is not None}
    changes: dict[str, str | None] = {}
    for c in resource.configs:
        if c.config_operation not in (OP_SET, OP_DELETE):
            raise InvalidConfigError(
                f"config operation {c.config_operation} on {c.name} is not supported:"
                " only SET (0) and DELETE (1) are"
            )
        changes[c.name] = c.value if c.config_operation == OP_SET else None
    return changes


def _alter(broker: Broker, resource: Any, incremental: bool, validate_only: bool) -> None:
    """Apply one AlterConfigs resource; raises what the client should be told."""
    changes = _changes(resource, incremental)
    if resource.resource_type == RESOURCE_BROKER:
        alter_broker_config(
            broker.log.metadata,
            resource.resource_name,
            changes,
            replace=not incremental,
            validate_only=validate_only,
        )
        return
    if resource.resource_type != RESOURCE_TOPIC:
        raise InvalidConfigError(
            f"resource type {resource.resource_type} cannot be altered: only topics (2) and"
            " brokers (4) can"
        )
    name = resource.resource_name
    if broker.log.get_topic(name) is None:
        raise UnknownTopicError(name)
    values = validate_topic_config({k: v for k, v in changes.items() if v is not None})
    if validate_only:
        return
    if incremental:
        broker.log.alter_topic_config(name, changes)
    else:
        broker.log.set_topic_config(name, values)


def _handle_alter(api_key: ApiKey, incremental: bool) -> Any:
    async def handle(broker: Broker, header: RequestHeader, request: Any) -> Any:
        module = messages(api_key, header.api_version, True)
        results = []
        for resource in request.resources:
            error, message = ErrorCode.none, None
            denied = _config_denied(broker, header, resource, AclOperation.ALTER_CONFIGS)
            try:
                if denied is not None:
                    error, message = denied
                else:
                    await asyncio.to_thread(
                        _alter, broker, resource, incremental, request.validate_only
                    )
            except StreamHouseError as exc:
                error, message = error_code_for(exc), str(exc)
            results.append(
                make(
                    module.AlterConfigsResourceResponse,
                    error_code=error,
                    error_message=message,
                    resource_type=resource.resource_type,
                    resource_name=resource.resource_name,
                )
            )
        return make(
            getattr(
                module, "IncrementalAlterConfigsResponse" if incremental else "AlterConfigsResponse"
            ),
            throttle_time=0,
            responses=tuple(results),
        )

    return handle


handle_alter_configs = _handle_alter(ApiKey.ALTER_CONFIGS, incremental=False)
handle_incremental_alter_configs = _handle_alter(ApiKey.INCREMENTAL_ALTER_CONFIGS, incremental=True)


def _delete_topic_records(broker: Broker, topic: Any) -> list[tuple[int, ErrorCode, int]]:
    """``(partition, error, low watermark)`` of each partition of one DeleteRecords topic."""
    offsets = {p.partition_index: p.offset for p in topic.partitions}
    try:
        starts = broker.log.delete_records(topic.name, offsets)
    except StreamHouseError as exc:
        log.info("DeleteRecords %s: %s", topic.name, exc)
        return [(p, error_code_for(exc), -1) for p in offsets]
    return [(p, ErrorCode.none, starts[p]) for p in offsets]


async def handle_delete_records(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.DELETE_RECORDS, header.api_version, True)
    topics = []
    for topic in request.topics:
        if _topic_denied(broker, header, AclOperation.DELETE, topic.name):
            error = ErrorCode.topic_authorization_failed
            rows = [(p.partition_index, error, -1) for p in topic.partitions]
        else:
            rows = await asyncio.to_thread(_delete_topic_records, broker, topic)
        partitions = tuple(
            make(
                module.DeleteRecordsPartitionResult,
                partition_index=p,
                low_watermark=low,
                error_code=error,
            )
            for p, error, low in rows
        )
        topics.append(make(module.DeleteRecordsTopicResult, name=topic.name, partitions=partitions))
    return make(module.DeleteRecordsResponse, throttle_time=0, topics=tuple(topics))


HANDLERS = {
    ApiKey.CREATE_TOPICS: handle_create_topics,
    ApiKey.DELETE_TOPICS: handle_delete_topics,
    ApiKey.DELETE_RECORDS: handle_delete_records,
    ApiKey.DESCRIBE_CONFIGS: handle_describe_configs,
    ApiKey.ALTER_CONFIGS: handle_alter_configs,
    ApiKey.CREATE_PARTITIONS: handle_create_partitions,
    ApiKey.INCREMENTAL_ALTER_CONFIGS: handle_incremental_alter_configs,
}
"""API key -> handler."""
