"""The metadata store: topics, the segment index with fencing, groups, catalog, producer ids.

Every test taking ``md`` or ``open_store`` runs against each backend: SQLite and PostgreSQL
(a fresh schema per test; see ``metadata_url`` in conftest.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from streamhouse.config import Settings
from streamhouse.errors import (
    ConfigError,
    LogError,
    OffsetOutOfRangeError,
    RefusedBatchesError,
    SqlError,
    StorageError,
    TopicExistsError,
    UnknownPartitionError,
    UnknownTopicError,
)
from streamhouse.log.metadata import (
    FlushedSegment,
    GroupOffset,
    PartitionOffsets,
    ProducerBatch,
    SegmentRow,
    migrations,
    open_metadata,
    validate_topic_name,
)
from streamhouse.log.metadata.migrations import LATEST_VERSION, POSTGRESQL, Migration
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.rules import now_ms
from streamhouse.log.metadata.sqlite import SQLiteMetadata


@dataclass(frozen=True, slots=True)
class Entry:
    """Stands in for log.segment.SegmentEntry (same attributes)."""

    topic: str
    partition: int
    base_offset: int
    last_offset: int
    position: int = 0
    length: int = 100
    min_timestamp: int = 0
    max_timestamp: int = 0
    record_count: int = 1
    crc: int = 0


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meta" / "metadata.sqlite3"


Store = SQLiteMetadata | PostgresMetadata
OpenStore = Callable[[], Store]


@pytest.fixture
def open_store(db_path: Path, metadata_url: str | None) -> Iterator[OpenStore]:
    """Factory: opens (again) this test's store, of each backend in turn; closes all at the end."""
    opened: list[Store] = []

    def make() -> Store:
        store = SQLiteMetadata(db_path) if metadata_url is None else PostgresMetadata(metadata_url)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def md(open_store: OpenStore) -> Store:
    return open_store()


def run_sql(md: Store, statement: str, rows: Iterable[Sequence[object]] = ((),)) -> None:
    """Run ``statement`` (``?`` placeholders) once per row, straight on the store's database,
    in one transaction: what another program (or a bug) could do behind the protocol's back."""
    if isinstance(md, SQLiteMetadata):
        conn = md._connection()
        conn.execute("BEGIN")
        conn.executemany(statement, rows)
        conn.execute("COMMIT")
        return
    with psycopg.connect(md.url) as conn, conn.cursor() as cursor:
        cursor.executemany(POSTGRESQL.sql(statement), list(rows))


# -- topics -----------------------------------------------------------------------------------


def test_topic_crud(md: Store) -> None:
    info = md.create_topic("orders", partitions=3, config={"retention.ms": "1000"})
    assert (info.name, info.partitions, info.config) == ("orders", 3, {"retention.ms": "1000"})
    assert len(info.topic_id) == 36
    md.create_topic("alpha")
    assert md.get_topic("orders") == info
    assert md.get_topic("nope") is None
    assert [t.name for t in md.list_topics()] == ["alpha", "orders"]
    with pytest.raises(TopicExistsError):
        md.create_topic("orders")

    grown = md.set_partitions("orders", 5)
    assert grown.partitions == 5 and grown.topic_id == info.topic_id
    assert sorted(md.partition_offsets("orders")) == [0, 1, 2, 3, 4]
    assert md.set_partitions("orders", 5) == grown
    with pytest.raises(LogError, match="shrink"):
        md.set_partitions("orders", 2)

    configured = md.set_topic_config("orders", {"cleanup.policy": "delete"})
    assert configured.config == {"cleanup.policy": "delete"}
    assert md.get_topic("orders") == configured

    md.commit_segment("obj-1", [Entry("orders", 0, 0, 9), Entry("alpha", 0, 0, 4)])
    md.commit_segment("obj-2", [Entry("orders", 1, 0, 9)])
    md.commit_group_offsets("g", {("orders", 0): (5, "")})
    assert md.delete_topic("orders") == ["obj-2"]  # obj-1 is still referenced by alpha
    assert md.get_topic("orders") is None
    assert md.segments("orders", 0) == []
    assert md.group_offsets("g") == {}
    with pytest.raises(UnknownTopicError):
        md.delete_topic("orders")
    with pytest.raises(UnknownTopicError):
        md.partition_offsets("orders")
    with pytest.raises(UnknownTopicError):
        md.set_partitions("orders", 9)
    with pytest.raises(UnknownTopicError):
        md.set_topic_config("orders", {})
    assert md.delete_topic("alpha") == ["obj-1"]

    recreated = md.create_topic("orders")
    assert recreated.topic_id != info.topic_id
    assert md.partition_offsets("orders") == {0: PartitionOffsets(0, 0)}


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a" * 250, "has space", "slash/name", "ümlaut", "star*"]
)
def test_invalid_topic_names(md: Store, name: str) -> None:
    with pytest.raises(LogError, match="invalid topic name"):
        md.create_topic(name)
    assert md.list_topics() == []


