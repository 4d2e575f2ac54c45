"""Updating views: a GROUP BY without a window and Top-N / deduplication per key.

Their output topic is an upsert stream: a record per changed key (the group keys, or the Top-N
keys and rank), a tombstone when HAVING drops a key. Read as a table (the latest record per key,
tombstones dropped) it must equal DuckDB's batch answer over the same rows, for any micro-batch
split, restarts from the checkpoint and disorder — and the bounded query (``sh.sql``) too. A
materialized view of such a query reads back with ``SELECT * FROM v``: one row per key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from join_cases import (
    SECOND,
    T0,
    Event,
    Schedule,
    duck,
    events,
    first_per_key_and_time,
    latest_records,
    produce,
    rows_of,
    run_continuously,
    schedules,
    scratch_dir,
    stream_ddl,
    tombstones,
)
from window_cases import start_paused

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.sql.execute import run_sql
from streamhouse.sql.parse import parse
from streamhouse.sql.plan import plan_query
from streamhouse.state.store import ColumnFamily, StateStore, TableState
from streamhouse.views.top_n import TopNOperator

PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class View:
    sql: str
    columns: tuple[str, ...]
    times: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    view: View
    delay: int
    partitions: int
    a: list[Event]
    schedule: Schedule


def check(root: Path, case: Case) -> StreamHouse:
    """The latest row per key of the output topic and the bounded answer equal DuckDB's;
    returns the (open) connection for more checks."""
    view = case.view
    want = rows_of(duck(view.sql, {"a": case.a}), view.columns, view.times)
    sh, status = run_continuously(
        root,
        [stream_ddl("a", case.delay, case.partitions)],
        {"a": case.a},
        f"INSERT INTO out {view.sql}",
        case.schedule,
    )
    try:
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        assert status["rows_in"] == len(case.a)
        assert rows_of(latest_records(sh, "out"), view.columns, view.times) == want
        bounded = sh.sql(view.sql).to_arrow_table().to_pylist()
        assert rows_of(bounded, view.columns, view.times) == want
    except BaseException:
        sh.close()
        raise
    return sh


@st.composite
def cases(draw: st.DrawFn, views: st.SearchStrategy[View], unique_times: bool = False) -> Case:
    delay = draw(st.sampled_from([0, 2]))
    a = draw(events(delay, max_size=18))
    if unique_times:  # dedup by time: which of two rows at the same time is first is arbitrary
        a = first_per_key_and_time(a)
    return Case(draw(views), delay, draw(st.sampled_from([1, 2])), a, draw(schedules))


# -- updating GROUP BY -------------------------------------------------------------------------

AGGREGATES = (
    "COUNT(*) AS n, SUM(v) AS s, COUNT(DISTINCT v) AS nd,"
    " COUNT(*) FILTER (WHERE v > 1) AS big, SUM(v) FILTER (WHERE v < 3) AS small"
)
HAVING = [
    "",
    "HAVING COUNT(*) < 4",  # keys drop out as they grow: tombstones
    "HAVING COUNT(*) BETWEEN 2 AND 4",  # keys come, then go
    "HAVING SUM(v) IS NULL OR SUM(v) <= 5",
    "HAVING COUNT(DISTINCT v) FILTER (WHERE v > 0) < 2",
]


@st.composite
def group_bys(draw: st.DrawFn) -> View:
    having = draw(st.sampled_from(HAVING))
    where = draw(st.sampled_from(["", "WHERE v IS NULL OR v <> 2"]))
    if draw(st.booleans()):
        sql = f"SELECT k, {AGGREGATES} FROM a {where} GROUP BY k {having}"
        return View(sql, ("k", "n", "s", "nd", "big", "small"))
    sql = f"SELECT k, v, COUNT(*) AS n, MAX(t) AS last FROM a {where} GROUP BY k, v {having}"
    return View(sql, ("k", "v", "n", "last"), ("last",))


# Every key is dropped by HAVING at some point, one while the query is stopped.
DROPPED = Case(
    View(
        f"SELECT k, {AGGREGATES} FROM a GROUP BY k HAVING COUNT(*) < 3",
        ("k", "n", "s", "nd", "big", "small"),
    ),
    0,
    1,
    [("x", T0, 1), ("y", T0, 2), ("x", T0, 3), ("x", T0, None), ("y", T0, 4), ("y", T0, 0)],
    Schedule((2, 1), frozenset({2})),
)


def test_updating_group_by_equals_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    @PROPERTY
    @example(case=DROPPED)
    @given(case=cases(group_bys()))
    def run(case: Case) -> None:
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case).close()

    run()


def test_having_that_drops_a_key_writes_a_tombstone(tmp_path: Path) -> None:
    sh = check(tmp_path, DROPPED)
    try:
        assert latest_records(sh, "out") == []
        assert tombstones(sh, "out") == 2  # x, then y: each dropped once
    finally:
        sh.close()


# -- Top-N and deduplication -------------------------------------------------------------------

TOP_N = {
    "top-2": View(
        "SELECT k, v, t, rn FROM (SELECT k, v, t, ROW_NUMBER() OVER (PARTITION BY k"
        " ORDER BY v DESC, t ASC) AS rn FROM a WHERE v IS NOT NULL) WHERE rn <= 2",
        ("k", "v", "t", "rn"),
        ("t",),
    ),
    "top-3-nulls-last": View(
        "SELECT k, v, rn FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k"
        " ORDER BY v DESC NULLS LAST) AS rn FROM a) WHERE rn < 4",
        ("k", "v", "rn"),
    ),
    "top-2-of-the-first-20-s": View(  # a (key, rank) can leave: a tombstone
        "SELECT k, v, t, rn FROM (SELECT k, v, t, ROW_NUMBER() OVER (PARTITION BY k"
        " ORDER BY v DESC NULLS LAST, t) AS rn FROM a) WHERE rn <= 2"
        " AND t < TIMESTAMP '2026-01-01 00:00:20'",
        ("k", "v", "t", "rn"),
        ("t",),
    ),
    "keep-first": View(
        "SELECT k, v, t FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t ASC)"
        " AS rownum FROM a) WHERE rownum = 1",
        ("k", "v", "t"),
        ("t",),
    ),
    "keep-last": View(
        "SELECT k, t, v FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t DESC)"
        " AS rownum FROM a) WHERE rownum <= 1",
        ("k", "t", "v"),
        ("t",),
    ),
    "last-three-star": View(  # picks columns only: unchanged (key, rank)s are not upserted again
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY t DESC)"
        " AS rownum FROM a) WHERE rownum <= 3",
        ("k", "t", "v", "rownum"),
        ("t",),
    ),
}


# x's first-ranked row is overtaken by a row the outer filter drops: (x, 1) gets a tombstone.
OVERTAKEN = Case(
    TOP_N["top-2-of-the-first-20-s"],
    0,
    1,
    [("x", T0 + 5 * SECOND, 1), ("y", T0 + 6 * SECOND, 0), ("x", T0 + 25 * SECOND, 4)],
    Schedule((1,), frozenset({2})),
)


def test_top_n_and_dedup_equal_the_batch_answer(tmp_path_factory: pytest.TempPathFactory) -> None:
    @settings(PROPERTY, max_examples=14)
    @example(case=OVERTAKEN)
    @given(case=cases(st.sampled_from(sorted(TOP_N)).map(TOP_N.get), unique_times=True))
    def run(case: Case) -> None:
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case).close()

    run()


@settings(PROPERTY, max_examples=40)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 5)), min_size=1, max_size=40
    ),
    limit=st.integers(1, 3),
    descending=st.booleans(),
)
def test_top_n_ranks_with_arrow_as_with_sql(rows, limit, descending) -> None:
    """The Arrow ranking of plain ORDER BY columns keeps what the SQL ranking keeps: per key and
    rank, the same order values (rows that tie may trade places, as in SQL)."""
    direction = "DESC" if descending else "ASC"
    sql = (
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k, j ORDER BY v "
        f"{direction}, w) AS rn FROM s) WHERE rn <= {limit}"
    )
    plan = plan_query(parse(sql)[0]).operator
    assert plan.order_by == (("v", descending), ("w", False))
    candidates = pa.table(
        {
            "k": pa.array([r[0] for r in rows], pa.int64()),
            "j": pa.array([str(r[0] % 2) for r in rows]),
            "v": pa.array([r[1] for r in rows], pa.int64()),
            "w": pa.array([r[2] for r in rows], pa.int64()),
        }
    )
    ranking = TopNOperator._arrow_ranks(SimpleNamespace(plan=plan, arrival=None), candidates)
    picked, rank, _ = ranking
    by_arrow = candidates.take(pa.array(picked)).append_column("__rn", pa.array(rank))
    by_sql = run_sql(plan.retain_sql, {plan.source: candidates})

    def ranks(table: pa.Table) -> list[tuple]:
        return sorted(zip(*(table[c].to_pylist() for c in ("k", "__rn", "v", "w")), strict=True))

    assert ranks(by_arrow) == ranks(by_sql)


# -- materialized views ------------------------------------------------------------------------


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


def view_rows(sh: StreamHouse, columns: tuple[str, ...]) -> list[tuple]:
    return rows_of(sh.sql("SELECT * FROM v").to_arrow_table().to_pylist(), columns)


def test_materialized_view_reads_back_one_row_per_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    sql = (
        "SELECT k, COUNT(*) AS n, SUM(v) AS s, COUNT(DISTINCT v) AS nd FROM a"
        " GROUP BY k HAVING COUNT(*) < 3"
    )
    columns = ("k", "n", "s", "nd")
    every: list[Event] = []
    with streamhouse.connect(data, linger_ms=1) as sh:
        sh.sql(stream_ddl("a", 0))
        sh.sql(f"CREATE MATERIALIZED VIEW v AS {sql}")
        (view,) = sh._queries
        first = [("x", T0, 1), ("y", T0 + SECOND, 2), ("x", T0 + SECOND, 2)]
        produce(sh, "a", first)
        every += first
        view.run_until_caught_up()
        assert view_rows(sh, columns) == [("x", 2, 3, 2), ("y", 1, 2, 1)]

        more = [("y", T0 + 2 * SECOND, 5), ("x", T0 + 3 * SECOND, 4), ("z", T0 + 3 * SECOND, None)]
        produce(sh, "a", more)  # x reaches 3 rows: HAVING drops it
        every += more
        view.run_until_caught_up()
        assert view_rows(sh, columns) == [("y", 2, 7, 2), ("z", 1, None, 0)]
        assert view_rows(sh, columns) == rows_of(duck(sql, {"a": every}), columns)

    with streamhouse.connect(data, linger_ms=1) as sh:  # resumes from its checkpoint
        (view,) = sh.start_materialized_views()
        last = [("z", T0 + 4 * SECOND, 3)]
        produce(sh, "a", last)
        every += last
        view.run_until_caught_up()
        assert view_rows(sh, columns) == [("y", 2, 7, 2), ("z", 2, 3, 1)]
        assert view_rows(sh, columns) == rows_of(duck(sql, {"a": every}), columns)


def test_materialized_top_n_view_reads_back_one_row_per_key_and_rank(sh: StreamHouse) -> None:
    view = TOP_N["top-2"]
    sh.sql(stream_ddl("a", 0))
    sh.sql(f"CREATE MATERIALIZED VIEW v AS {view.sql}")
    (query,) = sh._queries
    every: list[Event] = []
    for rows in ([("x", T0, 1), ("x", T0 + SECOND, 3)], [("x", T0 + 2 * SECOND, 2)]):
        produce(sh, "a", rows)
        every += rows
        query.run_until_caught_up()
        got = rows_of(sh.sql("SELECT * FROM v").to_arrow_table().to_pylist(), view.columns, ("t",))
        assert got == rows_of(duck(view.sql, {"a": every}), view.columns, view.times)
    assert {rn: v for _, v, _, rn in got} == {1: 3, 2: 2}


# -- what an upsert stream cannot say is refused -----------------------------------------------


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        pytest.param(
            "SELECT COUNT(*) AS n FROM a GROUP BY k", "select", id="group-key-not-selected"
        ),
        pytest.param(
            "SELECT k, v FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v) AS rn"
            " FROM a) WHERE rn <= 2",
            "rn",
            id="top-n-rank-not-selected",
        ),
    ],
)
def test_updating_query_without_its_upsert_key_is_refused(
    sh: StreamHouse, sql: str, words: str
) -> None:
    sh.sql(stream_ddl("a", 0))
    with pytest.raises(SqlError) as info:
        start_paused(sh, f"INSERT INTO out {sql}", "q")
    assert words in str(info.value)
    assert sh.sql(sql).to_arrow_table().num_rows == 0  # bounded, it is an ordinary query


@pytest.mark.parametrize(
    ("group", "kind"),
    [
        ("ROLLUP (k, v)", "ROLLUP"),
        ("k, CUBE (v)", "CUBE"),
        ("GROUPING SETS ((k), ())", "GROUPING SETS"),
    ],
)
def test_grouping_sets_of_an_updating_aggregate_are_refused_by_name(
    sh: StreamHouse, group: str, kind: str
) -> None:
    """Unwindowed, they failed with 'column k must be in GROUP BY or inside an aggregate';
    bounded they run (DuckDB's answer), and per window continuously (tested with windows)."""
    sh.sql(stream_ddl("a", 0))
    rows = [("x", T0, 1), ("y", T0 + SECOND, 2), ("x", T0 + 2 * SECOND, 2)]
    produce(sh, "a", rows)
    sql = f"SELECT k, COUNT(*) AS n, SUM(v) AS s FROM a GROUP BY {group}"
    if "v" in group.replace("k, ", ""):
        sql = sql.replace("SELECT k,", "SELECT k, v,")
    columns = ("k", "v", "n", "s") if "SELECT k, v" in sql else ("k", "n", "s")
    assert rows_of(sh.sql(sql).to_arrow_table().to_pylist(), columns) == rows_of(
        duck(sql, {"a": rows}), columns
    )
    with pytest.raises(
        SqlError, match=rf"{kind} in a continuous GROUP BY is not supported.*line 1"
    ):
        start_paused(sh, f"INSERT INTO out {sql}", "q")


def test_global_aggregate_view_is_one_row(sh: StreamHouse) -> None:
    sh.sql(stream_ddl("a", 0))
    sh.sql("CREATE MATERIALIZED VIEW v AS SELECT COUNT(*) AS n, SUM(v) AS s FROM a")
    (query,) = sh._queries
    produce(sh, "a", [("x", T0, 1)])
    query.run_until_caught_up()
    produce(sh, "a", [("y", T0, 2)])
    query.run_until_caught_up()
    assert view_rows(sh, ("n", "s")) == [(2, 3)]


# -- state kept as runs --------------------------------------------------------------------------

RUN_VIEWS = [
    View(f"SELECT k, {AGGREGATES} FROM a GROUP BY k", ("k", "n", "s", "nd", "big", "small")),
    View(
        "SELECT k, v, COUNT(*) AS n, COUNT(DISTINCT t) AS nt FROM a GROUP BY k, v",
        ("k", "v", "n", "nt"),
    ),
    TOP_N["top-2"],
    TOP_N["top-2-of-the-first-20-s"],
    TOP_N["keep-last"],
]


@st.composite
def long_runs(draw: st.DrawFn) -> Case:
    """Many small micro-batches over many keys after a big one, with restarts in between: the
    state is held as many runs, some superseding others, when the query resumes."""
    a = first_per_key_and_time(draw(events(0, max_size=70, keys="stuvwxyz")))
    sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple))
    restarts = draw(st.frozensets(st.integers(2, 40), min_size=1, max_size=4))
    return Case(draw(st.sampled_from(RUN_VIEWS)), 0, 1, a, Schedule((12, *sizes), restarts))


