"""Durability across processes: kill -9 mid-produce, several writers on one directory, a full
disk and an unwritable directory. Every test runs real StreamHouse processes."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import streamhouse

# A producer that prints every acknowledged record as "partition offset ident padding" once
# produce() has returned. Arguments: data_dir topic tag linger_ms calls (0: until killed)
# [threads, default 2: each has one produce() in flight; with more, flushes are put while
# earlier ones are committed, and committed in groups]. It prints "ready" once connected and starts producing when a line arrives on stdin; at the
# end, "stats <objects put> <objects committed> <commits sequenced elsewhere>".
PRODUCER = r"""
import os, random, sys, threading, traceback
import streamhouse

data_dir, topic, tag, linger_ms, calls = sys.argv[1:6]
workers = int(sys.argv[6]) if len(sys.argv) > 6 else 2
sh = streamhouse.connect(data_dir, linger_ms=float(linger_ms))
partitions = sh.topic(topic).partitions
lock = threading.Lock()

def run(worker):
    try:
        produce(worker)
    except BaseException:
        traceback.print_exc()
        os._exit(3)  # any failed produce fails the process

def produce(worker):
    rng = random.Random()
    for call in range(int(calls) or 1 << 62):
        p = rng.randrange(partitions)
        idents = [f"{tag}.{worker}.{call}.{i}" for i in range(rng.randrange(1, 12))]
        pads = [rng.randrange(0, 3000) for _ in idents]
        values = [f"{ident}|".encode() + b"x" * pad for ident, pad in zip(idents, pads)]
        first, last = sh.produce(topic, values, partition=p).offsets[p]
        assert last - first + 1 == len(values)
        lines = "".join(f"{p} {first + i} {ident} {pad}\n"
                        for i, (ident, pad) in enumerate(zip(idents, pads)))
        with lock:
            sys.stdout.write(lines)
            sys.stdout.flush()

threads = [threading.Thread(target=run, args=(w,)) for w in range(workers)]
print("ready", flush=True)
sys.stdin.readline()
for t in threads:
    t.start()
for t in threads:
    t.join()
