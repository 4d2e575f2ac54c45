"""Views, CTEs and filtering/projecting subqueries as inputs of continuous queries.

Each query reads stream ``a`` through a view, a CTE or a subquery (under a window of either
syntax too); its continuous output — appends for windows, the latest row per key for updating
aggregates — must equal DuckDB's batch answer over the same rows, for any micro-batch split and
restarts from the checkpoint. A window on a column the input computes is refused at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from join_cases import (
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
from streamhouse.errors import SqlError

PROPERTY = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

CLICKS = "CREATE VIEW clicks AS SELECT k AS user_id, t AS click_time, v FROM a WHERE v > 0"
CLICKS_DUCK = "(SELECT k AS user_id, t AS click_time, v FROM a WHERE v > 0)"


WINDOW = ("window_start", "window_end")
QUERIES = {
    "view-under-tumbling": Query(
        "SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM clicks"
        " GROUP BY user_id, TUMBLING(click_time, INTERVAL '10' SECOND)",
        "SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(v) AS s FROM"
        f" {tumble(CLICKS_DUCK.replace('t AS click_time', 't'), 10)}"
        " GROUP BY user_id, window_start, window_end",
        ("user_id", *WINDOW, "n", "s"),
        WINDOW,
        ddl=(CLICKS,),
    ),
    "view-under-a-tvf": Query(
        "SELECT window_start, window_end, MAX(v) AS top FROM"
        " TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(click_time), INTERVAL '20' SECOND))"
        " GROUP BY window_start, window_end",
        "SELECT window_start, window_end, MAX(v) AS top FROM"
        f" {tumble('(SELECT * FROM a WHERE v > 0)', 20)} GROUP BY window_start, window_end",
        (*WINDOW, "top"),
        WINDOW,
        ddl=(CLICKS,),
    ),
    "cte-under-tumbling": Query(
        "WITH big AS (SELECT k, t, v * 10 AS w FROM a WHERE v >= 2)"
        " SELECT k, window_start, COUNT(*) AS n, SUM(w) AS s FROM big"
        " GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)",
        "SELECT k, window_start, COUNT(*) AS n, SUM(v * 10) AS s FROM"
        f" {tumble('(SELECT * FROM a WHERE v >= 2)', 10)} GROUP BY k, window_start",
        ("k", "window_start", "n", "s"),
        ("window_start",),
    ),
    "subquery-under-a-tvf": Query(
        "SELECT window_start, window_end, k, COUNT(*) AS n FROM TABLE(TUMBLE("
        "TABLE (SELECT k, t FROM a WHERE v IS NULL OR v < 3), DESCRIPTOR(t),"
        " INTERVAL '10' SECOND)) GROUP BY window_start, window_end, k",
        "SELECT window_start, window_end, k, COUNT(*) AS n FROM"
        f" {tumble('(SELECT * FROM a WHERE v IS NULL OR v < 3)', 10)}"
        " GROUP BY window_start, window_end, k",
        (*WINDOW, "k", "n"),
        WINDOW,
    ),
    "view-of-a-view-projected": Query(
        "SELECT user_id, v + 1 AS w, click_time FROM (SELECT * FROM loud) WHERE v <> 3",
        "SELECT k AS user_id, v + 1 AS w, t AS click_time FROM a WHERE v > 0 AND v > 1 AND v <> 3",
        ("user_id", "w", "click_time"),
        ("click_time",),
        ddl=(CLICKS, "CREATE VIEW loud AS SELECT * FROM clicks WHERE v > 1"),
    ),
    "cte-updating-group-by": Query(
        "WITH c AS (SELECT k, v FROM a WHERE v IS NOT NULL)"
        " SELECT k, COUNT(*) AS n, MIN(v) AS lo FROM c GROUP BY k",
        "SELECT k, COUNT(*) AS n, MIN(v) AS lo FROM a WHERE v IS NOT NULL GROUP BY k",
        ("k", "n", "lo"),
        updating=True,
    ),
}


@dataclass(frozen=True)
class Case:
    query: Query
    delay: int
    a: list[Event]
    schedule: Schedule


@st.composite
def cases(draw: st.DrawFn) -> Case:
    delay = draw(st.sampled_from([0, 2]))
    query = QUERIES[draw(st.sampled_from(sorted(QUERIES)))]
    return Case(query, delay, draw(events(delay, max_size=16)), draw(schedules))


def check(root: Path, case: Case) -> None:
    check_query(root, case.query, case.delay, {"a": case.a}, case.schedule)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_query_equals_the_batch_answer(tmp_path: Path, name: str) -> None:
    a = [("x", 1_767_225_600_000 + i * 3_000, i % 5) for i in range(12)]
    check(tmp_path, Case(QUERIES[name], 0, a, Schedule((3, 5), frozenset({2}))))


def test_views_ctes_and_subqueries_equal_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    @PROPERTY
    @given(case=cases())
    def run(case: Case) -> None:
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case)

    run()


@pytest.mark.parametrize(
    "sql",
    [
        "WITH c AS (SELECT k, t + INTERVAL '1' SECOND AS later FROM a) SELECT k, COUNT(*) AS n"
        " FROM c GROUP BY k, TUMBLING(later, INTERVAL '10' SECOND)",
        "SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE (SELECT CAST(t AS"
        " TIMESTAMP) AS later FROM a), DESCRIPTOR(later), INTERVAL '10' SECOND))"
        " GROUP BY window_start, window_end",
    ],
)
def test_a_window_on_a_computed_column_is_refused_at_it(tmp_path: Path, sql: str) -> None:
    with streamhouse.connect(tmp_path) as sh:
        sh.sql(stream_ddl("a", 0))
        with pytest.raises(SqlError, match="'later' is computed .* not a time attribute") as info:
            sh.start(sql, name="q")
        assert info.value.line == 1 and info.value.column is not None
