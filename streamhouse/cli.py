"""The ``streamhouse`` command: thin click commands over the Python API.

Tables and results go to stdout; progress, logs and errors go to stderr. Every command takes
``--data-dir`` (default ``$STREAMHOUSE_DATA_DIR`` or ``./streamhouse-data``), ``--metadata``
(default ``$STREAMHOUSE_METADATA`` or SQLite in the data directory) and ``--object-store``
with ``--s3-endpoint-url`` (default ``$STREAMHOUSE_OBJECT_STORE``, or the data directory's
``objects``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import pyarrow as pa

from streamhouse.config import DEFAULT_DATA_DIR, Settings
from streamhouse.connection import StreamHouse
from streamhouse.errors import StreamHouseError
from streamhouse.log.isolation import Isolation
from streamhouse.output import DEFAULT_MAX_ROWS
from streamhouse.output import print_table as _print_table
from streamhouse.output import write_result as _write_result
from streamhouse.sql.memory import parse_memory_limit

if TYPE_CHECKING:
    from streamhouse.runtime.supervisor import QuerySupervisor

log = logging.getLogger("streamhouse")


_STORES = "streamhouse.stores"
"""Where ``--metadata``, ``--object-store`` and ``--s3-endpoint-url`` (of the group or of a
command) leave their values in ``ctx.meta``: a dict of setting name to value."""
SHORT_AGENT_ID = 12
"""Characters of an agent id ``cluster status`` shows (of 32 random hex digits)."""


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    data_dir = ctx.find_root().params.get("data_dir_root")
    local = ctx.params.get("data_dir")
    return Settings.load(
        data_dir=Path(local or data_dir or DEFAULT_DATA_DIR),
        **{**ctx.meta.get(_STORES, {}), **overrides},
    )


def _open(ctx: click.Context) -> StreamHouse:
    return StreamHouse(_settings(ctx))


def _remember(setting: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    """A callback keeping an option's value as ``setting`` in ``ctx.meta`` (a command's
    option is read after the group's, so it wins)."""

    def remember(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.meta.setdefault(_STORES, {})[setting] = value

    return remember


_STORE_OPTIONS = (
    (
        "--metadata",
        "metadata",
        "Metadata store: postgresql://user@host:5432/db or sqlite:///path"
        " (default $STREAMHOUSE_METADATA, else SQLite in the data directory).",
    ),
    (
        "--object-store",
        "object_store",
        "Object store: s3://bucket/prefix (default $STREAMHOUSE_OBJECT_STORE, else the data"
        " directory's objects).",
    ),
    (
        "--s3-endpoint-url",
        "s3_endpoint_url",
        "Endpoint of an S3-compatible server for --object-store (default AWS).",
    ),
)


def store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--metadata``, ``--object-store`` and ``--s3-endpoint-url``: where the log is, kept in
    ``ctx.meta`` (commands need no parameter for them)."""
    for flag, setting, text in reversed(_STORE_OPTIONS):
        f = click.option(
            flag, metavar="URL", expose_value=False, callback=_remember(setting), help=text
        )(f)
    return f


isolation_option = click.option(
    "--isolation-level",
    type=click.Choice([level.value for level in Isolation]),
    default=Isolation.READ_COMMITTED.value,
    show_default=True,
    help="read_committed: records of open or aborted transactions are not read (as Kafka's"
    " read_committed consumers); read_uncommitted: every record is.",
)


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir`` and the store options: where a command finds the log."""
    return store_options(
        click.option(
            "--data-dir",
            type=click.Path(file_okay=False),
            envvar="STREAMHOUSE_DATA_DIR",
            help="Data directory (default ./streamhouse-data).",
        )(f)
    )


def friendly_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn StreamHouse errors into one line on stderr and exit status 1, never a traceback."""

    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except StreamHouseError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(0)
        except UnicodeError as exc:  # e.g. SQL on stdin that is not UTF-8
            raise click.ClickException(f"input is not valid Unicode text: {exc}") from None
        except OSError as exc:  # e.g. -o into a directory that does not exist
            raise click.ClickException(str(exc)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    "data_dir_root",
    type=click.Path(file_okay=False),
    envvar="STREAMHOUSE_DATA_DIR",
    help="Data directory (default ./streamhouse-data).",
)
@store_options
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.version_option(package_name="streamhouse")
def main(data_dir_root: str | None, verbose: int, quiet: bool) -> None:
    """StreamHouse: a Kafka-compatible log and a streaming SQL engine in one process."""
    level = (
        logging.ERROR
        if quiet
        else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The PostgreSQL pool says three INFO lines per metadata call: only with -vv.
    logging.getLogger("psycopg.pool").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


# -- topics ------------------------------------------------------------------------------------


@main.group()
def topic() -> None:
    """Create, list, describe and delete topics."""


@topic.command("create")
@click.argument("name")
@click.option("-p", "--partitions", default=1, show_default=True, type=click.IntRange(1, 100_000))
@click.option("-c", "--config", "configs", multiple=True, metavar="KEY=VALUE", help="Topic config.")
@data_dir_option
@click.pass_context
@friendly_errors
def topic_create(
    ctx: click.Context, name: str, partitions: int, configs: tuple[str, ...], data_dir: str | None
) -> None:
    """Create topic NAME (--config retention.ms=3600000 and other Kafka topic configs)."""
    with _open(ctx) as sh:
        info = sh.create_topic(name, partitions, _config_items(configs))
    click.echo(f"created topic {info.name} with {info.partitions} partition(s)", err=True)


def _config_items(configs: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict; a usage error for one without ``=``."""
    config = {}
    for item in configs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        config[key.strip()] = value.strip()
    return config


@topic.command("alter")
@click.argument("name")
@click.option("-c", "--config", "configs", multiple=True, metavar="KEY=VALUE", help="Set a config.")
@click.option(
    "--delete-config",
    "deleted",
    multiple=True,
    metavar="KEY",
    help="Reset a config to its default.",
)
@data_dir_option
@click.pass_context
@friendly_errors
def topic_alter(
    ctx: click.Context,
    name: str,
    configs: tuple[str, ...],
    deleted: tuple[str, ...],
    data_dir: str | None,
) -> None:
    """Change topic NAME's configs, e.g. --config retention.ms=3600000."""
    changes: dict[str, str | None] = {**dict.fromkeys(deleted), **_config_items(configs)}
    if not changes:
        raise click.UsageError("nothing to change: give --config KEY=VALUE or --delete-config KEY")
    with _open(ctx) as sh:
        info = sh.alter_topic(name, changes)
    settings = ", ".join(f"{k}={v}" for k, v in sorted(info.config.items())) or "defaults only"
    click.echo(f"altered topic {info.name}: {settings}", err=True)


@topic.command("list")
@data_dir_option
@click.pass_context
@friendly_errors
def topic_list(ctx: click.Context, data_dir: str | None) -> None:
    """List topics."""
    with _open(ctx) as sh:
        rows = []
        for info in sh.topics():
            offsets = sh.log.metadata.partition_offsets(info.name)
            rows.append(
                {
                    "topic": info.name,
                    "partitions": info.partitions,
                    "records": sum(o.high_watermark - o.log_start_offset for o in offsets.values()),
                }
            )
    schema = pa.schema(
        [("topic", pa.string()), ("partitions", pa.int64()), ("records", pa.int64())]
    )
    _print_table(pa.Table.from_pylist(rows, schema=schema))


@topic.command("describe")
@click.argument("name")
@data_dir_option
@click.pass_context
@friendly_errors
def topic_describe(ctx: click.Context, name: str, data_dir: str | None) -> None:
    """Show a topic's partitions, offsets and config."""
    with _open(ctx) as sh:
        info = sh.topic(name)
        offsets = sh.log.metadata.partition_offsets(name)
    click.echo(f"topic {info.name}  id {info.topic_id}  partitions {info.partitions}")
    for key, value in sorted(info.config.items()):
        click.echo(f"  {key} = {value}")
    rows = [
        {"partition": p, "log_start_offset": o.log_start_offset, "high_watermark": o.high_watermark}
        for p, o in sorted(offsets.items())
    ]
    _print_table(pa.Table.from_pylist(rows))


@topic.command("delete")
@click.argument("name")
@data_dir_option
@click.pass_context
@friendly_errors
def topic_delete(ctx: click.Context, name: str, data_dir: str | None) -> None:
    """Delete topic NAME and its records."""
    with _open(ctx) as sh:
        sh.delete_topic(name)
    click.echo(f"deleted topic {name}", err=True)


# -- produce and consume -----------------------------------------------------------------------


@main.command()
@click.argument("topic_name", metavar="TOPIC")
@click.option(
    "-f", "--file", "source", type=click.File("rb"), default="-", help="Input file (default stdin)."
)
@click.option("-k", "--key", help="Key for every record.")
@click.option("--key-field", help="With --format json: use this field of each record as its key.")
@click.option("-p", "--partition", type=int, help="Write every record to this partition.")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "raw"]), default="json", show_default=True
)
@data_dir_option
@click.pass_context
@friendly_errors
def produce(
    ctx: click.Context,
    topic_name: str,
    source: Any,
    key: str | None,
    key_field: str | None,
    partition: int | None,
    fmt: str,
    data_dir: str | None,
) -> None:
    """Produce one record per input line to TOPIC (JSON lines are checked before anything is written)."""
    lines = [line.rstrip(b"\r\n") for line in source]
    lines = [line for line in lines if line.strip()]
    keys: Any = key
    if fmt == "json":
        parsed = _json_lines(lines)
        if key_field:
            keys = [
                None if not isinstance(p, dict) or p.get(key_field) is None else str(p[key_field])
                for p in parsed
            ]
    with _open(ctx) as sh:
        result = sh.produce(topic_name, lines, key=keys, partition=partition)
    click.echo(f"produced {result.records} record(s) to {topic_name}", err=True)


