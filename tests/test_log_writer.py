"""The pipelined writer: asyncio appends, a failed commit while the next flush is written, and
the produce path's topic cache."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from streamhouse.config import Settings
from streamhouse.errors import (
    LogError,
    OutOfOrderSequenceError,
    StorageError,
    UnknownPartitionError,
)
from streamhouse.log import Log, writer
from streamhouse.log.records import build_batch, decode_batches


def _ignore() -> None:
    """An ``on_loss`` for early appends whose loss the test reads from their futures."""


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


def test_a_failed_commit_leaves_the_flush_written_behind_it_to_the_store(tmp_path: Path) -> None:
    """Flush 2 is stamped after flush 1's (tentative) offsets and put while flush 1 commits;
    flush 1's commit fails, and flush 2 is committed as written: the store gives it offset 0,
    and the reader re-stamps its batch, written at offset 2."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t")
        commit = log.metadata.commit_segment
        entered, release = threading.Event(), threading.Event()
        calls = 0

        def failing_first_commit(
            object_key, entries, producer_batches=(), *, fence=None, then=None
        ):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            if calls == 1:
                entered.set()
                release.wait(10)
                raise StorageError("commit refused")
            return commit(object_key, entries, producer_batches, fence=fence, then=then)

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
        assert calls == 2  # flush 2 was committed, not written again
        log.metadata.commit_segment = commit  # type: ignore[method-assign]
        assert log.append("t", 0, build_batch([b"next"])).result(10) == 1
        assert _values(log) == [b"kept", b"next"]
        offsets = decode_batches(log.fetch("t", 0, 0, 1 << 20).records).column("offset")
        assert offsets.to_pylist() == [0, 1]
    objects = sorted((tmp_path / "objects" / "segments").iterdir())
    assert len(objects) == 2  # the failed flush's object was deleted, none rewritten


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


def test_the_produce_paths_topic_cache_counts_as_metadata_cache_hits(tmp_path: Path) -> None:
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as log:
        log.create_topic("t", partitions=1)
        log.append("t", 0, build_batch([b"a"])).result(10)  # the topic is cached from here
        before = log.metadata.stats.topic_hits
        for value in (b"b", b"c", b"d"):
            log.append("t", 0, build_batch([value])).result(10)
        assert log.metadata.stats.topic_hits >= before + 3


def test_two_logs_on_one_store_are_sequenced_by_it(tmp_path: Path) -> None:
    """Log ``a`` guesses offset 3 for its second flush, but ``b`` committed 3-4 meanwhile: the
    store indexes ``a``'s run at 5-7, the object is not rewritten, and every read (a fetch
    from inside the run, a decode) sees offsets 5-7."""
    settings = Settings.load(data_dir=tmp_path, linger_ms=1)
    with Log.open(settings) as a, Log.open(settings) as b:
        a.create_topic("t")
        assert a.append("t", 0, build_batch([b"a0", b"a1", b"a2"])).result(10) == 0
        assert b.append("t", 0, build_batch([b"b3", b"b4"])).result(10) == 3
        batches = build_batch([b"a5"]) + build_batch([b"a6", b"a7"])
        assert a.append("t", 0, batches).result(10) == 5
        assert (a.writer.stats.objects_put, a.writer.stats.objects_committed) == (2, 2)
        assert a.writer.stats.sequenced_elsewhere == 1
        (row,) = a.metadata.segments("t", 0, from_offset=5)
        assert (row.base_offset, row.last_offset) == (5, 7)
        for log in (a, b):
            fetched = decode_batches(log.fetch("t", 0, 6).records)
            assert fetched.column("offset").to_pylist() == [6, 7]
            assert fetched.column("value").to_pylist() == [b"a6", b"a7"]
        assert _values(b) == [b"a0", b"a1", b"a2", b"b3", b"b4", b"a5", b"a6", b"a7"]
        assert a.append("t", 0, build_batch([b"a8"])).result(10) == 8  # guesses right again
        assert a.writer.stats.sequenced_elsewhere == 1
    assert len(list((tmp_path / "objects" / "segments").iterdir())) == 4


