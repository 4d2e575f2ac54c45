"""A throwaway PKI for the TLS and SASL tests: a CA, a server certificate for 127.0.0.1, a
client certificate (CN=app) it signs, and an unrelated CA with a client certificate of its
own (``rogue``), made with ``cryptography`` at test time.

Also the round trips the TLS and SASL tests make with each client: ``count`` records to a new
topic, read back. Test modules bind the fixture with ``pki = tls_fixtures.pki``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "Pki",
    "expected",
    "free_ports",
    "pki",
    "round_trip_confluent",
    "round_trip_kafka_python",
]

TIMEOUT = 30


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "StreamHouse Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _issue(
    directory: Path,
    stem: str,
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate and key as ``stem.pem``/``stem.key``; a CA if ``issuer`` is None, else a
    leaf it signs (for 127.0.0.1 and localhost)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer[0].subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@dataclass
class Pki:
    directory: Path

    def pem(self, stem: str) -> str:
        return str(self.directory / f"{stem}.pem")

    def key(self, stem: str) -> str:
        return str(self.directory / f"{stem}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """ca, server (127.0.0.1) and client (CN=app) signed by it; other-ca and its rogue client."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue(directory, "ca", "Test CA")
    _issue(directory, "server", "127.0.0.1", ca)
    _issue(directory, "client", "app", ca)
    other = _issue(directory, "other-ca", "Unrelated CA")
    _issue(directory, "rogue", "rogue", other)
    return Pki(directory)


def expected(count: int = 50) -> list[tuple[bytes, bytes]]:
    """The records the round trips produce, as ``(key, value)``."""
    return [(f"k{i}".encode(), f"value {i}".encode()) for i in range(count)]


def round_trip_confluent(config: dict[str, str], count: int = 50) -> list[tuple[bytes, bytes]]:
    """Produce :func:`expected` to a new topic with confluent-kafka ``config``, read it back."""
    from confluent_kafka import Consumer, Producer

    topic = f"secure-{uuid.uuid4().hex[:8]}"
    producer = Producer({**config, "linger.ms": 5, "compression.type": "lz4"})
    for key, value in expected(count):
        producer.produce(topic, key=key, value=value)
    assert producer.flush(TIMEOUT) == 0
    consumer = Consumer(
        {**config, "group.id": topic, "auto.offset.reset": "earliest", "enable.auto.commit": False}
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes]] = []
    try:
        while len(got) < count:
            msg = consumer.poll(TIMEOUT)
            assert msg is not None, f"only {len(got)} of {count} records came back"
            assert msg.error() is None, msg.error()
            got.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    return got


def round_trip_kafka_python(config: dict[str, Any], count: int = 50) -> list[tuple[bytes, bytes]]:
    """As :func:`round_trip_confluent`, with kafka-python ``config``."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = f"secure-kp-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(**config)
    for key, value in expected(count):
        producer.send(topic, key=key, value=value)
    producer.flush(TIMEOUT)
    producer.close()
    consumer = KafkaConsumer(
        topic, auto_offset_reset="earliest", consumer_timeout_ms=TIMEOUT * 1000, **config
    )
    got = []
    for msg in consumer:
        got.append((msg.key, msg.value))
        if len(got) == count:
            break
    consumer.close()
    return got


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 nobody listens on right now (held open
    together while chosen, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
