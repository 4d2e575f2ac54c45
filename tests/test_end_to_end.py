"""The roadmap's promise, end to end: the clicks-per-minute query in a .sql file runs inside
``streamhouse serve --queries`` while an unmodified Kafka producer writes events; per-minute
results arrive on a topic as windows close; the server is killed (-9) and restarted, and every
window is there exactly once."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from confluent_kafka import Consumer, Producer

from tests.kafka_fixtures import REPO, KafkaServer

START = datetime(2026, 1, 1, tzinfo=UTC)
USERS = (1, 2, 3)


def _events(minutes: range) -> list[dict]:
    """Each user clicks at :10, :20, ..., :50 of each minute, and views once at :30."""
    out = []
    for minute in minutes:
        for second in range(10, 60, 10):
            for user in USERS:
                ts = START + timedelta(minutes=minute, seconds=second)
                kind = "view" if second == 30 else "click"
                out.append({"user_id": user, "event_type": kind, "timestamp": ts.isoformat()[:19]})
    return out


def _produce(bootstrap: str, events: list[dict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    for event in events:
        producer.produce("events", json.dumps(event).encode(), key=str(event["user_id"]).encode())
    assert producer.flush(30) == 0


def _results(bootstrap: str, want: int, timeout: float = 60.0) -> list[dict]:
    """Every record of clicks_per_minute, once ``want`` have arrived (or the time is up)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["clicks_per_minute"])
    rows: list[dict] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(rows) < want:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            rows.append(json.loads(message.value()))
        # anything past ``want`` would be a duplicate: give it a moment to show up
        settle = time.monotonic() + 2
        while time.monotonic() < settle:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                rows.append(json.loads(message.value()))
    finally:
        consumer.close()
    return rows


def test_clicks_per_minute_survives_kill_9_exactly_once(tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(REPO / "queries" / "clicks.sql", queries / "clicks.sql")
    server = KafkaServer(tmp_path / "data", args=["--queries", str(queries)])
    server.start()
    try:
        _produce(server.bootstrap, _events(range(0, 4)))
        # minutes 0-2 close once minute 3's events (and 5 s of watermark delay) are in
        first = _results(server.bootstrap, want=3 * len(USERS))
        assert {(r["user_id"], r["window_start"]) for r in first} >= {
            (u, f"2026-01-01 00:0{m}:00") for u in USERS for m in range(3)
        }
        server.kill()  # kill -9: no clean shutdown, no last checkpoint
        server.start()
        _produce(server.bootstrap, _events(range(4, 8)))
        rows = _results(server.bootstrap, want=7 * len(USERS))
    finally:
        server.stop()
    windows = Counter((r["user_id"], r["window_start"]) for r in rows)
    assert max(windows.values()) == 1, "a window was written twice"
    assert set(windows) == {(u, f"2026-01-01 00:0{m}:00") for u in USERS for m in range(7)}
    assert all(r["event_count"] == 4 for r in rows)  # 5 events a minute, one of them a view
