"""DATE_FORMAT's cheap path (each distinct timestamp, floored to the pattern's finest unit,
formatted once by ``pyarrow.compute.strftime``) prints what ``to_char`` prints, for random
timestamps of every unit (NULLs, before 1970 and after 2261 among them) and random patterns of
the fields it takes alongside fields it leaves to ``to_char``; and the Java fixture through a
StreamHouse query covers the letters against Java itself (``test_flink_functions``).
"""

from __future__ import annotations

import json
from pathlib import Path

import datafusion
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlglot import exp

import streamhouse
from streamhouse.sql.date_format import FORMAT_DISTINCT, date_format_sql
from streamhouse.sql.functions import functions, to_datafusion
from streamhouse.sql.parse import parse_one
from streamhouse.sql.plan import plan_query

CHEAP_FIELDS = ["yyyy", "uuuu", "MM", "MMM", "MMMM", "dd", "DDD", "HH", "hh", "mm", "ss"]
CHEAP_FIELDS += ["E", "EEE", "EEEE", "a", "ccc"]
OTHER_FIELDS = ["yy", "y", "M", "d", "D", "H", "h", "m", "s", "SSS", "S", "SSSSSS", "kk", "K"]
OTHER_FIELDS += ["w", "W", "Q", "QQQ", "G", "e", "YYYY", "MMMMM"]
SEPARATORS = ["-", ":", " ", "'T'", "''", "/", "%", ".", "'at' ", "[", "]"]

DAY_MS = 86_400_000
# 1677-09-22 .. 2262-04-10: every unit down to nanoseconds can hold them
LOW_MS, HIGH_MS = -9_223_286_400_000, 9_223_286_400_000
UNITS = {"s": 1_000, "ms": 1, "us": 1_000, "ns": 1_000_000}


def _pattern(fields: list[str]) -> st.SearchStrategy[str]:
    token = st.sampled_from(fields)
    pairs = st.lists(st.tuples(token, st.sampled_from(SEPARATORS)), min_size=1, max_size=5)
    return pairs.map(lambda ps: "".join(f + s for f, s in ps)[: -len(ps[-1][1]) or None])


PATTERNS = st.one_of(_pattern(CHEAP_FIELDS), _pattern(CHEAP_FIELDS + OTHER_FIELDS))


@st.composite
def stamps(draw: st.DrawFn) -> pa.Array:
    """Timestamps in one unit: a cluster (a micro-batch's few minutes) and strays."""
    unit = draw(st.sampled_from(sorted(UNITS)))
    base = draw(st.integers(LOW_MS + DAY_MS, HIGH_MS - DAY_MS))
    near = st.integers(base - 600_000, base + 600_000)
    anywhere = st.integers(LOW_MS, HIGH_MS)
    edges = st.sampled_from([0, -1, 1, -999, 999, 1_000, -DAY_MS, DAY_MS - 1])
    millis = draw(st.lists(st.one_of(near, anywhere, edges, st.none()), max_size=40))
    sub = draw(st.integers(0, UNITS[unit] - 1)) if unit in ("us", "ns") else 0
    if unit == "s":
        values = [None if m is None else m // 1_000 for m in millis]
    else:
        values = [None if m is None else m * UNITS[unit] + sub for m in millis]
    return pa.array(values, pa.timestamp(unit))


def _context(ts: pa.Array) -> datafusion.SessionContext:
    ctx = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(1))
    for function in functions():
        ctx.register_udf(function)
    ctx.register_record_batches("t", [[pa.record_batch({"ts": ts})]])
    return ctx


def _both(ts: pa.Array, pattern: str) -> tuple[list[str | None], list[str | None]]:
    column = exp.column("ts")
    cheap = date_format_sql(column, pattern).sql("postgres")
    plain = date_format_sql(column, pattern, distinct=False).sql("postgres")
    assert FORMAT_DISTINCT not in plain.lower()
    table = _context(ts).sql(f"SELECT {cheap} AS cheap, {plain} AS plain FROM t").to_arrow_table()
    return table.column("cheap").to_pylist(), table.column("plain").to_pylist()


@settings(max_examples=300, deadline=None)
@given(ts=stamps(), pattern=PATTERNS)
def test_cheap_path_prints_what_to_char_prints(ts: pa.Array, pattern: str) -> None:
    cheap, plain = _both(ts, pattern)
    assert cheap == plain


@pytest.mark.parametrize("pattern", ["yyyy-MM-dd", "HH:mm", "yyyy-MM-dd HH:mm:ss", "EEE, MMM dd"])
def test_cheap_path_is_taken_for_strftime_patterns(pattern: str) -> None:
    sql = date_format_sql(exp.column("ts"), pattern).sql("postgres").lower()
    assert FORMAT_DISTINCT in sql


@pytest.mark.parametrize("pattern", ["yyyy-MM-dd HH:mm:ss.SSS", "d/M/yy", "ww", "HH:mm Q"])
def test_other_patterns_stay_with_to_char(pattern: str) -> None:
    sql = date_format_sql(exp.column("ts"), pattern).sql("postgres").lower()
    assert FORMAT_DISTINCT not in sql


