"""Helpers for the window tests: queries driven step by step, output topics read back, and
DuckDB as the oracle (the same windows computed in batch over the same rows).

Times are int64 epoch milliseconds throughout; window bounds read back from a topic (JSON text
``YYYY-MM-DD HH:MM:SS[.fff]``) are converted to milliseconds too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from streamhouse import StreamHouse
from streamhouse.runtime.launch import start_query
from streamhouse.runtime.query import ContinuousQuery

Row = tuple[Any, ...]


def start_paused(
    sh: StreamHouse, sql: str, name: str, options: dict[str, Any] | None = None
) -> ContinuousQuery:
    """A continuous query like ``sh.start`` makes, without its background thread: the test
    drives it with ``step()``. Same state directory as ``sh.start(..., name=name)``."""
    return start_query(
        sh.engine,
        sql,
        name=name,
        state_root=sh.settings.data_dir / "queries",
        options=options,
        start=False,
    )


def continuous_rows(sh: StreamHouse, sql: str, name: str, batch: int) -> list[dict]:
    """``sql`` run as a continuous query into topic ``out_<name>`` in micro-batches of
    ``batch`` records, with a restart after the first; the topic's records read back."""
    query = start_paused(sh, f"INSERT INTO out_{name} {sql}", name)
    query.step(max_records=batch)
    query.stop()
    query = start_paused(sh, f"INSERT INTO out_{name} {sql}", name)
    try:
        while query.step(max_records=batch):
            pass
        query.run_until_caught_up(final=True)
        assert query.status()["error"] is None
    finally:
        query.stop()
    return topic_rows(sh, f"out_{name}")


def run_on_clock(
    sh: StreamHouse,
    sql: str,
    name: str,
    rows: Sequence[dict[str, Any]],
    rng: random.Random,
    start_ms: int,
    finished: Callable[[ContinuousQuery], None] | None = None,
) -> tuple[list[tuple[Any, int, Any]], list[tuple[int, dict]]]:
    """``sql`` run continuously as query ``name`` on an injected clock (starting at
    ``start_ms``) over ``rows`` (already produced, in topic order): micro-batches of 1-11
    records, the clock moving 0-1.6 s between them, a restart after half the rows with
    probability 0.3 per batch, then the clock 10 s on and every step taken; ``finished`` sees the
    query before it stops. Returns the (k, clock, v) of every row read and the (clock at
    emission, row) of every result row; the same ``rng`` seed gives the same run."""
    clock = {"now": start_ms}
    stamped: list[tuple[Any, int, Any]] = []
    fired: list[tuple[int, dict]] = []

    def open_query() -> ContinuousQuery:
        query = start_paused(sh, sql, name)
        query.clock = lambda: clock["now"]
        query._on_results = lambda t: fired.extend((clock["now"], r) for r in t.to_pylist())
        return query

    query = open_query()
    read = 0
    try:
        while read < len(rows):
            if read > len(rows) // 2 and rng.random() < 0.3:
                query.stop()  # restart: processing times and windows come from the checkpoint
                query = open_query()
            size = min(rng.randrange(1, 12), len(rows) - read)
            assert query.step(max_records=size)
            stamped += [(r["k"], clock["now"], r["v"]) for r in rows[read : read + size]]
            read += size
            clock["now"] += rng.choice([0, 100, 700, 1600])
        clock["now"] += 10_000
        while query.step():
            pass
        if finished is not None:
            finished(query)
    finally:
        query.stop()
    return stamped, fired


def topic_rows(
    sh: StreamHouse, topic: str, isolation_level: str = "read_committed"
) -> list[dict[str, Any]]:
    """Every record value of ``topic`` (all partitions, by partition then offset) as JSON; at
    read_uncommitted, the records of open and aborted transactions too."""
    if sh.log.get_topic(topic) is None:
        return []
    values = sh.fetch(topic, isolation_level=isolation_level)["value"].to_pylist()
    return [json.loads(v) for v in values]