def test_valid_topic_names_and_counts(md: Store) -> None:
    for name in ("a" * 249, "...", "A.b_c-9"):
        validate_topic_name(name)
        md.create_topic(name)
    for bad in (0, -1, True):
        with pytest.raises(LogError, match="partition count"):
            md.create_topic("x", partitions=bad)
    with pytest.raises(LogError, match="strings"):
        md.create_topic("y", config={"retention.ms": 5})  # type: ignore[dict-item]


# -- the segment index ------------------------------------------------------------------------


def test_commit_segment_advances_high_watermarks(md: Store) -> None:
    md.create_topic("t", partitions=2)
    md.commit_segment("o1", [Entry("t", 0, 0, 9, position=0), Entry("t", 1, 0, 4, position=50)])
    md.commit_segment("o2", [Entry("t", 0, 10, 19), Entry("t", 0, 20, 20)])
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 21), 1: PartitionOffsets(0, 5)}
    assert md.partition_offset("t", 0) == PartitionOffsets(0, 21)
    assert md.partition_offset("t", 1) == PartitionOffsets(0, 5)
    with pytest.raises(UnknownPartitionError):
        md.partition_offset("t", 2)
    with pytest.raises(UnknownTopicError):
        md.partition_offset("nope", 0)
    md.commit_segment("o3", [])  # nothing to do
    rows = md.segments("t", 1)
    assert rows == [SegmentRow("o1", "t", 1, 0, 4, 50, 100, 0, 0, 1, 0)]


def test_the_store_sequences_offsets_whatever_the_entries_were_written_with(md: Store) -> None:
    md.create_topic("t", partitions=2)
    assert md.commit_segment("o1", [Entry("t", 0, 0, 9)]) == [0]
    # written at 5-14 (partition 0) and 0-9 (partition 1): indexed at each high watermark
    bases = md.commit_segment("o2", [Entry("t", 1, 0, 9), Entry("t", 0, 5, 14, position=100)])
    assert bases == [0, 10]
    assert md.commit_segment("o3", [Entry("t", 0, 70, 71), Entry("t", 0, 0, 0)]) == [20, 22]
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 23), 1: PartitionOffsets(0, 10)}
    rows = md.segments("t", 0)
    assert [(r.object_key, r.base_offset, r.last_offset, r.position) for r in rows] == [
        ("o1", 0, 9, 0),
        ("o2", 10, 19, 100),
        ("o3", 20, 21, 0),
        ("o3", 22, 22, 0),
    ]
    assert md.is_indexed("o2") and not md.is_indexed("o4")


def test_a_group_commit_indexes_each_object_after_the_one_before(md: Store) -> None:
    """``commit_segments``: one transaction, each object's entries following the previous
    object's in their partitions, producer states carried from one object to the next; one
    refused batch anywhere and nothing of the group is committed."""
    md.create_topic("t", partitions=2)
    md.commit_segment("o0", [Entry("t", 0, 0, 2)])
    B = ProducerBatch
    group = [
        FlushedSegment("o1", [Entry("t", 0, 3, 4), Entry("t", 1, 0, 0)], [B(0, 0, 7, 0, 0, 1)]),
        FlushedSegment("o2", []),
        FlushedSegment("o3", [Entry("t", 0, 5, 5), Entry("t", 0, 6, 8)], [B(0, 0, 7, 0, 2, 2)]),
    ]
    assert md.commit_segments(group) == [[3, 0], [], [5, 6]]
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 9), 1: PartitionOffsets(0, 1)}
    rows = md.segments("t", 0)
    assert [(r.object_key, r.base_offset, r.last_offset) for r in rows] == [
        ("o0", 0, 2), ("o1", 3, 4), ("o3", 5, 5), ("o3", 6, 8),
    ]  # fmt: skip
    refused = [
        FlushedSegment("o4", [Entry("t", 0, 0, 0)], [B(0, 0, 7, 0, 3, 3)]),
        FlushedSegment("o5", [Entry("t", 0, 0, 0)], [B(0, 0, 7, 0, 9, 9)]),  # out of order
    ]
    with pytest.raises(RefusedBatchesError) as error:
        md.commit_segments(refused)
    assert list(error.value.verdicts) == [0]
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 9), 1: PartitionOffsets(0, 1)}
    assert not md.is_indexed("o4") and not md.is_indexed("o5")
    with pytest.raises(UnknownPartitionError):
        md.commit_segments([FlushedSegment("o6", [Entry("t", 0, 0, 0)]),
                            FlushedSegment("o7", [Entry("t", 2, 0, 0)])])  # fmt: skip
    assert not md.is_indexed("o6")
    assert md.commit_segments([]) == []


