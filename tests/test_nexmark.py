"""Nexmark: the generator's model, and every query's rows against a DuckDB batch reference.

Each query of ``queries/nexmark`` runs over the same small generated data set twice: bounded
(its SELECT through ``sh.sql``) and continuous (the file through ``sh.start``, run until caught
up with a final watermark, then again from scratch with a restart in the middle). Both must end
with the rows of the hand-written DuckDB query in ``nexmark_reference.py``. A query whose file
says it cannot run yet (first lines ``-- cannot run yet: ...`` / ``-- cannot run bounded yet:
...``) is a strict expected failure, so the test notices the day it starts working.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from nexmark_reference import COMPARE, REFERENCE, comparable, connect, reference
from parallel_cases import run_to_end, wait_for
from window_cases import topic_rows

import streamhouse
from benchmarks.nexmark import (
    QUERIES,
    NexmarkConfig,
    NexmarkTables,
    generate,
    generate_tables,
    json_values,
    load,
    nexmark_query,
)
from benchmarks.nexmark.udfs import register as register_udfs
from streamhouse.runtime.launch import start_query

# 20,000 bids (21,740 events) over 43 s of event time: a few 10-second windows, many 2-second
# hops, auctions open for about 3 s.
CONFIG = NexmarkConfig.for_bids(20_000, events_per_second=500, seed=7)


@dataclass
class Nexmark:
    sh: streamhouse.StreamHouse
    tables: NexmarkTables
    duck: duckdb.DuckDBPyConnection
    data_dir: Path


@pytest.fixture(scope="module")
def nexmark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nexmark]:
    data_dir = tmp_path_factory.mktemp("nexmark")
    sh = streamhouse.connect(data_dir)
    register_udfs(sh)
    load(sh, CONFIG)
    tables = generate_tables(CONFIG)
    try:
        yield Nexmark(sh, tables, connect(tables), data_dir)
    finally:
        sh.close()


def _params(kind: str) -> list[object]:
    params: list[object] = []
    for name in QUERIES:
        query = nexmark_query(name)
        reason = query.blocked if kind == "continuous" else query.blocked_bounded
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def _assert_same(name: str, got: pa.Table, want: pa.Table) -> None:
    assert got.num_columns == want.num_columns, (got.column_names, want.column_names)
    got_rows, want_rows = comparable(name, got), comparable(name, want)
    assert len(got_rows) == len(want_rows)
    assert got_rows == want_rows


# -- the queries -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params("bounded"))
def test_bounded(nexmark: Nexmark, name: str) -> None:
    query = nexmark_query(name)
    for statement in query.ddl():
        nexmark.sh.sql(statement)
    got = nexmark.sh.sql(query.select()).to_arrow_table()
    _assert_same(name, got, reference(nexmark.duck, name))


def _run(nexmark: Nexmark, name: str, run_name: str, restart_after: int | None) -> pa.Table:
    """Run the file as a continuous query to its end; with ``restart_after`` micro-batches of
    1,000 records, stop there and resume from the checkpoint with a fresh query object."""
    query = nexmark_query(name)
    outputs: list[pa.Table] = []
    running = second = None
    if restart_after is None:
        running = nexmark.sh.start(query.path, name=run_name, on_results=outputs.append)
        try:
            running.run_until_caught_up(final=True)
        finally:
            running.stop()
        assert running.error is None
    else:
        state_root = nexmark.data_dir / "queries"
        first = start_query(
            nexmark.sh.engine,
            query.path,
            name=run_name,
            state_root=state_root,
            on_results=outputs.append,
            start=False,
        )
        try:
            for _ in range(restart_after):
                first.step(max_records=1_000)
        finally:
            first.stop()
        second = start_query(
            nexmark.sh.engine,
            query.path,
            name=run_name,
            state_root=state_root,
            on_results=outputs.append,
            start=False,
        )
        try:
            second.run_until_caught_up(final=True)
        finally:
            second.stop()
    if not outputs:
        return pa.table({})
    same = all(o.schema.equals(outputs[0].schema) for o in outputs)  # names may repeat (q20)
    result = pa.concat_tables(outputs, promote_options="none" if same else "permissive")
    last = second if restart_after is not None else running
    if last.updating:  # upserts: what a reader of the view sees is the last row per key
        keys = [k for k in last.key_columns if k in result.column_names]
        frame = result.to_pandas().drop_duplicates(subset=keys, keep="last")
        result = pa.Table.from_pandas(frame, schema=result.schema, preserve_index=False)
    return result


@pytest.mark.parametrize("name", _params("continuous"))
def test_continuous(nexmark: Nexmark, name: str) -> None:
    got = _run(nexmark, name, f"test_{name}", restart_after=None)
    _assert_same(name, got, reference(nexmark.duck, name))


@pytest.mark.parametrize("name", _params("continuous"))
def test_continuous_with_restart(nexmark: Nexmark, name: str) -> None:
    got = _run(nexmark, name, f"test_{name}_restart", restart_after=3)
    _assert_same(name, got, reference(nexmark.duck, name))


# bid in 3 partitions, read by 2 or 3 producing tasks
PARALLEL = NexmarkConfig.for_bids(8_000, events_per_second=500, seed=11)


def test_q5_in_parallel_with_kills_and_restarts_equals_duckdb(tmp_path: Path) -> None:
    """Hot items (q5: per-auction HOP counts joined to their window's maximum, no key between
    the two) is routed by window: at parallelism 2 and 3 it equals DuckDB; at 2 with a task
    killed -9 mid-run (restarted from its checkpoint), stopped, resumed and killed again, then
    rescaled to 3 (a task killed -9 before the stop) and to 1 to the end: every row is in the
    sink once."""
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        load(sh, PARALLEL, partitions=3, side_input=False)
        want = comparable("q5", reference(connect(generate_tables(PARALLEL)), "q5"))
        assert len(want) > 10
        text = nexmark_query("q5").path.read_text()

        def written(name: str, batch: int) -> Path:
            path = tmp_path / f"{name}.sql"
            sets = f"SET 'max-batch-records' = '{batch}';\nSET 'poll-interval' = '20 ms';\n"
            path.write_text(sets + text.replace("INTO nexmark_q5", f"INTO {name}"))
            return path

        def sink(name: str) -> list[tuple]:
            return comparable("q5", pa.Table.from_pylist(topic_rows(sh, name)))

        for parallelism in (2, 3):
            status = run_to_end(sh, written(f"q5p{parallelism}", 700), parallelism)
            assert status["watermark"] == "end of input"
            assert status["rows_in"] == 8_000 and status["late_rows"] == 0
            assert sink(f"q5p{parallelism}") == want
            assert all(t["rows_out"] > 0 for t in status["tasks"])  # each task owns windows

        path = written("q5k", 150)
        query = sh.start(path, parallelism=2)
        wait_for(lambda: query.status()["rows_in"] > 1_500)
        query.processes[1].kill()  # its producing and consuming sides at once
        wait_for(lambda: query.status()["restarts"] == 1)
        wait_for(lambda: query.status()["rows_in"] > 3_000)
        query.stop()
        query = sh.start(path, parallelism=2)
        wait_for(lambda: query.status()["rows_in"] > 4_000)
        query.processes[0].kill()
        query.stop()
        query = sh.start(path, parallelism=3)  # rescaled: panes to the tasks of their windows
        wait_for(lambda: query.status()["rows_in"] > 5_500)
        query.processes[2].kill()
        query.stop()
        status = run_to_end(sh, path, 1)  # rescaled again
        assert status["rows_in"] == 8_000  # no bid read twice
        assert sink("q5k") == want  # none lost, none twice


def test_every_query_has_a_reference() -> None:
    assert set(REFERENCE) == set(QUERIES)
    assert set(COMPARE) <= set(QUERIES)
    for name in QUERIES:
        query = nexmark_query(name)
        assert query.select().upper().startswith(("SELECT", "WITH")), name
        if query.blocked_bounded:
            assert query.blocked, f"{name} runs continuously but not bounded?"


# -- the generator -----------------------------------------------------------------------------


def test_generator_proportions_and_ids() -> None:
    config = NexmarkConfig.for_bids(46_000, chunk_events=5_000)
    tables = generate_tables(config)
    assert (tables.person.num_rows, tables.auction.num_rows, tables.bid.num_rows) == (
        1_000,
        3_000,
        46_000,
    )
    assert config.counts() == {"person": 1_000, "auction": 3_000, "bid": 46_000}
    assert tables.person["id"].to_pylist() == list(range(1000, 2000))
    assert tables.auction["id"].to_pylist() == list(range(1000, 4000))
    bid, auction = tables.bid, tables.auction
    # Hot auctions (the first of the latest block of 100) take about half the bids; hot
    # bidders and sellers three quarters of theirs.
    auctions = bid["auction"].to_numpy()
    assert 0.45 < np.mean((auctions - 1000) % 100 == 0) < 0.6
    bidders = bid["bidder"].to_numpy()
    assert 0.7 < np.mean((bidders - 1000) % 100 == 1) < 0.8
    sellers = auction["seller"].to_numpy()
    assert 0.7 < np.mean((sellers - 1000) % 100 == 0) < 0.8
    # References point at persons and auctions that exist, or at most 10 ids ahead.
    assert auctions.max() <= 4000 + 10
    assert bidders.max() <= 2000 + 10 and sellers.max() <= 2000 + 10
    categories = set(auction["category"].to_pylist())
    assert categories == {10, 11, 12, 13, 14}
    assert pc.all(pc.less(auction["dateTime"], auction["expires"])).as_py()
    prices = bid["price"].to_numpy()
    assert prices.min() >= 100 and prices.max() <= 100_000_000
    hot = pc.is_in(bid["channel"], pa.array(["Google", "Facebook", "Baidu", "Apple"]))
    assert 0.45 < pc.mean(pc.cast(hot, pa.float64())).as_py() < 0.55


def test_generator_event_time_and_disorder() -> None:
    config = NexmarkConfig.for_bids(46_000, events_per_second=10_000)
    bid = generate_tables(config).bid
    ms = bid["dateTime"].cast(pa.int64()).to_numpy()
    span = ms.max() - ms.min()
    assert 4_500 < span < 5_500 + config.max_delay_ms  # 50,000 events at 10,000 per second
    # Bounded disorder: no bid is more than max_delay_ms older than one before it.
    lag = np.maximum.accumulate(ms) - ms
    assert lag.max() <= config.max_delay_ms
    assert 0.05 < np.mean(lag > 0) < 0.2


def test_generator_is_deterministic_and_chunked_alike() -> None:
    config = NexmarkConfig.for_bids(5_000, seed=3, chunk_events=1_000)
    first, again = generate_tables(config), generate_tables(config)
    for stream in ("person", "auction", "bid"):
        assert first.table(stream).equals(again.table(stream))
    other = generate_tables(NexmarkConfig.for_bids(5_000, seed=4, chunk_events=1_000))
    assert not first.bid.equals(other.bid)
    chunks = list(generate(config))
    assert sum(c.events for c in chunks) == config.events
    assert [c.first_event for c in chunks] == list(range(0, config.events, 1_000))


def test_load_spreads_partitions_alike(tmp_path: Path) -> None:
    """With several partitions, each gets every n-th event: event time advances alike."""
    config = NexmarkConfig.for_bids(3_000, events_per_second=1_000)
    with streamhouse.connect(tmp_path / "data") as sh:
        stats = load(sh, config, partitions=3)
        assert stats.rows == {"person": 66, "auction": 198, "bid": 3_000}
        records = sh.fetch("bid")
        assert records.num_rows == 3_000
        per_partition = records.group_by("partition").aggregate([("offset", "count")])
        assert sorted(per_partition["offset_count"].to_pylist()) == [1_000, 1_000, 1_000]
        assert sh.sql("SELECT count(*) AS n FROM side_input").fetchall() == [(10_000,)]
        # Loading into a data directory that has the side input already leaves it alone.
        load(sh, NexmarkConfig.for_bids(46), partitions=3)
        assert sh.sql("SELECT count(*) AS n FROM side_input").fetchall() == [(10_000,)]


def test_json_values_round_trip(tmp_path: Path) -> None:
    """The JSON the loader writes reads back (DuckDB's reader) as the very rows generated."""
    tables = generate_tables(NexmarkConfig.for_bids(2_000, events_per_second=50))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for stream in ("person", "auction", "bid"):
        table = tables.table(stream)
        path = tmp_path / f"{stream}.json"
        path.write_bytes(b"\n".join(json_values(table).to_pylist()))
        columns = ", ".join(f"{f.name}: '{_duck_type(f.type)}'" for f in table.schema)
        parsed = con.sql(
            f"SELECT * FROM read_json('{path}', format='newline_delimited', columns={{{columns}}})"
        ).to_arrow_table()
        assert parsed.cast(table.schema).equals(table)


def _duck_type(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind):
        return "BIGINT"
    if pa.types.is_timestamp(kind):
        return "TIMESTAMP"
    return "VARCHAR"