def test_views_over_many_runs_and_restarts_equal_the_batch_answer(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    @settings(PROPERTY, max_examples=12)
    @given(case=long_runs())
    def run(case: Case) -> None:
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case).close()

    run()


def test_table_state_reads_back_its_runs_and_drops_rolled_back_changes(tmp_path: Path) -> None:
    def rows(ks: list, xs: list, n: list[int]) -> pa.Table:
        return pa.table({"k": pa.array(ks, pa.string()), "x": pa.array(xs), "n": n})

    def current(state: TableState) -> list[tuple]:
        return sorted((tuple(r.values()) for r in state.current().to_pylist()), key=repr)

    keyed = ["k", "x"]
    store = StateStore(tmp_path / "state")
    state = TableState(store, b"t", keyed)
    want: dict[tuple, int] = {}
    for step in range(40):  # keys (k, x) with nulls in both; every step upserts a few keys
        ks = [None if (step + i) % 7 == 0 else "abc"[(step + i) % 3] for i in range(3)]
        xs = [None if (step * i) % 5 == 0 else (step * i) % 4 for i in range(3)]
        change = rows(ks, xs, [step] * 3).group_by(keyed).aggregate([("n", "max")])
        change = change.rename_columns(["k", "x", "n"])
        batch = store.batch()
        state.replace(state.find(change), change, batch)
        deleting = step % 5 == 3  # the keys of k 'b' go (a TTL deletes idle keys so)
        if deleting:
            held = state.table["k"].to_numpy(zero_copy_only=False)
            state.delete(np.flatnonzero((held == "b") & state.live), batch)
        if step % 9 == 4:  # a failed commit: the changes are dropped
            state.rollback()
            continue
        store.commit(batch)
        state.commit()
        want.update({(r["k"], r["x"]): r["n"] for r in change.to_pylist()})
        if deleting:
            want = {key: n for key, n in want.items() if key[0] != "b"}
        assert current(state) == sorted(((k, x, n) for (k, x), n in want.items()), key=repr)
        stored = sum(1 for key, _ in store.items(ColumnFamily.SESSIONS) if key.startswith(b"t"))
        assert stored <= TableState.MAX_RUNS  # compaction deletes the runs it merges
        if step % 6 == 5:  # a restart reads back exactly what was committed
            store.close()
            store = StateStore(tmp_path / "state")
            state = TableState(store, b"t", keyed)
            assert current(state) == sorted(((k, x, n) for (k, x), n in want.items()), key=repr)
    store.close()