def _json_lines(lines: list[bytes]) -> list[Any]:
    """Each line parsed as strict JSON: UTF-8, no NaN or Infinity, nested at most
    MAX_JSON_DEPTH levels (the deepest a column can be); the first line that is not is a
    one-line error."""
    from streamhouse.sql.json_guard import MAX_JSON_DEPTH, too_deep

    deep = too_deep(pa.array(lines, pa.binary()), MAX_JSON_DEPTH)
    first_deep = int(deep[0]) + 1 if len(deep) else 0
    parsed = []
    for number, line in enumerate(lines, 1):
        if number == first_deep:
            raise click.ClickException(
                f"line {number} is nested deeper than {MAX_JSON_DEPTH} levels, deeper than a "
                "column can be (--format raw stores it as it is)"
            )
        try:
            parsed.append(json.loads(line.decode(), parse_constant=_not_json, parse_int=_integer))
        except UnicodeDecodeError as exc:
            raise click.ClickException(
                f"line {number} is not UTF-8: byte 0x{line[exc.start]:02x} at column {exc.start + 1}"
            ) from None
        except json.JSONDecodeError as exc:
            raise click.ClickException(
                f"line {number} is not JSON: {exc.msg} (column {exc.colno})"
            ) from None
        except ValueError as exc:  # from _not_json
            raise click.ClickException(f"line {number} is not JSON: {exc}") from None
    return parsed


def _not_json(token: str) -> None:
    raise ValueError(f"{token} is not a JSON value")


def _integer(text: str) -> int | str:
    """A JSON integer; its digits as they are past Python's int conversion limit."""
    return int(text) if len(text) < 4000 else text


@main.command()
@click.argument("topic_name", metavar="TOPIC")
@click.option(
    "--from-beginning", is_flag=True, help="Start at the earliest offset (default: the end)."
)
@click.option("-p", "--partition", type=int, help="Only this partition.")
@click.option("-n", "--max", "max_records", type=int, help="Exit after this many records.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Exit after this many idle seconds (default: follow until Ctrl-C; 0 with --from-beginning: stop at the end).",
)
@click.option("--print-key", is_flag=True, help="Print KEY<TAB>VALUE.")
@isolation_option
@data_dir_option
@click.pass_context
@friendly_errors
def consume(
    ctx: click.Context,
    topic_name: str,
    from_beginning: bool,
    partition: int | None,
    max_records: int | None,
    timeout: float | None,
    print_key: bool,
    isolation_level: str,
    data_dir: str | None,
) -> None:
    """Print TOPIC's record values, one per line, following new records like kafka-console-consumer."""
    out = sys.stdout.buffer
    printed = 0
    with _open(ctx) as sh:
        info = sh.topic(topic_name)
        partitions = [partition] if partition is not None else list(range(info.partitions))
        positions = {}
        for p in partitions:
            offsets = sh.log.offsets(topic_name, p)
            positions[p] = offsets.log_start_offset if from_beginning else offsets.high_watermark
        idle_since = time.monotonic()
        while max_records is None or printed < max_records:
            got = False
            for p in partitions:
                table = sh.fetch(topic_name, p, positions[p], isolation_level=isolation_level)
                if table.num_rows == 0:
                    continue
                got = True
                positions[p] = table["offset"][-1].as_py() + 1
                keys = table["key"].to_pylist()
                for k, v in zip(keys, table["value"].to_pylist(), strict=True):
                    if print_key:
                        out.write((k or b"") + b"\t")
                    out.write((v or b"") + b"\n")
                    printed += 1
                    if max_records is not None and printed >= max_records:
                        break
                if max_records is not None and printed >= max_records:
                    break
            out.flush()
            if got:
                idle_since = time.monotonic()
                continue
            if timeout is not None and time.monotonic() - idle_since >= timeout:
                break
            time.sleep(0.1)


