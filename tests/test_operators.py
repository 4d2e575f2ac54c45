"""The one operator interface: every plan node states its changelog mode and key once, has one
operator the runtime drives through :class:`~streamhouse.runtime.operator.Operator`, and
``EXPLAIN`` shows each node's mode."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError
from streamhouse.runtime.operator import MicroBatch
from streamhouse.runtime.operators import ADAPTERS
from streamhouse.runtime.sources import NO_WATERMARK
from streamhouse.sql.changelog import ChangelogMode, PlanNode
from streamhouse.sql.nodes import Recompute
from streamhouse.sql.parse import parse_one
from streamhouse.sql.plan import plan_query
from streamhouse.sql.plan_checks import check_changelogs
from streamhouse.state.store import ScopedBatch
from tests.join_cases import stream_ddl
from tests.window_cases import start_paused

JOIN = "SELECT a.k, a.v, b.w FROM a {kind} JOIN b ON a.k = b.k"
TOP = (
    "SELECT k, v, rn FROM (SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC)"
    " AS rn FROM a) WHERE rn <= 3"
)


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        conn.sql(stream_ddl("a", 2))
        conn.sql(stream_ddl("b", 2))
        yield conn


def test_every_plan_node_type_has_one_operator() -> None:
    assert set(ADAPTERS) == set(PlanNode.__subclasses__())


@pytest.mark.parametrize(
    ("sql", "mode", "keys"),
    [
        ("SELECT k, v FROM a WHERE v > 1", ChangelogMode.APPEND, []),
        (
            "SELECT k, COUNT(*) AS n FROM a GROUP BY k, TUMBLE(t, INTERVAL '1' MINUTE)",
            ChangelogMode.APPEND,
            ["k"],
        ),
        ("SELECT k, COUNT(*) AS n FROM a GROUP BY k", ChangelogMode.UPSERT, ["k"]),
        (JOIN.format(kind="INNER"), ChangelogMode.APPEND, []),
        (JOIN.format(kind="LEFT"), ChangelogMode.UPSERT, []),
        (JOIN.format(kind="FULL"), ChangelogMode.UPSERT, []),
        (TOP, ChangelogMode.UPSERT, ["k", "rn"]),
        ("SELECT k, t FROM a ORDER BY t", ChangelogMode.APPEND, []),
    ],
)
def test_each_node_states_its_changelog_mode_and_key(
    sh: StreamHouse, sql: str, mode: ChangelogMode, keys: list[str]
) -> None:
    node = plan_query(parse_one(sql)).operator
    assert (node.mode, node.key_columns, node.updating) == (mode, keys, mode.updating)
    query = start_paused(sh, sql, "q")
    try:  # the runtime's answer is the node's
        assert (query.updating, query.key_columns) == (mode.updating, keys)
    finally:
        query.stop()


def test_explain_shows_each_nodes_changelog_mode(sh: StreamHouse) -> None:
    def explain(sql: str) -> str:
        return "\n".join(sh.sql(f"EXPLAIN {sql}").to_arrow_table()["plan"].to_pylist())

    assert "changelog: upsert by (k)" in explain("SELECT k, COUNT(*) AS n FROM a GROUP BY k")
    assert "changelog: upsert by (the one group)" in explain("SELECT COUNT(*) AS n FROM a")
    assert "changelog: upsert by (k, rn)" in explain(TOP)
    outer = explain(JOIN.format(kind="LEFT"))
    assert "changelog: upsert by (left row id, right row id)" in outer
    windowed = explain(
        "SELECT k, n FROM (SELECT k, COUNT(*) AS n FROM a"
        " GROUP BY k, TUMBLE(t, INTERVAL '1' MINUTE)) AS w JOIN b ON w.k = b.k"
    )
    # the join and its derived window aggregate: each node states its own mode
    assert windowed.count("changelog: append-only") == 2


COUNTS = "(SELECT k, COUNT(*) AS n FROM a GROUP BY k)"
SUMS = "(SELECT k, SUM(w) AS total FROM b GROUP BY k)"


@pytest.mark.parametrize(
    ("sql", "node", "changelog", "state"),
    [
        (  # DISTINCT is a GROUP BY of its columns with no aggregate
            "SELECT DISTINCT k, v FROM a",
            "GroupAggregate",
            "changelog: upsert by (k, v)",
            "state: column family 'sessions', key b'groups'",
        ),
        (  # a filter over an updating input: each row recomputed by the input's key
            f"SELECT k, n FROM {COUNTS} AS c WHERE n <= 2",
            "Recompute  each input row",
            "changelog: upsert by (k)",
            "state: column family 'sessions', key b'recompute'",
        ),
        (  # a Top-N over an updating input
            f"SELECT k, n, rn FROM (SELECT k, n, ROW_NUMBER() OVER (ORDER BY n DESC, k) AS rn"
            f" FROM {COUNTS} AS c) WHERE rn <= 3",
            "Recompute  groups ()",
            "changelog: upsert by (rn)",
            "state: column family 'sessions', key b'recompute'",
        ),
        (  # a join of two updating inputs, keyed by the key that survives it
            f"SELECT x.k, x.n, y.total FROM {COUNTS} AS x JOIN {SUMS} AS y ON x.k = y.k",
            "ChangelogJoin  INNER",
            "changelog: upsert by (k)",
            "state: column family 'sessions', key b'cjoin_l'|u32(run), b'cjoin_r'|u32(run)",
        ),
        (  # a window TVF joined to a stream: its rows, once per window
            "SELECT x.k, window_start, b.w FROM TABLE(HOP(TABLE a, DESCRIPTOR(t),"
            " INTERVAL '5' SECOND, INTERVAL '10' SECOND)) AS x JOIN b ON x.k = b.k",
            "WindowRows  HOP(a.t, size=10000ms slide=5000ms)",
            "changelog: append-only",
            "state: none",
        ),
        (  # UNION ALL of updating inputs: keyed by input and its row key
            f"SELECT k, n FROM {COUNTS} AS x UNION ALL SELECT k, total AS n FROM {SUMS} AS y",
            "UnionAll",
            "changelog: upsert by (input, its row key)",
            "state: none but b'union_seq'",
        ),
    ],
)
def test_explain_shows_the_mode_key_and_state_of_each_operator_over_changes(
    sh: StreamHouse, sql: str, node: str, changelog: str, state: str
) -> None:
    lines = sh.sql(f"EXPLAIN {sql}").to_arrow_table()["plan"].to_pylist()
    at = next(i for i, line in enumerate(lines) if node in line)
    # the operator's own lines: those indented deeper than it, up to the next at its depth
    depth = len(lines[at]) - len(lines[at].lstrip())
    own = []
    for line in lines[at + 1 :]:
        if len(line) - len(line.lstrip()) <= depth:
            break
        own.append(line.strip())
    # a node nested in a Project states its mode on the Project's line above it
    block = own if changelog in "\n".join(own) else [lines[at - 1].strip(), *own]
    assert changelog in "\n".join(block)
    assert any(line.startswith(state) for line in own), own
    if "DISTINCT" in sql:
        assert "aggregates: none (the keys alone: DISTINCT)" in own


def test_explain_shows_both_plans_of_a_window_tvf_over_a_subquery(
    sh: StreamHouse,
) -> None:
    """A window TVF over a subquery: the subquery merged into the query over the TVF, in the
    continuous plan and in the bounded one (which once could not run it)."""
    sql = (
        "SELECT k, window_start, COUNT(*) AS n FROM TABLE(TUMBLE(TABLE (SELECT k, t FROM a"
        " WHERE v > 1), DESCRIPTOR(t), INTERVAL '10' SECOND)) GROUP BY k, window_start, window_end"
    )
    lines = sh.sql(f"EXPLAIN {sql}").to_arrow_table()["plan"].to_pylist()
    assert "WindowAggregate  TUMBLE(t, size=10000ms)" in [line.strip() for line in lines]
    bounded = lines.index("bounded plan (windows added to the sources, then DataFusion):")
    assert lines[bounded + 1].strip() == "__window_0_a = TUMBLE window over a.t"
    assert 'WHERE "v" > 1 GROUP BY "k", "window_start", "window_end"' in lines[bounded + 2]


def test_an_operator_emits_upserts_and_retractions_through_the_interface(
    sh: StreamHouse,
) -> None:
    sql = "SELECT k, COUNT(*) AS n FROM a GROUP BY k HAVING COUNT(*) < 3"
    query = start_paused(sh, sql, "q")
    operator = query.operator

    def micro_batch(keys: list[str]) -> MicroBatch:
        rows = pa.table({"k": keys})
        state = ScopedBatch(query.store.batch(), b"0/")
        return MicroBatch({"a": rows}, NO_WATERMARK, NO_WATERMARK, state)

    try:
        first = micro_batch(["x", "x", "x", "y"])
        changes = operator.process(first)
        assert changes.rows is not None
        assert changes.rows.to_pylist() == [{"k": "y", "n": 1}]
        assert changes.retracted == [b"x"]  # HAVING drops x: a tombstone for its key
        assert changes.late == 0
        query.store.commit(first.state.batch)
        operator.commit()
        assert operator.state_size == 2

        second = micro_batch(["y"])
        assert operator.process(second).rows.to_pylist() == [{"k": "y", "n": 2}]
        operator.rollback()  # its write batch is never committed: y was counted once
        third = micro_batch(["y"])
        changes = operator.process(third)
        assert changes.rows is not None
        assert changes.rows.to_pylist() == [{"k": "y", "n": 2}]
        assert changes.retracted == []
    finally:
        query.stop()


@pytest.mark.parametrize(
    ("inner", "reads_row_keys"),
    [
        # Nexmark q4's shape: the groups of the aggregate above key its rows, no retractions
        ("SELECT k, MAX(v) AS m FROM a GROUP BY k", False),
        # HAVING drops groups: the aggregate above keeps rows by row key, dead once retracted
        ("SELECT k, MAX(v) AS m FROM a GROUP BY k HAVING MAX(v) < 5", True),
    ],
)
def test_an_aggregate_hands_on_row_keys_only_to_an_operator_that_reads_them(
    sh: StreamHouse, inner: str, reads_row_keys: bool
) -> None:
    query = start_paused(sh, f"SELECT m, COUNT(*) AS n FROM ({inner}) GROUP BY m", "q")
    try:
        branch = query.branches[0]
        assert branch.row_keyed == ({"__derived_0"} if reads_row_keys else set())
        node, operator = branch.children["__derived_0"]
        rows = pa.table({"k": ["x", "y", "x"], "v": [3, 4, 7]})
        state = ScopedBatch(query.store.batch(), b"1/")
        batch = MicroBatch({"a": rows}, NO_WATERMARK, NO_WATERMARK, state, True)
        keyed = operator.process(batch)
        operator.rollback()
        plain = operator.process(replace(batch, row_keys=False))
        assert keyed.rows is not None and plain.rows is not None
        assert keyed.rows.drop_columns(["__key"]) == plain.rows
        assert plain.retracted == []
        if reads_row_keys:  # x's MAX is 7: HAVING drops it
            assert keyed.retracted == [b'{"__k0":"x"}']
    finally:
        query.stop()


def test_a_query_at_parallelism_one_does_not_load_the_task_machinery(tmp_path: Path) -> None:
    """Starting a query (with state from an earlier run) checks its parallelism without
    importing the parallel runtime: a start's CPU is part of every short query's."""
    script = f"""
