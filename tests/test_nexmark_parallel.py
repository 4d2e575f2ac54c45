"""Every Nexmark query, and a GROUP BY of each window kind, at parallelism 2 and 3 against DuckDB.

Each query runs over one small generated data set (bids, auctions and persons in 3 partitions)
at parallelism 3 to the end of its sources, and at parallelism 2 stopped part way (every task
checkpointed) and resumed to the end by a fresh query object. Both must end with the rows of the
DuckDB reference in ``nexmark_reference.py`` (an updating query: the last row per key). The rows
are the tasks' results as Arrow tables, read back whole from the query's results topic, so
every micro-batch of both runs is in them, once.

A query that cannot run at parallelism > 1 must say so by name (a SqlError naming its operator,
never rows silently wrong): :data:`REFUSED` lists them, and the test checks the refusal.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nexmark_reference import comparable, connect, reference
from parallel_cases import wait_for
from sqlglot import exp
from window_cases import windowed_sql

import streamhouse
from benchmarks.nexmark import QUERIES, NexmarkConfig, generate_tables, load, nexmark_query
from benchmarks.nexmark.udfs import register as register_udfs
from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.runtime.exchange import decode
from streamhouse.runtime.launch import start_query
from streamhouse.runtime.parallel import ParallelQuery, results_topic

# 3,000 bids (about 3,260 events) over 15 s of event time, in 3 partitions: a few 10-second
# windows, many 2-second hops, sessions of 10 s gap per bidder.
CONFIG = NexmarkConfig.for_bids(3_000, events_per_second=200, seed=23)

REFUSED: dict[str, str] = {}
"""Queries refused at parallelism > 1: a word the refusal's message must contain."""


@dataclass
class Data:
    sh: streamhouse.StreamHouse
    duck: duckdb.DuckDBPyConnection
    data_dir: Path
    directory: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    data_dir = tmp_path_factory.mktemp("nexpar")
    sh = streamhouse.connect(data_dir / "data", linger_ms=1)
    register_udfs(sh)
    load(sh, CONFIG, partitions=3)
    try:
        yield Data(sh, connect(generate_tables(CONFIG)), data_dir / "data", data_dir)
    finally:
        sh.close()


def _file(data: Data, text: str, name: str, sink: str, batch: int = 300) -> Path:
    """``text`` (a query file) sinking into ``name``, in micro-batches of ``batch`` records."""
    path = data.directory / f"{name}.sql"
    sets = f"SET 'max-batch-records' = '{batch}';\nSET 'poll-interval' = '20 ms';\n"
    path.write_text(sets + text.replace(f"INTO {sink}", f"INTO {name}"))
    return path


def _start(data: Data, path: Path, parallelism: int) -> ParallelQuery:
    query = start_query(
        data.sh.engine,
        path,
        state_root=data.data_dir / "queries",
        options={"parallelism": parallelism},
        on_results=lambda _: None,  # the tasks send results; read back whole below
        start=False,
    )
    assert isinstance(query, ParallelQuery)
    return query


def _results(data: Data, query: ParallelQuery) -> pa.Table:
    """Every result the tasks sent (all runs), in order per task; an updating query's last row
    per key."""
    values = data.sh.fetch(results_topic(query.name))["value"].to_pylist()
    tables = [decode(v) for v in values]
    tables = [t for t in tables if t.num_rows]
    assert tables, "no results"
    same = all(t.schema.equals(tables[0].schema) for t in tables)  # names may repeat (q20)
    result = pa.concat_tables(tables, promote_options="none" if same else "permissive")
    operator = query.plan.operator
    if operator.updating:
        keys = [k for k in operator.key_columns if k in result.column_names]
        frame = result.to_pandas().drop_duplicates(subset=keys, keep="last")
        result = pa.Table.from_pandas(frame, schema=result.schema, preserve_index=False)
    return result