def to_ms(value: Any) -> int:
    """Epoch ms of a timestamp as a topic, DuckDB or Arrow gives it back."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return round(value.timestamp() * 1000)


def normalize(value: Any) -> Any:
    """Numbers compare by value (AVG to 6 places); timestamps as ms; everything else as is."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Decimal | float):
        return round(float(value), 6)
    if isinstance(value, datetime):
        return to_ms(value)
    return value


def rows_of(records: Iterable[dict[str, Any]], columns: Sequence[str]) -> list[Row]:
    """Sorted tuples of ``columns``; ``window_start``/``window_end`` as epoch ms."""
    out = []
    for record in records:
        row = []
        for column in columns:
            value = record[column]
            if column in ("window_start", "window_end") and value is not None:
                value = to_ms(value)
            row.append(normalize(value))
        out.append(tuple(row))
    return sorted(out, key=repr)


def table_rows(table: pa.Table, columns: Sequence[str]) -> list[Row]:
    return rows_of(table.to_pylist(), columns)


# -- DuckDB oracle -------------------------------------------------------------------------------

_DUCKDB = duckdb.connect()  # opening one takes ~40 ms; a cursor on it, almost nothing

AGGREGATES = """COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s, AVG(v) AS a,
    MIN(v) AS lo, MAX(v) AS hi"""


def windowed_sql(kind: str, size_ms: int, slide_ms: int | None = None) -> str:
    """DuckDB SQL adding ``ws``/``we`` (ms) to table ``ev(k, t, v)`` (``t`` in ms), one row
    per (event, window): floor arithmetic for TUMBLE, generate_series for HOP and CUMULATE,
    gaps and islands for SESSION (``size_ms`` is the gap)."""
    if kind == "tumble":
        return f"SELECT *, t - t % {size_ms} AS ws, t - t % {size_ms} + {size_ms} AS we FROM ev"
    if kind == "hop":
        return f"""
        SELECT k, t, v, ws, ws + {size_ms} AS we FROM (
          SELECT *, UNNEST(generate_series(
              t - t % {slide_ms} - {size_ms} + {slide_ms}, t - t % {slide_ms}, {slide_ms})) AS ws
          FROM ev)"""
    if kind == "cumulate":
        return f"""
        SELECT k, t, v, t - t % {size_ms} AS ws, we FROM (
          SELECT *, UNNEST(generate_series(
              t - t % {size_ms} + (t % {size_ms} // {slide_ms} + 1) * {slide_ms},
              t - t % {size_ms} + {size_ms}, {slide_ms})) AS we
          FROM ev)"""
    if kind == "session":
        return f"""
        WITH marked AS (
          SELECT *, CASE WHEN t - LAG(t) OVER (PARTITION BY k ORDER BY t) <= {size_ms}
                    THEN 0 ELSE 1 END AS starts_new
          FROM ev),
        numbered AS (
          SELECT *, SUM(starts_new) OVER (PARTITION BY k ORDER BY t, starts_new DESC
                                          ROWS UNBOUNDED PRECEDING) AS session
          FROM marked)
        SELECT k, t, v,
               MIN(t) OVER (PARTITION BY k, session) AS ws,
               MAX(t) OVER (PARTITION BY k, session) + {size_ms} AS we
        FROM numbered"""
    raise ValueError(kind)


def oracle(
    events: Sequence[tuple[str, int, int | None]],
    kind: str,
    size_ms: int,
    slide_ms: int | None = None,
    having: str = "",
    keyed: bool = True,
) -> list[Row]:
    """(k, ws, we, n, nd, s, a, lo, hi) per window and key, computed by DuckDB in batch."""
    con = _DUCKDB.cursor()
    try:
        keys = [k if keyed else None for k, _, _ in events]
        ev = pa.table(
            {
                "k": pa.array(keys, pa.string()),
                "t": pa.array([t for _, t, _ in events], pa.int64()),
                "v": pa.array([v for _, _, v in events], pa.int64()),
            }
        )
        con.register("ev", ev)
        sql = f"""
            SELECT k, ws, we, {AGGREGATES}
            FROM ({windowed_sql(kind, size_ms, slide_ms)})
            GROUP BY k, ws, we {having}"""
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    return sorted((tuple(normalize(v) for v in row) for row in rows), key=repr)


def write_query_file(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.sql"
    path.write_text(text)
    return path
