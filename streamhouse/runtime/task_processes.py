"""Task processes of parallel queries, forked from one preloaded process.

Importing StreamHouse (DataFusion, DuckDB, pandas, sqlglot) takes about a second of CPU; a
query at parallelism N would pay it N times at every start. Instead, the first parallel query
of a process starts one *zygote* (``python -m streamhouse.runtime.task_processes``): it imports
the runtime once, opens nothing and starts no thread, and forks a task process for each spec it
reads on stdin (forking a process without threads is safe; the launching process, which has
threads, never forks). It answers ``<request> <pid>`` when a task started and ``exit <pid>
<status>`` when one ended. A task's stdout is its stderr. When the launching process goes away
(the zygote's stdin closes), the zygote stops its tasks (SIGTERM) and exits.

:class:`TaskProcess` is the launcher's handle on one task (``pid``, ``poll``, ``wait``,
``send_signal``, ``kill``, as a :class:`subprocess.Popen`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from streamhouse.errors import StreamHouseError

log = logging.getLogger(__name__)


class TaskProcess:
    """One task forked by the zygote: ``request`` is its spawn request's number, unique in the
    zygote's life (a pid is not: the kernel hands an ended task's pid to a later process)."""

    def __init__(self, zygote: Zygote, request: int, pid: int) -> None:
        self._zygote = zygote
        self._request = request
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._zygote.exit_status(self._request)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = self._zygote.wait_exit(self._request, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def zygote_cpu_seconds() -> float:
    """CPU seconds of this process's task zygote itself (importing the runtime once, forking),
    not its tasks' (0 before it is started)."""
    zygote = Zygote._instance
    if zygote is None or zygote.process.poll() is not None:
        return 0.0
    stat = Path(f"/proc/{zygote.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class Zygote:
    """The launcher's side of the zygote process (one per launching process)."""

    _instance: Zygote | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> Zygote:
        with cls._instance_lock:
            if cls._instance is None or cls._instance.process.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def __init__(self, command: list[str] | None = None) -> None:
        """Start the zygote process (``command``: another program speaking its protocol on
        stdin and stdout, as a test's stand-in)."""
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH")] if p)
        self.process = subprocess.Popen(
            command or [sys.executable, "-m", "streamhouse.runtime.task_processes"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._changed = threading.Condition()
        self._started: dict[int, int] = {}  # request -> pid, until spawn() takes it
        self._running: dict[int, int] = {}  # pid -> request of the task running with it
        self._exits: dict[int, int] = {}  # request -> exit status
        self._requests = 0
        self._ready = threading.Event()  # the zygote imported the runtime
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read, name="task-zygote", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parts = line.decode().split()
            with self._changed:
                # The zygote reports a task's exit before it can fork another with that pid
                # (it reaps, then reports): the pid names the latest task started with it.
                if parts[0] == "ready":
                    self._ready.set()
                elif parts[0] == "exit":
                    self._exits[self._running.pop(int(parts[1]))] = int(parts[2])
                else:
                    self._started[int(parts[0])] = int(parts[1])
                    self._running[int(parts[1])] = int(parts[0])
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the zygote has imported the runtime (its tasks start without importing
        it); False if it did not say so within ``timeout`` seconds (or is gone)."""
        return self._ready.wait(timeout)

    def spawn(self, spec: dict[str, Any]) -> TaskProcess:
        with self._write_lock:
            self._requests += 1
            request = self._requests
            assert self.process.stdin is not None
            self.process.stdin.write(
                json.dumps({"request": request, "spec": spec}).encode() + b"\n"
            )
            self.process.stdin.flush()
        with self._changed:
            while request not in self._started:
                if self.process.poll() is not None:
                    raise StreamHouseError("the task process launcher exited")
                self._changed.wait(0.5)
            return TaskProcess(self, request, self._started.pop(request))

    def exit_status(self, request: int) -> int | None:
        with self._changed:
            if request not in self._exits and self.process.poll() is not None:
                return -signal.SIGKILL  # the zygote is gone: so are its tasks' reports
            return self._exits.get(request)

    def wait_exit(self, request: int, timeout: float | None = None) -> int:
        with self._changed:
            if not self._changed.wait_for(
                lambda: request in self._exits or self.process.poll() is not None, timeout
            ):
                raise subprocess.TimeoutExpired(f"task request {request}", timeout or 0)
            return self._exits.get(request, -signal.SIGKILL)


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The zygote's loop: fork a task per request, report starts and exits (an exit at once:
    SIGCHLD wakes the loop, so a run to the end is not held by a polling interval)."""
    from streamhouse.runtime.parallel import task_main

    children: set[int] = set()
    pending = b""
    stdin = requests.fileno()
    wake, woken = os.pipe()
    os.set_blocking(wake, False)
    os.set_blocking(woken, False)
    signal.set_wakeup_fd(woken)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (the wakeup fd does the waking)
    while True:
        readable, _, _ = select.select([stdin, wake], [], [], 1.0)
        if wake in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 1 << 12)
        if stdin in readable:
            chunk = os.read(stdin, 1 << 16)
            if not chunk:  # the launching process went away: so do its tasks
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                message = json.loads(line)
                pid = os.fork()
                if pid == 0:  # the task
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake, woken, stdin):
                        os.close(fd)
                    os.dup2(2, 1)  # its stdout is not the reply pipe
                    os._exit(task_main(message["spec"]))
                children.add(pid)
                replies.write(f"{message['request']} {pid}\n".encode())
                replies.flush()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            replies.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
            replies.flush()


def preload() -> None:
    """Import, once in the zygote, what every task imported again at first use: DuckDB (JSON
    parsing, sink encoding), the SQLite metadata store, the query file reader. Importing starts
    no thread (forking stays safe); nothing is opened."""
    import streamhouse.log.metadata.sqlite  # noqa: F401
    import streamhouse.runtime.launch  # noqa: F401
    import streamhouse.runtime.parallel  # noqa: F401
    from streamhouse.sql import json_values

    json_values._load_duckdb()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the launcher, which stops tasks
    preload()
    sys.stdout.buffer.write(b"ready\n")  # set up: a fork from here on is a task at once
    sys.stdout.buffer.flush()
    _serve(sys.stdin.buffer, sys.stdout.buffer)
