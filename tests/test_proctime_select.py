"""``PROCTIME() AS p`` in the SELECT list of a view, a CTE or a derived table that projects one
stream: the same processing-time attribute as the computed column ``p AS PROCTIME()``. With the
same injected clock, the same micro-batch splits and a restart, each form's output equals the
computed-column form's, which equals DuckDB's windows over the (row, clock) pairs. ``PROCTIME()``
anywhere else is refused with its clause named."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import AGGREGATES, oracle, rows_of, run_on_clock, start_paused, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]
WINDOW = "TABLE(TUMBLE(TABLE {src}, DESCRIPTOR(p), INTERVAL '2' SECOND))"
GROUP = " GROUP BY k, window_start, window_end"

FORMS = {  # the query over ev (computed column p) and over evr (no p) in each form
    "computed column": f"SELECT k, window_start, window_end, {AGGREGATES}"
    f" FROM {WINDOW.format(src='ev')}{GROUP}",
    "view": f"SELECT k, window_start, window_end, {AGGREGATES}"
    f" FROM {WINDOW.format(src='evp')}{GROUP}",
    "cte": f"WITH c AS (SELECT *, PROCTIME() AS p FROM evr) SELECT k, window_start,"
    f" window_end, {AGGREGATES} FROM {WINDOW.format(src='c')}{GROUP}",
    "derived table": f"SELECT k, window_start, window_end, {AGGREGATES} FROM"
    " TABLE(TUMBLE(TABLE (SELECT k, v, PROCTIME() AS p FROM evr WHERE v >= 0),"
    f" DESCRIPTOR(p), INTERVAL '2' SECOND)){GROUP}",
}


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql("CREATE STREAM ev (k STRING, v BIGINT, p AS PROCTIME()) WITH (topic = 'ev')")
        conn.sql("CREATE STREAM evr (k STRING, v BIGINT) WITH (topic = 'ev')")
        conn.sql("CREATE VIEW evp AS SELECT *, PROCTIME() AS p FROM evr")
        yield conn


def run_windows(sh: StreamHouse, sql: str, name: str, seed: int) -> tuple[list, list]:
    """The windows of ``sql`` run continuously on an injected clock with random micro-batch
    splits and a restart (the same splits and clock for the same seed); and the (k, clock, v)
    of every row read."""
    rows = topic_rows(sh, "ev")
    query = f"INSERT INTO out_{name} {sql}"
    stamped, _ = run_on_clock(sh, query, name, rows, random.Random(seed), T0 + 123)
    return rows_of(topic_rows(sh, f"out_{name}"), COLUMNS), stamped


def test_proctime_in_a_view_cte_or_derived_table_equals_the_computed_column(
    sh: StreamHouse,
) -> None:
    rng = random.Random(24)
    sh.produce("ev", [{"k": rng.choice("ab"), "v": rng.randrange(10)} for _ in range(80)])
    answers = {}
    for i, (form, sql) in enumerate(FORMS.items()):
        answers[form], stamped = run_windows(sh, sql, f"q{i}", seed=7)
        assert answers[form] == oracle(stamped, "tumble", 2000, None), form
    assert len(answers["computed column"]) > 3
    assert all(a == answers["computed column"] for a in answers.values())


def test_a_lookup_join_probes_at_the_proctime_of_a_derived_table(sh: StreamHouse) -> None:
    """Nexmark q13's shape: ``FROM (SELECT *, PROCTIME() AS p FROM s) B JOIN dim FOR
    SYSTEM_TIME AS OF B.p``; with the versioned table loaded first, each row gets its key's
    latest version, bounded and continuously (micro-batches smaller than the table and a
    restart), as the join of the latest rows computed by hand."""
    sh.sql(
        "CREATE TABLE dim (key BIGINT, name STRING, PRIMARY KEY (key) NOT ENFORCED)"
        " WITH (topic = 'dim')"
    )
    # 400 versions of 200 keys: more than a micro-batch; all in the log before the probes
    dim = [{"key": k, "name": f"n{k}-{version}"} for version in range(2) for k in range(200)]
    sh.produce("dim", dim)
    rng = random.Random(13)
    bids = [{"k": f"x{i}", "v": rng.randrange(250)} for i in range(120)]
    sh.produce("ev", bids)
    sql = (
        "SELECT B.k, B.v, S.name FROM (SELECT *, PROCTIME() AS p FROM evr) B"
        " JOIN dim FOR SYSTEM_TIME AS OF B.p AS S ON B.v = S.key"
    )
    expected = sorted((b["k"], b["v"], f"n{b['v']}-1") for b in bids if b["v"] < 200)
    bounded = sh.sql(sql).to_arrow_table().to_pylist()
    assert sorted((r["k"], r["v"], r["name"]) for r in bounded) == expected
    query = start_paused(sh, f"INSERT INTO out_q13 {sql}", "q13")
    try:
        query.step(max_records=25)  # the table to its end, whatever the budget
        query.stop()
        query = start_paused(sh, f"INSERT INTO out_q13 {sql}", "q13")
        while query.step(max_records=17):
            pass
    finally:
        query.stop()
    out = topic_rows(sh, "out_q13")
    assert sorted((r["k"], r["v"], r["name"]) for r in out) == expected


def test_bounded_proctime_of_a_view_is_one_reading_per_read(sh: StreamHouse) -> None:
    sh.produce("ev", [{"k": "a", "v": i} for i in range(5)])
    rows = sh.sql("SELECT k, v, p FROM evp").to_arrow_table().to_pylist()
    direct = sh.sql("SELECT k, v FROM evr").to_arrow_table().to_pylist()
    assert [(r["k"], r["v"]) for r in rows] == [(r["k"], r["v"]) for r in direct]
    assert len({r["p"] for r in rows}) == 1 and rows[0]["p"] is not None
    star = sh.sql("SELECT * FROM (SELECT *, PROCTIME() AS p FROM evr) b").to_arrow_table()
    assert star.column_names == ["k", "v", "p"]


@pytest.mark.parametrize(
    ("sql", "clause"),
    [
        ("SELECT k, COUNT(*) AS n, PROCTIME() AS p FROM evr GROUP BY k", "an aggregation"),
        ("SELECT a.k, PROCTIME() AS p FROM evr a JOIN ev b ON a.k = b.k", "of a join"),
        ("SELECT k FROM evr WHERE PROCTIME() > TIMESTAMP '2020-01-01 00:00:00'", "in WHERE"),
        ("SELECT k, CAST(PROCTIME() AS STRING) AS s FROM evr", "inside an expression"),
        ("SELECT PROCTIME() AS p", "without a stream"),
    ],
)
def test_proctime_elsewhere_is_refused_with_its_clause(
    sh: StreamHouse, sql: str, clause: str
) -> None:
    with pytest.raises(SqlError, match=f"PROCTIME\\(\\) .*{clause}") as error:
        sh.sql(sql).to_arrow_table()
    assert error.value.line == 1 and error.value.column is not None
    with pytest.raises(SqlError, match=f"PROCTIME\\(\\) .*{clause}"):
        start_paused(sh, f"INSERT INTO out_bad {sql}", "bad")