sh.close()
stats = sh.log.writer.stats
print("stats", stats.objects_put, stats.objects_committed, stats.sequenced_elsewhere, flush=True)
"""

Ack = tuple[int, int, str, int]  # partition, offset, ident, padding
Stats = tuple[int, int, int]  # objects put, objects committed, commits sequenced elsewhere


def _spawn_producer(
    data_dir: Path, topic: str, tag: str, linger_ms: float, calls: int, threads: int = 2
):
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(data_dir), topic, tag, str(linger_ms), str(calls)]
        + [str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _drain(stream: IO[bytes], into: list[bytes], first: threading.Event) -> None:
    for line in stream:  # the last piece may lack its newline if the kill cut a write short
        into.append(line)
        first.set()


def _start(*children: subprocess.Popen[bytes]) -> None:
    """Wait until every producer is connected, then let them all go."""
    for child in children:
        assert child.stdout.readline() == b"ready\n", child.stderr.read()  # type: ignore[union-attr]
    for child in children:
        child.stdin.write(b"go\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]


def _kill_mid_produce(child: subprocess.Popen[bytes], delay_s: float) -> list[Ack]:
    """kill -9 ``child`` ``delay_s`` after its first ack; what it acknowledged."""
    chunks: list[bytes] = []
    acked = threading.Event()
    reader = threading.Thread(target=_drain, args=(child.stdout, chunks, acked))
    reader.start()
    assert acked.wait(timeout=60), "the producer acknowledged nothing"
    time.sleep(delay_s)  # somewhere in the middle of its work
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    reader.join(timeout=30)
    assert child.returncode == -signal.SIGKILL
    acks = _parse_acks(b"".join(chunks))
    assert acks
    return acks


def _parse_acks(output: bytes) -> list[Ack]:
    """Complete lines only: a line cut short by kill -9 was never acknowledged to anyone."""
    text = output.decode()
    lines = text.split("\n")[:-1]  # the last piece has no newline (empty if complete)
    acks = []
    for line in lines:
        if line == "ready" or line.startswith("stats "):
            continue
        p, o, ident, pad = line.split(" ")
        acks.append((int(p), int(o), ident, int(pad)))
    return acks


def _parse_stats(output: bytes) -> Stats:
    (line,) = [line for line in output.decode().splitlines() if line.startswith("stats ")]
    put, committed, elsewhere = map(int, line.split()[1:])
    return put, committed, elsewhere


def _objects(data_dir: Path, topic: str, partitions: int) -> tuple[set[str], set[str]]:
    """The segment objects on disk, and those the index names."""
    with streamhouse.connect(data_dir) as sh:
        indexed = {
            row.object_key for p in range(partitions) for row in sh.log.metadata.segments(topic, p)
        }
    objects = data_dir / "objects"
    on_disk = {str(p.relative_to(objects)) for p in objects.rglob("*.seg")}
    return on_disk, indexed


def _check_log(data_dir: Path, topic: str, acks: list[Ack]) -> dict[int, int]:
    """Offsets contiguous from 0 without duplicates; every ack stored at its offset, byte-exact.

    Returns the high watermark of each partition."""
    with streamhouse.connect(data_dir) as sh:
        table = sh.fetch(topic)
        stored: dict[tuple[int, int], bytes] = {}
        for p, o, v in zip(
            table["partition"].to_pylist(),
            table["offset"].to_pylist(),
            table["value"].to_pylist(),
            strict=True,
        ):
            assert (p, o) not in stored, f"offset {o} of partition {p} stored twice"
            stored[(p, o)] = v
        high_watermarks = {}
        for p in range(sh.topic(topic).partitions):
            offsets = sorted(o for q, o in stored if q == p)
            high_watermark = sh.log.offsets(topic, p).high_watermark
            assert offsets == list(range(high_watermark)), f"gap or hole in partition {p}"
            high_watermarks[p] = high_watermark
        for p, o, ident, pad in acks:
            assert stored.get((p, o)) == f"{ident}|".encode() + b"x" * pad, (p, o, ident)
        idents = [v.split(b"|")[0] for v in stored.values()]
        assert len(idents) == len(set(idents)), "a record was stored twice"
    return high_watermarks


@pytest.fixture
def metadata_env(metadata_url: str | None, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Each metadata backend in turn, named by ``STREAMHOUSE_METADATA`` (which the producer
    processes inherit): SQLite in the data directory, or one PostgreSQL schema for all."""
    if metadata_url is None:
        monkeypatch.delenv("STREAMHOUSE_METADATA", raising=False)
    else:
        monkeypatch.setenv("STREAMHOUSE_METADATA", metadata_url)
    return metadata_url


def test_kill_9_mid_produce_loses_nothing_acknowledged(
    tmp_path: Path, metadata_env: str | None
) -> None:
    """Rounds of a producer killed -9 mid-produce, with 2 or 12 threads producing at once (12:
    several flushes put while one commits, then committed as a group, at the kill). After each
    kill: every acknowledged record is stored at its offset, offsets dense, nothing twice, and
    every object the index names exists."""
    with streamhouse.connect(tmp_path) as sh:
        sh.create_topic("acks", partitions=3)
    rng = random.Random(9)
    acks: list[Ack] = []
    for round_ in range(5):
        threads = 12 if round_ % 2 else 2
        linger_ms = rng.choice([0, 1, 5])
        child = _spawn_producer(tmp_path, "acks", f"r{round_}", linger_ms, 0, threads)
        _start(child)
        acks.extend(_kill_mid_produce(child, rng.uniform(0, 0.5)))
        high_watermarks = _check_log(tmp_path, "acks", acks)
        assert sum(high_watermarks.values()) >= len(acks)
        on_disk, indexed = _objects(tmp_path, "acks", 3)
        assert indexed <= on_disk

    # The log still takes writes, continuing each partition's offsets.
    with streamhouse.connect(tmp_path) as sh:
        for p, high_watermark in high_watermarks.items():
            produced = sh.produce("acks", [b"after"], partition=p)
            assert produced.offsets == {p: (high_watermark, high_watermark)}
            assert sh.fetch("acks", p, high_watermark)["value"].to_pylist() == [b"after"]


