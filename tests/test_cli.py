"""The ``streamhouse`` command through click's runner, and once as a real process."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

import streamhouse
from streamhouse.cli import main
from streamhouse.log.partitioner import partition_for_key


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def run(data_dir: Path, *args: str, input: str | bytes | None = None, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), *args], input=input)
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def _cells(output: str, width: int = 3) -> list[list[str]]:
    """The header and rows of a table rich printed (header cells between ┃, the rest │)."""
    return [
        [cell.strip() for cell in line.replace("┃", "│").split("│")[1 : width + 1]]
        for line in output.splitlines()
        if line.startswith(("│", "┃"))
    ]


def _fails_cleanly(result: Result, message: str) -> None:
    """Exit status 1, one line on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"Error: {message}"], result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_topic_create_list_describe_delete(data_dir: Path) -> None:
    result = run(data_dir, "topic", "create", "clicks", "-p", "3", "-c", "retention.ms=1000")
    assert result.stderr.strip() == "created topic clicks with 3 partition(s)"
    run(data_dir, "topic", "create", "views")
    _fails_cleanly(
        run(data_dir, "topic", "create", "clicks", ok=False), "topic 'clicks' already exists"
    )
    run(data_dir, "produce", "clicks", input='{"a": 1}\n{"a": 2}\n')

    listing = run(data_dir, "topic", "list").stdout
    assert _cells(listing) == [
        ["topic", "partitions", "records"],
        ["clicks", "3", "2"],
        ["views", "1", "0"],
    ]
    clicks_line = next(line for line in listing.splitlines() if "clicks" in line)
    assert clicks_line.split("│")[2] == " " * 10 + "3 "  # numbers are right-aligned

    described = run(data_dir, "topic", "describe", "clicks").stdout
    assert described.startswith("topic clicks  id ")
    assert "partitions 3" in described and "retention.ms = 1000" in described
    rows = _cells(described)
    assert rows[0] == ["partition", "log_start_offset", "high_watermark"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert [r[1] for r in rows[1:]] == ["0", "0", "0"]
    assert sum(int(r[2]) for r in rows[1:]) == 2

    result = run(data_dir, "topic", "delete", "clicks")
    assert result.stderr.strip() == "deleted topic clicks"
    with streamhouse.connect(data_dir) as sh:
        assert [t.name for t in sh.topics()] == ["views"]


def test_unknown_topics_and_streams_fail_with_one_line(data_dir: Path) -> None:
    run(data_dir, "topic", "create", "real")
    for args in (
        ["topic", "describe", "ghost"],
        ["topic", "delete", "ghost"],
        ["produce", "ghost"],
        ["consume", "ghost", "--from-beginning", "--timeout", "0"],
    ):
        _fails_cleanly(run(data_dir, *args, input='{"a": 1}\n', ok=False), "unknown topic 'ghost'")
    _fails_cleanly(
        run(data_dir, "query", "SELECT * FROM ghost", ok=False),
        "unknown stream, view or topic 'ghost' (line 1, column 15)",
    )
    malformed = run(data_dir, "query", "SELECT *\nFROM real WHERE", ok=False)
    assert malformed.exit_code == 1 and malformed.stdout == ""
    (line,) = malformed.stderr.splitlines()
    assert line.startswith("Error: ") and line.endswith("(line 2, column 11)"), line


def test_produce_and_consume(data_dir: Path) -> None:
    run(data_dir, "topic", "create", "events", "-p", "2")
    lines = "".join(json.dumps({"n": i, "user": f"u{i % 3}"}) + "\n" for i in range(10))
    result = run(data_dir, "produce", "events", input=lines + "\n")  # blank lines are skipped
    assert result.stderr.strip() == "produced 10 record(s) to events"

    out = run(data_dir, "consume", "events", "--from-beginning", "--max", "10").stdout
    assert sorted(json.loads(line)["n"] for line in out.splitlines()) == list(range(10))
    out = run(data_dir, "consume", "events", "--from-beginning", "--max", "3").stdout
    assert len(out.splitlines()) == 3
    p0 = run(data_dir, "consume", "events", "-p", "0", "--from-beginning", "--timeout", "0").stdout
    p1 = run(data_dir, "consume", "events", "-p", "1", "--from-beginning", "--timeout", "0").stdout
    with streamhouse.connect(data_dir) as sh:
        for p, out in ((0, p0), (1, p1)):
            assert out.splitlines() == [
                v.decode() for v in sh.fetch("events", p)["value"].to_pylist()
            ]
    assert len(p0.splitlines()) + len(p1.splitlines()) == 10
    # Without --from-beginning a consumer starts at the end.
    assert run(data_dir, "consume", "events", "--timeout", "0").stdout == ""


def test_produce_with_a_key_and_raw_lines(data_dir: Path) -> None:
    run(data_dir, "topic", "create", "logs", "-p", "5")
    run(
        data_dir,
        "produce",
        "logs",
        "--key",
        "host-7",
        "--format",
        "raw",
        input="plain text\nnot { json\n",
    )
    out = run(data_dir, "consume", "logs", "--from-beginning", "--max", "2", "--print-key").stdout
    assert out.splitlines() == ["host-7\tplain text", "host-7\tnot { json"]
    with streamhouse.connect(data_dir) as sh:
        table = sh.fetch("logs")
        assert set(table["partition"].to_pylist()) == {partition_for_key(b"host-7", 5)}
        assert table["key"].to_pylist() == [b"host-7", b"host-7"]


def test_produce_from_a_file_with_a_key_field(data_dir: Path, tmp_path: Path) -> None:
    run(data_dir, "topic", "create", "orders", "-p", "4")
    source = tmp_path / "orders.jsonl"
    source.write_text(
        "".join(json.dumps({"customer": f"c{i % 4}", "i": i}) + "\n" for i in range(20))
    )
    run(data_dir, "produce", "orders", "-f", str(source), "--key-field", "customer")
    with streamhouse.connect(data_dir) as sh:
        for row in sh.fetch("orders").to_pylist():
            customer = json.loads(row["value"])["customer"]
            assert row["key"] == customer.encode()
            assert row["partition"] == partition_for_key(customer.encode(), 4)


def test_a_bad_json_line_is_named_and_nothing_is_written(data_dir: Path) -> None:
    run(data_dir, "topic", "create", "t")
    result = run(data_dir, "produce", "t", input='{"a": 1}\n{"a": 2}\n{"a": \n{"a": 4}\n', ok=False)
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: line 3 is not JSON: Expecting value (column 7)"
    with streamhouse.connect(data_dir) as sh:
        assert sh.log.offsets("t", 0).high_watermark == 0


@pytest.fixture
def scores(data_dir: Path) -> Path:
    run(data_dir, "topic", "create", "scores", "-p", "2")
    lines = "".join(
        json.dumps({"player": p, "points": pts}) + "\n"
        for p, pts in [("ann", 3), ("bob", 5), ("ann", 4), ("cid", 1), ("bob", 2)]
    )
    run(data_dir, "produce", "scores", input=lines)
    return data_dir


SQL = "SELECT player, sum(points) AS total, count(*) AS games FROM scores GROUP BY player ORDER BY player"
EXPECTED = [("ann", 7, 2), ("bob", 7, 2), ("cid", 1, 1)]


def test_query_as_a_table(scores: Path) -> None:
    result = run(scores, "query", SQL)
    assert _cells(result.stdout) == [["player", "total", "games"]] + [
        [p, str(t), str(g)] for p, t, g in EXPECTED
    ]
    assert result.stderr.strip() == "(3 rows)"


def test_query_as_json_csv_and_arrow(scores: Path, tmp_path: Path) -> None:
    out = run(scores, "query", SQL, "--format", "json").stdout
    assert [tuple(json.loads(line).values()) for line in out.splitlines()] == EXPECTED

    out = run(scores, "query", SQL, "--format", "csv").stdout
    assert list(csv.reader(io.StringIO(out))) == [["player", "total", "games"]] + [
        [p, str(t), str(g)] for p, t, g in EXPECTED
    ]

    result = CliRunner().invoke(
        main, ["query", SQL, "--format", "arrow", "--data-dir", str(scores)]
    )
    assert result.exit_code == 0
    table = pa.ipc.open_stream(result.stdout_bytes).read_all()
    assert [tuple(r.values()) for r in table.to_pylist()] == EXPECTED

    for fmt in ("json", "csv", "arrow", "table"):
        target = tmp_path / f"answer.{fmt}"
        assert run(scores, "query", SQL, "--format", fmt, "-o", str(target)).stdout == ""
        data = target.read_bytes()
        if fmt == "arrow":
            assert pa.ipc.open_stream(data).read_all().num_rows == 3
        elif fmt == "csv":
            assert data.decode().splitlines()[1] == '"ann",7,2'
        elif fmt == "json":
            assert json.loads(data.decode().splitlines()[0]) == {
                "player": "ann",
                "total": 7,
                "games": 2,
            }
        else:  # the same table as on a terminal
            assert _cells(data.decode()) == _cells(run(scores, "query", SQL).stdout)
    missing = tmp_path / "no" / "such" / "dir" / "out.csv"
    _fails_cleanly(
        run(scores, "query", SQL, "--format", "csv", "-o", str(missing), ok=False),
        f"[Errno 2] No such file or directory: '{missing}'",
    )


def test_query_runs_ddl_and_reports_rejected_rows(scores: Path) -> None:
    run(
        scores,
        "produce",
        "scores",
        "--format",
        "raw",
        "-p",
        "0",
        input='{"player": "dan", "points": "many"}\n',
    )
    run(scores, "query", "CREATE STREAM s (player STRING, points BIGINT) WITH (topic='scores')")
    result = run(
        scores, "query", "SELECT count(*) AS n, sum(points) AS total FROM s", "--format", "json"
    )
    assert json.loads(result.stdout) == {"n": 5, "total": 15}
    assert "1 record(s) did not fit the schema" in result.stderr
    assert "DROP STREAM s" in run(scores, "query", "DROP STREAM s").stdout
    _fails_cleanly(
        run(scores, "query", "DROP STREAM s", ok=False),
        "stream 's' does not exist (line 1, column 13)",
    )


def test_produce_then_query_in_real_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env_cmd = [sys.executable, "-m", "streamhouse", "--data-dir", str(data_dir)]
    with streamhouse.connect(data_dir) as sh:
        sh.create_topic("trips", partitions=3)
    lines = "".join(
        json.dumps({"city": c, "km": k}) + "\n" for c, k in [("Oslo", 3), ("Rome", 8), ("Oslo", 4)]
    )
    produced = subprocess.run(
        [*env_cmd, "produce", "trips"], input=lines.encode(), capture_output=True, check=True
    )
    assert produced.stderr.decode().strip() == "produced 3 record(s) to trips"
    script = Path(sys.executable).with_name("streamhouse")
    query = subprocess.run(
        [
            str(script),
            "query",
            "SELECT city, sum(km) AS km FROM trips GROUP BY city ORDER BY city",
            "--format",
            "json",
        ],
        capture_output=True,
        env={"STREAMHOUSE_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert [json.loads(line) for line in query.stdout.decode().splitlines()] == [
        {"city": "Oslo", "km": 7},
        {"city": "Rome", "km": 8},
    ]
    failed = subprocess.run([*env_cmd, "consume", "nope", "--from-beginning"], capture_output=True)
    assert failed.returncode == 1
    assert failed.stderr.decode() == "Error: unknown topic 'nope'\n"
    assert failed.stdout == b""


def test_object_store_options_put_the_log_in_s3(
    data_dir: Path, s3_url: Callable[[str], str], moto_server: str
) -> None:
    """``--object-store`` and ``--s3-endpoint-url``, of a command or of the group: segment
    objects go to the bucket and none to the data directory; a command without them does
    not find them, and says where it looked."""
    url = s3_url("cli")
    store = ["--object-store", url, "--s3-endpoint-url", moto_server]
    run(data_dir, "topic", "create", "lines", *store)
    run(data_dir, *store, "produce", "lines", input='{"a": 1}\n{"a": 2}\n')
    queried = run(data_dir, "query", "SELECT sum(a) AS s FROM lines", "--format", "json", *store)
    assert [json.loads(line) for line in queried.stdout.splitlines()] == [{"s": 3}]
    assert not [p for p in (data_dir / "objects").rglob("*") if p.is_file()]
    with streamhouse.connect(data_dir, object_store=url, s3_endpoint_url=moto_server) as sh:
        assert sh.log.store.list()  # the objects are in the bucket
        assert sh.fetch("lines")["value"].to_pylist() == [b'{"a": 1}', b'{"a": 2}']
    local = run(data_dir, "query", "SELECT sum(a) AS s FROM lines", ok=False)
    assert local.exit_code == 1 and "Traceback" not in local.output
    assert f"not found under {data_dir / 'objects'}" in local.stderr  # where it looked


def test_a_table_into_a_pipe_cuts_no_cell(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped (not a terminal), a listing is as wide as its cells, so ``| grep`` finds a long
    topic name; ``COLUMNS`` still bounds it, as a terminal's width does."""
    monkeypatch.delenv("COLUMNS", raising=False)
    name = "clicks-of-the-checkout-service-" + "x" * 120
    run(data_dir, "topic", "create", name)
    assert name in run(data_dir, "topic", "list").stdout
    monkeypatch.setenv("COLUMNS", "80")
    cut = run(data_dir, "topic", "list").stdout
    assert name not in cut and max(len(line) for line in cut.splitlines()) <= 80