def run_in_parallel(
    data: Data, path: Path, parallelism: int, restart: bool, stops: tuple[float, ...] = (1 / 3,)
) -> pa.Table:
    """``path`` at ``parallelism`` to the end of its sources; with ``restart``, stopped part way
    first (once past each fraction of ``stops`` of the source records read) and resumed by a
    fresh query object."""
    for fraction in stops if restart else ():
        query = _start(data, path, parallelism).start()
        read = {t.name for t in query.statement.find_all(exp.Table)}
        total = sum(n for stream, n in CONFIG.counts().items() if stream in read)
        try:
            wait_for(
                lambda q=query, n=total * fraction: q.status()["rows_in"] > n,  # type: ignore[misc]
                timeout=120,
            )
        finally:
            query.stop()
        assert query.error is None
    query = _start(data, path, parallelism)
    query.run_until_caught_up(final=True)
    status = query.status()
    assert status["watermark"] == "end of input", status
    return _results(data, query)


def _params() -> list[object]:
    return [
        pytest.param(name, parallelism, id=f"{name}-p{parallelism}")
        for name in QUERIES
        if not nexmark_query(name).blocked
        for parallelism in (2, 3)
    ]


@pytest.mark.parametrize(("name", "parallelism"), _params())
def test_nexmark_query_in_parallel(data: Data, name: str, parallelism: int) -> None:
    """At parallelism 3 to the end, at 2 stopped and resumed: the DuckDB rows."""
    text = nexmark_query(name).path.read_text()
    path = _file(data, text, f"par_{name}_p{parallelism}", f"nexmark_{name}")
    if name in REFUSED:
        with pytest.raises(SqlError, match="parallelism") as refused:
            _start(data, path, parallelism)
        assert REFUSED[name] in str(refused.value)
        return
    got = run_in_parallel(data, path, parallelism, restart=parallelism == 2)
    want = reference(data.duck, name)
    assert got.num_columns == want.num_columns, (got.column_names, want.column_names)
    assert comparable(name, got) == comparable(name, want)


# -- each window kind ---------------------------------------------------------------------------

BID_DDL = nexmark_query("q0").ddl()[0]

# kind -> (window TVF over bid, size ms, slide ms for window_cases.windowed_sql)
WINDOWS: dict[str, tuple[str, int, int | None]] = {
    "tumble": ("TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND)", 2_000, None),
    "hop": (
        "HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '1' SECOND, INTERVAL '3' SECOND)",
        3_000,
        1_000,
    ),
    "cumulate": (
        "CUMULATE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '1' SECOND, INTERVAL '4' SECOND)",
        4_000,
        1_000,
    ),
    "session": (
        "SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), INTERVAL '1' SECOND)",
        1_000,
        None,
    ),
}


@pytest.mark.parametrize("parallelism", [2, 3])
@pytest.mark.parametrize("kind", list(WINDOWS))
def test_window_kind_in_parallel(data: Data, kind: str, parallelism: int) -> None:
    """A per-bidder GROUP BY of each window kind (COUNT, COUNT DISTINCT, SUM, MIN, MAX) at
    parallelism 3 to the end and 2 with a restart: DuckDB's windows."""
    tvf, size, slide = WINDOWS[kind]
    name = f"par_{kind}_p{parallelism}"
    text = f"""{BID_DDL};
INSERT INTO {name}
SELECT bidder, window_start, window_end, count(*) AS n, count(DISTINCT auction) AS nd,
       sum(price) AS s, min(price) AS lo, max(price) AS hi
FROM TABLE({tvf})
GROUP BY bidder, window_start, window_end;
"""
    got = run_in_parallel(data, _file(data, text, name, name), parallelism, parallelism == 2)
    millis = {c: pc.cast(got[c], pa.int64()) for c in ("window_start", "window_end")}
    got = got.drop_columns(list(millis)).append_column("ws", millis["window_start"])
    got = got.append_column("we", millis["window_end"])
    columns = ["bidder", "ws", "we", "n", "nd", "s", "lo", "hi"]
    want = data.duck.sql(
        f"""
        WITH ev AS (
            SELECT bidder AS k, epoch_ms(dateTime) AS t, price AS v, auction FROM bid
        )
        SELECT k AS bidder, ws, we, count(*) AS n, count(DISTINCT auction) AS nd, sum(v) AS s,
               min(v) AS lo, max(v) AS hi
        FROM ({windowed_sql(kind, size, slide).replace("SELECT k, t, v,", "SELECT k, t, v, auction,")})
        GROUP BY ALL
        """
    ).to_arrow_table()
    assert want.num_rows > 50
    assert comparable(kind, got.select(columns)) == comparable(kind, want.select(columns))