def test_commit_segment_unknown_topic_or_partition_rolls_back(md: Store) -> None:
    md.create_topic("t")
    with pytest.raises(UnknownTopicError):
        md.commit_segment("o", [Entry("t", 0, 0, 1), Entry("gone", 0, 0, 1)])
    with pytest.raises(UnknownPartitionError):
        md.commit_segment("o", [Entry("t", 0, 0, 1), Entry("t", 1, 0, 1)])
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 0)}
    assert md.segments("t", 0) == []
    with pytest.raises(LogError, match="below base"):
        md.commit_segment("o", [Entry("t", 0, 0, -1)])


# -- idempotent producers ----------------------------------------------------------------------


def _refusals(md: Store, key: str, entries: list[Entry], batches: list[ProducerBatch]) -> dict:
    """The verdicts of a commit that must be refused, with its proof that nothing committed."""
    before = {p: md.partition_offsets("t")[p] for p in md.partition_offsets("t")}
    with pytest.raises(RefusedBatchesError) as refused:
        md.commit_segment(key, entries, batches)
    assert md.partition_offsets("t") == before and not md.is_indexed(key)
    return {
        i: v if isinstance(v, int) else type(v).__name__ for i, v in refused.value.verdicts.items()
    }


def test_producer_sequences_are_checked_in_the_commit(open_store: OpenStore) -> None:
    """A producer's batches are judged against the state the store keeps, whichever process
    (store) committed them: a duplicate gets its first copy's offset and nothing commits."""
    md, other = open_store(), open_store()  # two processes
    md.create_topic("t", partitions=2)
    B = ProducerBatch
    # producer 7: two batches in one entry; producer 8 on partition 1
    batches = [B(0, 0, 7, 0, 0, 4), B(0, 5, 7, 0, 5, 9), B(1, 0, 8, 0, 0, 4)]
    assert md.commit_segment("a", [Entry("t", 0, 0, 9), Entry("t", 1, 0, 4)], batches) == [0, 0]
    # the second batch again, through the other process: a duplicate of offset 5
    retry = [Entry("t", 0, 0, 4), Entry("t", 1, 0, 0)]
    assert _refusals(other, "b", retry, [B(0, 0, 7, 0, 5, 9)]) == {0: 5}
    other.commit_segment("c", [Entry("t", 0, 0, 0)])  # someone else's record at offset 10
    # in order: indexed at the offsets the store gives, remembered there
    assert other.commit_segment("d", [Entry("t", 0, 50, 52)], [B(0, 1, 7, 0, 10, 11)]) == [11]
    assert _refusals(md, "e", [Entry("t", 0, 0, 1)], [B(0, 0, 7, 0, 10, 11)]) == {0: 12}
    # a gap, a stale epoch and a duplicate in one commit: every one is named
    other.commit_segment("f", [Entry("t", 1, 0, 0)], [B(0, 0, 8, 1, 0, 0)])  # new epoch: afresh
    mixed = [B(0, 0, 7, 0, 13, 13), B(1, 0, 8, 0, 5, 5), B(1, 1, 8, 1, 0, 0), B(1, 2, 9, 0, 77, 77)]
    assert _refusals(md, "g", [Entry("t", 0, 0, 0), Entry("t", 1, 0, 2)], mixed) == {
        0: "OutOfOrderSequenceError",
        1: "InvalidProducerEpochError",
        2: 5,
    }
    # five batches are remembered (at offsets 14-18 here); older ones are out of order
    for n in range(5):
        seq = 12 + n
        md.commit_segment(f"h{n}", [Entry("t", 0, 0, 0)], [B(0, 0, 7, 0, seq, seq)])
    assert _refusals(md, "i", [Entry("t", 0, 0, 0)], [B(0, 0, 7, 0, 12, 12)]) == {0: 14}
    assert _refusals(md, "j", [Entry("t", 0, 0, 1)], [B(0, 0, 7, 0, 10, 11)]) == {
        0: "OutOfOrderSequenceError"
    }
    # sequences wrap after 2**31 - 1
    md.commit_segment("k", [Entry("t", 1, 0, 0)], [B(0, 0, 5, 0, 2**31 - 1, 2**31 - 1)])
    assert md.commit_segment("l", [Entry("t", 1, 0, 1)], [B(0, 0, 5, 0, 0, 1)]) == [7]
    # a deleted topic's producers are forgotten
    md.delete_topic("t")
    md.create_topic("t")
    assert md.commit_segment("m", [Entry("t", 0, 0, 1)], [B(0, 0, 7, 0, 12, 12)]) == [0]
    # idle producers are forgotten (then start afresh)
    assert md.forget_producers(now_ms() - 60_000) == 0
    assert md.forget_producers(now_ms() + 1) == 1
    assert md.commit_segment("n", [Entry("t", 0, 0, 0)], [B(0, 0, 7, 0, 99, 99)]) == [2]