# -- SQL ---------------------------------------------------------------------------------------


@main.command()
@click.argument("sql")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "arrow"]),
    default="table",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the result to this file.",
)
@click.option(
    "--skip-damaged",
    is_flag=True,
    help="Leave damaged ranges of records out and report them (SET 'read.on-damage' = 'skip').",
)
@click.option(
    "--memory-limit",
    metavar="SIZE",
    help="Memory the query may use before it spills to disk or fails: '512MB', '2GB', "
    "'25%' of the machine's (SET 'memory.limit'; default half the machine's memory).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_ROWS,
    show_default=True,
    help="Table format: show at most this many rows, first and last halves (0 = all).",
)
@isolation_option
@data_dir_option
@click.pass_context
@friendly_errors
def query(
    ctx: click.Context,
    sql: str,
    fmt: str,
    output: str | None,
    skip_damaged: bool,
    memory_limit: str | None,
    max_rows: int,
    isolation_level: str,
    data_dir: str | None,
) -> None:
    """Run SQL over the log as of now and print the answer (SQL '-' reads it from stdin).

    csv, json (one object per line) and arrow (an IPC stream) write every row, batch by
    batch; the table format shows the first and last rows and counts them all.
    """
    if sql == "-":
        sql = sys.stdin.read()
    with _open(ctx) as sh:
        if skip_damaged:
            sh.sql("SET 'read.on-damage' = 'skip'")
        sh.sql(f"SET 'isolation.level' = '{isolation_level}'")
        if memory_limit is not None:
            sh.engine.memory_limit = parse_memory_limit(memory_limit)
        relation = sh.sql(sql)
        rows = relation.to_arrow_reader()
        _write_result(rows, fmt, output, 0 if relation.listing else max_rows)
        # Sources stream as the rows are written: what they left out is known at the end.
        stats = getattr(relation, "stats", None)
        if stats is not None and stats.rejected:
            click.echo(
                f"warning: {len(stats.rejected)} record(s) did not fit the schema and were left out",
                err=True,
            )
        for damaged in stats.damaged if stats is not None else ():
            click.echo(f"warning: {damaged.records} record(s) skipped: {damaged}", err=True)


# -- server and demo ---------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Kafka protocol port (default 9092).")
@click.option(
    "--advertised-host", default=None, help="Host advertised to clients (default 127.0.0.1)."
)
@click.option(
    "--advertise",
    metavar="HOST:PORT",
    default=None,
    help="Address clients are told to reach this agent at (default: advertised host and --port).",
)
@click.option("--zone", default=None, help="This agent's zone (clients pick theirs by client.id).")
@click.option(
    "--agent-group", default=None, help="This agent's group: it names only agents of its group."
)
@click.option(
    "--auto-create-topics/--no-auto-create-topics",
    default=None,
    help="Create topics on first use, like Kafka.",
)
@click.option(
    "--security-protocol",
    type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], case_sensitive=False),
    default=None,
    help="Security protocol of the --host/--port listener (default PLAINTEXT).",
)
@click.option(
    "--listener",
    "listeners",
    metavar="PROTOCOL://HOST:PORT",
    multiple=True,
    help="Another listener on its own port, e.g. SSL://127.0.0.1:9093 (repeatable).",
)
@click.option(
    "--sasl-mechanisms",
    default=None,
    help="SASL mechanisms offered: PLAIN,SCRAM-SHA-256,SCRAM-SHA-512 (default: both SCRAMs).",
)
@click.option(
    "--authorizer",
    type=click.Choice(["none", "acl"]),
    default=None,
    help="acl: Kafka ACLs (CreateAcls...) decide who may do what (default none: anyone).",
)
@click.option(
    "--super-users",
    default=None,
    help="Principals that bypass ACLs, ';'-separated (User:admin;User:CN=ops).",
)
@click.option("--tls-cert", default=None, help="PEM certificate (chain) of TLS listeners.")
@click.option("--tls-key", default=None, help="PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    default=None,
    help="PEM CA: TLS clients must present a certificate it signed (mTLS).",
)
@click.option(
    "--queries",
    "queries_dir",
    type=click.Path(exists=True, file_okay=False),
    help="Run every .sql file in this directory as a continuous query, next to the Kafka protocol.",
)
@data_dir_option
@click.pass_context
@friendly_errors
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    advertised_host: str | None,
    advertise: str | None,
    zone: str | None,
    agent_group: str | None,
    auto_create_topics: bool | None,
    security_protocol: str | None,
    listeners: tuple[str, ...],
    sasl_mechanisms: str | None,
    authorizer: str | None,
    super_users: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    queries_dir: str | None,
    data_dir: str | None,
) -> None:
    """Serve the Kafka protocol over the log (and run continuous queries and, every
    retention_check_interval_s, a retention and a compaction pass) until Ctrl-C."""
    import asyncio
    import contextlib
    import signal

    from streamhouse.kafka.acls import super_users_of
    from streamhouse.kafka.listeners import listeners_of, server_tls_context
    from streamhouse.kafka.sasl import enabled_mechanisms
    from streamhouse.kafka.server import favour_waiting_threads, freeze_startup_objects
    from streamhouse.kafka.server import serve as serve_kafka
    from streamhouse.log.metadata import sqlite_path

    advertised_port = None
    if advertise is not None:
        advertised_host, sep, port_text = advertise.rpartition(":")
        if not sep or not advertised_host or not port_text.isdigit():
            raise click.BadParameter(
                f"expected HOST:PORT, got {advertise!r}", param_hint="--advertise"
            )
        advertised_port = int(port_text)
    settings = _settings(
        ctx,
        host=host,
        port=port,
        advertised_host=advertised_host,
        advertised_port=advertised_port,
        zone=zone,
        agent_group=agent_group,
        auto_create_topics=auto_create_topics,
        security_protocol=security_protocol,
        listeners=",".join(listeners) or None,
        sasl_mechanisms=sasl_mechanisms,
        authorizer=authorizer,
        super_users=super_users,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
    )
    enabled_mechanisms(settings.sasl_mechanisms)
    if any(listener.tls for listener in listeners_of(settings)):
        server_tls_context(settings)  # bad certificate files: one line now, before anything opens
    super_users_of(settings.super_users)
    files = sorted(Path(queries_dir).glob("*.sql")) if queries_dir else []
    favour_waiting_threads()
    with StreamHouse(settings) as sh:
        _warn_if_others_may_write(settings.data_dir)
        agent_id = None
        supervisor = None
        if sqlite_path(settings) is None:  # one agent of several: each query on one of them
            agent_id = uuid.uuid4().hex
            supervisor = _supervise_queries(sh, agent_id, files)
        else:
            _start_queries(sh, files)

        async def until_signalled() -> None:
            loop = asyncio.get_running_loop()
            serving = asyncio.create_task(serve_kafka(sh.log, settings, agent_id=agent_id))
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, serving.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await serving

        freeze_startup_objects()
        try:
            asyncio.run(until_signalled())
        finally:
            if supervisor is not None:
                supervisor.stop()