# -- refused by name ----------------------------------------------------------------------------


def test_a_top_n_of_a_join_by_another_key_is_refused(data: Data) -> None:
    """A Top-N over a join runs in the join's tasks only when its PARTITION BY holds the join's
    key: ranked by another column, its partitions would span tasks."""
    text = (
        nexmark_query("q9").path.read_text().replace("PARTITION BY A.id", "PARTITION BY B.bidder")
    )
    path = _file(data, text, "par_q9_by_bidder", "nexmark_q9")
    with pytest.raises(SqlError, match="PARTITION BY without the join's equality columns"):
        _start(data, path, 2)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("q9", "the state of its TopN over a StreamJoin does not move by key group yet"),
        ("q13", "reads side_input whole in every task"),
        ("q7", "StreamJoin over a window aggregate does not move by window yet"),
    ],
)
def test_a_rescale_it_cannot_move_is_refused(data: Data, name: str, why: str) -> None:
    """q9 (a Top-N routed as the join under it), q13 (a lookup table read whole by every
    task) and q7 (a join of a window aggregate routed by window) stopped part way at parallelism 2 refuse to start at 3: their state does not move by
    key group, so they are never silently wrong."""
    run = f"par_rescale_{name}"
    path = _file(data, nexmark_query(name).path.read_text(), run, f"nexmark_{name}", 100)
    query = _start(data, path, 2).start()
    try:
        wait_for(lambda: query.status()["rows_in"] > 200, timeout=120)
    finally:
        query.stop()
    with pytest.raises(SqlError, match=f"cannot change parallelism: .*{why}"):
        _start(data, path, 3).start()


def test_a_function_the_tasks_cannot_import_is_refused(data: Data) -> None:
    data.sh.register_function("shout", lambda s: pc.utf8_upper(s), [pa.string()], pa.string())
    text = f"{BID_DDL};\nINSERT INTO par_shout SELECT shout(channel) AS c FROM bid;\n"
    path = _file(data, text, "par_shout", "par_shout")
    with pytest.raises(SqlError, match="function 'shout' is not a module's top-level function"):
        _start(data, path, 2)


def test_a_task_error_reaches_the_caller(data: Data) -> None:
    """A query its tasks refuse (a window over a column that is not the time attribute) fails
    with the tasks' own error, not an exit status."""
    text = """CREATE STREAM IF NOT EXISTS bid_times (
    auction BIGINT,
    dateTime TIMESTAMP(3),
    other TIMESTAMP(3),
    WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND
) WITH (topic = 'bid', format = 'json');
INSERT INTO par_other
SELECT auction, window_start, count(*) AS n
FROM TABLE(TUMBLE(TABLE bid_times, DESCRIPTOR(other), INTERVAL '2' SECOND))
GROUP BY auction, window_start, window_end;
"""
    query = _start(data, _file(data, text, "par_other", "par_other"), 2)
    with pytest.raises(StreamHouseError, match="'other' is not a time attribute of 'bid_times'"):
        query.run_until_caught_up(final=True)


STATEFUL = ["q3", "q4", "q5", "q7", "q8", "q9", "q11", "q13", "q15", "q18", "q19", "q20"]
_runs = itertools.count()


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.sampled_from(STATEFUL),
    parallelism=st.sampled_from([2, 3]),
    batch=st.integers(20, 700),
    stops=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=2).map(sorted),
)
def test_split_points_do_not_change_the_answer(
    data: Data, name: str, parallelism: int, batch: int, stops: list[float]
) -> None:
    """Hypothesis over the split points of a stateful query: micro-batches of any size, stopped
    and resumed at any points (each task where it stands): the DuckDB rows."""
    text = nexmark_query(name).path.read_text()
    run = f"par_split{next(_runs)}_{name}"
    path = _file(data, text, run, f"nexmark_{name}", batch)
    got = run_in_parallel(data, path, parallelism, True, tuple(stops))
    assert comparable(name, got) == comparable(name, reference(data.duck, name))


# -- a task killed -9 ---------------------------------------------------------------------------

