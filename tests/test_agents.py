"""Agents: ``serve`` processes sharing one PostgreSQL metadata store and one object store
register, heartbeat and are answered as the brokers of one cluster (issue 15, parts 1, 2, 6);
idempotent producers keep their sequences across agents (part 3); one agent at a time
coordinates a consumer group, by a lease, and another takes over when it dies (part 4)."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from group_members import PARTITIONS, PER_ROUND, Member, balanced, consumed, produce_round, wait
from kafka_fixtures import REPO, KafkaServer, RawClient, free_port, produce_request

import streamhouse
from streamhouse.cli import main as cli
from streamhouse.config import Settings
from streamhouse.errors import FencedError
from streamhouse.kafka.cluster import Cluster, Node, node_id_of
from streamhouse.kafka.coordination import ADOPT_COMMITS_S, GroupLeases
from streamhouse.kafka.peers import PeerLinks
from streamhouse.kafka.wire import ErrorCode, ms
from streamhouse.log.metadata import AgentInfo
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.sqlite import SQLiteMetadata
from streamhouse.log.records import build_batch, decode_batches

Store = SQLiteMetadata | PostgresMetadata

TTL_S = 3.0


# -- the store ------------------------------------------------------------------------------------


def test_agents_register_heartbeat_and_deregister(md: Store) -> None:
    assert md.list_agents() == []
    md.register_agent("b", "10.0.0.2", 9093, "z2", "default")
    md.register_agent("a", "10.0.0.1", 9092, "z1", "prod")
    agents = md.list_agents()
    assert [(a.agent_id, a.host, a.port, a.zone, a.group) for a in agents] == [
        ("a", "10.0.0.1", 9092, "z1", "prod"),
        ("b", "10.0.0.2", 9093, "z2", "default"),
    ]
    assert all(0 <= a.heartbeat_age_ms < 5_000 and a.heartbeat_ms >= a.started_ms for a in agents)
    time.sleep(0.05)
    before = {a.agent_id: a.heartbeat_ms for a in agents}
    assert md.heartbeat_agent("a") is True
    after = {a.agent_id: a.heartbeat_ms for a in md.list_agents()}
    assert after["a"] > before["a"] and after["b"] == before["b"]
    md.register_agent("a", "10.0.0.9", 9099, "z9", "prod")  # a restart replaces the row
    assert [(a.host, a.port) for a in md.list_agents() if a.agent_id == "a"] == [("10.0.0.9", 9099)]
    md.deregister_agent("a")
    md.deregister_agent("a")  # no error the second time
    assert [a.agent_id for a in md.list_agents()] == ["b"]
    assert md.heartbeat_agent("a") is False


def test_silent_agents_are_forgotten(md: Store) -> None:
    md.register_agent("old", "h", 1, "", "default")
    time.sleep(0.3)
    md.register_agent("new", "h", 2, "", "default")
    assert md.forget_agents(10_000) == 0
    assert md.forget_agents(200) == 1
    assert [a.agent_id for a in md.list_agents()] == ["new"]


def test_heartbeat_ages_grow(md: Store) -> None:
    md.register_agent("a", "h", 1, "", "default")
    time.sleep(0.3)
    (agent,) = md.list_agents()
    assert agent.heartbeat_age_ms >= 250


# -- answers of one agent ---------------------------------------------------------------------------


class _Agents:
    """A fake store with a fixed list of agents."""

    def __init__(self, agents: list[AgentInfo]) -> None:
        self.agents = agents

    def list_agents(self) -> list[AgentInfo]:
        return self.agents


def _cluster(agents: list[AgentInfo], **settings: object) -> Cluster:
    cluster = Cluster(_Agents(agents), Settings(agent_ttl_s=TTL_S, **settings))  # type: ignore[arg-type]
    cluster._agents = agents
    return cluster


def _agent(agent_id: str, zone: str = "", group: str = "default", age_ms: int = 0) -> AgentInfo:
    return AgentInfo(agent_id, f"host-{agent_id}", 9092, zone, group, 0, 0, age_ms)


def test_nodes_filter_by_ttl_group_and_zone() -> None:
    agents = [
        _agent("a", "z1"),
        _agent("b", "z2"),
        _agent("c", "z1", age_ms=int(TTL_S * 1000) + 1),  # dead
        _agent("d", "z1", group="staging"),
    ]
    cluster = _cluster(agents, zone="z2")
    me = cluster.node_id
    everyone = {node_id_of("a"), node_id_of("b"), me}
    assert {n.node_id for n in cluster.nodes()} == everyone
    assert [n.node_id for n in cluster.nodes()] == sorted(everyone)
    assert {n.node_id for n in cluster.nodes("z1")} == {node_id_of("a")}
    assert {n.node_id for n in cluster.nodes("z2")} == {node_id_of("b"), me}
    assert {n.node_id for n in cluster.nodes("nowhere")} == everyone
    staging = _cluster(agents, agent_group="staging")
    assert {n.node_id for n in staging.nodes()} == {node_id_of("d"), staging.node_id}


def test_an_unshared_store_answers_with_node_0_alone() -> None:
    cluster = Cluster(None, Settings(port=9999))
    assert cluster.node_id == 0
    assert [(n.node_id, n.port) for n in cluster.nodes("z1")] == [(0, 9999)]


def test_serve_without_flags_is_the_embedded_single_process_default(tmp_path: Path) -> None:
    """``streamhouse serve`` and nothing else (the port from the environment, as a free one
    is needed here): SQLite in ./streamhouse-data, one broker, node 0, no agent registered;
    the records it took are there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMHOUSE_")}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamhouse", "serve"],
        cwd=tmp_path,
        env={**env, "STREAMHOUSE_PORT": str(port), "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        server = KafkaServer(tmp_path / "streamhouse-data", port)
        _wait_for(lambda: _answers(server), 60, "serve answers")
        with RawClient(server.bootstrap) as client:
            response = client.request(3, 1, topics=None)
        assert [(b.node_id, b.port) for b in response.brokers] == [(0, port)]
        assert response.controller_id == 0
        producer = _producer([server])
        producer.produce("x", b"embedded")  # type: ignore[attr-defined]
        assert producer.flush(30) == 0  # type: ignore[attr-defined]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]
    data = tmp_path / "streamhouse-data"
    assert (data / "metadata.sqlite3").is_file()
    with SQLiteMetadata(data / "metadata.sqlite3") as md:
        assert md.list_agents() == []
    with streamhouse.connect(data) as sh:
        assert sh.fetch("x")["value"].to_pylist() == [b"embedded"]


def _answers(server: KafkaServer) -> bool:
    try:
        with RawClient(server.bootstrap, timeout=2) as client:
            client.request(18, 0)
    except OSError:
        return False
    return True


def test_peer_links_report_a_peer_whose_link_closed_and_address_refuses() -> None:
    """Only a link that was up, closed, and then a refused address is evidence: a listener that
    closes every connection (as a TLS listener does without a handshake) keeps accepting, and
    an address never reached says nothing."""

    async def scenario() -> list[str]:
        held: list[asyncio.StreamWriter] = []

        async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            await reader.read()

        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        alive = await asyncio.start_server(keep, "127.0.0.1", 0)
        closing = await asyncio.start_server(drop, "127.0.0.1", 0)
        nowhere = await asyncio.start_server(drop, "127.0.0.1", 0)
        addresses = {
            name: server.sockets[0].getsockname()[:2]
            for name, server in [("alive", alive), ("closing", closing), ("nowhere", nowhere)]
        }
        nowhere.close()  # its port now refuses: never reached
        await nowhere.wait_closed()
        gone: list[str] = []
        links = PeerLinks(gone.append)
        links.watch(addresses)
        await asyncio.sleep(1.5)  # several relinks of "closing", attempts at "nowhere"
        assert gone == [] and len(held) == 1
        alive.close()  # the process ends: listener and connections closed
        for writer in held:
            writer.close()
        await asyncio.sleep(0.5)
        await links.close()
        closing.close()
        return gone

    assert asyncio.run(scenario()) == ["alive"]


def test_a_peer_found_gone_is_named_again_once_it_heartbeats() -> None:
    """A peer found gone is left out of answers while its heartbeat is older than the moment
    it was found gone, named again once it beats after that, forgotten once unlisted."""

    def agent(age_ms: int) -> AgentInfo:
        return AgentInfo("p", "127.0.0.1", 1, "", "default", 0, 0, age_ms)

    async def scenario() -> None:
        store = _Agents([agent(0)])
        cluster = _cluster(store.agents)
        cluster.metadata = store  # type: ignore[assignment]
        peer = node_id_of("p")
        assert peer in {n.node_id for n in cluster.nodes()}
        cluster._peer_gone("p")
        assert peer not in {n.node_id for n in cluster.nodes()}
        assert cluster.node_of("p") is None
        cluster._gone["p"] -= 1.0  # found gone a second ago
        store.agents = [agent(1_500)]  # its last beat before that
        await cluster.refresh()
        assert peer not in {n.node_id for n in cluster.nodes()}  # though live by the TTL
        store.agents = [agent(200)]  # it beat since: alive after all
        await cluster.refresh()
        assert peer in {n.node_id for n in cluster.nodes()}
        cluster._peer_gone("p")
        store.agents = []
        await cluster.refresh()
        assert cluster._gone == {}
        await cluster.leave()

    asyncio.run(scenario())


def test_cluster_status_on_sqlite_says_there_are_no_agents(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "cluster", "status"])
    assert result.exit_code == 0 and "SQLite" in result.stderr and not result.stdout
    assert not (tmp_path / "d").exists()


