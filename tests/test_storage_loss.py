"""Storage that goes away under a running ``serve``: the metadata file deleted, the S3 endpoint
resetting connections. Clients see retriable errors, never acknowledgements that get lost, and
``fsck`` repairs what is left behind."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import S3_CREDENTIALS
from kafka_fixtures import KafkaServer

import streamhouse
from streamhouse.log.objectstore import S3ObjectStore

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamhouse", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


class Deliveries:
    """Delivery reports of a confluent-kafka producer: (partition, offset, value) or errors."""

    def __init__(self) -> None:
        self.acked: list[tuple[int, int, bytes]] = []
        self.failed: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, err: object, msg: object) -> None:
        with self.lock:
            if err is None:
                self.acked.append((msg.partition(), msg.offset(), msg.value()))  # type: ignore[attr-defined]
            else:
                self.failed.append(str(err))


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)


def _stored(
    data_dir: Path, topic: str, partitions: int, **settings: object
) -> list[tuple[int, int, bytes]]:
    with streamhouse.connect(data_dir, **settings) as sh:
        return [
            (p, offset, value)
            for p in range(partitions)
            for offset, value in zip(
                sh.fetch(topic, p)["offset"].to_pylist(),
                sh.fetch(topic, p)["value"].to_pylist(),
                strict=True,
            )
        ]


def test_metadata_deleted_under_serve_loses_nothing_acknowledged(tmp_path: Path) -> None:
    from confluent_kafka import Producer

    data_dir = tmp_path / "data"
    server = KafkaServer(data_dir).start()
    try:
        topic = "orders"
        _create_topic(server.bootstrap, topic, 2)
        deliveries = Deliveries()
        producer = Producer(
            {
                "bootstrap.servers": server.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 6000,
            }
        )
        for i in range(2000):  # both partitions: a rebuild knows a partition by its objects
            producer.produce(topic, f"before-{i}".encode(), partition=i % 2, on_delivery=deliveries)
        assert producer.flush(30) == 0
        assert len(deliveries.acked) == 2000 and deliveries.failed == []

        (data_dir / "metadata.sqlite3").unlink()
        for i in range(2000):
            producer.produce(topic, f"after-{i}".encode(), on_delivery=deliveries)
        assert producer.flush(30) == 0
        assert len(deliveries.acked) == 2000  # not one acknowledged into the deleted file
        assert len(deliveries.failed) == 2000
        assert server.alive()
        log = server.log(100_000)
        assert log.count(" ERROR streamhouse.log.metadata.sqlite: metadata store") == 1
        assert "was deleted while in use: refusing every write" in log
        # KAFKA_STORAGE_ERROR is retriable: the client kept trying until message.timeout.ms.
        assert {"Local: Message timed out" in failure for failure in deliveries.failed} == {True}
        assert log.count("append failed: metadata store") > 2000 / 500
    finally:
        code = server.stop()
    assert code == 0, server.log()

    refused = _cli("--data-dir", str(data_dir), "topic", "list")
    assert refused.returncode == 1
    assert "fsck --rebuild-metadata" in refused.stderr and "Traceback" not in refused.stderr
    rebuilt = _cli("--data-dir", str(data_dir), "fsck", "--rebuild-metadata")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert sorted(_stored(data_dir, topic, 2)) == sorted(deliveries.acked)


# -- S3 going away -------------------------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or overloaded endpoint does; the
    shutdown wakes the proxy thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class FlakyProxy:
    """A TCP proxy on loopback in front of an S3 endpoint, with three modes.

    ``up`` forwards everything; ``lose`` forwards requests but resets the connection instead
    of relaying a final response (the write lands, the writer never hears of it) and resets
    DELETEs unsent; ``down`` resets every connection at once.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode = "up"
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "up":
            with self._lock:
                for sock in list(self._open):
                    _reset(sock)
                self._open.clear()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.set_mode("down")

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "down":
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, request: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                mode = self.mode
                if mode == "down" or (
                    mode == "lose"
                    and (data.startswith(b"DELETE ") if request else not _continue(data))
                ):
                    break
                target.sendall(data)
        except OSError:
            pass
        _reset(source)
        _reset(target)
        with self._lock:
            self._open.discard(source)
            self._open.discard(target)