def test_a_flush_holding_a_duplicate_is_written_again_without_it(tmp_path: Path) -> None:
    """Log ``b`` gets a retry of an idempotent batch ``a`` committed, in one flush with other
    appends: the store refuses that commit, the retry is answered with the first copy's
    offset, the out-of-order batch with its error, and the rest is written and committed as a
    new object (the refused one deleted)."""

    def idempotent(pid: int, seq: int, *values: bytes) -> bytes:
        return build_batch(list(values), producer_id=pid, producer_epoch=0, base_sequence=seq)

    with (
        Log.open(Settings.load(data_dir=tmp_path, linger_ms=1)) as a,
        Log.open(Settings.load(data_dir=tmp_path, linger_ms=300)) as b,
    ):
        a.create_topic("t", partitions=2)
        assert a.append("t", 0, idempotent(5, 0, b"x", b"y")).result(10) == 0
        in_one_flush = [
            b.append("t", 0, build_batch([b"plain"])),
            b.append("t", 0, idempotent(5, 0, b"x", b"y")),  # the retry
            b.append("t", 1, idempotent(6, 0, b"p6")),
            b.append("t", 0, idempotent(5, 2, b"z")),
            b.append("t", 0, idempotent(6, 0, b"q6")),
            b.append("t", 0, idempotent(5, 40, b"gap")),
        ]
        assert [f.result(10) for f in in_one_flush[:5]] == [2, 0, 0, 3, 4]
        with pytest.raises(OutOfOrderSequenceError, match="sequence 40"):
            in_one_flush[5].result(10)
        assert b.writer.stats.duplicate_batches == 1
        assert (b.writer.stats.objects_put, b.writer.stats.objects_committed) == (2, 1)
        assert _values(a) == [b"x", b"y", b"plain", b"z", b"q6"]
        assert _values(a, 1) == [b"p6"]
    assert len(list((tmp_path / "objects" / "segments").iterdir())) == 2


def _blocking_first_commit(log: Log) -> tuple[threading.Event, threading.Event, list[int]]:
    """Hold the writer's first commit until ``release`` is set (``entered`` is set when it
    starts); the sizes of the group commits made after it go into the list."""
    commit, commit_group = log.metadata.commit_segment, log.metadata.commit_segments
    entered, release = threading.Event(), threading.Event()
    groups: list[int] = []

    def first_blocks(object_key, entries, producer_batches=(), *, fence=None, then=None):  # type: ignore[no-untyped-def]
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        return commit(object_key, entries, producer_batches, fence=fence, then=then)

    def counted(segments):  # type: ignore[no-untyped-def]
        groups.append(len(segments))
        return commit_group(segments)

    log.metadata.commit_segment = first_blocks  # type: ignore[method-assign]
    log.metadata.commit_segments = counted  # type: ignore[method-assign]
    return entered, release, groups


def _put_behind_the_commit(log: Log, values: list[tuple[int, bytes]]) -> list:
    """Append each (partition, value) as a flush of its own while the first commit is held."""
    futures = []
    for partition, value in values:
        put = log.writer.stats.objects_put
        futures.append(log.append("t", partition, build_batch([value])))
        deadline = time.monotonic() + 10
        while log.writer.stats.objects_put == put and time.monotonic() < deadline:
            time.sleep(0.005)
    assert not any(f.done() for f in futures)  # put, not acknowledged: the commit is held
    return futures


def test_flushes_put_during_a_commit_are_committed_together_in_order(
    tmp_path: Path, metadata_url: str | None
) -> None:
    """Four flushes are put while the first one's commit is held; they are then indexed by
    one group commit, each partition's offsets dense and in the order of the appends."""
    settings = Settings.load(data_dir=tmp_path, linger_ms=1, metadata=metadata_url)
    with Log.open(settings) as log:
        log.create_topic("t", partitions=2)
        entered, release, groups = _blocking_first_commit(log)
        first = log.append("t", 0, build_batch([b"a0", b"a1"]))
        assert entered.wait(10)
        later = _put_behind_the_commit(
            log, [(0, b"b2"), (1, b"c0"), (0, b"d3"), (1, b"e1")][: writer.MAX_PUT_AHEAD]
        )
        assert log.writer.stats.objects_put == 1 + len(later)
        release.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in later] == [2, 0, 3, 1]
        assert groups == [len(later)]  # one transaction for all of them
        assert log.writer.stats.objects_committed == 1 + len(later)
        assert log.writer.stats.sequenced_elsewhere == 0  # the guesses were right
        assert _values(log, 0) == [b"a0", b"a1", b"b2", b"d3"]
        assert _values(log, 1) == [b"c0", b"e1"]
        for partition, expected in ((0, [0, 1, 2, 3]), (1, [0, 1])):
            fetched = decode_batches(log.fetch("t", partition, 0, 1 << 20).records)
            assert fetched.column("offset").to_pylist() == expected


