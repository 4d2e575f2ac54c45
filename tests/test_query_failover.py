"""Continuous queries across agents (issue 15 part 5): each query runs on the one agent holding
its lease; when that agent dies or pauses past the lease, another resumes from the checkpoint
recorded under the lease, and every window is written exactly once (DuckDB's answer)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from kafka import KafkaProducer
from kafka_fixtures import REPO, KafkaServer

import streamhouse
from streamhouse.cli import main as cli
from streamhouse.config import Settings
from streamhouse.errors import FencedError
from streamhouse.log import Log
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.records import build_batch, decode_batches
from streamhouse.runtime.launch import QueryFile, start_query
from streamhouse.runtime.query import ContinuousQuery
from streamhouse.runtime.supervisor import QuerySupervisor, lease_name
from streamhouse.state.remote import PREFIX, SST, _manifest

T0 = 1_767_225_600  # 2026-01-01 00:00:00 UTC, in seconds
LEASE_TTL_S = 2.0
OUTPUT = "clicks_per_minute"  # the sink of queries/clicks.sql, the roadmap's query
PARTITIONS = 4


def _events(seconds: range) -> list[dict[str, object]]:
    """Two events a second of event time: a click of one of 7 users, and a click or a view of
    one of 5; spread over the 4 partitions of ``events`` in turn."""
    out: list[dict[str, object]] = []
    for s in seconds:
        stamp = datetime.fromtimestamp(T0 + s, UTC).strftime("%Y-%m-%d %H:%M:%S")
        out.append({"user_id": s % 7 + 1, "event_type": "click", "timestamp": stamp})
        kind = "click" if s % 3 else "view"
        out.append({"user_id": s % 5 + 1, "event_type": kind, "timestamp": stamp})
    return out


def _closing(second: int) -> list[dict[str, object]]:
    """A view on every partition at ``second``: the watermark passes every earlier window."""
    stamp = datetime.fromtimestamp(T0 + second, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [{"user_id": 0, "event_type": "view", "timestamp": stamp}] * PARTITIONS


def _produce(bootstrap: str, events: list[dict[str, object]]) -> None:
    """Every event acknowledged (retried while a killed agent is still named a leader)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, retries=50, retry_backoff_ms=200
    )
    sent = [
        producer.send("events", json.dumps(event).encode(), partition=i % PARTITIONS)
        for i, event in enumerate(events)
    ]
    for future in sent:
        future.get(timeout=60)
    producer.close()


def _expected(events: list[dict[str, object]]) -> Counter[tuple[int, str]]:
    """DuckDB's answer: clicks per user per minute, (user, window start) -> count."""
    clicks = pa.Table.from_pylist(events)  # noqa: F841 (read by DuckDB)
    rows = duckdb.sql(
        "SELECT user_id, strftime(time_bucket(INTERVAL 1 MINUTE, CAST(timestamp AS TIMESTAMP)),"
        " '%Y-%m-%d %H:%M:%S') AS window_start, count(*) AS n FROM clicks"
        " WHERE event_type = 'click' GROUP BY ALL"
    ).fetchall()
    return Counter({(int(u), str(w)): int(n) for u, w, n in rows})


def _windows(rows: list[dict[str, object]]) -> Counter[tuple[int, str]]:
    return Counter(
        {(int(r["user_id"]), str(r["window_start"])): int(r["event_count"]) for r in rows}
    )  # type: ignore[call-overload]


