"""Tasks of a parallel query on agents (issue 16 item 6): each task a lease of its own, spread
over the live agents; kill -9 of an agent moves its task to another, which resumes it from the
task's checkpoint in the object store, and every window is written exactly once (DuckDB's
answer)."""

from __future__ import annotations

import json
import logging
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer
from kafka_fixtures import KafkaServer
from test_query_failover import (
    Cluster,
    _events,
    _exactly_once,
    _expected,
    _minute,
    _produce,
    _until,
    _windows,
    running_cluster,
)

import streamhouse
from streamhouse.cli import main as cli
from streamhouse.errors import FencedError, SqlError
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.agent_rescale import (
    current_parallelism,
    delete_moved,
    rescale_lease_name,
    rescale_on_agents,
)
from streamhouse.runtime.launch import QueryFile
from streamhouse.runtime.placement import AgentTask, parallelism_of, share, task_lease_name
from streamhouse.runtime.supervisor import QuerySupervisor

PARALLELISM = 2


@pytest.fixture(params=["local"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    with running_cluster(request, tmp_path, postgres_url, 4, PARALLELISM) as made:
        yield made


def _holders(cluster: Cluster) -> dict[int, tuple[KafkaServer, int]]:
    """Task -> (the agent holding its live lease, the lease's epoch)."""
    ports = {a.agent_id: a.port for a in cluster.md.list_agents()}
    held = {}
    for task in range(PARALLELISM):
        for lease in cluster.md.list_leases(task_lease_name("clicks", task)):
            if lease.live and lease.holder in ports:
                agent = next(s for s in cluster.agents if s.port == ports[lease.holder])
                held[task] = (agent, lease.epoch)
    return held


def _until_held(
    cluster: Cluster, by: KafkaServer | None = None, timeout: float = 30.0
) -> dict[int, tuple[KafkaServer, int]]:
    """Every task held: by agent ``by`` alone, else by as many agents as there are tasks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _holders(cluster)
        agents = {agent.port for agent, _ in held.values()}
        wanted = {by.port} if by is not None else agents
        if (
            len(held) == PARALLELISM
            and agents == wanted
            and len(agents) == (1 if by is not None else PARALLELISM)
        ):
            return held
        time.sleep(0.1)
    logs = "\n".join(a.log(30) for a in cluster.agents)
    raise AssertionError(f"tasks not held as wanted within {timeout}s: {held}\n{logs}")


def _task_table(cluster: Cluster, timeout: float = 20.0) -> list[list[str]]:
    """The tasks' rows of ``cluster status`` (cells stripped), once every task's holder wrote
    its progress (a new holder's row is empty until it did)."""
    deadline = time.monotonic() + timeout
    while True:
        status = CliRunner().invoke(
            cli,
            ["--data-dir", str(cluster.data), "cluster", "status", "--metadata", cluster.url],
            env={"COLUMNS": "400"},
        )
        assert status.exit_code == 0, status.output
        rows = [
            [cell.strip() for cell in line.split("│")[1:-1]]
            for line in status.output.splitlines()
            if "│ clicks " in line
        ]
        assert len(rows) == PARALLELISM, status.output  # a row per task, the tasks' table
        if all(row[5] != "NULL" for row in rows):  # offsets
            return rows
        assert time.monotonic() < deadline, status.output
        time.sleep(0.2)


def test_share() -> None:
    assert [share(2, n) for n in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert share(3, 2) == 2


def test_a_killed_agents_task_moves_to_another_and_resumes_exactly_once(
    cluster: Cluster,
) -> None:
    agents = [cluster.start_agent() for _ in range(PARALLELISM)]
    before = _until_held(cluster)  # one task on each agent
    produced = _events(range(0, 600))
    _produce(agents[0].bootstrap, produced)
    cluster.wait_for(lambda rows: _minute(rows, 8))  # minutes 0-8 closed by both tasks

    victim, epoch = before[1]
    survivor = next(a for a in agents if a is not victim)
    victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    killed_at = time.monotonic()
    victim.process.wait()  # type: ignore[union-attr]
    more = _events(range(600, 1200))
    cluster.append(more)  # straight into the log (see test_query_failover)
    produced += more
    after = _until_held(cluster, by=survivor)  # the killed agent's task moved
    assert after[1][1] > epoch
    print(f"task moved: kill -9 to its lease taken in {time.monotonic() - killed_at:.2f} s")
    cluster.wait_for(lambda rows: _minute(rows, 9))  # closed by both tasks on the survivor

    rows = _task_table(cluster)
    for task, row in enumerate(rows):
        query, number, _, address, _, offsets, watermark, state_bytes, *_ = row
        assert (query, int(number), address) == ("clicks", task, f"127.0.0.1:{survivor.port}")
        # the source partitions the task reads (p % 2 == task), read (before the kill: not
        # from the start again), at most to their end (600)
        read = json.loads(offsets)
        assert sorted(read) == [str(p) for p in range(task, 4, PARALLELISM)]
        assert all(0 < o <= 600 for o in read.values()), read
        assert watermark.startswith("2026-01-01 00:") and int(state_bytes) > 0

    cluster.append([{"user_id": 0, "event_type": "view", "timestamp": "2026-01-01 00:30:00"}] * 4)
    _exactly_once(cluster, produced)
    # the moved task's, not a fresh start
    assert "query clicks.p2.task-1: restored checkpoint" in survivor.log_path.read_text()
    recorded = {c.query: c for c in cluster.md.list_query_checkpoints()}
    assert {"clicks.p2.task-0", "clicks.p2.task-1", "clicks.p2.exchange-1"} <= set(recorded)
    assert recorded["clicks.p2.task-1"].epoch == after[1][1]  # recorded by the new holder


# -- in one process: a producer restored from an older copy of its state catches up ------------

WINDOWS = """
SET 'parallelism' = '2';
SET 'poll-interval' = '20 ms';
INSERT INTO per_window
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
FROM ev GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)
"""


def _rows(ts_ms: list[int]) -> list[dict[str, object]]:
    return [{"k": "abc"[t // 700 % 3], "v": t // 100, "t": t} for t in ts_ms]


class Windows:
    """One process, SQLite: the stream ``ev`` (2 partitions), the tasks of query ``windows``
    at parallelism 2 (:data:`WINDOWS`) as agents would run them, and its answers."""

    def __init__(self, sh: streamhouse.StreamHouse, tmp_path: Path) -> None:
        self.sh, self.md, self.tmp_path = sh, sh.log.metadata, tmp_path
        self.query = QueryFile.read(WINDOWS, name="windows")
        self.produced: list[dict[str, object]] = []
        sh.sql(
            "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
            " WITH (topic = 'ev', partitions = '2')"
        )

    def produce(self, ts_ms: list[int]) -> None:
        rows = _rows(ts_ms)
        for p in (0, 1):  # both partitions: each task's producer reads one
            self.sh.produce("ev", rows, partition=p)
            self.produced.extend(rows)

    def output(self) -> list[tuple[object, ...]]:
        if self.sh.log.get_topic("per_window") is None:
            return []
        values = self.sh.fetch("per_window")["value"].to_pylist()
        return [tuple(json.loads(v).values()) for v in values]

    def take(self, task: int, agent: str) -> tuple[AgentTask, Lease]:
        """Task ``task`` run as agent ``agent`` would, under a new lease of it."""
        lease = self.md.acquire_lease(task_lease_name("windows", task), agent, 60_000)
        assert lease is not None
        return AgentTask(
            self.sh.engine, self.query, task, self.tmp_path / agent, lease, agent
        ), lease

    def closed_windows(self, before_ms: int) -> Counter[tuple[object, ...]]:
        """DuckDB's answer: the windows ending before ``before_ms``, each once."""
        events_table = pa.Table.from_pylist(self.produced)  # noqa: F841 (read by DuckDB)
        return Counter(
            duckdb.sql(
                "SELECT k, strftime(time_bucket(INTERVAL 10 SECOND, make_timestamp(t * 1000)),"
                " '%Y-%m-%d %H:%M:%S'), count(*)::BIGINT, sum(v)::BIGINT FROM events_table"
                f" WHERE t < {before_ms} GROUP BY ALL"
            ).fetchall()
        )

    def exactly_once(self, before_ms: int) -> None:
        want = self.closed_windows(before_ms)
        _until(lambda: len(self.output()) >= sum(want.values()), "every closed window written")
        time.sleep(0.5)  # a duplicate would show up now
        assert Counter(self.output()) == want


def test_a_moved_task_catches_up_with_what_its_producer_sent_after_its_last_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Task 1 stops without a last checkpoint after its producer sent batches that closed no
    window (so no checkpoint copied its state): the agent taking it over restores the older
    copy and reads those batches back from the exchange, sending none of their sequence
    numbers again with other rows. Every window once, DuckDB's answer."""
    caplog.set_level(logging.INFO, logger="streamhouse.runtime.exchange")
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        (first, _), (second, old) = run.take(0, "a"), run.take(1, "a")
        tasks = [first, second]
        run.produce(list(range(0, 60_000, 500)))
        _until(lambda: len(run.output()) >= 15, "windows [0, 50 s) written")  # 3 keys x 5
        sent = tasks[1].writers[0].sequence
        run.produce([59_100, 59_200, 59_300])  # in the open window [50, 60 s): no output
        _until(lambda: tasks[1].writers[0].sequence > sent, "task 1 sent them")
        tasks[1].stop(checkpoint=False)  # as killed: its copy is older than what it sent
        run.md.release_lease(old)
        # before it is taken over: its first batch again would hold these too (a replay of
        # the numbers it sent, with other rows, which its consumers would skip)
        run.produce([61_000, 75_000, 200_000])  # closes every window but the last
        tasks[1], lease = run.take(1, "b")
        assert lease.epoch == old.epoch + 1
        assert "producer 1 caught up with 1 batch" in caplog.text
        run.exactly_once(200_000)
        _until(lambda: tasks[1].status().get("rows_in") == 126, "task 1 reported")
        status = tasks[1].status()
        assert (status["agent"], status["epoch"], status["offsets"]) == (
            "b",
            lease.epoch,
            {"1": 126},
        )
        assert status["watermark"] == "1970-01-01 00:03:20.000" and status["state_bytes"] > 0
        for task in tasks:
            task.stop()

        # restarted at another parallelism without the move: refused, not read again from
        # the start
        lease = run.md.acquire_lease(task_lease_name("windows", 2), "c", 60_000)
        assert lease is not None
        other = QueryFile.read(WINDOWS.replace("'2'", "'3'"), name="windows")
        with pytest.raises(SqlError, match="checkpointed on agents at another parallelism"):
            AgentTask(sh.engine, other, 2, tmp_path / "c", lease, "c")


def test_a_task_paused_past_its_lease_appends_nothing_to_the_exchange(tmp_path: Path) -> None:
    """Task 1's lease runs out while it runs (its agent paused) and another agent takes it: the
    old holder's next exchange append is refused (FencedError), nothing of it reaches the
    exchange, and the new holder's output is every window once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        (first, _), (paused, old) = run.take(0, "a"), run.take(1, "a")
        run.produce(list(range(0, 60_000, 500)))
        _until(lambda: len(run.output()) >= 15, "windows [0, 50 s) written")

        def sent_by_task_1() -> list[bytes]:
            """Task 1's exchange records (one per batch in each partition: partition 0's)."""
            fetched = sh.fetch("windows.exchange", 0, isolation_level="read_uncommitted")
            return [key for key in fetched["key"].to_pylist() if key.startswith(b"1:")]

        assert run.md.renew_lease(old, 1)  # then it runs out
        time.sleep(0.05)
        second, lease = run.take(1, "b")
        assert lease.epoch == old.epoch + 1
        before = len(sent_by_task_1())
        run.produce([61_000, 75_000])
        _until(lambda: paused.error is not None, "the old holder refused")
        assert isinstance(paused.error, FencedError)
        run.produce([200_000])
        run.exactly_once(200_000)
        sent = sent_by_task_1()
        assert len(sent) == len(set(sent)) > before  # no sequence number sent twice
        for task in (first, second, paused):
            task.stop(checkpoint=task is not paused)


def test_two_supervisors_share_the_tasks_and_hand_them_back_and_forth(tmp_path: Path) -> None:
    """Two agents' supervisors in one process: the first alone runs both tasks; once the second
    runs the query too (its membership lease), the first hands one task over; when the second
    stops, the first takes it back. Every window once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        agents = {name: QuerySupervisor(sh.engine, name, 0.6, tmp_path / name) for name in "ab"}
        for supervisor in agents.values():
            supervisor.add(run.query)

        def held_by(name: str) -> set[int]:
            return {t.task for t in agents[name].running if isinstance(t, AgentTask)}

        agents["a"].start()
        _until(lambda: held_by("a") == {0, 1}, "a runs both tasks")
        run.produce(list(range(0, 30_000, 500)))
        _until(lambda: len(run.output()) >= 6, "windows [0, 20 s) written")
        agents["b"].start()
        _until(lambda: len(held_by("a")) == len(held_by("b")) == 1, "one task each")
        run.produce(list(range(30_000, 60_000, 500)))
        _until(lambda: len(run.output()) >= 15, "windows [0, 50 s) written")
        agents["b"].stop()
        _until(lambda: held_by("a") == {0, 1}, "a runs both tasks again")
        run.produce([200_000])
        run.exactly_once(200_000)
        agents["a"].stop()


SHAPES = {
    "join": (  # rows routed by key to the task owning it, both inputs (two exchange topics)
        "SELECT a.k, a.v AS av, b.v AS bv FROM a JOIN b ON a.k = b.k"
        " AND b.t BETWEEN a.t - INTERVAL '2' SECOND AND a.t + INTERVAL '2' SECOND",
        "SELECT A.k, A.v, B.v FROM A JOIN B ON A.k = B.k AND B.t BETWEEN A.t - 2000 AND A.t + 2000",
    ),
    "filter": (  # stateless: no exchange, each task reads its partitions
        "SELECT k, v AS av, v AS bv FROM a WHERE k <> 3",
        "SELECT k, v, v FROM A WHERE k <> 3",
    ),
}


class TwoStreams:
    """One process, SQLite: streams ``a`` and ``b`` (2 partitions each), a query ``q`` over
    them run as agents would run its tasks, its output topic and DuckDB's answer."""

    def __init__(self, sh: streamhouse.StreamHouse, tmp_path: Path, sink: str = "out") -> None:
        self.sh, self.md, self.tmp_path, self.sink = sh, sh.log.metadata, tmp_path, sink
        self.rows: dict[str, list[dict[str, int]]] = {"a": [], "b": []}
        for stream in self.rows:
            sh.sql(
                f"CREATE STREAM {stream} (k BIGINT, v BIGINT, t TIMESTAMP(3),"
                f" WATERMARK FOR t AS t) WITH (topic = '{stream}', partitions = '2')"
            )

    def produce(self, start: int, end: int) -> None:
        for stream, step in (("a", 700), ("b", 900)):
            made = [{"k": t // 1000 % 5, "v": t, "t": t} for t in range(start, end, step)]
            for p in (0, 1):
                self.sh.produce(stream, made[p::2], partition=p)
            self.rows[stream] += made

    def output(self) -> list[tuple[object, ...]]:
        if self.sh.log.get_topic(self.sink) is None:
            return []
        values = self.sh.fetch(self.sink)["value"].to_pylist()
        return [tuple(json.loads(v).values()) for v in values]

    def take(self, query: QueryFile, task: int, agent: str) -> tuple[AgentTask, Lease]:
        lease = self.md.acquire_lease(task_lease_name("q", task), agent, 60_000)
        assert lease is not None
        return AgentTask(self.sh.engine, query, task, self.tmp_path / agent, lease, agent), lease

    def exactly_once(self, oracle: str) -> None:
        A = pa.Table.from_pylist(self.rows["a"])  # noqa: F841, N806 (read by DuckDB)
        B = pa.Table.from_pylist(self.rows["b"])  # noqa: F841, N806
        want = Counter(duckdb.sql(oracle).fetchall())
        _until(lambda: len(self.output()) >= sum(want.values()), "every row written")
        time.sleep(0.5)  # a duplicate would show up now
        assert Counter(self.output()) == want


def _shape_query(shape: str, parallelism: int = 2) -> QueryFile:
    statement = SHAPES["filter" if shape == "select" else shape][0]
    insert = "" if shape == "select" else "INSERT INTO out "
    text = f"SET 'parallelism' = '{parallelism}';\nSET 'poll-interval' = '20 ms';\n"
    return QueryFile.read(f"{text}{insert}{statement}", name="q")


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_join_and_a_filter_move_to_another_agent_exactly_once(tmp_path: Path, shape: str) -> None:
    """Task 1 of an interval join (two exchange topics) and of a filter (none) stops without a
    last checkpoint mid-run and another agent takes it over: DuckDB's rows, each once."""
    query = _shape_query(shape)
    with streamhouse.connect(tmp_path / "data") as sh:
        run = TwoStreams(sh, tmp_path)
        (first, _), (second, lease) = run.take(query, 0, "x"), run.take(query, 1, "x")
        run.produce(0, 30_000)
        _until(lambda: len(run.output()) >= 20, "rows written")
        second.stop(checkpoint=False)  # as killed
        run.md.release_lease(lease)
        run.produce(30_000, 60_000)
        second, _ = run.take(query, 1, "y")
        run.produce(200_000, 200_001)
        run.exactly_once(SHAPES[shape][1])
        first.stop()
        second.stop()


def _rescaled(
    sh: streamhouse.StreamHouse, query: QueryFile, agent: str, tmp_path: Path
) -> list[AgentTask]:
    """Move ``query``'s state to its file's parallelism as an agent's supervisor does (every
    task's lease of both parallelisms and the rescale lease held), then run its tasks."""
    _moved(sh, query, agent, tmp_path)
    md, name, parallelism = sh.log.metadata, query.name, parallelism_of(query)
    tasks = []
    for task in range(parallelism):
        lease = md.acquire_lease(task_lease_name(name, task), agent, 60_000)
        assert lease is not None
        tasks.append(AgentTask(sh.engine, query, task, tmp_path / agent, lease, agent))
    return tasks


def _moved(
    sh: streamhouse.StreamHouse, query: QueryFile, agent: str, tmp_path: Path
) -> list[Lease]:
    """The move of :func:`_rescaled`; the task leases it held (released)."""
    md, name = sh.log.metadata, query.name
    parallelism = parallelism_of(query)
    old = current_parallelism(md, name)
    assert old is not None
    leases = [
        md.acquire_lease(task_lease_name(name, t), agent, 60_000)
        for t in range(max(old, parallelism))
    ]
    pointer = md.acquire_lease(rescale_lease_name(name), agent, 60_000)
    assert pointer is not None and None not in leases
    work = tmp_path / f"rescale-{agent}"
    assert rescale_on_agents(sh.engine, query, agent, work, leases, pointer)  # type: ignore[arg-type]
    assert current_parallelism(md, name) == parallelism
    assert not work.exists()
    for lease in [*leases, pointer]:
        md.release_lease(lease)  # type: ignore[arg-type]
    return leases  # type: ignore[return-value]


def _windows_at(parallelism: int) -> QueryFile:
    return QueryFile.read(WINDOWS.replace("'2'", f"'{parallelism}'"), name="windows")


def test_tasks_on_agents_rescale_2_to_3_to_1_from_the_object_store_exactly_once(
    tmp_path: Path,
) -> None:
    """In one process: the tasks at 2 stop (task 1 without a last checkpoint, as killed, after
    its producer sent batches past its copy); the state moves from the object store to 3
    tasks, they run, one is killed again, the state moves to 1: every window once, DuckDB's,
    and no task reads a source from the start again."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        tasks = [run.take(0, "a")[0], run.take(1, "a")[0]]
        run.produce(list(range(0, 40_000, 500)))
        _until(lambda: len(run.output()) >= 9, "windows [0, 30 s) written")  # 3 keys x 3
        sent = tasks[1].writers[0].sequence
        run.produce([39_600, 39_700])  # in the open window [30, 40 s)
        _until(lambda: tasks[1].writers[0].sequence > sent, "task 1 sent them")
        tasks[0].stop()
        tasks[1].stop(checkpoint=False)  # as killed: its checkpoints are older than its sends
        for lease in run.md.list_leases("query/windows/task-"):
            run.md.release_lease(lease)

        run.produce(list(range(40_000, 80_000, 500)))  # while it is stopped
        tasks = _rescaled(sh, _windows_at(3), "b", tmp_path)
        run.produce(list(range(80_000, 120_000, 500)))
        _until(lambda: len(run.output()) >= 30, "windows [0, 100 s) written")
        for task in tasks[:2]:
            task.stop()
        tasks[2].stop(checkpoint=False)
        for lease in run.md.list_leases("query/windows/task-"):
            run.md.release_lease(lease)

        tasks = _rescaled(sh, _windows_at(1), "c", tmp_path)
        run.produce([130_000, 200_000])
        run.exactly_once(200_000)
        status = tasks[0].status()
        _until(lambda: tasks[0].status().get("rows_in") == len(run.produced), "task 0 reported")
        status = tasks[0].status()
        assert status["offsets"] == {"0": len(run.produced) // 2, "1": len(run.produced) // 2}
        tasks[0].stop()
        recorded = {c.query for c in run.md.list_query_checkpoints()}
        assert {"windows.p1.task-0", "windows.p1.exchange-0", "windows/parallelism"} <= recorded
        assert not sh.log.store.list("checkpoints/windows.p3.")  # the old state's objects gone


def _set_parallelism(cluster: Cluster, parallelism: int) -> None:
    """The user's rescale: the query file's ``SET 'parallelism'`` changed (agents stopped)."""
    path = cluster.queries / "clicks.sql"
    text = path.read_text()
    start = text.index("SET 'parallelism' = '")
    end = text.index(";", start)
    path.write_text(f"{text[:start]}SET 'parallelism' = '{parallelism}'{text[end:]}")


def _until_tasks_held(cluster: Cluster, tasks: int, agents: int, timeout: float = 60.0) -> None:
    """Tasks 0 .. ``tasks`` - 1 each held by a live agent, by ``agents`` agents in all."""
    deadline = time.monotonic() + timeout
    held: dict[int, str] = {}
    while time.monotonic() < deadline:
        live = {a.agent_id for a in cluster.md.list_agents()}
        held = {
            task: lease.holder
            for task in range(tasks)
            for lease in cluster.md.list_leases(task_lease_name("clicks", task))
            if lease.live and lease.holder in live
        }
        if len(held) == tasks and len(set(held.values())) == agents:
            return
        time.sleep(0.1)
    logs = "\n".join(a.log(40) for a in cluster.agents)
    raise AssertionError(f"tasks not held as wanted within {timeout}s: {held}\n{logs}")


def _until_logged(agents: list[KafkaServer], text: str, timeout: float = 60.0) -> None:
    """One of ``agents`` logged ``text`` (the agent that rescaled the query)."""
    _until(lambda: any(text in a.log_path.read_text() for a in agents), f"{text!r} logged", timeout)


@pytest.mark.parametrize("cluster", ["local", "s3"], indirect=True)
def test_agents_rescale_a_query_2_to_3_to_1_from_the_object_store_exactly_once(
    cluster: Cluster,
) -> None:
    """The user's rescale on agents: the agents stopped (one killed -9 mid-run), the query
    file's parallelism changed from 2 to 3, agents started again; one of them moves the state
    from the object store to 3 tasks (draining the killed task first), the agents run them;
    again to 1. Every window equals DuckDB's, none written twice."""
    agents = [cluster.start_agent() for _ in range(2)]
    _until_tasks_held(cluster, 2, 2)
    produced = _events(range(0, 600))
    cluster.append(produced)
    cluster.wait_for(lambda rows: _minute(rows, 8))
    agents[0].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    agents[0].process.wait()  # type: ignore[union-attr]
    agents[1].stop()
    more = _events(range(600, 1200))  # while the query is stopped
    cluster.append(more)
    produced += more

    _set_parallelism(cluster, 3)
    agents = [cluster.start_agent() for _ in range(2)]
    _until_logged(agents, "state moved on agents from 2 to 3 tasks")
    _until_tasks_held(cluster, 3, 2)
    more = _events(range(1200, 1800))
    cluster.append(more)
    produced += more
    cluster.wait_for(lambda rows: _minute(rows, 28))
    for agent in agents:
        agent.stop()

    _set_parallelism(cluster, 1)
    agents = [cluster.start_agent()]
    _until_logged(agents, "state moved on agents from 3 to 1 tasks")
    _until_tasks_held(cluster, 1, 1)
    more = _events(range(1800, 2400))
    cluster.append(more)
    produced += more
    cluster.append([{"user_id": 0, "event_type": "view", "timestamp": "2026-01-01 01:00:00"}] * 4)
    _exactly_once(cluster, produced)
    recorded = {c.query: c for c in cluster.md.list_query_checkpoints()}
    assert recorded["clicks/parallelism"].checkpoint_id == "1"
    assert recorded["clicks.p1.task-0"].epoch > 0
    status = CliRunner().invoke(
        cli,
        ["--data-dir", str(cluster.data), "cluster", "status", "--metadata", cluster.url],
        env={"COLUMNS": "400"},
    )
    assert status.exit_code == 0, status.output
    (task,) = [line for line in status.output.splitlines() if "│ clicks " in line]  # not 3
    assert f"127.0.0.1:{agents[0].port}" in task


def _read_output(bootstrap: str, want: int, timeout: float = 60.0) -> list[dict[str, object]]:
    """The rows of the SELECT's output topic as a Kafka client reads them (read_committed),
    once ``want`` came and nothing more within a second and a half."""
    consumer = KafkaConsumer(
        "clicks.output",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                rows += [json.loads(r.value) for r in records]
            if len(rows) >= want:
                quiet_until = quiet_until or time.monotonic() + 1.5  # a duplicate would come
                if time.monotonic() > quiet_until:
                    return rows
    finally:
        consumer.close()
    raise AssertionError(f"{len(rows)} of {want} rows read within {timeout}s")


def test_a_select_at_parallelism_2_on_agents_writes_its_rows_for_clients_exactly_once(
    cluster: Cluster,
) -> None:
    """A query file with a SELECT (no INSERT INTO) at parallelism 2 on two agents: its tasks
    write its rows to topic ``clicks.output``, and a Kafka consumer reads every window there
    once, DuckDB's, also after one agent is killed -9 and its task moves to the other."""
    path = cluster.queries / "clicks.sql"
    path.write_text(path.read_text().replace("INSERT INTO clicks_per_minute\n", ""))
    agents = [cluster.start_agent() for _ in range(2)]
    _until_tasks_held(cluster, 2, 2)
    produced = _events(range(0, 600))
    _produce(agents[0].bootstrap, produced)
    sh = cluster.sh
    assert sh is not None
    _until(
        lambda: (
            sh.log.get_topic("clicks.output") is not None and len(sh.fetch("clicks.output")) >= 20
        ),
        "windows written",
        60,
    )
    agents[0].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    agents[0].process.wait()  # type: ignore[union-attr]
    more = _events(range(600, 1200))
    cluster.append(more)
    produced += more
    _until_tasks_held(cluster, 2, 1)  # the killed agent's task moved
    cluster.append([{"user_id": 0, "event_type": "view", "timestamp": "2026-01-01 00:30:00"}] * 4)
    want = _expected(produced)
    rows = _read_output(agents[1].bootstrap, len(want))  # a row per window
    assert Counter((r["user_id"], r["window_start"]) for r in rows).most_common(1)[0][1] == 1
    assert _windows(rows) == want
    assert len(rows) == len(want)


@pytest.mark.parametrize("shape", [*sorted(SHAPES), "select"])
def test_a_join_a_filter_and_a_select_rescale_on_agents_2_to_3_to_1(
    tmp_path: Path, shape: str
) -> None:
    """An interval join, a filter and the filter as a SELECT (rows to ``q.output``) at 2 on
    agents, task 1 stopped without a last checkpoint; the state moved from the object store
    to 3 tasks, task 2 stopped so; moved to 1: DuckDB's rows, each once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = TwoStreams(sh, tmp_path, "q.output" if shape == "select" else "out")
        query = _shape_query(shape)
        tasks = [run.take(query, t, "x")[0] for t in range(2)]
        run.produce(0, 30_000)
        for done, (parallelism, agent) in enumerate(((3, "y"), (1, "z")), start=1):
            _until(lambda n=20 * done: len(run.output()) >= n, "rows written")
            for task in tasks:
                task.stop(checkpoint=task is not tasks[-1])  # the last as killed
            for lease in run.md.list_leases("query/q/task-"):
                run.md.release_lease(lease)
            run.produce(30_000 * done, 30_000 * (done + 1))  # while it is stopped
            tasks = _rescaled(sh, _shape_query(shape, parallelism), agent, tmp_path)
        run.produce(200_000, 200_001)
        run.exactly_once(SHAPES["filter" if shape == "select" else shape][1])
        for task in tasks:
            task.stop()


def test_a_query_file_at_parallelism_1_runs_whole_unless_its_state_is_of_tasks(
    tmp_path: Path,
) -> None:
    """At parallelism 1 an agent runs a query as a whole (lease ``query/<name>``), also once
    it has checkpoints of its own; as one task when its state is of a parallel run (to be
    moved to that task first)."""
    with streamhouse.connect(tmp_path / "data") as sh:
        md = sh.log.metadata
        supervisor = QuerySupervisor(sh.engine, "a", 0.6, tmp_path / "a")
        lease = md.acquire_lease("query/whole", "a", 60_000)
        assert lease is not None
        md.record_query_checkpoint(lease, QueryCheckpoint("whole", "000000000001-1"))
        lease = md.acquire_lease(task_lease_name("tasks", 0), "a", 60_000)
        assert lease is not None
        md.record_query_checkpoint(lease, QueryCheckpoint("tasks.p2.task-0", "000000000001-1"))
        for name in ("whole", "tasks", "fresh"):
            supervisor.add(QueryFile.read("SELECT 1 AS x FROM ev", name=name))
        assert supervisor.names == ["fresh", "tasks/task-0", "whole"]
        with pytest.raises(SqlError, match="checkpointed on agents at parallelism 1 outside"):
            current_parallelism(md, "whole")
        assert current_parallelism(md, "tasks") == 2


def test_tasks_are_not_started_over_state_of_a_whole_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A query checkpointed as a whole at parallelism 1 and then given parallelism 2: its
    state does not move to tasks, so the agent refuses to start them (not read the sources
    again from the start), saying why."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        lease = run.md.acquire_lease("query/windows", "a", 60_000)
        assert lease is not None
        run.md.record_query_checkpoint(lease, QueryCheckpoint("windows", "000000000001-1"))
        run.md.release_lease(lease)
        supervisor = QuerySupervisor(sh.engine, "a", 0.6, tmp_path / "a")
        supervisor.add(run.query)
        supervisor.start()
        _until(lambda: "outside a parallel run" in caplog.text, "the refusal logged")
        time.sleep(0.5)
        supervisor.stop()
        assert supervisor.running == []
        assert not any(lease.epoch for lease in run.md.list_leases("query/windows/task-"))
        assert caplog.text.count("outside a parallel run") <= 2  # once per task, not per round


def _stop(run: Windows, tasks: list[AgentTask]) -> None:
    """Stop ``tasks`` (each with a last checkpoint) and give their leases up."""
    for task in tasks:
        task.stop()
    for lease in run.md.list_leases("query/windows/task-"):
        run.md.release_lease(lease)


def _ran_at_2(sh: streamhouse.StreamHouse, tmp_path: Path) -> Windows:
    """Query ``windows`` run at 2 (agent ``a``) over windows [0, 30 s), then stopped."""
    run = Windows(sh, tmp_path)
    tasks = [run.take(0, "a")[0], run.take(1, "a")[0]]
    run.produce(list(range(0, 40_000, 500)))
    _until(lambda: len(run.output()) >= 9, "windows [0, 30 s) written")
    _stop(run, tasks)
    return run


def _stale_lease(sh: streamhouse.StreamHouse, name: str, agent: str) -> Lease:
    """A lease of ``name`` that ``agent`` held and lost (another holder took it since)."""
    md = sh.log.metadata
    lost = md.acquire_lease(name, agent, 60_000)
    assert lost is not None
    md.release_lease(lost)
    taker = md.acquire_lease(name, "x", 60_000)
    assert taker is not None and taker.epoch > lost.epoch
    md.release_lease(taker)
    return lost


def test_a_first_rescale_that_fails_before_its_commit_point_is_moved_again(
    tmp_path: Path,
) -> None:
    """The first move of a query (2 -> 3) fails after publishing some new tasks' checkpoints
    and before recording the parallelism (its lease of task 2 lost: that publish fenced): the
    next agent's move starts over from the old tasks' checkpoints, and every window is written
    once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = _ran_at_2(sh, tmp_path)

        md, query = run.md, _windows_at(3)
        leases = [md.acquire_lease(task_lease_name("windows", t), "b", 60_000) for t in (0, 1)]
        leases.append(_stale_lease(sh, task_lease_name("windows", 2), "b"))
        pointer = md.acquire_lease(rescale_lease_name("windows"), "b", 60_000)
        assert pointer is not None and None not in leases
        with pytest.raises(FencedError):
            rescale_on_agents(sh.engine, query, "b", tmp_path / "b", leases, pointer)  # type: ignore[arg-type]
        assert any(c.query.startswith("windows.p3.") for c in md.list_query_checkpoints())
        for lease in [*leases[:2], pointer]:
            md.release_lease(lease)  # type: ignore[arg-type]
        assert current_parallelism(md, "windows") == 2  # the move was not committed

        run.produce(list(range(40_000, 80_000, 500)))
        tasks = _rescaled(sh, query, "c", tmp_path)
        run.produce([130_000, 200_000])
        run.exactly_once(200_000)
        for task in tasks:
            task.stop()


def test_a_mover_waking_late_deletes_none_of_a_later_runs_checkpoints(tmp_path: Path) -> None:
    """A move 2 -> 3 whose agent pauses after its commit point, before deleting the old
    checkpoints' objects, and wakes after the query was moved back to 2 and checkpointed there:
    its deletes (not fenced) spare the new checkpoints at 2, and the query resumes from them
    with every window once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = _ran_at_2(sh, tmp_path)
        paused = _moved(sh, _windows_at(3), "b", tmp_path)  # its deletes come late, below

        tasks = []
        for task in range(3):
            lease = run.md.acquire_lease(task_lease_name("windows", task), "c", 60_000)
            assert lease is not None
            tasks.append(AgentTask(sh.engine, _windows_at(3), task, tmp_path / "c", lease, "c"))
        run.produce(list(range(40_000, 80_000, 500)))
        _until(lambda: len(run.output()) >= 18, "windows [0, 60 s) written")
        _stop(run, tasks)
        tasks = _rescaled(sh, _windows_at(2), "d", tmp_path)  # back to 2
        run.produce(list(range(80_000, 100_000, 500)))
        _until(lambda: len(run.output()) >= 24, "windows [0, 80 s) written")
        _stop(run, tasks)

        delete_moved(sh.engine, "windows", 2, paused)  # the paused mover wakes
        tasks = [run.take(0, "e")[0], run.take(1, "e")[0]]
        run.produce([130_000, 200_000])
        run.exactly_once(200_000)
        for task in tasks:
            task.stop()


def test_a_select_on_agents_refuses_an_output_topic_a_stream_is_declared_on(
    tmp_path: Path,
) -> None:
    """A SELECT named ``q`` at parallelism 2 would write its rows to topic ``q.output``: when
    a stream of the catalog reads that topic (another's data), its tasks refuse to start, with
    an error naming the stream, and write nothing there."""
    query = _shape_query("select")
    with streamhouse.connect(tmp_path / "data") as sh:
        run = TwoStreams(sh, tmp_path, sink="q.output")
        sh.sql("CREATE STREAM theirs (x STRING) WITH (topic = 'q.output', partitions = '2')")
        with pytest.raises(SqlError, match=r"q\.output.*theirs"):
            run.take(query, 0, "x")
        run.produce(0, 5_000)
        assert run.output() == []


def test_tasks_running_on_past_their_leases_write_nothing_once_moved(tmp_path: Path) -> None:
    """Both tasks at 2 go on running after their leases ran out (their agent paused, then
    woken) while another agent moves the query to 1 task (task 1's transactional id then used
    by no task): every write of the old ones is refused, and every window is written once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        run = Windows(sh, tmp_path)
        pairs = [run.take(0, "a"), run.take(1, "a")]
        run.produce(list(range(0, 40_000, 500)))
        _until(lambda: len(run.output()) >= 9, "windows [0, 30 s) written")
        for _, lease in pairs:
            assert run.md.renew_lease(lease, 1)  # then it runs out
        time.sleep(0.05)
        tasks = _rescaled(sh, _windows_at(1), "b", tmp_path)
        run.produce(list(range(40_000, 80_000, 500)))
        _until(lambda: all(old.error is not None for old, _ in pairs), "the old holders refused")
        assert all(isinstance(old.error, FencedError) for old, _ in pairs)
        run.produce([130_000, 200_000])
        run.exactly_once(200_000)
        for old, _ in pairs:
            old.stop(checkpoint=False)
        _stop(run, tasks)


def _stopped_at_2_set_to_3(cluster: Cluster) -> list[dict[str, object]]:
    """Two agents run the query at 2 over 8 minutes of events and stop; the file is changed to
    3. The events produced."""
    agents = [cluster.start_agent() for _ in range(2)]
    _until_tasks_held(cluster, 2, 2)
    produced = _events(range(0, 600))
    cluster.append(produced)
    cluster.wait_for(lambda rows: _minute(rows, 8))
    for agent in agents:
        agent.stop()
    _set_parallelism(cluster, 3)
    return produced


@pytest.mark.parametrize("moment", ["draining", "publishing"])
def test_an_agent_killed_mid_move_leaves_it_to_the_next(cluster: Cluster, moment: str) -> None:
    """The agent moving the query from 2 to 3 tasks is killed -9 as it starts (restoring and
    draining the old tasks) or once it published the first new task's checkpoint, before the
    move's commit point either way: the query stays at 2, the next agent moves it again from
    the old tasks' checkpoints, and every window equals DuckDB's, once."""
    produced = _stopped_at_2_set_to_3(cluster)
    mover = cluster.start_agent()
    if moment == "draining":
        _until_logged([mover], "moving its state from 2 to 3 tasks")
    else:
        _until(
            lambda: any(
                c.query.startswith("clicks.p3.") for c in cluster.md.list_query_checkpoints()
            ),
            "a new task's checkpoint published",
            60,
        )
    mover.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    mover.process.wait()  # type: ignore[union-attr]
    assert current_parallelism(cluster.md, "clicks") == 2  # killed before the commit point
    more = _events(range(600, 1200))
    cluster.append(more)
    produced += more

    agents = [cluster.start_agent()]
    _until_logged(agents, "state moved on agents from 2 to 3 tasks")
    _until_tasks_held(cluster, 3, 1)
    cluster.append([{"user_id": 0, "event_type": "view", "timestamp": "2026-01-01 01:00:00"}] * 4)
    _exactly_once(cluster, produced)


def test_an_agent_paused_mid_move_wakes_after_another_moved_the_query(cluster: Cluster) -> None:
    """The agent moving the query from 2 to 3 tasks is paused (SIGSTOP) past its leases as it
    starts; another agent moves the query and runs its tasks; the paused one wakes (SIGCONT):
    its writes are refused, it takes tasks of the moved query as usual, every window once."""
    produced = _stopped_at_2_set_to_3(cluster)
    paused = cluster.start_agent()
    _until_logged([paused], "moving its state from 2 to 3 tasks")
    paused.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        other = cluster.start_agent()
        _until_logged([other], "state moved on agents from 2 to 3 tasks")
        _until_tasks_held(cluster, 3, 1)
    finally:
        paused.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    _until_logged([paused], "query clicks not rescaled")  # its move refused (fenced)
    more = _events(range(600, 1200))
    cluster.append(more)
    produced += more
    _until_tasks_held(cluster, 3, 2)  # the woken agent takes its share
    assert current_parallelism(cluster.md, "clicks") == 3
    cluster.append([{"user_id": 0, "event_type": "view", "timestamp": "2026-01-01 01:00:00"}] * 4)
    _exactly_once(cluster, produced)
