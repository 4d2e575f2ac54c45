"""``CREATE TEMPORARY STREAM | TABLE | VIEW``: objects of one session, never in the catalog.

The session is a ``StreamHouse`` connection, one CLI invocation, or one ``.sql`` file of a
continuous query. Answers are checked against DuckDB over the rows produced; the continuous
query runs in random micro-batches with a restart, re-declaring its temporary objects.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from window_cases import start_paused, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import SqlError, UnknownStreamError

N = 400
TEMPORARY_DDL = """
CREATE TEMPORARY TABLE clicks (
    user_id INT, page STRING, ts TIMESTAMP(3),
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (topic = 'click-events');
CREATE TEMPORARY VIEW page_views AS SELECT user_id, ts FROM clicks WHERE page <> 'home';
"""
COUNTS = (
    "SELECT user_id, window_start, COUNT(*) AS views FROM TABLE(TUMBLE(TABLE page_views, "
    "DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY user_id, window_start, window_end"
)
ORACLE = """
    SELECT user_id, epoch_ms(time_bucket(INTERVAL 10 SECOND, ts)) AS window_start,
           COUNT(*) AS views
    FROM clicks WHERE page <> 'home' GROUP BY 1, 2"""


def _events(seed: int) -> list[dict]:
    rng = random.Random(seed)
    pages = ["home", "cart", "search", "item"]
    return [
        {
            "user_id": rng.randrange(5),
            "page": rng.choice(pages),
            "ts": f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}.{rng.randrange(1000):03d}",
        }
        for i in range(N)
    ]


def _oracle(events: list[dict]) -> list[tuple]:
    clicks = pa.Table.from_pylist(events).set_column(
        2, "ts", pa.array([e["ts"] for e in events]).cast(pa.timestamp("ms"))
    )
    con = duckdb.connect()
    con.register("clicks", clicks)
    return sorted(con.execute(ORACLE).fetchall())


def _rows(records: list[dict]) -> list[tuple]:
    return sorted((r["user_id"], to_ms(r["window_start"]), r["views"]) for r in records)


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.create_topic("click-events", partitions=3)
        yield conn


def test_bounded_in_the_connection_and_not_in_the_catalog(sh: StreamHouse, tmp_path: Path) -> None:
    events = _events(1)
    sh.produce("click-events", events)
    sh.sql(TEMPORARY_DDL)
    assert _rows(sh.sql(COUNTS).to_arrow_table().to_pylist()) == _oracle(events)
    assert sh.log.metadata.list_catalog() == []
    shown = sh.sql("SHOW TABLES").to_arrow_table().to_pylist()
    assert [(r["name"], r["kind"]) for r in shown] == [
        ("clicks", "temporary table"),
        ("page_views", "temporary view"),
    ]
    sh.sql("DROP TEMPORARY VIEW page_views")
    with pytest.raises(UnknownStreamError, match="'page_views'"):
        sh.sql("SELECT * FROM page_views")
    sh.sql("DROP TEMPORARY TABLE IF EXISTS page_views")  # gone already: no error
    sh.close()
    other = streamhouse.connect(tmp_path / "data")  # another session: nothing left
    try:
        with pytest.raises(UnknownStreamError, match="'clicks'"):
            other.sql("SELECT * FROM clicks")
    finally:
        other.close()


def _refusal(sh: StreamHouse, sql: str) -> tuple[str, int | None, int | None]:
    """The message, line and column of the SqlError ``sql`` raises."""
    with pytest.raises(SqlError) as caught:
        sh.sql(sql)
    return caught.value.message, caught.value.line, caught.value.column


def test_name_clashes_are_errors(sh: StreamHouse) -> None:
    sh.sql("CREATE VIEW kept AS SELECT 1 AS a")
    assert _refusal(sh, "SELECT 1;\nCREATE TEMPORARY VIEW kept AS SELECT 2 AS a") == (
        "view 'kept' exists in the catalog: a temporary view of the same name would shadow it;"
        " choose another name",
        2,
        23,
    )
    sh.sql("CREATE TEMPORARY VIEW mine AS SELECT 1 AS a")
    with pytest.raises(SqlError, match="^temporary view 'mine' already exists"):
        sh.sql("CREATE TEMPORARY VIEW mine AS SELECT 2 AS a")
    sh.sql("CREATE TEMPORARY VIEW IF NOT EXISTS mine AS SELECT 2 AS a")
    assert sh.sql("SELECT a FROM mine").to_arrow_table()["a"].to_pylist() == [1]
    sh.sql("CREATE OR REPLACE TEMPORARY VIEW mine AS SELECT 3 AS a")
    assert sh.sql("SELECT a FROM mine").to_arrow_table()["a"].to_pylist() == [3]
    with pytest.raises(SqlError, match="^a temporary view 'mine' exists in this session: DROP"):
        sh.sql("CREATE VIEW mine AS SELECT 4 AS a")
    with pytest.raises(SqlError, match="^'mine' is a temporary view: DROP TEMPORARY VIEW mine"):
        sh.sql("DROP VIEW mine")
    with pytest.raises(UnknownStreamError, match="^temporary view 'kept' does not exist"):
        sh.sql("DROP TEMPORARY VIEW kept")
    with pytest.raises(SqlError, match="CREATE TEMPORARY MATERIALIZED VIEW is not supported"):
        sh.sql("CREATE TEMPORARY MATERIALIZED VIEW m AS SELECT a FROM mine")
    with pytest.raises(UnknownStreamError, match="'nowhere'"):
        sh.sql("CREATE TEMPORARY VIEW bad AS SELECT * FROM nowhere")
    assert _refusal(sh, "CREATE VIEW lasting AS SELECT a FROM mine") == (
        "a view in the catalog cannot read temporary view 'mine' (the view outlives this"
        " session): CREATE TEMPORARY VIEW instead",
        1,
        38,
    )
    assert [e.name for e in sh.log.metadata.list_catalog()] == ["kept"]


def test_continuous_file_declares_its_own_session(sh: StreamHouse, tmp_path: Path) -> None:
    """The file's temporary objects are declared again at each start (no clash with the last
    run), stay out of the catalog and out of the connection; random micro-batches, a restart,
    every window once."""
    events = _events(2)
    sh.produce("click-events", events[: N // 2])
    path = tmp_path / "views.sql"
    path.write_text(f"{TEMPORARY_DDL}\nINSERT INTO views_out {COUNTS};\n")
    rng = random.Random(7)
    query = start_paused(sh, str(path), "views")
    for _ in range(3):
        query.step(max_records=rng.randrange(1, 60))
    query.stop()
    assert sh.log.metadata.list_catalog() == []
    with pytest.raises(UnknownStreamError, match="'page_views'"):
        sh.sql("SELECT * FROM page_views")
    sh.produce("click-events", events[N // 2 :])
    query = start_paused(sh, str(path), "views")
    try:
        while query.step(max_records=rng.randrange(1, 60)):
            pass
        query.run_until_caught_up(final=True)
        assert query.status()["error"] is None
    finally:
        query.stop()
    assert _rows(topic_rows(sh, "views_out")) == _oracle(events)


def test_continuous_query_sees_the_connections_temporaries(sh: StreamHouse) -> None:
    events = _events(3)
    sh.produce("click-events", events)
    sh.sql(TEMPORARY_DDL)
    query = sh.start(f"INSERT INTO conn_out {COUNTS}", name="conn")
    try:
        query.run_until_caught_up(final=True)
        assert query.status()["error"] is None
    finally:
        query.stop()
    assert _rows(topic_rows(sh, "conn_out")) == _oracle(events)


def test_cli_invocation_is_a_session(tmp_path: Path) -> None:
    data = tmp_path / "data"
    events = _events(4)
    with streamhouse.connect(data, linger_ms=1) as conn:
        conn.create_topic("click-events", partitions=2)
        conn.produce("click-events", events)
    runner = CliRunner()
    result = runner.invoke(
        main, ["--data-dir", str(data), "query", f"{TEMPORARY_DDL} {COUNTS}", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in result.stdout.splitlines()]
    assert _rows(got) == _oracle(events)
    result = runner.invoke(main, ["--data-dir", str(data), "query", "SELECT * FROM page_views"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: unknown stream, view or topic 'page_views' (line 1, column 15)"
    ]
