"""The pipelined writer: asyncio appends, a failed commit while the next flush is written, and
the produce path's topic cache."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from streamhouse.config import Settings
from streamhouse.errors import StorageError, UnknownPartitionError
from streamhouse.log import Log
from streamhouse.log.records import build_batch, decode_batches


def _values(log: Log, partition: int = 0) -> list[bytes]:
    rows = log.metadata.segments("t", partition)
    runs = b"".join(log.reader.run_bytes(row) for row in rows)
    return decode_batches(runs).column("value").to_pylist() if runs else []


def test_async_appends_resolve_on_the_loop_with_contiguous_offsets(tmp_path: Path) -> None:
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=2)) as log:
        log.create_topic("t", partitions=2)

        async def produce() -> list[int]:
            futures = [
                log.append_async("t", i % 2, build_batch([f"v{i}".encode()] * 3)) for i in range(40)
            ]
            return await asyncio.gather(*futures)

        offsets = asyncio.run(produce())
        assert offsets[0::2] == list(range(0, 60, 3))
        assert offsets[1::2] == list(range(0, 60, 3))
        assert log.offsets("t", 0).high_watermark == 60


def test_a_failed_commit_rewrites_the_flush_written_behind_it(tmp_path: Path) -> None:
    """Flush 2 is stamped after flush 1's (tentative) offsets and put while flush 1 commits;
    flush 1's commit fails, so flush 2 is written again from the committed high watermark."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t")
        commit = log.metadata.commit_segment
        entered, release = threading.Event(), threading.Event()
        calls = 0

        def failing_first_commit(object_key, entries):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 1:
                entered.set()
                release.wait(10)
                raise StorageError("commit refused")
            return commit(object_key, entries)

        log.metadata.commit_segment = failing_first_commit  # type: ignore[method-assign]
        first = log.append("t", 0, build_batch([b"lost-1", b"lost-2"]))
        assert entered.wait(10)
        second = log.append("t", 0, build_batch([b"kept"]))
        # Let the writer thread stamp and put flush 2 behind the blocked commit.
        time.sleep(0.2)
        release.set()
        with pytest.raises(StorageError, match="commit refused"):
            first.result(10)
        assert second.result(10) == 0
        assert calls == 2  # flush 2, stamped in the failed generation, was not even tried
        log.metadata.commit_segment = commit  # type: ignore[method-assign]
        assert log.append("t", 0, build_batch([b"next"])).result(10) == 1
        assert _values(log) == [b"kept", b"next"]
    objects = sorted((tmp_path / "objects" / "segments").iterdir())
    assert len(objects) == 2  # the objects of the failed and the stale flush were deleted


def test_partitions_added_through_the_log_are_writable_at_once(tmp_path: Path) -> None:
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t", partitions=1)
        assert log.append("t", 0, build_batch([b"a"])).result(10) == 0  # topic now cached
        with pytest.raises(UnknownPartitionError):
            log.append("t", 1, build_batch([b"b"]))
        log.set_partitions("t", 2)
        assert log.append("t", 1, build_batch([b"b"])).result(10) == 0
        log.delete_topic("t")
        log.create_topic("t", partitions=3)
        assert log.append("t", 2, build_batch([b"c"])).result(10) == 0
