"""Consumer-group members as processes (``kafka_group_member.py``) and what the group tests
ask of them: records produced in rounds, balanced assignments, records consumed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from streamhouse.log.records import build_batch

__all__ = ["PARTITIONS", "PER_ROUND", "Member", "balanced", "consumed", "produce_round", "wait"]

MEMBER = Path(__file__).with_name("kafka_group_member.py")
PARTITIONS = 6
PER_ROUND = 40  # records per partition per round


class Member:
    """A group member process and what it reported."""

    def __init__(
        self,
        name: str,
        client: str,
        strategy: str,
        args: tuple[str, str, str],
        tmp: Path,
        instance: str | None = None,
    ):
        """``instance``: a static member's ``group.instance.id`` (confluent-kafka)."""
        bootstrap, topic, group = args
        self.name = name
        self.out = tmp / f"{name}.out"
        self.out.touch()
        self.process = subprocess.Popen(
            [sys.executable, str(MEMBER), client, bootstrap, topic, group, str(self.out), strategy]
            + ([instance] if instance is not None else []),
            stderr=(tmp / f"{name}.err").open("wb"),
        )

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def assignments(self) -> list[set[int]]:
        """Every assignment this member reported, in order (a revoke reports the empty set)."""
        return [
            {int(p) for p in text.split(",")} if text else set()
            for text in (
                ln.removeprefix("assign").strip() for ln in self.lines() if ln.startswith("assign")
            )
        ]

    def assignment(self) -> set[int] | None:
        """The partitions this member last reported owning (None before any assignment)."""
        assigns = self.assignments()
        return assigns[-1] if assigns else None

    def records(self) -> list[tuple[int, int]]:
        return [
            (int(p), int(o))
            for _, p, o in (ln.split() for ln in self.lines() if ln.startswith("rec"))
        ]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(30) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def produce_round(bootstrap: str, topic: str, round_no: int) -> set[tuple[int, int]]:
    """PER_ROUND records to every partition; their (partition, offset)s."""
    from kafka_fixtures import RawClient, produce_request

    produced = set()
    with RawClient(bootstrap) as client:
        for partition in range(PARTITIONS):
            values = [f"r{round_no}-p{partition}-{i}".encode() for i in range(PER_ROUND)]
            resp = client.request(0, 8, **produce_request(topic, partition, build_batch(values)))
            part = resp.responses[0].partition_responses[0]
            assert part.error_code == 0
            produced |= {(partition, part.base_offset + i) for i in range(PER_ROUND)}
    return produced


def wait(condition, what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def balanced(members: list[Member]) -> bool:
    owned = [m.assignment() for m in members]
    if any(o is None or not o for o in owned):
        return False
    union = set().union(*owned)  # type: ignore[arg-type]
    return union == set(range(PARTITIONS)) and sum(len(o) for o in owned) == PARTITIONS  # type: ignore[arg-type]


def consumed(members: list[Member]) -> set[tuple[int, int]]:
    return {r for m in members for r in m.records()}