def _warn_if_others_may_write(data_dir: Path) -> None:
    """Local access (the CLI, the Python API) is governed by the data dir's permissions: warn
    when other users may write it."""
    import stat

    try:
        mode = data_dir.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning(
            "data dir %s is %s-writable (mode %o): other local users can change the log and"
            " the users; chmod go-w it",
            data_dir,
            "world" if mode & stat.S_IWOTH else "group",
            stat.S_IMODE(mode),
        )


def _start_queries(sh: StreamHouse, files: list[Path]) -> None:
    """Run every query file and materialized view in this process (the store is not shared)."""
    for path in files:
        try:
            query = sh.start(path)
        except StreamHouseError as exc:  # that query alone fails; Kafka and the rest go on
            log.error("continuous query from %s not started: %s", path, exc)
            continue
        log.warning("continuous query %s running from %s", query.name, path)
    for query in sh.start_materialized_views():
        log.warning("materialized view %s running", query.name)


def _supervise_queries(sh: StreamHouse, agent_id: str, files: list[Path]) -> QuerySupervisor:
    """Start supervising every query file and materialized view: each runs on the one agent
    that holds its lease (see :mod:`streamhouse.runtime.supervisor`)."""
    from streamhouse.runtime.launch import QueryFile, is_materialized_view
    from streamhouse.runtime.supervisor import QuerySupervisor
    from streamhouse.sql.parse import parse

    supervisor = QuerySupervisor(
        sh.engine,
        agent_id,
        sh.settings.query_lease_ttl_s,
        sh.settings.data_dir / "agents" / agent_id,
    )
    for path in files:
        try:
            supervisor.add(QueryFile.read(path))
        except StreamHouseError as exc:  # that query alone fails; Kafka and the rest go on
            log.error("continuous query from %s not started: %s", path, exc)
    for entry in sh.log.metadata.list_catalog():
        if entry.kind == "view" and is_materialized_view(parse(entry.sql)[0]):
            supervisor.add(QueryFile.read(entry.sql, name=entry.name))
    if supervisor.names:
        log.warning(
            "agent %s runs those of the continuous queries %s it holds the lease of",
            agent_id,
            ", ".join(supervisor.names),
        )
    return supervisor.start()


@main.group()
def user() -> None:
    """SASL users (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) in the metadata store."""


