"""Statement sets: ``EXECUTE STATEMENT SET BEGIN INSERT ...; INSERT ...; END;`` (and ``BEGIN
STATEMENT SET; ... END;``) run as one continuous query: each source read once per micro-batch,
a sink per INSERT, one checkpoint covering every sink. Checked against DuckDB after random
micro-batches, a restart, and a crash between the writes of two sinks of one micro-batch.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from window_cases import start_paused, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import SqlError
from streamhouse.runtime.launch import QueryFile
from streamhouse.runtime.sink import TopicSink

N = 300
DDL = """
CREATE TEMPORARY TABLE clicks (
    user_id INT, page STRING, ts TIMESTAMP(3),
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (topic = 'click-events');
CREATE TEMPORARY TABLE orders (user_id INT, amount BIGINT) WITH (topic = 'order-events');
"""
INSERTS = """
INSERT INTO views_per_window
SELECT user_id, window_start, COUNT(*) AS views
FROM TABLE(TUMBLE(TABLE clicks, DESCRIPTOR(ts), INTERVAL '10' SECOND))
GROUP BY user_id, window_start, window_end;
INSERT INTO cart_clicks SELECT user_id, ts FROM clicks WHERE page = 'cart';
INSERT INTO spend SELECT user_id, SUM(amount) AS total FROM orders GROUP BY user_id;
"""
FLINK_SET = f"{DDL}\nEXECUTE STATEMENT SET\nBEGIN\n{INSERTS}END;\n"
BEGIN_SET = f"{DDL}\nBEGIN STATEMENT SET;\n{INSERTS}END;\n"


def _clicks(seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "user_id": rng.randrange(4),
            "page": rng.choice(["home", "cart", "item"]),
            "ts": f"2026-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}.{rng.randrange(1000):03d}",
        }
        for i in range(N)
    ]


def _orders(seed: int) -> list[dict]:
    rng = random.Random(seed + 100)
    return [{"user_id": rng.randrange(6), "amount": rng.randrange(1, 500)} for _ in range(N // 2)]


def _oracle(clicks: list[dict], orders: list[dict]) -> dict[str, list[tuple]]:
    con = duckdb.connect()
    table = pa.Table.from_pylist(clicks)
    con.register("clicks", table.set_column(2, "ts", table["ts"].cast(pa.timestamp("ms"))))
    con.register("orders", pa.Table.from_pylist(orders))
    answers = {
        "views_per_window": """
            SELECT user_id, epoch_ms(time_bucket(INTERVAL 10 SECOND, ts)), COUNT(*)
            FROM clicks GROUP BY 1, 2""",
        "cart_clicks": "SELECT user_id, epoch_ms(ts::TIMESTAMP) FROM clicks WHERE page = 'cart'",
        "spend": "SELECT user_id, SUM(amount) FROM orders GROUP BY 1",
    }
    return {topic: sorted(con.execute(sql).fetchall()) for topic, sql in answers.items()}


def _answers(sh: StreamHouse) -> dict[str, list[tuple]]:
    windows = topic_rows(sh, "views_per_window")
    latest = {}  # the spend topic is an upsert stream: the latest record per key
    for record in topic_rows(sh, "spend"):
        latest[record["user_id"]] = record["total"]
    return {
        "views_per_window": sorted(
            (r["user_id"], to_ms(r["window_start"]), r["views"]) for r in windows
        ),
        "cart_clicks": sorted(
            (r["user_id"], to_ms(r["ts"])) for r in topic_rows(sh, "cart_clicks")
        ),
        "spend": sorted(latest.items()),
    }


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.create_topic("click-events", partitions=3)
        conn.create_topic("order-events", partitions=2)
        yield conn


def _produce(sh: StreamHouse, clicks: list[dict], orders: list[dict]) -> None:
    sh.produce("click-events", clicks)
    sh.produce("order-events", orders)


def _run_to_end(sh: StreamHouse, path: Path, rng: random.Random) -> dict:
    query = start_paused(sh, str(path), "set")
    try:
        while query.step(max_records=rng.randrange(1, 80)):
            pass
        query.run_until_caught_up(final=True)
        return query.status()
    finally:
        query.stop()


@pytest.mark.parametrize("text", [FLINK_SET, BEGIN_SET], ids=["execute", "begin"])
def test_one_read_three_sinks_random_batches_and_a_restart(
    sh: StreamHouse, tmp_path: Path, text: str
) -> None:
    clicks, orders = _clicks(1), _orders(1)
    _produce(sh, clicks[: N // 2], orders[: N // 4])
    path = tmp_path / "set.sql"
    path.write_text(text)
    rng = random.Random(5)
    query = start_paused(sh, str(path), "set")
    for _ in range(4):
        query.step(max_records=rng.randrange(1, 80))
    query.stop()
    _produce(sh, clicks[N // 2 :], orders[N // 4 :])
    status = _run_to_end(sh, path, rng)
    assert status["error"] is None
    assert status["rows_in"] == len(clicks) + len(orders)  # each record read once, not per INSERT
    assert status["sink"] == "views_per_window, cart_clicks, spend"
    assert _answers(sh) == _oracle(clicks, orders)


class Crash(Exception):
    """Stands for the process dying."""


def test_a_crash_between_two_sinks_is_replayed_exactly_once(
    sh: StreamHouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the first sink of a micro-batch is written, before the second
    is: the restart aborts the batch's transaction and runs the batch again."""
    clicks, orders = _clicks(2), _orders(2)
    _produce(sh, clicks, orders)
    path = tmp_path / "set.sql"
    path.write_text(FLINK_SET)
    write = TopicSink.write

    def dying_write(sink: TopicSink, *args, **kwargs):
        marks = write(sink, *args, **kwargs)
        if sink.topic == "cart_clicks":  # the first sink of the batch's writers is written
            raise Crash
        return marks

    monkeypatch.setattr(TopicSink, "write", dying_write)
    query = start_paused(sh, str(path), "set")
    with pytest.raises(Crash):
        query.run_until_caught_up()
    # written before the crash, not committed
    assert len(topic_rows(sh, "cart_clicks", "read_uncommitted")) > len(
        topic_rows(sh, "cart_clicks")
    )
    query.store.close()  # the process died: nothing else is cleaned up
    monkeypatch.undo()
    status = _run_to_end(sh, path, random.Random(3))
    assert status["error"] is None
    assert _answers(sh) == _oracle(clicks, orders)


def test_refusals_are_clear(sh: StreamHouse) -> None:
    with pytest.raises(SqlError) as caught:
        QueryFile.read(f"{DDL}\nEXECUTE STATEMENT SET BEGIN\nSELECT 1;\nEND;")
    assert caught.value.message == "a statement set holds INSERT statements only, not SELECT"
    assert caught.value.line == 9  # the SELECT
    with pytest.raises(SqlError, match="^a statement set has no END"):
        QueryFile.read("BEGIN STATEMENT SET; INSERT INTO a SELECT 1;")
    with pytest.raises(SqlError, match="put them in EXECUTE STATEMENT SET BEGIN"):
        QueryFile.read("INSERT INTO a SELECT 1; INSERT INTO b SELECT 2;")
    sh.sql(DDL)
    with pytest.raises(SqlError, match="^a statement set writes 'twice' twice") as caught:
        sh.start(
            "EXECUTE STATEMENT SET BEGIN INSERT INTO twice SELECT user_id FROM clicks;\n"
            "INSERT INTO twice SELECT user_id FROM orders; END;"
        )
    assert caught.value.line == 2


def test_end_inside_a_string_is_not_the_end(sh: StreamHouse) -> None:
    sh.produce("click-events", [{"user_id": 1, "page": "END;", "ts": "2026-01-01 00:00:00"}])
    query = sh.start(
        f"{DDL}\nEXECUTE STATEMENT SET BEGIN\n"
        "INSERT INTO ends SELECT page FROM clicks WHERE page = 'END;';\n"
        "INSERT INTO ids SELECT user_id FROM clicks; END;",
        name="ends",
    )
    try:
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    assert [json.loads(v) for v in sh.fetch("ends")["value"].to_pylist()] == [{"page": "END;"}]
    assert [json.loads(v) for v in sh.fetch("ids")["value"].to_pylist()] == [{"user_id": 1}]


def test_bounded_statement_set_from_the_command_line(sh: StreamHouse, tmp_path: Path) -> None:
    """``streamhouse query`` with a statement set: each INSERT runs once, over the log as it
    was before the set wrote anything."""
    clicks, orders = _clicks(4), _orders(4)
    _produce(sh, clicks, orders)
    sh.close()
    runner = CliRunner()
    result = runner.invoke(
        main, ["--data-dir", str(tmp_path / "data"), "query", BEGIN_SET, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    oracle = _oracle(clicks, orders)
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == [
        f"INSERT INTO views_per_window: {len(oracle['views_per_window'])} rows",
        f"INSERT INTO cart_clicks: {len(oracle['cart_clicks'])} rows",
        f"INSERT INTO spend: {len(oracle['spend'])} rows",
    ]
    with streamhouse.connect(tmp_path / "data") as again:
        assert _answers(again) == oracle
