"""The ``streamhouse`` command: thin click commands over the Python API.

Tables and results go to stdout; progress, logs and errors go to stderr. Every command takes
``--data-dir`` (default ``$STREAMHOUSE_DATA_DIR`` or ``./streamhouse-data``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
import pyarrow as pa

from streamhouse.config import DEFAULT_DATA_DIR, Settings
from streamhouse.connection import StreamHouse
from streamhouse.errors import StreamHouseError

log = logging.getLogger("streamhouse")


def _settings(ctx: click.Context, **overrides: Any) -> Settings:
    data_dir = ctx.find_root().params.get("data_dir_root")
    local = ctx.params.get("data_dir")
    return Settings.load(data_dir=Path(local or data_dir or DEFAULT_DATA_DIR), **overrides)


def _open(ctx: click.Context) -> StreamHouse:
    return StreamHouse(_settings(ctx))


def data_dir_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        envvar="STREAMHOUSE_DATA_DIR",
        help="Data directory (default ./streamhouse-data).",
    )(f)


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
    """Create topic NAME."""
    config = {}
    for item in configs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        config[key.strip()] = value.strip()
    with _open(ctx) as sh:
        info = sh.create_topic(name, partitions, config)
    click.echo(f"created topic {info.name} with {info.partitions} partition(s)", err=True)


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
                table = sh.fetch(topic_name, p, positions[p])
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
@data_dir_option
@click.pass_context
@friendly_errors
def query(ctx: click.Context, sql: str, fmt: str, output: str | None, data_dir: str | None) -> None:
    """Run SQL over the log as of now and print the answer (SQL '-' reads it from stdin)."""
    if sql == "-":
        sql = sys.stdin.read()
    with _open(ctx) as sh:
        relation = sh.sql(sql)
        table = relation.to_arrow_table()
        stats = getattr(relation, "stats", None)
    if stats is not None and stats.rejected:
        click.echo(
            f"warning: {len(stats.rejected)} record(s) did not fit the schema and were left out",
            err=True,
        )
    _write_result(table, fmt, output)


def _write_result(table: pa.Table, fmt: str, output: str | None) -> None:
    if fmt == "table":
        if output is None:
            _print_table(table)
        else:
            with open(output, "w", encoding="utf-8") as fh:
                _print_table(table, file=fh)
        return
    sink = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        if fmt == "json":
            for row in table.to_pylist():
                sink.write(json.dumps(row, default=str, ensure_ascii=False).encode() + b"\n")
        elif fmt == "csv":
            import pyarrow.csv as pa_csv

            pa_csv.write_csv(table, sink)
        else:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


def _print_table(table: pa.Table, title: str | None = None, file: Any = None) -> None:
    """Print ``table`` with rich to stdout (or ``file``, unwrapped); the row count to stderr."""
    from rich.console import Console
    from rich.table import Table

    view = Table(title=title, title_justify="left", header_style="bold")
    for field in table.schema:
        numeric = (
            pa.types.is_integer(field.type)
            or pa.types.is_floating(field.type)
            or pa.types.is_decimal(field.type)
        )
        view.add_column(field.name, justify="right" if numeric else "left")
    for row in table.to_pylist():
        view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
    console = Console(soft_wrap=True) if file is None else Console(file=file, width=1 << 14)
    console.print(view)
    click.echo(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})", err=True)


# -- server and demo ---------------------------------------------------------------------------


@main.command()
@click.option("--host", default=None, help="Listen address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Kafka protocol port (default 9092).")
@click.option(
    "--advertised-host", default=None, help="Host advertised to clients (default 127.0.0.1)."
)
@click.option(
    "--auto-create-topics/--no-auto-create-topics",
    default=None,
    help="Create topics on first use, like Kafka.",
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
    auto_create_topics: bool | None,
    queries_dir: str | None,
    data_dir: str | None,
) -> None:
    """Serve the Kafka protocol over the log (and run continuous queries) until Ctrl-C."""
    import asyncio
    import contextlib
    import signal

    from streamhouse.kafka.server import serve as serve_kafka

    settings = _settings(
        ctx,
        host=host,
        port=port,
        advertised_host=advertised_host,
        auto_create_topics=auto_create_topics,
    )
    with StreamHouse(settings) as sh:
        for path in sorted(Path(queries_dir).glob("*.sql")) if queries_dir else []:
            query = sh.start(path)
            log.warning("continuous query %s running from %s", query.name, path)
        for query in sh.start_materialized_views():
            log.warning("materialized view %s running", query.name)

        async def until_signalled() -> None:
            loop = asyncio.get_running_loop()
            serving = asyncio.create_task(serve_kafka(sh.log, settings))
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, serving.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await serving

        asyncio.run(until_signalled())


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
            f"{status['late_rows']} late, {status['rejected_rows']} rejected; "
            f"watermark {status['watermark']}",
            err=True,
        )


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


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


if __name__ == "__main__":
    main()
