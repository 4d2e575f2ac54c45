"""Our own reads respect Kafka transactions: records committed, aborted and left open by a
confluent-kafka transactional producer against a real ``streamhouse serve``, then read by
``sh.fetch``, ``sh.sql`` (bounded), a continuous query, ``streamhouse consume`` and
``streamhouse query``: read_committed (the default) sees committed records only, and stops at
an open transaction; read_uncommitted sees every record. And ``sh.transaction()`` as Kafka
consumers see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import kafka_fixtures
import pyarrow as pa
import pytest
from confluent_kafka import Producer
from kafka_fixtures import KafkaServer
from test_kafka_transactions import eventually, read_all

import streamhouse
from streamhouse.errors import ConfigError, UnknownTopicError
from streamhouse.runtime.launch import start_query
from streamhouse.transaction import TransactionError

kafka_server = kafka_fixtures.kafka_server
new_topic = kafka_fixtures.new_topic

TIMEOUT = 30.0
REPO = Path(__file__).resolve().parent.parent


def _send(p: Producer, topic: str, prefix: str, n: int) -> list[str]:
    values = [f"{prefix}-{i}" for i in range(n)]
    for i, v in enumerate(values):
        p.produce(topic, json.dumps({"v": v, "n": i}).encode(), partition=i % 2)
    p.flush(TIMEOUT)
    return values


def _cli(server: KafkaServer, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "streamhouse", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        env=env,
        timeout=120,
        check=True,
    )
    return out.stdout.decode().splitlines()


@pytest.fixture
def transactions(kafka_server: KafkaServer, new_topic) -> dict[str, object]:
    """A topic holding a committed transaction, an aborted one (plain records written
    meanwhile), and an open one followed by more plain records; the open producer too."""
    topic = new_topic(2)
    tx = Producer(
        {
            "bootstrap.servers": kafka_server.bootstrap,
            "transactional.id": f"tx-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
            "transaction.timeout.ms": 120_000,
        }
    )
    tx.init_transactions(TIMEOUT)
    plain = Producer({"bootstrap.servers": kafka_server.bootstrap, "linger.ms": 5})
    tx.begin_transaction()
    committed = _send(tx, topic, "c", 10)
    tx.commit_transaction(TIMEOUT)
    tx.begin_transaction()
    aborted = _send(tx, topic, "a", 10)
    between = _send(plain, topic, "p", 4)
    tx.abort_transaction(TIMEOUT)
    tx.begin_transaction()
    open_ = _send(tx, topic, "o", 6)
    after = _send(plain, topic, "late", 4)  # past the last stable offset while it is open
    return {
        "topic": topic,
        "producer": tx,
        "committed": sorted(committed + between),
        "everything": sorted(committed + between + aborted + open_ + after),
        "finally": sorted(committed + between + open_ + after),
        "aborted": aborted,
    }


def _values(table: pa.Table) -> list[str]:
    return sorted(json.loads(v)["v"] for v in table["value"].to_pylist())


def test_fetch_and_sql_read_committed_by_default(
    kafka_server: KafkaServer, transactions: dict
) -> None:
    topic = transactions["topic"]
    with streamhouse.connect(kafka_server.data_dir) as sh:
        assert _values(sh.fetch(topic)) == transactions["committed"]
        everything = sh.fetch(topic, isolation_level="read_uncommitted")
        assert _values(everything) == transactions["everything"]
        # DuckDB answers the aggregate over the committed values
        committed = pa.table({"v": transactions["committed"]})  # noqa: F841 (DuckDB reads it)
        oracle = duckdb.sql(
            "SELECT count(*), sum(CAST(split_part(v, '-', 2) AS BIGINT)) FROM committed"
        ).fetchall()[0]
        got = sh.sql(f'SELECT count(*) AS c, sum(n) AS s FROM "{topic}"').to_arrow_table()
        assert (got["c"][0].as_py(), got["s"][0].as_py()) == oracle
        rows = sh.sql(f'SELECT v FROM "{topic}"').to_arrow_table()
        assert sorted(rows["v"].to_pylist()) == transactions["committed"]
        sh.sql("SET 'isolation.level' = 'read_uncommitted'")
        rows = sh.sql(f'SELECT v FROM "{topic}"').to_arrow_table()
        assert sorted(rows["v"].to_pylist()) == transactions["everything"]
        with pytest.raises(ConfigError, match="read_committed"):
            sh.sql("SET 'isolation.level' = 'dirty'")

    transactions["producer"].commit_transaction(TIMEOUT)
    with streamhouse.connect(kafka_server.data_dir) as sh:
        # EndTxn answers once decided; the last stable offset moves once markers are written
        assert (
            eventually(lambda: _values(sh.fetch(topic)), transactions["finally"])
            == (transactions["finally"])
        )
        rows = sh.sql(f'SELECT v FROM "{topic}"').to_arrow_table()
        assert sorted(rows["v"].to_pylist()) == transactions["finally"]


def test_a_continuous_query_waits_for_the_open_transaction(
    kafka_server: KafkaServer, transactions: dict, tmp_path: Path
) -> None:
    topic = transactions["topic"]
    seen: list[str] = []
    raw: list[str] = []
    with streamhouse.connect(kafka_server.data_dir) as sh:
        query = start_query(
            sh.engine,
            f'SELECT v FROM "{topic}"',
            name=f"q{uuid.uuid4().hex[:6]}",
            state_root=tmp_path / "queries",
            on_results=lambda table: seen.extend(table["v"].to_pylist()),
            start=False,
        )
        uncommitted = start_query(
            sh.engine,
            f"SET 'isolation.level' = 'read_uncommitted'; SELECT v FROM \"{topic}\"",
            name=f"u{uuid.uuid4().hex[:6]}",
            state_root=tmp_path / "queries",
            on_results=lambda table: raw.extend(table["v"].to_pylist()),
            start=False,
        )
        try:
            query.run_until_caught_up()
            assert sorted(seen) == transactions["committed"]
            uncommitted.run_until_caught_up()
            assert sorted(raw) == transactions["everything"]
            transactions["producer"].commit_transaction(TIMEOUT)
            eventually(lambda: _values(sh.fetch(topic)), transactions["finally"])
            query.run_until_caught_up()
            assert sorted(seen) == transactions["finally"]  # the open ones were not skipped
        finally:
            query.stop()
            uncommitted.stop()


def test_consume_and_query_commands_read_committed(
    kafka_server: KafkaServer, transactions: dict
) -> None:
    topic = transactions["topic"]
    consume = ["consume", topic, "--from-beginning", "--timeout", "0"]
    lines = _cli(kafka_server, *consume)
    assert sorted(json.loads(line)["v"] for line in lines) == transactions["committed"]
    lines = _cli(kafka_server, *consume, "--isolation-level", "read_uncommitted")
    assert sorted(json.loads(line)["v"] for line in lines) == transactions["everything"]
    sql = f'SELECT v FROM "{topic}"'
    lines = _cli(kafka_server, "query", sql, "--format", "json")
    assert sorted(json.loads(line)["v"] for line in lines) == transactions["committed"]
    lines = _cli(
        kafka_server, "query", sql, "--format", "json", "--isolation-level", "read_uncommitted"
    )
    assert sorted(json.loads(line)["v"] for line in lines) == transactions["everything"]
    transactions["producer"].abort_transaction(TIMEOUT)
    expected = [v for v in transactions["finally"] if not v.startswith("o-")]  # aborted now
    with streamhouse.connect(kafka_server.data_dir) as sh:
        eventually(lambda: _values(sh.fetch(topic)), expected)
    lines = _cli(kafka_server, *consume)
    assert sorted(json.loads(line)["v"] for line in lines) == expected


def _consume(server: KafkaServer, topics: list[str], isolation: str) -> list[str]:
    """Every value a consumer of ``isolation`` reads from ``topics``, as 'topic:value'."""
    return sorted(f"{t}:{v.decode()}" for t in topics for v in read_all(server, t, 2, isolation))


def test_python_api_transaction_commits_several_topics_atomically(
    kafka_server: KafkaServer, new_topic
) -> None:
    orders, audit = new_topic(2), new_topic(2)
    with streamhouse.connect(kafka_server.data_dir) as sh:
        with sh.transaction() as txn:
            txn.produce(orders, ["o1", "o2", "o3"])
            txn.produce(audit, ["placed 3"])
            txn.produce(orders, ["o4"], partition=1)  # a second batch on a partition
        with pytest.raises(RuntimeError, match="boom"), sh.transaction() as txn:
            txn.produce(orders, ["x1", "x2"])
            txn.produce(audit, ["placed x"])
            raise RuntimeError("boom")
        first = sh.transaction("same-id")
        first.produce(orders, ["zombie"])
        with sh.transaction("same-id") as second:  # fences the first, aborting its records
            second.produce(audit, ["fenced"])
        with pytest.raises(TransactionError, match="fenced"):
            first.commit()
        with pytest.raises(UnknownTopicError):
            sh.transaction().produce("no-such-topic", ["v"])
        assert sorted(sh.fetch(orders)["value"].to_pylist()) == [b"o1", b"o2", b"o3", b"o4"]
    committed = [f"{orders}:o{i}" for i in range(1, 5)] + [f"{audit}:placed 3", f"{audit}:fenced"]
    aborted = [f"{orders}:x1", f"{orders}:x2", f"{audit}:placed x", f"{orders}:zombie"]
    assert _consume(kafka_server, [orders, audit], "read_committed") == sorted(committed)
    everything = _consume(kafka_server, [orders, audit], "read_uncommitted")
    assert everything == sorted(committed + aborted)
