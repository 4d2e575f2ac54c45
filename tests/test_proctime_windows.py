"""Windows over a ``PROCTIME()`` column, continuously: each micro-batch's rows carry the clock
reading of that batch, and a window closes when the clock passes its end (the query's watermark
is the clock). With an injected clock, random micro-batch splits and a restart, the windows
equal DuckDB's over the same (row, processing time) pairs and none fires before its end; with
the wall clock, a window fires within a fraction of a second of its end, without records."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import (
    AGGREGATES,
    oracle,
    rows_of,
    run_on_clock,
    start_paused,
    to_ms,
    topic_rows,
)

import streamhouse
from streamhouse import StreamHouse

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]

WINDOWS = {
    "tumble": ("TUMBLE(p, INTERVAL '2' SECOND)", 2000, None),
    "hop": ("HOP(p, INTERVAL '1' SECOND, INTERVAL '3' SECOND)", 3000, 1000),
    "cumulate": ("CUMULATE(p, INTERVAL '1' SECOND, INTERVAL '4' SECOND)", 4000, 1000),
    "session": ("SESSION(p, INTERVAL '1500' MILLISECOND)", 1500, None),
}


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql("CREATE STREAM ev (k STRING, v BIGINT, p AS PROCTIME()) WITH (topic = 'ev')")
        yield conn


def query_sql(kind: str) -> str:
    window = WINDOWS[kind][0]
    if kind == "cumulate":  # CUMULATE is a window TVF only
        return (
            f"INSERT INTO out SELECT k, window_start, window_end, {AGGREGATES}"
            " FROM TABLE(CUMULATE(TABLE ev, DESCRIPTOR(p), INTERVAL '1' SECOND,"
            " INTERVAL '4' SECOND)) GROUP BY k, window_start, window_end"
        )
    start, end = f"{kind.upper()}_START", f"{kind.upper()}_END"
    proctime = f"{kind.upper()}_PROCTIME"  # the legacy syntax's time attribute of the window
    args = window[window.index("(") :]
    return (
        f"INSERT INTO out SELECT k, {start}{args} AS window_start, {end}{args} AS window_end,"
        f" {proctime}{args} AS window_proctime, {AGGREGATES} FROM ev GROUP BY k, {window}"
    )


@pytest.mark.parametrize("kind", list(WINDOWS))
def test_proctime_windows_close_by_the_clock(sh: StreamHouse, kind: str) -> None:
    rng = random.Random(kind)
    rows = [{"k": rng.choice("ab"), "v": rng.randrange(10)} for _ in range(80)]
    sh.produce("ev", rows)

    def no_window_left_open(query) -> None:
        assert query.status()["open_windows"] == 0

    stamped, fired = run_on_clock(
        sh, query_sql(kind), "pt", rows, rng, T0 + 123, finished=no_window_left_open
    )
    size, slide = WINDOWS[kind][1], WINDOWS[kind][2]
    out = topic_rows(sh, "out")
    assert rows_of(out, COLUMNS) == oracle(stamped, kind, size, slide)
    if kind != "cumulate":  # TUMBLE_PROCTIME & co: the window's end minus 1 ms, as in Flink
        assert all(to_ms(r["window_proctime"]) == to_ms(r["window_end"]) - 1 for r in out)
    assert all(to_ms(window["window_end"]) <= at for at, window in fired)  # none early
    assert len({t for _, t, _ in stamped}) > 3


def test_nothing_to_do_until_a_window_ends(sh: StreamHouse) -> None:
    sh.produce("ev", [{"k": "a", "v": 1}])
    query = start_paused(sh, query_sql("tumble"), "pt")
    clock = {"now": T0 + 500}
    query.clock = lambda: clock["now"]
    try:
        assert query.step()  # reads the row into [T0, T0 + 2 s)
        clock["now"] = T0 + 1999
        assert not query.step()  # the window has not ended: no micro-batch, no checkpoint
        clock["now"] = T0 + 2000
        assert query.step()  # it ends: fired
        assert query.status()["rows_out"] == 1
        clock["now"] = T0 + 9000
        assert not query.step()  # no window holds rows
    finally:
        query.stop()


def test_a_proctime_window_fires_soon_after_its_end_on_the_wall_clock(sh: StreamHouse) -> None:
    fired: list[tuple[float, dict]] = []
    sql = "SET 'poll-interval' = '5 s';\n" + query_sql("tumble").replace(
        "INTERVAL '2' SECOND", "INTERVAL '500' MILLISECOND"
    )
    query = sh.start(
        sql, name="pt", on_results=lambda t: fired.extend((time.time(), r) for r in t.to_pylist())
    )
    try:
        sh.produce("ev", [{"k": "a", "v": 1}])
        deadline = time.time() + 20
        while not fired and time.time() < deadline:
            time.sleep(0.01)
    finally:
        query.stop()
    assert fired, query.status()
    at, window = fired[0]
    latency = at - to_ms(window["window_end"]) / 1000
    # the poll interval is 5 s: the query woke for the window's end, not for a poll
    assert 0 <= latency < 1.0
