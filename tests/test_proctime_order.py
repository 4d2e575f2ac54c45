"""``ORDER BY p`` over a ``PROCTIME()`` column, continuously and bounded.

Deduplication (``ROW_NUMBER() OVER (PARTITION BY k ORDER BY p [DESC]) = 1``) keeps the first
row of each key (ascending) or the last (descending). A micro-batch's rows share one processing
time, so they tie on it and are ranked by arrival, as Flink ranks rows that each have their own
time. OVER aggregations with RANGE frames release each batch's rows in that batch, as peers;
LAG, LEAD and ROWS frames count the rows in arrival order (a batch's by partition and offset).
Tested with an injected clock that sometimes stands still (ties across micro-batches too),
random micro-batch splits, a restart and a crash between output and checkpoint, against the
first and last row of each key in the order produced and against DuckDB; what does not run
yet is refused by name, at its line and column."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from test_query_restart import Crash, crash_after_sink_write
from window_cases import start_paused, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC

DEDUP = (
    "INSERT INTO out SELECT k, v FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k"
    " ORDER BY p{order}) AS rn FROM ev) WHERE rn = 1"
)


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql("CREATE STREAM ev (k STRING, v BIGINT, p AS PROCTIME()) WITH (topic = 'ev')")
        yield conn


def run_in_random_batches(
    sh: StreamHouse, sql: str, rows: list[dict], seed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sql`` over ``rows`` in random micro-batches on an injected clock that moves by 0 or
    more ms, with a crash between a batch's output and its checkpoint (replayed an hour later
    on the clock) and a restart."""
    rng = random.Random(seed)
    sh.produce("ev", rows)
    clock = {"now": T0}
    crash_after_sink_write(monkeypatch, 2)

    def open_query():
        query = start_paused(sh, sql, "po")
        query.clock = lambda: clock["now"]
        return query

    query, read, crashed = open_query(), 0, False
    try:
        while read < len(rows):
            size = min(rng.randrange(1, 9), len(rows) - read)
            try:
                assert query.step(max_records=size)
            except Crash:
                query.store.close()
                monkeypatch.undo()
                crashed = True
                clock["now"] += 3_600_000  # the replay must take the recorded time, not this
                query = open_query()
                assert query.step()  # the crashed micro-batch again, as it was recorded
            read += size
            clock["now"] += rng.choice([0, 0, 1, 250])
            if read > len(rows) // 2 and rng.random() < 0.2:
                query.stop()
                query = open_query()
        while query.step():
            pass
        assert query.status()["error"] is None
    finally:
        query.stop()
    assert crashed