KEY_KINDS = {  # state keys: one int column, one with nulls, two columns, a timestamp and an int
    "one": (["a"], False),
    "one_nullable": (["a"], True),
    "two": (["a", "b"], True),
    "time_and_int": (["t", "a"], False),
}


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(KEY_KINDS)),
    steps=st.lists(
        st.lists(st.tuples(st.integers(0, 6), st.integers(-2, 2), st.booleans()), max_size=12),
        min_size=1,
        max_size=25,
    ),
)
def test_table_state_index_finds_what_a_scan_finds(kind: str, steps: list) -> None:
    """Keys of integer and temporal columns are looked up in each run's sorted index; what
    :meth:`find` and :meth:`contains` answer equals a scan of the current rows (nulls equal
    nulls), through upserts, deletes, compactions and a rollback."""
    import tempfile

    keys, nullable = KEY_KINDS[kind]

    def table_of(rows: list[tuple[int, int, bool]], n: int) -> pa.Table:
        a = [None if (nullable and null) else x for x, _, null in rows]
        b = [None if (null and y < 0) else y for _, y, null in rows]
        return pa.table(
            {
                "a": pa.array(a, pa.int64()),
                "b": pa.array(b, pa.int32()),
                "t": pa.array([T0 + y for _, y, _ in rows], pa.timestamp("ms")),
                "n": pa.array([n] * len(rows), pa.int64()),
            }
        )

    def key_of(row: dict) -> tuple:
        return tuple(row[k] for k in keys)

    with tempfile.TemporaryDirectory() as root:
        store = StateStore(Path(root) / "state")
        state = TableState(store, b"t", keys)
        for step, rows in enumerate(steps):
            change = table_of(rows, step).select([*keys, "n"])
            if step % 3:  # one row per key; else several, as a Top-N keeps
                change = change.group_by(keys).aggregate([("n", "max")])
                change = change.rename_columns([*keys, "n"])
            probe = table_of(rows[::-1] + [(7, 3, False)], -1)  # a key never stored, too
            current = state.table.filter(pa.array(state.live)) if len(state.live) else None
            held = {key_of(r) for r in current.to_pylist()} if current is not None else set()
            want = [key_of(r) in held for r in probe.to_pylist()]
            assert state.contains(probe).tolist() == want
            found = state.find(probe)
            probed = {key_of(r) for r in probe.to_pylist()}
            every = [key_of(r) for r in state.table.to_pylist()] if state._runs else []
            assert found.tolist() == [
                i for i, key in enumerate(every) if state.live[i] and key in probed
            ]
            batch = store.batch()
            assert all(index is not None for index in state._index)  # no scan fallback
            state.replace(state.find(change), change, batch)
            if step % 7 == 6:
                state.delete(state.find(probe.slice(0, 2)), batch)
            if step % 5 == 4:
                state.rollback()
                continue
            store.commit(batch)
            state.commit()
        store.close()


