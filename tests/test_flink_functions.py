"""Flink's built-in functions give Flink's answers, bounded and continuously.

- ``REGEXP_EXTRACT(s, re[, i])``: group ``i`` of the first match, ``i = 0`` (the default) the
  whole match, NULL without a match or group ``i``; Python's ``re`` is the oracle (the patterns
  mean the same in Java, Rust and Python).
- ``DATE_FORMAT(ts, pattern)``: Java's ``DateTimeFormatter`` in ``Locale.US``; the expected
  text of every (timestamp, pattern) pair was printed by Java 17
  (``tests/fixtures/date_format_java.tsv``). Patterns it cannot honour are refused by letter.
- ``CAST(ts AS STRING)``: ``yyyy-MM-dd HH:mm:ss`` and, for TIMESTAMP(p > 0), exactly p
  fractional digits (Flink's ``DateTimeUtils.formatTimestamp(ts, precision)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from window_cases import continuous_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

FIXTURE = Path(__file__).parent / "fixtures" / "date_format_java.tsv"


def java_cases() -> list[tuple[str, str, str]]:
    """(ISO timestamp, pattern, Java's text) from the fixture."""
    lines = FIXTURE.read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


# -- REGEXP_EXTRACT ------------------------------------------------------------------------------

URLS = ["a/b/c", "xyz", "", None, "/lead/x", "k=1&channel_id=9&z", "channel_id=&q"]
EXTRACTS = {  # column -> (pattern, index or None)
    "whole": (r"[^/]+", None),
    "zero": (r"[^/]+", 0),
    "one": (r"([^/]+)/([^/]+)", 1),
    "two": (r"([^/]+)/([^/]+)", 2),
    "no_group": (r"[^/]+", 1),  # group 1 does not exist: NULL (Flink), not the whole match
    "channel": (r"(&|^)channel_id=([^&]*)", 2),
}


def python_extract(value: str | None, pattern: str, index: int | None) -> str | None:
    if value is None:
        return None
    match = re.search(pattern, value)
    if match is None or (index or 0) > (match.re.groups):
        return None
    return match.group(index or 0)


def extract_sql() -> str:
    calls = []
    for column, (pattern, index) in EXTRACTS.items():
        arguments = f"s, '{pattern}'" + (f", {index}" if index is not None else "")
        calls.append(f"REGEXP_EXTRACT({arguments}) AS {column}")
    return f"SELECT n, {', '.join(calls)} FROM urls"


def test_regexp_extract_takes_the_whole_match_or_the_group_named(sh: StreamHouse) -> None:
    sh.sql("CREATE STREAM urls (n INT, s STRING) WITH (topic = 'urls', format = 'json')")
    sh.produce("urls", [{"n": i, "s": s} for i, s in enumerate(URLS)])
    want = [
        {"n": i, **{c: python_extract(s, p, x) for c, (p, x) in EXTRACTS.items()}}
        for i, s in enumerate(URLS)
    ]
    assert want[0]["whole"] == "a" and want[0]["two"] == "b" and want[0]["no_group"] is None
    bounded = sh.sql(extract_sql()).to_arrow_table().to_pylist()
    assert sorted(bounded, key=lambda r: r["n"]) == want
    streamed = continuous_rows(sh, extract_sql(), "urls", batch=3)
    assert sorted(streamed, key=lambda r: r["n"]) == want


def test_regexp_extract_with_four_arguments_is_refused(sh: StreamHouse) -> None:
    with pytest.raises(SqlError, match="REGEXP_EXTRACT takes 2 or 3 arguments"):
        sh.sql("SELECT REGEXP_EXTRACT('a', 'a', 1, 2)")


# -- DATE_FORMAT ---------------------------------------------------------------------------------


def test_date_format_prints_what_java_prints(sh: StreamHouse) -> None:
    cases = java_cases()
    times = sorted({t for t, _, _ in cases})
    patterns = sorted({p for _, p, _ in cases})
    assert len(cases) == len(times) * len(patterns) >= 40
    sh.sql("CREATE STREAM stamps (n INT, ts TIMESTAMP(3)) WITH (topic = 'stamps', format = 'json')")
    sh.produce(
        "stamps",
        [{"n": i, "ts": t.replace("T", " ")} for i, t in enumerate(times)] + [{"n": -1}],
    )
    columns = [
        f"DATE_FORMAT(ts, '{p.replace(chr(39), chr(39) * 2)}') AS p{i}"
        for i, p in enumerate(patterns)
    ]
    sql = f"SELECT n, {', '.join(columns)} FROM stamps"
    want = {(times.index(t), f"p{patterns.index(p)}"): text for t, p, text in cases}
    for rows in (
        sh.sql(sql).to_arrow_table().to_pylist(),
        continuous_rows(sh, sql, "stamps", batch=2),
    ):
        got = {(r["n"], c): v for r in rows for c, v in r.items() if c != "n" and r["n"] >= 0}
        assert got == want
        nulls = [r for r in rows if r["n"] == -1]  # a NULL timestamp formats as NULL
        assert len(nulls) == 1 and all(v is None for c, v in nulls[0].items() if c != "n")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("yyyy-MM-dd z", "letter 'z' (time-zone name) needs a time zone"),
        ("HH:mm XXX", "letter 'X'"),
        ("ddd", "letter 'd' (day of month) repeated 3 times is not supported"),
        ("yyyy'T", "unclosed quote"),
        ("n", "letter 'n' (nano of second) is not supported"),
        ("yyyy#", "character '#' is reserved"),
    ],
)
def test_date_format_refuses_a_pattern_letter_by_name(
    sh: StreamHouse, pattern: str, message: str
) -> None:
    sh.sql("CREATE STREAM stamps (ts TIMESTAMP(3)) WITH (topic = 'stamps', format = 'json')")
    literal = pattern.replace("'", "''")
    with pytest.raises(SqlError, match=re.escape(message)) as error:
        sh.sql(f"SELECT DATE_FORMAT(ts, '{literal}') FROM stamps").to_arrow_table()
    assert error.value.line == 1 and error.value.column is not None