def test_cheap_path_in_a_query_with_nulls_and_zones(tmp_path: Path) -> None:
    """Through a StreamHouse query: NULL stays NULL, 1969 goes through ``to_char``, and a
    TIMESTAMP_LTZ prints in UTC as before."""
    times = ["1970-01-01 00:00:00", None, "2025-11-27 00:00:00.123", "1969-12-31 23:59:59.999"]
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(
            "CREATE STREAM s (n INT, ts TIMESTAMP(3), z TIMESTAMP_LTZ(3)) "
            "WITH (topic = 's', format = 'json')"
        )
        sh.produce("s", [{"n": i, "ts": t, "z": t} for i, t in enumerate(times)])
        got = sh.sql(
            "SELECT n, DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm') AS a, "
            "DATE_FORMAT(z, 'yyyy-MM-dd HH:mm') AS b, "
            "DATE_FORMAT(z, 'yyyy-MM-dd HH:mm:ss.SSS') AS c FROM s ORDER BY n"
        ).to_arrow_table()
    want = ["1970-01-01 00:00", None, "2025-11-27 00:00", "1969-12-31 23:59"]
    assert got.column("a").to_pylist() == want
    assert got.column("b").to_pylist() == want
    assert [c and c[:16] for c in got.column("c").to_pylist()] == want


def test_unaliased_outputs_keep_their_names(tmp_path: Path) -> None:
    """DataFusion names an unaliased output after its text (a sink's JSON key): DATE_FORMAT
    keeps ``to_char`` there, and takes the cheap path under an alias or in a WHERE."""
    unaliased = "SELECT DATE_FORMAT(ts, 'HH:mm'), upper(DATE_FORMAT(ts, 'MMM')) FROM s"
    aliased = "SELECT DATE_FORMAT(ts, 'HH:mm') AS hm FROM s WHERE DATE_FORMAT(ts, 'yyyy') > '1'"
    assert FORMAT_DISTINCT not in to_datafusion(parse_one(unaliased)).lower()
    assert to_datafusion(parse_one(aliased)).lower().count(FORMAT_DISTINCT) == 2
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql("CREATE STREAM s (ts TIMESTAMP(3)) WITH (topic = 's', format = 'json')")
        sh.produce("s", [{"ts": "2025-11-27 10:11:12"}])
        got = sh.sql(unaliased).to_arrow_table()
        assert got.column_names == [
            'to_char(s.ts,Utf8("%H:%M"))',
            'upper(to_char(s.ts,Utf8("%b")))',
        ]
        assert got.to_pylist() == [dict(zip(got.column_names, ["10:11", "NOV"], strict=True))]
        assert sh.sql(aliased).to_arrow_table().to_pylist() == [{"hm": "10:11"}]
        for grouped in (  # the projection and its GROUP BY keep one form
            "SELECT DATE_FORMAT(ts, 'HH'), count(*) FROM s GROUP BY DATE_FORMAT(ts, 'HH')",
            "SELECT DATE_FORMAT(ts, 'HH') AS h, DATE_FORMAT(ts, 'HH'), count(*) AS c FROM s "
            "GROUP BY DATE_FORMAT(ts, 'HH') ORDER BY DATE_FORMAT(ts, 'HH')",
            "SELECT DATE_FORMAT(ts, 'HH') AS h, count(*) AS c FROM s GROUP BY DATE_FORMAT(ts, 'HH')",
        ):
            rows = sh.sql(grouped).to_arrow_table().to_pylist()
            assert [sorted(map(str, r.values())) for r in rows] in (
                [["1", "10"]],
                [["1", "10", "10"]],
            )


def test_continuous_unaliased_outputs_take_the_cheap_path_under_their_names(
    tmp_path: Path,
) -> None:
    """A continuous filter/projection (Nexmark q10) aliases its unaliased outputs by position,
    so DATE_FORMAT takes the cheap path, and gives the columns back DataFusion's names of the
    ``to_char`` form: the sink's records are what they were (keys and values), for rows
    before 1970 (``to_char``) and NULLs too."""
    select = (
        "SELECT n, DATE_FORMAT(ts, 'yyyy-MM-dd'), DATE_FORMAT(ts, 'HH:mm'), n * 2 FROM s"
        " WHERE n >= 0"
    )
    plan = plan_query(parse_one(f"INSERT INTO out {select}"))
    assert FORMAT_DISTINCT in plan.operator.sql.lower()
    assert plan.operator.names_sql == to_datafusion(parse_one(select))
    times = ["2025-11-27 10:11:12", None, "1969-12-31 23:59:59.999", "2025-11-28 00:00:00"]
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(
            "CREATE STREAM s (n INT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) "
            "WITH (topic = 's', format = 'json')"
        )
        sh.produce("s", [{"n": i, "ts": t} for i, t in enumerate(times)])
        query = sh.start(f"INSERT INTO out {select}", name="q10_like")
        try:
            query.run_until_caught_up(final=True)
        finally:
            query.stop()
        records = [json.loads(v) for v in sh.fetch("out")["value"].to_pylist()]
    names = ['to_char(s.ts,Utf8("%Y-%m-%d"))', 'to_char(s.ts,Utf8("%H:%M"))', "s.n * Int64(2)"]
    days = ["2025-11-27", None, "1969-12-31", "2025-11-28"]
    hours = ["10:11", None, "23:59", "00:00"]
    assert [list(r) for r in records] == [["n", *names]] * 4
    assert [[r[k] for k in names] for r in records] == [
        [d, h, 2 * i] for i, (d, h) in enumerate(zip(days, hours, strict=True))
    ]


def test_continuous_duplicate_unaliased_outputs_are_refused_at_start(tmp_path: Path) -> None:
    """Two unaliased outputs DataFusion names alike: the query is refused when it starts (as
    the ``to_char`` form was), not at its first micro-batch."""
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql("CREATE STREAM s (ts TIMESTAMP(3)) WITH (topic = 's', format = 'json')")
        sh.produce("s", [{"ts": "2025-11-27 10:11:12"}])
        with pytest.raises(streamhouse.SqlError, match="unique"):
            sh.start(
                "INSERT INTO out SELECT DATE_FORMAT(ts, 'HH'), DATE_FORMAT(ts, 'HH') FROM s",
                name="twice",
            )
