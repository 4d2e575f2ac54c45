"""Fixtures and helpers for the Kafka protocol tests: a real server subprocess on loopback,
fresh topics, and a raw protocol client built on kio.

Test modules use ``from kafka_fixtures import *`` (pytest puts ``tests/`` on ``sys.path``).
The server runs ``streamhouse serve`` once the CLI has that command, else
``python -m streamhouse.kafka``, with ``--data-dir``, ``--port`` and ``--advertised-host``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kio.serial import entity_reader, entity_writer

from streamhouse.kafka.wire import messages, response_class

__all__ = [
    "KafkaServer",
    "RawClient",
    "free_port",
    "guarded",
    "kafka_server",
    "new_topic",
    "server_command",
]

REPO = Path(__file__).resolve().parent.parent
_LENGTH = struct.Struct(">i")


def guarded(body: Callable[[], None], errors: list[BaseException]) -> Callable[[], None]:
    """``body`` for a reader thread: whatever it raises goes to ``errors`` (the test asserts
    there were none)."""

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    return run


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(data_dir: Path, port: int, *extra: str) -> list[str]:
    """The command line that serves the Kafka protocol (``streamhouse serve`` when it exists)."""
    flags = ["--data-dir", str(data_dir), "--port", str(port), "--advertised-host", "127.0.0.1"]
    try:
        from streamhouse.cli import main as cli

        has_serve = "serve" in getattr(cli, "commands", {})
    except Exception:
        has_serve = False
    if has_serve:
        return [sys.executable, "-m", "streamhouse", "-v", "serve", *flags, *extra]
    return [sys.executable, "-m", "streamhouse.kafka", "-v", *flags, *extra]


class KafkaServer:
    """A ``streamhouse`` Kafka server in a subprocess; restartable on the same data and port."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env or {}
        self.args = args or []
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> KafkaServer:
        """Start the process and wait until it answers ApiVersions."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                server_command(self.data_dir, self.port, *self.args),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with RawClient(self.bootstrap, timeout=2) as client:
                    client.request(18, 0)
                return self
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not answer within {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self, tail: int = 60) -> str:
        """The last lines the server wrote."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])


@pytest.fixture(scope="module")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """One server for the test module, on a free loopback port, with auto-created topics."""
    server = KafkaServer(tmp_path_factory.mktemp("kafka") / "data").start()
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code}:\n{server.log()}"


@pytest.fixture
def new_topic(kafka_server: KafkaServer) -> Iterator[Any]:
    """Factory ``new_topic(partitions=1, **configs) -> name``: a fresh topic on the server.

    Config names are given with underscores: ``new_topic(max_message_bytes="1000")``.
    """

    def make(partitions: int = 1, **configs: str) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        with RawClient(kafka_server.bootstrap) as client:
            module = messages(19, 4, False)
            topic = module.CreatableTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=1,
                assignments=(),
                configs=tuple(
                    module.CreatableTopicConfig(name=k.replace("_", "."), value=v)
                    for k, v in configs.items()
                ),
            )
            resp = client.request(19, 4, topics=(topic,), timeout=_ms(30_000), validate_only=False)
        assert resp.topics[0].error_code == 0, resp
        return name

    yield make


