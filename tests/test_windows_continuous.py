"""Continuous window queries: the final output equals DuckDB's batch answer over the same rows.

The invariant of the design: for any split of the input into micro-batches, any restart from a
checkpoint and any disorder within the declared watermark delay, the rows a continuous query
writes to its output topic (once the input ends, with the final watermark) equal the batch
answer. Hypothesis draws the events, the splits (``step(max_records=k)``), the restarts (the query
object is stopped and a new one of the same name resumes from its RocksDB checkpoint) and the
disorder. Also: late rows, the dead-letter topic, sessions merged by a bridging event, errors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from window_cases import oracle, rows_of, start_paused, to_ms, topic_rows

import streamhouse
from streamhouse import StreamHouse
from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.state.store import (
    ColumnFamily,
    StateBatch,
    StateStore,
    decode_table,
    key_hashes,
)
from streamhouse.windows import operator as window_operator

T0 = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC, in ms
SECOND = 1_000
COLUMNS = ["k", "window_start", "window_end", "n", "nd", "s", "a", "lo", "hi"]

STREAM = """CREATE STREAM ev (k STRING, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '{delay}' SECOND)
    WITH (topic = 'ev', format = 'json', partitions = '{partitions}')"""

SELECT = """INSERT INTO out
SELECT k, window_start, window_end, COUNT(*) AS n, COUNT(DISTINCT v) AS nd, SUM(v) AS s,
       AVG(v) AS a, MIN(v) AS lo, MAX(v) AS hi
