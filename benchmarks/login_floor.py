"""The floor under a SCRAM login's server CPU (issue 22): a bare asyncio streams server that
answers three length-prefixed requests per connection, as a login's three round trips, and
nothing else. ``python benchmarks/login_floor.py [--connections 3000]`` prints its CPU per
connection (/proc, user + system) beside the load average; compare with the
``server_cpu_us_per_login`` of ``login_ab.py``."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

_LENGTH = struct.Struct(">i")
ROUND_TRIPS = 3
ANSWER = 40


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (size,) = _LENGTH.unpack(await reader.readexactly(4))
            frame = await reader.readexactly(size)
            writer.write(_LENGTH.pack(ANSWER) + frame[:ANSWER].ljust(ANSWER, b"x"))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    await writer.wait_closed()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", port, limit=1 << 20)
    await server.serve_forever()


def _connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(ROUND_TRIPS):
            body = b"y" * 60
            sock.sendall(_LENGTH.pack(len(body)) + body)
            got = b""
            while len(got) < 4 + ANSWER:
                got += sock.recv(4 + ANSWER - len(got))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--serve-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_port:
        sys.setswitchinterval(0.0005)  # as streamhouse serve sets it
        asyncio.run(_serve(args.serve_port))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from login_ab import _cpu_seconds  # the server process imports neither (nor kio)
    from security_bench import _free_ports

    (port,) = _free_ports(1)
    server = subprocess.Popen([sys.executable, __file__, "--serve-port", str(port)])
    try:
        for _ in range(600):
            try:
                _connection(port)
                break
            except OSError:
                time.sleep(0.1)
        for _ in range(100):
            _connection(port)
        before = _cpu_seconds(server.pid)
        for _ in range(args.connections):
            _connection(port)
        used = _cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(30)
    print(
        f"bare asyncio streams server: {1e6 * used / args.connections:.0f} us of CPU per"
        f" connection of {ROUND_TRIPS} round trips; load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
