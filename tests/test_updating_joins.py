"""Joins over updating inputs (a ChangelogJoin): their changelog key as EXPLAIN and the sink
show it, tombstones when a joined row goes, and the forms over updating inputs refused with
what to write instead.
The answers themselves, over random inputs, micro-batch splits and restarts, are the
conformance corpus's (``join_*``, ``top*_over_*``, ``distinct_*`` in tests/fixtures/continuous).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from join_cases import (
    SECOND,
    T0,
    Schedule,
    drive,
    duck,
    latest_records,
    produce,
    rows_of,
    stream_ddl,
    tombstones,
)
from window_cases import start_paused

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.state.store import ColumnFamily, decode_table

COUNTS = "(SELECT k, COUNT(*) AS n FROM a GROUP BY k)"
SMALL_TOTALS = "(SELECT k, SUM(w) AS total FROM b GROUP BY k HAVING SUM(w) < 5)"
TWO_AGGREGATES = (
    f"SELECT x.k, x.n, y.total FROM {COUNTS} AS x JOIN {SMALL_TOTALS} AS y ON x.k = y.k"
)


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(stream_ddl("a", 1))
        conn.sql(stream_ddl("b", 1))
        yield conn


def test_a_join_of_two_aggregates_is_keyed_by_the_key_that_survives(sh: StreamHouse) -> None:
    """Each side is keyed by k and the ON equates them: every x row matches at most one y row,
    so the output is keyed by k (Flink's unique key of a join), and a pair HAVING drops on one
    side is tombstoned by k."""
    explain = sh.sql(f"EXPLAIN {TWO_AGGREGATES}").to_arrow_table().column(0).to_pylist()
    text = "\n".join(str(line) for line in explain)
    assert "ChangelogJoin  INNER" in text and "changelog: upsert by (k)" in text
    a = [("x", T0, 1), ("y", T0 + 1_000, 1), ("x", T0 + 2_000, 1)]
    b = [("x", T0, 1), ("y", T0 + 1_000, 2), ("x", T0 + 3_000, 4), ("y", T0 + 4_000, 1)]
    produce(sh, "a", a)
    produce(sh, "b", b)
    drive(sh, f"INSERT INTO out {TWO_AGGREGATES}", Schedule((1,), frozenset({3})))
    keys = sh.fetch("out")["key"].to_pylist()
    assert set(keys) == {b"x", b"y"}
    assert tombstones(sh, "out") == 1  # x's total reached 5: HAVING dropped it, the join too
    got = sorted((r["k"], r["n"], r["total"]) for r in latest_records(sh, "out"))
    want = sorted((r["k"], r["n"], r["total"]) for r in duck(TWO_AGGREGATES, {"a": a, "b": b}))
    assert got == want == [("y", 1, 3)]


def test_a_stream_joined_to_an_aggregate_is_keyed_by_both_rows(sh: StreamHouse) -> None:
    """A stream row has no key but its position: each output row is keyed by the pair of input
    row keys, and a new count upserts every b row of its key again under the same pair."""
    sql = f"SELECT b.k, b.w, x.n FROM {COUNTS} AS x JOIN b ON x.k = b.k"
    text = "\n".join(
        str(line) for line in sh.sql(f"EXPLAIN {sql}").to_arrow_table().column(0).to_pylist()
    )
    assert "changelog: upsert by (left row key, right row key)" in text
    produce(sh, "b", [("x", T0, 7), ("x", T0 + 1_000, 8)])
    produce(sh, "a", [("x", T0, 1), ("x", T0 + 1_000, 1)])
    drive(sh, f"INSERT INTO out {sql}", Schedule((1,), frozenset()))
    records = sh.fetch("out")
    assert len(set(records["key"].to_pylist())) == 2  # one key per b row
    # a micro-batch reads one record of each stream: (x, 7) with n = 1, then n = 2 upserts
    # the row of 7 again beside the new row of 8
    assert records.num_rows == 3
    assert sorted((r["w"], r["n"]) for r in latest_records(sh, "out")) == [(7, 2), (8, 2)]


def test_a_bounded_insert_plans_its_keys_as_the_continuous_query(sh: StreamHouse) -> None:
    """A bounded ``INSERT INTO ... SELECT`` is planned as the continuous one (views inlined,
    the stars of three joined inputs spelled out): its records are the continuous query's
    latest rows, keyed as its upserts are (a join keyed by its input rows' keys cannot be keyed
    outside a running query: its records have none)."""
    a = [("x", T0, 1), ("y", T0 + 1_000, 2), ("x", T0 + 2_000, 3)]
    b = [("x", T0, 5), ("y", T0 + 3_000, 6)]
    produce(sh, "a", a)
    produce(sh, "b", b)
    sh.sql("CREATE VIEW counts AS SELECT k, COUNT(*) AS n FROM a GROUP BY k")
    sh.sql("CREATE VIEW totals AS SELECT k, SUM(w) AS total FROM b GROUP BY k")
    over_views = "SELECT c.k, c.n, d.total FROM counts AS c JOIN totals AS d ON c.k = d.k"
    star = f"SELECT * FROM {COUNTS} AS c JOIN b ON c.k = b.k JOIN a ON a.k = b.k"
    for sql, topic in ((over_views, "views"), (star, "star")):
        drive(sh, f"INSERT INTO {topic} {sql}", Schedule((1,), frozenset()), name=topic)
        sh.sql(f"INSERT INTO bounded_{topic} {sql}")
    assert sorted(sh.fetch("bounded_views")["key"].to_pylist()) == [b"x", b"y"]
    assert sorted(map(str, latest_records(sh, "bounded_views"))) == sorted(
        map(str, latest_records(sh, "views"))
    )
    bounded = [json.loads(v) for v in sh.fetch("bounded_star")["value"].to_pylist()]
    assert sorted(map(str, bounded)) == sorted(map(str, latest_records(sh, "star")))
    assert list(bounded[0]) == ["k", "n", "k_1", "t", "w", "k_2", "t_1", "v"]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (  # a subquery column without a name: what would * call it?
            "SELECT * FROM (SELECT k, COUNT(*) FROM a GROUP BY k) AS c JOIN b ON c.k = b.k",
            "name the columns it outputs",
        ),
        (  # three inputs: a stream's * is its declared columns, but what is COUNT(*)'s name?
            "SELECT * FROM (SELECT k, COUNT(*) FROM a GROUP BY k) AS c JOIN b ON c.k = b.k"
            " JOIN a ON a.k = b.k",
            "over three or more joined inputs: name the columns",
        ),
        (
            f"SELECT c.k, w FROM {COUNTS} AS c JOIN b ON c.k = b.k JOIN a ON a.k = b.k",
            "qualified by its input's alias",
        ),
        (f"SELECT c.k, n FROM {COUNTS} AS c JOIN b ON c.k = b.k", "qualified by its input's alias"),
        (
            f"SELECT c.k, ROW_NUMBER() OVER (ORDER BY c.n) AS r FROM {COUNTS} AS c"
            " JOIN b ON c.k = b.k",
            "rank in a subquery over the join",
        ),
        (
            "SELECT k, n FROM (SELECT c.k, c.n, ROW_NUMBER() OVER (ORDER BY c.n DESC) AS rn"
            f" FROM {COUNTS} AS c JOIN b ON c.k = b.k) WHERE rn <= 3",
            "select rn",
        ),
        (f"SELECT n FROM {COUNTS} AS c WHERE n > 2", r"select k \(the keys of its upserts\)"),
    ],
)
def test_joins_over_updates_that_cannot_run_say_what_to_write(
    sh: StreamHouse, sql: str, message: str
) -> None:
    with pytest.raises(SqlError, match=message) as error:
        sh.start(f"INSERT INTO out {sql}", name="refused").stop()
    assert error.value.line == 1 and error.value.column is not None


def _join_state(query: ContinuousQuery) -> tuple[int, int, int]:
    """(RocksDB keys, their bytes, rows held) of the ChangelogJoin's input tables."""
    keys = size = rows = 0
    for key, value in query.store.items(ColumnFamily.SESSIONS):
        if b"cjoin_l" in key or b"cjoin_r" in key:
            keys += 1
            size += len(key) + len(value)
            rows += decode_table(value).num_rows
    return keys, size, rows


def test_a_ttl_drops_the_join_state_of_idle_keys(sh: StreamHouse) -> None:
    """``state.ttl`` is idle state retention for a join over updating inputs: a key neither
    side changed while the watermark moved on by more than the TTL is forgotten. As in Flink,
    its output rows stay, and a later b event of the key finds no count to join until the
    count changes again (which brings its whole row back)."""
    sql = f"INSERT INTO {{sink}} SELECT b.k, b.w, x.n FROM {COUNTS} AS x JOIN b ON x.k = b.k"
    explain = sh.sql("EXPLAIN " + sql.format(sink="out")).to_arrow_table().column(0).to_pylist()
    assert any("with 'state.ttl', the rows of keys idle longer" in str(x) for x in explain)
    kept = start_paused(sh, sql.format(sink="out1"), "kept")
    ttl = start_paused(sh, "SET 'state.ttl' = '10 s';\n" + sql.format(sink="out2"), "ttl")
    early = [(f"k{i}", T0 + i * 100, i) for i in range(20)]
    late = T0 + 60 * SECOND
    try:

        def run(a: list, b: list) -> None:
            produce(sh, "a", a)
            produce(sh, "b", b)
            kept.run_until_caught_up()
            ttl.run_until_caught_up()

        run(early, early)
        assert _join_state(ttl)[2] == _join_state(kept)[2] == 2 * 20  # nothing idle yet
        run([("x", late, 1)], [("x", late, 2)])  # the watermark moves on by 59 s
        full, idle = _join_state(kept), _join_state(ttl)
        assert full[2] == 2 * 21  # every count and b row is kept without a TTL
        assert idle[2] == 2  # x's count and b row: the 20 idle keys are gone
        assert idle[0] <= full[0] and idle[1] < full[1] * 2 / 3
        run([], [("k3", late + SECOND, 9)])  # k3's count expired: nothing to join
        run([("k3", late + 2 * SECOND, 1)], [])  # its new count joins the new b row
    finally:
        kept.stop()
        ttl.stop()
    without = {(r["k"], r["w"]): r["n"] for r in latest_records(sh, "out1")}
    with_ttl = {(r["k"], r["w"]): r["n"] for r in latest_records(sh, "out2")}
    assert without[("k3", 9)] == with_ttl[("k3", 9)] == 2  # joined once k3's count changed
    assert without[("k3", 3)] == 2 and with_ttl[("k3", 3)] == 1  # expired: not updated
    assert len(without) == len(with_ttl) == 22


def test_three_inputs_explain_as_a_chain_of_changelog_joins(sh: StreamHouse) -> None:
    """``x JOIN b JOIN y`` is ``(x JOIN b) JOIN y``: two ChangelogJoins, the first a derived
    input of the second under ``__chain``, each with its changelog mode and state."""
    sql = (
        f"SELECT x.k, b.w, y.total FROM {COUNTS} AS x JOIN b ON x.k = b.k"
        f" LEFT JOIN {SMALL_TOTALS} AS y ON b.k = y.k"
    )
    text = "\n".join(map(str, sh.sql(f"EXPLAIN {sql}").to_arrow_table().column(0).to_pylist()))
    assert text.count("ChangelogJoin  ") == 2
    assert "ChangelogJoin  LEFT" in text and "ChangelogJoin  INNER" in text
    assert 'AS "__chain"' in text and '"__chain"."b__k"' in text
    assert text.count("changelog: upsert by (left row key, right row key)") == 2
    assert text.count("state: column family 'sessions', key b'cjoin_l'") == 2


def test_a_materialized_view_of_a_star_over_three_inputs_reads_as_its_latest_rows(
    sh: StreamHouse,
) -> None:
    """``SELECT *`` over a count joined to two streams is updating once its stars are spelled
    out from the streams' definitions, so reading the view gives the latest row per key (each
    with the final count), named as DuckDB names them (k, k_1, k_2, t_1)."""
    sql = f"SELECT * FROM {COUNTS} AS x JOIN a ON x.k = a.k JOIN b ON a.k = b.k"
    a = [("x", T0, 1), ("x", T0 + 1_000, 2), ("y", T0 + 2_000, 3)]
    b = [("x", T0, 3), ("y", T0 + 1_000, 4)]
    produce(sh, "a", a)
    produce(sh, "b", b)
    drive(sh, f"CREATE MATERIALIZED VIEW mv AS {sql}", Schedule((1, 2), frozenset({2})))
    got = sh.sql("SELECT * FROM mv").to_arrow_table()
    columns = ("k", "n", "k_1", "t", "v", "k_2", "t_1", "w")
    assert tuple(got.column_names) == columns
    named = "x.k, x.n, a.k AS k_1, a.t, a.v, b.k AS k_2, b.t AS t_1, b.w"
    want = duck(sql.replace("SELECT *", f"SELECT {named}", 1), {"a": a, "b": b})
    assert len(want) == 3
    times = ("t", "t_1")
    assert rows_of(got.to_pylist(), columns, times) == rows_of(want, columns, times)