def test_a_failed_flush_in_a_group_fails_its_own_appends_only(
    tmp_path: Path, metadata_url: str | None
) -> None:
    """The group commit of three put flushes fails; they are committed again one at a time,
    and the middle one's commit fails too. Its append fails and nothing of it is stored (its
    object deleted); the flushes before and after it, written and put around it, are
    acknowledged at dense offsets (the last one re-sequenced by the store)."""
    settings = Settings.load(data_dir=tmp_path, linger_ms=1, metadata=metadata_url)
    with Log.open(settings) as log:
        log.create_topic("t")
        entered, release, _ = _blocking_first_commit(log)
        held_commit = log.metadata.commit_segment
        commits: list[str] = []

        def refuse_group(segments):  # type: ignore[no-untyped-def]
            raise StorageError("group refused")

        def refuse_the_second(object_key, entries, producer_batches=(), *, fence=None, then=None):  # type: ignore[no-untyped-def]
            commits.append(object_key)
            if len(commits) == 3:  # the held one, then the group's first, then its second
                raise StorageError("commit refused")
            return held_commit(object_key, entries, producer_batches, fence=fence, then=then)

        log.metadata.commit_segments = refuse_group  # type: ignore[method-assign]
        log.metadata.commit_segment = refuse_the_second  # type: ignore[method-assign]
        first = log.append("t", 0, build_batch([b"a0"]))
        assert entered.wait(10)
        kept, lost, after = _put_behind_the_commit(log, [(0, b"b1"), (0, b"lost"), (0, b"c2")])
        release.set()
        assert first.result(10) == 0
        assert kept.result(10) == 1
        with pytest.raises(StorageError, match="commit refused"):
            lost.result(10)
        assert after.result(10) == 2  # written at 3, indexed at 2: no gap
        assert log.writer.stats.sequenced_elsewhere == 1
        assert _values(log) == [b"a0", b"b1", b"c2"]
        offsets = decode_batches(log.fetch("t", 0, 0, 1 << 20).records).column("offset")
        assert offsets.to_pylist() == [0, 1, 2]
        assert not log.metadata.is_indexed(commits[2])
    objects = {p.name for p in (tmp_path / "objects" / "segments").glob("*.seg")}
    assert len(objects) == 3 and commits[2].rsplit("/", 1)[1] not in objects


def test_an_idle_writer_flushes_at_once_and_a_busy_one_batches_its_backlog(
    tmp_path: Path,
) -> None:
    """Group commit driven by the backlog, with no linger: an append to an idle writer is
    put alone at once; appends made while that put is under way go together in the next."""
    with Log.open(Settings.load(data_dir=tmp_path)) as log:
        log.create_topic("t")
        put = log.store.put
        entered, release = threading.Event(), threading.Event()

        def first_put_waits(key: str, data: bytes) -> None:
            if not entered.is_set():
                entered.set()
                assert release.wait(10)
            put(key, data)

        log.store.put = first_put_waits  # type: ignore[method-assign]
        first = log.append("t", 0, build_batch([b"alone"]))
        assert entered.wait(10)  # put with no linger, although nothing else came
        backlog = [log.append("t", 0, build_batch([f"b{i}".encode()])) for i in range(10)]
        release.set()
        assert first.result(10) == 0
        assert [f.result(10) for f in backlog] == list(range(1, 11))
        assert log.writer.stats.objects_put == 2  # the backlog in one object
        stages = log.writer.stats.times.means_ms()
        assert stages["object put"]["count"] == 2
        assert {"object fsync", "dir fsync (beside it)"} <= set(log.store.times.means_ms())
    assert _values_after_reopen(tmp_path) == [b"alone", *(f"b{i}".encode() for i in range(10))]


