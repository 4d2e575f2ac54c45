"""PostgreSQL metadata end to end: chosen by ``connect(metadata=...)``, ``STREAMHOUSE_METADATA``,
``streamhouse.toml`` or ``--metadata``; the log and SQL work on it as on SQLite.

(The metadata suite itself runs on both backends in test_metadata.py; several processes
producing through one PostgreSQL database are in test_durability.py.)"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import with_schema
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka_fixtures import KafkaServer

import streamhouse
from streamhouse.cli import main
from streamhouse.config import Settings
from streamhouse.errors import StorageError
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.sqlite import SQLiteMetadata


def test_connect_with_postgresql_metadata_produces_and_queries(
    tmp_path: Path, postgres_url: str
) -> None:
    with streamhouse.connect(tmp_path, metadata=postgres_url, linger_ms=1) as sh:
        assert isinstance(sh.log.metadata.inner, PostgresMetadata)
        sh.create_topic("clicks", partitions=2)
        produced = sh.produce("clicks", [{"user": i % 3, "n": i} for i in range(300)], key="k")
        assert produced.records == 300 and len(produced.offsets) == 1
        table = sh.sql(
            "SELECT user, count(*) AS c, sum(n) AS s FROM clicks GROUP BY user ORDER BY user"
        ).to_arrow_table()
        assert table.to_pylist() == [
            {"user": u, "c": 100, "s": sum(range(u, 300, 3))} for u in range(3)
        ]
    assert not (tmp_path / "metadata.sqlite3").exists()  # the catalog is in PostgreSQL
    with streamhouse.connect(tmp_path, metadata=postgres_url) as again:
        (partition,) = produced.offsets
        fetched = again.fetch("clicks", partition)
        assert fetched["offset"].to_pylist() == list(range(300))
        assert again.sql("SELECT count(*) AS c FROM clicks").to_arrow_table()["c"].to_pylist() == [
            300
        ]


def test_metadata_setting_precedence(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flag > STREAMHOUSE_METADATA > streamhouse.toml > SQLite in the data directory."""
    monkeypatch.delenv("STREAMHOUSE_METADATA", raising=False)
    toml = tmp_path / "streamhouse.toml"
    other = tmp_path / "from-toml.sqlite3"
    toml.write_text(f'metadata = "sqlite:///{other}"\n')
    assert Settings.load().metadata is None
    assert Settings.load(toml).metadata == f"sqlite:///{other}"
    monkeypatch.setenv("STREAMHOUSE_METADATA", postgres_url)
    assert Settings.load(toml).metadata == postgres_url
    assert Settings.load(toml, metadata="sqlite:///flag.db").metadata == "sqlite:///flag.db"
    with streamhouse.connect(tmp_path / "data") as sh:  # the environment picks PostgreSQL
        assert isinstance(sh.log.metadata.inner, PostgresMetadata)
        sh.create_topic("from-env")
    monkeypatch.delenv("STREAMHOUSE_METADATA")
    monkeypatch.chdir(tmp_path)  # streamhouse.toml is read from the working directory
    with streamhouse.connect(tmp_path / "data") as sh:
        assert isinstance(sh.log.metadata.inner, SQLiteMetadata)
        assert sh.log.metadata.inner.path == other
        assert sh.topics() == []


def _run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def test_cli_metadata_option(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMHOUSE_METADATA", raising=False)
    data = str(tmp_path / "data")
    created = _run(
        "topic", "create", "lines", "-p", "2", "--data-dir", data, "--metadata", postgres_url
    )
    assert created.exit_code == 0, created.output
    produced = _run(  # the group's option works as well as the command's
        "--metadata", postgres_url, "--data-dir", data, "produce", "lines", "-p", "1",
        input='{"a": 1}\n{"a": 2}\n{"a": 3}\n',
    )  # fmt: skip
    assert produced.exit_code == 0, produced.output
    listed = _run("-v", "--data-dir", data, "topic", "list", "--metadata", postgres_url)
    assert listed.exit_code == 0 and "lines" in listed.stdout, listed.output
    # -v shows StreamHouse's INFO lines, not the pool's three per metadata call
    assert logging.getLogger("psycopg.pool").level == logging.WARNING
    queried = _run(
        "--data-dir", data, "--metadata", postgres_url, "query", "SELECT sum(a) AS s FROM lines",
        "--format", "json",
    )  # fmt: skip
    assert queried.exit_code == 0, queried.output
    assert [json.loads(line) for line in queried.stdout.splitlines()] == [{"s": 6}]
    assert not (tmp_path / "data" / "metadata.sqlite3").exists()
    with streamhouse.connect(data, metadata=postgres_url) as sh:
        assert sh.fetch("lines", 1)["value"].to_pylist() == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']

    for url, message in (
        ("mysql://x", "Error: metadata URL 'mysql://x' is not supported"),
        ("postgresql://postgres@127.0.0.1:1/x", "Error: metadata store postgresql://postgres@"),
    ):
        failed = _run("--data-dir", data, "topic", "list", "--metadata", url)
        assert failed.exit_code == 1 and "Traceback" not in failed.output
        assert len(failed.stderr.splitlines()) == 1 and failed.stderr.startswith(message)


def test_two_servers_on_one_postgresql_database_share_a_partition(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two ``serve`` processes, one data directory and one PostgreSQL database: kafka-python
    producers on each write one partition at once; either server then serves all of it, at
    dense offsets without duplicates."""
    data = tmp_path / "data"
    with streamhouse.connect(data, metadata=postgres_url) as sh:
        sh.create_topic("shared", partitions=1)
    servers = [KafkaServer(data, args=["--metadata", postgres_url]) for _ in range(2)]
    try:
        for server in servers:
            server.start()

        def produce(n: int) -> None:
            producer = KafkaProducer(bootstrap_servers=servers[n].bootstrap, linger_ms=2)
            for i in range(300):
                producer.send("shared", f"s{n}-{i}".encode(), partition=0)
            producer.flush(timeout=60)
            producer.close()

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for server in servers:
            consumer = KafkaConsumer(
                bootstrap_servers=server.bootstrap,
                auto_offset_reset="earliest",
                consumer_timeout_ms=2000,
            )
            consumer.assign([TopicPartition("shared", 0)])
            got = [(m.offset, m.value) for m in consumer]
            consumer.close()
            assert [offset for offset, _ in got] == list(range(600)), server.log()
            assert sorted(v for _, v in got) == sorted(
                f"s{n}-{i}".encode() for n in range(2) for i in range(300)
            )
    finally:
        for server in servers:
            assert server.stop() == 0, server.log()
    assert not (data / "metadata.sqlite3").exists()


def test_a_search_path_of_no_existing_schema_is_refused_saying_so(postgres_database: str) -> None:
    """``?options=-csearch_path%3Dname`` picks a schema that exists; a typo is refused in one
    line that says what to do, not PostgreSQL's "no schema has been selected" alone."""
    missing = f"nowhere_{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError, match="no schema of the search_path exists") as info:
        PostgresMetadata(with_schema(postgres_database, missing))
    assert "\n" not in str(info.value) and missing in str(info.value)
