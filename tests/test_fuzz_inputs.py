"""Random bytes, random JSON and random SQL fragments never crash StreamHouse.

The Python API (many examples) answers or raises a StreamHouseError, never another exception;
the ``streamhouse`` command (a few examples, real processes) exits 0 or 1, never on a signal,
and never prints a traceback.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamhouse
from streamhouse.connection import StreamHouse
from streamhouse.errors import StreamHouseError
from tests.test_hostile_input import cli

ODD_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",))
    | st.sampled_from("\x00\u202e\ufeff\U0001f600"),
    max_size=12,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def deep_text(draw: st.DrawFn) -> bytes:
    """JSON text nested up to 3,000 levels: arrays, objects, or either left unclosed."""
    depth = draw(st.integers(1, 3_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
    closed = draw(st.booleans())
    return b'{"a":' + opener * depth + b"1" + (closer * depth + b"}" if closed else b"")


JSON_TOKENS = st.sampled_from(
    [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0", b"9" * 400, b"1.5e-400", b'"\\ud800"']
)


@st.composite
def json_line(draw: st.DrawFn) -> bytes:
    """A line as a producer might send it: JSON, odd JSON tokens, deep JSON or random bytes."""
    kind = draw(st.sampled_from(["json", "token", "deep", "bytes"]))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES), ensure_ascii=draw(st.booleans())).encode()
    if kind == "token":
        return b'{"a": ' + draw(JSON_TOKENS) + b', "b": 1}'
    if kind == "deep":
        return draw(deep_text())
    return draw(st.binary(max_size=40)).replace(b"\n", b" ")


SQL_FRAGMENTS = st.sampled_from(
    [
        "SELECT",
        "*",
        "a",
        "b",
        "_offset",
        "count(*)",
        "FROM",
        "t",
        "WHERE",
        "GROUP BY",
        "ORDER BY",
        "LIMIT",
        "1",
        "-1",
        "1e400",
        "'x'",
        "'\u202e'",
        "NULL",
        "NaN",
        "(",
        ")",
        ",",
        "+",
        "=",
        "AND",
        "NOT",
        "CASE WHEN",
        "THEN",
        "ELSE",
        "END",
        "CAST(a AS BIGINT)",
        "a['k']",
        "TUMBLING(_timestamp, INTERVAL '1' MINUTE)",
        "INTERVAL",
        "UNION ALL",
        ";",
        "--",
        "/*",
        '"',
        "`",
        "\x00",
        "\udcff",
        "JOIN",
        "ON",
        "AS",
        "x",
        "HAVING",
        "DISTINCT",
        "OVER ()",
        "row_number()",
        "json_extract(a, '$')",
        "::",
        "[",
        "]",
        "{",
        "}",
        "EXPLAIN",
    ]  # fmt: skip
)
SQL = st.lists(SQL_FRAGMENTS, min_size=1, max_size=14).map(" ".join) | st.text(max_size=30)
DEEP_SQL = st.builds(
    lambda n, shape: "SELECT " + shape[0] * n + "1" + shape[1] * n,
    st.integers(1, 3_000),
    st.sampled_from(
        [("(", ")"), ("abs(", ")"), ("CASE WHEN true THEN ", " END"), ("- ", ""), ("NOT ", "")]
    ),
)
SQL_CHAINS = st.builds(
    lambda n, glue: "SELECT " + glue.join(["a"] * n) + " FROM t",
    st.integers(1, 3_000),
    st.sampled_from([" + ", " AND ", " || ", " UNION ALL SELECT a FROM t "]),
)


@pytest.fixture(scope="module")
def sh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path_factory.mktemp("fuzz") / "data") as connection:
        connection.create_topic("t")
        connection.produce("t", [{"a": 1, "b": "x"}, {"a": 2, "b": None}, b"not json"])
        yield connection


def answer_or_streamhouse_error(run: Any) -> None:
    """Call ``run``: an answer, or a StreamHouseError whose message is one line."""
    try:
        run()
    except StreamHouseError as error:
        assert str(error).strip() and "\n" not in str(error).strip(), repr(str(error))


FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(values=st.lists(json_line() | JSON_VALUES | ODD_TEXT, min_size=1, max_size=4))
def test_python_api_produce_and_query_random_values(sh: StreamHouse, values: list[Any]) -> None:
    answer_or_streamhouse_error(lambda: sh.produce("t", values))
    answer_or_streamhouse_error(lambda: sh.sql("SELECT * FROM t").to_arrow_table())


@FUZZ
@given(sql=SQL | DEEP_SQL | SQL_CHAINS)
def test_python_api_random_sql(sh: StreamHouse, sql: str) -> None:
    answer_or_streamhouse_error(lambda: sh.sql(sql).to_arrow_table())


def no_crash(result: subprocess.CompletedProcess) -> None:
    """Exit 0 or 1 (a signal is a negative code), no traceback, at most one error line."""
    assert result.returncode in (0, 1), (result.returncode, result.stderr[-3000:])
    assert b"Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith(b"Error: ")]
        assert len(errors) == 1, result.stderr[-3000:]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("fuzz-cli") / "data"
    with streamhouse.connect(data) as connection:
        connection.create_topic("t")
        connection.produce("t", [{"a": 1}, b"[" * 5_000])
    return data


CLI = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@CLI
@given(lines=st.lists(json_line(), min_size=1, max_size=5), raw=st.booleans())
def test_cli_produce_random_lines(cli_data: Path, lines: list[bytes], raw: bool) -> None:
    result = cli(
        cli_data,
        "produce",
        "t",
        *(["--format", "raw"] if raw else []),
        stdin=b"\n".join(lines) + b"\n",
    )
    no_crash(result)
    no_crash(cli(cli_data, "query", "SELECT * FROM t", "--format", "json"))


@CLI
@given(sql=SQL | DEEP_SQL)
def test_cli_query_random_sql(cli_data: Path, sql: str) -> None:
    text = sql.encode("utf-8", "surrogateescape")
    if b"\x00" in text:  # (argv cannot hold it)
        no_crash(cli(cli_data, "query", "-", stdin=text))
    else:
        no_crash(cli(cli_data, "query", "--", text))
