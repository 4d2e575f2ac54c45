"""Queries of two stages on agents (issue 16 item 6; :mod:`streamhouse.runtime.stages`): Nexmark
q4 at parallelism 2, each task (its producing side, first and second stage) leased to an agent
as other parallel queries' tasks are, and moved when its agent dies or pauses past its lease.

- In one process: a first stage whose agent died after it appended a batch to the second
  exchange, before that batch's checkpoint was recorded, is taken over by another agent, which
  replays the batch from the intent its record carries (not from the dead agent's local
  RocksDB): the same rows under the same sequence number. A first stage whose lease ran out
  appends nothing to the second exchange.
- Real ``serve`` agents on PostgreSQL: one of two is killed -9 (or paused past its leases and
  woken) mid-run; the other takes its task over, and the sink holds DuckDB's answer, no batch
  of the first stage sent twice with other rows.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from kafka_fixtures import KafkaServer
from nexmark_reference import comparable, connect, reference
from test_query_failover import Cluster, _until, running_cluster

import streamhouse
from benchmarks.nexmark import NexmarkConfig, generate_tables, json_values, nexmark_query
from streamhouse.errors import FencedError, SqlError
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.agent_rescale import current_parallelism, renewing, rescale_on_agents
from streamhouse.runtime.exchange import decode, stage_topic
from streamhouse.runtime.launch import QueryFile
from streamhouse.runtime.placement import AgentTask, task_lease_name
from streamhouse.runtime.supervisor import QuerySupervisor

CONFIG = NexmarkConfig.for_bids(1_500, events_per_second=200, seed=7)
NAME = "q4"
SINK = "nexmark_q4"
PARTITIONS = 3
PARALLELISM = 2


def _query_text(parallelism: int = PARALLELISM) -> str:
    """Nexmark q4 at ``parallelism``, in micro-batches of at most 200 records."""
    settings = {
        "parallelism": str(parallelism),
        "max-batch-records": "200",
        "poll-interval": "20 ms",
        "idle-timeout": "1 minute",  # the agents start seconds apart, before any row comes
    }
    sets = "".join(f"SET '{k}' = '{v}';\n" for k, v in settings.items())
    return sets + nexmark_query(NAME).path.read_text()


def _halves() -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """Auctions and bids before and from the middle of the event time (no row of the second
    half is late once the first was read: its times are all later)."""
    tables = generate_tables(CONFIG)
    times = pc.cast(tables.bid["dateTime"], pa.int64())
    cut = pa.scalar((pc.min(times).as_py() + pc.max(times).as_py()) // 2, pa.int64())
    first, second = {}, {}
    for stream in ("auction", "bid"):
        table = tables.table(stream)
        early = pc.less(pc.cast(table["dateTime"], pa.int64()), cut)
        first[stream], second[stream] = table.filter(early), table.filter(pc.invert(early))
    return first, second


def _produce(sh: streamhouse.StreamHouse, tables: dict[str, pa.Table]) -> None:
    """Rows spread over the partitions round-robin, as the Nexmark loader does."""
    for stream, table in tables.items():
        if sh.log.get_topic(stream) is None:
            sh.create_topic(stream, partitions=PARTITIONS)
        values = json_values(table).to_pylist()
        for p in range(PARTITIONS):
            sh.produce(stream, values[p::PARTITIONS], partition=p)


def _answer(sh: streamhouse.StreamHouse) -> list[tuple[object, ...]]:
    """The latest row per key of the sink (read_committed), comparable with DuckDB's."""
    if sh.log.get_topic(SINK) is None:
        return []
    frame = sh.fetch(SINK).to_pandas().drop_duplicates(subset=["key"], keep="last")
    rows = [json.loads(v) for v in frame["value"] if v is not None]
    if not rows:
        return []
    got = pa.Table.from_pylist(rows)
    return comparable(NAME, got.rename_columns(["category", "avg"]))


