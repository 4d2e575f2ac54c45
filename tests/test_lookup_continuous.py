"""Continuous lookup joins against the real PostgreSQL (``'connector'='jdbc'``): each micro-batch's
probe rows joined at processing time, composite keys, random micro-batch splits and a restart
(output equal to DuckDB's join), a crash between output and checkpoint replayed with the
processing time it recorded (exactly once), and a database that is gone (an error, no row)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest
from test_query_restart import Crash, crash_after_sink_write
from window_cases import start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC


@pytest.fixture
def dim_url(postgres_url: str) -> str:
    """``dim2``: keys (a, b) for a in 0..59, b in 'x', 'y:z' (none where (a + len(b)) % 5 == 0)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE dim2 (a INTEGER, b TEXT, name TEXT, price DOUBLE PRECISION,"
            " PRIMARY KEY (a, b))"
        )
        with conn.cursor().copy("COPY dim2 (a, b, name, price) FROM STDIN") as copy:
            for a in range(60):
                for b in ("x", "y:z"):
                    if (a + len(b)) % 5:
                        copy.write_row((a, b, f"n{a}{b}" if a % 4 else None, a * 0.5))
    return postgres_url


@pytest.fixture
def sh(tmp_path: Path, dim_url: str) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(
            "CREATE TABLE dim (a INT, b STRING, name STRING, price DOUBLE,"
            " PRIMARY KEY (a, b) NOT ENFORCED) WITH ('connector'='jdbc',"
            f" 'url'='{dim_url}', 'table-name'='dim2',"
            " 'lookup.cache.max-rows'='50', 'lookup.cache.ttl'='1 min')"
        )
        sh.sql("CREATE STREAM s (id BIGINT, a INT, b STRING, p AS PROCTIME()) WITH (topic = 's')")
        yield sh


def probes(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "a": rng.randrange(-3, 70) if rng.random() > 0.03 else None,
            "b": rng.choice(["x", "y:z", "y", None]),
        }
        for i in range(n)
    ]