def test_date_format_needs_a_literal_pattern(sh: StreamHouse) -> None:
    sh.sql("CREATE STREAM stamps (ts TIMESTAMP(3), p STRING) WITH (topic = 'stamps')")
    with pytest.raises(SqlError, match="pattern given as a string literal"):
        sh.sql("SELECT DATE_FORMAT(ts, p) FROM stamps").to_arrow_table()


# -- CAST(timestamp AS STRING) -------------------------------------------------------------------

STAMPS = ["2024-01-01 00:00:00.5", "2024-01-01 00:00:00", "2024-02-29 23:59:59.123456"]


def flink_string(text: str, precision: int) -> str:
    """Flink's text of a TIMESTAMP(precision) value: exactly ``precision`` digits."""
    value = datetime.fromisoformat(text)
    whole = value.strftime("%Y-%m-%d %H:%M:%S")
    digits = f"{value.microsecond:06d}000"[:precision]
    return whole + ("." + digits if precision else "")


def test_cast_of_a_timestamp_to_string_is_flinks_text(sh: StreamHouse) -> None:
    sh.sql(
        "CREATE STREAM times (n INT, t0 TIMESTAMP(0), t3 TIMESTAMP(3), t6 TIMESTAMP(6), "
        "l3 TIMESTAMP_LTZ(3), v STRING) WITH (topic = 'times', format = 'json')"
    )
    rows = [{"n": i, "t0": s, "t3": s, "t6": s, "l3": s, "v": s} for i, s in enumerate(STAMPS)]
    sh.produce("times", [*rows, {"n": 9}])
    sql = (
        "SELECT n, CAST(t0 AS STRING) AS s0, CAST(t3 AS STRING) AS s3, "
        "CAST(t6 AS VARCHAR) AS s6, CAST(l3 AS STRING) AS l3, CAST(v AS STRING) AS v, "
        "CAST(n AS STRING) AS ns FROM times"
    )
    want = [
        {
            "n": i,
            "s0": flink_string(s.split(".")[0], 0),
            "s3": flink_string(s[:23], 3),
            "s6": flink_string(s, 6),
            "l3": flink_string(s[:23], 3),
            "v": s,
            "ns": str(i),
        }
        for i, s in enumerate(STAMPS)
    ] + [{"n": 9, "s0": None, "s3": None, "s6": None, "l3": None, "v": None, "ns": "9"}]
    assert want[1]["s3"] == "2024-01-01 00:00:00.000" and want[1]["s0"] == "2024-01-01 00:00:00"
    for got in (
        sh.sql(sql).to_arrow_table().to_pylist(),
        continuous_rows(sh, sql, "times", batch=2),
    ):
        assert sorted(got, key=lambda r: r["n"]) == want