# query -> the columns compared (a JSON sink gives times as text); None: all, by position
KILLED: dict[str, list[str] | None] = {
    "q9": ["id", "seller", "auction", "bidder", "price"],
    "q13": ["auction", "bidder", "price", "value"],
    "q7": ["auction", "bidder", "price", "extra"],
    "q4": None,  # two stages: task 1 runs both, killed in either
    "q12": ["bidder", "bid_count"],  # processing-time windows: compared as counts per bidder
}


@pytest.mark.parametrize("name", list(KILLED))
def test_a_task_killed_mid_run_loses_and_doubles_nothing(data: Data, name: str) -> None:
    """At parallelism 2, one task killed -9 mid-run (restarted from its checkpoint), the query
    stopped, then run to the end: the sink holds DuckDB's rows, none twice (an updating query:
    the latest row of each record key)."""
    run = f"par_kill_{name}"
    path = _file(data, nexmark_query(name).path.read_text(), run, f"nexmark_{name}", 100)
    total = CONFIG.counts()["bid"]
    query = _start(data, path, 2).start()
    try:
        wait_for(lambda: query.status()["rows_in"] > total // 3, timeout=120)
        query.processes[1].kill()
        wait_for(lambda: query.status()["restarts"] == 1, timeout=120)
        wait_for(lambda: query.status()["rows_in"] > total * 2 // 3, timeout=120)
    finally:
        query.stop()
    assert query.error is None
    _start(data, path, 2).run_until_caught_up(final=True)
    records = data.sh.fetch(run)
    if query.plan.operator.updating:  # the latest value of each key, tombstones dropped
        frame = records.to_pandas().drop_duplicates(subset=["key"], keep="last")
        values = [v for v in frame["value"] if v is not None]
    else:
        values = records["value"].to_pylist()
    got = pa.Table.from_pylist([json.loads(v) for v in values])
    want = reference(data.duck, name)
    columns = KILLED[name]
    if columns is None:
        got = got.rename_columns(want.column_names)
    else:
        got, want = got.select(columns), want.select(columns)
    assert comparable(name, got) == comparable(name, want)


# -- a stream joined to a window aggregate of itself (Nexmark q7's shape) -----------------------

# kind -> the window TVF over bid; each bid is joined to every window ending 0-3 s after it
WINDOW_JOINS: dict[str, tuple[str, str]] = {
    "tumble": (
        "TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '1' SECOND)",
        "SELECT (t // 1000) * 1000 AS ws, price FROM ev",
    ),
    "hop": (
        "HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '1' SECOND, INTERVAL '2' SECOND)",
        "SELECT (t // 1000) * 1000 - 1000 * h AS ws, price FROM ev, range(2) AS r(h)",
    ),
}


@pytest.mark.parametrize("parallelism", [2, 3])
@pytest.mark.parametrize("kind", list(WINDOW_JOINS))
def test_a_stream_joined_to_its_window_aggregate(data: Data, kind: str, parallelism: int) -> None:
    """q7's shape with windows of 1 s and a bound reaching three windows past a bid's own, so
    the windows of one bid's pairs are owned by different tasks (a bid at a window's end joins
    the window ending then too): at parallelism 3 to the end and 2 with a restart, DuckDB's
    pairs, none twice."""
    tvf, windows = WINDOW_JOINS[kind]
    name = f"par_q7_{kind}_p{parallelism}"
    text = f"""{BID_DDL};
INSERT INTO {name}
SELECT B.auction, B.bidder, B.price, B1.maxprice, B1.n, B1.dateTime AS wend
FROM bid B
JOIN (
  SELECT MAX(price) AS maxprice, COUNT(*) AS n, window_end AS dateTime
  FROM TABLE({tvf})
  GROUP BY window_start, window_end
) B1
ON B.dateTime BETWEEN B1.dateTime - INTERVAL '3' SECOND AND B1.dateTime
WHERE B.bidder % 2 = 0;
"""
    path = _file(data, text, name, name)
    got = run_in_parallel(data, path, parallelism, parallelism == 2)
    got = got.set_column(5, "wend", pc.cast(got["wend"], pa.int64()))
    want = data.duck.sql(
        f"""
        WITH ev AS (SELECT epoch_ms(dateTime) AS t, * FROM bid),
        w AS (
            SELECT ws + {2000 if kind == "hop" else 1000} AS wend, max(price) AS maxprice,
                   count(*) AS n
            FROM ({windows}) GROUP BY ws
        )
        SELECT auction, bidder, price, maxprice, n, wend
        FROM ev JOIN w ON ev.t BETWEEN w.wend - 3000 AND w.wend WHERE bidder % 2 = 0
        """
    ).to_arrow_table()
    assert want.num_rows > 1000
    assert sorted(got.to_pylist(), key=str) == sorted(want.to_pylist(), key=str)


# -- windows over processing time (Nexmark q12's shape) -----------------------------------------


def test_processing_time_windows_close_by_the_producers_clocks(data: Data) -> None:
    """A 1-second TUMBLE over PROCTIME() at parallelism 2, left running (never told the input
    ended): its windows close as the producing tasks' clocks pass their ends, each bid counted
    once, in a window aligned to the second within the run; none late. A SESSION over
    PROCTIME() is refused by name."""
    name = "par_proctime"
    view = "CREATE VIEW BP AS SELECT *, PROCTIME() AS p_time FROM bid;\n"
    text = f"""{BID_DDL};
{view}INSERT INTO {name}
SELECT bidder, count(*) AS bid_count, window_start, window_end
FROM TABLE(TUMBLE(TABLE BP, DESCRIPTOR(p_time), INTERVAL '1' SECOND))
GROUP BY bidder, window_start, window_end;
"""
    began = time.time() * 1000
    query = _start(data, _file(data, text, name, name, 200), 2).start()
    total = CONFIG.counts()["bid"]

    def counted() -> int:
        values = data.sh.fetch(name)["value"].to_pylist() if data.sh.log.get_topic(name) else []
        return sum(json.loads(v)["bid_count"] for v in values)

    try:
        wait_for(lambda: counted() >= total, timeout=120)
    finally:
        query.stop()
    ended = time.time() * 1000
    assert query.error is None and query.status()["late_rows"] == 0
    got = pa.Table.from_pylist([json.loads(v) for v in data.sh.fetch(name)["value"].to_pylist()])
    assert comparable("q12", got.select(["bidder", "bid_count"])) == comparable(
        "q12", reference(data.duck, "q12").select(["bidder", "bid_count"])
    )
    starts = pc.cast(pc.strptime(got["window_start"], "%Y-%m-%d %H:%M:%S", "ms"), pa.int64())
    ends = pc.cast(pc.strptime(got["window_end"], "%Y-%m-%d %H:%M:%S", "ms"), pa.int64())
    assert pc.all(pc.equal(pc.subtract(ends, starts), 1000)).as_py()
    assert all(start % 1000 == 0 for start in starts.to_pylist())  # aligned
    assert began - 1000 <= pc.min(starts).as_py() and pc.max(ends).as_py() <= ended + 1000

    session = f"""{BID_DDL};
{view}INSERT INTO par_proctime_session
SELECT bidder, count(*) AS n
FROM TABLE(SESSION(TABLE BP PARTITION BY bidder, DESCRIPTOR(p_time), INTERVAL '1' SECOND))
GROUP BY bidder, window_start, window_end;
"""
    path = _file(data, session, "par_proctime_session", "par_proctime_session")
    with pytest.raises(SqlError, match="in a TUMBLE, HOP or CUMULATE aggregate only"):
        _start(data, path, 2)


def test_processing_time_windows_rescaled_2_to_3(data: Data) -> None:
    """q12 stopped part way at parallelism 2 and run to the end at 3 (its window state moved by
    key group): every bid counted once, DuckDB's counts per bidder."""
    run = "par_rescale_q12"
    path = _file(data, nexmark_query("q12").path.read_text(), run, "nexmark_q12", 100)
    query = _start(data, path, 2).start()
    try:
        wait_for(lambda: query.status()["rows_in"] > 1000, timeout=120)
    finally:
        query.stop()
    assert query.error is None
    _start(data, path, 3).run_until_caught_up(final=True)
    got = pa.Table.from_pylist([json.loads(v) for v in data.sh.fetch(run)["value"].to_pylist()])
    columns = ["bidder", "bid_count"]
    want = reference(data.duck, "q12").select(columns)
    assert comparable("q12", got.select(columns)) == comparable("q12", want)