def oracle(url: str, rows: list[dict], side: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        dim = conn.execute("SELECT a, b, name, price FROM dim2").fetchall()
    db = duckdb.connect()
    db.execute("CREATE TABLE dim (a INT, b TEXT, name TEXT, price DOUBLE)")
    db.executemany("INSERT INTO dim VALUES (?, ?, ?, ?)", dim)
    db.register(
        "s",
        pa.Table.from_pylist(
            rows, pa.schema([("id", pa.int64()), ("a", pa.int32()), ("b", pa.string())])
        ),
    )
    return db.execute(
        f"SELECT s.id, s.a, s.b, d.name, d.price FROM s {side} JOIN dim d"
        " ON s.a = d.a AND s.b = d.b ORDER BY s.id"
    ).fetchall()


QUERY = """SET 'max-batch-records' = '{batch}';
INSERT INTO out
SELECT s.id, s.a, s.b, d.name, d.price, s.p
FROM s {side} JOIN dim FOR SYSTEM_TIME AS OF s.p AS d ON s.a = d.a AND s.b = d.b
"""
COLUMNS = ["id", "a", "b", "name", "price"]


def out_rows(sh: StreamHouse) -> list[tuple]:
    return sorted(tuple(r[c] for c in COLUMNS) for r in topic_rows(sh, "out"))


@pytest.mark.parametrize("side", ["INNER", "LEFT"])
def test_continuous_lookup_join_on_a_composite_key_equals_duckdb(
    sh: StreamHouse, dim_url: str, side: str
) -> None:
    """Random micro-batch sizes, rows produced while it runs, and a restart midway."""
    rng = random.Random(len(side))
    rows = probes(400, seed=len(side))
    sql = QUERY.format(batch=rng.randrange(7, 60), side=side)
    sh.produce("s", rows[:150])
    query = start_paused(sh, sql, "lk")
    ticks = iter(range(T0, T0 + 10_000_000, 1000))
    query.clock = lambda: next(ticks)
    query.run_until_caught_up()
    batches = query.status()["batches"]
    query.stop()
    sh.produce("s", rows[150:])
    query = start_paused(sh, sql, "lk")
    try:
        query.run_until_caught_up()
        assert query.status()["rows_in"] == len(rows)  # resumed: none read twice
    finally:
        query.stop()
    assert batches > 1
    assert out_rows(sh) == sorted(oracle(dim_url, rows, side))
    # p: the wall clock at the micro-batch that read the row, one reading per batch
    stamps = [r["p"] for r in topic_rows(sh, "out")]
    assert len(set(stamps)) > 1


def test_a_replayed_micro_batch_keeps_its_processing_time(
    sh: StreamHouse, dim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the output is written and before the checkpoint: the replay reads the
    clock again, yet its rows carry the recorded time: the same rows, written again in a
    transaction that commits (the first attempt's is aborted)."""
    rows = probes(60, seed=5)
    sh.produce("s", rows)
    crash_after_sink_write(monkeypatch, 1)
    sql = QUERY.format(batch=1000, side="LEFT")
    query = start_paused(sh, sql, "lk")
    query.clock = lambda: T0
    with pytest.raises(Crash):
        query.run_until_caught_up()
    query.store.close()
    monkeypatch.undo()
    first = topic_rows(sh, "out", "read_uncommitted")
    assert len(first) == len(rows)
    assert topic_rows(sh, "out") == []  # not committed
    query = start_paused(sh, sql, "lk")
    query.clock = lambda: T0 + 60_000  # a minute later: the replay must not take this time
    replayed: list[pa.Table] = []
    query._on_results = replayed.append
    try:
        query.run_until_caught_up()
    finally:
        query.stop()
    assert topic_rows(sh, "out") == first  # committed once, as the first attempt wrote them
    assert {r["p"] for r in first} == {"2026-01-01 00:00:00"}
    again = pa.concat_tables(replayed)
    assert again.num_rows == len(rows)  # the same rows, with the time the batch recorded
    assert set(again.column("p").cast(pa.int64()).to_pylist()) == {T0}
    assert out_rows(sh) == sorted(oracle(dim_url, rows, "LEFT"))


def test_a_database_that_is_gone_fails_the_query_with_no_row(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(
            "CREATE TABLE dim (a INT, name STRING) WITH ('connector'='jdbc',"
            " 'url'='postgresql://postgres@127.0.0.1:1/none', 'table-name'='dim',"
            " 'lookup.max-retries'='1')"
        )
        sh.sql("CREATE STREAM s (id BIGINT, a INT, p AS PROCTIME()) WITH (topic = 's')")
        sh.produce("s", [{"id": 1, "a": 1}])
        sql = (
            "INSERT INTO out SELECT s.id, d.name FROM s LEFT JOIN dim"
            " FOR SYSTEM_TIME AS OF s.p AS d ON s.a = d.a"
        )
        query = start_paused(sh, sql, "gone")
        try:
            with pytest.raises(Exception, match=r"dim: the database did not answer after 2"):
                query.run_until_caught_up()
        finally:
            query.stop()
        assert topic_rows(sh, "out") == []


def test_continuous_lookup_refusals_name_the_column(sh: StreamHouse) -> None:
    sh.sql("CREATE STREAM e (id BIGINT, a INT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts)")
    with pytest.raises(SqlError, match="takes a PROCTIME.. column of e, not ts"):
        sh.start(
            "INSERT INTO out SELECT e.id, d.name FROM e JOIN dim FOR SYSTEM_TIME AS OF e.ts"
            " AS d ON e.a = d.a AND e.id = d.b"
        )
    with pytest.raises(SqlError, match="No field named d.c"):
        sh.start(
            "INSERT INTO out SELECT s.id, d.name FROM s JOIN dim FOR SYSTEM_TIME AS OF s.p"
            " AS d ON s.a = d.c"
        )


def test_bounded_lookup_join_on_a_composite_key_equals_duckdb(
    sh: StreamHouse, dim_url: str
) -> None:
    rows = probes(300, seed=9)
    sh.produce("s", rows)
    table = sh.sql(
        "SELECT s.id, s.a, s.b, d.name, d.price FROM s LEFT JOIN dim"
        " FOR SYSTEM_TIME AS OF s.p AS d ON s.b = d.b AND s.a = d.a"
    ).to_arrow_table()
    got = sorted(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))
    assert got == sorted(oracle(dim_url, rows, "LEFT"))


def test_a_star_of_a_lookup_and_a_versioned_table_equals_duckdb(
    sh: StreamHouse, dim_url: str
) -> None:
    """One probe stream joined with a lookup table at processing time (``AS OF s.p``) and a
    versioned table at event time (``AS OF s.ts``): probe rows wait for the watermark, then
    meet both; random micro-batch sizes and a restart; DuckDB's join and ASOF join agree,
    continuously and bounded."""
    sh.sql(
        "CREATE STREAM e (id BIGINT, a INT, b STRING, k STRING, ts TIMESTAMP(3),"
        " p AS PROCTIME(), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (topic = 'e')"
    )
    sh.sql(
        "CREATE STREAM r (k STRING, t TIMESTAMP(3), w BIGINT, PRIMARY KEY (k) NOT ENFORCED,"
        " WATERMARK FOR t AS t) WITH (topic = 'r')"
    )
    rng = random.Random(31)
    rows = [
        {**row, "k": rng.choice("xyz"), "ts": T0 + i * 500 - rng.randrange(1_000)}
        for i, row in enumerate(probes(300, seed=31))
    ]
    versions = [
        {"k": k, "t": T0 + s * 500, "w": rng.randrange(100)}
        for s in range(0, 310, 7)
        for k in rng.sample("xyz", 2)
    ]
    sql = (
        "SELECT e.id, e.a, e.b, d.name, d.price, r.w FROM e JOIN dim FOR SYSTEM_TIME AS OF e.p"
        " AS d ON e.a = d.a AND e.b = d.b LEFT JOIN r FOR SYSTEM_TIME AS OF e.ts ON e.k = r.k"
    )
    sh.produce("r", versions[: len(versions) // 2])
    sh.produce("e", rows[:150])
    query = start_paused(sh, f"SET 'max-batch-records' = '23';\nINSERT INTO out {sql}", "star")
    query.run_until_caught_up()
    query.stop()
    sh.produce("r", versions[len(versions) // 2 :])
    sh.produce("e", rows[150:])
    query = start_paused(sh, f"SET 'max-batch-records' = '41';\nINSERT INTO out {sql}", "star")
    try:
        query.run_until_caught_up(final=True)
        assert query.status()["late_rows"] == 0
    finally:
        query.stop()
    with psycopg.connect(dim_url) as conn:
        dim = conn.execute("SELECT a, b, name, price FROM dim2").fetchall()
    db = duckdb.connect()
    db.execute("CREATE TABLE dim (a INT, b TEXT, name TEXT, price DOUBLE)")
    db.executemany("INSERT INTO dim VALUES (?, ?, ?, ?)", dim)
    db.register("e", pa.Table.from_pylist(rows))
    db.register("r", pa.Table.from_pylist(versions))
    want = db.execute(
        "SELECT e.id, e.a, e.b, d.name, d.price, r.w FROM e JOIN dim d ON e.a = d.a"
        " AND e.b = d.b ASOF LEFT JOIN r ON e.k = r.k AND e.ts >= r.t ORDER BY e.id"
    ).fetchall()
    columns = ["id", "a", "b", "name", "price", "w"]
    got = sorted(tuple(r[c] for c in columns) for r in topic_rows(sh, "out"))
    assert got == want and len(want) > 60 and any(w[-1] is None for w in want)
    bounded = sh.sql(sql).to_arrow_table().to_pylist()
    assert sorted(tuple(r[c] for c in columns) for r in bounded) == want