class Cluster:
    """Agents on one PostgreSQL schema and one shared data directory, all running
    ``serve --queries`` over a copy of ``queries/clicks.sql``; a reader of the output."""

    def __init__(
        self,
        tmp_path: Path,
        postgres_url: str,
        s3: tuple[str, str] | None = None,
        lease_ttl_s: float | None = LEASE_TTL_S,
    ) -> None:
        self.tmp_path = tmp_path
        self.lease_ttl_s = lease_ttl_s  # None: the agents' defaults (query lease, agent TTL)
        self.url = postgres_url
        self.s3 = s3  # (s3://bucket/prefix, moto's endpoint) instead of the data dir's objects
        self.data = tmp_path / "data"
        self.queries = tmp_path / "queries"
        self.queries.mkdir()
        roadmap = (REPO / "queries" / "clicks.sql").read_text()
        # The agents start seconds apart before anything is produced: by the default idle
        # timeout (5 s) every partition would be idle by then, and the first partitions read
        # would move the watermark past the others' rows (late, dropped).
        (self.queries / "clicks.sql").write_text(f"SET 'idle-timeout' = '1 minute';\n{roadmap}")
        self.agents: list[KafkaServer] = []
        self.md = PostgresMetadata(postgres_url)
        self.sh: streamhouse.StreamHouse | None = None

    def start_agent(self) -> KafkaServer:
        # the command line the issue names: serve --metadata ... --object-store s3://...
        store = ["--object-store", self.s3[0], "--s3-endpoint-url", self.s3[1]] if self.s3 else []
        server = KafkaServer(
            self.data,
            args=["--metadata", self.url, *store, "--queries", str(self.queries)],
            env=(
                {"STREAMHOUSE_QUERY_LEASE_TTL_S": str(self.lease_ttl_s)}
                if self.lease_ttl_s is not None
                else {}
            ),
        )
        server.log_path = self.tmp_path / f"agent-{len(self.agents)}.log"
        self.agents.append(server)
        return server.start()

    def holder(self, timeout: float = 20.0) -> tuple[KafkaServer, int]:
        """The agent holding the query's live lease, and the lease's epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = {a.agent_id: a.port for a in self.md.list_agents()}
            for lease in self.md.list_leases(lease_name("clicks")):
                if lease.live and lease.holder in ports:
                    server = next(s for s in self.agents if s.port == ports[lease.holder])
                    return server, lease.epoch
            time.sleep(0.05)
        raise AssertionError(f"no agent holds the query after {timeout}s")

    def append(self, events: list[dict[str, object]]) -> None:
        """Write ``events`` to the log directly (not through an agent), spread as _produce does."""
        assert self.sh is not None
        for p in range(PARTITIONS):
            self.sh.produce("events", events[p::PARTITIONS], partition=p)

    def output(self) -> list[dict[str, object]]:
        if self.sh is None:
            store = {"object_store": self.s3[0], "s3_endpoint_url": self.s3[1]} if self.s3 else {}
            self.sh = streamhouse.connect(self.data, metadata=self.url, **store)
        if self.sh.log.get_topic(OUTPUT) is None:
            return []
        return [json.loads(v) for v in self.sh.fetch(OUTPUT)["value"].to_pylist()]

    def wait_for(
        self, done: Callable[[list[dict[str, object]]], bool], timeout: float = 60.0
    ) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            rows = self.output()
            if done(rows):
                return rows
            time.sleep(0.05)
        logs = "\n".join(a.log(30) for a in self.agents)
        raise AssertionError(f"output not there within {timeout}s ({len(rows)} rows)\n{logs}")

    def close(self) -> None:
        for server in self.agents:
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGCONT)
            server.kill()
        if self.sh is not None:
            self.sh.close()
        self.md.close()


@contextmanager
def running_cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    postgres_url: str,
    partitions: int,
    parallelism: int | None = None,
) -> Iterator[Cluster]:
    """Agents sharing the data directory's objects (``local``) or a moto S3 bucket (``s3``), by
    ``request.param``; the roadmap query at ``parallelism`` when given; topic ``events`` made
    with ``partitions`` before a producer auto-creates it."""
    s3 = None
    if request.param == "s3":
        s3 = (request.getfixturevalue("s3_url")("agents"), request.getfixturevalue("moto_server"))
    made = Cluster(tmp_path, postgres_url, s3)
    if parallelism is not None:
        roadmap = made.queries / "clicks.sql"
        roadmap.write_text(f"SET 'parallelism' = '{parallelism}';\n{roadmap.read_text()}")
    made.output()  # opens the store
    assert made.sh is not None
    made.sh.create_topic("events", partitions=partitions)
    yield made
    made.close()


@pytest.fixture(params=["local"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    with running_cluster(request, tmp_path, postgres_url, PARTITIONS) as made:
        yield made


def _minute(rows: list[dict[str, object]], at_least: int) -> bool:
    """Whether a window starting at minute ``at_least`` or later was written."""
    first = datetime.fromtimestamp(T0 + 60 * at_least, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return any(str(r["window_start"]) >= first for r in rows)


def _exactly_once(cluster: Cluster, produced: list[dict[str, object]]) -> None:
    """Once every window closed: each written once, with DuckDB's count; no extra record."""
    want = _expected(produced)
    rows = cluster.wait_for(lambda rows: len(rows) >= len(want))
    time.sleep(1.5)  # a duplicate would show up now
    rows = cluster.output()
    keys = Counter((r["user_id"], r["window_start"]) for r in rows)
    assert [k for k, n in keys.items() if n > 1] == [], "a window was written twice"
    assert _windows(rows) == want
    assert len(rows) == len(want)  # no extra record committed