def _metadata(ctx: click.Context) -> Any:
    from streamhouse.log.metadata import open_metadata, sqlite_path

    settings = _settings(ctx)
    path = sqlite_path(settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return open_metadata(settings)


@user.command("add")
@click.argument("name")
@click.option(
    "--password-stdin",
    is_flag=True,
    required=True,
    help="Read the password from stdin's first line.",
)
@click.option("--iterations", type=click.IntRange(4096, 1_000_000), default=4096, show_default=True)
@data_dir_option
@click.pass_context
@friendly_errors
def user_add(
    ctx: click.Context, name: str, password_stdin: bool, iterations: int, data_dir: str | None
) -> None:
    """Add user NAME, or set its password: salted SCRAM credentials for SHA-256 and SHA-512
    (PLAIN logins are checked against them); the password itself is stored nowhere."""
    from streamhouse.security.scram import MECHANISMS, make_credential

    password = sys.stdin.readline().rstrip("\r\n")
    if not name or "," in name or "=" in name or any(ord(c) < 32 for c in name):
        raise click.BadParameter(
            "a user name must be non-empty, without ',', '=' or control characters",
            param_hint="NAME",
        )
    if not password:
        raise click.ClickException("no password on stdin")
    credentials = [
        make_credential(m, password, user=name, iterations=iterations) for m in MECHANISMS
    ]
    metadata = _metadata(ctx)
    try:
        metadata.put_credentials(name, credentials)
    finally:
        metadata.close()
    click.echo(f"user {name}: {', '.join(MECHANISMS)} credentials stored", err=True)


@user.command("list")
@data_dir_option
@click.pass_context
@friendly_errors
def user_list(ctx: click.Context, data_dir: str | None) -> None:
    """Every user, with its mechanisms and iteration counts."""
    metadata = _metadata(ctx)
    try:
        rows = metadata.list_credentials()
    finally:
        metadata.close()
    users: dict[str, list[str]] = {}
    for name, mechanism, iterations in rows:
        users.setdefault(name, []).append(f"{mechanism}(iterations={iterations})")
    for name, mechanisms in users.items():
        click.echo(f"{name}\t{' '.join(mechanisms)}")


@user.command("delete")
@click.argument("name")
@data_dir_option
@click.pass_context
@friendly_errors
def user_delete(ctx: click.Context, name: str, data_dir: str | None) -> None:
    """Delete user NAME: it can no longer log in (connections logged in already stay)."""
    metadata = _metadata(ctx)
    try:
        found = metadata.delete_credentials(name)
    finally:
        metadata.close()
    if not found:
        raise click.ClickException(f"no user {name!r}")
    click.echo(f"user {name} deleted", err=True)


# -- ACLs --------------------------------------------------------------------------------------


@main.group()
def acl() -> None:
    """Kafka ACLs in the metadata store, as kafka-acls.sh manages them (--add, --list,
    --remove): a running serve --authorizer acl applies a change within acl_refresh_s (1 s)."""


def _resource_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--topic, --group, --transactional-id, --cluster and --resource-pattern-type."""
    options = [
        click.option("--topic", "topics", multiple=True, metavar="NAME", help="A topic (repeatable)."),
        click.option("--group", "groups", multiple=True, metavar="NAME", help="A consumer group (repeatable)."),
        click.option("--transactional-id", "transactional_ids", multiple=True, metavar="ID",
                     help="A transactional.id (repeatable)."),
        click.option("--cluster", is_flag=True, help="The cluster (kafka-cluster)."),
        click.option("--resource-pattern-type", "pattern", metavar="TYPE",
                     help="literal or prefixed (list and delete also any or match)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _entry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--allow/deny-principal, --allow/deny-host and --operation."""
    options = [
        click.option("--allow-principal", "allow_principals", multiple=True, metavar="PRINCIPAL",
                     help="User:NAME allowed (repeatable; User:* is everyone)."),
        click.option("--deny-principal", "deny_principals", multiple=True, metavar="PRINCIPAL",
                     help="User:NAME denied (repeatable; a DENY wins over any ALLOW)."),
        click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST",
                     help="Address the allowed principals connect from (default *)."),
        click.option("--deny-host", "deny_hosts", multiple=True, metavar="HOST",
                     help="Address the denied principals connect from (default *)."),
        click.option("--operation", "operations", multiple=True, metavar="OP",
                     help="Read, Write, Create, Delete, Alter, Describe, DescribeConfigs,"
                     " AlterConfigs, IdempotentWrite, ClusterAction or All (default All;"
                     " repeatable)."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _acl_spec(options: dict[str, Any]) -> Any:
    from streamhouse.security.acl_command import AclSpec

    return AclSpec(**{k: v for k, v in options.items() if k in AclSpec.__slots__})


def _echo_acls(metadata: Any, filters: list[Any]) -> None:
    from streamhouse.security.acl_command import describe

    found = [b for b in metadata.list_acls() if any(f.matches(b) for f in filters)]
    for line in describe(found):
        click.echo(line)


@acl.command("add")
@_resource_options
@_entry_options
@click.option("--producer", is_flag=True, help="WRITE, DESCRIBE and CREATE on the topics.")
@click.option(
    "--consumer", is_flag=True, help="READ and DESCRIBE on the topics, READ on the groups."
)
@click.option(
    "--idempotent", is_flag=True, help="With --producer: IDEMPOTENT_WRITE on the cluster."
)
@data_dir_option
@click.pass_context
@friendly_errors
def acl_add(ctx: click.Context, data_dir: str | None, **options: Any) -> None:
    """Add ACLs: every principal x host x operation on every resource named, then print the
    ACLs of those resources."""
    from streamhouse.security.acl_command import bindings_to_add, list_filters

    spec = _acl_spec(options)
    bindings = bindings_to_add(spec)
    metadata = _metadata(ctx)
    try:
        metadata.create_acls(bindings)
        click.echo(f"added {len(bindings)} ACL(s)", err=True)
        resources = {(b.resource_type, b.resource_name, b.pattern_type) for b in bindings}
        _echo_acls(metadata, [f for r in resources for f in list_filters(_one(r), ())])
    finally:
        metadata.close()


def _one(resource: tuple[Any, str, Any]) -> Any:
    """A spec naming one resource exactly (for printing what a change left)."""
    from streamhouse.security.acl import ResourceType
    from streamhouse.security.acl_command import AclSpec

    rtype, name, pattern = resource
    field = {ResourceType.TOPIC: "topics", ResourceType.GROUP: "groups",
             ResourceType.TRANSACTIONAL_ID: "transactional_ids"}.get(rtype)  # fmt: skip
    named = {field: (name,)} if field else {"cluster": True}
    return AclSpec(**named, pattern=pattern.name)  # type: ignore[arg-type]


@acl.command("list")
@_resource_options
@click.option("--principal", "principals", multiple=True, metavar="PRINCIPAL",
              help="Only the ACLs of this principal (repeatable).")  # fmt: skip
@data_dir_option
@click.pass_context
@friendly_errors
def acl_list(ctx: click.Context, data_dir: str | None, principals: tuple[str, ...],
             **options: Any) -> None:  # fmt: skip
    """The ACLs of the resources named (every ACL if none is), as kafka-acls.sh --list prints
    them; --resource-pattern-type match also shows the wildcard and prefixed ACLs that apply."""
    from streamhouse.security.acl_command import list_filters

    filters = list_filters(_acl_spec(options), principals)
    metadata = _metadata(ctx)
    try:
        _echo_acls(metadata, filters)
    finally:
        metadata.close()


@acl.command("delete")
@_resource_options
@_entry_options
@click.option("--force", is_flag=True, help="Do not ask before deleting every ACL of a resource.")
@data_dir_option
@click.pass_context
@friendly_errors
def acl_delete(ctx: click.Context, data_dir: str | None, force: bool, **options: Any) -> None:
    """Delete the ACLs of the resources named that match the principals, hosts and operations
    given (operation All unless given, as kafka-acls.sh --remove); with no principal, every
    ACL of those resources, after asking (--force: without)."""
    from streamhouse.security.acl_command import delete_filters

    filters, everything = delete_filters(_acl_spec(options))
    metadata = _metadata(ctx)
    try:
        doomed = [b for b in metadata.list_acls() if any(f.matches(b) for f in filters)]
        if everything and doomed and not force:
            click.confirm(f"Delete all {len(doomed)} ACL(s) of the resources named?", abort=True)
        metadata.delete_acls(doomed)
    finally:
        metadata.close()
    click.echo(f"deleted {len(doomed)} ACL(s)", err=True)


@main.group()
def iceberg() -> None:
    """The Iceberg tables of streams declared WITH ('iceberg' = 'true')."""


@iceberg.command("catalog")
@data_dir_option
@click.pass_context
@friendly_errors
def iceberg_catalog(ctx: click.Context, data_dir: str | None) -> None:
    """Print, as JSON, the properties pyiceberg.catalog.load_catalog(**props) opens the
    Iceberg catalog with (the SQL catalog in the metadata database, the warehouse in the
    object store); stream s is its table streamhouse.s."""
    import json

    from streamhouse.iceberg import catalog_properties

    click.echo(json.dumps(catalog_properties(_settings(ctx)), indent=2))


@main.group()
def cluster() -> None:
    """The agents (``serve`` processes) sharing one metadata store."""


@cluster.command("status")
@data_dir_option
@click.pass_context
@friendly_errors
def cluster_status(ctx: click.Context, data_dir: str | None) -> None:
    """List the agents registered in a PostgreSQL metadata store: agent id (its first 12
    characters), node id, address, zone, group, seconds since its last heartbeat, whether it
    is live (heartbeat within this process's agent_ttl_s),
    and the consumer groups it coordinates (holds a live lease of); then the continuous
    queries: which agent holds each, at which lease epoch, the checkpoint a new holder would
    resume from, how old it is and how many source records it had not read then
    (lag_at_checkpoint: what a new holder reads again); then each task of a parallel query:
    the agent holding it, its source offsets, watermark, state size and rows/s as it last
    wrote them (status_age_s ago; empty until a new holder wrote them), and the checkpoint its
    consuming side resumes from."""
    from streamhouse.kafka.cluster import node_id_of
    from streamhouse.kafka.coordination import GROUP_LEASE_PREFIX, group_of_lease
    from streamhouse.log.metadata import open_metadata, sqlite_path
    from streamhouse.runtime.supervisor import LEASE_PREFIX

    settings = _settings(ctx)
    if sqlite_path(settings) is not None:
        click.echo(
            "the metadata store is SQLite: one process, no agents (agents register in a"
            " PostgreSQL store, --metadata postgresql://...)",
            err=True,
        )
        return
    md = open_metadata(settings)
    try:
        agents = md.list_agents()
        leases = md.list_leases(GROUP_LEASE_PREFIX)
        query_leases = md.list_leases(LEASE_PREFIX)
        checkpoints = {c.query: c for c in md.list_query_checkpoints()}
        lags = {name: _lag(md, c.positions) for name, c in checkpoints.items()}
    finally:
        md.close()
    coordinates: dict[str, list[str]] = {}
    for lease in leases:
        if lease.live:
            coordinates.setdefault(lease.holder, []).append(group_of_lease(lease.name))
    ttl_ms = settings.agent_ttl_s * 1000
    rows = [
        {
            "agent": agent.agent_id[:SHORT_AGENT_ID],
            "node_id": node_id_of(agent.agent_id),
            "address": f"{agent.host}:{agent.port}",
            "zone": agent.zone,
            "group": agent.group,
            "heartbeat_age_s": round(agent.heartbeat_age_ms / 1000, 1),
            "state": "live" if agent.heartbeat_age_ms <= ttl_ms else "dead",
            "coordinates": ", ".join(coordinates.get(agent.agent_id, [])),
        }
        for agent in agents
    ]
    schema = pa.schema(
        [
            ("agent", pa.string()),
            ("node_id", pa.int64()),
            ("address", pa.string()),
            ("zone", pa.string()),
            ("group", pa.string()),
            ("heartbeat_age_s", pa.float64()),
            ("state", pa.string()),
            ("coordinates", pa.string()),
        ]
    )
    _print_table(pa.Table.from_pylist(rows, schema=schema))
    addresses = {agent.agent_id: f"{agent.host}:{agent.port}" for agent in agents}
    queries = []
    for lease in query_leases:
        name = lease.name.removeprefix(LEASE_PREFIX)
        if "/" in name:  # a task of a parallel query (listed below) or an agent running it
            continue
        checkpoint = checkpoints.get(name)
        queries.append(
            {
                "query": name,
                "agent": lease.holder[:SHORT_AGENT_ID] if lease.live else None,
                "address": addresses.get(lease.holder) if lease.live else None,
                "epoch": lease.epoch,
                "lease_left_s": round(max(lease.remaining_ms, 0) / 1000, 1),
                "checkpoint": checkpoint.checkpoint_id if checkpoint else None,
                "checkpoint_age_s": round(checkpoint.age_ms / 1000, 1) if checkpoint else None,
                "lag_at_checkpoint": lags.get(name),
            }
        )
    query_schema = pa.schema(
        [
            ("query", pa.string()),
            ("agent", pa.string()),
            ("address", pa.string()),
            ("epoch", pa.int64()),
            ("lease_left_s", pa.float64()),
            ("checkpoint", pa.string()),
            ("checkpoint_age_s", pa.float64()),
            ("lag_at_checkpoint", pa.int64()),
        ]
    )
    _print_table(pa.Table.from_pylist(queries, schema=query_schema))
    tasks = _task_rows(settings, query_leases, checkpoints, addresses)
    if tasks:
        _print_table(pa.Table.from_pylist(tasks, schema=TASK_SCHEMA))


TASK_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("task", pa.int64()),
        ("agent", pa.string()),
        ("address", pa.string()),
        ("epoch", pa.int64()),
        ("offsets", pa.string()),
        ("watermark", pa.string()),
        ("state_bytes", pa.int64()),
        ("rows_per_s", pa.float64()),
        ("rows_in", pa.int64()),
        ("status_age_s", pa.float64()),
        ("checkpoint", pa.string()),
    ]
)
"""``cluster status``'s table of the tasks of parallel queries on agents."""


