"""Regular outer joins of unwindowed streams (LEFT, RIGHT, FULL): updating output.

Each output row is an upsert keyed by the (left row, right row) it joins; a row padded with
NULLs is tombstoned when its first match arrives. Read as a table (the latest record per key,
tombstones dropped), the output topic equals DuckDB's batch answer, for any micro-batch split
and restarts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

import streamhouse
from streamhouse.errors import SqlError
from tests.join_cases import (
    Schedule,
    duck,
    events,
    latest_records,
    produce,
    rows_of,
    run_continuously,
    schedules,
    scratch_dir,
    stream_ddl,
    tombstones,
)
from tests.window_cases import start_paused

COLUMNS = ("ak", "at", "bt", "v", "w")
SELECT = "SELECT a.k AS ak, a.t AS at, b.t AS bt, a.v, b.w FROM a {kind} JOIN b ON a.k = b.k"


@pytest.mark.parametrize("kind", ["LEFT", "RIGHT", "FULL"])
def test_outer_join_read_as_a_table_equals_the_batch_answer(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sql = SELECT.format(kind=kind)

    @settings(max_examples=6, deadline=None)
    @given(a=events(2, max_size=10), b=events(2, max_size=10), schedule=schedules)
    def run(a: list, b: list, schedule: object) -> None:
        inputs = {"a": a, "b": b}
        want = rows_of(duck(sql, inputs), COLUMNS, ("at", "bt"))
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            ddl = [stream_ddl("a", 2), stream_ddl("b", 2)]
            sh, status = run_continuously(root, ddl, inputs, f"INSERT INTO out {sql}", schedule)
            try:
                assert status["rows_in"] == len(a) + len(b)
                got = rows_of(latest_records(sh, "out"), COLUMNS, ("at", "bt"))
                assert got == want
                bounded = sh.sql(sql).to_arrow_table().to_pylist()
                assert rows_of(bounded, COLUMNS, ("at", "bt")) == want
            finally:
                sh.close()

    run()


def test_a_padded_row_is_tombstoned_when_its_match_arrives(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    sql = SELECT.format(kind="LEFT")
    a = [("x", 1_000, 1)]
    b = [("x", 5_000, 7)]
    with scratch_dir(tmp_path_factory.getbasetemp()) as root:
        sh = streamhouse.connect(root, linger_ms=1)
        try:
            sh.sql(stream_ddl("a", 0))
            sh.sql(stream_ddl("b", 0))
            query = start_paused(sh, f"INSERT INTO out {sql}", "q")
            produce(sh, "a", a)
            query.run_until_caught_up()
            padded = latest_records(sh, "out")
            assert [(r["v"], r["w"]) for r in padded] == [(1, None)]
            produce(sh, "b", b)
            query.run_until_caught_up()
            query.stop()
            assert tombstones(sh, "out") == 1
            assert [(r["v"], r["w"]) for r in latest_records(sh, "out")] == [(1, 7)]
        finally:
            sh.close()


JOIN_OVER_FULL = (
    "SELECT j.ak, j.w, c.v FROM (SELECT a.k AS ak, b.w FROM a FULL JOIN b ON a.k = b.k) j"
    " JOIN a AS c ON j.ak = c.k"
)


@pytest.mark.parametrize(
    "schedule", [Schedule((1,), frozenset()), Schedule((2, 1), frozenset({2}))]
)
def test_a_join_over_an_outer_join_takes_its_retractions(
    schedule: Schedule, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """An outer join retracts its padded rows; a join over it took only the appends and kept
    each padded row on top of its match. It now consumes the
    retractions (a ChangelogJoin): read as a table, its output is DuckDB's answer."""
    a = [("x", 1_000, 1), ("y", 2_000, 2), ("x", 3_000, 3)]
    b = [("z", 5_000, 20), ("x", 6_000, 10)]  # x's match comes after x's padded row
    inputs = {"a": a, "b": b}
    columns = ("ak", "w", "v")
    with scratch_dir(tmp_path_factory.getbasetemp()) as root:
        ddl = [stream_ddl("a", 0), stream_ddl("b", 0)]
        sql = f"INSERT INTO out {JOIN_OVER_FULL}"
        sh, _ = run_continuously(root, ddl, inputs, sql, schedule)
        try:
            want = rows_of(duck(JOIN_OVER_FULL, inputs), columns)
            assert len(want) == 5
            assert rows_of(latest_records(sh, "out"), columns) == want
            assert tombstones(sh, "out") > 0  # padded rows were retracted downstream
        finally:
            sh.close()


AGGREGATES = {
    # every aggregate over the preserved side's key: padded rows are retracted from their group
    "left-all-aggregates": (
        "SELECT a.k AS ak, COUNT(*) AS n, COUNT(b.t) AS nb, SUM(b.w) AS s, MIN(b.w) AS lo,"
        " MAX(b.w) AS hi, AVG(a.v) AS av FROM a LEFT JOIN b ON a.k = b.k GROUP BY a.k",
        ("ak", "n", "nb", "s", "lo", "hi", "av"),
    ),
    # HAVING drops groups as matches arrive: tombstones
    "right-having": (
        "SELECT b.k AS bk, COUNT(a.v) AS n, MAX(a.t) AS last FROM a RIGHT JOIN b ON a.k = b.k"
        " GROUP BY b.k HAVING COUNT(a.v) < 3",
        ("bk", "n", "last"),
    ),
    # two keys, one of them NULL in padded rows: those groups empty as matches arrive
    "full-two-keys": (
        "SELECT a.k AS ak, b.k AS bk, COUNT(*) AS n, MIN(a.v) AS lo, SUM(b.w) AS s"
        " FROM a FULL JOIN b ON a.k = b.k GROUP BY a.k, b.k",
        ("ak", "bk", "n", "lo", "s"),
    ),
}


