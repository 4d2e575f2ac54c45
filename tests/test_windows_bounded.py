"""Bounded window queries (``sh.sql``) equal DuckDB's answer over the same rows.

``sh.sql`` reads the log as of now and closes every window; windows come from
:mod:`streamhouse.windows.table`, the rest runs on DataFusion. Hypothesis draws events (with
nulls, duplicates and disorder), each window kind runs in our GROUP BY syntax and as a Flink
window TVF, and the rows are compared with DuckDB computing the same windows in batch
(time_bucket arithmetic, generate_series, gaps and islands). Also: the assigners on their own,
and bad input rejected with a located SqlError.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from window_cases import oracle, table_rows, to_ms

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import SqlError, UnknownStreamError
from streamhouse.windows import assign

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
SECOND = 1_000
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]
AGGREGATES = """COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s, AVG(v) AS a,
    MIN(v) AS lo, MAX(v) AS hi"""

QUERIES = {  # kind -> (our syntax, Flink TVF syntax, size or gap, slide or step)
    "tumble": (
        "GROUP BY k, TUMBLING(t, INTERVAL '30' SECOND)",
        "TABLE(TUMBLE(TABLE ev, DESCRIPTOR(t), INTERVAL '30' SECOND))",
        30 * SECOND,
        None,
    ),
    "hop": (
        "GROUP BY k, HOP(t, INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
        "TABLE(HOP(TABLE ev, DESCRIPTOR(t), INTERVAL '10' SECOND, INTERVAL '30' SECOND))",
        30 * SECOND,
        10 * SECOND,
    ),
    "cumulate": (
        "GROUP BY k, CUMULATE(t, INTERVAL '10' SECOND, INTERVAL '40' SECOND)",
        "TABLE(CUMULATE(TABLE ev, DESCRIPTOR(t), INTERVAL '10' SECOND, INTERVAL '40' SECOND))",
        40 * SECOND,
        10 * SECOND,
    ),
    "session": (
        "GROUP BY k, SESSION(t, INTERVAL '8' SECOND)",
        "TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(t), INTERVAL '8' SECOND))",
        8 * SECOND,
        None,
    ),
}

STREAM = """CREATE STREAM ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '5' SECOND) WITH (topic = 'ev', format = 'json')"""

EVENTS = st.lists(
    st.tuples(
        st.sampled_from("abc"),
        # within five minutes, often on whole seconds so events fall on window bounds
        st.integers(0, 300).map(lambda s: T0 + s * SECOND)
        | st.integers(0, 300_000).map(lambda ms: T0 + ms),
        st.none() | st.integers(-5, 20),
    ),
    max_size=60,
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path_factory.mktemp("bounded"), linger_ms=1) as conn:
        yield conn


def fresh_stream(sh: StreamHouse, events: list[tuple[str, int, int | None]]) -> None:
    sh.sql("DROP STREAM IF EXISTS ev")
    if sh.log.get_topic("ev") is not None:
        sh.delete_topic("ev")
    sh.sql(STREAM)
    if events:
        sh.produce("ev", [{"k": k, "t": t, "v": v} for k, t, v in events])


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_windows_equal_the_batch_answer(kind: str, shared: StreamHouse) -> None:
    ours, tvf, size, slide = QUERIES[kind]

    @settings(
        max_examples=15,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(events=EVENTS, having=st.sampled_from(["", "HAVING COUNT(*) > 1", "HAVING SUM(v) >= 5"]))
    def check(events: list[tuple[str, int, int | None]], having: str) -> None:
        fresh_stream(shared, events)
        expected = oracle(events, kind, size, slide, having)
        select = f"SELECT k, window_start, window_end, {AGGREGATES}"
        got = shared.sql(f"{select} FROM ev {ours} {having}").to_arrow_table()
        assert table_rows(got, COLUMNS) == expected
        flink = f"{select} FROM {tvf} GROUP BY k, window_start, window_end {having}"
        assert table_rows(shared.sql(flink).to_arrow_table(), COLUMNS) == expected

    check()


def test_windows_without_keys(shared: StreamHouse) -> None:
    events = [("a", T0 + s * SECOND, s) for s in (0, 3, 9, 10, 29, 30, 31, 60, 75)]
    fresh_stream(shared, events)
    for kind, (ours, _, size, slide) in QUERIES.items():
        window = ours.replace("GROUP BY k, ", "GROUP BY ")
        got = shared.sql(
            f"SELECT NULL AS k, window_start, window_end, {AGGREGATES} FROM ev {window}"
        ).to_arrow_table()
        assert table_rows(got, COLUMNS) == oracle(events, kind, size, slide, keyed=False), kind


def test_window_time_is_the_end_minus_a_millisecond(shared: StreamHouse) -> None:
    fresh_stream(shared, [("a", T0 + 5 * SECOND, 1)])
    row = (
        shared.sql(
            "SELECT window_start, window_end, window_time FROM TABLE("
            "TUMBLE(TABLE ev, DESCRIPTOR(t), INTERVAL '30' SECOND))"
        )
        .to_arrow_table()
        .to_pylist()[0]
    )
    assert [to_ms(row[c]) for c in ("window_start", "window_end", "window_time")] == [
        T0,
        T0 + 30 * SECOND,
        T0 + 30 * SECOND - 1,
    ]


INPUT_COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]
DOUBLED = """COUNT(*) AS n, COUNT(DISTINCT w) AS nd, SUM(w) AS s, AVG(w) AS a,
    MIN(w) AS lo, MAX(w) AS hi"""
SUBQUERY = "(SELECT k AS key, t AS at, v * 2 AS w FROM ev WHERE v > 3)"


def _over(argument: str, kind: str) -> str:
    """QUERIES[kind]'s window TVF reading ``argument`` (a subquery or a CTE's name) whose
    columns are key, at and w, grouped by key and window."""
    tvf = QUERIES[kind][1].replace("TABLE ev", f"TABLE {argument}")
    tvf = tvf.replace("DESCRIPTOR(t)", "DESCRIPTOR(at)").replace(
        "PARTITION BY k", "PARTITION BY key"
    )
    return (
        f"SELECT key AS k, window_start, window_end, {DOUBLED} FROM {tvf}"
        " GROUP BY key, window_start, window_end"
    )


def _filtered_doubled(events: list[tuple[str, int, int | None]]) -> list[tuple[str, int, int]]:
    return [(k, t, v * 2) for k, t, v in events if v is not None and v > 3]


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_a_window_tvf_over_a_subquery_or_cte_equals_the_batch_answer(
    kind: str, shared: StreamHouse
) -> None:
    """TABLE (SELECT ...) and WITH f AS (...) ... TABLE f: the input's filter and projections
    apply before the windows, as DuckDB computes them over the rows the input keeps."""
    _, _, size, slide = QUERIES[kind]

    @settings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(events=EVENTS)
    def check(events: list[tuple[str, int, int | None]]) -> None:
        fresh_stream(shared, events)
        expected = oracle(_filtered_doubled(events), kind, size, slide)
        if kind != "session":  # TABLE (SELECT ...) PARTITION BY is no syntax; TABLE f is
            subquery = shared.sql(_over(SUBQUERY, kind)).to_arrow_table()
            assert table_rows(subquery, INPUT_COLUMNS) == expected
        cte = shared.sql(f"WITH f AS {SUBQUERY} {_over('f', kind)}").to_arrow_table()
        assert table_rows(cte, INPUT_COLUMNS) == expected
        # a CTE reading a CTE, the TVF's query a subquery of the answer
        chained = (
            "WITH e AS (SELECT * FROM ev WHERE v IS NOT NULL), f AS (SELECT k AS key, t AS at,"
            f" v * 2 AS w FROM e WHERE v > 3) SELECT * FROM ({_over('f', kind)}) WHERE n > 0"
        )
        assert table_rows(shared.sql(chained).to_arrow_table(), INPUT_COLUMNS) == expected

    check()


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_a_window_tvf_over_an_input_that_cannot_be_merged(kind: str, shared: StreamHouse) -> None:
    """An input merging cannot take in (an aggregate, a UNION ALL, a time column it computes)
    is read as a view would be and its rows windowed, as a batch engine does."""
    _, _, size, slide = QUERIES[kind]
    events = [
        ("a", T0 + s * SECOND, v)
        for s, v in [(0, 4), (3, 5), (9, None), (29, 7), (31, 8), (64, 9), (90, 1)]
    ] + [("b", T0 + s * SECOND, 6) for s in (2, 12, 40, 41)]
    fresh_stream(shared, events)
    shifted = "(SELECT k AS key, t + INTERVAL '1' SECOND AS at, v * 2 AS w FROM ev WHERE v > 3)"
    expected = oracle(
        [(k, t + SECOND, v * 2) for k, t, v in events if v is not None and v > 3],
        kind,
        size,
        slide,
    )
    got = shared.sql(f"WITH f AS {shifted} {_over('f', kind)}").to_arrow_table()
    assert table_rows(got, INPUT_COLUMNS) == expected
    per_key = "(SELECT k AS key, MAX(t) AS at, SUM(v) AS w FROM ev WHERE v IS NOT NULL GROUP BY k)"
    totals: dict[str, tuple[int, int]] = {}
    for k, t, v in events:
        if v is not None:
            last, total = totals.get(k, (t, 0))
            totals[k] = (max(last, t), total + v)
    expected = oracle([(k, t, w) for k, (t, w) in totals.items()], kind, size, slide)
    got = shared.sql(f"WITH f AS {per_key} {_over('f', kind)}").to_arrow_table()
    assert table_rows(got, INPUT_COLUMNS) == expected
    union = (
        "(SELECT k AS key, t AS at, v AS w FROM ev WHERE v > 3"
        " UNION ALL SELECT k, t, -v FROM ev WHERE v < 6)"
    )
    both = [(k, t, v) for k, t, v in events if v is not None and v > 3]
    both += [(k, t, -v) for k, t, v in events if v is not None and v < 6]
    got = shared.sql(f"WITH f AS {union} {_over('f', kind)}").to_arrow_table()
    assert table_rows(got, INPUT_COLUMNS) == oracle(both, kind, size, slide)
    if kind != "session":  # the same input written in the TVF
        got = shared.sql(_over(union, kind)).to_arrow_table()
        assert table_rows(got, INPUT_COLUMNS) == oracle(both, kind, size, slide)


def test_select_star_over_a_tvf_over_a_subquery_puts_the_window_columns_last(
    shared: StreamHouse,
) -> None:
    fresh_stream(shared, [("a", T0 + 5 * SECOND, 4), ("b", T0 + 35 * SECOND, 1)])
    tvf = "TABLE(TUMBLE(TABLE {}, DESCRIPTOR(t), INTERVAL '30' SECOND))"
    window = ["window_start", "window_end", "window_time"]
    for argument, columns in [
        ("(SELECT k, t FROM ev WHERE v > 3)", ["k", "t", *window]),
        ("(SELECT * FROM ev WHERE v > 3)", ["k", "t", "v", *window]),
        ("f", ["k", "t", "v", *window]),
    ]:
        got = shared.sql(
            f"WITH f AS (SELECT * FROM ev WHERE v > 3) SELECT * FROM {tvf.format(argument)}"
        ).to_arrow_table()
        assert got.column_names == columns, argument
        assert [(r["k"], to_ms(r["window_start"])) for r in got.to_pylist()] == [("a", T0)]


def test_a_tvf_over_a_subquery_answers_through_the_cli(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    events = [("a", T0 + 5 * SECOND, 4), ("a", T0 + 7 * SECOND, 9), ("b", T0 + 65 * SECOND, 5)]
    with streamhouse.connect(data_dir, linger_ms=1) as conn:
        conn.sql(STREAM)
        conn.produce("ev", [{"k": k, "t": t, "v": v} for k, t, v in events + [("c", T0, 1)]])
    sql = f"WITH f AS {SUBQUERY} {_over('f', 'hop')}"
    result = CliRunner().invoke(
        main, ["--data-dir", str(data_dir), "query", sql, "--format", "json"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    got = sorted((r["k"], r["window_start"], r["window_end"], r["n"], r["s"]) for r in rows)
    expected = sorted(
        (k, ws, we, n, s)
        for k, ws, we, n, _, s, *_ in oracle(
            _filtered_doubled(events), "hop", 30 * SECOND, 10 * SECOND
        )
    )
    assert len(got) == len(expected) == 6
    assert [(k, n, s) for k, _, _, n, s in got] == [(k, n, s) for k, _, _, n, s in expected]


# -- the assigners alone ---------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    ts=st.lists(st.integers(-(10**9), 10**9), max_size=50),
    slide=st.sampled_from([1, 7, 1000]),
    per=st.integers(1, 5),
)
def test_hop_and_cumulate_assign_every_window_that_contains_a_row(
    ts: list[int], slide: int, per: int
) -> None:
    size = slide * per
    times = np.array(ts, dtype=np.int64)
    rows, starts = assign.hop(times, slide, size)
    assert len(rows) == len(ts) * per
    assert np.all(starts % slide == 0)
    assert np.all((starts <= times[rows]) & (times[rows] < starts + size))
    rows, starts, ends = assign.cumulate(times, slide, size)
    for i, t in enumerate(ts):
        base = t - t % size
        want = {(base, base + k * slide) for k in range(1, per + 1) if base + k * slide > t}
        got = {(int(s), int(e)) for s, e in zip(starts[rows == i], ends[rows == i], strict=True)}
        assert got == want


@settings(max_examples=50, deadline=None)
@given(
    spans=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 100), st.integers(0, 20)), max_size=30
    )
)
def test_merge_intervals_joins_overlapping_and_touching_intervals(
    spans: list[tuple[int, int, int]],
) -> None:
    codes = np.array([c for c, _, _ in spans], dtype=np.int64)
    starts = np.array([s for _, s, _ in spans], dtype=np.int64)
    ends = starts + np.array([w for _, _, w in spans], dtype=np.int64)
    ids, m_start, m_end = assign.merge_intervals(codes, starts, ends)
    for i in range(len(spans)):  # each interval lies inside its merged interval
        assert m_start[ids[i]] <= starts[i] and ends[i] <= m_end[ids[i]]
    for i in range(len(spans)):  # touching or overlapping intervals of a key share an id
        for j in range(len(spans)):
            if codes[i] == codes[j] and starts[j] <= ends[i] and starts[i] <= ends[j]:
                assert ids[i] == ids[j]
    merged = {(int(codes[i]), int(ids[i])) for i in range(len(spans))}
    assert len(merged) == len(set(ids.tolist()))  # an id never spans two keys


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(STREAM)
        conn.produce("ev", [{"k": "a", "t": T0, "v": 1}])
        yield conn


@pytest.mark.parametrize(
    ("sql", "words", "where"),
    [
        pytest.param(
            "SELECT COUNT(*) FROM ev\nGROUP BY HOP(t, INTERVAL '7' SECOND, INTERVAL '30' SECOND)",
            "multiple",
            (2, 38),
            id="hop-size-not-a-multiple",
        ),
        pytest.param(
            "SELECT COUNT(*) FROM ev\nGROUP BY TUMBLING(t, INTERVAL '0' SECOND)",
            "positive",
            (2, 22),
            id="empty-window",
        ),
        pytest.param(
            "SELECT COUNT(*) FROM ev\nGROUP BY TUMBLING(t, INTERVAL '1' SECOND), "
            "HOP(t, INTERVAL '1' SECOND, INTERVAL '2' SECOND)",
            "one window",
            (2, 44),
            id="two-windows",
        ),
        pytest.param(
            "SELECT COUNT(*) FROM\nTABLE(TUMBLE(TABLE nope, DESCRIPTOR(t), INTERVAL '1' SECOND))",
            "nope",
            (2, 20),
            id="unknown-stream",
        ),
    ],
)
def test_bad_windows_fail_with_a_position(
    sh: StreamHouse, sql: str, words: str, where: tuple[int, int]
) -> None:
    with pytest.raises(SqlError) as info:
        sh.sql(sql).to_arrow_table()
    assert words in str(info.value)
    assert (info.value.line, info.value.column) == where


def test_unknown_columns_and_non_timestamp_windows_are_sql_errors(sh: StreamHouse) -> None:
    with pytest.raises(SqlError) as info:
        sh.sql(
            "SELECT SUM(nope) FROM ev GROUP BY TUMBLING(t, INTERVAL '1' SECOND)"
        ).to_arrow_table()
    assert "nope" in str(info.value) and info.value.line == 1
    with pytest.raises(SqlError) as info:
        sh.sql("SELECT COUNT(*) FROM ev GROUP BY TUMBLING(k, INTERVAL '1' SECOND)").to_arrow_table()
    assert "TIMESTAMP" in str(info.value)
    with pytest.raises(UnknownStreamError):
        sh.sql("SELECT COUNT(*) FROM nope GROUP BY TUMBLING(t, INTERVAL '1' SECOND)")