def _task_rows(
    settings: Any, leases: list[Any], checkpoints: dict[str, Any], addresses: dict[str, str]
) -> list[dict[str, Any]]:
    """A row per task of a parallel query: the agent holding its lease, and the progress it
    last wrote to the object store (:mod:`streamhouse.runtime.placement`)."""
    from streamhouse.log.objectstore import open_object_store
    from streamhouse.runtime.agent_rescale import parallelism_record
    from streamhouse.runtime.placement import status_key, task_of_lease
    from streamhouse.runtime.task_state import task_checkpoint_name

    tasks = sorted(
        (task_of_lease(lease.name), lease) for lease in leases if task_of_lease(lease.name)
    )
    # a query rescaled to fewer tasks: the others' leases stay (expired), not its tasks
    scaled = {q: checkpoints.get(parallelism_record(q)) for (q, _), _ in tasks}
    tasks = [
        ((query, task), lease)
        for (query, task), lease in tasks
        if scaled[query] is None or task < int(scaled[query].checkpoint_id)
    ]
    if not tasks:
        return []
    objects = open_object_store(settings)
    rows = []
    now = time.time()
    for (query, task), lease in tasks:
        try:
            status = json.loads(objects.get(status_key(query, task)))
        except (StreamHouseError, ValueError):
            status = {}
        if status.get("epoch") != lease.epoch:  # an earlier holder's: the new one has not yet
            status = {"parallelism": status.get("parallelism")}
        parallelism = status.get("parallelism") or sum(1 for (q, _), _ in tasks if q == query)
        checkpoint = checkpoints.get(task_checkpoint_name(query, parallelism, f"task-{task}"))
        updated = status.get("updated_at")
        rows.append(
            {
                "query": query,
                "task": task,
                "agent": lease.holder[:SHORT_AGENT_ID] if lease.live else None,
                "address": addresses.get(lease.holder) if lease.live else None,
                "epoch": lease.epoch,
                "offsets": json.dumps(status["offsets"]) if "offsets" in status else None,
                "watermark": status.get("watermark"),
                "state_bytes": status.get("state_bytes"),
                "rows_per_s": status.get("rows_per_s"),
                "rows_in": status.get("rows_in"),
                "status_age_s": round(now - updated, 1) if updated else None,
                "checkpoint": checkpoint.checkpoint_id if checkpoint else None,
            }
        )
    return rows