@pytest.mark.parametrize("name", sorted(AGGREGATES))
def test_aggregate_over_an_outer_join_equals_the_batch_answer(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The join retracts a padded row when its first match arrives; the GROUP BY over it takes
    the retraction (its group is recomputed without the row), so the output read as a table is
    DuckDB's answer, for any micro-batch split and restarts."""
    sql, columns = AGGREGATES[name]
    times = ("last",) if "last" in columns else ()

    @settings(max_examples=8, deadline=None)
    @given(a=events(2, max_size=10), b=events(2, max_size=10), schedule=schedules)
    def run(a: list, b: list, schedule: object) -> None:
        inputs = {"a": a, "b": b}
        want = rows_of(duck(sql, inputs), columns, times)
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            ddl = [stream_ddl("a", 2), stream_ddl("b", 2)]
            sh, status = run_continuously(root, ddl, inputs, f"INSERT INTO out {sql}", schedule)
            try:
                assert status["rows_in"] == len(a) + len(b)
                got = rows_of(latest_records(sh, "out"), columns, times)
                assert got == want
            finally:
                sh.close()

    run()


def test_a_group_by_a_padded_column_alone_is_refused(tmp_path: Path) -> None:
    sql = "SELECT b.k AS bk, COUNT(*) AS n FROM a LEFT JOIN b ON a.k = b.k GROUP BY b.k"
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(stream_ddl("a", 0))
        sh.sql(stream_ddl("b", 0))
        with pytest.raises(SqlError, match="NULL key") as error:
            start_paused(sh, f"INSERT INTO out {sql}", "q")
        start = len("INSERT INTO out ") + sql.index("GROUP BY b.k") + len("GROUP BY ") + 1
        assert start <= error.value.column <= start + len("b.k")  # at the GROUP BY key


def test_a_retracted_padded_row_leaves_its_group(tmp_path_factory: pytest.TempPathFactory) -> None:
    """a's row is counted padded first; when b's match arrives the padded row is retracted and
    the group recomputed: one row, not the padded one on top of the match."""
    sql, columns = AGGREGATES["left-all-aggregates"]
    with scratch_dir(tmp_path_factory.getbasetemp()) as root:
        sh = streamhouse.connect(root, linger_ms=1)
        try:
            sh.sql(stream_ddl("a", 0))
            sh.sql(stream_ddl("b", 0))
            query = start_paused(sh, f"INSERT INTO out {sql}", "q")
            produce(sh, "a", [("x", 1_000, 1)])
            query.run_until_caught_up()
            assert [(r["n"], r["nb"], r["hi"]) for r in latest_records(sh, "out")] == [(1, 0, None)]
            query.stop()
            query = start_paused(sh, f"INSERT INTO out {sql}", "q")  # the padded row survives
            produce(sh, "b", [("x", 5_000, 7)])
            query.run_until_caught_up()
            query.stop()
            assert [(r["n"], r["nb"], r["hi"]) for r in latest_records(sh, "out")] == [(1, 1, 7)]
        finally:
            sh.close()


def test_an_aggregate_without_group_by_over_an_outer_join(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Its one group (record key ``{}``) is recomputed as padded rows are retracted, across a
    restart; HAVING dropping it writes a tombstone."""
    sql = (
        "SELECT COUNT(*) AS n, COUNT(b.t) AS nb, MAX(b.w) AS hi FROM a LEFT JOIN b ON a.k = b.k"
        " HAVING COUNT(*) < 3"
    )
    with scratch_dir(tmp_path_factory.getbasetemp()) as root:
        sh = streamhouse.connect(root, linger_ms=1)
        try:
            sh.sql(stream_ddl("a", 0))
            sh.sql(stream_ddl("b", 0))
            query = start_paused(sh, f"INSERT INTO out {sql}", "q")
            produce(sh, "a", [("x", 1_000, 1), ("y", 2_000, 2)])
            query.run_until_caught_up()
            query.stop()
            assert [(r["n"], r["nb"], r["hi"]) for r in latest_records(sh, "out")] == [(2, 0, None)]
            query = start_paused(sh, f"INSERT INTO out {sql}", "q")
            produce(sh, "b", [("x", 5_000, 7)])
            query.run_until_caught_up()
            assert [(r["n"], r["nb"], r["hi"]) for r in latest_records(sh, "out")] == [(2, 1, 7)]
            produce(sh, "b", [("y", 6_000, 4)])
            produce(sh, "a", [("x", 7_000, 3)])
            query.run_until_caught_up()
            query.stop()
            assert latest_records(sh, "out") == []  # 3 rows: HAVING drops the one group
            assert tombstones(sh, "out") == 1
        finally:
            sh.close()