def test_advertise_must_be_host_and_port(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path / "d"), "serve", "--advertise", "nope"]
    )
    assert result.exit_code == 2 and "expected HOST:PORT" in result.output


# -- real agents ----------------------------------------------------------------------------------


def _metadata(server: KafkaServer, client_id: str = "test") -> tuple[set[int], dict[int, int]]:
    """Node ids of the brokers a raw Metadata v1 request is answered with, and the leader of
    each partition of topic ``t``."""
    with RawClient(server.bootstrap, client_id=client_id) as client:
        response = client.request(3, 1, topics=None)
    leaders = {
        p.partition_index: p.leader_id
        for t in response.topics
        if t.name == "t"
        for p in t.partitions
    }
    return {b.node_id for b in response.brokers}, leaders


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def _cluster_status(data: Path, postgres_url: str) -> str:
    """What ``streamhouse cluster status`` prints (a wide table)."""
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(data), "cluster", "status", "--metadata", postgres_url],
        env={"COLUMNS": "400", "STREAMHOUSE_AGENT_TTL_S": str(TTL_S)},
    )
    assert result.exit_code == 0, result.output
    return result.output


def _states(status: str) -> list[str]:
    """The state column of ``cluster status``."""
    return re.findall(r"\b(live|dead)\b", status)


