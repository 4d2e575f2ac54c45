"""Helpers for the join and updating-view tests: two small streams, continuous runs driven step
by step (micro-batch splits, restarts), output topics read back (appended rows, or the latest
row per key of an upsert topic), and DuckDB as the oracle over the same rows.

Streams ``a(k, t, v)`` and ``b(k, t, w)``: ``k`` a key of a few letters, ``t`` an event time
(epoch ms in, TIMESTAMP(3) in SQL), ``v``/``w`` small integers or NULL. Times compare as epoch
ms: the topic gives ``YYYY-MM-DD HH:MM:SS[.fff]`` text, DuckDB datetimes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import strategies as st
from window_cases import start_paused

import streamhouse
from streamhouse import StreamHouse
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.sql.engine import latest_per_key
from streamhouse.state.store import ColumnFamily

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms
SECOND = 1_000

Event = tuple[str, int, int | None]  # (key, event time ms, value)
Row = tuple[Any, ...]

STREAM = """CREATE STREAM {name} (k STRING, t TIMESTAMP(3), {value} BIGINT{key},
    WATERMARK FOR t AS t - INTERVAL '{delay}' SECOND)
    WITH (topic = '{name}', format = 'json', partitions = '{partitions}')"""

VALUE_COLUMN = {"a": "v", "b": "w", "c": "w"}


def stream_ddl(name: str, delay_s: int, partitions: int = 1, primary_key: bool = False) -> str:
    key = ", PRIMARY KEY (k) NOT ENFORCED" if primary_key else ""
    return STREAM.format(
        name=name, value=VALUE_COLUMN[name], key=key, delay=delay_s, partitions=partitions
    )


# -- drawing inputs ------------------------------------------------------------------------------


@st.composite
def events(
    draw: st.DrawFn,
    delay_s: int,
    max_size: int = 14,
    keys: str = "xxyz",
    in_order: bool = False,
    steps: Sequence[int] = (0, 1, 1, 2, 3, 5),
) -> list[Event]:
    """Events in produce order, on a 1 s grid over a few minutes at most, each at most
    ``delay_s`` older than the newest before it (disorder within the watermark delay)."""
    n = draw(st.integers(0, max_size))
    newest = T0 + draw(st.integers(0, 9)) * SECOND
    out = []
    for _ in range(n):
        newest += draw(st.sampled_from(list(steps))) * SECOND
        lag = 0 if in_order else draw(st.integers(0, delay_s)) * SECOND
        value = draw(st.one_of(st.none(), st.integers(0, 4)))
        out.append((draw(st.sampled_from(keys)), newest - lag, value))
    return out


def first_per_key_and_time(rows: Sequence[Event]) -> list[Event]:
    """``rows`` without a later event of a key at a time already seen for it."""
    seen: set[tuple[str, int]] = set()
    kept = []
    for key, t, value in rows:
        if (key, t) not in seen:
            seen.add((key, t))
            kept.append((key, t, value))
    return kept


@dataclass(frozen=True)
class Schedule:
    """How a continuous run reads its input: ``max_records`` of successive steps (cycled), and
    the steps before which the query is stopped and resumed from its checkpoint."""

    batch_sizes: tuple[int, ...]
    restarts: frozenset[int]


schedules = st.builds(
    Schedule,
    st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
    st.frozensets(st.integers(0, 12), max_size=2),
)


# -- running -------------------------------------------------------------------------------------


def produce(sh: StreamHouse, name: str, rows: Sequence[Event]) -> None:
    if rows:
        column = VALUE_COLUMN[name]
        sh.produce(
            name,
            [{"k": k, "t": t, column: v} for k, t, v in rows],
            key=[k for k, _, _ in rows],
        )


def drive(
    sh: StreamHouse,
    sql: str,
    schedule: Schedule,
    name: str = "q",
    after_step: Callable[[ContinuousQuery], None] | None = None,
) -> tuple[ContinuousQuery, dict]:
    """Run ``sql`` over what is in its sources in ``schedule``'s steps and restarts (calling
    ``after_step`` after each), then end it with the final watermark; returns the (stopped)
    query and its last status."""
    query = start_paused(sh, sql, name)
    try:
        for step in range(200):
            if step in schedule.restarts:
                query.stop()
                query = start_paused(sh, sql, name)
            size = schedule.batch_sizes[step % len(schedule.batch_sizes)]
            if not query.step(max_records=size):
                break
            if after_step is not None:
                after_step(query)
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    assert status["error"] is None, status["error"]
    return query, status


def run_continuously(
    root: Path, ddl: Sequence[str], inputs: dict[str, Sequence[Event]], sql: str, schedule: Schedule
) -> tuple[StreamHouse, dict]:
    """A fresh StreamHouse in ``root`` with the streams and events, ``sql`` driven to its end;
    the caller reads the sink topic and closes the connection."""
    sh = streamhouse.connect(root, linger_ms=1)
    try:
        for statement in ddl:
            sh.sql(statement)
        for name, rows in inputs.items():
            produce(sh, name, rows)
        _, status = drive(sh, sql, schedule)
    except BaseException:
        sh.close()
        raise
    return sh, status


_MEMORY = Path("/dev/shm")


@contextmanager
def scratch_dir(fallback: Path) -> Iterator[Path]:
    """A fresh directory for one drawn example, removed afterwards: in memory (``/dev/shm``)
    where there is one. Every micro-batch commit is fsynced, which on a busy disk costs more
    than the rest of an example; these tests are about answers, not durability (see
    ``test_durability.py``)."""
    memory = _MEMORY.is_dir() and os.access(_MEMORY, os.W_OK)
    with tempfile.TemporaryDirectory(dir=_MEMORY if memory else fallback) as directory:
        yield Path(directory)


def topic_records(sh: StreamHouse, topic: str) -> list[dict[str, Any]]:
    """Every record value of ``topic`` as JSON (by partition, then offset)."""
    if sh.log.get_topic(topic) is None:
        return []
    return [json.loads(v) for v in sh.fetch(topic)["value"].to_pylist()]


def latest_records(sh: StreamHouse, topic: str) -> list[dict[str, Any]]:
    """An upsert topic read as a table: the latest record per key, tombstones dropped."""
    if sh.log.get_topic(topic) is None:
        return []
    records = sh.fetch(topic)
    kept = latest_per_key(records)
    return [json.loads(v) for v in records["value"].take(pa.array(kept)).to_pylist()]


def tombstones(sh: StreamHouse, topic: str) -> int:
    if sh.log.get_topic(topic) is None:
        return 0
    return sh.fetch(topic)["value"].null_count


def joins_state(query: ContinuousQuery) -> tuple[int, int]:
    """(entries, bytes) held in the query's ``joins`` column family."""
    entries = size = 0
    for key, value in query.store.items(ColumnFamily.JOINS):
        entries += 1
        size += len(key) + len(value)
    return entries, size