import sys
import streamhouse
with streamhouse.connect({str(tmp_path / "data")!r}) as sh:
    sh.sql({stream_ddl("a", 2)!r})
    for _ in range(2):
        sh.start("SELECT k, COUNT(*) AS n FROM a GROUP BY k", name="q").stop()
print(sorted(m for m in sys.modules if m.startswith("streamhouse.runtime.")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = done.stdout.split("\n")[-2]
    assert "streamhouse.runtime.query" in loaded
    assert "streamhouse.runtime.parallel" not in loaded, loaded


def test_a_node_over_a_derived_input_it_cannot_take_is_refused() -> None:
    """The planner's own checks refuse these shapes first; the invariant behind them holds for
    any plan: a node never runs over a derived input whose changelog it would misread."""
    join = plan_query(parse_one(JOIN.format(kind="LEFT"))).operator
    top = plan_query(parse_one(TOP)).operator
    over_join = replace(top, source="__derived_0")
    query = parse_one(TOP)
    with pytest.raises(SqlError, match="TopN takes append-only input, and its input"):
        check_changelogs(over_join, {"__derived_0": join}, query)
    # an upsert input is what a Recompute takes; an append-only one it would misread
    aggregate = plan_query(parse_one("SELECT k, COUNT(*) AS n FROM a GROUP BY k")).operator
    recompute = Recompute("__derived_0", "SELECT 1", ["k"], ["k"], ["k"])
    check_changelogs(recompute, {"__derived_0": aggregate}, query)
    inner = plan_query(parse_one(JOIN.format(kind="INNER"))).operator
    with pytest.raises(SqlError, match="Recompute takes upsert input.*is append-only"):
        check_changelogs(recompute, {"__derived_0": inner}, query)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_star_and_a_named_metadata_column_continuously(tmp_path: Path, seed: int) -> None:
    """``SELECT *, _offset`` has one ``_offset`` continuously too (the named metadata column
    was in the rows, so ``*`` took it a second time and DataFusion refused the query)."""
    import json
    import random

    rng = random.Random(seed)
    values = [rng.randrange(100) for _ in range(60)]
    sql = "SELECT *, _offset, _partition FROM t WHERE a % 2 = 0"
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.create_topic("t")
        for start in range(0, len(values), 7):
            sh.produce("t", [{"a": a} for a in values[start : start + 7]], partition=0)
        want = [{"a": a, "_offset": i, "_partition": 0} for i, a in enumerate(values) if a % 2 == 0]
        # (a streaming scan decodes segment groups side by side: rows come in no set order)
        assert sorted(sh.sql(sql).to_arrow_table().to_pylist(), key=lambda r: r["_offset"]) == want
        query = start_paused(sh, f"INSERT INTO out {sql}", "q")
        for step in range(200):
            if step == 3:  # a restart from the checkpoint
                query.stop()
                query = start_paused(sh, f"INSERT INTO out {sql}", "q")
            if not query.step(max_records=rng.randrange(1, 12)):
                break
        query.run_until_caught_up(final=True)
        assert query.status()["error"] is None
        query.stop()
        assert [json.loads(v) for v in sh.fetch("out")["value"].to_pylist()] == want


def test_output_columns_named_like_the_sinks_row_alias_are_written_whole(tmp_path: Path) -> None:
    """The sink made each record with DuckDB's ``to_json(r) FROM rows_out AS r``; an output
    column named ``r`` was read instead of the row, so the record held that value alone."""
    import json

    sql = "SELECT a AS r, a * 10 AS __row, a + 1 AS w FROM t"
    with streamhouse.connect(tmp_path, linger_ms=1) as sh:
        sh.create_topic("t")
        sh.produce("t", [{"a": a} for a in range(5)], partition=0)
        query = start_paused(sh, f"INSERT INTO out {sql}", "q")
        query.run_until_caught_up(final=True)
        query.stop()
        want = sh.sql(sql).to_arrow_table().to_pylist()
        assert [json.loads(v) for v in sh.fetch("out")["value"].to_pylist()] == want
        assert want[1] == {"r": 1, "__row": 10, "w": 2}