@pytest.mark.parametrize("cluster", ["local", "s3"], indirect=True)
def test_the_agent_running_a_query_is_killed_and_another_resumes_it_exactly_once(
    cluster: Cluster,
) -> None:
    agents = [cluster.start_agent() for _ in range(3)]
    first, epoch = cluster.holder()
    produced = _events(range(0, 600))
    _produce(agents[0].bootstrap, produced)
    cluster.wait_for(lambda rows: _minute(rows, 8))  # minutes 0-8 closed

    first.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    killed_at = time.monotonic()
    first.process.wait()  # type: ignore[union-attr]
    survivor = next(a for a in agents if a is not first)
    more = _events(range(600, 1200))
    # straight into the log: a Kafka producer would wait for the killed agent to drop out of
    # Metadata answers (the agent TTL), and the failover time would measure that too
    cluster.append(more)
    produced += more
    cluster.wait_for(lambda rows: _minute(rows, 9))  # a window only the new holder closed
    failover_s = time.monotonic() - killed_at
    second, new_epoch = cluster.holder()
    assert second is not first and new_epoch > epoch
    status = CliRunner().invoke(
        cli,
        ["--data-dir", str(cluster.data), "cluster", "status", "--metadata", cluster.url],
        env={"COLUMNS": "400"},
    )
    assert status.exit_code == 0, status.output
    (row,) = [line for line in status.output.splitlines() if "clicks" in line]
    assert f"127.0.0.1:{second.port}" in row and f" {new_epoch} " in row
    assert f"{new_epoch:012d}-" in row  # the checkpoint the new holder recorded
    (recorded,) = cluster.md.list_query_checkpoints()
    assert recorded.query == "clicks" and recorded.epoch == new_epoch
    assert 0 < sum(recorded.positions["events"].values()) <= len(produced)
    print(f"failover: kill -9 to the first new output record in {failover_s:.2f} s")
    assert failover_s < 15

    _produce(survivor.bootstrap, _closing(1800))
    _exactly_once(cluster, produced)
    assert "restored checkpoint" in second.log(400)


VIEWED = (
    "CREATE MATERIALIZED VIEW viewed AS"
    " SELECT user_id, `timestamp` FROM events WHERE event_type = 'view'"
)
"""A materialized view in the catalog (no file): the agents run it too, one at a time."""