FROM ev
GROUP BY k, {window}
{having}"""

WINDOWS = {  # kind -> (window call, size or gap ms, slide or step ms)
    "tumble": ("TUMBLING(t, INTERVAL '30' SECOND)", 30 * SECOND, None),
    "hop": ("HOP(t, INTERVAL '10' SECOND, INTERVAL '30' SECOND)", 30 * SECOND, 10 * SECOND),
    "cumulate": (
        "CUMULATE(t, INTERVAL '10' SECOND, INTERVAL '40' SECOND)",
        40 * SECOND,
        10 * SECOND,
    ),
    "session": ("SESSION(t, INTERVAL '8' SECOND)", 8 * SECOND, None),
}


@dataclass(frozen=True)
class Run:
    """One drawn scenario."""

    kind: str
    delay_s: int
    partitions: int
    events: list[tuple[str, int, int | None]]  # (key, event time ms, value) in produce order
    batch_sizes: list[int]  # max_records of successive steps, cycled until the input is read
    restarts: frozenset[int]  # restart from the checkpoint before these steps
    having: int | None  # HAVING COUNT(*) >= this


@st.composite
def runs(draw: st.DrawFn, kind: str, keys: str = "aab") -> Run:
    # Times on a 2 s grid (with a rare odd millisecond) so that events often fall exactly on
    # window bounds, session ends (gap 8 s) and the watermark.
    delay_s = draw(st.sampled_from([0, 4, 12]))
    n = draw(st.integers(0, 40))
    base = T0 + draw(st.integers(0, 29)) * 2 * SECOND
    lags = [*range(0, delay_s + 1, 2), delay_s, delay_s]  # often exactly the delay
    events = []
    for _ in range(n):
        base += draw(st.sampled_from([0, 0, 2, 4, 8, 10])) * SECOND
        base += draw(st.sampled_from([0] * 9 + [1]))
        # Disorder within the delay: an event is at most ``delay`` older than the newest before
        # it (``base`` never decreases and bounds every event time so far from above).
        lag = draw(st.sampled_from(lags)) * SECOND
        value = draw(st.one_of(st.none(), st.integers(-3, 9)))
        events.append((draw(st.sampled_from(keys)), base - lag, value))
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    restarts = draw(st.frozensets(st.integers(0, 20), max_size=3))
    having = draw(st.sampled_from([None, None, 1, 2, 3]))
    return Run(kind, delay_s, draw(st.sampled_from([1, 2])), events, sizes, restarts, having)


def run_continuously(root: Path, run: Run) -> tuple[list[tuple], dict]:
    """Produce the events, read them in ``run.batch_sizes`` steps with ``run.restarts``, then
    finish with the final watermark; the rows of the output topic and the last status."""
    window, _, _ = WINDOWS[run.kind]
    having = f"HAVING COUNT(*) >= {run.having}" if run.having is not None else ""
    sql = SELECT.format(window=window, having=having)
    with streamhouse.connect(root, linger_ms=1) as sh:
        sh.sql(STREAM.format(delay=run.delay_s, partitions=run.partitions))
        if run.events:
            sh.produce(
                "ev",
                [{"k": k, "t": t, "v": v} for k, t, v in run.events],
                key=[k for k, _, _ in run.events],
            )
        query = start_paused(sh, sql, "q")
        try:
            for step in range(len(run.events) + 2):
                if step in run.restarts:
                    query.stop()
                    query = start_paused(sh, sql, "q")
                if not query.step(max_records=run.batch_sizes[step % len(run.batch_sizes)]):
                    break
            query.run_until_caught_up(final=True)
            status = query.status()
        finally:
            query.stop()
        return rows_of(topic_rows(sh, "out"), COLUMNS), status


def expected(run: Run) -> list[tuple]:
    _, size, slide = WINDOWS[run.kind]
    having = f"HAVING COUNT(*) >= {run.having}" if run.having is not None else ""
    return oracle(run.events, run.kind, size, slide, having)


PROPERTY = settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# Boundaries random draws rarely hit together: an on-time event exactly at a session's end (last
# + gap) in the batch after the one whose watermark reached that end; events on window bounds.
BOUNDARY = [
    ("a", T0, 1),
    ("b", T0 + 8 * SECOND, 2),
    ("a", T0 + 8 * SECOND, 3),
    ("b", T0 + 30 * SECOND, 4),
    ("a", T0 + 40 * SECOND, None),
]


@pytest.mark.parametrize("kind", sorted(WINDOWS))
def test_output_equals_the_batch_answer(kind: str, tmp_path_factory: pytest.TempPathFactory):
    @PROPERTY
    @example(run=Run(kind, 0, 1, BOUNDARY, [2, 1], frozenset({2}), None))
    @given(run=runs(kind))
    def check(run: Run) -> None:
        got, status = run_continuously(tmp_path_factory.mktemp(kind), run)
        assert status["late_rows"] == 0 and status["rejected_rows"] == 0
        assert status["rows_in"] == len(run.events)
        assert got == expected(run)

    check()


@settings(PROPERTY, max_examples=25)
@given(run=runs("session", keys="aabcdefg"))
def test_session_state_split_into_buckets_and_runs_gives_the_batch_answer(
    run: Run, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Sessions placed as many keys would place them: buckets of two sessions (so state splits
    by key hash), runs never merged eagerly and merged size-tiered past two, so a key's
    sessions lie in several runs of a bucket until the watermark may close one of them."""
    limits = {"SPLIT_ROWS": 2, "EAGER_ROWS": 0, "MAX_RUNS": 2}
    saved = {name: getattr(window_operator, name) for name in limits}
    for name, value in limits.items():
        setattr(window_operator, name, value)
    try:
        got, status = run_continuously(tmp_path_factory.mktemp("buckets"), run)
    finally:
        for name, value in saved.items():
            setattr(window_operator, name, value)
    assert status["late_rows"] == 0 and status["rejected_rows"] == 0
    assert got == expected(run)


# -- fixed scenarios ---------------------------------------------------------------------------


@pytest.fixture
def sh(tmp_path: Path) -> Iterator[StreamHouse]:
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as conn:
        yield conn


def produce(sh: StreamHouse, events: list[tuple[str, int, int | None]]) -> None:
    sh.produce("ev", [{"k": k, "t": t, "v": v} for k, t, v in events])


THREE_SESSIONS = [("a", T0, 1), ("a", T0 + 12 * SECOND, 2), ("b", T0 + 12 * SECOND, 7)]


def three_open_sessions(sh: StreamHouse) -> tuple[str, ContinuousQuery]:
    """A paused session query (gap 8 s, delay 30 s) that has read :data:`THREE_SESSIONS`."""
    sh.sql(STREAM.format(delay=30, partitions=1))
    sql = SELECT.format(window=WINDOWS["session"][0], having="")
    query = start_paused(sh, sql, "q")
    produce(sh, THREE_SESSIONS)
    assert query.step()
    return sql, query


