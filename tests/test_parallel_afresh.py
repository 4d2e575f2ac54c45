"""A parallel query whose state was deleted to run it afresh (as the rescale's refusals advise):
its exchange topics keep the earlier run's records, which the new consuming sides must not
read (the new producers number their batches from 1 again: read, the old records would count
instead of the new ones, those skipped as replays). Counts checked against DuckDB."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
from parallel_cases import launched

import streamhouse

QUERY = """CREATE STREAM IF NOT EXISTS ev (k BIGINT, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json');
SET 'max-batch-records' = '{batch}';
INSERT INTO {sink}
SELECT k, window_start, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(t), INTERVAL '5' SECOND))
GROUP BY k, window_start, window_end;
"""


def _produce(sh: streamhouse.StreamHouse, rows: list[dict], chunk: int) -> None:
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        partition = (start // chunk) % 2
        sh.produce("ev", part, timestamp=[r["t"] for r in part], partition=partition)


def _counts(sh: streamhouse.StreamHouse, sink: str) -> list[tuple]:
    values = [json.loads(v) for v in sh.fetch(sink).to_pandas()["value"]]
    return sorted((r["k"], r["window_start"], r["n"]) for r in values)


def _want(rows: list[dict]) -> list[tuple]:
    duck = duckdb.connect()
    table = pa.Table.from_pylist(rows)
    table = table.set_column(1, "t", pa.array([r["t"] for r in rows], pa.timestamp("ms")))
    duck.register("ev", table)
    found = duck.sql(
        "SELECT k, strftime(time_bucket(INTERVAL 5 SECOND, t), '%Y-%m-%d %H:%M:%S'), COUNT(*)"
        " FROM ev GROUP BY ALL"
    ).fetchall()
    return sorted((k, start, n) for k, start, n in found)


def test_state_deleted_then_run_afresh_reads_no_earlier_exchange_record(tmp_path: Path) -> None:
    """Run at 2 to the end (micro-batches of 100), delete the state, produce more, run at 2
    again to the end into another sink (micro-batches of 400, so the new producers' batch
    numbers stay below the old ones'): that sink counts every record once, as DuckDB."""
    rng = random.Random(3)
    start = 1_767_225_600_000
    first = [{"k": rng.randrange(5), "t": start + i * 10, "v": 1} for i in range(3_000)]
    more = [{"k": rng.randrange(5), "t": start + 30_000 + i * 10, "v": 1} for i in range(1_000)]
    path = tmp_path / "counted.sql"
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.create_topic("ev", 2)
        _produce(sh, first, 300)
        path.write_text(QUERY.format(batch=100, sink="counts_first"))
        launched(sh, path, 2).run_until_caught_up(final=True)
        assert _counts(sh, "counts_first") == _want(first)

        shutil.rmtree(sh.settings.data_dir / "queries" / "counted.p2")  # to run it afresh
        _produce(sh, more, 250)
        path.write_text(QUERY.format(batch=400, sink="counts_afresh"))
        launched(sh, path, 2).run_until_caught_up(final=True)
        assert _counts(sh, "counts_afresh") == _want(first + more)
