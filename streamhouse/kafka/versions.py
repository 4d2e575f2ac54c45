"""ApiVersions: which APIs, at which versions, this broker speaks.

The ranges are non-flexible wherever the four target clients allow it (kafka-python 3,
librdkafka via confluent-kafka and kcat, aiokafka): each negotiates the highest version both
sides know, and all of them speak these. The group admin APIs go up to what Kafka 3.x
advertises (ListGroups v4 for group states, DescribeGroups v5, DeleteGroups v2, OffsetDelete),
Metadata to v12, Fetch to v13, CreateTopics to v7 and DeleteTopics to v6 for topic ids: flexible versions among them, as clients ask for those
features by version. The transaction APIs stop before their first flexible version, except
DescribeTransactions and ListTransactions, flexible from v0. Lower bounds are where ``kio`` starts (Produce v3
is the first with record format v2, which is the only format the log stores).

A request for a newer ApiVersions than we know (kafka-python 3 opens with v4) gets the v0
body with ``UNSUPPORTED_VERSION`` and the full list, so the client retries at our maximum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamhouse.kafka.api_keys import ApiKey
from streamhouse.kafka.wire import ErrorCode, RequestHeader, make, messages

if TYPE_CHECKING:
    from streamhouse.kafka.broker import Broker

__all__ = ["SUPPORTED", "handle_api_versions", "unsupported_api_versions"]

SUPPORTED: dict[ApiKey, tuple[int, int]] = {
    ApiKey.PRODUCE: (3, 8),  # Produce (v9+ flexible)
    ApiKey.FETCH: (4, 13),  # Fetch (v12+ flexible; v13+ topic ids, KIP-516)
    ApiKey.LIST_OFFSETS: (1, 5),  # ListOffsets (v6+ flexible)
    ApiKey.METADATA: (0, 12),  # Metadata (v9+ flexible; v10+ topic ids, KIP-516)
    ApiKey.OFFSET_COMMIT: (2, 7),  # OffsetCommit (v8+ flexible)
    ApiKey.OFFSET_FETCH: (1, 7),  # OffsetFetch (v6+ flexible; v7 require_stable, KIP-447)
    ApiKey.FIND_COORDINATOR: (0, 2),  # FindCoordinator (v3+ flexible)
    ApiKey.JOIN_GROUP: (0, 5),  # JoinGroup (v6+ flexible)
    ApiKey.HEARTBEAT: (0, 3),  # Heartbeat (v4+ flexible)
    ApiKey.LEAVE_GROUP: (0, 3),  # LeaveGroup (v4+ flexible)
    ApiKey.SYNC_GROUP: (0, 3),  # SyncGroup (v4+ flexible)
    ApiKey.DESCRIBE_GROUPS: (0, 5),  # DescribeGroups (v5 flexible; v3+ authorized operations)
    ApiKey.LIST_GROUPS: (0, 4),  # ListGroups (v3+ flexible; v4 group states, KIP-518)
    ApiKey.SASL_HANDSHAKE: (1, 1),  # SaslHandshake (v0 sends raw tokens: not served)
    ApiKey.API_VERSIONS: (0, 3),  # ApiVersions (v3 flexible; its response header is always v0)
    ApiKey.CREATE_TOPICS: (2, 7),  # CreateTopics (v5+ flexible; v7 returns topic ids)
    ApiKey.DELETE_TOPICS: (1, 6),  # DeleteTopics (v4+ flexible; v6 deletes by topic id)
    ApiKey.DELETE_RECORDS: (0, 1),  # DeleteRecords (v2+ flexible)
    ApiKey.INIT_PRODUCER_ID: (0, 4),  # InitProducerId (v2+ flexible; v3 epoch bump, KIP-360)
    ApiKey.ADD_PARTITIONS_TO_TXN: (0, 2),  # AddPartitionsToTxn (v3+ flexible)
    ApiKey.ADD_OFFSETS_TO_TXN: (0, 2),  # AddOffsetsToTxn (v3+ flexible)
    ApiKey.END_TXN: (0, 2),  # EndTxn (v3+ flexible)
    ApiKey.TXN_OFFSET_COMMIT: (0, 2),  # TxnOffsetCommit (v3+ flexible)
    ApiKey.DESCRIBE_ACLS: (1, 1),  # DescribeAcls (v1: pattern types, KIP-290; v2+ flexible)
    ApiKey.CREATE_ACLS: (1, 1),  # CreateAcls (v2+ flexible)
    ApiKey.DELETE_ACLS: (1, 1),  # DeleteAcls (v2+ flexible)
    ApiKey.DESCRIBE_CONFIGS: (1, 3),  # DescribeConfigs (v4+ flexible)
    ApiKey.ALTER_CONFIGS: (0, 1),  # AlterConfigs (v2+ flexible)
    ApiKey.SASL_AUTHENTICATE: (0, 1),  # SaslAuthenticate (v2+ flexible)
    ApiKey.CREATE_PARTITIONS: (0, 1),  # CreatePartitions (v2+ flexible)
    ApiKey.DELETE_GROUPS: (0, 2),  # DeleteGroups (v2 flexible)
    ApiKey.INCREMENTAL_ALTER_CONFIGS: (0, 0),  # IncrementalAlterConfigs (v1+ flexible)
    ApiKey.OFFSET_DELETE: (0, 0),  # OffsetDelete (KIP-496; Kafka 3.x's only version)
    ApiKey.DESCRIBE_TRANSACTIONS: (0, 0),  # DescribeTransactions (KIP-664; flexible)
    ApiKey.LIST_TRANSACTIONS: (0, 0),  # ListTransactions (KIP-664; flexible; v1+ filters)
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: (0, 0),  # KIP-554 (flexible)
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: (0, 0),  # KIP-554 (flexible)
}
"""API key -> (min version, max version), both inclusive."""


def _api_keys(module: Any) -> tuple[Any, ...]:
    return tuple(
        module.ApiVersion(api_key=key, min_version=low, max_version=high)
        for key, (low, high) in sorted(SUPPORTED.items())
    )


def unsupported_api_versions() -> Any:
    """The v0 ApiVersions answer to a version we do not speak: error 35 and our list."""
    module = messages(ApiKey.API_VERSIONS, 0, True)
    return module.ApiVersionsResponse(
        error_code=ErrorCode.unsupported_version, api_keys=_api_keys(module)
    )


async def handle_api_versions(broker: Broker, header: RequestHeader, request: Any) -> Any:
    """Answer with every supported API and its version range."""
    module = messages(ApiKey.API_VERSIONS, header.api_version, True)
    return make(
        module.ApiVersionsResponse,
        error_code=ErrorCode.none,
        api_keys=_api_keys(module),
        throttle_time=0,
    )