@settings(max_examples=40, deadline=None)
@given(
    held=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), max_size=40),
    new=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 9)), min_size=1, max_size=20),
    limit=st.integers(1, 4),
)
def test_top_n_ranks_before_a_batch_equal_a_ranking_of_the_held_rows(held, new, limit) -> None:
    """The rank each kept row had before a batch, read off the ranking of held and new rows
    together, equals its rank among the held rows alone (which only rows whose rank changed
    are upserted again depends on it)."""
    from streamhouse.views.top_n import _ranks_before

    sql = (
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) AS rn "
        f"FROM s) WHERE rn <= {limit}"
    )
    operator = SimpleNamespace(plan=plan_query(parse(sql)[0]).operator, arrival=None)

    def table(rows: list[tuple[int, int]]) -> pa.Table:
        return pa.table(
            {"k": [k for k, _ in rows], "v": [v for _, v in rows]},
            pa.schema([("k", pa.int64()), ("v", pa.int64())]),
        )

    everything = table(held)
    kept = TopNOperator._arrow_ranks(operator, everything) if held else None
    previous = everything.take(pa.array(np.sort(kept[0]))) if kept else everything
    candidates = pa.concat_tables([previous, table(new)])
    picked, rank, _ = TopNOperator._arrow_ranks(operator, candidates)
    want = np.zeros(candidates.num_rows, np.int64)
    if previous.num_rows:
        previous_picked, previous_rank, _ = TopNOperator._arrow_ranks(operator, previous)
        want[previous_picked] = previous_rank
    assert _ranks_before(picked < previous.num_rows, rank).tolist() == want[picked].tolist()


