"""A query's state belongs to the definition that built it, and options it cannot honour are
refused: a restart never runs a new definition over old state, and nothing is written wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import streamhouse
from streamhouse.errors import SqlError
from tests.window_cases import start_paused

STREAM = (
    "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), "
    "WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev')"
)


def _events(sh: streamhouse.StreamHouse, values: range) -> None:
    sh.produce(
        "ev",
        [{"k": "a", "v": v, "t": 1_767_225_600_000 + v * 1000} for v in values],
        partition=0,
    )


def test_a_view_redefined_under_a_checkpointed_query_is_refused(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(STREAM)
        sh.sql("CREATE VIEW big AS SELECT k, v FROM ev WHERE v > 2")
        _events(sh, range(6))
        sql = "INSERT INTO out SELECT k, COUNT(*) AS n FROM big GROUP BY k"
        query = start_paused(sh, sql, "q")
        query.run_until_caught_up(final=True)
        query.stop()
        assert [json.loads(v) for v in sh.fetch("out")["value"].to_pylist()] == [{"k": "a", "n": 3}]
        query = start_paused(sh, sql, "q")  # the same definition resumes
        query.stop()
        sh.sql("CREATE OR REPLACE VIEW big AS SELECT k, v FROM ev WHERE v > 0")
        with pytest.raises(SqlError, match="'q' was checkpointed running another definition"):
            start_paused(sh, sql, "q")
        query = start_paused(sh, sql, "q2")  # under another name it runs afresh
        query.run_until_caught_up(final=True)
        query.stop()
        assert [json.loads(v) for v in sh.fetch("out")["value"].to_pylist()][-1] == {
            "k": "a",
            "n": 5,
        }


def test_late_rows_topic_over_a_union_is_refused(tmp_path: Path) -> None:
    """Late rows are traced back by (partition, offset), which the streams of a union share."""
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.sql(STREAM)
        sh.sql(STREAM.replace("ev", "ev2"))
        sql = (
            "SELECT k, window_start, COUNT(*) AS n FROM "
            "(SELECT k, t FROM ev UNION ALL SELECT k, t FROM ev2) "
            "GROUP BY k, TUMBLING(t, INTERVAL '5' SECOND)"
        )
        with pytest.raises(SqlError, match="'late-rows.topic' is not supported for a query"):
            start_paused(sh, sql, "q", {"late-rows.topic": "late"})
        start_paused(sh, sql, "q").stop()  # without the side topic it runs