def test_a_commit_of_many_producers_reads_each_ones_state(md: Store) -> None:
    """700 producers in one commit (more than one statement's worth of keys on SQLite): each
    is judged against its own stored state, the next commit's sequences too."""
    md.create_topic("t", partitions=2)
    B = ProducerBatch
    first = [B(p, n, 1000 + n, 0, 0, 0) for n in range(350) for p in (0, 1)]
    assert md.commit_segment("a", [Entry("t", 0, 0, 349), Entry("t", 1, 0, 349)], first)
    again = [B(p, n, 1000 + n, 0, 1, 1) for n in range(350) for p in (0, 1)]
    assert md.commit_segment("b", [Entry("t", 0, 0, 349), Entry("t", 1, 0, 349)], again) == [
        350,
        350,
    ]
    # a retry of one producer's first batch is a duplicate answered with its offset; a gap
    # on another is out of order
    retry = [B(0, 0, 1123, 0, 1, 1), B(1, 0, 1299, 0, 5, 5)]
    assert _refusals(md, "c", [Entry("t", 0, 0, 0), Entry("t", 1, 0, 0)], retry) == {
        0: 350 + 123,
        1: "OutOfOrderSequenceError",
    }


def test_segments_range_queries(md: Store) -> None:
    md.create_topic("t", partitions=2)
    for i in range(10):  # segments of 10 offsets: [0,9], [10,19], ...
        md.commit_segment(f"o{i}", [Entry("t", 0, i * 10, i * 10 + 9)])
    md.commit_segment("other", [Entry("t", 1, 0, 999)])

    def bases(*args: int | None, **kw: int) -> list[int]:
        return [r.base_offset for r in md.segments("t", 0, *args, **kw)]

    assert bases() == list(range(0, 100, 10))
    assert bases(15) == list(range(10, 100, 10))
    assert bases(19, 20) == [10]
    assert bases(19, 21) == [10, 20]
    assert bases(0, 0) == []
    assert bases(100) == []
    assert bases(25, limit=2) == [20, 30]
    assert md.segments("missing", 0) == []


def test_segments_fast_with_100k_rows(md: Store) -> None:
    md.create_topic("big")
    # Bulk load directly (100k commits would be slow to fsync), in SQL both backends speak.
    run_sql(
        md,
        "WITH RECURSIVE n (i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)"
        " INSERT INTO segments SELECT 'big', 0, i, i, 'o' || i, 0, 10, i, i, i, 1, 0 FROM n",
    )
    run_sql(md, "UPDATE partitions SET high_watermark = 100000, max_timestamp = 99999")
    start = time.perf_counter()
    for offset in range(0, 100_000, 1_000):
        rows = md.segments("big", 0, offset, offset + 5)
        assert [r.base_offset for r in rows] == list(range(offset, offset + 5))
        found = md.segment_for_timestamp("big", 0, offset + 500)
        assert found is not None and found.base_offset == offset + 500
    assert time.perf_counter() - start < 1.0  # a scan per query would take seconds


def test_segment_for_timestamp(md: Store) -> None:
    md.create_topic("t")
    # max timestamps out of order: 100, 50, 300, 200
    for i, ts in enumerate([100, 50, 300, 200]):
        md.commit_segment(f"o{i}", [Entry("t", 0, i, i, min_timestamp=ts - 10, max_timestamp=ts)])

    def found(ts: int) -> str | None:
        row = md.segment_for_timestamp("t", 0, ts)
        return None if row is None else row.object_key

    assert found(0) == "o0"
    assert found(100) == "o0"
    assert found(101) == "o2"
    assert found(250) == "o2"
    assert found(300) == "o2"
    assert found(301) is None
    assert md.segment_for_timestamp("missing", 0, 0) is None
    # retention removed the rows that raised the running maximum: fall back to a scan
    run_sql(md, "DELETE FROM segments WHERE base_offset IN (0, 2)")
    assert found(60) == "o3"
    assert found(250) is None


# -- groups, catalog, producer ids ------------------------------------------------------------