def test_a_paused_holder_is_fenced_and_writes_nothing_after_it_resumes(cluster: Cluster) -> None:
    assert cluster.sh is not None
    for declaration in QueryFile.read(cluster.queries / "clicks.sql").declarations:
        cluster.sh.engine.statement(declaration)  # the stream the view reads
    cluster.md.put_catalog("viewed", "view", VIEWED)
    agents = [cluster.start_agent() for _ in range(2)]
    first, epoch = cluster.holder()
    other = next(a for a in agents if a is not first)
    produced = _events(range(0, 600))
    _produce(other.bootstrap, produced)
    cluster.wait_for(lambda rows: _minute(rows, 8))

    first.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    more = _events(range(600, 1200))
    # for the paused holder to find when it resumes; not through Kafka, whose clients would
    # send to the paused agent until it drops out of Metadata answers (the agent TTL)
    cluster.append(more)
    produced += more
    cluster.wait_for(lambda rows: _minute(rows, 9))  # the other agent took over
    second, new_epoch = cluster.holder()
    assert second is other and new_epoch > epoch
    first.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while "lease lost" not in first.log(400) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "lease lost" in first.log(400)  # it stopped the query, writing nothing more
    assert cluster.holder()[0] is other

    cluster.append(_closing(1800))
    _exactly_once(cluster, produced)
    views = Counter(
        (e["user_id"], e["timestamp"])
        for e in produced + _closing(1800)
        if e["event_type"] == "view"
    )
    held = {lease.name: lease.holder for lease in cluster.md.list_leases() if lease.live}
    assert set(held) == {lease_name("clicks"), lease_name("viewed")}

    def viewed() -> Counter[tuple[object, object]]:
        return Counter(
            (row["user_id"], row["timestamp"])
            for row in (json.loads(v) for v in cluster.sh.fetch("viewed")["value"].to_pylist())  # type: ignore[union-attr]
        )

    _until(lambda: sum(viewed().values()) >= sum(views.values()), "the view's rows")
    time.sleep(1.0)
    assert viewed() == views  # each view event once


# -- in one process: the fence and the recorded checkpoint, step by step -------------------------

QUERY = """
INSERT INTO per_window
SELECT k, window_start, COUNT(*) AS n, SUM(v) AS total
FROM ev GROUP BY k, TUMBLING(t, INTERVAL '10' SECOND)
"""


def _first_holder(sh: streamhouse.StreamHouse, tmp_path: Path) -> tuple[ContinuousQuery, Lease]:
    """120 rows of ``ev`` (one a second, keys a and b in turn) and the query run in this
    process under agent-a's lease, not started (stepped by the test)."""
    sh.sql(
        "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
        " WITH (topic = 'ev', partitions = '1')"
    )
    rows = [{"k": "ab"[i % 2], "v": i, "t": i * 1000} for i in range(120)]
    sh.produce("ev", rows, key=[r["k"] for r in rows])
    lease = sh.log.metadata.acquire_lease(lease_name("windows"), "agent-a", 10_000)
    assert lease is not None
    query = start_query(
        sh.engine, QUERY, name="windows", state_root=tmp_path / "a", start=False, fence=lease
    )
    return query, lease


def _take_over(
    sh: streamhouse.StreamHouse, tmp_path: Path, old: Lease
) -> tuple[ContinuousQuery, Lease]:
    """agent-a paused past its lease: agent-b takes it and resumes the query (not started)."""
    md = sh.log.metadata
    assert md.renew_lease(old, 1)
    time.sleep(0.05)
    new = md.acquire_lease(lease_name("windows"), "agent-b", 10_000)
    assert new is not None and new.epoch == old.epoch + 1
    query = start_query(
        sh.engine, QUERY, name="windows", state_root=tmp_path / "b", start=False, fence=new
    )
    return query, new


def _per_window(sh: streamhouse.StreamHouse) -> Counter[tuple[str, str, int, int]]:
    """The committed output: (k, window_start, n, total) -> how many times it was written."""
    return Counter(
        (r["k"], r["window_start"], r["n"], r["total"])
        for r in (json.loads(v) for v in sh.fetch("per_window")["value"].to_pylist())
    )


