"""Computed columns (``v2 AS v * 2 + 1``) exist when a stream is read, bounded and continuously.

Stream ``a(k, t, v)`` of :mod:`join_cases` with computed columns, one of them its event time
(``te AS t + INTERVAL '1' SECOND`` with the WATERMARK on ``te``). For any micro-batch split,
restarts and disorder within the watermark delay, a filter/projection and a window aggregate
over them equal DuckDB's answer over the same rows with the expressions written out; the
bounded query too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from join_cases import (
    SECOND,
    T0,
    Event,
    Schedule,
    duck,
    events,
    rows_of,
    run_continuously,
    schedules,
    scratch_dir,
    to_ms,
    topic_records,
)
from window_cases import continuous_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.sql.computed import PROCTIME_TYPE, ComputedColumns, wall_clock_ms
from streamhouse.sql.ddl import stream_definition
from streamhouse.sql.parse import parse_one

PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

STREAM = """CREATE STREAM a (k STRING, kk AS UPPER(k), t TIMESTAMP(3), v BIGINT,
    v2 AS v * 2 + 1, te AS t + INTERVAL '1' SECOND,
    WATERMARK FOR te AS te - INTERVAL '{delay}' SECOND)
    WITH (topic = 'a', format = 'json', partitions = '{partitions}')"""

# The computed columns written out, for DuckDB.
DUCK_A = "(SELECT k, upper(k) AS kk, t, v, v * 2 + 1 AS v2, t + INTERVAL 1 SECOND AS te FROM a)"

QUERIES = {  # name -> (ours, DuckDB's, columns, time columns)
    "filter": (
        "SELECT k, kk, v2, te FROM a WHERE v2 > 3",
        f"SELECT k, kk, v2, te FROM {DUCK_A} WHERE v2 > 3",
        ("k", "kk", "v2", "te"),
        ("te",),
    ),
    "window": (
        "SELECT kk, window_start, COUNT(*) AS n, SUM(v2) AS s FROM a "
        "GROUP BY kk, TUMBLE(te, INTERVAL '5' SECOND)",
        "SELECT kk, time_bucket(INTERVAL 5 SECOND, te) AS window_start, COUNT(*) AS n, "
        f"SUM(v2) AS s FROM {DUCK_A} GROUP BY kk, window_start",
        ("kk", "window_start", "n", "s"),
        ("window_start",),
    ),
}


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, int, int, list[Event], Schedule]:
    delay = draw(st.sampled_from([0, 2]))
    return (
        draw(st.sampled_from(sorted(QUERIES))),
        delay,
        draw(st.sampled_from([1, 2])),
        draw(events(delay, max_size=16)),
        draw(schedules),
    )


def test_computed_columns_equal_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    @PROPERTY
    @given(case=cases())
    def run(case: tuple[str, int, int, list[Event], Schedule]) -> None:
        name, delay, partitions, rows, schedule = case
        ours, theirs, columns, times = QUERIES[name]
        want = rows_of(duck(theirs, {"a": rows}), columns, times)
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            ddl = STREAM.format(delay=delay, partitions=partitions)
            sh, status = run_continuously(
                root, [ddl], {"a": rows}, f"INSERT INTO out {ours}", schedule
            )
            try:
                assert status["late_rows"] == status["rejected_rows"] == 0
                assert rows_of(topic_records(sh, "out"), columns, times) == want
                bounded = sh.sql(ours).to_arrow_table().to_pylist()
                assert rows_of(bounded, columns, times) == want
            finally:
                sh.close()

    run()


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


def test_select_star_lists_computed_columns_where_declared(sh: StreamHouse) -> None:
    sh.sql("CREATE STREAM s (a INT, b AS a + 1, c STRING, d AS CAST(a AS STRING)) WITH (topic='s')")
    sh.produce("s", [{"a": 1, "c": "x"}, {"c": "y"}])
    table = sh.sql("SELECT * FROM s").to_arrow_table()
    assert table.column_names == ["a", "b", "c", "d"]
    assert table.to_pylist() == [
        {"a": 1, "b": 2, "c": "x", "d": "1"},
        {"a": None, "b": None, "c": "y", "d": None},
    ]


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        (
            "p AS PROCTIME() + INTERVAL '1' SECOND",
            "computed column 'p': PROCTIME() must be a column on its own",
        ),
        ("p AS PROCTIME(a)", "computed column 'p': PROCTIME() takes no arguments"),
        ("b AS a + 1, c AS b * 2", "computed column 'c': it names computed column 'b'"),
        ("b AS z + 1", "computed column 'b': 'z' is not a column of 's'"),
        (
            "b AS no_such_function(a)",
            "computed column 'b': function 'no_such_function' is not supported",
        ),
    ],
)
def test_computed_columns_that_cannot_be_evaluated_are_refused_at_create(
    sh: StreamHouse, ddl: str, message: str
) -> None:
    with pytest.raises(SqlError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        sh.sql(f"CREATE STREAM s (a INT, {ddl}) WITH (topic = 's')")
    assert error.value.line == 1 and error.value.column > 17  # at the column definition
    assert sh.log.metadata.get_catalog("s") is None  # nothing was created


def test_metadata_columns_read_the_record_and_can_carry_the_watermark(sh: StreamHouse) -> None:
    """``ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp'`` with the WATERMARK on it: a TUMBLE
    over the records' own timestamps, continuously in micro-batches of two and bounded."""
    sh.sql(
        "CREATE STREAM m (v BIGINT, ts TIMESTAMP_LTZ(3) METADATA FROM 'timestamp', "
        "`partition` INT METADATA VIRTUAL, off BIGINT METADATA FROM 'offset' VIRTUAL, "
        "WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (topic = 'm')"
    )
    seconds = [1, 3, 2, 6, 9, 8, 12]
    sh.produce("m", [{"v": s} for s in seconds], timestamp=[T0 + s * SECOND for s in seconds])
    star = sh.sql("SELECT * FROM m").to_arrow_table()
    assert star.column_names == ["v", "ts", "partition", "off"]
    assert [(r["v"], r["off"], r["partition"]) for r in star.to_pylist()] == [
        (s, i, 0) for i, s in enumerate(seconds)
    ]
    assert [to_ms(r["ts"]) for r in star.to_pylist()] == [T0 + s * SECOND for s in seconds]
    sql = (
        "SELECT window_start, COUNT(*) AS n, SUM(v) AS s, MAX(off) AS last "
        "FROM m GROUP BY TUMBLE(ts, INTERVAL '5' SECOND)"
    )
    want = [(T0, 3, 6, 2), (T0 + 5 * SECOND, 3, 23, 5), (T0 + 10 * SECOND, 1, 12, 6)]
    columns = ("window_start", "n", "s", "last")
    bounded = sh.sql(sql).to_arrow_table().to_pylist()
    assert rows_of(bounded, columns, ("window_start",)) == want
    assert rows_of(continuous_rows(sh, sql, "m", batch=2), columns, ("window_start",)) == want


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        (
            "h MAP<STRING, BYTES> METADATA FROM 'headers'",
            "METADATA FROM 'headers' is not supported",
        ),
        (
            "r ROW<x INT> METADATA FROM 'offset'",
            "the record's offset (int64) does not cast to struct<x: int32>",
        ),
    ],
)
def test_metadata_keys_it_does_not_have_are_refused(
    sh: StreamHouse, ddl: str, message: str
) -> None:
    with pytest.raises(SqlError, match=re.escape(f"metadata column '{ddl.split()[0]}': {message}")):
        sh.sql(f"CREATE STREAM s (a INT, {ddl}) WITH (topic = 's')")