def test_producer_processes_on_one_store_are_sequenced_not_rewritten(
    tmp_path: Path, metadata_env: str | None
) -> None:
    """Three processes produce to the same two partitions at once. The metadata store gives
    each flush its offsets at commit: offsets end dense and unique, every flush is one object
    put once and committed at the first try, and no object is left over."""
    with streamhouse.connect(tmp_path) as sh:
        sh.create_topic("shared", partitions=2)
    children = [_spawn_producer(tmp_path, "shared", tag, 0, 30) for tag in ("a", "b", "c")]
    _start(*children)  # all connected: start them together
    acks: list[Ack] = []
    stats: list[Stats] = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()[-2000:]
        acks.extend(_parse_acks(out))
        stats.append(_parse_stats(out))
    assert len({(p, o) for p, o, _, _ in acks}) == len(acks)
    high_watermarks = _check_log(tmp_path, "shared", acks)
    assert sum(high_watermarks.values()) == len(acks)
    assert all(put == committed for put, committed, _ in stats), stats  # nothing rewritten
    assert sum(elsewhere for _, _, elsewhere in stats) > 0, stats  # the writers did interleave
    on_disk, indexed = _objects(tmp_path, "shared", 2)
    assert on_disk == indexed
    assert len(on_disk) == sum(committed for _, committed, _ in stats)
    assert (tmp_path / "metadata.sqlite3").exists() == (metadata_env is None)


def test_a_writer_killed_beside_another_loses_nothing_acknowledged(
    tmp_path: Path, metadata_env: str | None
) -> None:
    """Two producer processes write the same two partitions; one is killed -9 mid-produce
    while the other goes on. Offsets stay dense and unique, every acknowledged record is
    there, the survivor wrote each flush once, and at most the victim's flushes in progress
    (two: one being put, one being committed) are left unindexed."""
    with streamhouse.connect(tmp_path) as sh:
        sh.create_topic("pair", partitions=2)
    victim = _spawn_producer(tmp_path, "pair", "victim", 1, 0)
    survivor = _spawn_producer(tmp_path, "pair", "survivor", 1, 60)
    _start(victim, survivor)
    victim_acks = _kill_mid_produce(victim, random.uniform(0, 0.3))
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err.decode()[-2000:]
    survivor_acks = _parse_acks(out)
    assert len(survivor_acks) >= 60
    put, committed, _ = _parse_stats(out)
    assert put == committed
    high_watermarks = _check_log(tmp_path, "pair", victim_acks + survivor_acks)
    assert sum(high_watermarks.values()) >= len(victim_acks) + len(survivor_acks)
    on_disk, indexed = _objects(tmp_path, "pair", 2)
    assert indexed <= on_disk and len(on_disk - indexed) <= 2
    assert (tmp_path / "metadata.sqlite3").exists() == (metadata_env is None)


def test_two_cli_producers_on_one_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with streamhouse.connect(data_dir) as sh:
        sh.create_topic("lines", partitions=2)
    children = []
    for tag in ("x", "y"):
        lines = "".join(json.dumps({"tag": tag, "i": i}) + "\n" for i in range(2000))
        (tmp_path / f"{tag}.jsonl").write_text(lines)
        command = ["produce", "lines", "-f", str(tmp_path / f"{tag}.jsonl")]
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "streamhouse", *command, "--data-dir", str(data_dir)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        assert err.decode().strip().endswith("produced 2000 record(s) to lines")
        assert out == b""
    with streamhouse.connect(data_dir) as sh:
        table = sh.fetch("lines")
        rows = [json.loads(v) for v in table["value"].to_pylist()]
        assert sorted((r["tag"], r["i"]) for r in rows) == [
            (tag, i) for tag in "xy" for i in range(2000)
        ]
        partitions = table["partition"].to_pylist()
        for p in range(2):
            offsets = [
                o for q, o in zip(partitions, table["offset"].to_pylist(), strict=True) if q == p
            ]
            assert sorted(offsets) == list(range(sh.log.offsets("lines", p).high_watermark))


# -- a full disk and an unwritable directory ---------------------------------------------------

# A StreamHouse process driven over stdin: one JSON command per line, one JSON answer per line.
SERVANT = r"""
import json, resource, signal, sys
import streamhouse

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE fails with EFBIG
sh = streamhouse.connect(sys.argv[1], linger_ms=1)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "produce":
            values = [v.encode() for v in cmd["values"]]
            produced = sh.produce(cmd["topic"], values, partition=0, compression="none")
            answer = {"offsets": produced.offsets[0]}
        elif cmd["op"] == "values":
            answer = {"values": [v.decode() for v in sh.fetch(cmd["topic"])["value"].to_pylist()]}
        elif cmd["op"] == "fsize":
            resource.setrlimit(resource.RLIMIT_FSIZE, (cmd["limit"] or soft, hard))
            answer = {}
        elif cmd["op"] == "create":
            sh.create_topic(cmd["topic"])
            answer = {}
    except streamhouse.StreamHouseError as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(answer), flush=True)
sh.close()
"""


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _obey_permissions() -> None:
    """In the child before exec: drop the capabilities that let root ignore permission bits.

    The child keeps uid 0 (it can still run the interpreter under /root) but, after exec,
    ``chmod 555`` on a directory stops it from creating files there.
    """
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


