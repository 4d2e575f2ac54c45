"""How a StreamHouse process takes memory pages from the kernel (:mod:`streamhouse.os_memory`):
transparent huge pages are off for a process serving or querying, unless its settings allow
them (read from the kernel's view of each process, ``THP_enabled`` in
``/proc/<pid>/status``), and DataFusion's allocator keeps freed pages a second (read from
the options mimalloc reports when it starts, ``MIMALLOC_VERBOSE``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kafka_fixtures import KafkaServer

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").read_text().count("THP_enabled:"),
    reason="the kernel does not report THP_enabled (Linux 5.0 and later do)",
)

REPO = Path(__file__).resolve().parents[1]


def thp_enabled(pid: int | str = "self") -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("THP_enabled:"):
            return line.split()[1] == "1"
    raise AssertionError(f"no THP_enabled line for process {pid}")


@pytest.mark.parametrize(("setting", "enabled"), [(None, False), ("true", True), ("false", False)])
def test_serve_turns_transparent_huge_pages_off_unless_allowed(
    tmp_path: Path, setting: str | None, enabled: bool
) -> None:
    env = {} if setting is None else {"STREAMHOUSE_TRANSPARENT_HUGE_PAGES": setting}
    server = KafkaServer(tmp_path / "data", env=env).start()
    try:
        assert thp_enabled(server.process.pid) is enabled  # type: ignore[union-attr]
    finally:
        assert server.stop() == 0, server.log()


CONNECT = """
import sys, streamhouse
from tests.test_os_memory import thp_enabled
before = thp_enabled()
kwargs = {} if sys.argv[2] == "default" else {"transparent_huge_pages": sys.argv[2] == "true"}
with streamhouse.connect(sys.argv[1], **kwargs) as sh:
    sh.sql("SELECT 1 AS x").to_arrow_table()
    print(before, thp_enabled())
"""


@pytest.mark.parametrize(("setting", "after"), [("default", "False"), ("true", "True")])
def test_connect_sets_the_flag_for_its_process(tmp_path: Path, setting: str, after: str) -> None:
    # the child starts with the flag cleared or set (inherited) either way: connect decides
    for inherited in (False, True):
        command = [sys.executable, "-c", CONNECT, str(tmp_path / setting), setting]
        if inherited:  # started by a process that turned them off (a serve's child)
            command = [sys.executable, "-c", _preset_off(command)]
        before, now = python(command, {}).stdout.split()
        assert before == str(thp_enabled() and not inherited)
        assert now == after


def python(command: list[str], env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end with this checkout's code, ``env`` over the environment
    (None: a variable left out); its output, once it exited 0."""
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    environ.pop("MIMALLOC_PURGE_DELAY", None)  # 'import streamhouse' here set it
    environ.update({k: v for k, v in env.items() if v is not None})
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, env=environ, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def _preset_off(command: list[str]) -> str:
    """Python source that turns huge pages off and then runs ``command`` (inheriting it)."""
    return (
        "import ctypes, subprocess, sys\n"
        "ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)\n"
        f"sys.exit(subprocess.run({command!r}).returncode)\n"
    )


@pytest.mark.parametrize(("environment", "delay"), [(None, "1000"), ("50", "50")])
def test_datafusion_allocator_keeps_freed_pages(environment: str | None, delay: str) -> None:
    env = {"MIMALLOC_VERBOSE": "1", "MIMALLOC_PURGE_DELAY": environment}
    done = python([sys.executable, "-c", "import streamhouse, datafusion"], env)
    # pyarrow's mimalloc and DataFusion's (its own, loaded with it) each report their options
    reported = re.findall(r"option 'purge_delay': (-?\d+)", done.stderr)
    assert len(reported) == 2, done.stderr[-2000:]
    assert reported == [delay, delay]


HEAP_FAULTS = """
import resource, sys, threading
import numpy as np
if sys.argv[1] == "streamhouse":
    import streamhouse
def decode_like():  # buffers of 1-6 MiB and a smaller one, filled and freed, in a thread
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(40):
        block = np.empty((1 + i % 6) << 20, np.uint8)
        block.fill(1)
        small = np.empty(300_000, np.int64)
        small.fill(2)
        del block, small
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=decode_like)
thread.start()
thread.join()
"""


def test_import_keeps_freed_heap_pages_unless_the_environment_tunes_malloc() -> None:
    """``import streamhouse`` has glibc's malloc keep blocks of a few MiB in its heaps, so
    buffers freed and taken again (a scan's pieces) are not faulted in afresh each time; an
    environment that tunes malloc itself is left as it says."""

    def faults(importing: str, env: dict[str, str | None]) -> int:
        done = python([sys.executable, "-c", HEAP_FAULTS, importing], env)
        return int(done.stdout.split()[-1])

    untuned = {"MALLOC_MMAP_THRESHOLD_": None, "MALLOC_TRIM_THRESHOLD_": None}
    kept = faults("streamhouse", {**untuned, "GLIBC_TUNABLES": None})
    glibc_default = faults("numpy", {**untuned, "GLIBC_TUNABLES": None})
    assert kept * 2 < glibc_default, (kept, glibc_default)  # (136 MiB of blocks touched)
    tuned_elsewhere = faults("streamhouse", {**untuned, "GLIBC_TUNABLES": "glibc.malloc.check=0"})
    assert tuned_elsewhere * 2 > glibc_default, (tuned_elsewhere, glibc_default)
