"""Query checkpoints copied to the object store: a query whose local state is gone (another
agent, a new disk) resumes from the newest complete checkpoint there, exactly once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

import streamhouse
from streamhouse.log.objectstore import S3ObjectStore
from streamhouse.runtime.launch import start_query
from streamhouse.state.remote import PREFIX

QUERY = """
SET 'checkpoint.object-store' = 'true';
SET 'checkpoint.interval' = '1 ms';
INSERT INTO per_window
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
FROM ev GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)
"""


def _run_with_lost_state(sh: streamhouse.StreamHouse) -> list[dict]:
    sh.sql(
        "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
        " WITH (topic = 'ev', partitions = '1')"
    )
    rows = [{"k": "ab"[i % 2], "v": i, "t": i * 1000} for i in range(120)]
    sh.produce("ev", rows, key=[r["k"] for r in rows])
    state_root = sh.settings.data_dir / "queries"

    first = start_query(sh.engine, QUERY, name="windows", state_root=state_root, start=False)
    for _ in range(4):
        first.step(max_records=25)
    written = sh.log.offsets("per_window", 0).high_watermark
    assert written > 0  # some windows closed and were written before the state is lost
    first.stop()
    epochs = {k.split("/")[2] for k in sh.log.store.list(f"{PREFIX}/windows/")}
    assert 1 <= len(epochs) <= 2  # older checkpoints are pruned

    shutil.rmtree(state_root / "windows")  # the local state is gone
    second = start_query(sh.engine, QUERY, name="windows", state_root=state_root, start=False)
    assert sum(second.source.positions.values()) == 100  # resumed, not started over
    second.run_until_caught_up(final=True)
    second.stop()
    return [json.loads(v) for v in sh.fetch("per_window")["value"].to_pylist()]


def _expected() -> list[tuple[str, int, int, int]]:
    windows: dict[tuple[str, int], list[int]] = {}
    for i in range(120):
        windows.setdefault(("ab"[i % 2], i // 10 * 10), []).append(i)
    return sorted((k, start, len(vs), sum(vs)) for (k, start), vs in windows.items())


def _got(rows: list[dict]) -> list[tuple[str, int, int, int]]:
    def seconds(text: str) -> int:
        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())

    return sorted((r["k"], seconds(r["window_start"]), r["n"], r["total"]) for r in rows)


def test_resume_from_a_checkpoint_in_the_local_object_store(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path) as sh:
        rows = _run_with_lost_state(sh)
    assert _got(rows) == _expected()  # every window exactly once


def test_resume_from_a_checkpoint_in_s3(
    tmp_path: Path,
    moto_server: str,
    s3_store: Callable[..., S3ObjectStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = s3_store().bucket
    with streamhouse.connect(
        tmp_path, object_store=f"s3://{bucket}/agents", s3_endpoint_url=moto_server, linger_ms=1
    ) as sh:
        rows = _run_with_lost_state(sh)
    assert _got(rows) == _expected()
    assert any(k.startswith(f"{PREFIX}/windows/") for k in s3_store("agents").list())