class Servant:
    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVANT, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_obey_permissions,  # noqa: PLW1509
        )
        ready = self.process.stdout.readline()  # type: ignore[union-attr]
        assert ready == b'{"ready": true}\n', self.process.stderr.read()  # type: ignore[union-attr]

    def __call__(self, **cmd: object) -> dict:
        self.process.stdin.write(json.dumps(cmd).encode() + b"\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line, self.process.stderr.read()  # type: ignore[union-attr]
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        assert self.process.wait(timeout=30) == 0, self.process.stderr.read()  # type: ignore[union-attr]


@pytest.fixture
def servant() -> Iterator[tuple[Servant, Path]]:
    root = Path(tempfile.mkdtemp(prefix="streamhouse-durability-"))
    process = Servant(root / "data")
    try:
        yield process, root / "data"
        process.close()
    finally:
        if process.process.poll() is None:
            process.process.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_full_disk_fails_the_produce_and_keeps_what_was_acknowledged(
    servant: tuple[Servant, Path],
) -> None:
    sh, data_dir = servant
    assert sh(op="create", topic="t") == {}
    assert sh(op="produce", topic="t", values=["a", "b"]) == {"offsets": [0, 1]}
    # Files may not grow past 64 KiB: a 100 KB segment object cannot be written.
    assert sh(op="fsize", limit=64 * 1024) == {}
    answer = sh(op="produce", topic="t", values=["c" * 100_000])
    assert answer["error"] == "StorageError"
    assert "cannot write object 'segments/" in answer["message"]
    assert "File too large" in answer["message"]
    assert sh(op="values", topic="t") == {"values": ["a", "b"]}
    # 4 KiB: the small object is written, but the metadata store's log cannot grow, so the
    # commit fails; the object it would have indexed is deleted.
    assert sh(op="fsize", limit=4096) == {}
    answer = sh(op="produce", topic="t", values=["small"])
    assert answer["error"] == "StorageError"
    assert "metadata store" in answer["message"] and "cannot commit segment" in answer["message"]
    # Space again: the writer carries on, with no offset lost to the failed flushes.
    assert sh(op="fsize", limit=0) == {}
    assert sh(op="produce", topic="t", values=["d" * 100_000, "e"]) == {"offsets": [2, 3]}
    assert sh(op="values", topic="t") == {"values": ["a", "b", "d" * 100_000, "e"]}
    with streamhouse.connect(data_dir) as again:
        assert again.fetch("t")["value"].to_pylist() == [b"a", b"b", b"d" * 100_000, b"e"]
        indexed = {row.object_key for row in again.log.metadata.segments("t", 0)}
    assert {
        str(p.relative_to(data_dir / "objects")) for p in (data_dir / "objects").rglob("*.seg")
    } == indexed


def test_unwritable_data_directory_fails_the_produce_and_keeps_what_was_acknowledged(
    servant: tuple[Servant, Path],
) -> None:
    sh, data_dir = servant
    assert sh(op="create", topic="t") == {}
    assert sh(op="produce", topic="t", values=["a"]) == {"offsets": [0, 0]}
    segments = data_dir / "objects" / "segments"
    segments.chmod(0o555)
    answer = sh(op="produce", topic="t", values=["b"])
    assert answer["error"] == "StorageError"
    assert "Permission denied" in answer["message"]
    assert str(data_dir / "objects") in answer["message"]
    segments.chmod(0o755)
    assert sh(op="produce", topic="t", values=["c"]) == {"offsets": [1, 1]}
    assert sh(op="values", topic="t") == {"values": ["a", "c"]}
    with streamhouse.connect(data_dir) as again:  # and another process reads the same
        assert again.fetch("t")["value"].to_pylist() == [b"a", b"c"]
