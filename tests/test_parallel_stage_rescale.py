"""Rescaling a query of two stages (Nexmark q4; :mod:`streamhouse.runtime.stage_rescale`): both
stages' state moves by key group from the last checkpoint, the second exchange drained first.

- q4 run part way at parallelism 2 (task 1 frozen from the start, then killed -9 in the stop,
  so both exchanges hold records for it that the drains must take), restarted at 3 (task 2
  killed -9 mid-run and restarted from its checkpoint) and stopped, then run to the end at 1:
  the sink holds DuckDB's answer and an uninterrupted run's, every source record was read once,
  and only the state at parallelism 1 is left.
- The launcher killed -9 inside the rescale, after the first stages' state was moved and before
  the second stages' was: the old state is left whole, and the next start moves it again; the
  answer is DuckDB's, every source record read once.
- Hypothesis over the parallelisms (2 or 3, then two changes among 1, 2, 3), the stops and the
  micro-batch size.
- An aggregate of an aggregate of one stream (its inner groups moved by their own group keys)
  run to the end at 3 over half the input, then at 2 over the rest: DuckDB's answer.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
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
from parallel_cases import freeze, launched, nested_aggregate_answer, wait_for

import streamhouse
from benchmarks.nexmark import NexmarkConfig, generate_tables, load, nexmark_query
from streamhouse.runtime.exchange import stage_topic
from streamhouse.runtime.parallel import ParallelQuery
from streamhouse.runtime.query import PENDING
from streamhouse.runtime.stages import SEQUENCE
from streamhouse.state.store import ColumnFamily, StateStore

CONFIG = NexmarkConfig.for_bids(1_500, events_per_second=200, seed=7)
READ = CONFIG.counts()["auction"] + CONFIG.counts()["bid"]
"""Every source record q4 reads (auctions and bids), each once over all its runs."""


@dataclass
class Data:
    sh: streamhouse.StreamHouse
    duck: duckdb.DuckDBPyConnection
    directory: Path

    @property
    def queries(self) -> Path:
        return self.sh.settings.data_dir / "queries"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Data]:
    directory = tmp_path_factory.mktemp("stage_rescale")
    sh = streamhouse.connect(directory / "data", linger_ms=1)
    load(sh, CONFIG, partitions=3)
    try:
        yield Data(sh, connect(generate_tables(CONFIG)), directory)
    finally:
        sh.close()


def _file(data: Data, name: str, batch: int = 100) -> Path:
    """q4 sinking into ``name``, in micro-batches of ``batch`` records."""
    path = data.directory / f"{name}.sql"
    text = nexmark_query("q4").path.read_text().replace("INTO nexmark_q4", f"INTO {name}")
    sets = f"SET 'max-batch-records' = '{batch}';\nSET 'poll-interval' = '20 ms';\n"
    path.write_text(sets + text)
    return path


def _start(data: Data, path: Path, parallelism: int) -> ParallelQuery:
    query = launched(data.sh, path, parallelism)
    assert isinstance(query, ParallelQuery)
    return query


def _latest_rows(data: Data, topic: str) -> list[dict]:
    """The latest row of each record key in sink ``topic`` (tombstones dropped)."""
    frame = data.sh.fetch(topic).to_pandas().drop_duplicates(subset=["key"], keep="last")
    return [json.loads(v) for v in frame["value"] if v is not None]


def _latest(data: Data, topic: str) -> list[tuple]:
    """q4's latest rows in sink ``topic``, comparable."""
    got = pa.Table.from_pylist(_latest_rows(data, topic))
    return comparable("q4", got.rename_columns(["category", "avg"]))


def _want(data: Data) -> list[tuple]:
    want = reference(data.duck, "q4")
    assert want.num_rows > 3
    return comparable("q4", want.rename_columns(["category", "avg"]))


def _to_the_end(data: Data, path: Path, parallelism: int) -> dict:
    query = _start(data, path, parallelism)
    query.run_until_caught_up(final=True)
    status = query.status()
    assert status["watermark"] == "end of input", status
    return status


def _stop_frozen(query: ParallelQuery, frozen: subprocess.Popen) -> None:
    """Stop ``query``, whose task 1 is ``frozen`` (SIGSTOP): task 0 ends (SIGTERM) after its
    micro-batch, the frozen one is killed -9."""
    stopping = threading.Thread(target=query.stop)
    stopping.start()
    wait_for(lambda: query.processes[0].poll() is not None, timeout=120)
    frozen.kill()
    stopping.join()