def _lag(md: Any, positions: dict[str, dict[int, int]]) -> int | None:
    """Records of the source topics past ``positions`` (None if a topic is gone)."""
    lag = 0
    for topic, offsets in positions.items():
        try:
            now = md.partition_offsets(topic)
        except StreamHouseError:
            return None
        lag += sum(max(0, now[p].high_watermark - o) for p, o in offsets.items() if p in now)
    return lag


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Query name: its state and checkpoints (default: the file's stem).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--until-end",
    is_flag=True,
    help="Process what the log holds now, close every window at end of input, and exit.",
)
@click.option(
    "--set", "options", multiple=True, metavar="KEY=VALUE", help="Query option (like SET in SQL)."
)
@click.option(
    "--parallelism",
    type=click.IntRange(1, 128),
    default=None,
    help="Run the query as this many task processes (like SET 'parallelism').",
)
@data_dir_option
@click.pass_context
@friendly_errors
def run(
    ctx: click.Context,
    path: str,
    name: str | None,
    fmt: str,
    until_end: bool,
    options: tuple[str, ...],
    parallelism: int | None,
    data_dir: str | None,
) -> None:
    """Run the continuous query in PATH, printing results as windows close (Ctrl-C stops it).

    Stopping is clean: the current micro-batch is committed, and running the file again
    resumes from that checkpoint.
    """
    values = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        values[key.strip()] = value.strip()
    if parallelism is not None:
        values["parallelism"] = str(parallelism)

    def show(table: pa.Table) -> None:
        if fmt == "table":
            _print_table(table)
        else:
            _write_result(table, "json", None)

    with StreamHouse(_settings(ctx)) as sh:
        from streamhouse.runtime.launch import start_query

        query = start_query(
            sh.engine,
            Path(path),
            name=name,
            state_root=sh.settings.data_dir / "queries",
            options=values,
            on_results=show,
            start=not until_end,
        )
        try:
            if until_end:
                query.run_until_caught_up(final=True)
            else:
                click.echo(f"query {query.name} running; Ctrl-C stops it", err=True)
                while query.error is None and query.status()["state"] == "running":
                    time.sleep(0.2)
        except KeyboardInterrupt:
            click.echo("stopping after the current micro-batch ...", err=True)
        finally:
            status = query.status()
            query.stop()
        if query.error is not None:
            raise click.ClickException(f"query {query.name} failed: {query.error}")
        click.echo(
            f"query {query.name}: {status['rows_in']} rows in, {status['rows_out']} rows out, "
            f"{status['late_rows']} late, {status['rejected_rows']} rejected"
            + (f", {status['damaged_rows']} damaged skipped" if status["damaged_rows"] else "")
            + f"; watermark {status['watermark']}",
            err=True,
        )
        if "tasks" in status:  # a parallel query: its task processes' memory, each task's share
            click.echo(f"  tasks' memory: {_memory(status)}", err=True)
        for task in status.get("tasks", []):
            click.echo(
                f"  task {task['task']}: {task.get('rows_in', 0)} rows in,"
                f" {task.get('rows_out', 0)} rows out, {task.get('rows_per_s', 0.0)} rows/s;"
                f" watermark {task.get('watermark')}; state {task.get('state_bytes', 0)} bytes;"
                f" memory {_memory(task)}; pid {task.get('pid')};"
                f" offsets {json.dumps(task.get('offsets', {}))}",
                err=True,
            )


def _memory(status: dict[str, Any]) -> str:
    """Resident memory now and at the peak, as a status reports it (in MiB)."""
    now, peak = status.get("rss_bytes", 0), status.get("peak_rss_bytes", 0)
    return f"{now / 2**20:,.1f} MiB resident, peak {peak / 2**20:,.1f} MiB"


@main.command()
@click.option("--events", default=100_000, show_default=True, help="How many events to produce.")
@data_dir_option
@click.pass_context
@friendly_errors
def demo(ctx: click.Context, events: int, data_dir: str | None) -> None:
    """Produce sample click events into the log and answer a few questions in SQL."""
    from rich.progress import Progress

    from streamhouse.demo import run_demo

    settings = _settings(ctx)
    click.echo(f"StreamHouse demo: data directory {settings.data_dir}", err=True)
    with (
        StreamHouse(settings) as sh,
        Progress(transient=False, console=_stderr_console()) as progress,
    ):
        task = progress.add_task("producing events", total=events)
        started = time.perf_counter()

        def advance(n: int) -> None:
            progress.advance(task, n)

        def show(title: str, table: object) -> None:
            progress.stop()
            click.echo("")
            _print_table(table, title)  # type: ignore[arg-type]

        answers_start = [0.0]

        def on_progress(n: int) -> None:
            advance(n)
            answers_start[0] = time.perf_counter()

        run_demo(sh, events, progress=on_progress, show=show)
        elapsed = answers_start[0] - started
    click.echo(
        f"\nproduced {events} events in {elapsed:.2f} s ({events / max(elapsed, 1e-9):,.0f} events/s)",
        err=True,
    )
    click.echo(
        'try: streamhouse query "SELECT country, count(*) FROM events GROUP BY country"', err=True
    )


# -- storage check and repair ------------------------------------------------------------------


@main.command()
@click.argument("topic_name", metavar="[TOPIC]", required=False)
@data_dir_option
@click.pass_context
@friendly_errors
def compact(ctx: click.Context, topic_name: str | None, data_dir: str | None) -> None:
    """Run one storage-lifecycle pass now over TOPIC (default: every topic), then exit.

    Retention: retention.ms and retention.bytes move log start offsets, and segment objects no
    index row names any more are deleted once unreferenced for object_delete_delay_s.
    Compaction: the small objects of many flushes are merged into larger per-partition
    objects (up to compaction_target_bytes), their batches merged and recompressed
    (compaction_compression, or the topic's compression.type). `serve` runs the same pass
    every retention_check_interval_s.
    Iceberg: the new rows of streams declared WITH ('iceberg' = 'true') are appended to their
    Iceberg tables, exactly once (`serve` does every iceberg_freshness_s).
    """
    topics = None if topic_name is None else [topic_name]
    with _open(ctx) as sh:
        report = sh.enforce_retention(topics)
        compacted = sh.compact(topics)
        streams = None
        if topics is not None:  # the Iceberg streams of that topic
            from streamhouse.iceberg.tableflow import iceberg_streams

            streams = [d.name for d in iceberg_streams(sh.log) if d.topic == topic_name]
        appended = sh.append_iceberg(streams)
    for (name, partition), (old, new) in sorted(report.advanced.items()):
        click.echo(f"{name}-{partition}: log start offset {old} -> {new}", err=True)
    click.echo(
        f"retention: {len(report.advanced)} partition(s) advanced,"
        f" {len(report.deleted_objects)} object(s) deleted",
        err=True,
    )
    click.echo(
        f"compaction: {compacted.rows_replaced} index row(s) merged into"
        f" {len(compacted.objects_written)} object(s), {compacted.bytes_read:,} -> "
        f"{compacted.bytes_written:,} bytes in {compacted.seconds:.2f} s"
        + (f"; {len(compacted.busy)} partition(s) busy elsewhere" if compacted.busy else ""),
        err=True,
    )
    if sum(appended.rows.values()) or appended.busy or appended.failed:
        click.echo(
            f"iceberg: {sum(appended.rows.values()):,} row(s) appended to"
            f" {len(appended.rows)} table(s) in {appended.snapshots} snapshot(s),"
            f" {appended.rejected} to dead letters, in {appended.seconds:.2f} s"
            + (
                f"; {appended.expired_snapshots} snapshot(s) expired"
                if appended.expired_snapshots
                else ""
            )
            + (f"; {len(appended.busy)} stream(s) busy elsewhere" if appended.busy else ""),
            err=True,
        )
    for name, error in sorted(appended.failed.items()):
        click.echo(f"iceberg: stream {name} failed: {error}", err=True)
    if appended.failed:
        ctx.exit(1)


