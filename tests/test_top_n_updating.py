"""Top-N over an updating aggregate: ``ROW_NUMBER() OVER ([PARTITION BY p] ORDER BY n DESC)
<= N`` over a ``GROUP BY``. Each rank is an upsert keyed by (p, rank), rewritten as the counts
change, across restarts; the batch answers of the corpus (``global_top3``,
``top2_per_key_over_counts``) are checked by test_conformance. Forms that could leave a stale
rank behind are refused at the clause that would."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from join_cases import T0, Schedule, drive, latest_records, produce, stream_ddl

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

COUNTS = "(SELECT k, COUNT(*) AS n FROM a GROUP BY k)"


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(stream_ddl("a", 1))
        yield conn


def test_ranks_follow_the_counts_across_a_restart(sh: StreamHouse) -> None:
    sql = (
        "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn"
        f" FROM {COUNTS}) WHERE rn <= 2"
    )
    keys = ["x", "y", "y", "z", "z", "z"]  # x leads first; z ends with the most, then y
    produce(sh, "a", [(k, T0, 1) for k in keys])
    drive(sh, f"INSERT INTO out {sql}", Schedule((1,), frozenset({3})))
    got = {r["rn"]: (r["k"], r["n"]) for r in latest_records(sh, "out")}
    assert got == {1: ("z", 3), 2: ("y", 2)}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC) AS rn FROM"
            f" {COUNTS}) WHERE rn <= 3 AND n > 1",
            "filtered by its rank alone",
        ),
        (
            "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC) AS rn FROM"
            " (SELECT k, COUNT(*) AS n FROM a GROUP BY k HAVING COUNT(*) > 1)) WHERE rn <= 3",
            "with HAVING",
        ),
        (
            "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (PARTITION BY n ORDER BY k)"
            f" AS rn FROM {COUNTS}) WHERE rn <= 3",
            "partitions by the aggregate's GROUP BY columns",
        ),
        (
            "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC) AS rn FROM"
            f" {COUNTS}) WHERE rn <= 3",
            "select rn",
        ),
    ],
)
def test_top_n_forms_that_could_leave_a_stale_rank_are_refused(
    sh: StreamHouse, sql: str, message: str
) -> None:
    with pytest.raises(SqlError, match=message) as error:
        sh.start(f"INSERT INTO out {sql}", name="refused").stop()
    assert error.value.line == 1 and error.value.column is not None