def _duckdb() -> list[tuple[object, ...]]:
    want = reference(connect(generate_tables(CONFIG)), NAME)
    return comparable(NAME, want.rename_columns(["category", "avg"]))


def _sent_once(sh: streamhouse.StreamHouse) -> int:
    """Assert that no first-stage batch (``<task>:<sequence>``) reached a partition of the
    second exchange twice with other rows; how many were sent again alike (replays)."""
    records = sh.fetch(stage_topic(NAME), isolation_level="read_uncommitted")
    again = 0
    for partition in range(PARALLELISM):
        mine = records.filter(pc.equal(records["partition"], partition))
        batches: dict[bytes, list[pa.Table | None]] = {}
        for key, value in zip(mine["key"].to_pylist(), mine["value"].to_pylist(), strict=True):
            task, sequence, *_ = key.split(b":")
            batches.setdefault(task + b":" + sequence, []).append(decode(value) if value else None)
        for batch, sent in batches.items():
            assert all(s == sent[0] for s in sent), f"batch {batch!r} sent with other rows"
            again += len(sent) - 1
    return again


# -- in one process, SQLite: the tasks as agents run them, stepped by hand ---------------------


class Tasks:
    """Query q4's tasks taken by agents (``AgentTask``, not started: the test steps them)."""

    def __init__(self, sh: streamhouse.StreamHouse, tmp_path: Path) -> None:
        self.sh, self.md, self.tmp_path = sh, sh.log.metadata, tmp_path
        self.query = QueryFile.read(_query_text(), name=NAME)

    def take(self, task: int, agent: str) -> tuple[AgentTask, Lease]:
        lease = self.md.acquire_lease(task_lease_name(NAME, task), agent, 60_000)
        assert lease is not None
        agent_task = AgentTask(
            self.sh.engine, self.query, task, self.tmp_path / agent, lease, agent, start=False
        )
        return agent_task, lease

    @staticmethod
    def produce_a_batch(tasks: list[AgentTask]) -> None:
        """A micro-batch of each producing side of ``tasks`` into the first exchange."""
        for writer in [w for t in tasks for w in t.writers]:
            writer.step()

    def move(
        self, task: AgentTask, lease: Lease, agent: str, more: dict[str, pa.Table], zero: AgentTask
    ) -> tuple[AgentTask, Lease]:
        """``task``'s agent dies (no last checkpoint); with ``more`` rows produced (and task
        ``zero``'s producing side sending them into the first exchange), ``agent`` takes it."""
        task.stop(checkpoint=False)
        self.md.release_lease(lease)
        _produce(self.sh, more)
        self.produce_into_exchange([zero])
        return self.take(task.task, agent)

    @staticmethod
    def produce_into_exchange(tasks: list[AgentTask]) -> None:
        """Every source row of ``tasks``' partitions into the first exchange."""
        for writer in [w for t in tasks for w in t.writers]:
            while writer.step():
                pass

    @staticmethod
    def run(tasks: list[AgentTask]) -> None:
        """Step ``tasks`` until none progresses."""
        progressed = True
        while progressed:
            progressed = False
            for task in tasks:
                progressed = task.step() or progressed


OnAgentA = tuple[Tasks, AgentTask, AgentTask, Lease, dict[str, pa.Table]]