@main.command()
@click.option(
    "--rebuild-metadata",
    is_flag=True,
    help="Rebuild topics, partitions and offsets from the objects' footers into a fresh"
    " metadata store (the old SQLite file, or PostgreSQL tables, kept aside), then check.",
)
@click.option(
    "--delete-orphans",
    is_flag=True,
    help="Delete objects no metadata names that are older than --orphan-min-age.",
)
@click.option(
    "--orphan-min-age",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="Orphans younger than this are never deleted, and not reported if they hold offsets"
    " past the high watermarks (flushes in progress) (default: setting orphan_min_age_s, 3600).",
)
@data_dir_option
@click.pass_context
@friendly_errors
def fsck(
    ctx: click.Context,
    rebuild_metadata: bool,
    delete_orphans: bool,
    orphan_min_age: float | None,
    data_dir: str | None,
) -> None:
    """Check every segment object against the metadata; exit 1 if anything is wrong.

    Prints each damaged object, orphan (an object no metadata names), missing object and
    disagreement between footer and index, with topic/partition/offset ranges.
    """
    from streamhouse.log import fsck as checker
    from streamhouse.log.metadata import open_metadata, sqlite_path
    from streamhouse.log.objectstore import open_object_store
    from streamhouse.log.segment import SEGMENT_PREFIX

    settings = _settings(ctx, orphan_min_age_s=orphan_min_age)
    min_age = settings.orphan_min_age_s
    with open_object_store(settings) as store:
        if rebuild_metadata:
            with _progress("reading footers", "objects") as (on_start, advance):
                rebuilt = checker.rebuild_metadata(
                    settings, store, progress=advance, on_start=on_start
                )
            _report_rebuild(rebuilt)
        path = sqlite_path(settings)
        if path is not None and not path.exists():
            count = len(store.list(SEGMENT_PREFIX))
            if not count:
                raise click.ClickException(
                    f"no metadata store at {path} and no segment objects: not a data directory"
                )
            raise click.ClickException(
                f"metadata store {path} is missing ({count} segment object(s) exist):"
                " run `streamhouse fsck --rebuild-metadata`"
            )
        metadata = open_metadata(settings)
        try:
            with _progress("checking objects", "bytes") as (on_start, advance):
                report = checker.check(
                    store, metadata, orphan_min_age_s=min_age, progress=advance, on_start=on_start
                )
            noted = checker.write_missing_notes(store, report)
            deletion = checker.OrphanDeletion()
            if delete_orphans:
                deletion = checker.delete_orphans(store, metadata, report, orphan_min_age_s=min_age)
        finally:
            metadata.close()
    for key in noted:
        click.echo(
            f"noted: {key} is indexed at other offsets than written and had no sequence note;"
            " it is written now (a rebuild of lost metadata needs it)",
            err=True,
        )
    deleted = set(deletion.deleted)
    for finding in report.findings:
        key = finding.object_key
        if key in deleted:
            click.echo(f"deleted {finding}")
        elif key in deletion.kept and finding.kind is checker.FindingKind.ORPHAN:
            click.echo(f"kept {finding} [{deletion.kept[key]}]")
        else:
            click.echo(str(finding))
    rate = report.bytes / max(report.seconds, 1e-9) / 1e9
    remaining = [f for f in report.findings if f.object_key not in deleted]
    click.echo(
        f"checked {report.objects} object(s), {report.bytes / 1e6:,.1f} MB in"
        f" {report.seconds:.2f} s ({rate:.2f} GB/s): {len(report.findings)} finding(s)"
        + (f", {len(deleted)} orphan(s) deleted" if deleted else ""),
        err=True,
    )
    if report.young:
        click.echo(
            f"{len(report.young)} object(s) no metadata names are younger than {min_age:g} s"
            " and hold offsets past the high watermarks (flushes in progress): not reported",
            err=True,
        )
    if report.retiring:
        click.echo(
            f"{len(report.retiring)} object(s) no index row names any more await deletion by"
            " retention after their grace period: not reported",
            err=True,
        )
    if report.of_kind(checker.FindingKind.ORPHAN) and not report.topics:
        click.echo(
            "the metadata holds no topics: if it was lost, run `streamhouse fsck"
            " --rebuild-metadata` to rebuild it from these objects",
            err=True,
        )
    if remaining:
        ctx.exit(1)


def _report_rebuild(rebuilt: Any) -> None:
    click.echo(
        f"rebuilt the metadata from {rebuilt.objects} object(s): {len(rebuilt.topics)} topic(s),"
        f" {len(rebuilt.offsets)} partition(s) with records, {rebuilt.rows} index row(s)"
        + (f", {rebuilt.notes} sequence note(s)" if rebuilt.notes else "")
        + (
            f", {rebuilt.aborted_transactions} aborted transaction(s)"
            f" ({rebuilt.open_transactions} of them left open)"
            if rebuilt.aborted_transactions
            else ""
        ),
        err=True,
    )
    for (topic, partition), (start, end) in sorted(rebuilt.offsets.items()):
        click.echo(f"  {topic}/{partition}: offsets {start}-{end - 1}", err=True)
    for path in rebuilt.kept_aside:
        click.echo(f"the old metadata file is kept as {path}", err=True)
    if rebuilt.kept_schema is not None:
        click.echo(f"the old metadata tables are kept in schema {rebuilt.kept_schema}", err=True)
    for table, location in sorted(rebuilt.iceberg_tables.items()):
        click.echo(f"Iceberg table {table} registered again at {location}", err=True)
    for key in rebuilt.unreadable:
        click.echo(f"not rebuilt: {key} has a damaged footer", err=True)
    for key in rebuilt.overlapping:
        click.echo(f"not rebuilt: {key} holds offsets a newer object holds", err=True)
    for key in rebuilt.moved:
        click.echo(
            f"moved: {key} is indexed at other offsets than written (another writer's run"
            " was written with the same ones)",
            err=True,
        )
    for gap in rebuilt.gaps:
        click.echo(f"gap: no object holds {gap}", err=True)
    for (topic, partition), offset in sorted(rebuilt.uncertain.items()):
        click.echo(
            f"offsets may differ: {topic}/{partition} from offset {offset} on may not be the"
            " offsets producers were acknowledged with (runs written by concurrent writers at"
            " the same offsets, without a sequence note of where the store put them)",
            err=True,
        )
    click.echo("could not be rebuilt (the objects do not hold them):", err=True)
    for line in rebuilt.not_rebuilt():
        click.echo(f"  - {line}", err=True)


@contextlib.contextmanager
def _progress(
    description: str, unit: str
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """``(on_start(total), advance(n))`` driving a progress bar on stderr, if it is a terminal."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = _stderr_console()
    counts = (
        (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counts,
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=None)

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield on_start, advance


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


if __name__ == "__main__":
    main()