def _values_after_reopen(root: Path) -> list[bytes]:
    with Log.open(Settings.load(data_dir=root)) as log:
        return _values(log)


def test_appends_made_together_go_out_in_one_object(tmp_path: Path) -> None:
    """``append_together`` (a parallel query's exchange records, one per task): queued at once,
    so the idle writer's first flush takes them all (one object, one commit), while a
    partition's own append can take it alone; each partition gets its batches at its offsets."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=50)) as log:
        log.create_topic("t", partitions=3)
        assert log.append("t", 0, build_batch([b"s0"])).result(10) == 0
        for round_ in range(3):
            together = log.append_together(
                "t", {p: build_batch([b"t%d" % p] * 2) for p in range(3)}
            )
            first = 1 if round_ == 0 else 3 + 2 * (round_ - 1)
            assert [f.result(10) for f in together.values()] == [first, first - 1, first - 1]
            objects = {
                row.object_key
                for p in range(3)
                for row in log.metadata.segments("t", p)
                if row.base_offset == (first if p == 0 else first - 1)
            }
            assert len(objects) == 1
        assert _values(log, 0) == [b"s0"] + [b"t0"] * 6
        assert _values(log, 2) == [b"t2"] * 6


def test_a_commit_hook_commits_with_its_appends_and_its_refusal_fails_them_only(
    tmp_path: Path,
) -> None:
    """Appends queued with a commit hook flush at once, taking a lazy append pending before
    them; the hook runs in the transaction that commits them, given their offsets, and what
    it writes commits with them. A hook that refuses fails its own appends only (with its
    error): the rest of the flush is written again and committed without them, and the
    refused hook's writes are rolled back."""
    from streamhouse.errors import TransactionRefusedError
    from streamhouse.log.records.control import marker_batch

    seen: list[dict[tuple[str, int], int]] = []

    def keep(conn, offsets) -> None:  # type: ignore[no-untyped-def]
        seen.append(dict(offsets))
        conn.execute("INSERT INTO counters (name, counter_value) VALUES ('kept', 1)")

    def refuse(conn, offsets) -> None:  # type: ignore[no-untyped-def]
        conn.execute("INSERT INTO counters (name, counter_value) VALUES ('refused', 1)")
        raise TransactionRefusedError("refused by its hook")

    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=300)) as log:
        log.create_topic("t", partitions=2)

        async def append() -> list[object]:
            lazy = log.append_early("t", 0, build_batch([b"lazy"]), None, _ignore)[0]
            kept = log.append_hooked(
                [
                    ("t", 0, marker_batch(5, 0, commit=True)),
                    ("t", 1, marker_batch(5, 0, commit=True)),
                ],
                keep,
            )
            refused = log.append_hooked([("t", 1, marker_batch(6, 0, commit=True))], refuse)
            return await asyncio.gather(lazy, *kept, *refused, return_exceptions=True)

        lazy, kept_0, kept_1, refused = asyncio.run(append())
        assert (lazy, kept_0, kept_1) == (0, 1, 0)
        assert isinstance(refused, TransactionRefusedError)
        assert seen[-1] == {("t", 0): 1, ("t", 1): 0}
        with log.metadata.inner._transaction("read, by hand") as conn:  # type: ignore[attr-defined]
            names = {n for (n,) in conn.execute("SELECT name FROM counters")}
        assert "kept" in names and "refused" not in names
        assert log.offsets("t", 1).high_watermark == 1  # the refused marker is not there
        assert (log.writer.stats.objects_put, log.writer.stats.objects_committed) == (2, 1)
        assert _values(log) == [b"lazy"]


