"""Hostile input never crashes the process or prints a traceback (issue 21, part 5).

Deep JSON, bytes that are not UTF-8 and deeply nested SQL get one-line errors from the
``streamhouse`` command (a real process: a crash would show as a signal, not as a failed
assertion in this one) and StreamHouseErrors from the Python API; a record nested deeper
than the JSON readers can take is left out of queries and counted, never parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

import streamhouse
from streamhouse.errors import InvalidRecordError, SqlError
from streamhouse.sql.json_guard import MAX_JSON_DEPTH, READER_MAX_DEPTH
from tests.kafka_fixtures import KafkaServer

DEEP = 10_000


def nested(depth: int, field: str = "a") -> bytes:
    """A JSON object whose field ``field`` nests arrays to ``depth`` levels in all."""
    inner = depth - 1
    return f'{{"{field}": {"[" * inner}1{"]" * inner}}}'.encode()


def cli(data_dir: Path, *args: str | bytes, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """``python -m streamhouse --data-dir DATA ARGS`` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "streamhouse", "--data-dir", str(data_dir), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def fails_with(result: subprocess.CompletedProcess, message: bytes) -> None:
    """Exit status 1 (no signal), exactly one line on stderr, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert result.stderr.splitlines() == [b"Error: " + message], result.stderr[-2000:]


def records(data_dir: Path, topic: str) -> int:
    with streamhouse.connect(data_dir) as sh:
        offsets = sh.log.metadata.partition_offsets(topic)
    return sum(o.high_watermark for o in offsets.values())


def test_produce_refuses_a_json_line_nested_too_deep_and_names_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("deep")
    lines = b'{"b": 1}\n' + nested(DEEP) + b"\n"
    fails_with(
        cli(data, "produce", "deep", stdin=lines),
        f"line 2 is nested deeper than {MAX_JSON_DEPTH} levels, deeper than a column can be "
        "(--format raw stores it as it is)".encode(),
    )
    assert records(data, "deep") == 0  # nothing of the refused call is written
    deepest = nested(MAX_JSON_DEPTH)  # as deep as queries read: taken, and read back
    taken = cli(data, "produce", "deep", stdin=lines.splitlines()[0] + b"\n" + deepest + b"\n")
    assert taken.returncode == 0, taken.stderr
    assert records(data, "deep") == 2
    read = cli(data, "query", "SELECT a, b FROM deep", "--format", "json")
    assert read.returncode == 0, read.stderr
    assert [json.loads(line) for line in read.stdout.splitlines()] == [
        {"a": None, "b": 1},
        {"a": json.loads(deepest)["a"], "b": None},
    ]


def test_produce_refuses_a_line_that_is_not_utf8_and_names_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("t")
    result = cli(data, "produce", "t", stdin=b'{"a": "ok"}\n{"a": "\xff\xfe"}\n')
    fails_with(result, b"line 2 is not UTF-8: byte 0xff at column 8")
    fails_with(
        cli(data, "produce", "t", stdin=b'{"a": NaN}\n'),
        b"line 1 is not JSON: NaN is not a JSON value",
    )


def test_a_query_leaves_out_a_record_nested_too_deep_and_counts_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("deep")
        sh.produce("deep", [b'{"a": [1], "b": 1}', nested(DEEP), b'{"a": [2], "b": 3}'])
        sh.produce("deep", [nested(MAX_JSON_DEPTH, "c"), nested(MAX_JSON_DEPTH + 1, "c")])
    # A nested column: pyarrow's reader reads every value, and must never see the deepest.
    result = cli(data, "query", "SELECT a, b FROM deep", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"a": [1], "b": 1},
        {"a": [2], "b": 3},
        {"a": None, "b": None},  # c, as deep as a column can be: in the schema
        {"a": None, "b": None},  # c, a level deeper: not in the schema, not read
    ]
    assert b"warning: 1 record(s) did not fit the schema and were left out" in result.stderr
    assert b"Traceback" not in result.stderr
    with streamhouse.connect(data) as sh:
        relation = sh.sql("SELECT a, b FROM deep")
        assert relation.to_arrow_table().num_rows == 4
        assert [(r.offset, r.reason) for r in relation.stats.rejected] == [
            (1, f"nested deeper than {READER_MAX_DEPTH} levels")
        ]
        deepest = sh.sql("SELECT c FROM deep WHERE c IS NOT NULL")
        assert deepest.to_arrow_table()["c"].to_pylist() == [
            json.loads(nested(MAX_JSON_DEPTH, "c"))["c"]
        ]
        assert [r.offset for r in deepest.stats.rejected] == [1, 4]  # c's type: 62 lists deep
        # Flat columns only: DuckDB reads the deep values whole (it takes 1,000,000 levels).
        flat = sh.sql("SELECT b FROM deep")
        assert flat.to_arrow_table()["b"].to_pylist() == [1, None, 3, None, None]
        assert flat.stats.rejected == []


def _poll(bootstrap: str, topic: str, want: int, timeout: float = 60.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(messages) < want:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                messages.append(message)
    finally:
        consumer.close()
    return messages


def test_serve_queries_starts_with_a_record_nested_too_deep_in_its_source(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("deep")
        sh.produce("deep", [b'{"a": 1}', nested(DEEP), b'{"a": 2}'])
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "copy.sql").write_text("INSERT INTO copied SELECT a FROM deep;\n")
    server = KafkaServer(data, args=["--queries", str(queries)])
    server.start()
    try:
        copied = _poll(server.bootstrap, "copied", want=2)
        dead = _poll(server.bootstrap, "copy.dlq", want=1)
        assert server.process is not None and server.process.poll() is None, server.log()
    finally:
        server.stop()
    assert [json.loads(m.value()) for m in copied] == [{"a": 1}, {"a": 2}]
    assert [m.value() for m in dead] == [nested(DEEP)]
    assert (
        dict(dead[0].headers())["reason"]
        == f"nested deeper than {READER_MAX_DEPTH} levels".encode()
    )
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT " + "(" * 80 + "1" + ")" * 80, b"SQL nested too deeply to parse (line 1, column "),
        (
            "SELECT " + "abs(" * 80 + "1" + ")" * 80,
            b"SQL nested too deeply to parse (line 1, column ",
        ),
        (
            " UNION ALL ".join(["SELECT 1"] * 20_000),
            b"SQL nested more than 1000 levels deep (line 1",
        ),
        ("SELECT " + " + ".join(["1"] * 20_000), b"SQL nested more than 1000 levels deep (line 1"),
    ],
    ids=["parentheses", "function-calls", "union-all-chain", "plus-chain"],
)
def test_deeply_nested_sql_is_a_one_line_sql_error(
    tmp_path: Path, sql: str, message: bytes
) -> None:
    result = cli(tmp_path / "data", "query", "-", stdin=sql.encode())  # (too long for argv)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert len(result.stderr.splitlines()) == 1, result.stderr[-2000:]
    assert result.stderr.startswith(b"Error: " + message), result.stderr[-2000:]


def test_sql_that_is_not_utf8_is_a_one_line_sql_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = cli(data, "query", b"SELECT 1,\n  \xff\xfe FROM t")
    fails_with(result, b"SQL text is not valid UTF-8 (line 2, column 3)")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # stdin decoded strictly
    piped = subprocess.run(
        [sys.executable, "-m", "streamhouse", "--data-dir", str(data), "query", "-"],
        input=b"SELECT \xff",
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert piped.returncode == 1, piped.stderr
    assert piped.stderr.startswith(b"Error: input is not valid Unicode text: "), piped.stderr
    assert len(piped.stderr.splitlines()) == 1
    bad_file = tmp_path / "bad.sql"
    bad_file.write_bytes(b"SELECT \xff FROM t")
    fails_with(
        cli(data, "run", str(bad_file)), f"query file {bad_file} is not UTF-8 (byte 7)".encode()
    )


def test_the_python_api_refuses_values_it_cannot_store(tmp_path: Path) -> None:
    deep: list = []
    for _ in range(DEEP):
        deep = [deep]
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.create_topic("t")
        cases = [
            (
                [{"a": 1}, {"a": deep}],
                "the value of record 1 is nested too deeply to encode as JSON",
            ),
            (
                [{"a": float("nan")}],
                "the value of record 0 cannot be encoded as JSON: Out of range",
            ),
            (
                ["ok", "\udcff"],
                "the value of record 1 is not valid Unicode text (surrogates not allowed)",
            ),
        ]
        for values, message in cases:
            with pytest.raises(InvalidRecordError) as raised:
                sh.produce("t", values)
            assert str(raised.value).startswith(message)
        with pytest.raises(InvalidRecordError, match="the key of record 0 is not valid Unicode"):
            sh.produce("t", [b"1"], key="\udcff")
        assert sh.log.metadata.partition_offsets("t")[0].high_watermark == 0
        with pytest.raises(SqlError, match=r"SQL text is not valid UTF-8 \(line 1, column 8\)"):
            sh.sql("SELECT \udcff")


def test_a_query_over_null_values_next_to_malformed_ones_does_not_crash(tmp_path: Path) -> None:
    # (pyarrow's JSON reader crashes when a block starts with null: schema inference read
    # each value alone once the sample held one that is not JSON)
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("n")
        sh.produce("n", [b'{"a": 1}', b"not json", b"null", b"  null1", b'{"a": 2}'])
    result = cli(data, "query", "SELECT a FROM n", "--format", "csv")
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.splitlines() == [b'"a"', b"1", b"2"]
    assert b"warning: 3 record(s) did not fit the schema and were left out" in result.stderr


def test_a_query_reading_no_field_leaves_out_what_a_parse_would(tmp_path: Path) -> None:
    """``COUNT(*)`` (no field of the value read), a metadata column or a ``PROCTIME()``
    column counts the rows every other query has: a value that is not JSON, not an object,
    empty or null is left out and counted as rejected, bounded and continuously (it counted
    as a row there, and nowhere else); an object with blanks around it is a row."""
    from join_cases import Schedule, drive, topic_records

    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql("CREATE STREAM o (a INT, p AS PROCTIME()) WITH (topic = 'o')")
        sh.produce("o", [{"a": i} for i in range(10)])
        sh.produce("o", [b"not json", b"", b"[1]", b' {"a": 99} ', b'"text"', b"{" + b"x" * 40])
        answers = {
            q: sh.sql(q).fetchall()
            for q in (
                "SELECT COUNT(*) FROM o",
                "SELECT COUNT(p) FROM o",
                "SELECT COUNT(_offset) FROM o",
            )
        }
        # '{xxx..' starts as an object: only a parse finds it malformed (COUNT(a) parses)
        assert sh.sql("SELECT COUNT(a) FROM o").fetchall() == [(11,)]
        assert all(rows == [(12,)] for rows in answers.values()), answers
        _, status = drive(
            sh, "INSERT INTO out SELECT _offset AS o FROM o", Schedule((3, 5), frozenset({1}))
        )
        assert status["rejected_rows"] == 4
        assert sorted(r["o"] for r in topic_records(sh, "out")) == [*range(10), 13, 15]
