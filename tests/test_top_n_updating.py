"""Top-N over an updating aggregate: ``ROW_NUMBER() OVER ([PARTITION BY p] ORDER BY n DESC)
<= N`` over a ``GROUP BY``. Each rank is an upsert keyed by (p, rank), rewritten as the counts
change, across restarts; the batch answers of the corpus (``global_top3``,
``top2_per_key_over_counts``) are checked by test_conformance. Forms where a rank can leave the
output (a WHERE beyond the rank, HAVING, a partition a group moves out of) are recomputed
before and after each micro-batch; a Top-N whose rows would collide is refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from join_cases import T0, Schedule, drive, duck, latest_records, produce, stream_ddl

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


FORMS_THAT_RETRACT = [
    # a WHERE beyond the rank: a (key, rank) leaves the output when its row stops passing it
    "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM"
    f" {COUNTS}) WHERE rn <= 3 AND n > 1",
    # HAVING: a group enters the ranking late (and, as any HAVING, could leave it)
    "SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn FROM"
    " (SELECT k, COUNT(*) AS n FROM a GROUP BY k HAVING COUNT(*) > 1)) WHERE rn <= 3",
    # partitioned by a value that changes: a group moves between partitions, which shrink
    "SELECT n, k, rn FROM (SELECT k, n, ROW_NUMBER() OVER (PARTITION BY n ORDER BY k)"
    f" AS rn FROM {COUNTS}) WHERE rn <= 3",
]


@pytest.mark.parametrize("sql", FORMS_THAT_RETRACT)
def test_forms_that_retract_a_rank_run_as_recomputed_ranks(sh: StreamHouse, sql: str) -> None:
    """Once refused (a rank could go stale), these run as a Top-N over the aggregate's
    changelog: each partition a micro-batch touches is ranked before and after, and the (key,
    rank)s only before are tombstoned; read as a table, the output is DuckDB's answer."""
    keys = ["x", "y", "y", "z", "z", "z", "x", "x", "x", "w"]
    events = [(k, T0 + i * 1_000, 1) for i, k in enumerate(keys)]
    produce(sh, "a", events)
    drive(sh, f"INSERT INTO out {sql}", Schedule((1, 2), frozenset({4})))
    columns = ("k", "n", "rn")
    got = sorted(tuple(r[c] for c in columns) for r in latest_records(sh, "out"))
    want = sorted(tuple(r[c] for c in columns) for r in duck(sql, {"a": events}))
    assert got == want and want


def test_a_top_n_that_does_not_select_its_rank_is_refused(sh: StreamHouse) -> None:
    sql = (
        "SELECT k, n FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC) AS rn FROM"
        f" {COUNTS}) WHERE rn <= 3"
    )
    with pytest.raises(SqlError, match="select rn") as error:
        sh.start(f"INSERT INTO out {sql}", name="refused").stop()
    assert error.value.line == 1 and error.value.column is not None