def test_proctime_is_the_clock_when_each_batch_is_read(sh: StreamHouse) -> None:
    """``p AS PROCTIME()``: TIMESTAMP(3) read from the clock once per decoded batch (an
    injected clock here), between the wall-clock times before and after a bounded query."""
    ddl = "CREATE STREAM s (a INT, p AS PROCTIME(), b AS a + 1) WITH (topic='s')"
    sh.sql(ddl)
    ticks = iter([5_000, 7_250])
    computed = dataclasses.replace(
        ComputedColumns.of(stream_definition(parse_one(ddl))), clock=lambda: next(ticks)
    )
    batch = pa.table({"a": pa.array([1, 2, 3], pa.int32())})
    first, second = computed.apply(batch), computed.apply(batch.slice(1))
    assert first.column_names == ["a", "p", "b"] and first.schema.field("p").type == PROCTIME_TYPE
    assert [to_ms(t) for t in first.column("p").to_pylist()] == [5_000] * 3
    assert [to_ms(t) for t in second.column("p").to_pylist()] == [7_250] * 2
    assert computed.apply(batch.slice(0, 0)).column("p").type == PROCTIME_TYPE

    sh.produce("s", [{"a": i} for i in range(5)])
    before = wall_clock_ms()
    table = sh.sql("SELECT * FROM s").to_arrow_table()
    after = wall_clock_ms()
    assert table.column_names == ["a", "p", "b"] and table.schema.field("p").type == PROCTIME_TYPE
    assert table.column("b").to_pylist() == [1, 2, 3, 4, 5]
    assert all(before <= to_ms(t) <= after for t in table.column("p").to_pylist())


