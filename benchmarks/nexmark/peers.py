"""The peers StreamHouse is measured against, over the same rows: DuckDB (batch) and PyFlink.

- **DuckDB over Arrow**: the hand-written batch answers of ``tests/nexmark_reference.py`` over the
  generated tables, already in memory: the practical limit (no parsing at all).
- **DuckDB over JSON**: the same SQL over ``read_ndjson`` views of the very JSON lines that were
  loaded into the log (and that PyFlink reads): parsing included, as for StreamHouse.
- **PyFlink**: :mod:`benchmarks.nexmark.flink_peer`, run by a Python that has ``apache-flink``
  (a virtual environment of its own: apache-flink pins pyarrow 16, which StreamHouse cannot use).

The benchmark's own window queries (``benchmarks/nexmark/queries``: ``tumble``, ``hop``,
``session``) have their DuckDB answers here, in :data:`EXTRA_REFERENCE`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.nexmark.generator import STREAMS, NexmarkTables, json_values

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
JSON_STREAMS = (*STREAMS, "side_input")
FLINK_VERSION = "2.3.0"

EXTRA_REFERENCE: dict[str, str] = {
    "tumble": """
        SELECT auction, epoch_ms(w) AS window_start, epoch_ms(w + 10000) AS window_end,
               count(*) AS num, sum(price) AS total
        FROM (SELECT auction, price, (epoch_ms(dateTime) // 10000) * 10000 AS w FROM bid)
        GROUP BY ALL
    """,
    "hop": """
        SELECT auction, epoch_ms(w) AS window_start, epoch_ms(w + 10000) AS window_end,
               count(*) AS num
        FROM (SELECT auction, (epoch_ms(dateTime) // 2000 - i) * 2000 AS w
              FROM bid, range(5) AS r(i))
        GROUP BY ALL
    """,
    "session": """
        WITH ordered AS (
            SELECT bidder, epoch_ms(dateTime) AS t,
                   epoch_ms(dateTime) - lag(epoch_ms(dateTime)) OVER (
                       PARTITION BY bidder ORDER BY dateTime
                   ) AS since_previous
            FROM bid
        ),
        numbered AS (
            SELECT bidder, t,
                   sum(CASE WHEN since_previous IS NULL OR since_previous > 10000 THEN 1 ELSE 0 END)
                       OVER (PARTITION BY bidder ORDER BY t ROWS UNBOUNDED PRECEDING) AS session
            FROM ordered
        )
        SELECT bidder, epoch_ms(min(t)) AS window_start, epoch_ms(max(t) + 10000) AS window_end,
               count(*) AS num
        FROM numbered GROUP BY bidder, session
    """,
}


def reference_module() -> Any:
    """The hand-written DuckDB answers (``tests/nexmark_reference.py``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import nexmark_reference
    finally:
        sys.path.pop(0)
    return nexmark_reference


def reference_sql(name: str) -> str:
    return EXTRA_REFERENCE.get(name) or reference_module().REFERENCE[name]


def comparable(name: str, table: pa.Table) -> list[tuple[Any, ...]]:
    """Sorted rows of ``table`` as the reference compares them (window bounds as datetimes)."""
    reference = reference_module()
    if name in EXTRA_REFERENCE:
        columns = []
        for column in table.columns:
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.timestamp("ms"))
            columns.append(column)
        table = pa.table(columns, names=table.column_names)
    return reference.comparable(name, table)


# -- JSON files --------------------------------------------------------------------------------


def export_json(tables: NexmarkTables, directory: Path) -> dict[str, Path]:
    """The generated rows as JSON lines, one file per stream: the values the log holds.

    Files already there (for the same data: the caller keeps one directory per config) are
    reused.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stream in JSON_STREAMS:
        path = directory / f"{stream}.json"
        paths[stream] = path
        done = directory / f".{stream}.done"
        if path.exists() and done.exists():
            continue
        table = tables.table(stream)
        with path.open("wb") as out:
            for start in range(0, table.num_rows, 500_000):
                values = json_values(table.slice(start, 500_000))
                # Each value and a newline, joined by Arrow; written from its data buffer.
                lines = pc.binary_join_element_wise(values, b"", b"\n")
                offsets = np.frombuffer(lines.buffers()[1], np.int32)
                lo, hi = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
                out.write(memoryview(lines.buffers()[2])[lo:hi])
        done.touch()
    return paths


def _duck_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    return "VARCHAR"


# -- DuckDB -------------------------------------------------------------------------------------


def duckdb_over_arrow(tables: NexmarkTables) -> duckdb.DuckDBPyConnection:
    """DuckDB with the generated tables registered as ``person``, ``auction``, ``bid``."""
    return reference_module().connect(tables)


def duckdb_over_json(paths: dict[str, Path]) -> duckdb.DuckDBPyConnection:
    """DuckDB with views ``person``, ``auction``, ``bid`` reading the JSON files on each use."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for stream, path in paths.items():
        schema = (
            STREAMS[stream]
            if stream in STREAMS
            else pa.schema([("key", pa.int64()), ("value", pa.string())])
        )
        columns = ", ".join(f"{f.name!r}: '{_duck_type(f.type)}'" for f in schema)
        con.execute(
            f"CREATE VIEW {stream} AS SELECT * FROM read_ndjson('{path}', columns={{{columns}}})"
        )
    return con


def time_duckdb(con: duckdb.DuckDBPyConnection, name: str) -> tuple[dict[str, Any], pa.Table]:
    """DuckDB's answer to query ``name`` and its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    table = con.sql(reference_sql(name)).to_arrow_table()
    return {
        "status": "ok",
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "rows": table.num_rows,
        "load": round(os.getloadavg()[0], 2),
    }, table


# -- PyFlink ------------------------------------------------------------------------------------


def flink_python(venv: Path, install: bool) -> Path | None:
    """The Python of ``venv`` if it has PyFlink; with ``install``, create it first if needed.

    apache-flink lives in a virtual environment of its own, never in StreamHouse's: it pins
    pyarrow 16, numpy and pandas versions StreamHouse cannot run with.
    """
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import pyflink.version as v; print(v.__version__)"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    if not install:
        return None
    log.warning("installing apache-flink %s into %s (once)", FLINK_VERSION, venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"apache-flink=={FLINK_VERSION}"], check=True
    )
    return python


def run_flink(
    python: Path,
    paths: dict[str, Path],
    queries: dict[str, str],
    parallelism: int,
    timeout: float,
) -> dict[str, Any]:
    """Run ``queries`` (name -> Flink SQL SELECT plus any views it needs) on PyFlink.

    One JVM serves every query of one parallelism; each query's time is from submitting its job
    to the job's end (JVM start-up excluded, job planning included).
    """
    spec = {
        "parallelism": parallelism,
        "sources": {s: str(p) for s, p in paths.items()},
        "schemas": {
            s: [[f.name, _flink_type(f.type)] for f in STREAMS[s]]
            if s in STREAMS
            else [["key", "BIGINT"], ["value", "STRING"]]
            for s in paths
        },
        "queries": queries,
    }
    script = Path(__file__).with_name("flink_peer.py")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [str(python), str(script)],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(ROOT),
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "seconds": time.perf_counter() - started}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"status": "failed", "error": done.stderr[-2000:]}
    return json.loads(lines[-1])


def _flink_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP(3)"
    return "STRING"