def _every_window() -> Counter[tuple[str, str, int, int]]:
    """Every 10 s window of both keys of :func:`_first_holder`'s rows, once."""
    want: Counter[tuple[str, str, int, int]] = Counter()
    for start in range(0, 120, 10):
        for k in "ab":
            vs = [i for i in range(start, start + 10) if "ab"[i % 2] == k]
            stamp = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M:%S")
            want[(k, stamp, len(vs), sum(vs))] += 1
    return want


def test_a_holder_that_lost_its_lease_is_refused_and_the_next_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        md = sh.log.metadata
        first, old = _first_holder(sh, tmp_path)
        for _ in range(3):
            first.step(max_records=25)
        written = sh.log.offsets("per_window", 0).high_watermark
        assert written > 0 and md.query_checkpoint("windows") is not None
        second, new = _take_over(sh, tmp_path, old)  # then paused past its lease
        assert 0 < sum(second.source.positions.values()) <= 75  # resumed, not started over
        # it wakes up: refused, nothing written (the new holder's start fenced its producer,
        # and its lease is gone)
        with pytest.raises(FencedError, match="is no longer held by agent-a|fenced this one"):
            first.step(max_records=25)
        assert sh.log.offsets("per_window", 0).high_watermark == written
        second.run_until_caught_up(final=True)
        second.stop()
        first.stop(checkpoint=False)
        assert md.query_checkpoint("windows").startswith(f"{new.epoch:012d}-")  # type: ignore[union-attr]
        got = _per_window(sh)
        keys = sh.log.store.list(f"{PREFIX}/windows/")
        ids = {key.split("/")[2] for key in keys} - {SST}
        recorded = md.query_checkpoint("windows")
        assert recorded is not None
        needed = set(_manifest(sh.log.store, "windows", recorded).values())
        shared = {key for key in keys if key.split("/")[2] == SST}
    assert got == _every_window()  # every window exactly once
    assert 1 <= len(ids) <= 2  # older checkpoints deleted
    assert shared and any(key in needed for key in shared)  # SST files shared, not copied
    assert needed <= set(keys)


