"""TLS listeners: a throwaway CA, a server certificate for 127.0.0.1, client certificates and
a second, unrelated CA, made at test time; confluent-kafka, kafka-python and kcat produce and
consume over TLS beside a plaintext listener; mTLS refuses a client without a certificate
and takes one with as its subject; bad certificate files are one line at start."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tls_fixtures
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from kafka_fixtures import REPO, KafkaServer, RawClient, free_port
from tls_fixtures import Pki, expected, free_ports, round_trip_confluent, round_trip_kafka_python

from streamhouse.config import Settings
from streamhouse.kafka.listeners import principal_of, server_tls_context

pki = tls_fixtures.pki
TIMEOUT = 30


def _server(tmp_path_factory: pytest.TempPathFactory, pki: Pki, *extra: str) -> KafkaServer:
    port, tls_port = free_ports(2)
    server = KafkaServer(
        tmp_path_factory.mktemp("tls") / "data",
        port,
        args=["--listener", f"SSL://127.0.0.1:{tls_port}", "--tls-cert", pki.pem("server"),
              "--tls-key", pki.key("server"), *extra],
    )  # fmt: skip
    server.tls_bootstrap = f"127.0.0.1:{tls_port}"  # type: ignore[attr-defined]
    return server.start()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KafkaServer]:
    """PLAINTEXT on its --port, SSL on another port."""
    server = _server(tmp_path_factory, pki)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KafkaServer]:
    """As ``tls_server``, with client certificates required (signed by the test CA)."""
    server = _server(tmp_path_factory, pki, "--tls-client-ca", pki.pem("ca"))
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


def _confluent_tls(pki: Pki, server: KafkaServer, **extra: str) -> dict[str, str]:
    return {
        "bootstrap.servers": server.tls_bootstrap,  # type: ignore[attr-defined]
        "security.protocol": "ssl",
        "ssl.ca.location": pki.pem("ca"),
        **extra,
    }


# -- TLS ---------------------------------------------------------------------------------------


def test_confluent_produces_and_consumes_over_tls(tls_server: KafkaServer, pki: Pki) -> None:
    config = _confluent_tls(pki, tls_server)
    assert round_trip_confluent(config) == expected()
    # Metadata answers a TLS client with the TLS listener, a plaintext one with its own.
    brokers = AdminClient(config).list_topics(timeout=TIMEOUT).brokers
    assert [(b.host, b.port) for b in brokers.values()] == [
        ("127.0.0.1", int(tls_server.tls_bootstrap.rsplit(":", 1)[1]))  # type: ignore[attr-defined]
    ]
    plain = AdminClient({"bootstrap.servers": tls_server.bootstrap}).list_topics(timeout=TIMEOUT)
    assert [(b.host, b.port) for b in plain.brokers.values()] == [("127.0.0.1", tls_server.port)]


def test_kafka_python_produces_and_consumes_over_tls(tls_server: KafkaServer, pki: Pki) -> None:
    tls = {
        "bootstrap_servers": tls_server.tls_bootstrap,  # type: ignore[attr-defined]
        "security_protocol": "SSL",
        "ssl_cafile": pki.pem("ca"),
    }
    assert round_trip_kafka_python(tls) == expected()


def test_kcat_produces_and_consumes_over_tls(tls_server: KafkaServer, pki: Pki) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is not installed (apt-get install kcat)"
    topic = f"tls-kcat-{uuid.uuid4().hex[:8]}"
    tls = ["-b", tls_server.tls_bootstrap, "-X", "security.protocol=ssl",  # type: ignore[attr-defined]
           "-X", f"ssl.ca.location={pki.pem('ca')}"]  # fmt: skip
    lines = [f"k{i}|value {i}" for i in range(20)]
    subprocess.run(
        [kcat, *tls, "-P", "-t", topic, "-K", "|"],
        input="\n".join(lines).encode(),
        check=True,
        timeout=TIMEOUT,
    )
    out = subprocess.run(
        [kcat, *tls, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q"],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    ).stdout
    got = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    assert [(m["offset"], m["key"], m["payload"]) for m in got] == [
        (i, f"k{i}", f"value {i}") for i in range(20)
    ]


def _api_versions_over(sock: socket.socket) -> bytes:
    """Send ApiVersions v0 on ``sock``; the response frame, or b"" if the server closed."""
    with RawClient.__new__(RawClient) as raw:  # only its encoder; the socket is ours
        raw.client_id, raw._correlation, raw.sock = "tls-test", 0, sock
        _, frame = raw.encode(18, 0)
        sock.sendall(frame)
        head = sock.recv(4)
        if len(head) < 4:
            return b""
        (size,) = struct.unpack(">i", head)
        body = b""
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                return b""
            body += chunk
        return body


def test_plaintext_client_on_the_tls_port_is_closed(tls_server: KafkaServer, pki: Pki) -> None:
    host, port = tls_server.tls_bootstrap.rsplit(":", 1)  # type: ignore[attr-defined]
    for _ in range(3):
        sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        try:
            assert _api_versions_over(sock) == b""
        except ConnectionResetError:
            pass  # closed as well
        finally:
            sock.close()
    # The server goes on, on both listeners.
    assert round_trip_confluent(_confluent_tls(pki, tls_server), 5) == expected(5)
    with RawClient(tls_server.bootstrap) as raw:
        assert raw.request(18, 0).error_code == 0
    assert tls_server.alive()
    assert "Traceback" not in tls_server.log(500)


def test_a_client_trusting_another_ca_is_refused(tls_server: KafkaServer, pki: Pki) -> None:
    host, port = tls_server.tls_bootstrap.rsplit(":", 1)  # type: ignore[attr-defined]
    context = ssl.create_default_context(cafile=pki.pem("other-ca"))
    with (
        socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=host)
    config = _confluent_tls(pki, tls_server, **{"ssl.ca.location": pki.pem("other-ca")})
    with pytest.raises(KafkaException):
        AdminClient(config).list_topics(timeout=3)
    # and the one trusting the right CA gets an answer
    context = ssl.create_default_context(cafile=pki.pem("ca"))
    with (
        socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=host) as sock,
    ):
        assert _api_versions_over(sock)[4:6] == b"\x00\x00"  # error code NONE


# -- mTLS --------------------------------------------------------------------------------------


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: KafkaServer, pki: Pki) -> None:
    host, port = mtls_server.tls_bootstrap.rsplit(":", 1)  # type: ignore[attr-defined]
    for cert in (None, "rogue"):  # no certificate; one the client CA did not sign
        context = ssl.create_default_context(cafile=pki.pem("ca"))
        if cert:
            context.load_cert_chain(pki.pem(cert), pki.key(cert))
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as raw:
            try:
                with context.wrap_socket(raw, server_hostname=host) as sock:
                    assert _api_versions_over(sock) == b""  # TLS 1.3: refused after the handshake
            except (ssl.SSLError, ConnectionResetError):
                pass  # TLS 1.2, or the alert came first
    with pytest.raises(KafkaException):
        AdminClient(_confluent_tls(pki, mtls_server)).list_topics(timeout=3)
    assert mtls_server.alive()


def test_mtls_accepts_a_client_certificate(mtls_server: KafkaServer, pki: Pki) -> None:
    config = _confluent_tls(
        pki,
        mtls_server,
        **{"ssl.certificate.location": pki.pem("client"), "ssl.key.location": pki.key("client")},
    )
    assert round_trip_confluent(config, 10) == expected(10)


def test_the_principal_is_the_client_certificate_subject(pki: Pki) -> None:
    """A real handshake with the server's context: the verified subject, as Kafka writes it."""
    settings = Settings(tls_cert=pki.pem("server"), tls_key=pki.key("server"),
                        tls_client_ca=pki.pem("ca"))  # fmt: skip
    server_context = server_tls_context(settings)
    client_context = ssl.create_default_context(cafile=pki.pem("ca"))
    client_context.load_cert_chain(pki.pem("client"), pki.key("client"))
    left, right = socket.socketpair()
    seen: list[dict] = []

    def accept() -> None:
        with server_context.wrap_socket(left, server_side=True) as sock:
            seen.append(sock.getpeercert())
            sock.recv(1)

    thread = threading.Thread(target=accept)
    thread.start()
    with client_context.wrap_socket(right, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"x")
    thread.join(TIMEOUT)
    assert principal_of(seen[0]) == "User:CN=app,O=StreamHouse Tests"
    assert principal_of(None) == "User:ANONYMOUS"