class RawClient:
    """A blocking Kafka protocol client for tests: kio messages in and out, one socket."""

    def __init__(self, bootstrap: str, timeout: float = 10.0, client_id: str = "raw") -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.client_id = client_id
        self._correlation = 0

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def encode(self, api_key: int, version: int, **fields: Any) -> tuple[int, bytes]:
        """A request frame for ``fields`` (missing fields take kio defaults)."""
        module = messages(api_key, version, False)
        request_cls = next(
            v
            for v in vars(module).values()
            if isinstance(v, type)
            and getattr(v, "__type__", None) is not None
            and v.__type__.name == "request"
        )
        self._correlation += 1
        header_cls = request_cls.__header_schema__
        header_fields = {
            "request_api_key": api_key,
            "request_api_version": version,
            "correlation_id": self._correlation,
            "client_id": self.client_id,
        }
        buf = io.BytesIO()
        entity_writer(header_cls)(buf, header_cls(**header_fields))
        entity_writer(request_cls)(buf, request_cls(**fields))
        body = buf.getvalue()
        return self._correlation, _LENGTH.pack(len(body)) + body

    def send_frame(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def read_frame(self) -> bytes:
        """One response frame without its length; ConnectionError if the server closed."""
        size = _LENGTH.unpack(self._read_exactly(4))[0]
        return self._read_exactly(size)

    def _read_exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionError("server closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def decode(self, api_key: int, version: int, frame: bytes) -> tuple[int, Any]:
        """``(correlation_id, response)`` of a response frame."""
        cls = response_class(api_key, version)
        (correlation,) = struct.unpack_from(">i", frame, 0)
        offset = 4
        if api_key != 18 and cls.__flexible__:
            offset += 1  # empty tagged fields of response header v1
        body, _ = entity_reader(cls)(frame, offset)
        return correlation, body

    def request(self, api_key: int, version: int, **fields: Any) -> Any:
        """Send one request and return its decoded response."""
        correlation, frame = self.encode(api_key, version, **fields)
        self.send_frame(frame)
        got, response = self.decode(api_key, version, self.read_frame())
        assert got == correlation
        return response

    def produce(
        self, topic: str, partition: int, records: bytes, acks: int = -1
    ) -> tuple[int, int]:
        """``(error_code, base_offset)`` of a Produce v8 of ``records`` to one partition."""
        resp = self.request(0, 8, **produce_request(topic, partition, records, acks))
        part = resp.responses[0].partition_responses[0]
        return part.error_code, part.base_offset

    def fetch(self, topic: str, partitions: Sequence[tuple[int, int]], **kw: Any) -> dict[int, Any]:
        """The Fetch v11 answer of each partition of ``(partition, offset)`` pairs, by index."""
        resp = self.request(1, 11, **fetch_request(topic, partitions, **kw))
        return {p.partition_index: p for p in resp.responses[0].partitions}

    def closed_by_server(self, wait: float = 5.0) -> bool:
        """Whether the server closes the connection within ``wait`` seconds."""
        self.sock.settimeout(wait)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True


def txn_offset_commit_request(
    transactional_id: str,
    group: str,
    producer_id: int,
    epoch: int,
    topics: Sequence[str],
    offset: int,
) -> dict[str, Any]:
    """Fields of a TxnOffsetCommit v2 request: partition 0 of each topic at ``offset``."""
    module = messages(28, 2, False)
    return {
        "transactional_id": transactional_id,
        "group_id": group,
        "producer_id": producer_id,
        "producer_epoch": epoch,
        "topics": tuple(
            module.TxnOffsetCommitRequestTopic(
                name=topic,
                partitions=(
                    module.TxnOffsetCommitRequestPartition(
                        partition_index=0,
                        committed_offset=offset,
                        committed_leader_epoch=-1,
                        committed_metadata=None,
                    ),
                ),
            )
            for topic in topics
        ),
    }


def produce_request(topic: str, partition: int, records: bytes, acks: int = -1) -> dict[str, Any]:
    """Fields of a Produce v8 request for one partition."""
    module = messages(0, 8, False)
    return {
        "transactional_id": None,
        "acks": acks,
        "timeout": _ms(30_000),
        "topic_data": (
            module.TopicProduceData(
                name=topic,
                partition_data=(module.PartitionProduceData(index=partition, records=records),),
            ),
        ),
    }


def fetch_request(
    topic: str,
    partitions: Sequence[tuple[int, int]],
    *,
    max_wait_ms: int = 0,
    min_bytes: int = 1,
    max_bytes: int = 50 << 20,
    partition_max_bytes: int = 1 << 20,
    isolation_level: int = 0,
) -> dict[str, Any]:
    """Fields of a Fetch v11 request for ``(partition, offset)`` pairs of one topic."""
    module = messages(1, 11, False)
    return {
        "replica_id": -1,
        "max_wait": _ms(max_wait_ms),
        "min_bytes": min_bytes,
        "max_bytes": max_bytes,
        "isolation_level": isolation_level,
        "session_id": 0,
        "session_epoch": -1,
        "topics": (
            module.FetchTopic(
                topic=topic,
                partitions=tuple(
                    module.FetchPartition(
                        partition=p,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=partition_max_bytes,
                    )
                    for p, offset in partitions
                ),
            ),
        ),
        "forgotten_topics_data": (),
        "rack_id": "",
    }


def _ms(value: int) -> Any:
    import datetime

    return datetime.timedelta(milliseconds=value)


__all__ += ["fetch_request", "produce_request"]