class _Deliveries:
    """A confluent-kafka ``on_delivery`` callback keeping the values acknowledged and the
    errors."""

    def __init__(self) -> None:
        self.acked: list[bytes] = []
        self.failed: list[str] = []

    def __call__(self, err: object, msg: object) -> None:
        if err is None:
            self.acked.append(msg.value())  # type: ignore[attr-defined]
        else:
            self.failed.append(str(err))


def _producer(servers: list[KafkaServer], **config: object) -> object:
    """A confluent-kafka producer bootstrapped with every agent of ``servers``."""
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": ",".join(s.bootstrap for s in servers),
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 1000,
            **config,
        }
    )


def _read_all(
    server: KafkaServer, partitions: int, count: int, settle_s: float = 0.0
) -> tuple[dict[int, list[int]], list[bytes]]:
    """Offsets by partition and values of topic ``t`` from its start, until ``count`` records
    arrived (then ``settle_s`` more, for anything beyond them) or 60 s passed."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "check"})
    consumer.assign([TopicPartition("t", p, 0) for p in range(partitions)])
    offsets: dict[int, list[int]] = {}
    values: list[bytes] = []
    deadline = time.monotonic() + 60
    settled = None
    while time.monotonic() < deadline and (settled is None or time.monotonic() < settled):
        for msg in consumer.consume(1000, 0.5):
            if not msg.error():
                offsets.setdefault(msg.partition(), []).append(msg.offset())
                values.append(msg.value())
        if settled is None and len(values) >= count:
            settled = time.monotonic() + settle_s
    consumer.close()
    return offsets, values


@pytest.fixture
def agents(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[Callable[..., KafkaServer]]:
    """Factory: a started ``serve`` agent on this test's database and the shared data
    directory, whose objects directory is the object store all agents share (``local``, the
    default), or a moto S3 bucket named by ``--object-store`` (indirect parameter ``s3``)."""
    data = tmp_path / "data"
    started: list[KafkaServer] = []
    store: list[str] = []
    if getattr(request, "param", "local") == "s3":
        url = request.getfixturevalue("s3_url")("agents")
        store = ["--object-store", url, "--s3-endpoint-url", request.getfixturevalue("moto_server")]

    def start(*args: str, ttl_s: float = TTL_S) -> KafkaServer:
        server = KafkaServer(
            data,
            args=["--metadata", postgres_url, *store, *args],
            env={"STREAMHOUSE_AGENT_TTL_S": str(ttl_s)},
        )
        server.log_path = tmp_path / f"agent-{len(started)}.log"
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.mark.parametrize("agents", ["local", "s3"], indirect=True)
def test_three_agents_are_one_cluster_and_survive_a_kill(
    tmp_path: Path, postgres_url: str, agents: Callable[..., KafkaServer]
) -> None:
    """Three agents, one database, one object store (the data directory's, or S3 on moto):
    a producer bootstrapped with all three
    keeps being acknowledged across a kill -9 (the agent leaves every answer within the TTL)
    and a restart; every acknowledged record is read back once, at dense offsets. The kill
    falls between flushes and the producer is not idempotent; kills mid-stream are in
    test_an_idempotent_producer_across_agent_kills_writes_every_record_once."""

    data = tmp_path / "data"
    with streamhouse.connect(data, metadata=postgres_url) as sh:
        sh.create_topic("t", partitions=6)
    servers = [agents() for _ in range(3)]
    _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 brokers")
    answers = [_metadata(s) for s in servers]
    assert all(answer == answers[0] for answer in answers)  # agents agree
    assert set(answers[0][1].values()) == answers[0][0]  # leadership spread over all

    def status() -> str:
        return _cluster_status(data, postgres_url)

    shown = status()
    assert _states(shown) == ["live"] * 3 and all(f"127.0.0.1:{s.port}" in shown for s in servers)

    deliveries = _Deliveries()
    producer = _producer(servers, acks="all", **{"enable.idempotence": False})
    sent = 0

    def produce(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            producer.produce("t", f"v{sent}".encode(), on_delivery=deliveries)
            sent += 1
        assert producer.flush(60) == 0

    for _ in range(5):
        produce(100)
    victim = servers[1]
    victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    victim.process.wait()  # type: ignore[union-attr]
    survivors = servers[:1] + servers[2:]
    took = _wait_for(
        lambda: all(len(_metadata(s)[0]) == 2 for s in survivors), TTL_S + 3, "dead agent gone"
    )
    assert took <= TTL_S + 2
    for _ in range(5):  # keeps going, every partition served by a live agent
        produce(100)
    # the status tells by heartbeats alone: dead once the heartbeat is a TTL old
    _wait_for(lambda: sorted(_states(status())) == ["dead", "live", "live"], TTL_S + 3, "dead")
    victim.start()  # restarted: a new agent at the old address
    _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 brokers again")
    for _ in range(5):
        produce(100)
    assert not deliveries.failed and len(deliveries.acked) == sent == 1500
    got, values = _read_all(survivors[0], 6, sent)
    assert sorted(values) == sorted(deliveries.acked)  # nothing lost, nothing doubled
    assert all(offsets == list(range(len(offsets))) for offsets in got.values())  # dense
    on_s3 = "--object-store" in servers[0].args
    assert bool(list((data / "objects").rglob("*.seg"))) != on_s3  # S3: none in the data dir

    survivors[0].stop()
    _wait_for(lambda: len(_metadata(survivors[1])[0]) == 2, 2.5, "clean stop deregisters at once")


def test_a_killed_or_stopped_agent_leaves_answers_at_once_a_paused_one_does_not(
    agents: Callable[..., KafkaServer],
) -> None:
    """With a TTL far longer than the test, only direct evidence can drop an agent: a kill -9
    or a clean stop closes the other agents' links to it and its address refuses them, so it
    leaves their answers within a second or two; a paused agent (SIGSTOP) still accepts
    connections, so it stays named until its heartbeat is a TTL old."""
    ttl_s = 15.0
    a, b, c = (agents(ttl_s=ttl_s) for _ in range(3))
    _wait_for(lambda: len(_metadata(a)[0]) == 3, 10, "3 brokers")
    everyone = _metadata(a)[0]
    b.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        time.sleep(2.0)
        assert _metadata(a)[0] == everyone == _metadata(c)[0]  # paused is not gone
    finally:
        b.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    b.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    b.process.wait()  # type: ignore[union-attr]
    took = _wait_for(lambda: len(_metadata(a)[0]) == len(_metadata(c)[0]) == 2, 10, "b gone")
    assert took < 5.0  # its heartbeat is 12.5 s from a TTL old
    assert c.stop() == 0
    took = _wait_for(lambda: len(_metadata(a)[0]) == 1, 10, "c gone")
    assert took < 5.0


def test_zones_and_agent_groups(agents: Callable[..., KafkaServer]) -> None:
    a = agents("--zone", "z1")
    b = agents("--zone", "z2")
    c = agents("--zone", "z2", "--agent-group", "staging")
    _wait_for(lambda: len(_metadata(a)[0]) == 2, 10, "two agents in the default group")
    default = _metadata(a)[0]
    assert _metadata(b)[0] == default and len(default) == 2
    staging = _metadata(c)[0]
    assert len(staging) == 1 and not staging & default
    z1 = _metadata(b, client_id="app,zone=z1")[0]
    z2 = _metadata(a, client_id="app,ws_az=z2")[0]
    assert len(z1) == len(z2) == 1 and z1 | z2 == default
    assert _metadata(a, client_id="zone=nowhere")[0] == default
    assert _metadata(c, client_id="zone=z1")[0] == staging


def test_advertise_flag(agents: Callable[..., KafkaServer]) -> None:
    a = agents("--advertise", "agent-a.example:19092")
    with RawClient(a.bootstrap) as client:
        response = client.request(3, 1, topics=None)
    assert [(b.host, b.port) for b in response.brokers] == [("agent-a.example", 19092)]


# -- idempotent producers across agents (part 3) ----------------------------------------------------


def test_a_batch_replayed_through_another_agent_is_not_written_twice(
    tmp_path: Path, postgres_url: str, agents: Callable[..., KafkaServer]
) -> None:
    """Agent A commits an idempotent batch but its answer never reaches the producer (acks=0
    sends none); the producer's retry through agent B, which never saw the producer, gets the
    original offset back and nothing is written again. Sequences are judged by the store."""
    with streamhouse.connect(tmp_path / "data", metadata=postgres_url) as sh:
        sh.create_topic("t")
    a, b = agents(), agents()
    with RawClient(a.bootstrap) as ca, RawClient(b.bootstrap) as cb:
        pid = ca.request(22, 1, transactional_id=None, transaction_timeout=ms(60_000)).producer_id
        other = cb.request(22, 1, transactional_id=None, transaction_timeout=ms(60_000)).producer_id
        assert pid > 0 and other > 0 and other != pid  # ids come from the store

        def batch(seq: int, *values: bytes) -> bytes:
            return build_batch(list(values), producer_id=pid, producer_epoch=0, base_sequence=seq)

        _, frame = ca.encode(0, 8, **produce_request("t", 0, batch(0, b"a", b"b"), acks=0))
        ca.send_frame(frame)
        _wait_for(lambda: cb.fetch("t", [(0, 0)])[0].high_watermark == 2, 10, "A's commit")
        assert cb.produce("t", 0, batch(0, b"a", b"b")) == (ErrorCode.none, 0)  # the retry
        assert cb.produce("t", 0, batch(2, b"c")) == (ErrorCode.none, 2)
        assert ca.produce("t", 0, batch(2, b"c")) == (ErrorCode.none, 2)  # and back through A
        assert ca.produce("t", 0, batch(9, b"gap"))[0] == ErrorCode.out_of_order_sequence_number
        assert cb.produce("t", 0, batch(0, b"a", b"b")) == (ErrorCode.none, 0)
        assert ca.produce("t", 0, batch(3, b"d")) == (ErrorCode.none, 3)
        # B hears of A's commit through the store's commit feed, a moment later
        _wait_for(lambda: cb.fetch("t", [(0, 0)])[0].high_watermark >= 4, 10, "A's last commit")
        fetched = cb.fetch("t", [(0, 0)])[0]
    assert fetched.high_watermark == 4
    assert [v.as_py() for v in decode_batches(fetched.records)["value"]] == [b"a", b"b", b"c", b"d"]


def test_an_idempotent_producer_across_agent_kills_writes_every_record_once(
    tmp_path: Path, postgres_url: str, agents: Callable[..., KafkaServer]
) -> None:
    """confluent-kafka's idempotent producer bootstrapped with three agents while one agent,
    then another, is killed with -9 mid-stream and restarted: batches in flight at a killed
    agent are retried through the others, and every acknowledged record is in the log exactly
    once, at dense offsets."""

    with streamhouse.connect(tmp_path / "data", metadata=postgres_url) as sh:
        sh.create_topic("t", partitions=6)
    servers = [agents() for _ in range(3)]
    _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 brokers")
    deliveries = _Deliveries()
    producer = _producer(servers, **{"enable.idempotence": True, "message.timeout.ms": 60_000})
    events = [(3.0, servers[1], "kill"), (6.0, servers[1], "start")]
    events += [(9.0, servers[2], "kill"), (12.0, servers[2], "start")]
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < 15.0:
        for _ in range(20):
            producer.produce("t", f"v{sent}".encode(), on_delivery=deliveries)
            sent += 1
        producer.poll(0.01)
        while events and time.monotonic() - started >= events[0][0]:
            _, server, action = events.pop(0)
            if action == "kill":
                server.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
                server.process.wait()  # type: ignore[union-attr]
            else:
                server.start()
    assert producer.flush(60) == 0
    assert not deliveries.failed, deliveries.failed[:5]
    assert len(deliveries.acked) == sent
    offsets, values = _read_all(servers[0], 6, sent, settle_s=1.0)  # anything doubled too
    assert len(values) == len(set(values)) == sent  # every record once
    assert set(values) == set(deliveries.acked)
    assert all(got == list(range(len(got))) for got in offsets.values())  # dense


# -- group coordination across agents (part 4) -------------------------------------------------------


def _coordinator(server: KafkaServer, group: str) -> tuple[int, int]:
    """(error code, port) of a raw FindCoordinator of ``group`` asked of ``server``."""
    with RawClient(server.bootstrap) as client:
        found = client.request(10, 1, key=group, key_type=0)
    return found.error_code, found.port


def _committed(servers: list[KafkaServer], group: str) -> tuple[int, dict[int, int]]:
    """(error code, partition -> committed offset of topic ``t``) of a raw OffsetFetch asked
    of the coordinator the first of ``servers`` names."""
    _, port = _coordinator(servers[0], group)
    (coordinator,) = [s for s in servers if s.port == port] or servers[:1]
    with RawClient(coordinator.bootstrap) as client:
        answer = client.request(9, 5, group_id=group, topics=None)
    offsets = {p.partition_index: p.committed_offset for t in answer.topics for p in t.partitions}
    return answer.error_code, offsets


def test_group_leases_one_holder_takeover_and_release(md: Store) -> None:
    """Two agents' group leases on one store: one holder at a time; the other names it once
    it is a live agent; a holder that stops renewing stops coordinating by its own clock, is
    taken over (its offset commits fenced), and learns it lost the group; idle groups and a
    clean stop give leases up."""
    ttl = 0.5

    async def scenario() -> None:
        clusters = [Cluster(md, Settings(agent_ttl_s=ttl, port=port)) for port in (1, 2)]
        a, b = (GroupLeases(c, md, ttl) for c in clusters)
        lost: list[str] = []
        a.on_lost = lost.append
        assert await a.coordinator("g") == clusters[0].me
        assert a.holds("g") and not a.took_over("g") and a.held_groups() == ["g"]
        assert not await b.ensure("g")
        assert await b.coordinator("g") is None  # the holder is no live agent b knows of
        md.register_agent(clusters[0].agent_id, "10.0.0.1", 9092, "", "default")
        await clusters[1].refresh()
        assert await b.coordinator("g") == Node(clusters[0].node_id, "10.0.0.1", 9092, "")
        await a.renew()  # in time: still held
        assert a.holds("g") and not await b.ensure("g")
        await asyncio.sleep(ttl + 0.1)  # a is paused past its lease
        assert not a.holds("g")
        assert await b.ensure("g") and b.took_over("g")
        await b.renew()
        assert b.took_over("g")  # renewing keeps the takeover's time
        b._held["g"].since -= ADOPT_COMMITS_S  # members had their time to rejoin
        assert not b.took_over("g")
        stale = a.lease_of("g")
        assert stale is not None
        with pytest.raises(FencedError):  # the paused holder's commit is fenced
            md.commit_group_offsets("g", {("t", 0): (5, "")}, stale)
        md.commit_group_offsets("g", {("t", 0): (7, "")}, b.lease_of("g"))
        assert md.group_offsets("g")[("t", 0)].offset == 7
        await a.renew()
        assert lost == ["g"] and a.held_groups() == []
        b._held["g"].used -= 100 * ttl  # idle, no members: released, a takes it at once
        await b.renew()
        assert b.held_groups() == [] and await a.ensure("g")
        await a.release_all()
        assert await b.ensure("g")

    asyncio.run(scenario())


def test_a_group_goes_on_when_its_coordinating_agent_is_killed(
    tmp_path: Path, postgres_url: str, agents: Callable[..., KafkaServer]
) -> None:
    """Three members of one group, each bootstrapped on another agent: one agent coordinates
    the group (FindCoordinator names it from every agent; the others answer its requests
    NOT_COORDINATOR). Killed with -9, its lease expires, another agent is named, the members
    rejoin there and read every later record; the offsets committed before the kill survive,
    so nothing committed is read again."""
    with streamhouse.connect(tmp_path / "data", metadata=postgres_url) as sh:
        sh.create_topic("t", partitions=PARTITIONS)
    servers = [agents() for _ in range(3)]
    _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 brokers")
    produced = produce_round(servers[0].bootstrap, "t", 0)
    members = [
        Member(f"m{i}", "confluent-kafka", "range", (s.bootstrap, "t", "g"), tmp_path)
        for i, s in enumerate(servers)
    ]
    try:
        wait(lambda: balanced(members), "three members sharing six partitions")
        wait(lambda: produced <= consumed(members), "round 0 consumed")
        full = dict.fromkeys(range(PARTITIONS), PER_ROUND)
        wait(lambda: _committed(servers, "g")[1] == full, "round 0 committed", 20)
        ports = {_coordinator(s, "g") for s in servers}
        assert len(ports) == 1  # every agent names the same one
        ((error, port),) = ports
        (coordinator,) = [s for s in servers if s.port == port]
        others = [s for s in servers if s is not coordinator]
        with RawClient(others[0].bootstrap) as client:
            refused = client.request(12, 1, group_id="g", generation_id=1, member_id="m")
        assert refused.error_code == ErrorCode.not_coordinator

        coordinator.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        coordinator.process.wait()  # type: ignore[union-attr]
        took = _wait_for(
            lambda: (
                all(_coordinator(s, "g")[0] == ErrorCode.none for s in others)
                and {_coordinator(s, "g")[1] for s in others} < {o.port for o in others}
            ),
            TTL_S + 5,
            "another agent named",
        )
        assert took <= TTL_S + 3
        assert _committed(others, "g") == (ErrorCode.none, full)  # nothing lost
        _, port = _coordinator(others[0], "g")
        shown = _cluster_status(tmp_path / "data", postgres_url).splitlines()
        (row,) = [line for line in shown if line.rstrip(" │").endswith(" g")]
        assert f"127.0.0.1:{port}" in row and "live" in row  # status names the new one
        produced |= produce_round(others[0].bootstrap, "t", 1)
        wait(lambda: produced <= consumed(members), "round 1 consumed after the failover", 40)
        wait(
            lambda: _committed(others, "g")[1] == dict.fromkeys(range(PARTITIONS), 2 * PER_ROUND),
            "round 1 committed",
            20,
        )
        counts = collections.Counter(r for m in members for r in m.records())
        assert [r for r, n in counts.items() if n > 1 and r[1] < PER_ROUND] == []
        assert consumed(members) == produced
    finally:
        for m in members:
            m.kill()


# -- rolling restart (issue 15's last fault test) ---------------------------------------------------


class _Load:
    """A thread producing to topic ``t`` through an idempotent confluent-kafka producer with
    default retries (acks=all) and reading it with one member of group ``roll``, both
    bootstrapped with every agent, until ``stop``; then it waits for every delivery and reads
    on until the member has every acknowledged record."""

    def __init__(self, servers: list[KafkaServer]) -> None:
        from confluent_kafka import Consumer

        self.deliveries = _Deliveries()
        self.producer = _producer(servers, acks="all", **{"enable.idempotence": True})
        self.consumer = Consumer(
            {
                "bootstrap.servers": ",".join(s.bootstrap for s in servers),
                "group.id": "roll",
                "auto.offset.reset": "earliest",
                "auto.commit.interval.ms": 200,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.consumer.subscribe(["t"])
        self.consumed: list[bytes] = []
        self.sent = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.unflushed = -1

    def _consume(self) -> None:
        self.consumed += [m.value() for m in self.consumer.consume(500, 0.05) if not m.error()]

    def _run(self) -> None:
        while not self.stopping.is_set():
            for _ in range(20):
                self.producer.produce("t", f"v{self.sent}".encode(), on_delivery=self.deliveries)
                self.sent += 1
            self.producer.poll(0)
            self._consume()
        self.unflushed = self.producer.flush(60)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not set(self.deliveries.acked) <= set(self.consumed):
            self._consume()
        self.consumer.close()

    def __enter__(self) -> _Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(120)


def test_a_rolling_restart_under_load_loses_nothing(
    tmp_path: Path, postgres_url: str, agents: Callable[..., KafkaServer]
) -> None:
    """Each of three agents in turn is stopped (SIGTERM), started again and waited for until
    every agent answers with three brokers, while a producer with default retries and a
    consumer group keep working: the producer sees no delivery error, the group reads every
    acknowledged record, and the log holds each exactly once at dense offsets."""
    with streamhouse.connect(tmp_path / "data", metadata=postgres_url) as sh:
        sh.create_topic("t", partitions=6)
    servers = [agents() for _ in range(3)]
    _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 brokers")
    with _Load(servers) as load:
        time.sleep(1.5)
        for server in servers:
            assert server.stop() == 0  # a clean stop, within 20 s
            server.start()
            _wait_for(lambda: all(len(_metadata(s)[0]) == 3 for s in servers), 10, "3 again")
            time.sleep(1.0)
    assert not load.thread.is_alive() and load.unflushed == 0
    assert not load.deliveries.failed, load.deliveries.failed[:5]
    acked = load.deliveries.acked
    assert len(acked) == load.sent > 1000
    assert set(acked) <= set(load.consumed)  # the group read every acknowledged record
    offsets, values = _read_all(servers[0], 6, len(acked), settle_s=1.0)
    assert len(values) == len(set(values)) == len(acked) and set(values) == set(acked)
    assert all(got == list(range(len(got))) for got in offsets.values())  # dense