@pytest.mark.parametrize("order", ["", " DESC"])
def test_dedup_on_processing_time_keeps_the_first_or_last_row(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    rng = random.Random(order)
    rows = [{"k": rng.choice("abcd"), "v": i} for i in range(120)]
    run_in_random_batches(sh, DEDUP.format(order=order), rows, order, monkeypatch)
    expected: dict[str, int] = {}
    for row in rows:  # first row per key ascending, last descending
        if order or row["k"] not in expected:
            expected[row["k"]] = row["v"]
    out = topic_rows(sh, "out")
    latest = {r["k"]: r["v"] for r in out}  # the upsert per key that stands
    assert latest == expected
    by_key: dict[str, list[int]] = {}
    for r in out:
        by_key.setdefault(r["k"], []).append(r["v"])
    for key, values in by_key.items():
        if order:  # each upsert is a later row of its key than the one before it
            assert values == sorted(values), key
        else:  # never any row but the first
            assert set(values) == {expected[key]}, key


def test_dedup_on_processing_time_with_a_where_in_the_ranking_is_refused(
    sh: StreamHouse,
) -> None:
    sql = (
        "INSERT INTO out SELECT k, v FROM (SELECT k, v,\\n ROW_NUMBER() OVER (PARTITION BY k"
        " ORDER BY p) AS rn FROM ev WHERE v > 0) WHERE rn = 1"
    ).replace("\\n", "\n")
    with pytest.raises(SqlError, match=r"processing-time column 'p'.*\(line 2, column \d+\)"):
        start_paused(sh, sql, "po")


@pytest.mark.parametrize("order", ["", " DESC"])
def test_bounded_dedup_on_processing_time_ranks_one_read_by_arrival(
    sh: StreamHouse, order: str
) -> None:
    """Bounded, the rows one read stamps tie on ``p`` too: the first or last row produced."""
    rows = [{"k": "abc"[i % 3], "v": i} for i in range(3000)]
    sh.produce("ev", rows)
    got = sh.sql(
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY k"
        f" ORDER BY p{order}) AS rn FROM ev) WHERE rn = 1"
    ).fetchall()
    expected: dict[str, int] = {}
    for row in rows:
        if order or row["k"] not in expected:
            expected[row["k"]] = row["v"]
    assert {k: v for k, v, _, _ in got} == expected
    assert len(got) == 3  # and no metadata column of the tie-break among SELECT *'s


OVERS = {
    "range": "SUM(v) OVER (PARTITION BY k ORDER BY p RANGE BETWEEN INTERVAL '1' SECOND"
    " PRECEDING AND CURRENT ROW)",
    "unbounded": "COUNT(*) OVER (PARTITION BY k ORDER BY p)",
}


def test_order_by_processing_time_passes_each_batch_at_once(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ORDER BY p``: every row, in the batch that read it, in processing-time order."""
    rng = random.Random(7)
    rows = [{"k": rng.choice("abc"), "v": i} for i in range(60)]
    run_in_random_batches(
        sh, "INSERT INTO out SELECT k, v, p FROM ev ORDER BY p", rows, "s", monkeypatch
    )
    out = topic_rows(sh, "out")
    assert sorted(r["v"] for r in out) == list(range(60))
    times = [to_ms(r["p"]) for r in out]
    assert times == sorted(times) and len(set(times)) > 5
    # a batch's rows share its time, and a later batch has a later one: arrival order holds
    assert [r["v"] for r in sorted(out, key=lambda r: (to_ms(r["p"]), r["v"]))] == list(range(60))


@pytest.mark.parametrize("frame", list(OVERS))
def test_over_on_processing_time_takes_each_batch_at_once(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch, frame: str
) -> None:
    """Each micro-batch's rows come out in that batch, with the aggregate of their RANGE frame
    over the processing times they were given (a batch's rows are peers); the same with
    DuckDB over those times, through random splits, a restart and a crash replay."""
    rng = random.Random(frame)
    rows = [{"k": rng.choice("abc"), "v": rng.randrange(100)} for _ in range(100)]
    sql = f"INSERT INTO out SELECT k, v, p, {OVERS[frame]} AS agg FROM ev"
    run_in_random_batches(sh, sql, rows, frame, monkeypatch)
    out = topic_rows(sh, "out")
    assert sorted((r["k"], r["v"]) for r in out) == sorted((r["k"], r["v"]) for r in rows)
    times = [to_ms(r["p"]) for r in out]
    assert times == sorted(times) and len(set(times)) > 5  # each batch later than the last
    values = ", ".join(
        f"('{r['k']}', {r['v']}, epoch_ms({t}))" for r, t in zip(out, times, strict=True)
    )
    expected = duckdb.sql(
        f"SELECT k, v, epoch_ms(p), {OVERS[frame]} FROM (VALUES {values}) AS ev(k, v, p)"
    ).fetchall()
    got = [(r["k"], r["v"], t, r["agg"]) for r, t in zip(out, times, strict=True)]
    assert sorted(got) == sorted(expected)


ARRIVAL_OVERS = {
    "lag": "LAG(v) OVER (PARTITION BY k ORDER BY p)",
    "lag_default": "LAG(v, 2, -1) OVER (PARTITION BY k ORDER BY p)",
    "lead": "LEAD(v) OVER (PARTITION BY k ORDER BY p)",
    "lead_default": "LEAD(v, 3, -1) OVER (ORDER BY p)",
    "rows": "SUM(v) OVER (PARTITION BY k ORDER BY p ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)",
}


@pytest.mark.parametrize("over", list(ARRIVAL_OVERS))
def test_lag_lead_and_rows_on_processing_time_count_rows_by_arrival(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch, over: str
) -> None:
    """LAG, LEAD and ROWS frames ordered by ``p`` see the rows in the order they came (a
    micro-batch's rows tie on ``p`` and are ordered by partition and offset, and each batch
    has a later ``p``): DuckDB's answer over the rows in produce order, through random
    splits, a restart and a crash replay. LEAD's last rows come out when the input ends."""
    rng = random.Random(over)
    rows = [{"k": rng.choice("abc"), "v": i} for i in range(80)]
    call = ARRIVAL_OVERS[over]
    sql = f"INSERT INTO out SELECT k, v, p, {call} AS x FROM ev"
    run_in_random_batches(sh, sql, rows, over, monkeypatch)
    query = start_paused(sh, sql, "po")
    try:
        query.run_until_caught_up(final=True)  # the input ends: LEAD's waiting rows come out
    finally:
        query.stop()
    out = topic_rows(sh, "out")
    values = ", ".join(f"('{r['k']}', {r['v']})" for r in rows)
    arrival = call.replace("ORDER BY p", "ORDER BY v")  # produce order: v counts up
    expected = duckdb.sql(f"SELECT k, v, {arrival} FROM (VALUES {values}) AS ev(k, v)").fetchall()
    assert sorted((r["k"], r["v"], r["x"]) for r in out) == sorted(expected)
    if not over.startswith("lead"):  # each row in the batch that read it
        times = [to_ms(r["p"]) for r in out]
        assert times == sorted(times) and len(set(times)) > 5


@pytest.mark.parametrize("over", list(ARRIVAL_OVERS))
def test_bounded_lag_lead_and_rows_on_processing_time_count_rows_by_arrival(
    sh: StreamHouse, over: str
) -> None:
    rng = random.Random(over)
    rows = [{"k": rng.choice("abc"), "v": i} for i in range(500)]
    sh.produce("ev", rows)
    call = ARRIVAL_OVERS[over]
    got = sh.sql(f"SELECT k, v, {call} AS x FROM ev").fetchall()
    values = ", ".join(f"('{r['k']}', {r['v']})" for r in rows)
    arrival = call.replace("ORDER BY p", "ORDER BY v")
    expected = duckdb.sql(f"SELECT k, v, {arrival} FROM (VALUES {values}) AS ev(k, v)").fetchall()
    assert sorted(got) == sorted(expected)


OVER_ROWS = (
    "SELECT k, SUM(v) OVER (PARTITION BY k ORDER BY p ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"
    " AS s FROM ev"
)


@pytest.mark.parametrize(
    ("select", "refused", "at"),
    [
        (f"{OVER_ROWS} UNION ALL {OVER_ROWS}", "runs continuously as the whole query", " p "),
    ],
)
def test_what_processing_time_order_does_not_run_yet_is_refused_where_written(
    sh: StreamHouse, select: str, refused: str, at: str
) -> None:
    """Refused by name, at the clause (line and column), never run in some other order."""
    column = select.index(at) + 2  # 1-based, on the statement's second line
    with pytest.raises(SqlError, match=rf"{refused}.* \(line 2, column {column}\)$"):
        start_paused(sh, f"INSERT INTO out\n{select}", "po")


def test_bounded_range_frame_on_processing_time_takes_the_rows_of_a_time_as_peers(
    sh: StreamHouse,
) -> None:
    """A RANGE frame reaching back an interval is ordered by ``p`` alone (no arrival after
    it: one ORDER BY key only), the rows one read stamps being peers: DuckDB's answer over
    the times the rows got."""
    rng = random.Random(3)
    rows = [{"k": rng.choice("abc"), "v": rng.randrange(100)} for _ in range(300)]
    sh.produce("ev", rows)
    got = sh.sql(f"SELECT k, v, p, {OVERS['range']} AS s FROM ev").fetchall()
    values = ", ".join(f"('{k}', {v}, epoch_ms({to_ms(p)}))" for k, v, p, _ in got)
    expected = duckdb.sql(
        f"SELECT k, v, {OVERS['range']} FROM (VALUES {values}) AS ev(k, v, p)"
    ).fetchall()
    assert sorted((k, v, s) for k, v, _, s in got) == sorted(expected) and len(got) == 300