def test_a_lazy_append_waits_for_a_flush_someone_needs_and_goes_out_with_it(
    tmp_path: Path,
) -> None:
    """A lazy append does not wake an idle writer; an ordinary append after it does, and
    both go out in one object. A lazy append alone still goes out, after at most
    ``LAZY_WAIT_S``."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=300)) as log:
        log.create_topic("t")

        async def append() -> list[int]:
            lazy = log.append_early("t", 0, build_batch([b"lazy"]), None, _ignore)[0]
            plain = log.append_async("t", 0, build_batch([b"plain"]))
            return await asyncio.gather(lazy, plain)

        assert asyncio.run(append()) == [0, 1]
        assert log.writer.stats.objects_put == 1

        async def alone() -> int:
            return await log.append_early("t", 0, build_batch([b"alone"]), None, _ignore)[0]

        assert asyncio.run(alone()) == 2
        assert log.writer.stats.objects_put == 2
        assert _values(log) == [b"lazy", b"plain", b"alone"]


def _producer_batch(pid: int, sequence: int, values: list[bytes]) -> bytes:
    return build_batch(values, producer_id=pid, producer_epoch=0, base_sequence=sequence)


def test_early_appends_are_answered_with_the_offsets_their_commit_gives_them(
    tmp_path: Path,
) -> None:
    """An early append (answered before it is durable) gets its base offset when queued: the
    high watermark plus what is queued ahead, ordinary appends and other early ones, over
    several partitions; each is then indexed exactly there."""
    with Log.open(Settings.load(data_dir=tmp_path, linger_ms=20)) as log:
        log.create_topic("t", partitions=2)
        assert log.append("t", 1, build_batch([b"before"] * 3)).result(10) == 0

        async def append() -> tuple[list[int | None], list[int]]:
            reserved, futures = [], []
            for round_ in range(4):
                for partition in (0, 1):
                    values = [b"e%d" % round_] * (round_ + 1)
                    batch = _producer_batch(10 + partition, round_ * (round_ + 1) // 2, values)
                    future, base = log.append_early("t", partition, batch, None, _ignore)
                    reserved.append(base)
                    futures.append(future)
                    plain = log.append_async("t", partition, build_batch([b"p"] * 2))
                    futures.append(plain)
                    reserved.append(None)
                await asyncio.sleep(0.01 * round_)  # some rounds in flushes of their own
            return reserved, list(await asyncio.gather(*futures))

        reserved, got = asyncio.run(append())
        # partition 0 from 0, partition 1 from 3; round r: r + 1 early records, 2 plain ones
        assert got == [0, 1, 3, 4, 3, 5, 6, 8, 7, 10, 10, 13, 12, 16, 15, 19]
        assert reserved == [g if i % 2 == 0 else None for i, g in enumerate(got)]
        assert _values(log, 0) == [v for r in range(4) for v in [b"e%d" % r] * (r + 1) + [b"p"] * 2]


def test_an_early_append_behind_a_refused_batch_is_refused_not_moved(tmp_path: Path) -> None:
    """A batch queued ahead of an early append is refused (a sequence gap), so the early one
    would land on offsets it was not answered with: its commit refuses it too (its
    ``on_loss`` is told), the rest of the flush commits, and the next early append is
    answered with the offset it then gets."""
    lost: list[str] = []
    settings = Settings.load(data_dir=tmp_path, linger_ms=200, linger_when_idle=True)
    with Log.open(settings) as log:
        log.create_topic("t")

        async def append() -> tuple[int | None, int | None, list[object]]:
            first, at = log.append_early("t", 0, _producer_batch(7, 0, [b"q0"]), None, _ignore)
            assert at == await first == 0
            gap = log.append_async("t", 0, _producer_batch(7, 5, [b"gap"] * 2))  # 1-4 missing
            early, reserved = log.append_early(
                "t", 0, _producer_batch(8, 0, [b"early"] * 3), None, lambda: lost.append("x")
            )
            plain = log.append_async("t", 0, build_batch([b"plain"]))
            outcomes = await asyncio.gather(gap, early, plain, return_exceptions=True)
            after, again = log.append_early(
                "t", 0, _producer_batch(9, 0, [b"after"]), None, lambda: lost.append("y")
            )
            return reserved, again, [*outcomes, await after]

        reserved, again, (gap, early, plain, after) = asyncio.run(append())
        assert reserved == 3  # behind the gap batch's two records
        assert isinstance(gap, OutOfOrderSequenceError)
        assert isinstance(early, LogError) and "offsets shifted" in str(early)
        assert "answered with offset 3 (it would be at 1)" in str(early)
        assert lost == ["x"]
        assert plain == 1  # the rest of the flush, where the store put it
        assert again == after == 2
        assert _values(log) == [b"q0", b"plain", b"after"]
