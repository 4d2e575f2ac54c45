"""Parallel queries on agents whose state was deleted to run them afresh: their exchange topics
keep the earlier run's records, which the new tasks must not take for theirs (a producing side
catching up with them, a first stage replaying them, a consuming side reading them from the log
start). The state is deleted as a user does on agents (stopped): the query's rows of
``query_checkpoints`` in the metadata store; then the older half of each exchange partition goes,
as by the topics' retention. Answers checked against DuckDB.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
from nexmark_reference import comparable
from test_parallel_agents import Windows, _stop, _until
from test_parallel_stages_agents import (
    NAME,
    SINK,
    _duckdb,
    _halves,
    _produce,
    _query_text,
)

import streamhouse
from streamhouse.runtime.agent_rescale import current_parallelism
from streamhouse.runtime.exchange import exchange_topic, stage_topic
from streamhouse.runtime.launch import QueryFile
from streamhouse.runtime.placement import AgentTask
from streamhouse.runtime.supervisor import QuerySupervisor


def _delete_state(sh: streamhouse.StreamHouse, query: str, topics: list[str]) -> None:
    """What a user runs against the metadata store (here SQLite; ``psql`` on PostgreSQL) to
    run ``query`` afresh: forget every checkpoint of its tasks and its parallelism. Then the
    older half of each partition of ``topics`` (its exchange topics) goes, as by retention."""
    metadata = sh.log.metadata
    path = getattr(metadata, "inner", metadata).path
    with sqlite3.connect(path) as db:
        db.execute(
            "DELETE FROM query_checkpoints WHERE query_name LIKE ? OR query_name = ?",
            (f"{query}.p%", f"{query}/parallelism"),
        )
    assert current_parallelism(metadata, query) is None
    for topic in topics:
        ends = {p: metadata.partition_offset(topic, p).high_watermark for p in range(2)}
        assert min(ends.values()) >= 2, f"{topic}: many batches in each partition"
        sh.delete_records(topic, {p: end // 2 for p, end in ends.items()})


@contextmanager
def _supervised(
    sh: streamhouse.StreamHouse, query: QueryFile, agent: str, tmp_path: Path
) -> Iterator[None]:
    """``query`` run by agent ``agent``'s supervisor, both its tasks started."""
    supervisor = QuerySupervisor(sh.engine, agent, 0.6, tmp_path / agent)
    supervisor.add(query)
    supervisor.start()
    try:
        _until(
            lambda: len([t for t in supervisor.running if isinstance(t, AgentTask)]) == 2,
            f"{agent} runs both tasks",
        )
        yield
    finally:
        supervisor.stop()


def test_a_windowed_count_deleted_on_agents_runs_afresh_from_its_sources(
    tmp_path: Path,
) -> None:
    """Run at 2 (agent ``a``, micro-batches as the events come), delete its state, produce more,
    run it again on agent ``b``'s supervisor: the windows the afresh run writes are DuckDB's
    over every event, each once. (A new producer catching up with the earlier run's batches
    left in the exchange as if its own skips the source's rows of the ones deleted, and its
    consuming side counts only the rest.)"""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        tasks = [run.take(0, "a")[0], run.take(1, "a")[0]]
        for start in range(0, 40_000, 4_000):  # many micro-batches
            run.produce(list(range(start, start + 4_000, 500)))
            time.sleep(0.1)
        _until(lambda: len(run.output()) >= 9, "windows [0, 30 s) written")
        _stop(run, tasks)
        earlier = Counter(run.output())

        _delete_state(sh, "windows", [exchange_topic("windows", 0)])
        run.produce(list(range(40_000, 80_000, 500)))
        run.produce([200_000])
        want = run.closed_windows(200_000)
        with _supervised(sh, run.query, "b", tmp_path):
            _until(lambda: len(run.output()) >= earlier.total() + want.total(), "windows written")
            time.sleep(0.5)  # a duplicate would show up now
            assert Counter(run.output()) - earlier == want


def _answer_after(sh: streamhouse.StreamHouse, offsets: dict[int, int]) -> list[tuple[object, ...]]:
    """The latest row per key among the sink's records at or after ``offsets``."""
    records = sh.fetch(SINK).to_pylist()
    latest = {
        r["key"]: r["value"] for r in records if r["offset"] >= offsets.get(r["partition"], 0)
    }
    rows = [json.loads(v) for v in latest.values() if v is not None]
    if not rows:
        return []
    got = pa.Table.from_pylist(rows)
    return comparable(NAME, got.rename_columns(["category", "avg"]))


def _fifth(table: pa.Table, piece: int) -> pa.Table:
    start, end = piece * len(table) // 5, (piece + 1) * len(table) // 5
    return table.slice(start, end - start)


def test_a_query_of_two_stages_deleted_on_agents_runs_afresh_from_its_sources(
    tmp_path: Path,
) -> None:
    """Nexmark q4 at 2 over the first half of the events (agent ``a``), its state deleted, the
    second half produced, run again (agent ``b``): what the afresh run writes is DuckDB's answer
    over every event. (A new first stage replaying the earlier run's batches left in the second exchange as
    its own, from their intents, is refused.)"""
    first_half, second_half = _halves()
    query = QueryFile.read(_query_text(), name=NAME)
    with streamhouse.connect(tmp_path / "data") as sh:
        _produce(sh, {stream: table.slice(0, 0) for stream, table in first_half.items()})
        with _supervised(sh, query, "a", tmp_path):
            for piece in range(5):  # in many micro-batches
                _produce(sh, {s: _fifth(t, piece) for s, t in first_half.items()})
                time.sleep(0.3)
            _until(lambda: _answer_after(sh, {}) != [], "rows in the sink", 60)
            time.sleep(1.0)
        ends = {p: sh.log.metadata.partition_offset(SINK, p).high_watermark for p in range(2)}
        topics = [exchange_topic(NAME, 0), exchange_topic(NAME, 1), stage_topic(NAME)]
        _delete_state(sh, NAME, topics)
        _produce(sh, second_half)
        want = _duckdb()
        with _supervised(sh, query, "b", tmp_path):
            _until(lambda: _answer_after(sh, ends) == want, "DuckDB's answer in the sink", 60)
