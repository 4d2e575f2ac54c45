"""Results of any size from ``streamhouse query``: the table format shows the first and last rows
and counts them all; csv, json and arrow write every row, batch by batch; duplicate output names
and DataFusion's view types come out in every format and in the Python API."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from click.testing import CliRunner
from test_cli import _cells, run

import streamhouse
from streamhouse.cli import main

ROWS = 30_000  # several of DataFusion's 8,192-row batches
SCHEMA = pa.schema([("i", pa.int64()), ("s", pa.string()), ("x", pa.float64())])


def _record(i: int) -> dict[str, object]:
    """Values that CSV and JSON must quote or escape: commas, quotes, newlines, non-ASCII, NULL."""
    text = None if i % 10 == 3 else f'n{i % 97}, "q"\nü' if i % 5 == 0 else f"name-{i}"
    return {"i": i, "s": text, "x": None if i % 13 == 0 else i * 0.25}


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data dir whose topic ``big`` (3 partitions) holds ROWS records, and the same records
    as a JSON-lines file for DuckDB."""
    root = tmp_path_factory.mktemp("output")
    records = [_record(i) for i in range(ROWS)]
    with streamhouse.connect(root / "data") as sh:
        sh.create_topic("big", partitions=3)
        sh.produce("big", records)
        sh.create_topic("one", partitions=1)
        sh.produce("one", records[:5])
    lines = root / "big.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in records))
    return root / "data", lines


def _duckdb(lines: Path, sql: str) -> pa.Table:
    """``sql`` over the records of ``big`` (as table ``big``), answered by DuckDB."""
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE big AS SELECT * FROM read_json('{lines}', "
        "columns = {i: 'BIGINT', s: 'VARCHAR', x: 'DOUBLE'})"
    )
    return con.sql(sql).to_arrow_table()


def _stdout_bytes(data_dir: Path, *args: str) -> bytes:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "query", *args])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result.stdout_bytes


ORDERED = "SELECT i, s, x, i % 7 AS m FROM big ORDER BY i"