def joins_rows(query: ContinuousQuery) -> int:
    """Buffered input rows in the ``joins`` column family (each value is an Arrow IPC stream)."""
    from streamhouse.state.store import ColumnFamily, decode_table

    return sum(decode_table(value).num_rows for _, value in query.store.items(ColumnFamily.JOINS))


# -- comparing -----------------------------------------------------------------------------------


def to_ms(value: Any) -> Any:
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1000)


def normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    if isinstance(value, datetime):
        return to_ms(value)
    return value


def rows_of(
    records: Sequence[dict[str, Any]], columns: Sequence[str], times: Sequence[str] = ()
) -> list[Row]:
    """Sorted tuples of ``columns`` (duplicates kept); ``times`` columns as epoch ms."""
    out = []
    for record in records:
        out.append(tuple(to_ms(record[c]) if c in times else normalize(record[c]) for c in columns))
    return sorted(out, key=repr)


_DUCKDB = duckdb.connect()


def event_table(rows: Sequence[Event], value: str) -> pa.Table:
    return pa.table(
        {
            "k": pa.array([k for k, _, _ in rows], pa.string()),
            "t": pa.array([t * 1000 for _, t, _ in rows], pa.timestamp("us")),
            value: pa.array([v for _, _, v in rows], pa.int64()),
        }
    )


def duck(sql: str, inputs: dict[str, Sequence[Event]]) -> list[dict[str, Any]]:
    """``sql`` run by DuckDB over the events as tables ``a(k, t, v)``, ``b(k, t, w)``."""
    con = _DUCKDB.cursor()
    try:
        for name, rows in inputs.items():
            con.register(name, event_table(rows, VALUE_COLUMN[name]))
        return con.sql(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


def tumble(name: str, size_s: int) -> str:
    """DuckDB: stream ``name`` with TUMBLE window columns."""
    size = size_s * SECOND
    return f"""(SELECT *, epoch_ms(epoch_ms(t) - epoch_ms(t) % {size}) AS window_start,
        epoch_ms(epoch_ms(t) - epoch_ms(t) % {size} + {size}) AS window_end FROM {name})"""


def hop(name: str, slide_s: int, size_s: int) -> str:
    """DuckDB: stream ``name`` with HOP window columns, a row per (event, window)."""
    slide, size = slide_s * SECOND, size_s * SECOND
    return f"""(SELECT * EXCLUDE (ws), epoch_ms(ws) AS window_start,
        epoch_ms(ws + {size}) AS window_end FROM (
          SELECT *, UNNEST(generate_series(
              epoch_ms(t) - epoch_ms(t) % {slide} - {size} + {slide},
              epoch_ms(t) - epoch_ms(t) % {slide}, {slide})) AS ws
          FROM {name}))"""


# -- one query checked against DuckDB --------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A continuous query over streams ``a`` and ``b`` and DuckDB's equivalent over them."""

    sql: str  # the continuous query
    batch: str  # DuckDB's equivalent over tables a and b
    columns: tuple[str, ...]
    times: tuple[str, ...] = ()  # columns compared as epoch ms
    updating: bool = False  # read the sink as a table (latest row per key)
    ddl: tuple[str, ...] = ()  # views and the like, after the streams


def check_query(
    root: Path,
    query: Query,
    delay_s: int,
    inputs: dict[str, Sequence[Event]],
    schedule: Schedule,
) -> None:
    """Run ``INSERT INTO out <query>`` over the inputs in ``schedule``'s steps and restarts;
    its sink (appends, or the latest row per key) must hold DuckDB's batch answer."""
    want = rows_of(duck(query.batch, inputs), query.columns, query.times)
    ddl = [*(stream_ddl(name, delay_s) for name in inputs), *query.ddl]
    sh, status = run_continuously(root, ddl, inputs, f"INSERT INTO out {query.sql}", schedule)
    try:
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        got = latest_records(sh, "out") if query.updating else topic_records(sh, "out")
        assert rows_of(got, query.columns, query.times) == want
    finally:
        sh.close()