OPERATOR_TOP_N = {  # query over s(k, v, s), the upsert key of its rows
    "top-3-star": (
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) AS rn"
        " FROM s) WHERE rn <= 3",
        ("k", "rn"),
    ),
    "last-per-key": (
        "SELECT k, v, s FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC)"
        " AS rn FROM s) WHERE rn <= 1",
        ("k",),
    ),
}


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(OPERATOR_TOP_N)),
    keys=st.lists(st.integers(0, 6), min_size=1, max_size=80),
    cuts=st.lists(st.integers(1, 79), max_size=14),
    restart=st.integers(0, 14),
    failed=st.integers(0, 14),
    growth=st.sampled_from([1, 4]),
)
def test_top_n_operator_upserts_equal_the_batch_answer(
    name: str, keys: list[int], cuts: list[int], restart: int, failed: int, growth: int
) -> None:
    """The Top-N operator over any micro-batch split, a restart from its committed state and a
    rolled-back batch: its upserts, applied by key, equal DuckDB's answer; each upsert changes
    its (key, rank)'s row (an unchanged rank is not written again); the state keeps only the
    rows ranked and no more runs than :attr:`TableState.MAX_RUNS`, under either compaction
    growth."""
    import tempfile

    import duckdb

    from streamhouse.state.store import ScopedBatch, StateView

    sql, key = OPERATOR_TOP_N[name]
    n = len(keys)
    rows = pa.table(
        {
            "k": pa.array(keys, pa.int64()),
            "v": pa.array(np.random.default_rng(n).permutation(n), pa.int64()),  # no ties
            "s": pa.array(["x" * (i % 7) + str(i) for i in range(n)]),
        }
    )
    plan = plan_query(parse(sql)[0]).operator
    bounds = [0, *sorted({c for c in cuts if c < n}), n]
    view: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as root:

        def opened() -> tuple[StateStore, TopNOperator]:
            store = StateStore(Path(root) / "state")
            operator = TopNOperator(plan, StateView(store, b"o"))
            operator.table.growth = growth
            return store, operator

        store, operator = opened()
        for step, (start, end) in enumerate(zip(bounds, bounds[1:], strict=False)):
            part = rows.slice(start, end - start)
            if step == failed:  # processed, then rolled back: as if it never ran
                operator.process(part, ScopedBatch(store.batch(), b"o"))
                operator.rollback()
            batch = store.batch()
            out, before = operator.process(part, ScopedBatch(batch, b"o"))
            store.commit(batch)
            operator.commit()
            assert before is None  # the query bounds the rank only: no (key, rank) goes away
            for row in out.to_pylist() if out is not None else []:
                at = tuple(row.get(c, 1) for c in key)
                assert view.get(at) != row
                view[at] = row
            stored = [k for k, _ in store.items(ColumnFamily.SESSIONS) if k.startswith(b"o")]
            assert len(stored) <= TableState.MAX_RUNS
            if step == restart:
                store.close()
                store, operator = opened()
        held = operator.table.rows
        store.close()
    s = rows  # noqa: F841 (DuckDB reads the Arrow table by its name)
    want = duckdb.sql(sql).arrow()
    want = want.read_all() if hasattr(want, "read_all") else want
    order = lambda r: tuple(r[c] for c in key if c in r)  # noqa: E731
    assert sorted(view.values(), key=order) == sorted(want.to_pylist(), key=order)
    assert held == want.num_rows
