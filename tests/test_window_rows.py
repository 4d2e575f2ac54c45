"""Window TVFs in joins: a TVF joined to a stream is a WindowRows input (each row once per
window), a join of TVFs a window join, a SESSION TVF in a join refused with what to write.
Results against DuckDB are the conformance corpus's (window_*_over_join, window_join_*); here:
the plan EXPLAIN shows, the rows WindowRows emits, the refusals' positions, and the bounded
(``sh.sql``) form of a TVF joined to a stream against DuckDB."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from join_cases import event_table
from window_cases import start_paused

import streamhouse
from streamhouse.errors import SqlError
from streamhouse.runtime.operator import MicroBatch
from streamhouse.runtime.operators import WindowRowsAssign
from streamhouse.sql.parse import parse_one
from streamhouse.sql.plan import plan_query
from streamhouse.sql.window_rows import WindowRows
from streamhouse.sql.window_spec import WindowKind, WindowSpec

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms
HOP_JOIN = (
    "SELECT window_start, window_end, COUNT(*) AS n"
    " FROM TABLE(HOP(TABLE a, DESCRIPTOR(t), INTERVAL '5' SECOND, INTERVAL '10' SECOND)) AS x"
    " JOIN b ON x.k = b.k GROUP BY window_start, window_end"
)
STREAMS = [
    "CREATE STREAM a (k STRING, t TIMESTAMP(3), v BIGINT, WATERMARK FOR t AS t)"
    " WITH (topic = 'a', format = 'json')",
    "CREATE STREAM b (k STRING, t TIMESTAMP(3), w BIGINT, WATERMARK FOR t AS t)"
    " WITH (topic = 'b', format = 'json')",
]


def test_explain_shows_window_rows_and_each_changelog() -> None:
    text = plan_query(parse_one(HOP_JOIN)).explain()
    lines = text.splitlines()
    rows = next(i for i, line in enumerate(lines) if "WindowRows" in line)
    assert "HOP(a.t, size=10000ms slide=5000ms)" in lines[rows]
    assert lines[rows + 1].strip() == "changelog: append-only"
    assert "changelog: upsert by (window_start, window_end)" in text
    assert "StreamJoin" in text


@pytest.mark.parametrize(
    ("spec", "per_row"),
    [
        (WindowSpec(WindowKind.TUMBLE, "t", 10_000), [1, 1, 1]),
        (WindowSpec(WindowKind.HOP, "t", 10_000, slide_ms=5_000), [2, 2, 2]),
        # CUMULATE 5 s / 10 s: a row in the first half of its period is in both windows
        (WindowSpec(WindowKind.CUMULATE, "t", 10_000, slide_ms=5_000), [2, 1, 2]),
    ],
)
def test_window_rows_emit_each_row_once_per_window(spec: WindowSpec, per_row: list[int]) -> None:
    times = [T0 + 1_000, T0 + 7_000, T0 + 10_000]
    rows = pa.table(
        {"k": ["x", "y", "z"], "t": pa.array(times, pa.int64()).cast(pa.timestamp("ms"))}
    )
    node = WindowRows("a", spec)
    out = WindowRowsAssign(node, None, None).process(  # type: ignore[arg-type]
        MicroBatch({"a": rows}, 0, 0, None)  # type: ignore[arg-type]
    )
    table = out.rows
    assert table is not None
    assert [table["k"].to_pylist().count(k) for k in "xyz"] == per_row
    starts = table["window_start"].cast(pa.int64()).to_pylist()
    ends = table["window_end"].cast(pa.int64()).to_pylist()
    stamps = table["t"].cast(pa.int64()).to_pylist()
    assert all(s <= t < e for s, t, e in zip(starts, stamps, ends, strict=True))
    assert table["window_time"].cast(pa.int64()).to_pylist() == [e - 1 for e in ends]


@pytest.mark.parametrize(
    ("sql", "words", "column"),
    [
        (
            "SELECT x.k FROM TABLE(SESSION(TABLE a PARTITION BY k, DESCRIPTOR(t),"
            " INTERVAL '5' SECOND)) AS x JOIN b ON x.k = b.k",
            "Aggregate per session first",
            17,
        ),
        (
            "SELECT L.k FROM TABLE(SESSION(TABLE a PARTITION BY k, DESCRIPTOR(t),"
            " INTERVAL '5' SECOND)) AS L JOIN TABLE(SESSION(TABLE b PARTITION BY k,"
            " DESCRIPTOR(t), INTERVAL '5' SECOND)) AS R ON L.k = R.k",
            "Aggregate per session first",
            17,
        ),
        (
            "SELECT a.k, COUNT(*) FROM a JOIN b ON a.k = b.k"
            " GROUP BY a.k, TUMBLING(a.t, INTERVAL '5' SECOND)",
            "window each input with a TVF",
            None,
        ),
    ],
)
def test_refusals_say_what_to_write(sql: str, words: str, column: int | None) -> None:
    with pytest.raises(SqlError) as error:
        plan_query(parse_one(sql))
    assert words in str(error.value)
    assert error.value.line == 1
    if column is not None:
        assert error.value.column == column


def test_bounded_hop_tvf_joined_to_a_stream_equals_duckdb(tmp_path: Path) -> None:
    a = [("x", T0 + i * 1_000, i) for i in range(12)] + [("y", T0 + 3_000, 7)]
    b = [("x", T0 + 500, 1), ("x", T0 + 9_000, 2), ("y", T0, 3), ("z", T0, 4)]
    with streamhouse.connect(tmp_path) as sh:
        for statement in STREAMS:
            sh.sql(statement)
        sh.produce("a", [{"k": k, "t": t, "v": v} for k, t, v in a])
        sh.produce("b", [{"k": k, "t": t, "w": w} for k, t, w in b])
        got = sh.sql(HOP_JOIN).to_arrow_table()
    con = duckdb.connect()
    for name, rows, value in (("a", a, "v"), ("b", b, "w")):
        con.register(name, event_table(rows, value))
    want = con.sql(
        "WITH x AS (SELECT *, UNNEST(generate_series(epoch_ms(t) - epoch_ms(t) % 5000 - 5000,"
        " epoch_ms(t) - epoch_ms(t) % 5000, 5000)) AS ws FROM a)"
        " SELECT ws AS window_start, ws + 10000 AS window_end, COUNT(*) AS n"
        " FROM x JOIN b ON x.k = b.k GROUP BY ALL"
    ).fetchall()

    def ms(column: str) -> list[int]:
        return got[column].cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist()

    assert sorted(zip(ms("window_start"), ms("window_end"), got["n"].to_pylist(), strict=True)) == (
        sorted(want)
    )


def test_interval_join_over_window_rows_evicts_as_over_the_stream(tmp_path: Path) -> None:
    """WindowRows keeps its stream's time attribute, so an interval join over it evicts both
    sides by the watermark, as it does over the stream itself."""
    over = {
        "tvf": "TABLE(HOP(TABLE a, DESCRIPTOR(t), INTERVAL '5' SECOND, INTERVAL '10' SECOND))",
        "stream": "a",
    }
    held = {}
    with streamhouse.connect(tmp_path) as sh:
        for statement in STREAMS:
            sh.sql(statement)
        sh.produce("a", [{"k": "x", "t": T0 + i * 1_000, "v": i} for i in range(300)])
        sh.produce("b", [{"k": "x", "t": T0 + i * 1_000, "w": i} for i in range(300)])
        for name, source in over.items():
            query = start_paused(
                sh,
                f"SELECT x.k, x.v, y.w FROM {source} AS x JOIN b AS y"
                " ON x.k = y.k AND y.t BETWEEN x.t - INTERVAL '2' SECOND AND x.t",
                name,
            )
            try:
                while query.step(max_records=40):
                    pass
                held[name] = query.status()["open_windows"]
            finally:
                query.stop()
    assert held["tvf"] == held["stream"] < 20