def test_group_offsets_round_trip(md: Store) -> None:
    md.commit_group_offsets("g1", {("t", 0): (5, "meta ü {json}"), ("t", 1): (7, "")})
    md.commit_group_offsets("g1", {("t", 0): (6, "again")})
    md.commit_group_offsets("g0", {("u", 3): (1, "x")})
    offsets = md.group_offsets("g1")
    assert set(offsets) == {("t", 0), ("t", 1)}
    assert (offsets["t", 0].offset, offsets["t", 0].metadata) == (6, "again")
    assert offsets["t", 1] == GroupOffset(7, "", offsets["t", 1].commit_ms)
    assert offsets["t", 1].commit_ms > 1_600_000_000_000
    assert md.list_groups() == ["g0", "g1"]
    md.delete_group_offsets("g0", [("u", 3), ("u", 4), ("gone", 0)])  # OffsetDelete
    assert md.group_offsets("g0") == {} and md.list_groups() == ["g1"]
    md.commit_group_offsets("g0", {("u", 3): (1, "x")})
    md.delete_group("g1")
    md.delete_group("never")
    assert md.group_offsets("g1") == {}
    assert md.list_groups() == ["g0"]


def test_catalog_is_case_insensitive(md: Store) -> None:
    entry = md.put_catalog("Clicks", "stream", "CREATE STREAM Clicks (a INT)")
    assert md.get_catalog("clicks") == entry
    assert md.get_catalog("CLICKS").name == "Clicks"  # type: ignore[union-attr]
    with pytest.raises(SqlError, match="stream 'Clicks' already exists"):
        md.put_catalog("CLICKS", "table", "CREATE TABLE CLICKS (a INT)")
    replaced = md.put_catalog("CLICKS", "table", "CREATE TABLE CLICKS (a INT)", replace=True)
    assert md.get_catalog("clicks") == replaced
    md.put_catalog("a_view", "view", "SELECT 1")
    assert [e.name for e in md.list_catalog()] == ["a_view", "CLICKS"]
    with pytest.raises(SqlError, match="kind"):
        md.put_catalog("q", "sink", "x")
    assert md.drop_catalog("Clicks") is True
    assert md.drop_catalog("clicks") is False
    assert md.get_catalog("clicks") is None


def test_persistence_and_producer_ids_across_reopen(open_store: OpenStore) -> None:
    md = open_store()
    ids = [md.next_producer_id() for _ in range(3)]
    assert ids == sorted(set(ids)) and ids[0] >= 1
    info = md.create_topic("t", partitions=2, config={"k": "v"})
    md.commit_segment("o", [Entry("t", 1, 0, 41, max_timestamp=7)])
    md.commit_group_offsets("g", {("t", 1): (40, "m")})
    md.put_catalog("S", "stream", "CREATE STREAM S ()")
    md.close()
    md.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        md.get_topic("t")

    again = open_store()
    assert again.schema_version == LATEST_VERSION
    assert again.get_topic("t") == info
    assert again.partition_offsets("t")[1] == PartitionOffsets(0, 42)
    assert [r.last_offset for r in again.segments("t", 1)] == [41]
    assert again.group_offsets("g")["t", 1].metadata == "m"
    assert again.get_catalog("s") is not None
    assert again.next_producer_id() > ids[-1]
    if isinstance(again, SQLiteMetadata):
        assert again._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert again._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# -- concurrency and failures -----------------------------------------------------------------