def test_a_holder_paused_after_writing_a_batch_it_had_not_recorded_has_it_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder commits a micro-batch (its checkpoint, recording the transaction, published
    first), writes the next batch's output in a new transaction and pauses before publishing
    that batch's checkpoint. The next holder resumes from the recorded checkpoint: it must not
    commit the paused holder's open transaction in place of the recorded one (it would, were
    both of one producer epoch) but abort it and write that batch itself: every window once."""
    with streamhouse.connect(tmp_path / "data") as sh:
        md = sh.log.metadata
        first, old = _first_holder(sh, tmp_path)
        for _ in range(2):
            first.step(max_records=25)
        committed = sh.log.offsets("per_window", 0).high_watermark
        recorded = md.query_checkpoint("windows")
        assert recorded is not None
        assert first.checkpoints is not None
        published = first.checkpoints.publish
        paused, resumed = threading.Event(), threading.Event()

        def pause(*args: object) -> str:  # SIGSTOP before the checkpoint is published
            paused.set()
            resumed.wait(30)
            return published(*args)  # type: ignore[arg-type]

        first.checkpoints.publish = pause  # type: ignore[method-assign]
        outcome: list[BaseException | None] = []

        def third_batch() -> None:
            try:
                first.step(max_records=25)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 (the test checks it)
                outcome.append(exc)

        thread = threading.Thread(target=third_batch)
        thread.start()
        assert paused.wait(30)
        assert sh.log.offsets("per_window", 0).high_watermark > committed  # its records
        caplog.set_level(logging.INFO, logger="streamhouse.runtime.two_phase")
        second, _ = _take_over(sh, tmp_path, old)  # paused past its lease
        assert md.query_checkpoint("windows") == recorded
        assert "of the checkpoint was committed before" in caplog.text
        assert "output is lost" not in caplog.text
        resumed.set()  # SIGCONT: refused
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], FencedError)
        second.run_until_caught_up(final=True)
        second.stop()
        first.stop(checkpoint=False)
        got = _per_window(sh)
    # every window exactly once: the paused holder's batch was aborted, not committed
    assert got == _every_window()


def test_a_fenced_append_fails_alone_in_the_log_writer(tmp_path: Path) -> None:
    """Appends under a lost lease are refused at their commit; appends queued beside them
    (another producer's, in the same linger) are flushed apart and acknowledged."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=50)) as log:
        log.create_topic("t", partitions=1)
        lease = log.metadata.acquire_lease(lease_name("q"), "agent-a", 10_000)
        assert lease is not None
        assert log.append("t", 0, build_batch([b"held"]), fence=lease).result() == 0
        assert log.metadata.renew_lease(lease, 1)
        time.sleep(0.05)  # expired
        plain = [log.append("t", 0, build_batch([b"before"]))]
        fenced = log.append("t", 0, build_batch([b"stale"]), fence=lease)
        plain.append(log.append("t", 0, build_batch([b"after"])))
        with pytest.raises(FencedError):
            fenced.result()
        assert sorted(f.result() for f in plain) == [1, 2]
        rows = log.metadata.segments("t", 0)
        values = decode_batches(b"".join(log.reader.run_bytes(r) for r in rows))["value"]
        assert values.to_pylist() == [b"held", b"before", b"after"]


def test_the_supervisor_hands_a_query_over_when_its_lease_is_lost_or_released(
    tmp_path: Path,
) -> None:
    """Two supervisors (two agents) in one process: one runs the query; when its lease is
    taken (it expired unrenewed) it stops the query, and the other resumes it; a clean stop
    releases the lease at once. Every window once."""
    query = f"SET 'poll-interval' = '20 ms';\n{QUERY}"
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(
            "CREATE STREAM ev (k STRING, v BIGINT, t TIMESTAMP(3), WATERMARK FOR t AS t)"
            " WITH (topic = 'ev', partitions = '1')"
        )
        md = sh.log.metadata
        agents = {
            name: QuerySupervisor(sh.engine, name, 0.6, tmp_path / name) for name in ("a", "b")
        }
        for supervisor in agents.values():
            supervisor.add(QueryFile.read(query, name="windows"))
        agents["a"].start()
        _until(lambda: bool(agents["a"].running), "a runs the query")
        agents["b"].start()
        rows = [{"k": "ab"[i % 2], "v": i, "t": i * 1000} for i in range(120)]
        sh.produce("ev", rows[:40], key=[r["k"] for r in rows[:40]])
        _until(lambda: _written(sh) >= 6, "a writes windows")
        assert not agents["b"].running

        (lease,) = md.list_leases(lease_name("windows"))
        assert md.renew_lease(lease, 1)  # as if a paused past it: b takes it, a stops
        _until(lambda: bool(agents["b"].running) and not agents["a"].running, "b took over")
        sh.produce("ev", rows[40:80], key=[r["k"] for r in rows[40:80]])
        _until(lambda: _written(sh) >= 14, "b writes windows")

        agents["b"].stop()  # a clean stop: a last checkpoint, the lease released
        _until(lambda: bool(agents["a"].running), "a took it back")
        sh.produce("ev", rows[80:], key=[r["k"] for r in rows[80:]])
        _until(lambda: _written(sh) >= 22, "a writes the rest")
        agents["a"].stop()
        epochs = [lease.epoch for lease in md.list_leases(lease_name("windows"))]
        got = Counter(
            (r["k"], r["window_start"])
            for r in (json.loads(v) for v in sh.fetch("per_window")["value"].to_pylist())
        )
    assert epochs == [3]
    assert len(got) == 22 and set(got.values()) == {1}  # windows 0-100 s of both keys, once
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # state dropped


def _written(sh: streamhouse.StreamHouse) -> int:
    """Output records committed (a transaction's markers take offsets too)."""
    topic = sh.log.get_topic("per_window")
    return 0 if topic is None else sh.fetch("per_window").num_rows


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.02)
