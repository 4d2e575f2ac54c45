"""Helpers for the tests of parallel continuous queries: run a query file to the end of its
sources at a parallelism, and wait for a condition on a running one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
