"""CROSS JOIN UNNEST and friends in bounded queries over a stream with array columns, checked
against DuckDB doing the same over the same rows; refusals name the feature and its position."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from join_cases import Schedule, drive, topic_records
from window_cases import start_paused

import streamhouse
from streamhouse.errors import SqlError

ROWS = [
    {"id": 1, "tags": ["x", "y"], "ts": "2024-01-01 00:00:00"},
    {"id": 2, "tags": [], "ts": "2024-01-01 00:00:01"},
    {"id": 3, "tags": None, "ts": "2024-01-01 00:00:02"},
    {"id": 4, "tags": ["z", None, "x"], "ts": "2024-01-01 00:00:03"},
]

STREAM = (
    "CREATE STREAM s (id INT, tags ARRAY<STRING>, ts TIMESTAMP(3), WATERMARK FOR ts AS {watermark})"
)

QUERIES = [
    "SELECT id, tag FROM s CROSS JOIN UNNEST(tags) AS t (tag)",
    "SELECT s.id, t.tag FROM s, UNNEST(s.tags) AS t (tag) WHERE t.tag <> 'x'",
    "SELECT id, tag, pos FROM s CROSS JOIN UNNEST(tags) WITH ORDINALITY AS t (tag, pos)",
    "SELECT id, tag, pos FROM s LEFT JOIN UNNEST(tags) WITH ORDINALITY AS t (tag, pos) ON TRUE",
    "SELECT id, tag FROM s LEFT JOIN UNNEST(s.tags) AS t (tag) ON TRUE",
    "SELECT tag, COUNT(*) AS n FROM s CROSS JOIN UNNEST(tags) AS t (tag) GROUP BY tag",
    "SELECT id, a, b FROM s CROSS JOIN UNNEST(tags) AS u (a) CROSS JOIN UNNEST(tags) AS w (b)",
    "SELECT id, y FROM s, LATERAL (SELECT id + 1 AS y WHERE id > 1) AS l",
    "SELECT id, l.z FROM s CROSS JOIN LATERAL (SELECT id * 2 AS y) AS l (z)",
    "SELECT id, y FROM s LEFT JOIN LATERAL (SELECT id * 2 AS y WHERE id > 2) AS l ON TRUE",
    "SELECT id, tag, y FROM s CROSS JOIN UNNEST(tags) AS t (tag), LATERAL (SELECT tag || '!' AS y) AS l",
]


@pytest.fixture(scope="module")
def sh(tmp_path_factory: pytest.TempPathFactory):
    with streamhouse.connect(tmp_path_factory.mktemp("unnest")) as sh:
        sh.sql(STREAM.format(watermark="ts - INTERVAL '1' SECOND"))
        sh.produce("s", ROWS)
        yield sh


def _duckdb(sql: str) -> list[tuple]:
    con = duckdb.connect()
    table = pa.Table.from_pylist(
        [{**r, "ts": datetime.fromisoformat(r["ts"])} for r in ROWS],
        pa.schema(
            [("id", pa.int32()), ("tags", pa.list_(pa.string())), ("ts", pa.timestamp("ms"))]
        ),
    )
    con.register("s", table)
    return sorted(map(tuple, con.sql(sql).fetchall()), key=repr)


@pytest.mark.parametrize("sql", QUERIES)
def test_bounded_unnest_equals_duckdb(sh: streamhouse.StreamHouse, sql: str) -> None:
    got = sh.sql(sql).to_arrow_table()
    rows = sorted((tuple(r.values()) for r in got.to_pylist()), key=repr)
    assert rows == _duckdb(sql) and rows


def test_lateral_table_unnest(sh: streamhouse.StreamHouse) -> None:
    got = sh.sql("SELECT id, tag FROM s, LATERAL TABLE(UNNEST(tags)) AS t (tag)")
    assert sorted(map(tuple, (r.values() for r in got.to_arrow_table().to_pylist())), key=repr) == (
        _duckdb("SELECT id, tag FROM s CROSS JOIN UNNEST(tags) AS t (tag)")
    )


@pytest.mark.parametrize(
    ("sql", "words", "column"),
    [
        (
            "SELECT id, y FROM s, LATERAL (SELECT o.id AS y FROM s AS o WHERE o.id < s.id) AS l",
            "LATERAL subqueries over a table",
            None,
        ),
        ("SELECT id, y FROM s, LATERAL (SELECT id + 1 AS y) AS l (y, z)", "alias names 2", None),
        ("SELECT id, y FROM s, LATERAL TABLE(my_udtf(tags)) AS l (y)", "LATERAL TABLE over", None),
        ("SELECT id, a FROM s CROSS JOIN UNNEST(tags) AS t (a, b)", "ARRAY<ROW>", 48),
        ("SELECT id, a FROM s JOIN UNNEST(tags) AS t (a) ON id = 1", "ON TRUE", None),
        (
            "SELECT id FROM s AS x JOIN s AS y ON x.id = y.id CROSS JOIN UNNEST(x.tags) AS t (a)",
            "UNNEST after another JOIN",
            None,
        ),
    ],
)
def test_refused_by_name(
    sh: streamhouse.StreamHouse, sql: str, words: str, column: int | None
) -> None:
    with pytest.raises(SqlError) as error:
        sh.sql(sql).to_arrow_table()
    assert words in str(error.value)
    assert error.value.line == 1 and error.value.column is not None
    if column is not None:
        assert error.value.column == column


def test_continuous_unnest_passes_the_time_attribute(tmp_path: Path) -> None:
    """Array rows in one-record micro-batches with a restart: every element once, each with
    its row's event time, equal to DuckDB's LEFT JOIN UNNEST."""
    sql = (
        "SELECT id, tag, pos, ts FROM s"
        " LEFT JOIN UNNEST(tags) WITH ORDINALITY AS t (tag, pos) ON TRUE"
    )
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(STREAM.format(watermark="ts - INTERVAL '1' SECOND"))
        sh.produce("s", ROWS)
        _, status = drive(sh, f"INSERT INTO out {sql}", Schedule((1,), frozenset({2})))
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        got = [
            (r["id"], r["tag"], r["pos"], r["ts"][:19].replace("T", " "))
            for r in topic_records(sh, "out")
        ]
    want = _duckdb(sql.replace(", ts FROM", ", strftime(ts, '%Y-%m-%d %H:%M:%S') FROM"))
    assert sorted(got, key=repr) == want and len(want) == 7


def test_unnest_of_a_map_is_refused_by_name(sh: streamhouse.StreamHouse) -> None:
    with pytest.raises(SqlError) as error:
        sh.sql("SELECT id, x FROM s CROSS JOIN UNNEST(MAP['a', id]) AS t (x)").to_arrow_table()
    assert "UNNEST takes an ARRAY" in str(error.value) and error.value.line == 1


ITEMS = [
    {"id": 1, "items": [{"name": "p", "qty": 2}, {"name": "q", "qty": None}]},
    {"id": 2, "items": []},
    {"id": 3, "items": None},
    {
        "id": 4,
        "items": [{"name": None, "qty": 5}, {"name": "p", "qty": 7}, {"name": "r", "qty": 1}],
    },
    {"id": 5, "items": [{"name": "q", "qty": 3}]},
]
ITEMS_STREAM = (
    "CREATE STREAM u (id INT, items ARRAY<ROW<name STRING, qty INT>>, ts TIMESTAMP(3),"
    " WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)"
)
ROW_UNNESTS = {  # StreamHouse (Flink) -> DuckDB
    "SELECT id, n, q FROM u CROSS JOIN UNNEST(items) AS t (n, q)": (
        "SELECT id, e.name, e.qty FROM (SELECT id, UNNEST(items) AS e FROM u)"
    ),
    "SELECT u.id, t.name, t.qty FROM u, UNNEST(u.items) AS t WHERE t.qty > 1": (
        "SELECT id, e.name, e.qty FROM (SELECT id, UNNEST(items) AS e FROM u) WHERE e.qty > 1"
    ),
    "SELECT id, q, pos FROM u CROSS JOIN UNNEST(items) WITH ORDINALITY AS t (n, q, pos)": (
        "SELECT id, items[i].qty, i FROM (SELECT id, items, generate_subscripts(items, 1) AS i"
        " FROM u)"
    ),
    "SELECT id, t.n, t.q FROM u LEFT JOIN UNNEST(items) AS t (n, q) ON TRUE": (
        "SELECT u.id, x.e.name, x.e.qty FROM u LEFT JOIN (SELECT id, UNNEST(items) AS e FROM u)"
        " AS x ON u.id = x.id"
    ),
}


def _items_duckdb(sql: str) -> list[tuple]:
    schema = pa.schema(
        [
            ("id", pa.int32()),
            ("items", pa.list_(pa.struct([("name", pa.string()), ("qty", pa.int32())]))),
        ]
    )
    con = duckdb.connect()
    con.register("u", pa.Table.from_pylist(ITEMS, schema))
    return sorted(map(tuple, con.sql(sql).fetchall()), key=repr)


def _with_times(rows: list[dict]) -> list[dict]:
    return [{**r, "ts": f"2024-01-01 00:00:{i:02d}"} for i, r in enumerate(rows)]


@pytest.mark.parametrize("sql", list(ROW_UNNESTS))
def test_unnest_of_an_array_of_rows_expands_its_fields_bounded_and_continuous(
    tmp_path: Path, sql: str
) -> None:
    """Flink expands each ROW's fields into columns (named by the alias, or the ROW's own
    names): equal to DuckDB's, bounded and continuously (micro-batches of 1-2 rows, a
    restart)."""
    want = _items_duckdb(ROW_UNNESTS[sql])
    assert want
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(ITEMS_STREAM)
        sh.produce("u", _with_times(ITEMS))
        got = sh.sql(sql).to_arrow_table()
        assert sorted((tuple(r.values()) for r in got.to_pylist()), key=repr) == want
        _, status = drive(sh, f"INSERT INTO out {sql}", Schedule((1, 2), frozenset({2})))
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        out = sorted((tuple(r.values()) for r in topic_records(sh, "out")), key=repr)
    assert out == want


def test_star_over_an_unnest_of_rows_gives_the_fields_and_an_aggregate_reads_them(
    tmp_path: Path,
) -> None:
    """``SELECT *`` lists the stream's columns, then the ROW's fields (no column the expansion
    used on the way); a GROUP BY and a window over the fields (both window syntaxes), bounded
    and continuous."""
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(ITEMS_STREAM)
        sh.produce("u", _with_times(ITEMS))
        star = sh.sql("SELECT * FROM u CROSS JOIN UNNEST(items) AS t (n, q)").to_arrow_table()
        assert star.column_names == ["id", "items", "ts", "n", "q"]
        total = "SELECT n, SUM(q) AS total FROM u CROSS JOIN UNNEST(items) AS t (n, q) GROUP BY n"
        got = sorted(
            map(tuple, (r.values() for r in sh.sql(total).to_arrow_table().to_pylist())), key=repr
        )
        assert got == _items_duckdb(
            "SELECT e.name, SUM(e.qty) FROM (SELECT UNNEST(items) AS e FROM u) GROUP BY e.name"
        )
    # ids 1 (0 s), 4 (3 s) and 5 (4 s) have items: windows [0, 2) and [2, 4) and [4, 6)
    want = [(0, "p", 2), (0, "q", None), (2, "p", 7), (2, "r", 1), (4, "q", 3)]
    for window in WINDOWS_OVER_ROWS:
        with streamhouse.connect(
            tmp_path / str(WINDOWS_OVER_ROWS.index(window)), linger_ms=1
        ) as sh:
            sh.sql(ITEMS_STREAM)
            sh.produce("u", _with_times(ITEMS))
            bounded = sorted(
                (r["window_start"].second, r["n"], r["total"])
                for r in sh.sql(window).to_arrow_table().to_pylist()
                if r["n"] is not None
            )
            _, status = drive(sh, f"INSERT INTO out {window}", Schedule((1, 3), frozenset({1})))
            assert status["late_rows"] == 0
            continuous = sorted(
                (int(r["window_start"][17:19]), r["n"], r["total"])
                for r in topic_records(sh, "out")
                if r["n"] is not None
            )
        assert bounded == continuous == want, window


WINDOWS_OVER_ROWS = [
    "SELECT TUMBLE_START(ts, INTERVAL '2' SECOND) AS window_start, n, SUM(q) AS total"
    " FROM u CROSS JOIN UNNEST(items) AS t (n, q) GROUP BY TUMBLE(ts, INTERVAL '2' SECOND), n",
    # a window TVF joined to the UNNEST: the TVF reads the expansion continuously
    "SELECT window_start, t.n, SUM(t.q) AS total FROM TABLE(TUMBLE(TABLE u, DESCRIPTOR(ts),"
    " INTERVAL '2' SECOND)) CROSS JOIN UNNEST(items) AS t (n, q)"
    " GROUP BY window_start, window_end, t.n",
]


@pytest.mark.parametrize("alias", ["AS t (n)", "AS t (n, q, z)", "WITH ORDINALITY AS t (n, q)"])
def test_unnest_of_rows_with_another_number_of_names_is_refused_at_its_alias(
    tmp_path: Path, alias: str
) -> None:
    select = f"SELECT id FROM u CROSS JOIN UNNEST(items) {alias}"
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(ITEMS_STREAM)
        sh.produce("u", _with_times(ITEMS))
        for sql in (select, f"INSERT INTO out {select}"):
            with pytest.raises(SqlError, match=r"ARRAY<ROW<name, qty>> gives 2 columns") as error:
                if sql.startswith("INSERT"):
                    drive(sh, sql, Schedule((1,), frozenset()))
                else:
                    sh.sql(sql).to_arrow_table()
            assert error.value.line == 1 and error.value.column is not None
        assert topic_records(sh, "out") == []


def test_late_elements_of_a_window_over_unnest_go_to_the_side_output(tmp_path: Path) -> None:
    """A window over UNNEST reads the expansion, each row identified by its source row's
    position and its element's number: the side output gets the late elements the WHERE kept,
    not every element of the late row."""
    sql = (
        "INSERT INTO out SELECT tag, COUNT(*) AS n FROM s CROSS JOIN UNNEST(tags) AS t (tag)"
        " WHERE tag <> 'x' GROUP BY tag, TUMBLE(ts, INTERVAL '10' SECOND)"
    )
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(STREAM.format(watermark="ts"))
        query = start_paused(sh, sql, "q", {"late-rows.topic": "late"})
        try:
            sh.produce("s", [{"id": 1, "tags": ["a"], "ts": "2024-01-01 00:00:01"}])
            sh.produce("s", [{"id": 2, "tags": ["b"], "ts": "2024-01-01 00:00:30"}])
            query.run_until_caught_up()  # the watermark, 00:00:30, closed [00:00, 00:10)
            late = {"id": 3, "tags": ["x", "c", "c", None], "ts": "2024-01-01 00:00:02"}
            sh.produce("s", [late])
            query.run_until_caught_up(final=True)
            status = query.status()
        finally:
            query.stop()
        out = sorted((r["tag"], r["n"]) for r in topic_records(sh, "out"))
        side = [(r["ts"][:19], r["tag"]) for r in topic_records(sh, "late")]
    assert status["late_rows"] == 2  # the two 'c' elements; 'x' and NULL fail the WHERE
    assert side == [("2024-01-01 00:00:02", "c")] * 2
    assert out == [("a", 1), ("b", 1)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT e, COUNT(*) AS n FROM s CROSS JOIN UNNEST(ARRAY[ts]) AS u (e)"
        " GROUP BY e, TUMBLE(e, INTERVAL '2' SECOND)",
        "SELECT window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE (SELECT id, e FROM s"
        " CROSS JOIN UNNEST(ARRAY[ts]) AS u (e)), DESCRIPTOR(e), INTERVAL '2' SECOND))"
        " GROUP BY window_start, window_end",
        "SELECT l.later, COUNT(*) AS n FROM s, LATERAL (SELECT ts AS later) AS l"
        " GROUP BY l.later, TUMBLE(l.later, INTERVAL '2' SECOND)",
    ],
)
def test_a_continuous_window_on_a_lateral_column_is_refused(
    sh: streamhouse.StreamHouse, sql: str
) -> None:
    """An element (or a LATERAL subquery's column) is computed per row: not a time attribute,
    however it was computed, as Flink refuses a window on it."""
    with pytest.raises(SqlError) as error:
        sh.start(f"INSERT INTO w {sql}", name="w")
    assert "is not a time attribute" in str(error.value)
    assert error.value.line == 1 and error.value.column is not None


def test_explain_shows_the_expansion_as_an_input_with_its_row_identity(
    sh: streamhouse.StreamHouse,
) -> None:
    sql = (
        "INSERT INTO w SELECT tag, COUNT(*) AS n FROM s CROSS JOIN UNNEST(tags) AS t (tag)"
        " GROUP BY tag, TUMBLE(ts, INTERVAL '2' SECOND)"
    )
    text = "\n".join(
        str(v)
        for row in sh.sql(f"EXPLAIN {sql}").to_arrow_table().to_pylist()
        for v in row.values()
    )
    plan = text.split("bounded plan")[0]
    assert "WindowAggregate  TUMBLE(ts, size=2000ms)" in plan
    assert "Derived input __derived_0:\n      Stateless  source=s" in plan
    assert "row identity: (_partition, _offset, __element0)" in plan
    assert '"_partition" AS "__partition", "_offset" AS "__offset", "__element0"' in plan


def test_bounded_group_by_window_over_unnest(sh: streamhouse.StreamHouse) -> None:
    """The window columns are added to the stream's rows, then UNNEST expands them."""
    got = sh.sql(
        "SELECT tag, CAST(TUMBLE_START(ts, INTERVAL '2' SECOND) AS STRING) AS ws, COUNT(*) AS n"
        " FROM s CROSS JOIN UNNEST(tags) AS t (tag) GROUP BY tag, TUMBLE(ts, INTERVAL '2' SECOND)"
    ).to_arrow_table()
    rows = sorted(((r["tag"], r["ws"][:19], r["n"]) for r in got.to_pylist()), key=repr)
    assert rows == _duckdb(
        "SELECT tag, strftime(time_bucket(INTERVAL 2 SECOND, ts), '%Y-%m-%d %H:%M:%S') AS ws,"
        " COUNT(*) AS n FROM s CROSS JOIN UNNEST(tags) AS t (tag) GROUP BY ALL"
    )
    assert len(rows) == 5  # x in both windows, y, z and the NULL element
