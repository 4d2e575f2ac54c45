"""Queries of two stages at parallelism > 1 (:mod:`streamhouse.runtime.stages`): an aggregate
over an updating GROUP BY, whose second stage reads the first's changelog through a second
exchange keyed by the outer group keys.

- Nexmark q4's first stage "crashes" (its state commit fails) right after it appended a batch
  to the second exchange, after the second stage took that batch: the restarted first stage
  replays the batch from its intent, the same rows under the same sequence number, which the
  second stage skips; then the real task processes run the query to the end and the sink holds
  DuckDB's answer. The second stage's watermark is the minimum of the first stage's.
- An aggregate over an aggregate of one stream (routed by the inner group keys, then the outer)
  at parallelism 2 and 3 equals DuckDB; one whose outer GROUP BY is not an inner group key is
  refused by name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
from nexmark_reference import comparable, connect, reference
from parallel_cases import launched, nested_aggregate_answer

import streamhouse
from benchmarks.nexmark import NexmarkConfig, generate_tables, load, nexmark_query
from benchmarks.nexmark.udfs import register as register_udfs
from streamhouse.errors import SqlError
from streamhouse.runtime.exchange import decode, stage_topic
from streamhouse.runtime.parallel import ParallelQuery, TaskQuery, spec_query
from streamhouse.runtime.sources import NO_WATERMARK

CONFIG = NexmarkConfig.for_bids(1_500, events_per_second=200, seed=7)


def _start(sh: streamhouse.StreamHouse, path: Path, parallelism: int) -> ParallelQuery:
    query = launched(sh, path, parallelism)
    assert isinstance(query, ParallelQuery)
    return query


def _latest(sh: streamhouse.StreamHouse, topic: str) -> pa.Table:
    """The latest row of each record key in sink ``topic`` (tombstones dropped)."""
    frame = sh.fetch(topic).to_pandas().drop_duplicates(subset=["key"], keep="last")
    return pa.Table.from_pylist([json.loads(v) for v in frame["value"] if v is not None])


def test_a_first_stage_replayed_after_its_append_sends_the_same_batch_once(
    tmp_path: Path,
) -> None:
    sh = streamhouse.connect(tmp_path / "data", linger_ms=1)
    try:
        register_udfs(sh)
        load(sh, CONFIG, partitions=3)
        text = nexmark_query("q4").path.read_text().replace("INTO nexmark_q4", "INTO staged")
        path = tmp_path / "staged.sql"
        path.write_text("SET 'max-batch-records' = '200';\n" + text)
        staged = _start(sh, path, 2)
        spec = staged._spec(0, False)
        assert spec["stages"] == 2

        def task(i: int, stage: int) -> TaskQuery:
            return spec_query(sh, spec, i, stage)

        firsts, seconds = [task(i, 1) for i in range(2)], [task(i, 2) for i in range(2)]
        writers = [w for first in firsts for w in first.writers(sh.log, staged.root)]
        try:
            for writer in writers:  # every source row into the first exchange
                while writer.step():
                    pass
            victim = firsts[0]
            commit, calls = victim.store.commit, []

            def crash(batch, *args, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(batch)
                if len(calls) == 2:  # the intent is durable and the batch appended: no state
                    raise OSError("crashed before the state commit")
                return commit(batch, *args, **kwargs)

            victim.store.commit = crash  # type: ignore[method-assign]
            with pytest.raises(OSError, match="crashed"):
                victim.step()
            for second in seconds:  # the second stage takes the batch the crash left
                second.step()
            victim.stop(checkpoint=False)
            firsts[0] = victim = task(0, 1)  # restarted: replays the batch from its intent
            assert victim.step()
            progressed = True
            while progressed:
                progressed = False
                for query in [*firsts, *seconds]:
                    progressed = query.step() or progressed
            marks = [first.watermark for first in firsts]
            assert min(marks) > NO_WATERMARK
            assert [second.watermark for second in seconds] == [min(marks)] * 2
            taken = sum(second.rows_in for second in seconds)
        finally:
            for query in [*firsts, *seconds]:
                query.stop()
            for writer in writers:
                writer.store.close()

        records = sh.fetch(stage_topic(staged.name))
        replayed = 0
        for partition in range(2):
            mine = records.filter(pa.compute.equal(records["partition"], partition))
            sent = [
                v
                for k, v in zip(mine["key"].to_pylist(), mine["value"].to_pylist(), strict=True)
                if k.startswith(b"0:1:")
            ]
            assert len(sent) == 2  # the batch and its replay, alike
            assert (decode(sent[0]) if sent[0] else None) == (decode(sent[1]) if sent[1] else None)
            replayed += decode(sent[1]).num_rows if sent[1] else 0
        sent_rows = sum(decode(v).num_rows for v in records["value"].to_pylist() if v)
        assert replayed > 0
        assert taken == sent_rows - replayed  # the replay's rows skipped, every other taken

        _start(sh, path, 2).run_until_caught_up(final=True)  # the task processes, to the end
        got = _latest(sh, "staged")
        want = reference(connect(generate_tables(CONFIG)), "q4")
        got = got.rename_columns(want.column_names)
        assert comparable("q4", got) == comparable("q4", want)
    finally:
        sh.close()


STREAM = """CREATE STREAM IF NOT EXISTS ev (k BIGINT, g BIGINT, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json');
SET 'max-batch-records' = '150';
"""


@pytest.mark.parametrize("parallelism", [2, 3])
def test_an_aggregate_of_an_aggregate_of_a_stream(tmp_path: Path, parallelism: int) -> None:
    """Per group g, the sum and count of the highest v per (k, g): two stages, routed by (k, g)
    then g; DuckDB's answer. Grouped by the inner aggregate's value instead: refused."""
    sh = streamhouse.connect(tmp_path / "data", linger_ms=1)
    try:
        sh.create_topic("ev", 3)
        rng = random.Random(parallelism)
        rows = [
            {
                "k": rng.randrange(60),
                "g": rng.randrange(9),
                "t": 1_767_225_600_000 + i,
                "v": rng.randrange(1000),
            }
            for i in range(2_000)
        ]
        for start in range(0, len(rows), 250):
            chunk = rows[start : start + 250]
            sh.produce(
                "ev",
                chunk,
                timestamp=[r["t"] for r in chunk],
                partition=rng.randrange(3),
            )
        path = tmp_path / "nested.sql"
        path.write_text(
            STREAM
            + """INSERT INTO nested
SELECT g, SUM(top) AS total, COUNT(*) AS n
FROM (SELECT k, g, MAX(v) AS top FROM ev GROUP BY k, g) Q
GROUP BY g;
"""
        )
        query = _start(sh, path, parallelism)
        assert "Exchange  topic nested.exchange-stage2" in query.explain()
        query.run_until_caught_up(final=True)
        assert query.status()["watermark"] == "end of input"
        got = _latest(sh, "nested").select(["g", "total", "n"])
        want = nested_aggregate_answer(rows)
        assert want.num_rows == 9
        assert comparable("nested", got) == comparable("nested", want)

        refused = tmp_path / "by_value.sql"
        refused.write_text(
            STREAM
            + """INSERT INTO by_value
SELECT top, COUNT(*) AS n
FROM (SELECT k, g, MAX(v) AS top FROM ev GROUP BY k, g) Q
GROUP BY top;
"""
        )
        with pytest.raises(SqlError, match="its GROUP BY is not made of group keys"):
            _start(sh, refused, parallelism)
    finally:
        sh.close()
