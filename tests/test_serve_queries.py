"""``streamhouse serve --queries DIR`` with query files written as Flink SQL scripts are.

A file's plain ``CREATE STREAM`` (no ``IF NOT EXISTS``) is part of the query's definition:
after a clean stop and after kill -9 the server starts again, the declaration is a no-op and
the query resumes from its checkpoint, every window written once. A file whose declaration
differs from the catalog's, or that does not parse, fails alone: Kafka and the other queries
go on, and the server's log names the file and the difference.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka_fixtures import KafkaServer

import streamhouse
from streamhouse.errors import SqlError

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC
KEYS = ("a", "b", "c")

FLINK_STYLE = """CREATE STREAM ev (k STRING, t TIMESTAMP(3),
    WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json');
SET 'poll-interval' = '20 ms';
INSERT INTO counts
SELECT k, window_start, COUNT(*) AS n FROM ev GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND);
"""


def _events(seconds: range) -> list[dict[str, str]]:
    """One event per key per second; key ``a`` twice a second."""
    out = []
    for s in seconds:
        iso = datetime.fromtimestamp((T0 + s * 1000) / 1000, UTC).isoformat()
        for k in (*KEYS, "a"):
            out.append({"k": k, "t": iso})
    return out


def _expected(events: list[dict[str, str]], closed_before: str) -> Counter[tuple[str, str]]:
    """(key, window start) -> count for the 10 s windows that end at or before ``closed_before``."""
    counts: Counter[tuple[str, str]] = Counter()
    for e in events:
        t = datetime.fromisoformat(e["t"])
        start = t.replace(second=t.second // 10 * 10)
        if start.timestamp() + 10 <= datetime.fromisoformat(closed_before).timestamp():
            counts[(e["k"], start.strftime("%Y-%m-%d %H:%M:%S"))] += 1
    return counts


def _produce(bootstrap: str, events: list[dict[str, str]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for e in events:
        producer.send("ev", json.dumps(e).encode())
    producer.flush(30)
    producer.close()


def _output(data_dir: Path, want: int, timeout: float = 60.0) -> list[dict[str, object]]:
    """The rows of ``counts`` once there are at least ``want`` (then one more look for extras)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        with streamhouse.connect(data_dir) as sh:
            if sh.log.get_topic("counts") is not None:
                rows = [json.loads(v) for v in sh.fetch("counts")["value"].to_pylist()]
        if len(rows) >= want:
            time.sleep(1.0)  # a duplicate would show up now
            with streamhouse.connect(data_dir) as sh:
                return [json.loads(v) for v in sh.fetch("counts")["value"].to_pylist()]
        time.sleep(0.2)
    raise AssertionError(f"only {len(rows)} of {want} output rows after {timeout}s")


def _windows(rows: list[dict[str, object]]) -> Counter[tuple[str, str]]:
    return Counter({(str(r["k"]), str(r["window_start"])): int(r["n"]) for r in rows})


def test_flink_style_query_file_resumes_after_sigterm_and_kill_9(tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "counts.sql").write_text(FLINK_STYLE)
    data = tmp_path / "data"
    server = KafkaServer(data, args=["--queries", str(queries)])
    produced: list[dict[str, str]] = []
    try:
        for part, stop in ((range(0, 25), "clean"), (range(25, 45), "kill"), (range(45, 65), None)):
            server.start()
            events = _events(part)
            _produce(server.bootstrap, events)
            produced += events
            closed_before = datetime.fromtimestamp(
                (T0 + (part.stop - 1) * 1000 - 1000) / 1000, UTC
            ).isoformat()
            want = _expected(produced, closed_before)
            rows = _output(data, sum(1 for _ in want))
            assert len(rows) == len(want), "a window was written twice or is missing"
            assert _windows(rows) == want
            if stop == "clean":
                assert server.stop() == 0
            elif stop == "kill":
                server.kill()
        assert "already exists" not in server.log(tail=400)
    finally:
        server.stop()


def test_a_bad_query_file_fails_alone(tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    (queries / "a_good.sql").write_text(FLINK_STYLE)
    changed = FLINK_STYLE.replace("k STRING", "k BIGINT").replace("INTO counts", "INTO other")
    (queries / "b_changed.sql").write_text(changed)
    (queries / "c_broken.sql").write_text("SELEC k FROM ev;")
    data = tmp_path / "data"
    server = KafkaServer(data, args=["--queries", str(queries)])
    try:
        server.start()  # answers Kafka although two of its three files are bad
        events = _events(range(0, 15))
        _produce(server.bootstrap, events)
        want = _expected(events, datetime.fromtimestamp((T0 + 13_000) / 1000, UTC).isoformat())
        assert _windows(_output(data, len(want))) == want
        assert server.alive()
        log = server.log(tail=400)
    finally:
        server.stop()
    changed_line = next(line for line in log.splitlines() if "b_changed.sql" in line)
    assert "ERROR" in changed_line
    assert "stream 'ev' differs from the catalog's" in changed_line
    assert "column k is STRING in the catalog, BIGINT in the file" in changed_line
    broken_line = next(line for line in log.splitlines() if "c_broken.sql" in line)
    assert "ERROR" in broken_line and "line 1" in broken_line
    with streamhouse.connect(data) as sh:
        assert sh.log.get_topic("other") is None


BASE = "CREATE STREAM ev (k STRING, t TIMESTAMP(3), WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json')"


@pytest.mark.parametrize(
    ("declaration", "difference"),
    [
        (BASE.replace("  ", " ").replace("= 'ev'", "='ev'"), None),  # spacing is no difference
        (BASE.replace("'1' SECOND", "'2' SECOND"), "the watermark is"),
        (
            BASE.replace("format = 'json'", "format = 'raw'"),
            "option 'format' is 'json' in the catalog, 'raw' in the file",
        ),
        (BASE.replace("k STRING, ", ""), "column k is in the catalog, not in the file"),
        (
            BASE.replace("k STRING", "k STRING, v BIGINT"),
            "column v is in the file, not in the catalog",
        ),
        (
            BASE.replace("TIMESTAMP(3)", "TIMESTAMP(6)"),
            "column t is TIMESTAMP(3) in the catalog, TIMESTAMP(6) in the file",
        ),
        ("CREATE VIEW ev AS SELECT 1 AS x", "it is a stream in the catalog, a view in the file"),
    ],
)
def test_query_file_declarations_against_the_catalog(
    tmp_path: Path, declaration: str, difference: str | None
) -> None:
    query = "SET 'poll-interval' = '20 ms';\nSELECT k FROM ev;\n"
    first, second = tmp_path / "first.sql", tmp_path / "second.sql"
    first.write_text(f"{BASE};\n{query}")
    second.write_text(f"{declaration};\n{query}")
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.start(first).stop()
        if difference is None:
            q = sh.start(second)
            assert q.status()["state"] == "running"
            q.stop()
        else:
            with pytest.raises(SqlError) as error:
                sh.start(second)
            assert f"query file {second}" in str(error.value)
            assert difference in str(error.value)
            assert error.value.line == 1