@pytest.fixture
def on_agent_a(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[OnAgentA]:
    """q4's tasks 0 and 1 taken by agent ``a`` (task 1's lease too) over the first half of the
    rows, and the second half; the first stages' replays logged."""
    caplog.set_level(logging.WARNING, logger="streamhouse.runtime.stages")
    first_half, second_half = _halves()
    with streamhouse.connect(tmp_path / "data") as sh:
        _produce(sh, first_half)
        run = Tasks(sh, tmp_path)
        (zero, _), (one, old) = run.take(0, "a"), run.take(1, "a")
        yield run, zero, one, old, second_half


@pytest.mark.parametrize("lost", [1, 3])
def test_a_first_stage_moved_after_its_append_replays_that_batch_from_its_record(
    on_agent_a: OnAgentA, caplog: pytest.LogCaptureFixture, lost: int
) -> None:
    """Task 1's agent appends its first stage's batch to the second exchange and dies before
    that batch's checkpoint is recorded (its state copy is older than what it sent; with
    ``lost`` 3, the copy is three batches older: its two checkpoints before were not taken, as
    if taken by interval). Meanwhile more rows reach task 1's first exchange partition. Agent b
    takes task 1 over: its first stage sends those batches again from the intents in their
    records, alike (not batches of the rows it finds now under the same sequence numbers, which
    the second stage would skip), and the sink holds DuckDB's answer."""
    run, zero, one, old, second_half = on_agent_a
    sh = run.sh
    published = 0

    def publish(*_: object) -> str:
        nonlocal published
        published += 1
        if published == lost:
            raise OSError("agent a died before recording the checkpoint")
        return "not taken"

    one.first.checkpoints.publish = publish  # type: ignore[method-assign, union-attr]
    for _ in range(lost):  # a batch of each producer, then one of task 1's first stage
        run.produce_a_batch([zero, one])
        if published == lost - 1:
            with pytest.raises(OSError, match="died"):
                one.first.step()
        else:
            assert one.first.step()
    run.run([zero])  # task 0's second stage takes its share of the batches
    one, lease = run.move(one, old, "b", second_half, zero)  # with more rows for task 1
    assert lease.epoch > old.epoch
    assert f"first stage 1 replays {lost} batch(es) it sent after its checkpoint" in caplog.text
    run.run([zero, one])

    keys = sh.fetch(stage_topic(NAME), isolation_level="read_uncommitted")["key"]
    for sequence in range(1, lost + 1):  # each batch and its replay, in each partition
        replayed = [k for k in keys.to_pylist() if k.startswith(f"1:{sequence}:".encode())]
        assert len(replayed) == 2 * PARALLELISM
    assert _sent_once(sh) == lost * PARALLELISM
    assert _answer(sh) == _duckdb()
    one._report(time.time())  # as its thread does about once a second
    status = one.status()
    assert (status["agent"], status["epoch"], sorted(status["offsets"])) == (
        "b",
        lease.epoch,
        ["auction", "bid"],  # both sources its producing side reads (partition 1 of each)
    )
    assert status["state_bytes"] > one.query.store.size_bytes() > 0  # both stages' state
    for task in (zero, one):
        task.stop()


def test_a_first_stage_paused_past_its_lease_appends_nothing_to_the_second_exchange(
    tmp_path: Path,
) -> None:
    """Task 1's lease runs out (its agent paused) and agent b takes it; the old holder's first
    stage, woken with new rows to send, is refused (FencedError) and nothing of it reaches the
    second exchange; the new holder's run ends with DuckDB's answer."""
    first_half, second_half = _halves()
    with streamhouse.connect(tmp_path / "data") as sh:
        _produce(sh, first_half)
        run = Tasks(sh, tmp_path)
        (zero, _), (paused, old) = run.take(0, "a"), run.take(1, "a")
        run.run([zero, paused])
        assert run.md.renew_lease(old, 1)  # then it runs out
        time.sleep(0.05)
        one, lease = run.take(1, "b")
        assert lease.epoch == old.epoch + 1

        def sent_by_task_1() -> list[bytes]:
            keys = sh.fetch(stage_topic(NAME), isolation_level="read_uncommitted")["key"]
            return [k for k in keys.to_pylist() if k.startswith(b"1:")]

        before = sent_by_task_1()
        _produce(sh, second_half)
        run.produce_into_exchange([zero])  # rows for task 1's first stage
        with pytest.raises(FencedError):
            paused.first.step()  # the paused agent wakes: its append is refused
        assert sent_by_task_1() == before
        paused.stop(checkpoint=False)

        run.run([zero, one])
        assert len(sent_by_task_1()) > len(before)
        assert _sent_once(sh) == 0
        assert _answer(sh) == _duckdb()
        for task in (zero, one):
            task.stop()


def test_a_query_of_two_stages_keeps_its_parallelism_on_agents(tmp_path: Path) -> None:
    """Its state does not move to another number of tasks on agents yet: the move is refused
    by name, and the checkpoints stay at 2."""
    first_half, _ = _halves()
    with streamhouse.connect(tmp_path / "data") as sh:
        _produce(sh, first_half)
        run = Tasks(sh, tmp_path)
        tasks = [run.take(t, "a") for t in range(PARALLELISM)]
        run.run([t for t, _ in tasks])
        for task, lease in tasks:
            task.stop()
            run.md.release_lease(lease)
        assert current_parallelism(run.md, NAME) == PARALLELISM
        leases = [run.md.acquire_lease(task_lease_name(NAME, t), "b", 60_000) for t in range(3)]
        pointer = run.md.acquire_lease(f"query/{NAME}/rescale", "b", 60_000)
        assert pointer is not None and None not in leases
        at_3 = QueryFile.read(_query_text(3), name=NAME)
        with pytest.raises(SqlError, match="of two stages.* does not move from 2 to 3 tasks"):
            rescale_on_agents(sh.engine, at_3, "b", tmp_path / "b", leases, pointer)  # type: ignore[arg-type]
        assert current_parallelism(run.md, NAME) == PARALLELISM


def test_a_task_slower_to_start_than_its_lease_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor (lease TTL 2 s) whose tasks take over 2.5 s to start (restoring their
    checkpoints, planning both stages: on a loaded host, longer than the lease): it renews each
    lease while the task starts, so each is taken once and the query runs to DuckDB's answer.
    (Before, the lease ran out as the task started, its first append was refused, and the
    agent took the task again at the next epoch, over and over.)"""
    first_half, second_half = _halves()
    original = QuerySupervisor._start

    def slow(self: QuerySupervisor, *args: Any) -> Any:
        time.sleep(2.5)
        return original(self, *args)

    monkeypatch.setattr(QuerySupervisor, "_start", slow)
    with streamhouse.connect(tmp_path / "data") as sh:
        _produce(sh, first_half)
        supervisor = QuerySupervisor(sh.engine, "a", 2.0, tmp_path / "a")
        supervisor.add(QueryFile.read(_query_text(), name=NAME))
        supervisor.start()
        try:
            _until(lambda: len(supervisor.running) == PARALLELISM, "both tasks running", 30)
            _produce(sh, second_half)
            want = _duckdb()
            _until(lambda: _answer(sh) == want, "DuckDB's answer in the sink", 60)
            epochs = [
                lease.epoch
                for task in range(PARALLELISM)
                for lease in sh.log.metadata.list_leases(task_lease_name(NAME, task))
            ]
            # each task taken once (epoch 2), after its state was begun under it (epoch 1)
            assert epochs == [2] * PARALLELISM
        finally:
            supervisor.stop()


# -- real agents on PostgreSQL -----------------------------------------------------------------


@pytest.fixture(params=["local"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    """Agents running q4 at parallelism 2 (``queries/q4.sql`` alone)."""
    with running_cluster(request, tmp_path, postgres_url, 1) as made:
        (made.queries / "clicks.sql").unlink()
        (made.queries / f"{NAME}.sql").write_text(_query_text())
        yield made


def _holders(cluster: Cluster) -> dict[int, tuple[KafkaServer, int]]:
    """Task -> (the live agent holding its live lease, the lease's epoch)."""
    ports = {a.agent_id: a.port for a in cluster.md.list_agents()}
    held = {}
    for task in range(PARALLELISM):
        for lease in cluster.md.list_leases(task_lease_name(NAME, task)):
            if lease.live and lease.holder in ports:
                agent = next(s for s in cluster.agents if s.port == ports[lease.holder])
                held[task] = (agent, lease.epoch)
    return held


def _until_held(cluster: Cluster, agents: int, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    held: dict[int, tuple[KafkaServer, int]] = {}
    while time.monotonic() < deadline:
        held = _holders(cluster)
        if len(held) == PARALLELISM and len({a.port for a, _ in held.values()}) == agents:
            return held
        time.sleep(0.1)
    logs = "\n".join(a.log(40) for a in cluster.agents)
    raise AssertionError(f"tasks not held by {agents} agent(s) within {timeout}s: {held}\n{logs}")


@pytest.mark.parametrize(
    ("cluster", "fault"),
    [("local", "kill"), ("local", "pause"), ("s3", "kill")],
    indirect=["cluster"],
)
def test_q4_on_two_agents_one_killed_or_paused_mid_run_equals_duckdb(
    cluster: Cluster, fault: str
) -> None:
    """q4 at parallelism 2 on two agents; once rows come out, the agent running task 1 is
    killed -9 (or paused past its leases, then woken) and the second half of the events is
    produced: the other agent takes task 1 over (its producing side, first and second stage,
    each from its checkpoint in the object store) and the sink ends with DuckDB's answer, no
    first-stage batch sent twice with other rows."""
    sh = cluster.sh
    assert sh is not None
    first_half, second_half = _halves()
    _produce(sh, first_half)
    for _ in range(PARALLELISM):
        cluster.start_agent()
    held = _until_held(cluster, 2)
    _until(lambda: len(_answer(sh)) > 0, "the first rows written", 60)
    recorded = {f"{NAME}.p2.task-1", f"{NAME}.p2.stage2-1"}  # task 1's stages checkpointed
    _until(
        lambda: recorded <= {c.query for c in cluster.md.list_query_checkpoints()},
        "task 1's checkpoints recorded",
        60,
    )
    victim, epoch = held[1]
    survivor = next(a for a in cluster.agents if a is not victim)
    assert victim.process is not None
    victim.process.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    _produce(sh, second_half)
    try:
        moved = _until_held(cluster, 1)
    finally:
        if fault == "pause":
            victim.process.send_signal(signal.SIGCONT)
    assert moved[1][0] is survivor and moved[1][1] > epoch
    want = _duckdb()
    _until(lambda: _answer(sh) == want, "DuckDB's answer in the sink", 90)
    time.sleep(1.5)  # a late write of the old holder would show now
    assert _answer(sh) == want
    _sent_once(sh)
    log_text = survivor.log_path.read_text()
    for store in ("task-1", "stage2-1"):  # resumed from the moved task's checkpoints
        assert f"query {NAME}.p2.{store}: restored checkpoint" in log_text
    if fault == "pause":
        _until(lambda: "lease lost" in victim.log_path.read_text(), "the woken agent fenced")


def test_a_first_stage_two_batches_past_its_checkpoint_the_last_sent_in_part_replays_both(
    on_agent_a: OnAgentA, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task 1's first stage records a checkpoint after its first batch (so its state holds
    where that batch's records landed), sends a second without one (as if by interval), and
    dies between the appends of its third: partition 0 of the second exchange holds it,
    partition 1 not, and task 0's second stage takes it meanwhile. Agent b restores the first
    checkpoint and replays the second and third batches whole from their records' intents:
    task 0 skips what it took, task 1 gets the third batch once, the sink holds DuckDB's
    answer."""
    run, zero, one, old, second_half = on_agent_a
    sh = run.sh
    checkpoints = one.first.checkpoints
    assert checkpoints is not None
    publish, published = checkpoints.publish, []

    def every_other(*args: Any) -> str:
        published.append(len(published) + 1)
        return publish(*args) if len(published) == 1 else "not taken"

    monkeypatch.setattr(checkpoints, "publish", every_other)
    for _ in range(2):
        run.produce_a_batch([zero, one])
        assert one.first.step()
    run.produce_a_batch([zero, one])
    together = sh.log.append_together

    def to_partition_0_only(topic: str, records: dict, **options: Any) -> dict:
        together(topic, {0: records[0]}, **options)[0].result()
        raise OSError("agent a died between its appends")

    monkeypatch.setattr(sh.log, "append_together", to_partition_0_only)
    with pytest.raises(OSError, match="between its appends"):
        one.first.step()
    monkeypatch.undo()
    run.run([zero])  # task 0's second stage takes the third batch from partition 0
    one, _ = run.move(one, old, "b", second_half, zero)
    assert "first stage 1 replays 2 batch(es) it sent after its checkpoint" in caplog.text
    run.run([zero, one])

    keys = sh.fetch(stage_topic(NAME), isolation_level="read_uncommitted")["key"].to_pylist()
    counts = {s: sum(k.startswith(f"1:{s}:".encode()) for k in keys) for s in (1, 2, 3)}
    assert counts == {1: PARALLELISM, 2: 2 * PARALLELISM, 3: 1 + PARALLELISM}
    assert _sent_once(sh) == PARALLELISM + 1
    assert _answer(sh) == _duckdb()
    for task in (zero, one):
        task.stop()


def test_renewing_while_a_task_starts_keeps_no_lease_that_ran_out(tmp_path: Path) -> None:
    """An agent paused while it started a task wakes after its lease ran out: the renewals
    made while the task starts (:func:`renewing`) neither revive the lease nor take it back
    from the agent that took it meanwhile (at the next epoch)."""
    with streamhouse.connect(tmp_path / "data") as sh:
        md = sh.log.metadata
        names = [task_lease_name(NAME, task) for task in range(2)]
        expired, superseded = (md.acquire_lease(name, "a", 60_000) for name in names)
        assert expired is not None and superseded is not None
        for lease in (expired, superseded):
            assert md.renew_lease(lease, 1)  # then it runs out (the agent paused)
        time.sleep(0.05)
        taken = md.acquire_lease(names[1], "b", 60_000)
        assert taken is not None and taken.epoch == superseded.epoch + 1
        with renewing(md, [expired, superseded], 150):
            time.sleep(0.4)  # two rounds of renewals
        (after_expired,) = md.list_leases(names[0])
        (after_taken,) = md.list_leases(names[1])
        assert (after_expired.holder, after_expired.live) == ("a", False)
        assert (after_taken.holder, after_taken.epoch, after_taken.live) == ("b", taken.epoch, True)


def test_a_first_stage_moved_again_after_replaying_one_of_two_batches_replays_the_other(
    on_agent_a: OnAgentA, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task 1's first stage sends two batches with no checkpoint recorded and its agent dies;
    agent b replays the first of them (and records a checkpoint of it) and dies too. The second
    batch's records lie before the replayed first's in the second exchange: agent c must still
    find and replay the second from its intent, not send a batch of other rows under its
    sequence number (which the second stage, having taken the first sending, would skip)."""
    run, zero, one, old, second_half = on_agent_a
    sh = run.sh
    assert one.first.checkpoints is not None
    monkeypatch.setattr(one.first.checkpoints, "publish", lambda *_: "not taken")
    for _ in range(2):
        run.produce_a_batch([zero, one])
        assert one.first.step()
    run.run([zero])  # task 0's second stage takes both batches of its share
    one, lease = run.move(one, old, "b", second_half, zero)  # with more rows for task 1
    assert "first stage 1 replays 2 batch(es)" in caplog.text
    assert one.step()  # the first replayed (and its checkpoint recorded) ...
    assert one.first.store.get_int(b"stage/sequence") == 1
    caplog.clear()
    one, _ = run.move(one, lease, "c", {}, zero)  # ... and agent b dies
    assert "first stage 1 replays 1 batch(es)" in caplog.text
    run.run([zero, one])
    assert _sent_once(sh) == 2 * PARALLELISM  # batches 1 and 2 sent again once each
    assert _answer(sh) == _duckdb()
    for task in (zero, one):
        task.stop()
