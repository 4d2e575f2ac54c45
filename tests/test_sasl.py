"""SASL: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 logins over SASL_PLAINTEXT and SASL_SSL with
confluent-kafka and kafka-python, users made with ``streamhouse user add``; wrong passwords,
unknown users and requests before the login are refused and the connection closed; garbage
SASL frames close the connection, never the server; no password in the data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tls_fixtures
from click.testing import CliRunner
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from kafka_fixtures import REPO, KafkaServer, RawClient
from tls_fixtures import Pki, expected, free_ports, round_trip_confluent, round_trip_kafka_python

from streamhouse.cli import main as cli

pki = tls_fixtures.pki
TIMEOUT = 30
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def sasl_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[KafkaServer]:
    """PLAINTEXT on its --port; SASL_PLAINTEXT and SASL_SSL on two more; user alice."""
    data = tmp_path_factory.mktemp("sasl") / "data"
    added = subprocess.run(
        [sys.executable, "-m", "streamhouse", "user", "add", "alice", "--password-stdin",
         "--data-dir", str(data)],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port, sasl, sasl_ssl = free_ports(3)
    ports = {"SASL_PLAINTEXT": sasl, "SASL_SSL": sasl_ssl}
    server = KafkaServer(
        data,
        port,
        args=["--listener", f"SASL_PLAINTEXT://127.0.0.1:{ports['SASL_PLAINTEXT']}",
              "--listener", f"SASL_SSL://127.0.0.1:{ports['SASL_SSL']}",
              "--sasl-mechanisms", ",".join(MECHANISMS),
              "--tls-cert", pki.pem("server"), "--tls-key", pki.key("server")],
    )  # fmt: skip
    server.sasl_ports = ports  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()


def _bootstrap(server: KafkaServer, protocol: str) -> str:
    return f"127.0.0.1:{server.sasl_ports[protocol]}"  # type: ignore[attr-defined]


def _confluent(server: KafkaServer, pki: Pki, protocol: str, mechanism: str, **kw: str) -> dict:
    config = {
        "bootstrap.servers": _bootstrap(server, protocol),
        "security.protocol": protocol.lower(),
        "sasl.mechanisms": mechanism,
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        **kw,
    }
    if protocol == "SASL_SSL":
        config["ssl.ca.location"] = pki.pem("ca")
    return config


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_logs_in_with_every_mechanism(
    sasl_server: KafkaServer, pki: Pki, protocol: str, mechanism: str
) -> None:
    config = _confluent(sasl_server, pki, protocol, mechanism)
    assert round_trip_confluent(config, 10) == expected(10)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_logs_in_with_every_mechanism(
    sasl_server: KafkaServer, pki: Pki, protocol: str, mechanism: str
) -> None:
    config = {
        "bootstrap_servers": _bootstrap(sasl_server, protocol),
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    if protocol == "SASL_SSL":
        config["ssl_cafile"] = pki.pem("ca")
    assert round_trip_kafka_python(config, 10) == expected(10)


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize(("user", "password"), [("alice", "wrong"), ("mallory", PASSWORD)])
def test_wrong_password_and_unknown_user_are_refused(
    sasl_server: KafkaServer, pki: Pki, mechanism: str, user: str, password: str
) -> None:
    config = _confluent(
        sasl_server,
        pki,
        "SASL_SSL",
        mechanism,
        **{"sasl.username": user, "sasl.password": password},
    )
    with pytest.raises(KafkaException):
        AdminClient(config).list_topics(timeout=2)


def _handshake(client: RawClient, mechanism: str) -> None:
    response = client.request(17, 1, mechanism=mechanism)
    assert response.error_code == 0, response


def test_a_failed_login_gets_sasl_authentication_failed_and_a_closed_connection(
    sasl_server: KafkaServer,
) -> None:
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        _handshake(client, "PLAIN")
        response = client.request(36, 1, auth_bytes=b"\0alice\0wrong")
        assert response.error_code == 58  # SASL_AUTHENTICATION_FAILED
        with pytest.raises(ConnectionError):
            client.request(18, 0)
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        _handshake(client, "PLAIN")
        assert client.request(36, 1, auth_bytes=f"\0alice\0{PASSWORD}".encode()).error_code == 0
        assert client.request(3, 1, topics=[]).brokers  # served after the login


def test_nothing_but_sasl_is_served_before_the_login(sasl_server: KafkaServer) -> None:
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        assert client.request(18, 0).error_code == 0  # ApiVersions is
        with pytest.raises(ConnectionError):
            client.request(3, 1, topics=[])  # Metadata is not: the connection closes
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        assert client.request(17, 1, mechanism="GSSAPI").error_code == 33  # unsupported
    # the plaintext listener beside it is open, as configured
    with RawClient(sasl_server.bootstrap) as client:
        assert client.request(3, 1, topics=[]).brokers


@pytest.mark.parametrize(
    ("mechanism", "frames"),
    [
        ("PLAIN", [b""]),
        ("PLAIN", [b"\xff\xfe\0\0"]),
        ("PLAIN", [b"no separators at all"]),
        ("SCRAM-SHA-256", [b"garbage"]),
        ("SCRAM-SHA-256", [b"n,,n=alice"]),  # no nonce
        ("SCRAM-SHA-512", [b"p=tls-unique,,n=alice,r=abc"]),  # channel binding
        ("SCRAM-SHA-512", [b"n,,n=alice,r=abc", b"c=biws,r=wrong,p=AAAA"]),
        ("SCRAM-SHA-512", [b"n,,n=alice,r=abc", b"\x00\x01\x02"]),
    ],
)
def test_garbage_sasl_frames_close_the_connection(
    sasl_server: KafkaServer, mechanism: str, frames: list[bytes]
) -> None:
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        _handshake(client, mechanism)
        for frame in frames[:-1]:
            assert client.request(36, 1, auth_bytes=frame).error_code == 0
        assert client.request(36, 1, auth_bytes=frames[-1]).error_code == 58
        with pytest.raises(ConnectionError):
            client.request(18, 0)
    # truncated frames: the request cut short closes the connection too
    with RawClient(_bootstrap(sasl_server, "SASL_PLAINTEXT")) as client:
        _, frame = client.encode(36, 1, auth_bytes=b"n,,n=alice,r=abc")
        client.send_frame(frame[:4] + frame[4:12])
        client.sock.shutdown(1)
        assert client.sock.recv(1) == b""
    assert sasl_server.alive()
    with RawClient(sasl_server.bootstrap) as client:
        assert client.request(18, 0).error_code == 0


def test_no_plain_password_in_the_data_dir(sasl_server: KafkaServer) -> None:
    secret = PASSWORD.encode()
    for root, _, files in os.walk(sasl_server.data_dir):
        for name in files:
            assert secret not in (Path(root) / name).read_bytes(), name
    assert secret not in sasl_server.log_path.read_bytes()


def test_user_list_and_delete(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    runner = CliRunner()
    for name in ("bob", "carol"):
        added = runner.invoke(cli, ["user", "add", name, "--password-stdin", "--data-dir", data],
                              input="pw\n")  # fmt: skip
        assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["user", "list", "--data-dir", data])
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["bob", "carol"]
    assert "SCRAM-SHA-512(iterations=4096)" in listed.stdout
    assert runner.invoke(cli, ["user", "delete", "bob", "--data-dir", data]).exit_code == 0
    listed = runner.invoke(cli, ["user", "list", "--data-dir", data])
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["carol"]
    missing = runner.invoke(cli, ["user", "delete", "bob", "--data-dir", data])
    assert missing.exit_code == 1 and "no user 'bob'" in missing.stderr
    empty = runner.invoke(cli, ["user", "add", "dave", "--password-stdin", "--data-dir", data],
                          input="\n")  # fmt: skip
    assert empty.exit_code == 1 and "no password" in empty.stderr


def test_credentials_in_each_metadata_store(md) -> None:
    """SQLite and PostgreSQL keep the same credentials: replaced per user, listed, deleted."""
    from streamhouse.security.scram import make_credential, verify_password

    first = [make_credential(m, "one", user="erin") for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")]
    md.put_credentials("erin", first)
    md.put_credentials("erin", [make_credential("SCRAM-SHA-512", "two", user="erin")])
    md.put_credentials(
        "frank", [make_credential("SCRAM-SHA-256", "x", user="frank", iterations=8192)]
    )
    assert md.list_credentials() == [
        ("erin", "SCRAM-SHA-512", 4096),
        ("frank", "SCRAM-SHA-256", 8192),
    ]
    stored = md.get_credential("erin", "SCRAM-SHA-512")
    assert (
        stored is not None and verify_password(stored, "two") and not verify_password(stored, "one")
    )
    assert md.get_credential("erin", "SCRAM-SHA-256") is None
    assert md.delete_credentials("erin") and not md.delete_credentials("erin")
    assert [user for user, _, _ in md.list_credentials()] == ["frank"]
