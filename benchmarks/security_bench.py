"""Security overheads (issue 22): SCRAM login latency and produce throughput over SASL_SSL
against PLAINTEXT, on one ``streamhouse serve`` with both listeners.

``python benchmarks/security_bench.py [--records 200000] [--logins 300] [--rounds 2]
[--out benchmarks/results/security.json]``

- login: a SCRAM-SHA-512 login over SASL_PLAINTEXT (SaslHandshake and two SaslAuthenticate
  round trips on a fresh connection; the client's PBKDF2 is computed once, so the figure is
  the server's), and the same with a wrong password, as p50/p99;
- produce: confluent-kafka, lz4, acks=all, 100-byte values, records/s over PLAINTEXT and
  over SASL_SSL (SCRAM-SHA-512), alternating rounds, medians.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from kio.serial import entity_reader, entity_writer

from streamhouse.kafka.wire import messages, response_class

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"


def _free_ports(count: int) -> list[int]:
    """Different free ports on 127.0.0.1 (held open together while chosen)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _certificates(directory: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=bench CA",
        "-days", "1")  # fmt: skip
    run("req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key")


class _Client:
    """Just enough of the Kafka protocol for a SCRAM login."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.correlation = 0

    def request(self, api_key: int, version: int, **fields: object) -> object:
        module = messages(api_key, version, False)
        cls = next(
            v for v in vars(module).values()
            if isinstance(v, type) and getattr(getattr(v, "__type__", None), "name", "") == "request"
        )  # fmt: skip
        self.correlation += 1
        header_cls = cls.__header_schema__
        buf = io.BytesIO()
        entity_writer(header_cls)(buf, header_cls(request_api_key=api_key,
            request_api_version=version, correlation_id=self.correlation, client_id="bench"))  # fmt: skip
        entity_writer(cls)(buf, cls(**fields))
        body = buf.getvalue()
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", self._exactly(4))[0]
        frame = self._exactly(size)
        return entity_reader(response_class(api_key, version))(frame, 4)[0]

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data


def _login(port: int, salted: dict[bytes, bytes], password: str) -> tuple[float, bool]:
    """One SCRAM-SHA-512 login on a new connection: (seconds, succeeded)."""
    client = _Client(port)
    try:
        started = time.perf_counter()
        client.request(17, 1, mechanism="SCRAM-SHA-512")
        nonce = secrets.token_urlsafe(18)
        first_bare = f"n=bench,r={nonce}"
        reply = client.request(36, 1, auth_bytes=f"n,,{first_bare}".encode())
        server_first = bytes(reply.auth_bytes).decode()
        attrs = dict(part.split("=", 1) for part in server_first.split(","))
        salt = base64.b64decode(attrs["s"])
        key = (salt, password)
        if key not in salted:  # the client's PBKDF2, once (the server's share is measured)
            salted[key] = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(attrs["i"]))
        client_key = hmac.new(salted[key], b"Client Key", "sha512").digest()
        without_proof = f"c=biws,r={attrs['r']}"
        message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha512(client_key).digest(), message, "sha512").digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
        final = client.request(36, 1, auth_bytes=f"{without_proof},p={proof.decode()}".encode())
        return time.perf_counter() - started, final.error_code == 0
    finally:
        client.sock.close()


def _produce(config: dict[str, str], records: int) -> float:
    from confluent_kafka import Producer

    producer = Producer({**config, "acks": "all", "compression.type": "lz4", "linger.ms": 5})
    value = b"x" * 100
    topic = f"bench-{secrets.token_hex(4)}"
    started = time.perf_counter()
    for i in range(records):
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return records / (time.perf_counter() - started)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/security.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="security-bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        ca, cert, key = _certificates(work)
        data = str(work / "data")
        cli = [sys.executable, "-m", "streamhouse"]
        subprocess.run([*cli, "user", "add", "bench", "--password-stdin", "--data-dir", data],
                       input=PASSWORD + "\n", text=True, check=True, env=env)  # fmt: skip
        plain, sasl, sasl_ssl = _free_ports(3)
        server = subprocess.Popen(
            [*cli, "serve", "--data-dir", data, "--port", str(plain),
             "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl}",
             "--listener", f"SASL_SSL://127.0.0.1:{sasl_ssl}",
             "--tls-cert", cert, "--tls-key", key],
            env=env,
        )  # fmt: skip
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", sasl_ssl), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            salted: dict = {}
            ok = [_login(sasl, salted, PASSWORD) for _ in range(args.logins)]
            bad = [_login(sasl, salted, "wrong") for _ in range(args.logins)]
            assert all(good for _, good in ok) and not any(good for _, good in bad)
            secure = {
                "bootstrap.servers": f"127.0.0.1:{sasl_ssl}",
                "security.protocol": "sasl_ssl",
                "ssl.ca.location": ca,
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": "bench",
                "sasl.password": PASSWORD,
            }
            rates: dict[str, list[float]] = {"PLAINTEXT": [], "SASL_SSL": []}
            for _ in range(args.rounds):
                rates["PLAINTEXT"].append(
                    _produce({"bootstrap.servers": f"127.0.0.1:{plain}"}, args.records)
                )
                rates["SASL_SSL"].append(_produce(secure, args.records))
        finally:
            server.terminate()
            server.wait(30)
        result = {
            "login_ms": {
                "ok_p50": 1000 * _pct([t for t, _ in ok], 0.5),
                "ok_p99": 1000 * _pct([t for t, _ in ok], 0.99),
                "failed_p50": 1000 * _pct([t for t, _ in bad], 0.5),
                "failed_p99": 1000 * _pct([t for t, _ in bad], 0.99),
            },
            "produce_records_per_s": {k: median(v) for k, v in rates.items()},
            "produce_rounds": rates,
            "ratio_sasl_ssl_to_plaintext": median(rates["SASL_SSL"]) / median(rates["PLAINTEXT"]),
            "load_average": os.getloadavg(),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