def test_table_shows_the_first_and_last_rows_and_counts_all(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    result = run(data_dir, "query", "SELECT i, s FROM big WHERE s LIKE 'name-%' ORDER BY i")
    named = [i for i in range(ROWS) if i % 10 != 3 and i % 5 != 0]
    shown = named[:20] + named[-20:]
    cells = _cells(result.stdout, 2)
    assert cells[0] == ["i", "s"]
    assert cells[1:21] == [[str(i), f"name-{i}"] for i in shown[:20]]
    assert cells[21] == ["…", "…"]
    assert cells[22:] == [[str(i), f"name-{i}"] for i in shown[20:]]
    assert result.stderr == f"({len(named):,} rows, 40 shown)\n"

    result = run(data_dir, "query", "SELECT i FROM big ORDER BY i DESC", "--max-rows", "5")
    assert _cells(result.stdout, 1) == [["i"], ["29999"], ["29998"], ["29997"], ["…"], ["1"], ["0"]]
    assert result.stderr == "(30,000 rows, 5 shown)\n"


def test_max_rows_zero_or_more_than_the_result_prints_every_row(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    sql = "SELECT i, x FROM big WHERE i < 300 ORDER BY i"
    for flags in (["--max-rows", "0"], ["--max-rows", "300"]):
        result = run(data_dir, "query", sql, *flags)
        assert _cells(result.stdout, 2)[1:] == [
            [str(i), "NULL" if i % 13 == 0 else str(i * 0.25)] for i in range(300)
        ]
        assert result.stderr == "(300 rows)\n"
    result = run(data_dir, "query", sql, "--max-rows", "0", "-o", str(data_dir / "t.txt"))
    assert len(_cells((data_dir / "t.txt").read_text(), 2)) == 301
    bad = run(data_dir, "query", sql, "--max-rows", "-1", ok=False)
    assert bad.exit_code == 2 and "-1 is not in the range x>=0" in bad.stderr


@pytest.mark.parametrize("where", ["stdout", "file"])
def test_csv_json_and_arrow_hold_every_row_exactly(big: tuple[Path, Path], where: str) -> None:
    data_dir, lines = big
    expected = _duckdb(lines, ORDERED)
    assert expected.num_rows == ROWS

    def answer(fmt: str) -> bytes:
        if where == "stdout":
            return _stdout_bytes(data_dir, ORDERED, "--format", fmt)
        target = data_dir.parent / f"answer.{fmt}"
        assert _stdout_bytes(data_dir, ORDERED, "--format", fmt, "-o", str(target)) == b""
        return target.read_bytes()

    arrow = pa.ipc.open_stream(answer("arrow")).read_all()
    assert arrow.equals(expected.cast(arrow.schema))
    assert arrow.schema.names == ["i", "s", "x", "m"]

    options = pa_csv.ConvertOptions(
        column_types=expected.schema, strings_can_be_null=True, quoted_strings_can_be_null=False
    )
    from_csv = pa_csv.read_csv(io.BytesIO(answer("csv")), convert_options=options)
    assert from_csv.equals(expected)

    rows = [json.loads(line) for line in answer("json").decode().splitlines()]
    assert rows == expected.to_pylist()


def test_the_python_api_streams_the_same_rows(big: tuple[Path, Path]) -> None:
    data_dir, lines = big
    expected = _duckdb(lines, ORDERED)
    with streamhouse.connect(data_dir) as sh:
        reader = sh.sql(ORDERED).to_arrow_reader()
        batches = list(reader)
        assert len(batches) > 1
        streamed = pa.Table.from_batches(batches)
        assert streamed.equals(expected.cast(streamed.schema))
        assert sh.sql(ORDERED).to_arrow_table().equals(streamed)


def test_duplicate_output_names_in_every_format(big: tuple[Path, Path]) -> None:
    """``*`` is the declared columns, so ``*, _offset`` has one ``_offset``; names written twice
    stay twice (as in PostgreSQL), except as JSON keys, where DuckDB's ``i_1`` is used."""
    data_dir, _ = big
    sql = "SELECT *, _offset, i, s AS i FROM one ORDER BY _offset"
    names = ["i", "s", "x", "_offset", "i", "i"]
    rows = [(i, _record(i)["s"], _record(i)["x"], i, i, _record(i)["s"]) for i in range(5)]
    with streamhouse.connect(data_dir) as sh:
        table = sh.sql(sql).to_arrow_table()
        assert table.schema.names == names
        assert sh.sql(sql).fetchall() == rows
        assert sh.sql(sql).to_arrow_reader().schema.names == names
        assert sh.sql(sql).pl().columns == ["i", "s", "x", "_offset", "i_1", "i_2"]
        assert sh.sql("SELECT i, i FROM one ORDER BY i").fetchall() == [(i, i) for i in range(5)]
        union = sh.sql("SELECT i, i FROM one UNION ALL SELECT i, i + 1 FROM one ORDER BY 1, 2")
        assert union.to_arrow_table().schema.names == ["i", "i"]
        assert union.fetchall() == [(i, i + d) for i in range(5) for d in (0, 1)]
        both = sh.sql("SELECT a.i, b.i FROM one a JOIN one b ON a.i = b.i + 1 ORDER BY a.i")
        assert both.to_arrow_table().schema.names == ["i", "i"]
        assert both.fetchall() == [(i, i - 1) for i in range(1, 5)]
        metadata = sh.sql("SELECT _offset, * FROM one ORDER BY i").to_arrow_table()
        assert metadata.schema.names == ["_offset", "i", "s", "x"]

    arrow = pa.ipc.open_stream(_stdout_bytes(data_dir, sql, "--format", "arrow")).read_all()
    assert arrow.equals(table)
    written = list(
        csv.reader(io.StringIO(_stdout_bytes(data_dir, sql, "--format", "csv").decode()))
    )
    assert written[0] == names
    assert written[1] == ["0", 'n0, "q"\nü', "", "0", "0", 'n0, "q"\nü']
    assert len(written) == 6
    out = _stdout_bytes(data_dir, sql, "--format", "json").decode().splitlines()
    assert [json.loads(line) for line in out] == [
        dict(zip(["i", "s", "x", "_offset", "i_1", "i_2"], row, strict=True)) for row in rows
    ]
    shown = _cells(run(data_dir, "query", sql).stdout, 6)
    assert shown[0] == names
    assert shown[2] == ["1", "name-1", "0.25", "1", "1", "name-1"]


def test_json_keys_are_the_column_names_whatever_they_are(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    sql = 'SELECT i AS answer_rows, s AS "it\'s ""q""", x AS "json_object" FROM big WHERE i = 1'
    out = _stdout_bytes(data_dir, sql, "--format", "json")
    assert json.loads(out) == {"answer_rows": 1, 'it\'s "q"': "name-1", "json_object": 0.25}


def test_string_casts_reach_csv_as_plain_strings(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    sql = "SELECT CAST(i AS STRING) AS s, CAST(x AS VARCHAR) AS t FROM big WHERE i < 3 ORDER BY i"
    with streamhouse.connect(data_dir) as sh:
        schema = sh.sql(sql).to_arrow_table().schema
        assert schema.types == [pa.string(), pa.string()]
        assert sh.sql(sql).to_arrow_reader().schema.types == [pa.string(), pa.string()]
    written = _stdout_bytes(data_dir, sql, "--format", "csv").decode()
    assert list(csv.reader(io.StringIO(written))) == [
        ["s", "t"],
        ["0", ""],
        ["1", "0.25"],
        ["2", "0.5"],
    ]
    assert json.loads(_stdout_bytes(data_dir, sql, "--format", "json").splitlines()[1]) == {
        "s": "1",
        "t": "0.25",
    }


def test_a_column_declared_as_another_string_type_than_it_comes_streams(
    big: tuple[Path, Path],
) -> None:
    """DataFusion declares ``'{' || concat_ws(..) || '}'`` (JSON_OBJECT) as Utf8 and sends
    Utf8View: read by the declared type, the buffers crashed the process in every format."""
    data_dir, _ = big
    sql = "SELECT i, JSON_OBJECT('k' VALUE i) AS j FROM big WHERE i < 3 ORDER BY i"
    with streamhouse.connect(data_dir) as sh:
        streamed = sh.sql(sql).to_arrow_reader().read_all()
    assert streamed.column("j").to_pylist() == ['{"k":0}', '{"k":1}', '{"k":2}']
    written = _stdout_bytes(data_dir, sql, "--format", "csv").decode()
    assert list(csv.reader(io.StringIO(written)))[1:] == [
        ["0", '{"k":0}'],
        ["1", '{"k":1}'],
        ["2", '{"k":2}'],
    ]
    lines = _stdout_bytes(data_dir, sql, "--format", "json").splitlines()
    assert [json.loads(line)["j"] for line in lines] == ['{"k":0}', '{"k":1}', '{"k":2}']
    assert b'{"k":2}' in _stdout_bytes(data_dir, sql)


def test_nested_values_and_intervals_reach_csv_as_text(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    sql = (
        "SELECT i, make_array(i, i + 1) AS l, named_struct('a', i, 'b', s) AS st, "
        "INTERVAL '1' DAY AS d FROM big WHERE i IN (1, 2) ORDER BY i"
    )
    written = _stdout_bytes(data_dir, sql, "--format", "csv").decode()
    assert list(csv.reader(io.StringIO(written))) == [
        ["i", "l", "st", "d"],
        ["1", "[1, 2]", "{'a': 1, 'b': name-1}", "1 day"],
        ["2", "[2, 3]", "{'a': 2, 'b': name-2}", "1 day"],
    ]


def test_an_error_while_rows_stream_is_one_line(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    for fmt in ("table", "csv", "json", "arrow"):
        result = run(
            data_dir, "query", "SELECT 10 / (i - 20000) FROM big", "--format", fmt, ok=False
        )
        assert result.exit_code == 1
        assert result.stderr.splitlines() == ["Error: Divide by zero error (line 1, column 8)"], (
            result.stderr
        )
        assert "Traceback" not in result.output


def test_explain_is_shown_whole(big: tuple[Path, Path]) -> None:
    data_dir, _ = big
    sql = "EXPLAIN SELECT i FROM big"
    with streamhouse.connect(data_dir) as sh:
        plan = sh.sql(sql).to_arrow_table()["plan"].to_pylist()
    assert len(plan) > 2
    result = run(data_dir, "query", sql, "--max-rows", "2")
    assert [row[0] for row in _cells(result.stdout, 1)[1:]] == [line.strip() for line in plan]
    assert result.stderr == f"({len(plan)} rows)\n"


def test_a_continuous_query_prints_its_rows_through_the_same_writers(
    big: tuple[Path, Path],
) -> None:
    data_dir, _ = big
    path = data_dir.parent / "cast.sql"
    path.write_text("SELECT i, CAST(i AS STRING) AS t FROM one;\n")
    result = run(data_dir, "run", str(path), "--until-end", "--format", "json", "--name", "cast")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"i": i, "t": str(i)} for i in range(5)
    ]
