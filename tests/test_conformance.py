"""The conformance corpus: continuous queries as data files, each checked against DuckDB.

``tests/fixtures/continuous/<name>.sql`` holds a query over the streams of ``streams.sql``
(``a(k, t, v)``, ``b(k, t, w)``): optional DDL (views), then the continuous query; after a line
``-- batch:``, DuckDB's equivalent when the query's own text is not one (windows); a line
``-- refused: <words>`` marks a query StreamHouse refuses (a gap), with words of its error;
``-- needs rows`` one whose batch answer over no rows of ``a`` differs by design (a global
aggregate emits its first row with its first input row, as in Flink; DuckDB answers one row).

Each query runs continuously over random events with random micro-batch splits and restarts
from its checkpoint; its sink — appends, or the latest row per key of an updating query — must
equal DuckDB's batch answer over the same rows (as a multiset; timestamps compared as epoch ms).
DuckDB has the macros ``tumble_start(t, seconds)`` and ``tumble_end(t, seconds)``, and the lists
``hop_starts(t, slide, size)`` (window starts, epoch ms) and ``cumulate_ends(t, step, size)``
(window ends, epoch ms).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from join_cases import (
    Event,
    Schedule,
    drive,
    event_table,
    events,
    latest_records,
    produce,
    rows_of,
    schedules,
    scratch_dir,
    topic_records,
)

import streamhouse
from streamhouse.errors import SqlError
from streamhouse.result import unique_names

CORPUS = Path(__file__).parent / "fixtures" / "continuous"
STREAMS = (CORPUS / "streams.sql").read_text()
MACROS = [
    "CREATE MACRO tumble_start(t, s) AS epoch_ms(epoch_ms(t) - epoch_ms(t) % (s * 1000))",
    "CREATE MACRO tumble_end(t, s) AS epoch_ms(epoch_ms(t) - epoch_ms(t) % (s * 1000) + s * 1000)",
    # the starts (epoch ms) of the HOP windows of t, and the ends of its CUMULATE windows
    "CREATE MACRO hop_starts(t, slide, size) AS generate_series(epoch_ms(t) - epoch_ms(t)"
    " % (slide * 1000) - (size - slide) * 1000, epoch_ms(t) - epoch_ms(t) % (slide * 1000),"
    " slide * 1000)",
    "CREATE MACRO cumulate_ends(t, step, size) AS list_filter(generate_series(epoch_ms(t)"
    " - epoch_ms(t) % (size * 1000) + step * 1000, epoch_ms(t) - epoch_ms(t) % (size * 1000)"
    " + size * 1000, step * 1000), lambda e: e > epoch_ms(t))",
]
_REFUSED = re.compile(r"^-- refused: (.+)$", re.MULTILINE)

PROPERTY = settings(
    max_examples=int(os.environ.get("CORPUS_EXAMPLES", "3")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Case:
    name: str
    ddl: list[str]  # views and the like, run by StreamHouse and by DuckDB
    sql: str  # the continuous query
    batch: str  # DuckDB's answer
    refused: str | None  # words of the error a refused query gives
    needs_rows: bool = False  # checked only when stream a has rows


def _statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def load(path: Path) -> Case:
    text = path.read_text()
    refused = _REFUSED.search(text)
    stream_part, _, batch_part = text.partition("-- batch:")
    *ddl, sql = _statements(stream_part)
    batch = _statements(batch_part)
    return Case(
        path.stem,
        ddl,
        sql,
        batch[0] if batch else sql,
        refused and refused.group(1),
        "-- needs rows" in text,
    )


CASES = [load(p) for p in sorted(CORPUS.glob("*.sql")) if p.name != "streams.sql"]


def batch_answer(case: Case, inputs: dict[str, list[Event]]) -> pa.Table:
    con = duckdb.connect()
    try:
        for macro in MACROS:
            con.execute(macro)
        for name, value in (("a", "v"), ("b", "w")):
            con.register(name, event_table(inputs[name], value))
        for statement in case.ddl:
            con.execute(statement)
        answer = con.sql(case.batch).to_arrow_table()
        # a repeated name (SELECT * over a join) as a sink's JSON record names it
        return answer.rename_columns(unique_names(answer.column_names))
    finally:
        con.close()


def check(root: Path, case: Case, inputs: dict[str, list[Event]], schedule: Schedule) -> None:
    want = batch_answer(case, inputs)
    columns = tuple(want.column_names)
    times = tuple(f.name for f in want.schema if pa.types.is_timestamp(f.type))
    with streamhouse.connect(root, linger_ms=1) as sh:
        for statement in [*_statements(STREAMS), *case.ddl]:
            sh.sql(statement)
        for name, rows in inputs.items():
            produce(sh, name, rows)
        query, status = drive(sh, f"INSERT INTO out {case.sql}", schedule)
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        got = latest_records(sh, "out") if query.updating else topic_records(sh, "out")
        assert rows_of(got, columns, times) == rows_of(want.to_pylist(), columns, times)


@st.composite
def inputs(draw: st.DrawFn) -> dict[str, list[Event]]:
    return {"a": draw(events(2, max_size=14)), "b": draw(events(2, max_size=10))}


@pytest.mark.parametrize("case", [c for c in CASES if c.refused is None], ids=lambda c: c.name)
def test_query_equals_the_batch_answer(
    case: Case, tmp_path_factory: pytest.TempPathFactory
) -> None:
    @PROPERTY
    @given(data=inputs(), schedule=schedules)
    def run(data: dict[str, list[Event]], schedule: Schedule) -> None:
        assume(not case.needs_rows or data["a"])
        with scratch_dir(tmp_path_factory.getbasetemp()) as root:
            check(root, case, data, schedule)

    run()


@pytest.mark.parametrize("case", [c for c in CASES if c.refused], ids=lambda c: c.name)
def test_refused_query_says_why(case: Case, tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path) as sh:
        for statement in [*_statements(STREAMS), *case.ddl]:
            sh.sql(statement)
        with pytest.raises(SqlError) as error:
            sh.start(f"INSERT INTO out {case.sql}", name="q")
        assert case.refused.lower() in str(error.value).lower()  # type: ignore[union-attr]
        assert error.value.line is not None


def test_corpus_size() -> None:
    """How much of the corpus runs (and matches, by the tests above) and how much is refused."""
    refused = sum(1 for c in CASES if c.refused)
    assert len(CASES) >= 40 and refused <= len(CASES) // 5
