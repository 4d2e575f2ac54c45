"""Helpers for the tests of parallel continuous queries: run a query file to the end of its
sources at a parallelism, wait for a condition on a running one, freeze a task process."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from streamhouse import StreamHouse
from streamhouse.runtime.launch import start_query


def run_to_end(sh: StreamHouse, path: Path, parallelism: int) -> dict[str, Any]:
    """Run query file ``path`` at ``parallelism`` over what its sources hold now, every window
    closed; its status."""
    query = launched(sh, path, parallelism)
    query.run_until_caught_up(final=True)
    return query.status()


def launched(sh: StreamHouse, path: Path, parallelism: int) -> Any:
    """Query file ``path`` at ``parallelism``, set up (its topics, its state moved) but not
    started."""
    return start_query(
        sh.engine,
        path,
        state_root=sh.settings.data_dir / "queries",
        options={"parallelism": parallelism},
        start=False,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def freeze(pid: int, store: Path) -> None:
    """SIGSTOP process ``pid`` at a moment it holds no write transaction of the SQLite store
    (one frozen inside its BEGIN IMMEDIATE would hold every other process of the store to
    'database is locked'): stopped, then let go and stopped again until a writer gets in."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        conn = sqlite3.connect(store, timeout=2.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
        finally:
            conn.close()
    raise AssertionError(f"process {pid} held the store's write lock at every try")


def nested_aggregate_answer(rows: list[dict[str, Any]]) -> pa.Table:
    """DuckDB's answer to the aggregate of an aggregate of one stream the two-stage tests run:
    per ``g``, the SUM and COUNT of each ``(k, g)``'s MAX(v), as columns g, total, n."""
    duck = duckdb.connect()
    duck.register("ev_rows", pa.Table.from_pylist(rows))
    return duck.sql(
        "SELECT g, SUM(top) AS total, COUNT(*) AS n FROM"
        " (SELECT k, g, MAX(v) AS top FROM ev_rows GROUP BY k, g) GROUP BY g"
    ).to_arrow_table()
