"""Regular outer joins of unwindowed streams (LEFT, RIGHT, FULL): updating output.

Each output row is an upsert keyed by the (left row, right row) it joins; a row padded with
NULLs is tombstoned when its first match arrives. Read as a table (the latest record per key,
tombstones dropped), the output topic equals DuckDB's batch answer, for any micro-batch split
and restarts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

import streamhouse
from tests.join_cases import (
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
