"""UNION ALL of append-only inputs, run continuously.

Each input (a filter, a projection, a window aggregate) is a derived input of one UNION ALL
node; the sink's records must equal DuckDB's batch answer over the same rows for any
micro-batch split and restarts from the checkpoint. The query's watermark is the minimum over
the streams the inputs read, so a window in one input closes only when both streams passed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from join_cases import (
    T0,
    Event,
    Query,
    Schedule,
    check_query,
    events,
    schedules,
    scratch_dir,
    stream_ddl,
    tumble,
)

import streamhouse
from streamhouse.connection import StreamHouse
from streamhouse.errors import SqlError

PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


QUERIES = {
    "two-streams": Query(
        "SELECT k, t, v AS x FROM a WHERE v > 1 UNION ALL SELECT k, t, w FROM b WHERE w < 3",
        "SELECT k, t, v AS x FROM a WHERE v > 1 UNION ALL SELECT k, t, w FROM b WHERE w < 3",
        ("k", "t", "x"),
        ("t",),
    ),
    "one-stream-twice-three-ways": Query(
        "SELECT k, v AS x FROM a WHERE v > 2 UNION ALL SELECT k, v * 10 FROM a WHERE v IS NULL"
        " UNION ALL SELECT upper(k), w FROM b WHERE w = 0",
        "SELECT k, v AS x FROM a WHERE v > 2 UNION ALL SELECT k, v * 10 FROM a WHERE v IS NULL"
        " UNION ALL SELECT upper(k), w FROM b WHERE w = 0",
        ("k", "x"),
    ),
    "window-aggregates": Query(
        "SELECT 'a' AS side, k, window_start, COUNT(*) AS n FROM a"
        " GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)"
        " UNION ALL SELECT 'b', k, window_start, SUM(w) FROM TABLE(TUMBLE(TABLE b,"
        " DESCRIPTOR(t), INTERVAL '20' SECOND)) GROUP BY k, window_start, window_end",
        f"SELECT 'a' AS side, k, window_start, COUNT(*) AS n FROM {tumble('a', 10)}"
        f" GROUP BY k, window_start UNION ALL SELECT 'b', k, window_start, SUM(w)"
        f" FROM {tumble('b', 20)} GROUP BY k, window_start",
        ("side", "k", "window_start", "n"),
        ("window_start",),
    ),
    "lag-over-a-union": Query(
        "SELECT k, t, x, LAG(x, 2) OVER (PARTITION BY k ORDER BY t, x) AS before2 FROM (SELECT"
        " k, t, v AS x FROM a WHERE v > 0 UNION ALL SELECT k, t, w FROM b) AS u",
        "SELECT k, t, x, LAG(x, 2) OVER (PARTITION BY k ORDER BY t, x) AS before2 FROM (SELECT"
        " k, t, v AS x FROM a WHERE v > 0 UNION ALL SELECT k, t, w FROM b) AS u",
        ("k", "t", "x", "before2"),
        ("t",),
    ),
    "window-over-a-union": Query(
        "SELECT k, window_start, COUNT(*) AS n, SUM(x) AS s FROM (SELECT k, t, v AS x FROM a"
        " WHERE v > 0 UNION ALL SELECT k, t, w FROM b) AS u"
        " GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)",
        "SELECT k, window_start, COUNT(*) AS n, SUM(x) AS s FROM"
        f" {tumble('(SELECT k, t, v AS x FROM a WHERE v > 0 UNION ALL SELECT k, t, w FROM b)', 10)}"
        " GROUP BY k, window_start",
        ("k", "window_start", "n", "s"),
        ("window_start",),
    ),
    "tvf-over-a-union-cte": Query(
        "WITH u AS (SELECT k, t FROM a UNION ALL SELECT k, t FROM b WHERE w > 1)"
        " SELECT window_start, window_end, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE u,"
        " DESCRIPTOR(t), INTERVAL '20' SECOND)) GROUP BY window_start, window_end",
        "SELECT window_start, window_end, COUNT(*) AS n FROM"
        f" {tumble('(SELECT k, t FROM a UNION ALL SELECT k, t FROM b WHERE w > 1)', 20)}"
        " GROUP BY window_start, window_end",
        ("window_start", "window_end", "n"),
        ("window_start", "window_end"),
    ),
}


@dataclass(frozen=True)
class Case:
    query: Query
    delay: int
    a: list[Event]
    b: list[Event]
    schedule: Schedule


@st.composite
def cases(draw: st.DrawFn) -> Case:
    delay = draw(st.sampled_from([0, 2]))
    query = QUERIES[draw(st.sampled_from(sorted(QUERIES)))]
    a, b = draw(events(delay, max_size=12)), draw(events(delay, max_size=12))
    return Case(query, delay, a, b, draw(schedules))


def check(root: Path, case: Case) -> None:
    check_query(root, case.query, case.delay, {"a": case.a, "b": case.b}, case.schedule)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_union_equals_the_batch_answer(tmp_path: Path, name: str) -> None:
    a = [("x", T0 + i * 3_000, i % 5) for i in range(12)]
    b = [("y", T0 + i * 4_000, (i + 1) % 4) for i in range(9)]
    check(tmp_path, Case(QUERIES[name], 0, a, b, Schedule((3, 5), frozenset({2}))))


def test_unions_equal_the_batch_answer(tmp_path_factory: pytest.TempPathFactory) -> None:
    @PROPERTY
    @given(case=cases())
    def run(case: Case) -> None:
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case)

    run()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM a UNION SELECT * FROM b", "names its columns"),
        ("SELECT k FROM b UNION ALL (SELECT k FROM a UNION SELECT k FROM b)", "use UNION ALL"),
        (
            "SELECT window_start, COUNT(*) AS n FROM (SELECT k, t FROM (SELECT k, t,"
            " ROW_NUMBER() OVER (PARTITION BY k ORDER BY t DESC) AS rn FROM a) WHERE rn = 1"
            " UNION ALL SELECT k, t FROM b) GROUP BY TUMBLING(t, INTERVAL '10' SECOND)",
            "a window takes appends only",
        ),
        (
            "SELECT window_start, COUNT(*) AS n FROM (SELECT k, t FROM a UNION ALL SELECT k,"
            " t + INTERVAL '1' SECOND FROM b) GROUP BY TUMBLING(t, INTERVAL '10' SECOND)",
            "not a time attribute",
        ),
        (
            "SELECT window_start, COUNT(*) AS n FROM (SELECT k, t FROM a UNION ALL SELECT k,"
            " window_start AS t FROM b GROUP BY k, TUMBLING(t, INTERVAL '5' SECOND))"
            " GROUP BY TUMBLING(t, INTERVAL '10' SECOND)",
            "filters and projections of streams",
        ),
        (  # an OVER orders by the time attribute: b's t + 1 s is not one
            "SELECT k, COUNT(*) OVER (PARTITION BY k ORDER BY t ROWS BETWEEN 1 PRECEDING AND"
            " CURRENT ROW) AS n FROM (SELECT k, t FROM a UNION ALL SELECT k,"
            " t + INTERVAL '1' SECOND AS t FROM b)",
            "computes 't'",
        ),
        (
            "SELECT k, COUNT(*) OVER (PARTITION BY k ORDER BY t ROWS BETWEEN 1 PRECEDING AND"
            " CURRENT ROW) AS n FROM (SELECT k, t FROM a UNION ALL SELECT k, MAX(t) AS t FROM b"
            " GROUP BY k)",
            "not a time attribute",
        ),
    ],
)
def test_a_union_that_cannot_run_is_refused(tmp_path: Path, sql: str, message: str) -> None:
    with streamhouse.connect(tmp_path) as sh:
        sh.sql(stream_ddl("a", 0))
        sh.sql(stream_ddl("b", 0))
        with pytest.raises(SqlError, match=message):
            sh.start(sql, name="q")


def test_a_union_input_passing_another_timestamp_is_named(tmp_path: Path) -> None:
    """An OVER over a UNION ALL whose second input passes a timestamp that is not its
    stream's time attribute: the error names that input, its stream and what to select."""
    with streamhouse.connect(tmp_path) as sh:
        over = (
            "SELECT k, COUNT(*) OVER (PARTITION BY k ORDER BY t ROWS BETWEEN 1 PRECEDING AND"
            " CURRENT ROW) AS n FROM (SELECT k, t FROM a UNION ALL SELECT k, t FROM {})"
        )
        assert "__derived" not in str(_refused_over_a_and_c(sh, over))
        sh.sql("CREATE STREAM d (k STRING, t TIMESTAMP(3)) WITH (topic = 'd', format = 'json')")
        with pytest.raises(SqlError, match="'d' has no time attribute: declare a WATERMARK on"):
            sh.start(over.format("d"), name="q2")