def _continue(response: bytes) -> bool:
    """Whether ``response`` is an interim "100 Continue" (boto3 sends PUT bodies after one)."""
    return response.startswith(b"HTTP/1.1 100 ") and response.endswith(b"\r\n\r\n")


@pytest.fixture
def flaky_s3(moto_server: str) -> Iterator[FlakyProxy]:
    host, port = moto_server.removeprefix("http://").rsplit(":", 1)
    proxy = FlakyProxy((host, int(port)))
    try:
        yield proxy
    finally:
        proxy.close()


def test_s3_outage_under_an_idempotent_producer(
    tmp_path: Path,
    moto_server: str,
    s3_store: Callable[..., S3ObjectStore],
    flaky_s3: FlakyProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from confluent_kafka import Producer

    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name.upper(), value)
    bucket = s3_store().bucket
    env = {
        "STREAMHOUSE_OBJECT_STORE": f"s3://{bucket}/log",
        "STREAMHOUSE_S3_ENDPOINT_URL": f"http://127.0.0.1:{flaky_s3.port}",
        "STREAMHOUSE_S3_MAX_ATTEMPTS": "2",  # a flush fails within the outage
        "AWS_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
    }
    data_dir = tmp_path / "data"
    server = KafkaServer(data_dir, env=env).start()
    topic = f"t-{uuid.uuid4().hex[:8]}"
    values = [f"record-{i:06d}".encode() for i in range(12_000)]
    deliveries = Deliveries()
    try:
        _create_topic(server.bootstrap, topic, 3)
        producer = Producer(
            {
                "bootstrap.servers": server.bootstrap,
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.timeout.ms": 120_000,
            }
        )
        started = time.monotonic()
        schedule = [(2.0, "lose"), (4.0, "down"), (9.0, "up")]
        for i, value in enumerate(values):
            producer.produce(topic, value, on_delivery=deliveries)
            if i % 100 == 99:  # 12,000 records over about 12 s
                producer.poll(0.1)
                elapsed = time.monotonic() - started
                while schedule and elapsed >= schedule[0][0]:
                    flaky_s3.set_mode(schedule.pop(0)[1])
        for _, mode in schedule:
            flaky_s3.set_mode(mode)
        assert producer.flush(120) == 0
    finally:
        code = server.stop()
    assert code == 0, server.log()
    log = server.log(100_000)
    assert "kafka_storage_error" in log.lower() or "flush failed" in log  # the outage was felt
    assert deliveries.failed == []
    assert sorted(v for _, _, v in deliveries.acked) == values  # all delivered after the outage
    fsck_env = {**env, "STREAMHOUSE_S3_ENDPOINT_URL": moto_server}
    stored = _stored(data_dir, topic, 3, **_settings(fsck_env))
    assert sorted(stored) == sorted(deliveries.acked)  # each acknowledged record stored once

    # The objects failed flushes left behind are orphans: their offsets were written again by
    # the retries. Deleting them waits for the age bound.
    store = s3_store("log")
    with streamhouse.connect(data_dir, **_settings(fsck_env)) as sh:
        indexed = {row.object_key for p in range(3) for row in sh.log.metadata.segments(topic, p)}
    orphans = sorted(set(store.list("segments/")) - indexed)
    assert orphans, "the outage left no object behind: the test did not exercise a failed flush"
    kept = _cli("--data-dir", str(data_dir), "fsck", "--delete-orphans", env=fsck_env)
    assert kept.returncode == 1
    assert sorted(line.split()[2] for line in kept.stdout.splitlines()) == orphans
    assert all(line.startswith("kept orphan ") for line in kept.stdout.splitlines())
    assert all(line.endswith("[younger than 3600 s]") for line in kept.stdout.splitlines())
    assert sorted(set(store.list("segments/")) - indexed) == orphans
    deleted = _cli(
        "--data-dir", str(data_dir), "fsck", "--delete-orphans", "--orphan-min-age", "0",
        env=fsck_env,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert set(store.list("segments/")) == indexed
    assert sorted(_stored(data_dir, topic, 3, **_settings(fsck_env))) == sorted(deliveries.acked)


def _settings(env: dict[str, str]) -> dict[str, str]:
    return {
        "object_store": env["STREAMHOUSE_OBJECT_STORE"],
        "s3_endpoint_url": env["STREAMHOUSE_S3_ENDPOINT_URL"],
    }
