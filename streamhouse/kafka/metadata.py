"""Metadata: the live agents as brokers, and the topics with their partitions, whose
leadership is spread over those agents (:mod:`streamhouse.kafka.cluster`).

From v10 each topic carries its id (a UUID, new for every creation: a client sees a topic that
was deleted and created again as a new topic, KIP-516), and v12 requests may name topics by id
alone (``UNKNOWN_TOPIC_ID`` when none has it).

Unknown topics are created with ``settings.default_partitions`` partitions when the broker
allows it (``settings.auto_create_topics``, Kafka's ``auto.create.topics.enable``) and the
request does (``allow_auto_topic_creation``, always true before v4).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import uuid
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kio.serial._introspect import get_field_tag
from kio.serial._serialize import get_field_writer
from kio.serial.writers import (
    write_compact_array_length,
    write_empty_tagged_fields,
    write_legacy_array_length,
)

from streamhouse.errors import LogError, TopicExistsError
from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.cluster import client_zone
from streamhouse.kafka.listeners import seen_through
from streamhouse.kafka.versions import SUPPORTED
from streamhouse.kafka.wire import (
    ErrorCode,
    RequestHeader,
    make,
    messages,
    register_body_writer,
)
from streamhouse.log.metadata import validate_topic_name
from streamhouse.security.acl import CLUSTER_NAME, AclOperation, ResourceType

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker
    from streamhouse.log import TopicInfo

__all__ = ["HANDLERS", "NO_TOPIC_ID", "handle_metadata", "topic_for_client", "topic_uuid"]

log = logging.getLogger(__name__)

DESCRIBE, TOPIC = AclOperation.DESCRIBE, ResourceType.TOPIC
NO_TOPIC_ID = uuid.UUID(int=0)
"""Kafka's zero UUID: no topic id (a topic named by name, or an error)."""


def topic_uuid(info: TopicInfo) -> uuid.UUID:
    """The topic's id as the wire carries it."""
    return uuid.UUID(info.topic_id)


def _topic_by_id(broker: Broker, topic_id: uuid.UUID) -> TopicInfo | None:
    wanted = str(topic_id)
    return next((t for t in broker.log.list_topics() if t.topic_id == wanted), None)


def _may_create(broker: Broker, header: RequestHeader, name: str) -> bool:
    """CREATE on the cluster or on the topic (Kafka's rule for creating a topic)."""
    access, session = broker.access, header.session
    return access.allowed(
        session, AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, audit=False
    ) or access.allowed(session, AclOperation.CREATE, TOPIC, name)


def topic_for_client(broker: Broker, name: str, auto_create: bool) -> TopicInfo | ErrorCode:
    """The topic, created first if allowed; else the error code the client should see."""
    info = broker.log.get_topic(name)
    if info is not None:
        return info
    try:
        validate_topic_name(name)
    except LogError:
        return ErrorCode.invalid_topic_exception
    if not (auto_create and broker.settings.auto_create_topics):
        return ErrorCode.unknown_topic_or_partition
    try:
        return broker.log.create_topic(name, partitions=broker.settings.default_partitions)
    except TopicExistsError:
        info = broker.log.get_topic(name)
        return info if info is not None else ErrorCode.unknown_topic_or_partition
    except LogError as exc:
        log.warning("auto-creating topic %r failed: %s", name, exc)
        return ErrorCode.invalid_topic_exception


def leader_start(topic: str, nodes: int) -> int:
    """Index (in node id order) of the agent told to lead partition 0 of ``topic``; partition
    ``p`` goes to the one ``p`` places after it. The same in every process.

    >>> leader_start("orders", 1), leader_start("orders", 3) == leader_start("orders", 3)
    (0, True)
    """
    return zlib.crc32(topic.encode()) % nodes


class _Partitions(tuple):  # noqa: SLOT001 - carries its wire bytes
    """A topic's partition entries, with the bytes kio writes for them (the array, length
    included): a Metadata answer copies them instead of encoding 10,000 entries anew."""

    wire: bytes


@functools.lru_cache(maxsize=256)
def _partitions(module: Any, count: int, node_ids: tuple[int, ...], start: int) -> _Partitions:
    """The partition entries of a topic of ``count`` partitions, partition ``p`` led by
    ``node_ids[(start + p) % len(node_ids)]``: the same for every request with those agents,
    so built and encoded once (10,000 of them take tens of milliseconds)."""
    entries = []
    for index in range(count):
        node_id = node_ids[(start + index) % len(node_ids)]
        entries.append(
            make(
                module.MetadataResponsePartition,
                error_code=ErrorCode.none,
                partition_index=index,
                leader_id=node_id,
                leader_epoch=-1,
                replica_nodes=(node_id,),
                isr_nodes=(node_id,),
                offline_replicas=(),
            )
        )
    partitions = _Partitions(entries)
    buffer = io.BytesIO()
    _field_writers(module.MetadataResponseTopic)["partitions"](buffer, partitions)
    partitions.wire = buffer.getvalue()
    return partitions