def at_once(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(0)`` ... ``work(count - 1)`` on threads released together; their errors."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(n: int) -> None:
        barrier.wait()
        try:
            work(n)
        except BaseException as exc:  # returned to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_commits_from_threads(md: Store) -> None:
    partitions, commits, size = 6, 30, 3
    md.create_topic("t", partitions=partitions)
    ids: list[int] = []

    def writer(p: int) -> None:
        for i in range(commits):
            md.commit_segment(f"p{p}-{i}", [Entry("t", p, i * size, i * size + size - 1)])
            md.segments("t", p, 0)
            md.partition_offsets("t")
            ids.append(md.next_producer_id())

    assert at_once(partitions, writer) == []
    offsets = md.partition_offsets("t")
    assert {p: o.high_watermark for p, o in offsets.items()} == dict.fromkeys(
        range(partitions), commits * size
    )
    assert len(md.segments("t", 3)) == commits
    assert len(set(ids)) == len(ids) == partitions * commits


def test_concurrent_writers_are_sequenced_not_refused(md: Store) -> None:
    md.create_topic("t")
    bases: list[int] = []

    def writer(n: int) -> None:
        bases.extend(md.commit_segment(f"w{n}", [Entry("t", 0, 0, 9)]))

    assert at_once(4, writer) == []
    assert sorted(bases) == [0, 10, 20, 30]
    rows = md.segments("t", 0)
    # The threads append their bases in whatever order they finish; the log orders by offset.
    assert [(r.base_offset, r.last_offset) for r in rows] == [(i, i + 9) for i in sorted(bases)]
    assert sorted(r.object_key for r in rows) == ["w0", "w1", "w2", "w3"]


def test_one_of_concurrent_creators_wins(open_store: OpenStore) -> None:
    stores = [open_store() for _ in range(4)]
    created = at_once(4, lambda n: stores[n].create_topic("t", partitions=n + 1))
    assert len(created) == 3 and all(isinstance(e, TopicExistsError) for e in created), created
    assert len(stores[0].partition_offsets("t")) == stores[0].get_topic("t").partitions  # type: ignore[union-attr]
    stored = at_once(4, lambda n: stores[n].put_catalog("S", "stream", f"CREATE STREAM S{n} ()"))
    assert len(stored) == 3 and all("already exists" in str(e) for e in stored), stored


def test_writers_on_separate_stores_get_dense_offsets(open_store: OpenStore) -> None:
    """Writers with their own store (as separate processes have) commit to one partition at
    once, all proposing offset 0: the store sequences them, so every commit lands exactly once,
    first time, and offsets stay dense."""
    writers, commits, size = 4, 25, 3
    open_store().create_topic("t", partitions=2)
    stores = [open_store() for _ in range(writers)]

    def writer(n: int) -> None:
        store = stores[n]
        for i in range(commits):
            entries = [Entry("t", 1, 0, 0), Entry("t", 0, 0, size - 1)]
            store.commit_segment(f"w{n}-{i}", entries)

    assert at_once(writers, writer) == []
    rows = stores[0].segments("t", 0)
    assert [(r.base_offset, r.last_offset) for r in rows] == [
        (i * size, i * size + size - 1) for i in range(writers * commits)
    ]
    assert len({r.object_key for r in rows}) == writers * commits
    assert [r.base_offset for r in stores[0].segments("t", 1)] == list(range(writers * commits))
    assert stores[0].partition_offsets("t") == {
        0: PartitionOffsets(0, writers * commits * size),
        1: PartitionOffsets(0, writers * commits),
    }


def test_unwritable_location_is_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="metadata store"):
        SQLiteMetadata(blocker / "sub" / "metadata.sqlite3")
    with pytest.raises(StorageError):
        SQLiteMetadata(tmp_path)  # a directory, not a database file


def test_database_errors_surface_as_storage_error(md: Store) -> None:
    run_sql(md, "DROP TABLE catalog")
    with pytest.raises(StorageError, match=r"no such table|does not exist") as info:
        md.get_catalog("x")
    assert "\n" not in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.Error | psycopg.Error)


def test_newer_schema_is_refused(open_store: OpenStore) -> None:
    md = open_store()
    run_sql(md, "INSERT INTO schema_migrations VALUES (?, 'future', 0)", [(LATEST_VERSION + 1,)])
    md.close()
    with pytest.raises(StorageError, match=f"schema version {LATEST_VERSION + 1}, newer"):
        open_store()


def test_an_older_store_is_migrated_once(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = open_store()
    md.create_topic("kept")
    md.close()
    newer = Migration(LATEST_VERSION + 1, "a later change", ("CREATE TABLE later (x INTEGER)",))
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, newer))
    monkeypatch.setattr(migrations, "LATEST_VERSION", newer.version)
    upgraded = open_store()
    assert upgraded.schema_version == newer.version
    assert [t.name for t in upgraded.list_topics()] == ["kept"]
    run_sql(upgraded, "INSERT INTO later (x) VALUES (1)")  # the new table exists
    upgraded.close()
    again = open_store()  # nothing left to apply: CREATE TABLE later would fail if run twice
    assert again.schema_version == newer.version


def test_stores_opened_at_once_apply_each_migration_once(open_store: OpenStore) -> None:
    stores: list[Store] = []
    assert at_once(4, lambda _: stores.append(open_store())) == []
    assert len(stores) == 4
    assert {store.schema_version for store in stores} == {LATEST_VERSION}
    assert stores[0].next_producer_id() == 1  # the counter was created once, not reset
    assert stores[3].next_producer_id() == 2


