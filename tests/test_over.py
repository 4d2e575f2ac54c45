"""Continuous OVER aggregations: each row comes out once the watermark passes it, in time
order, with the aggregates of its frame (ROWS n PRECEDING or RANGE INTERVAL PRECEDING) and
``LAG(x, n [, default])``, the value n rows back in its partition.

For any split of stream ``a(k, t, v)`` into micro-batches, restarts from the checkpoint and
disorder within the watermark delay, the output topic equals DuckDB's answer over all rows
(as a multiset, times in order) and after every micro-batch no row at or past the query's
watermark has been written. Other OVER forms are refused at the OVER, saying what to write.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from join_cases import (
    SECOND,
    T0,
    Event,
    Schedule,
    drive,
    duck,
    events,
    produce,
    rows_of,
    schedules,
    scratch_dir,
    stream_ddl,
    to_ms,
    topic_records,
)
from window_cases import start_paused

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.runtime.query import ContinuousQuery

PROPERTY = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_W = "(PARTITION BY k ORDER BY t, v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"

QUERIES = {  # name -> (SQL, columns)
    "rows": (
        "SELECT k, t, v, SUM(v) OVER (PARTITION BY k ORDER BY t, v ROWS BETWEEN 2 PRECEDING"
        " AND CURRENT ROW) AS s FROM a",
        ("k", "t", "v", "s"),
    ),
    "rows_count": (
        "SELECT k, t, COUNT(*) OVER (ORDER BY t ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) AS n"
        " FROM a WHERE v IS NOT NULL",
        ("k", "t", "n"),
    ),
    "range": (
        "SELECT t, v, MAX(v) OVER (PARTITION BY k ORDER BY t RANGE BETWEEN INTERVAL '2' SECOND"
        " PRECEDING AND CURRENT ROW) AS hi, AVG(v) OVER (PARTITION BY k ORDER BY t RANGE"
        " BETWEEN INTERVAL '2' SECOND PRECEDING AND CURRENT ROW) * 2 AS mean2 FROM a",
        ("t", "v", "hi", "mean2"),
    ),
    "unbounded_rows": (
        f"SELECT k, t, v, SUM(v) OVER {_W} AS s, MIN(v) OVER {_W} AS lo, COUNT(*) OVER {_W} AS n"
        " FROM a",
        ("k", "t", "v", "s", "lo", "n"),
    ),
    "unbounded_range": (
        "SELECT t, v, AVG(v) OVER (PARTITION BY k ORDER BY t) * 2 AS mean2, MAX(v) OVER"
        " (PARTITION BY k ORDER BY t) AS hi FROM a",
        ("t", "v", "mean2", "hi"),
    ),
    "lag": (
        "SELECT k, t, v, LAG(v) OVER (PARTITION BY k ORDER BY t, v) AS prev, LAG(v, 2, -1) OVER"
        " (PARTITION BY k ORDER BY t, v) AS prev2 FROM a WHERE v IS NOT NULL",
        ("k", "t", "v", "prev", "prev2"),
    ),
    "lag_rows": (
        "SELECT k, t, v, v - LAG(v, 3) OVER (ORDER BY t, k, v) AS d, SUM(v) OVER (ORDER BY t, k,"
        " v ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s FROM a",
        ("k", "t", "v", "d", "s"),
    ),
    "lead": (
        "SELECT k, t, v, LEAD(v) OVER (PARTITION BY k ORDER BY t, v) AS nx, LEAD(v, 2, -1) OVER"
        " (PARTITION BY k ORDER BY t, v) AS nx2 FROM a WHERE v IS NOT NULL",
        ("k", "t", "v", "nx", "nx2"),
    ),
    "lead_lag_rows": (
        "SELECT k, t, v, LAG(v) OVER (ORDER BY t, k, v) AS pv, LEAD(v, 3) OVER (ORDER BY t, k, v)"
        " - v AS d, SUM(v) OVER (ORDER BY t, k, v ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s"
        " FROM a",
        ("k", "t", "v", "pv", "d", "s"),
    ),
    "lag_trend": (  # the SQL cookbook's LAG recipe: the OVER in a CTE, the query over it
        "WITH cp AS (SELECT k, t, v, LAG(v, 1) OVER (PARTITION BY k ORDER BY t, v) AS prev FROM a"
        " WHERE v IS NOT NULL) SELECT *, CASE WHEN v > prev THEN 'up' WHEN v < prev THEN 'down'"
        " ELSE '=' END AS trend FROM cp WHERE k <> 'z'",
        ("k", "t", "v", "prev", "trend"),
    ),
    "named_window": (  # Flink's docs: WINDOW w AS (...) shared by the OVERs
        "SELECT k, t, v, SUM(v) OVER w AS s, COUNT(v) OVER w AS n FROM a WINDOW w AS (PARTITION"
        " BY k ORDER BY t, v ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)",
        ("k", "t", "v", "s", "n"),
    ),
    "named_window_frame": (  # a frame of its own over a named window
        "SELECT k, t, v, SUM(v) OVER (w ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM a"
        " WINDOW w AS (PARTITION BY k ORDER BY t, v)",
        ("k", "t", "v", "s"),
    ),
    "unbounded_global": (
        "SELECT k, t, COUNT(v) OVER (ORDER BY t RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT"
        " ROW) AS n FROM a",
        ("k", "t", "n"),
    ),
}


@st.composite
def cases(
    draw: st.DrawFn, names: list[str] = sorted(QUERIES)
) -> tuple[str, int, list[Event], Schedule]:
    delay = draw(st.sampled_from([0, 2, 3]))
    return (
        draw(st.sampled_from(names)),
        delay,
        draw(events(delay, max_size=16)),
        draw(schedules),
    )


COMPOSED = ["lag_trend", "named_window", "named_window_frame"]


@pytest.mark.parametrize("names", [sorted(QUERIES), COMPOSED], ids=["any", "composed"])
def test_over_aggregation_equals_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    """Any of the queries; and those Flink's docs and the SQL cookbook write: a query over an
    OVER in a CTE (it was refused: 'subqueries in continuous queries are not supported'), and
    OVERs of a WINDOW clause (refused as 'w OVER (...) is not supported')."""

    @PROPERTY
    @given(case=cases(names))
    def run(case: tuple[str, int, list[Event], Schedule]) -> None:
        name, delay, rows, schedule = case
        sql, columns = QUERIES[name]
        want = duck(sql, {"a": rows})
        with (
            scratch_dir(tmp_path_factory.getbasetemp()) as root,
            streamhouse.connect(root, linger_ms=1) as sh,
        ):
            sh.sql(stream_ddl("a", delay))

            def nothing_at_the_watermark(query: ContinuousQuery) -> None:
                written = [to_ms(r["t"]) for r in topic_records(sh, "out")]
                assert not written or max(written) < query.watermark

            produce(sh, "a", rows)
            status = drive(
                sh, f"INSERT INTO out {sql}", schedule, after_step=nothing_at_the_watermark
            )[1]
            assert status["late_rows"] == 0
            got = topic_records(sh, "out")
        assert rows_of(got, columns, ("t",)) == rows_of(want, columns, ("t",))

    run()


@pytest.mark.parametrize("name", COMPOSED)
def test_composed_over_queries_answer_bounded_as_duckdb(tmp_path: Path, name: str) -> None:
    """Bounded, ``OVER (w ROWS ...)`` of a WINDOW clause lost w's PARTITION BY in DataFusion
    (sums ran across keys)."""
    sql, columns = QUERIES[name]
    rows = [
        (k, T0 + s * SECOND, (s * 7 + len(k)) % 10)
        for s in range(30)
        for k in "xy"
        if (s + len(k)) % 3
    ]
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(stream_ddl("a", 0))
        produce(sh, "a", rows)
        got = sh.sql(sql).to_arrow_table().to_pylist()
    assert rows_of(got, columns, ("t",)) == rows_of(duck(sql, {"a": rows}), columns, ("t",))


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(stream_ddl("a", 1))
        yield conn


def test_rows_wait_for_the_watermark_and_late_rows_are_dropped(sh: StreamHouse) -> None:
    sql = (
        "INSERT INTO out SELECT k, t, SUM(v) OVER (PARTITION BY k ORDER BY t RANGE BETWEEN"
        " INTERVAL '5' SECOND PRECEDING AND CURRENT ROW) AS s FROM a"
    )
    query = start_paused(sh, sql, "q")
    try:
        produce(sh, "a", [("x", T0 + 2 * SECOND, 1), ("x", T0 + 10 * SECOND, 2)])
        query.run_until_caught_up()
        assert [r["s"] for r in topic_records(sh, "out")] == [1]  # 10 s waits (watermark 9 s)
        produce(sh, "a", [("x", T0 + 5 * SECOND, 4), ("x", T0 + 9 * SECOND, 8)])
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    assert status["late_rows"] == 1  # 5 s, after the watermark reached 9 s
    assert [r["s"] for r in topic_records(sh, "out")] == [1, 8, 10]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SUM(v) OVER (PARTITION BY k ORDER BY t, v)", "without a frame"),
        (
            "SUM(v) OVER (ORDER BY t ROWS BETWEEN UNBOUNDED PRECEDING AND 1 FOLLOWING)",
            "must be bounded",
        ),
        ("SUM(v) OVER (ORDER BY t ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)", "must be bounded"),
        ("SUM(v) OVER (ORDER BY t DESC ROWS 1 PRECEDING)", "ORDER BY the time attribute"),
        ("SUM(v) OVER (PARTITION BY k)", "ORDER BY the time attribute"),
        ("RANK() OVER (ORDER BY t ROWS 1 PRECEDING)", "Top-N"),
        (
            "SUM(v) OVER (ORDER BY t ROWS 1 PRECEDING), MAX(v) OVER (ORDER BY t ROWS 2 PRECEDING)",
            "the same PARTITION BY",
        ),
        ("SUM(v) OVER (ORDER BY t, k RANGE INTERVAL '1' SECOND PRECEDING)", "alone"),
        ("SUM(v) OVER (ORDER BY v ROWS 1 PRECEDING)", "'v' is not it"),
        ("LEAD(v) OVER (PARTITION BY k ORDER BY t ROWS 1 PRECEDING)", "LEAD.*takes no frame"),
        ("LEAD(v, 1.5) OVER (ORDER BY t)", "LEAD.*a whole number of rows"),
        ("LEAD(v) OVER (ORDER BY t), SUM(v) OVER (ORDER BY t)", "LEAD.*ROWS BETWEEN n PRECEDING"),
        ("LEAD(v) OVER (ORDER BY t), LAG(v) OVER (ORDER BY t, v)", "same PARTITION"),
        ("LAG(v, v) OVER (ORDER BY t)", "a whole number of rows"),
        ("LAG(v) OVER (ORDER BY t ROWS 1 PRECEDING)", "takes no frame"),
        ("LAG(v) OVER (ORDER BY t), LAG(v) OVER (PARTITION BY k ORDER BY t)", "same PARTITION"),
        ("LAG(v) OVER (ORDER BY t), SUM(v) OVER (ORDER BY t)", "ROWS BETWEEN n PRECEDING"),
        ("LAG(v) OVER (ORDER BY v)", "'v' is not it"),
    ],
)
def test_other_over_forms_are_refused(sh: StreamHouse, sql: str, message: str) -> None:
    with pytest.raises(SqlError, match=message) as error:
        sh.start(f"INSERT INTO out SELECT k, {sql} AS s FROM a", name="refused").stop()
    assert error.value.line == 1 and error.value.column is not None


def test_unbounded_totals_of_a_null_partition_key_carry_over(sh: StreamHouse) -> None:
    """A partition whose key is NULL keeps its running totals from one release to the next
    (a hash join on the keys never matches NULL: its totals restarted at every release)."""
    sql = (
        "SELECT k, t, SUM(v) OVER (PARTITION BY k ORDER BY t) AS s,"
        " COUNT(*) OVER (PARTITION BY k ORDER BY t) AS n FROM a"
    )
    rows = [("x", T0 + SECOND, 5)] + [(None, T0 + i * SECOND, i) for i in range(1, 7)]
    want = duck(sql, {"a": rows})
    query = start_paused(sh, f"INSERT INTO out {sql}", "q")
    try:
        for start in range(0, len(rows), 2):  # several releases
            produce(sh, "a", rows[start : start + 2])
            query.run_until_caught_up()
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    columns = ("k", "t", "s", "n")
    assert rows_of(topic_records(sh, "out"), columns, ("t",)) == rows_of(want, columns, ("t",))


def test_a_row_waits_for_the_rows_its_lead_reaches(sh: StreamHouse) -> None:
    """``LEAD(v)``: a row comes out once the row after it in its partition is released too
    (the watermark has passed it), or, with none, when the input ends (its LEAD is the
    default); ``LAG`` beside it still reads the rows before."""
    sql = (
        "INSERT INTO out SELECT k, t, v, LEAD(v, 1, -1) OVER (PARTITION BY k ORDER BY t) AS nx,"
        " LAG(v) OVER (PARTITION BY k ORDER BY t) AS pv FROM a"
    )
    query = start_paused(sh, sql, "q")
    try:
        produce(sh, "a", [("x", T0 + SECOND, 1), ("y", T0 + 2 * SECOND, 2)])
        produce(sh, "a", [("x", T0 + 3 * SECOND, 3), ("x", T0 + 10 * SECOND, 4)])
        query.run_until_caught_up()  # watermark 9 s: x@1, y@2, x@3 released; x@10 waits
        first = [(r["k"], r["v"], r["nx"], r["pv"]) for r in topic_records(sh, "out")]
        assert first == [("x", 1, 3, None)]  # y@2 and x@3 have no released successor yet
        produce(sh, "a", [("y", T0 + 12 * SECOND, 5)])
        query.run_until_caught_up()  # watermark 11 s: x@10 released, so x@3's LEAD is known
        second = [(r["k"], r["v"], r["nx"], r["pv"]) for r in topic_records(sh, "out")]
        assert second == [*first, ("x", 3, 4, 1)]
        query.stop()
        query = start_paused(sh, sql, "q")  # the waiting rows are in the checkpoint
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    rows = [(r["k"], r["v"], r["nx"], r["pv"]) for r in topic_records(sh, "out")]
    assert sorted(rows[2:]) == [("x", 4, -1, 3), ("y", 2, 5, None), ("y", 5, -1, 2)]