def test_proctime_carries_no_watermark_and_continuous_windows_over_it_run(
    sh: StreamHouse,
) -> None:
    """Both window syntaxes over ``p`` start (they close by the clock, whatever the stream's
    event-time WATERMARK: tests/test_proctime_windows.py)."""
    with pytest.raises(SqlError, match="a WATERMARK cannot be declared on the processing-time"):
        sh.sql("CREATE STREAM w (a INT, p AS PROCTIME(), WATERMARK FOR p AS p) WITH (topic='w')")
    assert sh.log.metadata.get_catalog("w") is None
    sh.sql(
        "CREATE STREAM s (a INT, p AS PROCTIME(), t TIMESTAMP(3), WATERMARK FOR t AS t)"
        " WITH (topic='s')"
    )
    for i, window in enumerate(
        (
            "SELECT window_start, COUNT(*) AS n FROM s GROUP BY TUMBLE(p, INTERVAL '5' SECOND)",
            "SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE s, DESCRIPTOR(p),"
            " INTERVAL '5' SECOND)) GROUP BY window_start, window_end",
        )
    ):
        query = sh.start(f"INSERT INTO out{i} {window}", name=f"w{i}")
        try:
            assert query.proctime_window is not None
            assert query.proctime_window.size_ms == 5000
        finally:
            query.stop()


def test_continuous_windows_over_a_column_other_than_the_watermark_are_refused(
    sh: StreamHouse,
) -> None:
    """A window over a declared TIMESTAMP that is not the WATERMARK column would close by the
    other column's watermark and drop its rows as late: refused, as Flink refuses it."""
    sh.sql(
        "CREATE STREAM e (k INT, t TIMESTAMP(3), u TIMESTAMP(3),"
        " WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic='e')"
    )
    for window in (
        "SELECT k, COUNT(*) AS n FROM e GROUP BY k, TUMBLE(u, INTERVAL '5' SECOND)",
        "SELECT window_start, COUNT(*) AS n FROM TABLE(HOP(TABLE e, DESCRIPTOR(u),"
        " INTERVAL '5' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
        "WITH v AS (SELECT k, u AS later FROM e) SELECT k, COUNT(*) AS n FROM v"
        " GROUP BY k, TUMBLE(later, INTERVAL '5' SECOND)",
    ):
        with pytest.raises(SqlError, match="'u' is not a time attribute of 'e'") as e:
            sh.start(f"INSERT INTO out_u {window}")
        assert e.value.line == 1 and e.value.column > 0
    query = sh.start(
        "INSERT INTO out_t SELECT k, COUNT(*) AS n FROM e GROUP BY k, TUMBLE(t, INTERVAL '5' SECOND)"
    )
    query.stop()
