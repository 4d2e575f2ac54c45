"""SCRAM-SHA-512 login latency of two StreamHouse checkouts side by side (A/B, issue 22):
``python benchmarks/login_ab.py A_REPO B_REPO [--batches 10] [--per-batch 50]``. Each serves
its own data dir (user made by its own ``streamhouse user add``); logins alternate between
them in batches, so a machine whose speed drifts slows both alike. Prints p50/p99 of each,
the server's CPU per login (/proc, user + system, connection set-up included) and the ratios,
with the load average."""

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from security_bench import PASSWORD, _free_ports, _login, _pct  # noqa: E402


def _serve(repo: str, work: Path) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": repo}
    data = str(work / "data")
    cli = [sys.executable, "-m", "streamhouse"]
    subprocess.run([*cli, "user", "add", "bench", "--password-stdin", "--data-dir", data],
                   input=PASSWORD + "\n", text=True, check=True, env=env, cwd=repo)  # fmt: skip
    plain, sasl = _free_ports(2)
    server = subprocess.Popen(
        [*cli, "serve", "--data-dir", data, "--port", str(plain),
         "--listener", f"SASL_PLAINTEXT://127.0.0.1:{sasl}"],
        env=env, cwd=repo,
    )  # fmt: skip
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", sasl), timeout=1).close()
            return server, sasl
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{repo}: server did not start")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--per-batch", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    servers = {}
    work = Path(tempfile.mkdtemp(prefix="login-ab-"))
    try:
        for name, repo in (("a", args.a), ("b", args.b)):
            (work / name).mkdir()
            servers[name] = _serve(repo, work / name)
        salted: dict = {}
        times: dict[str, list[float]] = {"a": [], "b": []}
        for _, port in servers.values():
            _login(port, salted, PASSWORD)  # warm-up, the client's PBKDF2
        cpu_s = {"a": 0.0, "b": 0.0}
        for _ in range(args.batches):
            for name, (server, port) in servers.items():
                before = _cpu_seconds(server.pid)
                for _ in range(args.per_batch):
                    seconds, ok = _login(port, salted, PASSWORD)
                    assert ok
                    times[name].append(seconds)
                cpu_s[name] += _cpu_seconds(server.pid) - before
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    result = {
        name: {
            "p50_ms": 1000 * _pct(t, 0.5),
            "p99_ms": 1000 * _pct(t, 0.99),
            "server_cpu_us_per_login": 1e6 * cpu_s[name] / len(t),
            "logins": len(t),
        }
        for name, t in times.items()
    }
    result["ratio_a_to_b"] = {
        key: result["a"][key] / result["b"][key]
        for key in ("p50_ms", "p99_ms", "server_cpu_us_per_login")
    }
    result["repos"] = {"a": args.a, "b": args.b}
    result["load_average_before"] = load_before
    result["load_average_after"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
