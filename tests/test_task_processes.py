"""The launcher's handles on task processes forked by the zygote."""

from __future__ import annotations

import signal
import sys

from streamhouse.runtime.task_processes import TaskProcess, Zygote


def _zygote_saying(lines: str) -> Zygote:
    """A Zygote whose process is a stand-in that writes ``lines`` as the real zygote would
    (``<request> <pid>`` when a task started, ``exit <pid> <status>`` when one ended), then
    waits for its stdin to close."""
    script = f"import sys; sys.stdout.write({lines!r}); sys.stdout.flush(); sys.stdin.read()"
    return Zygote([sys.executable, "-c", script])


def test_a_reused_pid_is_not_taken_for_the_exit_of_the_task_before() -> None:
    """The kernel hands an ended task's pid to a later one. The later task, running, must not
    read as ended with the earlier one's status: the launcher took it for a task killed and
    started a second copy of it, which kept the first's state locked."""
    zygote = _zygote_saying("1 4242\nexit 4242 0\n2 4242\n3 4343\nexit 4343 -9\n")
    try:
        with zygote._changed:
            assert zygote._changed.wait_for(lambda: len(zygote._exits) == 2, 10)
        first, second = TaskProcess(zygote, 1, 4242), TaskProcess(zygote, 2, 4242)
        third = TaskProcess(zygote, 3, 4343)
        assert first.poll() == 0
        assert second.poll() is None  # still running, with the pid the first had
        assert third.poll() == -signal.SIGKILL
        assert third.wait(timeout=1) == -9
    finally:
        assert zygote.process.stdin is not None
        zygote.process.stdin.close()
        zygote.process.wait()
    assert second.poll() == -signal.SIGKILL  # the zygote gone, so are its tasks


def test_the_real_zygote_says_when_it_is_ready() -> None:
    """The zygote says ``ready`` once it imported the runtime (a benchmark starts its clock
    then, as PyFlink's after its JVM started); a stand-in that never says so is not ready."""
    zygote = Zygote()
    silent = _zygote_saying("1 4242\n")
    try:
        assert zygote.wait_ready(timeout=120)
        assert not silent.wait_ready(timeout=0.5)
    finally:
        for one in (zygote, silent):
            assert one.process.stdin is not None
            one.process.stdin.close()
            one.process.wait()
    assert zygote.process.returncode == 0
