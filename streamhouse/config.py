"""Settings, resolved as: explicit arguments (CLI flags) > STREAMHOUSE_* environment > streamhouse.toml > defaults.

>>> Settings.load(data_dir="/tmp/sh").data_dir
PosixPath('/tmp/sh')
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from streamhouse.errors import ConfigError

DEFAULT_DATA_DIR = "./streamhouse-data"


@dataclass(frozen=True)
class Settings:
    """Everything a StreamHouse process can be told.

    ``object_store`` is ``None`` for the local directory ``<data_dir>/objects``, or an URL
    ``s3://bucket/prefix`` (``s3_endpoint_url`` points boto3 at an S3-compatible server).
    ``metadata`` is ``None`` for SQLite at ``<data_dir>/metadata.sqlite3``, ``sqlite:///path``
    for another SQLite file, or ``postgresql://user@host:5432/db`` (``postgres://`` too) for a
    PostgreSQL database several processes share (``STREAMHOUSE_METADATA``, ``--metadata``).
    ``s3_max_attempts`` is how often one S3 request is tried before it fails (boto3's
    standard retry mode, exponential backoff). ``orphan_min_age_s`` is how old an object no
    metadata names must be before ``fsck --delete-orphans`` removes it: it must exceed the
    longest a flush can take between its put and its commit (S3 retries, metadata busy
    timeouts), so an object on its way to being committed is never taken for an orphan.
    ``retention_check_interval_s`` is how often ``serve`` runs a retention pass;
    ``log_cleaner_backoff_s`` how often it looks for partitions of compacted topics due for
    cleaning (Kafka's ``log.cleaner.backoff.ms``: :mod:`streamhouse.log.cleaner`);
    ``object_delete_delay_s`` how long a segment object no index row names any more is kept
    before it is deleted (as Kafka's ``file.delete.delay.ms``): fetches and queries that read
    the index before find it for that long. ``producer_id_expiration_s`` is how long the
    sequence state of an idempotent producer that stopped writing to a partition is kept (as
    Kafka's ``producer.id.expiration.ms``; each retention pass forgets older ones).
    ``compaction_target_bytes`` is the size compaction merges small objects up to (per
    partition; 0 turns compaction off); ``compaction_compression`` the codec of the batches
    it writes where a topic's ``compression.type`` is ``producer`` (``zstd``, ``lz4``,
    ``snappy``, ``gzip``, ``uncompressed``, or ``producer`` to keep each batch's);
    ``compaction_lease_s`` how long a compactor's lease on a partition lasts unrenewed (a
    killed compactor's partitions wait that long for the next).
    ``iceberg_freshness_s`` is how often ``serve`` appends the new rows of streams declared
    ``WITH ('iceberg' = 'true')`` to their Iceberg tables (how stale a table may be);
    ``iceberg_commit_records`` the most records one Iceberg snapshot takes (a backlog is
    appended as several); ``iceberg_snapshot_retention_s`` how long a table's snapshots
    stay readable by time travel once they are no longer current (each pass expires older
    ones; the current snapshot and those back to the one recording the offsets appended
    stay).
    ``advertised_port`` is the port clients are told to connect to (0: the one served);
    ``zone`` and ``agent_group`` place this process among the agents sharing a PostgreSQL
    metadata store, which heartbeat six times per ``agent_ttl_s`` and drop out of every
    Metadata answer once their heartbeat is older than ``agent_ttl_s`` (at once when another
    agent's link to them closes and their address refuses connections: a killed process).
    Group coordinator leases last ``agent_ttl_s`` too.
    ``group_initial_rebalance_delay_ms`` is how long an empty consumer group waits for more
    members before its first generation (Kafka's ``group.initial.rebalance.delay.ms``:
    Kafka's default is 3000, its shipped ``server.properties`` sets 0, as serve's default).
    ``query_lease_ttl_s`` is how long an agent's hold on a continuous query lasts unless
    renewed (every third of it): after a holder dies, another agent resumes the query within
    about that long.
    ``security_protocol`` is the main listener's (``host:port``): ``PLAINTEXT`` or ``SSL``
    (Kafka's names); ``listeners`` adds more, comma-separated ``PROTOCOL://HOST:PORT``, each
    on its own port. TLS listeners serve ``tls_cert`` with ``tls_key`` (PEM files); with
    ``tls_client_ca`` (PEM) every client must present a certificate that CA signed (mTLS).
    ``sasl_mechanisms`` are those SASL listeners offer: ``PLAIN``, ``SCRAM-SHA-256``,
    ``SCRAM-SHA-512`` (comma-separated).
    ``authorizer`` is ``none`` (everything allowed) or ``acl`` (Kafka ACLs in the metadata
    store decide); ``super_users`` (``User:admin;User:ops``) bypass them;
    ``allow_everyone_if_no_acl_found`` opens a resource no ACL names to everyone (Kafka's
    ``allow.everyone.if.no.acl.found``, default false as there); each agent reloads
    ACLs changed elsewhere within ``acl_refresh_s``. A failed SASL login is answered after
    ``failed_login_delay_ms`` (Kafka's ``connection.failed.authentication.delay.ms``).
    ``transparent_huge_pages`` false (the default) turns the kernel's transparent huge pages
    off for the process that opens the log (:mod:`streamhouse.os_memory`: their faults cost
    bounded queries materializing large answers several times their CPU).
    """

    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))
    object_store: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_max_attempts: int = 5
    metadata: str | None = None
    linger_ms: float = 5.0
    linger_when_idle: bool = False  # True: linger_ms holds every flush, an idle writer's too
    max_flush_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = 8 * 1024 * 1024
    default_partitions: int = 1
    cache_bytes: int = 256 * 1024 * 1024
    host: str = "127.0.0.1"
    port: int = 9092
    advertised_host: str = "127.0.0.1"
    advertised_port: int = 0
    zone: str = ""
    agent_group: str = "default"
    agent_ttl_s: float = 3.0
    group_initial_rebalance_delay_ms: float = 0.0
    query_lease_ttl_s: float = 10.0
    auto_create_topics: bool = True
    orphan_min_age_s: float = 3600.0
    retention_check_interval_s: float = 60.0
    log_cleaner_backoff_s: float = 15.0
    object_delete_delay_s: float = 60.0
    producer_id_expiration_s: float = 86400.0
    compaction_target_bytes: int = 16 * 1024 * 1024
    compaction_compression: str = "zstd"
    compaction_lease_s: float = 60.0
    iceberg_freshness_s: float = 60.0
    iceberg_commit_records: int = 1_000_000
    iceberg_snapshot_retention_s: float = 86_400.0
    # columnar cache of decoded runs (data_dir/scan-cache); 0: none; None: a share of free disk
    scan_cache_bytes: int | str | None = None
    memory_limit: str | int | None = None  # bounded queries' memory pool; None: half the RAM
    security_protocol: str = "PLAINTEXT"
    listeners: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    sasl_mechanisms: str = "SCRAM-SHA-256,SCRAM-SHA-512"
    authorizer: str = "none"
    super_users: str = ""
    allow_everyone_if_no_acl_found: bool = False
    acl_refresh_s: float = 1.0
    failed_login_delay_ms: float = 100.0
    transparent_huge_pages: bool = False  # False: off for the process (streamhouse.os_memory)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Resolve settings; ``overrides`` whose value is ``None`` are ignored."""
        values: dict[str, Any] = {}
        path = Path(config_file) if config_file else Path("streamhouse.toml")
        if path.is_file():
            with path.open("rb") as fh:
                try:
                    values.update(tomllib.load(fh))
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError(f"{path}: {exc}") from None
        elif config_file:
            raise ConfigError(f"config file {path} does not exist")
        for f in fields(cls):
            env = os.environ.get(f"STREAMHOUSE_{f.name.upper()}")
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        settings = cls()
        converted: dict[str, Any] = {}
        for name, raw in values.items():
            default = getattr(settings, name)
            converted[name] = _convert(name, raw, default)
        return replace(settings, **converted)


def _convert(name: str, raw: Any, default: Any) -> Any:
    if name == "data_dir":
        return Path(raw)
    if name == "scan_cache_bytes":  # bytes, or a size such as "4GB"
        from streamhouse.sql.scan_cache import parse_cache_bytes

        return parse_cache_bytes(raw)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {name}: expected a boolean, got {raw!r}")
    if isinstance(default, int | float) and not isinstance(raw, int | float):
        try:
            return type(default)(raw)
        except ValueError:
            raise ConfigError(f"setting {name}: expected a number, got {raw!r}") from None
    return raw