UNION_OF_A_AND = "(SELECT k, t FROM a UNION ALL SELECT k, t FROM {})"


@pytest.mark.parametrize(
    "window",
    [
        f"SELECT window_start, COUNT(*) AS n FROM {UNION_OF_A_AND}"
        " GROUP BY TUMBLING(t, INTERVAL '10' SECOND)",
        f"SELECT window_start, COUNT(*) AS n FROM {UNION_OF_A_AND} AS u"
        " GROUP BY SESSION(t, INTERVAL '10' SECOND)",
        "WITH u AS " + UNION_OF_A_AND + " SELECT window_start, window_end, COUNT(*) AS n"
        " FROM TABLE(HOP(TABLE u, DESCRIPTOR(t), INTERVAL '5' SECOND, INTERVAL '10' SECOND))"
        " GROUP BY window_start, window_end",
        "WITH u AS " + UNION_OF_A_AND + " SELECT window_start, window_end, COUNT(*) AS n"
        " FROM TABLE(CUMULATE(TABLE u, DESCRIPTOR(t), INTERVAL '5' SECOND, INTERVAL '10'"
        " SECOND)) GROUP BY window_start, window_end",
        "SELECT * FROM (SELECT window_start, k, t, ROW_NUMBER() OVER (PARTITION BY"
        " window_start ORDER BY t DESC) AS rn FROM TABLE(TUMBLE(TABLE " + UNION_OF_A_AND + ","
        " DESCRIPTOR(t), INTERVAL '10' SECOND))) WHERE rn <= 1",
    ],
    ids=["tumbling", "session", "hop-tvf", "cumulate-tvf", "window-top-n"],
)
def test_a_window_over_a_union_input_passing_another_timestamp_is_refused(
    tmp_path: Path, window: str
) -> None:
    """A window over a UNION ALL whose second input passes a timestamp that is not its
    stream's time attribute would drop that input's rows as late: it is refused, naming the
    input, its stream and what to select, at the stream's reference."""
    with streamhouse.connect(tmp_path) as sh:
        refused = _refused_over_a_and_c(sh, window)
        assert refused.line == 1
        assert refused.column == window.format("c").index("FROM c") + len("FROM c")
        sh.start(window.format("a"), name="q2").stop()  # each input passes its own: it runs


def _refused_over_a_and_c(sh: StreamHouse, query: str) -> SqlError:
    """``query`` over a UNION ALL of ``a`` and ``c`` (``{}`` in it, formatted with the
    stream), where ``c`` passes its ``t`` though its time attribute is ``t2``: refused, naming
    input 2, its stream and what to select."""
    sh.sql(stream_ddl("a", 0))
    sh.sql(
        "CREATE STREAM c (k STRING, t TIMESTAMP(3), t2 TIMESTAMP(3), v BIGINT,"
        " WATERMARK FOR t2 AS t2) WITH (topic = 'c', format = 'json', partitions = '1')"
    )
    with pytest.raises(SqlError) as refused:
        sh.start(query.format("c"), name="refused")
    message = str(refused.value)
    assert "input 2 of the UNION ALL (stream 'c') passes 't'" in message
    assert "not its time attribute 't2': select t2 there (as t)" in message
    return refused.value