# -- bad settings ------------------------------------------------------------------------------


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``streamhouse serve`` that must fail at start: in this process (click's runner: what
    the user would see on stderr, and the exit status) to keep the test fast."""
    from click.testing import CliRunner

    from streamhouse.cli import main

    run = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path / "data"), *args])
    return subprocess.CompletedProcess(args, run.exit_code, run.stdout, run.stderr)


def test_a_bad_certificate_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    result = subprocess.run(
        [sys.executable, "-m", "streamhouse", "serve", "--data-dir", str(tmp_path / "data"),
         "--port", "0", "--security-protocol", "ssl", "--tls-cert", str(tmp_path / "cert.pem"),
         "--tls-key", str(tmp_path / "cert.pem")],
        capture_output=True, cwd=REPO, timeout=TIMEOUT, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("Error: tls_cert ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()  # refused before anything opened


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{missing}", "--tls-key", "{key}"], "is not a readable file"),
        (["--tls-cert", "{garbage}", "--tls-key", "{key}"], "not a PEM certificate"),
        (["--tls-cert", "{cert}", "--tls-key", "{other_key}"], "not a PEM certificate"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{garbage}"],
         "not a PEM CA certificate"),
        ([], "needs tls_cert and tls_key"),
    ],
)  # fmt: skip
def test_bad_certificate_files_are_one_line_at_start(
    tmp_path: Path, pki: Pki, flags: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    paths = {"missing": str(tmp_path / "nope.pem"), "garbage": str(garbage),
             "cert": pki.pem("server"), "key": pki.key("server"), "other_key": pki.key("client")}  # fmt: skip
    result = _serve(tmp_path, "--port", "0", "--security-protocol", "SSL",
                    *(f.format(**paths) for f in flags))  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--listener", "SSL:/127.0.0.1:1"], "expected PROTOCOL://HOST:PORT"),
        (["--listener", "TLS://127.0.0.1:1"], "unknown security protocol"),
        (["--listener", "PLAINTEXT://127.0.0.1:{port}"], "listeners share a port"),
    ],
)
def test_bad_listeners_are_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    port = str(free_port())
    result = _serve(tmp_path, "--port", port, *(f.format(port=port) for f in flags))
    assert result.returncode == 1, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_tls_settings_from_toml_and_environment(tmp_path: Path, monkeypatch, pki: Pki) -> None:
    toml = tmp_path / "streamhouse.toml"
    toml.write_text(
        f'security_protocol = "SSL"\nlisteners = ["PLAINTEXT://127.0.0.1:9094"]\n'
        f'tls_cert = "{pki.pem("server")}"\ntls_key = "{pki.key("server")}"\n'
    )
    monkeypatch.setenv("STREAMHOUSE_TLS_CLIENT_CA", pki.pem("ca"))
    from streamhouse.kafka.listeners import listeners_of

    settings = Settings.load(toml)
    assert settings.tls_client_ca == pki.pem("ca")
    assert [str(listener) for listener in listeners_of(settings)] == [
        "SSL://127.0.0.1:9092",
        "PLAINTEXT://127.0.0.1:9094",
    ]
    server_tls_context(settings)  # loads
