"""Flink's ``/*+ OPTIONS(...) */`` hints are applied, bounded and continuously; every other
hint, and every option StreamHouse does not have, is refused by name (never read and ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import continuous_rows, start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

GOOD = [{"a": 1, "b": "x"}, {"a": 3, "b": "z"}]
BAD = {"a": "not a number", "b": "y"}


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql("CREATE STREAM s (a INT, b STRING) WITH (topic = 's', format = 'json')")
        conn.produce("s", [GOOD[0], BAD, GOOD[1]])
        yield conn


def by_a(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["a"])


def test_ignore_parse_errors_true_leaves_the_bad_row_out(sh: StreamHouse) -> None:
    sql = "SELECT a, b FROM s /*+ OPTIONS('json.ignore-parse-errors'='true') */"
    assert by_a(sh.sql(sql).to_arrow_table().to_pylist()) == GOOD
    assert by_a(continuous_rows(sh, sql, "q", batch=1)) == GOOD


def test_ignore_parse_errors_false_fails_on_the_bad_row(sh: StreamHouse) -> None:
    sql = "SELECT a, b FROM s /*+ OPTIONS('json.ignore-parse-errors'='false') */"
    with pytest.raises(SqlError, match=r"'s' does not parse \(partition 0 offset 1"):
        sh.sql(sql).to_arrow_table()
    query = start_paused(sh, f"INSERT INTO out {sql}", "q")
    try:
        assert query.step(max_records=1)  # the good first row
        with pytest.raises(SqlError, match="'json.ignore-parse-errors' is 'false'"):
            query.step(max_records=1)
        assert query.status()["offsets"] == {0: 1}  # the failed batch is not committed
    finally:
        query.stop()
    assert topic_rows(sh, "out") == [GOOD[0]]


def test_topic_option_reads_another_topic(sh: StreamHouse) -> None:
    sh.create_topic("s-replay", 1)
    sh.produce("s-replay", [{"a": 7, "b": "r"}])
    sql = "SELECT a, b FROM s /*+ OPTIONS('topic'='s-replay', 'format'='json') */"
    assert sh.sql(sql).to_arrow_table().to_pylist() == [{"a": 7, "b": "r"}]
    assert continuous_rows(sh, sql, "q", batch=1) == [{"a": 7, "b": "r"}]


def test_startup_mode_latest_offset_skips_what_is_there(sh: StreamHouse) -> None:
    sql = "SELECT a, b FROM s /*+ OPTIONS('scan.startup.mode'='latest-offset') */"
    query = start_paused(sh, f"INSERT INTO out {sql}", "q")
    try:
        sh.produce("s", [{"a": 5, "b": "new"}])
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    assert topic_rows(sh, "out") == [{"a": 5, "b": "new"}]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT /*+ BROADCAST(s) */ a FROM s", "hint BROADCAST is not supported"),
        (
            "SELECT a FROM s /*+ OPTIONS('sink.parallelism'='2') */",
            "option 'sink.parallelism' is not supported",
        ),
        ("SELECT a FROM s /*+ OPTIONS('format'='csv') */", "format 'csv' is not supported"),
        (
            "SELECT a FROM s /*+ OPTIONS('json.ignore-parse-errors'='maybe') */",
            "json.ignore-parse-errors is true or false, not 'maybe'",
        ),
        (
            "INSERT INTO t /*+ OPTIONS('topic'='x') */ SELECT a FROM s",
            "an OPTIONS hint applies to a stream or topic a query reads",
        ),
        (
            "SELECT x.a FROM s /*+ OPTIONS('topic'='s') */ AS x "
            "JOIN s /*+ OPTIONS('topic'='t') */ AS y ON x.a = y.a",
            "two references of 's' have different OPTIONS hints",
        ),
        ("SELECT a FROM s /*+ OPTIONS('topic'='nowhere') */", "'nowhere'"),
    ],
)
def test_hints_it_cannot_apply_are_refused(sh: StreamHouse, sql: str, message: str) -> None:
    with pytest.raises(SqlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sh.sql(sql).to_arrow_table()
    if sql.startswith("SELECT"):  # continuously too, when the query starts
        with pytest.raises(SqlError, match=message.replace("(", r"\(").replace(")", r"\)")):
            sh.start(f"INSERT INTO out {sql}", name="refused").stop()


def test_declared_options_apply_and_a_hint_overrides_them(sh: StreamHouse) -> None:
    sh.sql(
        "CREATE STREAM strict (a INT, b STRING) WITH (topic = 's', "
        "'json.ignore-parse-errors' = 'false')"
    )
    with pytest.raises(SqlError, match="'strict' does not parse"):
        sh.sql("SELECT a, b FROM strict").to_arrow_table()
    lenient = "SELECT a, b FROM strict /*+ OPTIONS('json.ignore-parse-errors'='true') */"
    assert by_a(sh.sql(lenient).to_arrow_table().to_pylist()) == GOOD
    assert by_a(continuous_rows(sh, lenient, "q", batch=2)) == GOOD


def test_declared_options_it_cannot_honour_are_refused_at_create(sh: StreamHouse) -> None:
    with pytest.raises(SqlError, match="format 'csv' is not supported"):
        sh.sql("CREATE STREAM c (a INT) WITH (topic = 'c', format = 'csv')")
    assert sh.log.metadata.get_catalog("c") is None
