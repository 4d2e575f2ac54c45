"""A parallel query on agents whose state was deleted to run it afresh: its exchange topics keep
the earlier run's records, which the new tasks' consuming sides must not read (the new
producers number their batches from 1 again: read, the old records would count instead of the
new ones, those skipped as replays). The state is deleted as a user does on agents (stopped):
the query's rows of ``query_checkpoints`` in the metadata store. Windows checked against DuckDB.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from pathlib import Path

from test_parallel_agents import Windows, _stop, _until

import streamhouse
from streamhouse.runtime.agent_rescale import current_parallelism
from streamhouse.runtime.placement import AgentTask
from streamhouse.runtime.supervisor import QuerySupervisor


def _delete_state(sh: streamhouse.StreamHouse, query: str) -> None:
    """What a user runs against the metadata store (here SQLite; ``psql`` on PostgreSQL) to
    run ``query`` afresh: forget every checkpoint of its tasks and its parallelism."""
    metadata = sh.log.metadata
    path = getattr(metadata, "inner", metadata).path
    with sqlite3.connect(path) as db:
        db.execute(
            "DELETE FROM query_checkpoints WHERE query_name LIKE ? OR query_name = ?",
            (f"{query}.p%", f"{query}/parallelism"),
        )
    assert current_parallelism(metadata, query) is None


def test_state_deleted_on_agents_then_run_afresh_reads_no_earlier_exchange_record(
    tmp_path: Path,
) -> None:
    """Run at 2 (agent ``a``, micro-batches as the events come), delete its state; the older half
    of the exchange records go (as by the topic's retention); produce more, run it again on an
    agent's supervisor: the windows the afresh run writes are DuckDB's over every event, each
    once. (Catching up with the earlier run's batches left in the exchange as if its own, a new
    producer would skip the source's rows of the deleted ones, and its consuming side would
    count only the rest.)"""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        tasks = [run.take(0, "a")[0], run.take(1, "a")[0]]
        for start in range(0, 40_000, 4_000):  # many micro-batches, so many sequence numbers
            run.produce(list(range(start, start + 4_000, 500)))
            time.sleep(0.1)
        _until(lambda: len(run.output()) >= 9, "windows [0, 30 s) written")
        _stop(run, tasks)
        earlier = Counter(run.output())  # (the sink's partitions one after the other)

        _delete_state(sh, "windows")
        ends = {
            p: sh.log.metadata.partition_offset("windows.exchange", p).high_watermark
            for p in (0, 1)
        }
        assert min(ends.values()) >= 8  # many batches each
        sh.delete_records("windows.exchange", {p: end // 2 for p, end in ends.items()})  # retention
        run.produce(list(range(40_000, 80_000, 500)))
        run.produce([200_000])
        want = run.closed_windows(200_000)
        supervisor = QuerySupervisor(sh.engine, "b", 0.6, tmp_path / "b")
        supervisor.add(run.query)
        supervisor.start()
        try:
            _until(
                lambda: len([t for t in supervisor.running if isinstance(t, AgentTask)]) == 2,
                "b runs both tasks",
            )
            _until(lambda: len(run.output()) >= earlier.total() + want.total(), "windows written")
            time.sleep(0.5)  # a duplicate would show up now
            assert Counter(run.output()) - earlier == want
        finally:
            supervisor.stop()
