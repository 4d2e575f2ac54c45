"""A continuous ``ORDER BY`` the time attribute: rows come out in time order as the watermark
passes them, and never before.

For any split of stream ``a(k, t, v)`` into micro-batches, restarts from the checkpoint and
disorder within the watermark delay, the output topic read in offset order equals DuckDB's
``ORDER BY`` answer (times in order; the rows as a multiset), the bounded query too, and after
every micro-batch no row past the query's watermark has been written. An ORDER BY that does
not start with the time attribute ascending is refused, as Flink does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
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
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

QUERIES = {  # name -> (SQL, columns)
    "star": ("SELECT * FROM a ORDER BY t", ("k", "t", "v")),
    "filtered": (
        "SELECT k, t, v * 10 AS w FROM a WHERE v IS NOT NULL ORDER BY t, k",
        ("k", "t", "w"),
    ),
    "alias": ("SELECT t AS ts, k FROM a ORDER BY ts, k DESC", ("ts", "k")),
}
TIME = {"star": "t", "filtered": "t", "alias": "ts"}


def run_checking_the_watermark(
    sh: StreamHouse, sql: str, schedule: Schedule, time_column: str
) -> dict:
    """``sql`` into topic ``out`` in ``schedule``'s steps and restarts, then to its end; after
    each step, no written row is past the watermark. Returns the last status."""

    def nothing_past_the_watermark(query: ContinuousQuery) -> None:
        written = [to_ms(r[time_column]) for r in topic_records(sh, "out")]
        assert not written or max(written) <= query.watermark

    return drive(sh, f"INSERT INTO out {sql}", schedule, after_step=nothing_past_the_watermark)[1]


# Rows of one micro-batch straddle the watermark; a restart comes between.
STRADDLE = (
    "filtered",
    2,
    2,
    [
        ("x", T0 + 5 * SECOND, 1),
        ("y", T0 + 3 * SECOND, 2),
        ("z", T0 + 9 * SECOND, 3),
        ("x", T0 + 7 * SECOND, 0),
        ("y", T0 + 11 * SECOND, 4),
        ("z", T0 + 10 * SECOND, 1),
    ],
    Schedule((3, 1), frozenset({1})),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, int, int, list[Event], Schedule]:
    delay = draw(st.sampled_from([0, 2, 3]))
    return (
        draw(st.sampled_from(sorted(QUERIES))),
        delay,
        draw(st.sampled_from([1, 2])),
        draw(events(delay, max_size=18)),
        draw(schedules),
    )


def test_continuous_order_by_time_equals_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    @PROPERTY
    @example(case=STRADDLE)
    @given(case=cases())
    def run(case: tuple[str, int, int, list[Event], Schedule]) -> None:
        name, delay, partitions, rows, schedule = case
        sql, columns = QUERIES[name]
        time_column = TIME[name]
        want = duck(sql, {"a": rows})
        with (
            scratch_dir(tmp_path_factory.getbasetemp()) as root,
            streamhouse.connect(root, linger_ms=1) as sh,
        ):
            sh.sql(stream_ddl("a", delay, partitions))
            produce(sh, "a", rows)
            status = run_checking_the_watermark(sh, sql, schedule, time_column)
            assert status["late_rows"] == 0 and status["rows_in"] == len(rows)
            got = topic_records(sh, "out")
            bounded = sh.sql(sql).to_arrow_table().to_pylist()
        times = [to_ms(r[time_column]) for r in want]
        assert [to_ms(r[time_column]) for r in got] == times  # in time order, as DuckDB's
        assert [to_ms(r[time_column]) for r in bounded] == times
        assert rows_of(got, columns, (time_column,)) == rows_of(want, columns, (time_column,))
        assert rows_of(bounded, columns, (time_column,)) == rows_of(want, columns, (time_column,))

    run()


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(stream_ddl("a", 1))
        yield conn


def test_rows_older_than_the_watermark_are_late(sh: StreamHouse) -> None:
    query = start_paused(sh, "INSERT INTO out SELECT k, t FROM a ORDER BY t", "q")
    try:
        produce(sh, "a", [("x", T0 + 10 * SECOND, 1), ("y", T0 + 2 * SECOND, 1)])
        query.run_until_caught_up()
        assert [r["k"] for r in topic_records(sh, "out")] == ["y"]  # up to the watermark, 9 s
        produce(sh, "a", [("z", T0 + 5 * SECOND, 1), ("w", T0 + 9 * SECOND, 1)])
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    assert status["late_rows"] == 1  # z: 5 s, after the watermark reached 9 s
    assert [r["k"] for r in topic_records(sh, "out")] == ["y", "w", "x"]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT k, t FROM a ORDER BY k", "'k' is not it (the time attribute of 'a' is 't')"),
        ("SELECT k, t FROM a ORDER BY t DESC", "ORDER BY t DESC is not supported"),
        ("SELECT k, t FROM a ORDER BY t + INTERVAL '1' SECOND", "must start with the time"),
        ("SELECT k, COUNT(*) AS n FROM a GROUP BY k ORDER BY n", "ORDER BY n is not supported"),
        (
            "SELECT x.k FROM a AS x JOIN a AS y ON x.k = y.k ORDER BY x.t",
            "ORDER BY x.t is not supported",
        ),
    ],
)
def test_order_by_other_than_the_time_attribute_is_refused(
    sh: StreamHouse, sql: str, message: str
) -> None:
    with pytest.raises(SqlError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        sh.start(f"INSERT INTO out {sql}", name="refused").stop()
    assert error.value.line == 1 and error.value.column > sql.index("ORDER BY")


def test_order_by_window_start_of_a_window_aggregate_is_kept(sh: StreamHouse) -> None:
    sql = (
        "SELECT window_start, COUNT(*) AS n FROM a GROUP BY TUMBLE(t, INTERVAL '5' SECOND) "
        "ORDER BY window_start"
    )
    produce(sh, "a", [("x", T0 + s * SECOND, 1) for s in (1, 3, 2, 6, 9, 8, 12, 17)])
    query = start_paused(sh, f"INSERT INTO out {sql}", "q")
    try:
        while query.step(max_records=2):  # windows close over several micro-batches
            pass
        query.run_until_caught_up(final=True)
        assert query.status()["late_rows"] == 0
    finally:
        query.stop()
    starts = [to_ms(r["window_start"]) for r in topic_records(sh, "out")]
    assert starts == [T0 + s * SECOND for s in (0, 5, 10, 15)]
