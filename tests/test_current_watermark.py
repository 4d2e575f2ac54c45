"""``CURRENT_WATERMARK(ts)``: continuously, the watermark a micro-batch's rows arrive at (the
one the previous batch ended with), NULL before the first; in a bounded query, NULL. Checked
against a replay of the watermark over the same micro-batch splits, random sizes, with a
restart in the middle."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from window_cases import start_paused, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
DELAY = 2_000

STREAM = (
    "CREATE STREAM ev (id BIGINT, ts TIMESTAMP(3),"
    " WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) WITH (topic = 'ev')"
)


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(STREAM)
        yield conn


def events(n: int, seed: int) -> list[dict]:
    """A second apart, disordered by up to 30 s: some arrive behind the 2 s watermark."""
    rng = random.Random(seed)
    return [{"id": i, "ts": T0 + i * 1000 - rng.randrange(0, 30_000)} for i in range(n)]


def expected_watermarks(rows: list[dict], sizes: list[int]) -> dict[int, int | None]:
    """Each row's CURRENT_WATERMARK: max event time of the earlier batches minus the delay."""
    out: dict[int, int | None] = {}
    watermark, at = None, 0
    for size in sizes:
        batch = rows[at : at + size]
        for row in batch:
            out[row["id"]] = watermark
        top = max(r["ts"] for r in batch) - DELAY
        watermark = top if watermark is None else max(watermark, top)
        at += size
    return out


def run(sh: StreamHouse, sql: str, sizes: list[int]) -> None:
    query = start_paused(sh, sql, "cw")
    try:
        for size in sizes:
            assert query.step(max_records=size)
    finally:
        query.stop()


@pytest.mark.parametrize("seed", [1, 2])
def test_current_watermark_splits_late_rows_over_random_batches_and_a_restart(
    sh: StreamHouse, seed: int
) -> None:
    rows = events(120, seed)
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < len(rows):
        sizes.append(min(rng.randrange(1, 25), len(rows) - sum(sizes)))
    half = len(sizes) // 2
    sql = (
        "INSERT INTO out SELECT id, CURRENT_WATERMARK(ts) AS wm,"
        " CURRENT_WATERMARK(ts) IS NULL OR ts > CURRENT_WATERMARK(ts) AS on_time FROM ev"
    )
    sh.produce("ev", rows[: sum(sizes[:half])])
    run(sh, sql, sizes[:half])
    sh.produce("ev", rows[sum(sizes[:half]) :])
    run(sh, sql, sizes[half:])  # restarted: the watermark comes from the checkpoint
    want = expected_watermarks(rows, sizes)
    got = {
        r["id"]: (to_ms(r["wm"]) if r["wm"] is not None else None) for r in topic_rows(sh, "out")
    }
    assert got == want
    ts = {r["id"]: r["ts"] for r in rows}
    on_time = {r["id"]: r["on_time"] for r in topic_rows(sh, "out")}
    assert on_time == {i: w is None or ts[i] > w for i, w in want.items()}
    assert not all(on_time.values())  # some rows were late


def test_late_rows_filtered_by_current_watermark(sh: StreamHouse) -> None:
    rows = events(60, seed=3)
    sizes = [10] * 6
    sh.produce("ev", rows)
    run(
        sh,
        "INSERT INTO out SELECT id FROM ev WHERE ts <= CURRENT_WATERMARK(ts)",  # the late ones
        sizes,
    )
    want = expected_watermarks(rows, sizes)
    late = sorted(r["id"] for r in rows if want[r["id"]] is not None and r["ts"] <= want[r["id"]])
    assert late and sorted(r["id"] for r in topic_rows(sh, "out")) == late


def test_bounded_current_watermark_is_null(sh: StreamHouse) -> None:
    sh.produce("ev", events(5, seed=4))
    table = sh.sql(
        "SELECT id, CURRENT_WATERMARK(ts) AS wm FROM ev"
        " WHERE CURRENT_WATERMARK(ts) IS NULL OR ts > CURRENT_WATERMARK(ts)"
    ).to_arrow_table()
    assert table.num_rows == 5 and table.column("wm").null_count == 5
    with pytest.raises(SqlError, match="CURRENT_WATERMARK takes the time attribute"):
        sh.sql("SELECT CURRENT_WATERMARK(1) FROM ev").to_arrow_table()
