"""Authorization and login costs (issue 22): two ``streamhouse serve`` processes with a
SASL_PLAINTEXT listener, one with ``--authorizer acl`` and 1,000 ACLs in its store, one
without an authorizer.

``python benchmarks/acl_bench.py [--records 200000] [--rounds 3] [--logins 300]
[--latency-records 400] [--storm 1000] [--out benchmarks/results/acl.json]``

- produce: confluent-kafka (SCRAM-SHA-512), lz4, acks=all, 100-byte values, records/s to the
  ACL server and to the other, in alternating rounds; the ratio of medians and of each pair;
- login: SCRAM-SHA-512 logins on the ACL server (handshake and two SaslAuthenticate round
  trips on a new connection; the client's PBKDF2 once), p50/p99, ok and failed, and the
  server process's CPU time per login (/proc: what the load of the machine does not move);
- storm: an authenticated producer sends one record at a time (acks=all) and times each
  delivery, alone and while another process makes ``--storm`` failed logins
  (``--storm-connections`` at once, default 1: in a row, each as fast as the server
  answers); p99 of each and their ratio;
- check: the authorizer's decision alone (``Access.allowed`` with the 1,000 ACLs), ns per
  call, as the produce path makes it once per topic of a request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from security_bench import _free_ports, _login, _pct, _produce  # noqa: E402

from streamhouse.config import Settings  # noqa: E402
from streamhouse.log.metadata import open_metadata  # noqa: E402
from streamhouse.security.acl import (  # noqa: E402
    AclBinding,
    AclOperation,
    AclPermission,
    PatternType,
    ResourceType,
)
from streamhouse.security.scram import MECHANISMS, make_credential  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"


def _bindings(count: int) -> list[AclBinding]:
    """``count`` ACLs: the bench user's (WRITE and CREATE on topics ``bench-*``), the rest for
    other principals and topics, literal and prefixed, some DENYs."""
    ours = [
        AclBinding(ResourceType.TOPIC, "bench-", PatternType.PREFIXED, "User:bench", "*", op,
                   AclPermission.ALLOW)
        for op in (AclOperation.WRITE, AclOperation.CREATE)
    ]  # fmt: skip
    others = [
        AclBinding(
            ResourceType.TOPIC,
            f"team{i % 50}-topic{i}" if i % 3 else f"team{i % 50}-",
            PatternType.LITERAL if i % 3 else PatternType.PREFIXED,
            f"User:user{i}",
            "*",
            AclOperation.READ if i % 2 else AclOperation.WRITE,
            AclPermission.DENY if i % 17 == 0 else AclPermission.ALLOW,
        )
        for i in range(count - len(ours))
    ]
    return ours + others


def _prepare(data: Path, acls: int) -> None:
    metadata = open_metadata(Settings(data_dir=data))
    try:
        metadata.put_credentials(
            "bench", [make_credential(m, PASSWORD, user="bench") for m in MECHANISMS]
        )
        if acls:
            metadata.create_acls(_bindings(acls))
    finally:
        metadata.close()


def _serve(data: Path, plain: int, sasl: int, authorizer: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamhouse", "serve", "--data-dir", str(data),
         "--port", str(plain), "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl}",
         "--sasl-mechanisms", "SCRAM-SHA-512", "--authorizer", authorizer],
        env=env,
    )  # fmt: skip
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", sasl), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("server did not start")


def _config(sasl: int) -> dict[str, str]:
    return {
        "bootstrap.servers": f"127.0.0.1:{sasl}",
        "security.protocol": "sasl_plaintext",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "bench",
        "sasl.password": PASSWORD,
    }


def _delivery_latencies(sasl: int, count: int) -> list[float]:
    """Seconds from produce to delivery of ``count`` records sent one at a time."""
    from confluent_kafka import Producer

    producer = Producer({**_config(sasl), "acks": "all", "linger.ms": 0})
    topic = f"bench-latency-{os.getpid()}-{time.monotonic_ns()}"
    producer.produce(topic, b"warm-up")
    assert producer.flush(30) == 0
    out = []
    for _ in range(count):
        started = time.perf_counter()
        producer.produce(topic, b"x" * 100)
        assert producer.flush(30) == 0
        out.append(time.perf_counter() - started)
    return out


def _check_ns(acls: int) -> float:
    """CPU nanoseconds per authorization decision on the produce path (memoized after the
    first): process time, which the machine's load does not stretch as it does wall time."""
    from streamhouse.kafka.acls import Access
    from streamhouse.kafka.listeners import Listener, Session

    class _Store:
        def security_version(self) -> int:
            return 1

        def list_acls(self) -> list[AclBinding]:
            return _bindings(acls)

    access = Access(_Store(), Settings(authorizer="acl"))  # type: ignore[arg-type]
    access.reload()
    session = Session(Listener("SASL_PLAINTEXT", "127.0.0.1", 0, "127.0.0.1"), "User:bench")
    calls = 1_000_000
    started = time.process_time()
    for _ in range(calls):
        access.allowed(session, AclOperation.WRITE, ResourceType.TOPIC, "bench-topic")
    return (time.process_time() - started) / calls * 1e9


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--acls", type=int, default=1000)
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--latency-records", type=int, default=400)
    parser.add_argument("--storm", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/acl.json"))
    parser.add_argument("--storm-connections", type=int, default=1)
    parser.add_argument("--storm-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.storm_port:  # the storm's process: failed logins, --storm-connections at once
        salted_: dict = {}
        _login(args.storm_port, salted_, "wrong")

        def one(_: int) -> bool:
            return _login(args.storm_port, salted_, "wrong")[1]

        with ThreadPoolExecutor(args.storm_connections) as pool:
            assert not any(pool.map(one, range(args.storm - 1)))
        return
    work = Path(tempfile.mkdtemp(prefix="acl-bench-"))
    load_before = os.getloadavg()
    servers = []
    try:
        with_acl, without = work / "acl", work / "none"
        _prepare(with_acl, args.acls)
        _prepare(without, 0)
        plain_a, sasl_a, plain_b, sasl_b = _free_ports(4)
        servers.append(_serve(with_acl, plain_a, sasl_a, "acl"))
        servers.append(_serve(without, plain_b, sasl_b, "none"))
        rates: dict[str, list[float]] = {"acl": [], "none": []}
        _produce(_config(sasl_a), args.records // 4)  # warm-up, not counted
        _produce(_config(sasl_b), args.records // 4)
        for _ in range(args.rounds):
            rates["acl"].append(_produce(_config(sasl_a), args.records))
            rates["none"].append(_produce(_config(sasl_b), args.records))
        salted: dict = {}
        _login(sasl_a, salted, PASSWORD)  # the client's PBKDF2, and the server's first read
        cpu = _cpu_seconds(servers[0].pid)
        ok = [_login(sasl_a, salted, PASSWORD) for _ in range(args.logins)]
        cpu_ok = (_cpu_seconds(servers[0].pid) - cpu) / args.logins
        cpu = _cpu_seconds(servers[0].pid)
        bad = [_login(sasl_a, salted, "wrong") for _ in range(args.logins)]
        cpu_bad = (_cpu_seconds(servers[0].pid) - cpu) / args.logins
        assert all(good for _, good in ok) and not any(good for _, good in bad)
        alone = _delivery_latencies(sasl_a, args.latency_records)
        stormer = subprocess.Popen(  # its own process: no GIL shared with the timed client
            [
                sys.executable,
                __file__,
                "--storm-port",
                str(sasl_a),
                "--storm",
                str(args.storm),
                "--storm-connections",
                str(args.storm_connections),
            ],  # fmt: skip
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        during: list[float] = []
        while stormer.poll() is None:
            during.extend(_delivery_latencies(sasl_a, 50))
        assert stormer.returncode == 0
        storm_count = [args.storm]
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "acls": args.acls,
        "check_ns": _check_ns(args.acls),
        "produce_records_per_s": {k: median(v) for k, v in rates.items()},
        "produce_rounds": rates,
        "ratio_acl_to_none": median(rates["acl"]) / median(rates["none"]),
        "pair_ratios": [a / b for a, b in zip(rates["acl"], rates["none"], strict=True)],
        "login_ms": {
            "ok_p50": 1000 * _pct([t for t, _ in ok], 0.5),
            "ok_p99": 1000 * _pct([t for t, _ in ok], 0.99),
            "failed_p50": 1000 * _pct([t for t, _ in bad], 0.5),
            "failed_p99": 1000 * _pct([t for t, _ in bad], 0.99),
            "server_cpu_ok": 1000 * cpu_ok,
            "server_cpu_failed": 1000 * cpu_bad,
        },
        "storm": {
            "failed_logins": storm_count[0],
            "connections": args.storm_connections,
            "deliveries_alone": len(alone),
            "deliveries_during": len(during),
            "p50_ms_alone": 1000 * _pct(alone, 0.5),
            "p99_ms_alone": 1000 * _pct(alone, 0.99),
            "p50_ms_during": 1000 * _pct(during, 0.5),
            "p99_ms_during": 1000 * _pct(during, 0.99),
            "p99_ratio": _pct(during, 0.99) / _pct(alone, 0.99),
        },
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
