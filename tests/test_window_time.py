"""A window's time attribute: Flink's legacy ``TUMBLE_ROWTIME``, ``HOP_ROWTIME`` and
``SESSION_ROWTIME`` (``window_time``: the window's end - 1 ms), ``SELECT *`` over a window TVF,
and chained windows (a window over the ``window_time`` of another window's rows), bounded and
continuously (random micro-batches with a restart), against DuckDB.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from window_cases import (
    continuous_rows,
    normalize,
    start_paused,
    to_ms,
    topic_rows,
    windowed_sql,
)

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms
STREAM = """CREATE STREAM ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '2' SECOND) WITH (topic = 'ev', partitions = '2')"""

LEGACY = {  # kind -> (GROUP BY window, its ROWTIME function, size or gap ms, slide ms)
    "tumble": ("TUMBLE(t, INTERVAL '30' SECOND)", "TUMBLE_ROWTIME(t, INTERVAL '30' SECOND)",
               30_000, None),
    "hop": ("HOP(t, INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
            "HOP_ROWTIME(t, INTERVAL '10' SECOND, INTERVAL '30' SECOND)", 30_000, 10_000),
    "session": ("SESSION(t, INTERVAL '8' SECOND)", "SESSION_ROWTIME(t, INTERVAL '8' SECOND)",
                8_000, None),
}  # fmt: skip


def _events(seed: int, n: int = 240) -> list[tuple[str, int, int]]:
    """(k, t ms, v): times mostly rising, a little out of order (within the watermark delay),
    with gaps that end sessions."""
    rng = random.Random(seed)
    events, t = [], T0
    for _ in range(n):
        t += rng.choice([200, 700, 1_500, 3_000, 12_000])
        events.append((rng.choice("abc"), t - rng.randrange(1_500), rng.randrange(100)))
    return events


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(STREAM)
        yield conn


def _produce(sh: StreamHouse, events: list[tuple[str, int, int]]) -> None:
    sh.produce("ev", [{"k": k, "t": t, "v": v} for k, t, v in events])


def _duckdb(events: list[tuple[str, int, int]], sql: str) -> list[tuple]:
    con = duckdb.connect()
    ev = pa.table(
        {
            "k": pa.array([e[0] for e in events]),
            "t": pa.array([e[1] for e in events], pa.int64()),
            "v": pa.array([e[2] for e in events], pa.int64()),
        }
    )
    con.register("ev", ev)
    return sorted(tuple(normalize(x) for x in row) for row in con.execute(sql).fetchall())


def _rows(records: list[dict], columns: list[str]) -> list[tuple]:
    out = []
    for record in records:
        out.append(
            tuple(
                to_ms(record[c]) if c in ("rt", "ws", "window_start", "window_time") else record[c]
                for c in columns
            )
        )
    return sorted(out)


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_legacy_rowtime(sh: StreamHouse, kind: str) -> None:
    window, rowtime, size, slide = LEGACY[kind]
    events = _events(len(kind))
    _produce(sh, events)
    sql = f"SELECT k, {rowtime} AS rt, COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k, {window}"
    expected = _duckdb(
        events,
        f"SELECT k, we - 1, COUNT(*), SUM(v) FROM ({windowed_sql(kind, size, slide)}) "
        "GROUP BY k, ws, we",
    )
    columns = ["k", "rt", "n", "s"]
    assert _rows(sh.sql(sql).to_arrow_table().to_pylist(), columns) == expected
    assert _rows(continuous_rows(sh, sql, kind, batch=37), columns) == expected


def test_select_star_over_a_window_tvf(sh: StreamHouse) -> None:
    events = _events(7)
    _produce(sh, events)
    sql = "SELECT * FROM TABLE(HOP(TABLE ev, DESCRIPTOR(t), INTERVAL '10' SECOND, INTERVAL '30' SECOND))"
    expected = _duckdb(
        events, f"SELECT k, t, v, ws, we, we - 1 FROM ({windowed_sql('hop', 30_000, 10_000)})"
    )
    names = ["k", "t", "v", "window_start", "window_end", "window_time"]
    table = sh.sql(sql).to_arrow_table()
    assert table.column_names == names
    bounded = [tuple(normalize(r[c]) for c in names) for r in table.to_pylist()]
    assert sorted(bounded) == expected
    continuous = [
        (r["k"], to_ms(r["t"]), r["v"], *(to_ms(r[c]) for c in names[3:]))
        for r in continuous_rows(sh, sql, "star", batch=29)
    ]
    assert sorted(continuous) == expected


@pytest.mark.parametrize(
    ("kind", "call", "items"),
    [
        ("tumble", "TUMBLE({}, DESCRIPTOR(t), INTERVAL '30' SECOND)", "*, v * 2 AS y"),
        ("hop", "HOP({}, DESCRIPTOR(t), INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
         "ev.*, v * 2 AS y"),
        ("cumulate", "CUMULATE({}, DESCRIPTOR(t), INTERVAL '10' SECOND, INTERVAL '30' SECOND)",
         "*, v * 2 AS y"),
    ],
)  # fmt: skip
def test_select_star_over_a_window_tvf_of_a_projection(
    sh: StreamHouse, kind: str, call: str, items: str
) -> None:
    """As in Flink, a window TVF's columns are its input's (here ``k, t, v, y``), then
    ``window_start, window_end, window_time``: the input's computed columns come before the
    window's, bounded and continuously."""
    events = _events(11)
    _produce(sh, events)
    sql = f"SELECT * FROM TABLE({call.format(f'TABLE (SELECT {items} FROM ev)')})"
    slide = 10_000 if kind != "tumble" else None
    expected = _duckdb(
        events, f"SELECT k, t, v, v * 2, ws, we, we - 1 FROM ({windowed_sql(kind, 30_000, slide)})"
    )
    names = ["k", "t", "v", "y", "window_start", "window_end", "window_time"]
    table = sh.sql(sql).to_arrow_table()
    assert table.column_names == names
    assert sorted(tuple(normalize(r[c]) for c in names) for r in table.to_pylist()) == expected
    records = continuous_rows(sh, sql, kind, batch=31)
    assert {tuple(r) for r in records} == {tuple(names)}  # each record's columns, in order
    times = ("t", "window_start", "window_end", "window_time")
    continuous = [tuple(to_ms(r[c]) if c in times else r[c] for c in names) for r in records]
    assert sorted(continuous) == expected