def test_processes_opening_a_new_sqlite_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself, and SQLite refuses a connection that
    would deadlock at once ("database is locked", no busy wait): it is tried again (before,
    about 1 in 100 of these rounds failed)."""
    for round_ in range(60):
        stores: list[SQLiteMetadata] = []
        path = tmp_path / f"m{round_}.sqlite3"
        errors = at_once(4, lambda _, s=stores, p=path: s.append(SQLiteMetadata(p)))
        assert errors == []
        assert {store.schema_version for store in stores} == {LATEST_VERSION}
        for store in stores:
            store.close()


# -- open_metadata ----------------------------------------------------------------------------


def test_open_metadata(tmp_path: Path) -> None:
    md = open_metadata(Settings(data_dir=tmp_path / "data"))
    assert isinstance(md, SQLiteMetadata)
    assert md.path == tmp_path / "data" / "metadata.sqlite3"
    md.close()
    other = tmp_path / "elsewhere" / "m.db"
    md = open_metadata(Settings(data_dir=tmp_path, metadata=f"sqlite:///{other}"))
    assert isinstance(md, SQLiteMetadata) and md.path == other and other.exists()
    md.close()
    with pytest.raises(ConfigError, match="not supported: use sqlite:///path or postgresql://"):
        open_metadata(Settings(metadata="mysql://x"))
    with pytest.raises(StorageError, match="127.0.0.1:1/sh: cannot open") as info:
        open_metadata(Settings(metadata="postgresql://sh:secret@127.0.0.1:1/sh"))
    assert "secret" not in str(info.value) and "\n" not in str(info.value)


def test_open_metadata_postgresql(postgres_url: str) -> None:
    md = open_metadata(Settings(metadata=postgres_url))
    assert isinstance(md, PostgresMetadata) and md.schema_version == LATEST_VERSION
    md.create_topic("t")
    md.close()
    again = open_metadata(Settings(metadata=postgres_url.replace("postgresql:", "postgres:", 1)))
    assert isinstance(again, PostgresMetadata)
    assert [t.name for t in again.list_topics()] == ["t"]  # the same store
    again.close()


def test_postgresql_connections_dropped_by_the_server_are_replaced(postgres_url: str) -> None:
    md = PostgresMetadata(postgres_url)
    try:
        md.create_topic("t")
        at_once(4, lambda _: md.partition_offsets("t"))  # several pooled connections
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        # at least the pool's one open connection (more when the four calls overlapped)
        assert len(dropped) >= 1 and all(ok for (ok,) in dropped)
        errors = at_once(4, lambda n: md.commit_segment(f"o{n}", [Entry("t", 0, 0, 0)]))
        assert errors == []
        assert [r.base_offset for r in md.segments("t", 0)] == [0, 1, 2, 3]
    finally:
        md.close()


def test_postgresql_missing_database_is_one_line(postgres_database: str) -> None:
    url = postgres_database.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(StorageError, match='database "no_such_database_here" does not exist'):
        PostgresMetadata(url)


# -- restoring the index (fsck --rebuild-metadata) ---------------------------------------------


def _row(key: str, partition: int, base: int, last: int, max_ts: int) -> SegmentRow:
    return SegmentRow(
        key, "t", partition, base, last, 8, 100, max_ts - 5, max_ts, last - base + 1, 7
    )


def test_restore_segments_sets_offsets_from_the_rows(md: Store) -> None:
    md.create_topic("t", partitions=3)
    rows = [
        _row("b", 0, 10, 19, 300),  # a gap at 0-9 (an object lost): the log starts at 10
        _row("a", 0, 20, 29, 200),
        _row("a", 1, 0, 4, 100),
    ]
    md.restore_segments(rows, producer_id_floor=5000)
    assert md.partition_offsets("t") == {
        0: PartitionOffsets(10, 30),
        1: PartitionOffsets(0, 5),
        2: PartitionOffsets(0, 0),
    }
    assert md.segments("t", 0) == [rows[0], rows[1]]
    found = md.segment_for_timestamp("t", 0, 250)  # the running maximum, carried over the rows
    assert found == rows[0]
    assert md.next_producer_id() == 5001
    assert md.commit_segment("c", [Entry("t", 0, 0, 1)]) == [30]  # after the restored rows
    assert md.partition_offset("t", 0) == PartitionOffsets(10, 32)


def test_restore_segments_refuses_overlaps_and_unknown_partitions(md: Store) -> None:
    md.create_topic("t")
    with pytest.raises(LogError, match="index rows of t/0 overlap at offset 5 \\('b'\\)"):
        md.restore_segments([_row("a", 0, 0, 9, 1), _row("b", 0, 5, 14, 2)])
    with pytest.raises(UnknownPartitionError):
        md.restore_segments([_row("a", 1, 0, 9, 1)])
    assert md.segments("t", 0) == []  # all or nothing
    assert md.partition_offset("t", 0) == PartitionOffsets(0, 0)


# -- retention --------------------------------------------------------------------------------


def _three_objects(md: Store) -> None:
    """t/0 offsets 0-9 in objects a, b, c (0-2, 3-5, 6-9); t/1 offsets 0-4 in objects a and d."""
    md.create_topic("t", partitions=2)
    md.commit_segment("a", [Entry("t", 0, 0, 2, length=300, max_timestamp=10),
                            Entry("t", 1, 0, 1, length=100, max_timestamp=10)])  # fmt: skip
    md.commit_segment("b", [Entry("t", 0, 3, 5, length=300, max_timestamp=20)])
    md.commit_segment("c", [Entry("t", 0, 6, 9, length=400, max_timestamp=30)])
    md.commit_segment("d", [Entry("t", 1, 2, 4, length=300, max_timestamp=40)])


def test_delete_records_advances_log_start_and_queues_unreferenced_objects(md: Store) -> None:
    _three_objects(md)
    assert md.delete_records("t", {0: 4}) == {0: 4}
    assert md.partition_offset("t", 0) == PartitionOffsets(4, 10)
    assert [r.object_key for r in md.segments("t", 0)] == ["b", "c"]  # b holds offset 4
    assert md.due_objects(now_ms() + 1) == []  # a is still named by t/1
    assert md.delete_records("t", {0: 2, 1: -1}) == {0: 4, 1: 5}  # never backwards; -1: the HW
    assert md.segments("t", 1) == []
    assert md.due_objects(now_ms() + 1) == ["a", "d"]
    assert md.due_objects(now_ms() - 60_000) == []  # not yet past a minute's grace
    md.forget_objects(["a"])
    assert md.due_objects(now_ms() + 1) == ["d"]


def test_delete_records_refuses_bad_offsets_all_or_nothing(md: Store) -> None:
    _three_objects(md)
    with pytest.raises(OffsetOutOfRangeError, match="high watermark 5"):
        md.delete_records("t", {0: 3, 1: 6})
    with pytest.raises(OffsetOutOfRangeError, match="before offset -2"):
        md.delete_records("t", {0: -2})
    with pytest.raises(UnknownPartitionError):
        md.delete_records("t", {0: 3, 2: 0})
    with pytest.raises(UnknownTopicError):
        md.delete_records("nope", {0: 0})
    assert md.partition_offsets("t") == {0: PartitionOffsets(0, 10), 1: PartitionOffsets(0, 5)}
    assert len(md.segments("t", 0)) == 3


def test_oldest_row_within_bytes_keeps_at_least_the_limit(md: Store) -> None:
    _three_objects(md)  # t/0 rows of 300, 300 and 400 bytes at offsets 0, 3 and 6
    assert md.oldest_row_within_bytes("t", 0, 1000) == 0
    assert md.oldest_row_within_bytes("t", 0, 701) == 0  # without row 0 only 700 would be left
    assert md.oldest_row_within_bytes("t", 0, 700) == 3
    assert md.oldest_row_within_bytes("t", 0, 400) == 6
    assert md.oldest_row_within_bytes("t", 0, 0) is None  # keeps nothing
    assert md.oldest_row_within_bytes("t", 5, 10) is None


def test_a_requeued_object_still_named_by_a_row_is_not_due(md: Store) -> None:
    _three_objects(md)
    md.delete_records("t", {0: 10})
    assert md.due_objects(now_ms() + 1) == ["b", "c"]
    # A rebuild from footers (fsck) names b again: it must not be deleted.
    run_sql(md, "INSERT INTO segments SELECT 'x', partition_id, 100, 101, object_key,"
                " byte_position, byte_length, min_timestamp, max_timestamp,"
                " running_max_timestamp, record_count, crc FROM segments WHERE object_key = 'a'")  # fmt: skip
    run_sql(md, "UPDATE segments SET object_key = 'b' WHERE topic = 'x'")
    assert md.due_objects(now_ms() + 1) == ["c"]


def test_update_topic_config_sets_and_removes_keys(md: Store) -> None:
    md.create_topic("t", config={"retention.ms": "1000", "segment.ms": "5"})
    info = md.update_topic_config("t", {"retention.ms": None, "retention.bytes": "10"})
    assert info.config == {"retention.bytes": "10", "segment.ms": "5"}
    assert md.get_topic("t").config == info.config  # type: ignore[union-attr]
    with pytest.raises(UnknownTopicError):
        md.update_topic_config("nope", {"a": "b"})
    with pytest.raises(LogError, match="strings to strings"):
        md.update_topic_config("t", {"a": 1})  # type: ignore[dict-item]
    assert md.get_topic("t").config == info.config  # type: ignore[union-attr]