def test_a_bridging_event_in_a_later_batch_merges_two_sessions(sh: StreamHouse) -> None:
    sql, query = three_open_sessions(sh)
    try:
        assert query.status()["open_windows"] == 3  # a: two sessions (12 s > 8 s gap), b: one
        produce(sh, [("a", T0 + 6 * SECOND, 3)])  # 6 s from each of a's sessions
        assert query.step()
        assert query.status()["open_windows"] == 2
        query.stop()
        query = start_paused(sh, sql, "q")  # the merged session survives a restart
        produce(sh, [("a", T0 + 20 * SECOND, 4)])  # touches the merged session's end exactly
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    got = rows_of(topic_rows(sh, "out"), COLUMNS)
    assert got == rows_of(
        [
            {
                "k": "a",
                "window_start": T0,
                "window_end": T0 + 28 * SECOND,
                "n": 4,
                "nd": 4,
                "s": 10,
                "a": 2.5,
                "lo": 1,
                "hi": 4,
            },
            {
                "k": "b",
                "window_start": T0 + 12 * SECOND,
                "window_end": T0 + 20 * SECOND,
                "n": 1,
                "nd": 1,
                "s": 7,
                "a": 7.0,
                "lo": 7,
                "hi": 7,
            },
        ],
        COLUMNS,
    )
    events = [*THREE_SESSIONS, ("a", T0 + 6 * SECOND, 3), ("a", T0 + 20 * SECOND, 4)]
    assert got == oracle(events, "session", 8 * SECOND)


