"""Window state as runs: many micro-batches into one window, merged runs, restarts in between.

A tumbling, hopping or cumulating window keeps one run of partial aggregates per micro-batch
that touched it, merged when there are more than ``MAX_RUNS``; these cases make sure merges
happen (one record per micro-batch, dozens of batches per window) around restarts, and that
the output still equals DuckDB's batch answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_windows_continuous import T0, WINDOWS, Run, expected, run_continuously

from streamhouse.windows.operator import MAX_RUNS, _run_from_key, run_key

SECOND = 1_000


def _events(n: int) -> list[tuple[str, int, int | None]]:
    # Every 0.4 s: all 60 events fall in a few 30-second windows, a window sees dozens.
    return [("ab"[i % 2], T0 + i * 400, i % 7 if i % 5 else None) for i in range(n)]


@pytest.mark.parametrize("kind", ["tumble", "hop", "cumulate"])
def test_many_batches_per_window_merge_runs(tmp_path: Path, kind: str) -> None:
    run = Run(
        kind=kind,
        delay_s=4,
        partitions=1,
        events=_events(60),
        batch_sizes=[1],
        restarts=frozenset({5, 13, 27, 40}),
        having=None,
    )
    rows, status = run_continuously(tmp_path, run)
    assert rows == expected(run)
    assert status["rows_in"] == 60
    assert WINDOWS[kind]  # the query ran with the kind's window


def test_run_keys_sort_by_window_then_sequence() -> None:
    key = run_key((T0, T0 + 30 * SECOND), 3)
    assert _run_from_key(key) == ((T0, T0 + 30 * SECOND), 3)
    assert run_key((T0, T0 + SECOND), MAX_RUNS + 5) < run_key((T0, T0 + 2 * SECOND), 0)