@functools.cache
def _field_writers(cls: type) -> dict[str, Callable[[Any, Any], None]]:
    """kio's writer of each field of ``cls``, in wire order (no tagged fields in Metadata)."""
    assert not any(get_field_tag(f) is not None for f in dataclasses.fields(cls)), cls
    return {
        f.name: get_field_writer(
            f, flexible=cls.__flexible__, is_request_header=False, is_tag=False
        )
        for f in dataclasses.fields(cls)
    }


def _writer(module: Any) -> Callable[[Any, Any], None]:
    """The Metadata response writer of one version: kio's, but each topic's partition array
    is copied from :class:`_Partitions` (``test_kafka_codec`` compares the bytes with kio's)."""
    response_fields = _field_writers(module.MetadataResponse)
    topic_fields = _field_writers(module.MetadataResponseTopic)
    flexible = module.MetadataResponse.__flexible__
    array_length = write_compact_array_length if flexible else write_legacy_array_length

    def write_topic(buffer: Any, topic: Any) -> None:
        for name, write in topic_fields.items():
            value = getattr(topic, name)
            if name == "partitions" and isinstance(value, _Partitions):
                buffer.write(value.wire)
            else:
                write(buffer, value)
        if flexible:
            write_empty_tagged_fields(buffer)

    def write_response(buffer: Any, response: Any) -> None:
        for name, write in response_fields.items():
            if name != "topics":
                write(buffer, getattr(response, name))
                continue
            array_length(buffer, len(response.topics))
            for topic in response.topics:
                write_topic(buffer, topic)
        if flexible:
            write_empty_tagged_fields(buffer)

    return write_response


for _version in range(SUPPORTED[ApiKey.METADATA][0], SUPPORTED[ApiKey.METADATA][1] + 1):
    _module = messages(ApiKey.METADATA, _version, True)
    register_body_writer(_module.MetadataResponse, _writer(_module))


async def handle_metadata(broker: Broker, header: RequestHeader, request: Any) -> Any:
    module = messages(ApiKey.METADATA, header.api_version, True)
    access, session = broker.access, header.session
    if request.topics is None or (header.api_version == 0 and not request.topics):
        found: list[tuple[str | None, TopicInfo | ErrorCode]] = [
            (t.name, t)
            for t in broker.log.list_topics()
            if access.allowed(session, DESCRIBE, TOPIC, t.name, audit=False)
        ]
    else:
        auto = getattr(request, "allow_auto_topic_creation", True)
        found = []
        for t in request.topics:
            topic_id = getattr(t, "topic_id", NO_TOPIC_ID)
            if t.name is None or (not t.name and topic_id != NO_TOPIC_ID):  # v12: by id alone
                info = _topic_by_id(broker, topic_id)
                if info is not None and not access.allowed(session, DESCRIBE, TOPIC, info.name):
                    info = None
                unnamed = None if header.api_version >= 12 else ""
                found.append((info.name, info) if info else (unnamed, ErrorCode.unknown_topic_id))
            elif not access.allowed(session, DESCRIBE, TOPIC, t.name):
                found.append((t.name, ErrorCode.topic_authorization_failed))
            else:
                may_create = auto and _may_create(broker, header, t.name)
                found.append((t.name, topic_for_client(broker, t.name, may_create)))
    nodes = broker.cluster.nodes(client_zone(header.client_id))
    nodes = seen_through(header.session, broker.node_id, nodes)
    node_ids = tuple(node.node_id for node in nodes)
    topics = []
    for name, info in found:
        if isinstance(info, ErrorCode):
            topics.append(
                make(
                    module.MetadataResponseTopic,
                    error_code=info,
                    name=name,
                    topic_id=NO_TOPIC_ID,
                    partitions=(),
                )
            )
            continue
        start = leader_start(name, len(node_ids))
        partitions = _partitions(module, info.partitions, node_ids, start)
        topics.append(
            make(
                module.MetadataResponseTopic,
                error_code=ErrorCode.none,
                name=name,
                topic_id=topic_uuid(info),
                is_internal=False,
                partitions=partitions,
            )
        )
    return make(
        module.MetadataResponse,
        throttle_time=0,
        brokers=tuple(
            make(
                module.MetadataResponseBroker,
                node_id=node.node_id,
                host=node.host,
                port=node.port,
                rack=node.zone or None,
            )
            for node in nodes
        ),
        cluster_id=broker.cluster_id,
        controller_id=broker.node_id if broker.node_id in node_ids else node_ids[0],
        topics=tuple(topics),
    )


HANDLERS = {ApiKey.METADATA: handle_metadata}
"""API key -> handler."""