@pytest.mark.parametrize(
    "data",
    [
        "TABLE (SELECT k, t, v * 2 AS y FROM ev WHERE v >= 30) PARTITION BY k",
        "TABLE (SELECT * FROM (SELECT k, t, v * 2 AS y FROM ev) WHERE y >= 60) PARTITION BY (k)",
        "TABLE filtered PARTITION BY k",
    ],
)
def test_a_session_window_over_a_query_partitioned_by_a_key(sh: StreamHouse, data: str) -> None:
    """Flink's ``SESSION(TABLE (SELECT ...) PARTITION BY k, DESCRIPTOR(t), gap)`` (and over a
    view): sessions per key over the query's rows, bounded and continuously, as DuckDB's gaps
    and islands over the same rows."""
    events = _events(13)
    _produce(sh, events)
    sh.sql("CREATE VIEW filtered AS SELECT k, t, v * 2 AS y FROM ev WHERE v >= 30")
    sql = (
        "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(y) AS s FROM TABLE(SESSION("
        f"{data}, DESCRIPTOR(t), INTERVAL '8' SECOND)) GROUP BY k, window_start, window_end"
    )
    kept = [e for e in events if e[2] >= 30]
    expected = _duckdb(
        kept,
        f"SELECT k, ws, we, COUNT(*), SUM(v * 2) FROM ({windowed_sql('session', 8_000)})"
        " GROUP BY k, ws, we",
    )
    assert len(expected) > 10 and len({row[0] for row in expected}) == 3
    columns = ["k", "window_start", "window_end", "n", "s"]

    def rows(records: list[dict]) -> list[tuple]:
        return sorted(
            tuple(to_ms(r[c]) if c in columns[1:3] else r[c] for c in columns) for r in records
        )

    assert rows(sh.sql(sql).to_arrow_table().to_pylist()) == expected
    assert rows(continuous_rows(sh, sql, "session", batch=23)) == expected


def test_the_rows_of_a_session_window_are_refused_continuously_by_name(sh: StreamHouse) -> None:
    """``SELECT *`` over a SESSION TVF runs bounded; continuously a row's session is not known
    until the watermark closes it, and the refusal says so (it named a missing PARTITION BY
    of a TVF that has one)."""
    _produce(sh, _events(3, n=20))
    sql = (
        "SELECT * FROM TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(t), INTERVAL '8' SECOND))"
    )
    assert sh.sql(sql).to_arrow_table().num_rows == 20
    with pytest.raises(SqlError, match=r"SESSION window supports only a window aggregate.*line 1"):
        start_paused(sh, f"INSERT INTO out {sql}", "rows")


def test_chained_windows(sh: StreamHouse, tmp_path: Path) -> None:
    """Per-key counts per 10 s, then summed per 30 s over their window_time, as in Flink's
    "cascading window aggregation" example (a view of the first window)."""
    events = _events(9)
    _produce(sh, events)
    view = (
        "CREATE TEMPORARY VIEW per_key AS SELECT k, window_start, window_end, "
        "window_time AS rowtime, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(t), "
        "INTERVAL '10' SECOND)) GROUP BY k, window_start, window_end, window_time"
    )
    outer = (
        "SELECT window_start AS ws, window_end AS we, SUM(n) AS total, COUNT(*) AS keyed"
        " FROM TABLE(TUMBLE("
        "TABLE per_key, DESCRIPTOR(rowtime), INTERVAL '30' SECOND)) GROUP BY window_start, "
        "window_end"
    )
    inner = f"SELECT k, ws, we - 1 AS rowtime, COUNT(*) AS n FROM ({windowed_sql('tumble', 10_000)}) GROUP BY k, ws, we"
    expected = _duckdb(
        events,
        f"SELECT rowtime - rowtime % 30000, SUM(n), COUNT(*) FROM ({inner}) GROUP BY 1",
    )
    columns = ["ws", "total", "keyed"]
    sh.sql(view)
    assert _rows(sh.sql(outer).to_arrow_table().to_pylist(), columns) == expected
    sh.sql("DROP TEMPORARY VIEW per_key")
    path = tmp_path / "chained.sql"
    path.write_text(f"{view};\nINSERT INTO out_chained {outer};\n")
    query = start_paused(sh, str(path), "chained")
    query.step(max_records=31)
    query.stop()
    query = start_paused(sh, str(path), "chained")
    try:
        while query.step(max_records=31):
            pass
        query.run_until_caught_up(final=True)
        assert query.status()["error"] is None
    finally:
        query.stop()
    # Continuously the outer window runs as an updating aggregate over the inner one's rows
    # (upserts keyed by window, as EXPLAIN says), not yet as a window that emits once when
    # the watermark passes it: the latest record per window is the answer.
    latest = {r["ws"]: r for r in topic_rows(sh, "out_chained")}
    assert _rows(list(latest.values()), columns) == expected