def test_sessions_without_a_group_key_stay_in_one_bucket(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are what buckets split: with no GROUP BY key every session would land in the same
    half, so state is never split (nor rewritten in vain), however many sessions are open."""
    monkeypatch.setattr(window_operator, "SPLIT_ROWS", 0)
    sh.sql(STREAM.format(delay=30, partitions=1))
    sql = """INSERT INTO out SELECT window_start, window_end, COUNT(*) AS n
        FROM ev GROUP BY SESSION(t, INTERVAL '8' SECOND)"""
    query = start_paused(sh, sql, "q")
    try:
        produce(sh, [("a", T0, 1), ("b", T0 + 20 * SECOND, 2), ("a", T0 + 40 * SECOND, 3)])
        assert query.step()
        assert query.operator.executor.depth == 0
        assert query.status()["open_windows"] == 2  # the watermark, T0 + 10 s, closed the first
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    got = sorted((r["n"], to_ms(r["window_start"])) for r in topic_rows(sh, "out"))
    assert got == [(1, T0), (1, T0 + 20 * SECOND), (1, T0 + 40 * SECOND)]


def test_sessions_close_only_when_the_watermark_passes_their_end(sh: StreamHouse) -> None:
    """An event exactly ``gap`` after a session's last one extends it (as in the batch answer),
    so a session whose end equals the watermark must stay open."""
    sh.sql(STREAM.format(delay=0, partitions=1))
    query = start_paused(sh, SELECT.format(window=WINDOWS["session"][0], having=""), "q")
    try:
        produce(sh, [("a", T0, 1), ("b", T0 + 8 * SECOND, 1)])  # watermark: T0 + 8 s = a's end
        query.run_until_caught_up()
        produce(sh, [("a", T0 + 8 * SECOND, 2)])  # on time (not before the watermark)
        query.run_until_caught_up(final=True)
        assert query.status()["late_rows"] == 0
    finally:
        query.stop()
    events = [("a", T0, 1), ("b", T0 + 8 * SECOND, 1), ("a", T0 + 8 * SECOND, 2)]
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(events, "session", 8 * SECOND)


def tumbling(sh: StreamHouse, options: dict[str, str] | None = None):
    sh.sql(STREAM.format(delay=0, partitions=1))
    sql = SELECT.format(window=WINDOWS["tumble"][0], having="")
    return start_paused(sh, sql, "q", options)


ON_TIME = [("a", T0 + 1 * SECOND, 1), ("a", T0 + 45 * SECOND, 2)]  # watermark -> T0 + 45 s
LATE = [("a", T0 + 5 * SECOND, 3)]  # its window [T0, T0 + 30 s) closed at T0 + 30 s


def test_late_rows_are_dropped_and_counted_by_default(sh: StreamHouse) -> None:
    query = tumbling(sh)
    try:
        produce(sh, ON_TIME)
        query.run_until_caught_up()
        assert len(topic_rows(sh, "out")) == 1  # [T0, T0 + 30 s) closed
        produce(sh, LATE)
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    assert status["late_rows"] == 1
    assert status["rows_in"] == 3
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(ON_TIME, "tumble", 30 * SECOND)


def test_late_rows_go_to_the_side_output_topic(sh: StreamHouse) -> None:
    query = tumbling(sh, {"late-rows.topic": "ev-late"})
    try:
        produce(sh, ON_TIME)
        query.run_until_caught_up()
        produce(sh, LATE)
        query.run_until_caught_up(final=True)
        assert query.status()["late_rows"] == 1
    finally:
        query.stop()
    late = topic_rows(sh, "ev-late")
    assert [(r["k"], r["v"]) for r in late] == [("a", 3)]
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(ON_TIME, "tumble", 30 * SECOND)


def test_allowed_lateness_includes_late_rows(sh: StreamHouse) -> None:
    sh.sql(STREAM.format(delay=0, partitions=1))
    sql = "SET 'allowed-lateness' = '20 s';\n" + SELECT.format(
        window=WINDOWS["tumble"][0], having=""
    )
    query = start_paused(sh, sql, "q")
    try:
        produce(sh, ON_TIME)
        query.run_until_caught_up()
        assert topic_rows(sh, "out") == []  # held until T0 + 30 s + 20 s
        produce(sh, LATE)
        query.run_until_caught_up()
        produce(sh, [("b", T0 + 70 * SECOND, 5)])  # watermark T0 + 70 s: the late window closes
        query.run_until_caught_up()
        assert len(topic_rows(sh, "out")) == 1
        produce(sh, [("b", T0 + 2 * SECOND, 9)])  # past end + allowed lateness: dropped
        query.run_until_caught_up(final=True)
        assert query.status()["late_rows"] == 1
    finally:
        query.stop()
    kept = [*ON_TIME, *LATE, ("b", T0 + 70 * SECOND, 5)]
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(kept, "tumble", 30 * SECOND)


def test_rows_that_do_not_parse_go_to_the_dead_letter_topic(sh: StreamHouse) -> None:
    sh.sql(STREAM.format(delay=0, partitions=1))
    query = sh.start(SELECT.format(window=WINDOWS["tumble"][0], having=""), name="clicks")
    try:
        sh.produce("ev", [b"{not json", {"k": "a", "t": T0, "v": 1}, {"k": "a", "t": "soon"}])
        sh.produce("ev", [{"k": "a", "t": T0 + SECOND, "v": 2}])
        query.run_until_caught_up(final=True)
        status = query.status()
    finally:
        query.stop()
    assert status["state"] == "running" and status["error"] is None  # it kept going
    assert status["rejected_rows"] == 2
    dead = sh.fetch("clicks.dlq")
    values = dead["value"].to_pylist()
    assert values[0] == b"{not json"
    assert json.loads(values[1]) == {"k": "a", "t": "soon"}
    assert len(values) == 2
    for headers in dead["headers"].to_pylist():
        named = {h["key"]: h["value"] for h in headers}
        assert named["reason"], headers
        assert named["topic"] == b"ev"
    good = [("a", T0, 1), ("a", T0 + SECOND, 2)]
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(good, "tumble", 30 * SECOND)


# -- bad input: a clear error with a position, before anything runs ---------------------------

BAD = [
    pytest.param(
        "SELECT k, COUNT(*) AS n FROM ev\nGROUP BY k, TUMBLING(nope, INTERVAL '1' MINUTE)",
        "nope",
        id="unknown-time-column",
    ),
    pytest.param(
        "SELECT k, COUNT(*) AS n, SUM(nope) AS s FROM ev\nGROUP BY k, TUMBLING(t, INTERVAL '1' MINUTE)",
        "nope",
        id="unknown-column",
    ),
    pytest.param(
        "SELECT COUNT(*) AS n FROM ev\nGROUP BY TUMBLING(k, INTERVAL '1' MINUTE)",
        "TIMESTAMP",
        id="window-on-a-string",
    ),
    pytest.param(
        "SELECT COUNT(*) AS n FROM ev\nGROUP BY HOP(t, INTERVAL '7' SECOND, INTERVAL '30' SECOND)",
        "multiple",
        id="hop-size-not-a-multiple",
    ),
    pytest.param(
        "SELECT k, COUNT(*) AS n FROM ev\nGROUP BY k, TUMBLING(t, INTERVAL '1' MINUTE) LIMIT 3",
        "LIMIT",
        id="limit",
    ),
    pytest.param(
        "SELECT * FROM ev\nUNION SELECT * FROM ev",
        "names its columns",
        id="union-distinct",
    ),
    pytest.param(
        "SELECT k, STDDEV(v) AS sd FROM ev\nGROUP BY k, SESSION(t, INTERVAL '1' MINUTE)",
        "STDDEV",
        id="unsupported-aggregate",
    ),
    pytest.param(
        "SELECT k, window_start, COUNT(*) AS n\n"
        "FROM TABLE(SESSION(TABLE ev, DESCRIPTOR(t), INTERVAL '1' MINUTE))\n"
        "GROUP BY k, window_start, window_end",
        "PARTITION BY",
        id="session-keys-without-partition-by",
    ),
    pytest.param(
        "SELECT k, v, COUNT(*) AS n FROM ev\nGROUP BY k, TUMBLING(t, INTERVAL '1' MINUTE)",
        "GROUP BY",
        id="column-not-grouped",
    ),
]


@pytest.mark.parametrize(("sql", "words"), BAD)
def test_bad_continuous_queries_fail_before_running(sh: StreamHouse, sql: str, words: str) -> None:
    sh.sql(STREAM.format(delay=0, partitions=1))
    produce(sh, [("a", T0, 1)])
    with pytest.raises(SqlError) as info:
        sh.start(sql, name="bad")
    assert words.lower() in str(info.value).lower()
    assert info.value.line is not None and info.value.column is not None, str(info.value)
    assert sh.log.get_topic("bad.dlq") is None
    assert not sh._queries


def test_a_plain_topic_is_read_with_the_schema_of_its_first_values(sh: StreamHouse) -> None:
    """No CREATE STREAM: the first micro-batch's values give the schema; later ones use it.
    A topic whose values are not JSON objects stops the query with an error saying so."""
    sh.create_topic("raw", partitions=1)
    sh.produce("raw", [{"k": "a", "v": 1}, {"k": "b", "v": 2}])
    query = start_paused(sh, "INSERT INTO raw_out SELECT k, v FROM raw WHERE v > 1", "raw")
    try:
        query.run_until_caught_up()
        sh.produce("raw", [{"k": "c", "v": 3}, {"k": "d", "v": 0}])
        query.run_until_caught_up()
    finally:
        query.stop()
    assert rows_of(topic_rows(sh, "raw_out"), ("k", "v")) == [("b", 2), ("c", 3)]

    sh.create_topic("text", partitions=1)
    sh.produce("text", [b"plain words", b"more words"])
    query = start_paused(sh, "INSERT INTO text_out SELECT * FROM text", "text")
    try:
        with pytest.raises(StreamHouseError, match="topic 'text' does not hold JSON objects"):
            query.step()
    finally:
        query.stop()


# -- session buckets split a few at a time ------------------------------------------------------

SPLIT_GAP = "SESSION(t, INTERVAL '8' SECOND)"
SPLIT_KEYS = 3_000
"""Keys of the split tests, one event each, all open (one gap apart at most) until the end."""


def split_events() -> list[tuple[str, int, int | None]]:
    return [(f"key{i:05d}", T0 + i, i % 7) for i in range(SPLIT_KEYS)]


def stored_buckets(query: ContinuousQuery) -> dict[tuple[int, int], list[tuple]]:
    """(depth, bucket) -> the group keys of its stored runs, read back from RocksDB; every key
    checked to lie in its bucket (its hash's low ``depth`` bits)."""
    store = query.operator.executor.store
    found: dict[tuple[int, int], list[tuple]] = {}
    for key, value in store.items(ColumnFamily.SESSIONS, window_operator.SESSIONS_KEY):
        if not key.startswith(window_operator.SESSIONS_KEY):
            break
        depth, bucket, _ = window_operator._SESSION_RUN.unpack(key[4:])
        table = decode_table(value)
        hashes = key_hashes(table, ["__k0"])
        assert hashes is not None
        assert ((hashes & np.uint64((1 << depth) - 1)) == bucket).all(), (depth, bucket)
        found.setdefault((depth, bucket), []).extend(table["__k0"].to_pylist())
    return found


def test_session_buckets_split_one_at_a_time_in_bounded_write_batches(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buckets of 64 sessions (runs never merged eagerly, as in buckets past EAGER_ROWS): state
    splits bucket by bucket as keys arrive (linear hashing), so no micro-batch's write batch
    holds a rewrite of the whole state (the former split of every bucket at once wrote half the
    final state in one batch); a restart, often in the middle of a round of splits, finds the
    same buckets; the answer is DuckDB's."""
    monkeypatch.setattr(window_operator, "SPLIT_ROWS", 64)
    monkeypatch.setattr(window_operator, "EAGER_ROWS", 0)
    written: list[int] = []
    commit = StateStore.commit

    def measured(self: StateStore, batch: StateBatch, sync: bool = True) -> None:
        written.append(batch.write_batch.size_in_bytes())
        commit(self, batch, sync)

    monkeypatch.setattr(StateStore, "commit", measured)
    events = split_events()
    sh.sql(STREAM.format(delay=0, partitions=1))
    produce(sh, events)
    sql = SELECT.format(window=SPLIT_GAP, having="")
    query = start_paused(sh, sql, "q")
    layouts, state_bytes, while_open = set(), 0, []
    try:
        for step in range(40):
            if not query.step(max_records=150):
                break
            executor = query.operator.executor
            layout = (executor.depth, executor.split)
            layouts.add(layout)
            if step % 3 == 2:  # restarts: the same buckets and split point from RocksDB
                buckets = stored_buckets(query)
                query.stop()
                query = start_paused(sh, sql, "q")
                executor = query.operator.executor
                assert (executor.depth, executor.split) == layout
                assert stored_buckets(query) == buckets
        buckets = stored_buckets(query)
        assert sorted(k for keys in buckets.values() for k in keys) == [k for k, _, _ in events]
        state_bytes = sum(len(v) for _, v in query.operator.executor.store.items("sessions"))
        while_open = list(written)
        query.run_until_caught_up(final=True)
    finally:
        query.stop()
    assert len({d for d, _ in layouts}) >= 4 and any(p for _, p in layouts)  # split mid-round
    assert max(while_open) < state_bytes / 4, (while_open, state_bytes)
    assert rows_of(topic_rows(sh, "out"), COLUMNS) == oracle(events, "session", 8 * SECOND)


SPLIT_CHILD = """
import json, os, signal, sys
import streamhouse
from streamhouse.windows import operator as window_operator
sys.path.insert(0, sys.argv[3])
from window_cases import start_paused

window_operator.SPLIT_ROWS, window_operator.EAGER_ROWS = 64, 0
split_next = window_operator.SessionOperator._split_next
splits = {"n": 0, "armed": False}

def dying(self, batch):  # killed -9 in the second split of a micro-batch, its first one staged
    splits["n"] += 1
    if splits["armed"] and splits["n"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return split_next(self, batch)

window_operator.SessionOperator._split_next = dying
with streamhouse.connect(sys.argv[1], linger_ms=1) as sh:
    query = start_paused(sh, sys.argv[2], "q")
    for step in range(60):
        splits["n"], splits["armed"] = 0, step >= 8
        if not query.step(max_records=150):
            break
        executor = query.operator.executor
        print(json.dumps([executor.depth, executor.split, query.status()["rows_in"]]), flush=True)
"""


def test_a_kill_in_the_middle_of_a_split_resumes_from_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed -9 after one bucket of a micro-batch split and before the next: the
    query resumes from the checkpoint before that micro-batch (its buckets and split point, every
    key once), splits on, and answers as DuckDB does."""
    monkeypatch.setattr(window_operator, "SPLIT_ROWS", 64)
    monkeypatch.setattr(window_operator, "EAGER_ROWS", 0)
    events = split_events()
    sql = SELECT.format(window=SPLIT_GAP, having="")
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        sh.sql(STREAM.format(delay=0, partitions=1))
        produce(sh, events)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            SPLIT_CHILD,
            str(tmp_path / "data"),
            sql,
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    depth, split, rows_in = json.loads(child.stdout.splitlines()[-1])
    assert 0 < rows_in < SPLIT_KEYS
    with streamhouse.connect(tmp_path / "data", linger_ms=1) as sh:
        query = start_paused(sh, sql, "q")
        try:
            executor = query.operator.executor
            assert (executor.depth, executor.split, query.status()["rows_in"]) == (
                depth,
                split,
                rows_in,
            )
            held = sorted(k for keys in stored_buckets(query).values() for k in keys)
            assert held == sorted(k for k, _, _ in events[:rows_in])
            query.run_until_caught_up(final=True)
            assert query.status()["rows_in"] == SPLIT_KEYS
        finally:
            query.stop()
        got = rows_of(topic_rows(sh, "out"), COLUMNS)
    assert got == oracle(events, "session", 8 * SECOND)