def test_q4_rescaled_2_to_3_to_1_equals_duckdb_and_an_uninterrupted_run(
    data: Data, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "streamhouse.runtime")
    name = "q4_rescaled"
    path = _file(data, name)
    query = _start(data, path, 2).start()
    frozen = query.processes[1]
    freeze(frozen.pid, data.sh.settings.data_dir / "metadata.sqlite3")
    try:  # task 0 reads partitions 0 and 2: two thirds of the records
        wait_for(lambda: query.status()["tasks"][0].get("rows_in", 0) > READ // 3, timeout=120)
    finally:
        _stop_frozen(query, frozen)
    assert not (data.queries / f"{name}.p3").exists()

    query = _start(data, path, 3)  # the state moved from 2 to 3 tasks
    assert "q4_rescaled: draining its 2 tasks (stages)" in caplog.text
    assert "q4_rescaled: draining its 2 tasks (consumers)" in caplog.text
    assert "state moved from 2 to 3 tasks" in caplog.text
    assert [p.name for p in data.queries.glob(f"{name}.p*")] == [f"{name}.p3"]
    assert {p.name for p in (data.queries / f"{name}.p3").iterdir() if p.is_dir()} >= {
        *(f"task-{t}" for t in range(3)),
        *(f"stage2-{t}" for t in range(3)),
    }
    query.start()
    try:
        wait_for(lambda: query.status()["rows_in"] > READ // 2, timeout=120)
        query.processes[2].kill()  # mid-run at the new parallelism: both its stages at once
        wait_for(lambda: query.status()["restarts"] == 1, timeout=120)
        wait_for(lambda: query.status()["rows_in"] > READ * 2 // 3, timeout=120)
    finally:
        query.stop()
    assert query.error is None

    status = _to_the_end(data, path, 1)  # from 3 tasks to 1
    assert status["rows_in"] == READ  # nothing read twice, nothing skipped
    assert [p.name for p in data.queries.glob(f"{name}.p*")] == [f"{name}.p1"]
    got = _latest(data, name)
    assert got == _want(data)

    whole = "q4_uninterrupted"
    _to_the_end(data, _file(data, whole), 2)
    assert got == _latest(data, whole)


def _entries(path: Path) -> int:
    """How many operator state entries the task store at ``path`` holds."""
    store = StateStore(path)
    try:
        families = (ColumnFamily.WINDOWS, ColumnFamily.SESSIONS, ColumnFamily.JOINS)
        return sum(1 for family in families for _ in store.items(family))
    finally:
        store.close()


CRASH = """
import os, signal, sys
from pathlib import Path
import streamhouse
from streamhouse.runtime import stage_rescale
from streamhouse.runtime.launch import start_query

def killed(*args, **kwargs):  # the first stages' state is moved, the second stages' is not
    os.kill(os.getpid(), signal.SIGKILL)

stage_rescale.move_second_stage = killed
sh = streamhouse.connect(Path(sys.argv[1]), linger_ms=1)
start_query(sh.engine, Path(sys.argv[2]), state_root=Path(sys.argv[1]) / "queries",
            options={"parallelism": 3}, start=False)
"""


def test_a_launcher_killed_inside_the_rescale_leaves_the_old_state(data: Data) -> None:
    name = "q4_crashed"
    path = _file(data, name)
    query = _start(data, path, 2).start()
    try:
        wait_for(lambda: query.status()["rows_in"] > READ // 3, timeout=120)
        query.processes[1].kill()  # just before the stop: work left for the drains
    finally:
        query.stop()

    launcher = subprocess.run(
        [sys.executable, "-c", CRASH, str(data.sh.settings.data_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert launcher.returncode == -9, launcher.stderr
    staging = data.queries / f"{name}.p3.rescaling"
    assert _entries(staging / "task-0") > 0 and _entries(staging / "stage2-0") == 0
    assert (data.queries / f"{name}.p2").is_dir() and not (data.queries / f"{name}.p3").exists()

    query = _start(data, path, 3)  # the rescale again, from the old state
    assert not staging.exists()
    assert [p.name for p in data.queries.glob(f"{name}.p*")] == [f"{name}.p3"]
    status = _to_the_end(data, path, 3)
    assert status["rows_in"] == READ  # nothing read twice, nothing skipped
    assert _latest(data, name) == _want(data)


def test_first_stage_progress_of_its_own_under_stage_is_not_compared_between_tasks(
    data: Data,
) -> None:
    """A first stage's own progress under ``stage/`` differs between its tasks by nature (its
    sequence; the agents' build also records the offsets of the records it sent there,
    ``stage/sent_at``): a state holding such an entry rescales, as one from this build does,
    instead of refusing as if the drained tasks disagreed. DuckDB's answer, every record read
    once."""
    name = "q4_own_progress"
    path = _file(data, name)
    query = _start(data, path, 2).start()
    try:
        wait_for(lambda: query.status()["rows_in"] > READ // 3, timeout=120)
    finally:
        query.stop()
    for task in range(2):  # as the agents' build leaves it: each task's own offsets
        store = StateStore(data.queries / f"{name}.p2" / f"task-{task}")
        try:
            batch = store.batch()
            batch.put_json(b"stage/sent_at", {"0": 10 + task, "1": 20 + task})
            store.commit(batch)
        finally:
            store.close()

    query = _start(data, path, 3)  # moved, its tasks not started yet
    for task in range(3):  # the old tasks' offsets are no new task's
        store = StateStore(data.queries / f"{name}.p3" / f"task-{task}")
        try:
            assert store.get_json(b"stage/sent_at") is None
        finally:
            store.close()
    query.run_until_caught_up(final=True)
    assert query.status()["rows_in"] == READ  # nothing read twice, nothing skipped
    assert _latest(data, name) == _want(data)


PARTIAL_HOOK = """
import os, time
from pathlib import Path

mark = os.environ.get("STAGE_PARTIAL_MARK")
if mark:
    from streamhouse.runtime import stages

    appended = stages.append_shares

    def partial(log_, topic, parallelism, rows, shares, key, *args, **kwargs):
        task, sequence = (int(x) for x in key.split(b":")[:2])
        Path(f"{mark}.pid{task}").write_text(str(os.getpid()))
        if task == 1 and sequence >= 3 and not Path(mark).exists():
            appended(log_, topic, 1, rows, shares, key, *args, **kwargs)  # partition 0 only
            Path(mark).write_text(f"{os.getpid()} {sequence}")
            while True:  # hung before the rest of its append (killed -9 by the test)
                time.sleep(60)
        return appended(log_, topic, parallelism, rows, shares, key, *args, **kwargs)

    stages.append_shares = partial
"""

PARTIAL_LAUNCHER = """
import os, signal, sys, time
from pathlib import Path
import streamhouse
from streamhouse.runtime.launch import start_query

sh = streamhouse.connect(Path(sys.argv[1]), linger_ms=1)
start_query(sh.engine, Path(sys.argv[2]), state_root=Path(sys.argv[1]) / "queries",
            options={"parallelism": 2})
mark = Path(os.environ["STAGE_PARTIAL_MARK"])
while not mark.exists():
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)  # the launcher too: no restart finishes the batch
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


def test_a_first_stage_killed_mid_append_is_replayed_by_the_drain(data: Data) -> None:
    """A first stage killed -9 after its micro-batch's record reached partition 0 of the second
    exchange and before partition 1 (and before its commit), its launcher killed too: the
    rescale 2 -> 3 replays the batch from its intent (partition 0 gets it again, skipped by its
    sequence; partition 1 gets it once) before the second stages drain. DuckDB's answer, every
    source record read once."""
    name = "q4_partial"
    path = _file(data, name, 50)
    hook = data.directory / "partial_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PARTIAL_HOOK)
    mark = data.directory / "partial.mark"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH")) if p)
    env["STAGE_PARTIAL_MARK"] = str(mark)
    output = data.directory / "partial.log"  # a file: the hung task keeps a pipe open
    with output.open("w") as stderr:
        launcher = subprocess.Popen(
            [sys.executable, "-c", PARTIAL_LAUNCHER, str(data.sh.settings.data_dir), str(path)],
            stdout=stderr,
            stderr=stderr,
            env=env,
        )
        try:
            assert launcher.wait(timeout=300) == -9, output.read_text()
        finally:
            launcher.kill()
            if mark.exists():  # the hung task, whatever happened
                os.kill(int(mark.read_text().split()[0]), signal.SIGKILL)
    sequence = int(mark.read_text().split()[1])
    pids = [int(Path(f"{mark}.pid{task}").read_text()) for task in range(2)]
    wait_for(lambda: all(_gone(p) for p in pids), timeout=120)  # task 0: SIGTERM, its batch

    root = data.queries / f"{name}.p2"
    store = StateStore(root / "task-1")
    try:  # the batch half sent: its intent pending, its sequence not committed
        assert store.get_json(PENDING) is not None
        assert (store.get_int(SEQUENCE) or 0) == sequence - 1
    finally:
        store.close()
    sent = data.sh.fetch(stage_topic(name), isolation_level="read_uncommitted")
    keyed = sent.filter(pc.starts_with(sent["key"].cast(pa.string()), f"1:{sequence}:"))
    assert keyed["partition"].to_pylist() == [0]

    query = _start(data, path, 3)
    sent = data.sh.fetch(stage_topic(name), isolation_level="read_uncommitted")
    keyed = sent.filter(pc.starts_with(sent["key"].cast(pa.string()), f"1:{sequence}:"))
    assert sorted(keyed["partition"].to_pylist()) == [0, 0, 1]  # the replay: to both
    query.run_until_caught_up(final=True)
    assert query.status()["rows_in"] == READ  # nothing read twice, nothing skipped
    assert _latest(data, name) == _want(data)


NESTED = """CREATE STREAM IF NOT EXISTS ev (k BIGINT, g BIGINT, t TIMESTAMP(3), v BIGINT,
    WATERMARK FOR t AS t - INTERVAL '1' SECOND) WITH (topic = 'ev', format = 'json');
SET 'max-batch-records' = '150';
INSERT INTO nested_rescaled
SELECT g, SUM(top) AS total, COUNT(*) AS n
FROM (SELECT k, g, MAX(v) AS top FROM ev GROUP BY k, g) Q
GROUP BY g;
"""


def test_an_aggregate_of_an_aggregate_of_a_stream_rescaled_3_to_2(data: Data) -> None:
    """Per group g, the sum and count of the highest v per (k, g), over one stream (its inner
    groups routed by (k, g), moved by those group keys): run at 3 to the end of the first half
    of the input, then at 2 to the end of the second: DuckDB's answer, every record read once."""
    sh = data.sh
    sh.create_topic("ev", 3)
    rng = random.Random(5)
    rows = [
        {"k": rng.randrange(60), "g": rng.randrange(9), "t": 1_767_225_600_000 + i, "v": i}
        for i in range(2_000)
    ]
    path = data.directory / "nested.sql"
    path.write_text(NESTED)

    def produce(part: list[dict]) -> None:
        for start in range(0, len(part), 250):
            chunk = part[start : start + 250]
            sh.produce("ev", chunk, timestamp=[r["t"] for r in chunk], partition=rng.randrange(3))

    produce(rows[:1_000])
    _to_the_end(data, path, 3)
    produce(rows[1_000:])
    status = _to_the_end(data, path, 2)
    assert status["rows_in"] == len(rows)
    got = [(r["g"], r["total"], r["n"]) for r in _latest_rows(data, "nested_rescaled")]
    want = [tuple(r.values()) for r in nested_aggregate_answer(rows).to_pylist()]
    assert len(want) == 9
    assert sorted(got) == sorted(want)


_runs = itertools.count()


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    parallelisms=st.tuples(
        st.sampled_from([2, 3]), st.sampled_from([1, 2, 3]), st.sampled_from([1, 2, 3])
    ).filter(lambda p: p[0] != p[1] != p[2]),  # (at 1 first it is no parallel query)
    stops=st.lists(st.floats(0.1, 0.9), min_size=2, max_size=2).map(sorted),
    batch=st.integers(30, 400),
)
def test_q4_rescaled_at_any_split_points(
    data: Data, parallelisms: tuple[int, int, int], stops: list[float], batch: int
) -> None:
    """Hypothesis over the parallelisms, the points the query is stopped at and its micro-batch
    size: run at the first parallelism to the first stop, the second to the second, the third
    to the end: DuckDB's answer, every source record read once."""
    name = f"q4_split{next(_runs)}"
    path = _file(data, name, batch)
    for parallelism, fraction in zip(parallelisms, stops, strict=False):
        query = _start(data, path, parallelism).start()
        try:
            wait_for(lambda q=query, n=READ * fraction: q.status()["rows_in"] >= n, 120)  # type: ignore[misc]
        finally:
            query.stop()
        assert query.error is None
    assert _to_the_end(data, path, parallelisms[-1])["rows_in"] == READ
    assert _latest(data, name) == _want(data)
