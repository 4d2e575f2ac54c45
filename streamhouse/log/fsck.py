"""Check a data directory's segment objects against its metadata, and repair what can be.

:func:`check` reads every segment object once and reports, as :class:`Finding`\\ s:

- ``damaged``: the header, trailer or footer checksum fails, or a run's CRC-32C does not match
  its footer entry (only those runs are named);
- ``orphan``: no index row names the object (e.g. a flush whose put landed but whose commit
  or clean-up failed). One younger than ``orphan_min_age_s`` whose runs all start at or past
  their partitions' high watermarks may be a flush on its way to its commit: it is counted
  in :attr:`FsckReport.young`, not reported; one that retention queued for deletion after
  its grace period is counted in :attr:`FsckReport.retiring`, not reported;
- ``missing``: index rows name an object the store does not hold;
- ``mismatch``: an index row and the object's footer disagree (offsets, bytes, checksum);
- ``index``: a partition's index rows leave a gap or end short of its high watermark.

:func:`delete_orphans` removes the orphans :func:`check` found, never an object the metadata
names or one younger than the age bound. :func:`rebuild_metadata` writes a fresh metadata
store from the objects' footers (topics, partitions, the segment index, offsets) and the
aborted transactions from their batch headers (so read_committed readers still leave aborted
records out; transactions left open are aborted), keeping the old file (SQLite) or tables
(PostgreSQL) aside, and says what the objects cannot give back.

Objects are read whole with one request each, by ``store.read_parallelism`` threads unless told
otherwise (reads and CRC-32C release the GIL; S3 reads wait on round trips), and checksummed
in place, without copies. The index is read by one more thread meanwhile.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import operator
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import crc32c

from streamhouse.config import Settings
from streamhouse.errors import (
    CorruptSegmentError,
    ObjectNotFoundError,
    StorageError,
    StreamHouseError,
)
from streamhouse.log.compaction_notes import replaced_runs
from streamhouse.log.metadata import Metadata, SegmentRow, sqlite_path
from streamhouse.log.objectstore import ObjectInfo, ObjectStore
from streamhouse.log.records import split_batches
from streamhouse.log.records.control import ABORT, marker_type
from streamhouse.log.records.header import ATTR_CONTROL, ATTR_TRANSACTIONAL
from streamhouse.log.segment import (
    SEGMENT_PREFIX,
    SegmentEntry,
    read_footer,
    read_footer_from_store,
)
from streamhouse.log.sequence_notes import NOTE_PREFIX, Placement, note_key, read_notes, write_note

log = logging.getLogger(__name__)

__all__ = [
    "Finding",
    "FindingKind",
    "FsckReport",
    "OrphanDeletion",
    "RebuildReport",
    "check",
    "delete_orphans",
    "index_row",
    "rebuild_metadata",
    "write_missing_notes",
]

CHUNK_OBJECTS = 16
"""Objects one thread reads and checks per task: fewer hand-offs than one object per task."""

Progress = Callable[[int], None]
"""Called with how much was done: bytes (:func:`check`) or objects (:func:`rebuild_metadata`)."""


class FindingKind(StrEnum):
    DAMAGED = "damaged"
    ORPHAN = "orphan"
    MISSING = "missing"
    MISMATCH = "mismatch"
    INDEX = "index"


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Offsets ``first..last`` of one partition."""

    topic: str
    partition: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition} offsets {self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: its kind, the object (if one is concerned), the offsets it touches, why."""

    kind: FindingKind
    object_key: str | None
    ranges: tuple[OffsetRange, ...]
    detail: str

    def __str__(self) -> str:
        where = ", ".join(str(r) for r in self.ranges) or "no offsets known"
        key = f" {self.object_key}" if self.object_key else ""
        return f"{self.kind}{key} ({where}): {self.detail}"


@dataclass(slots=True)
class FsckReport:
    """What :func:`check` looked at and found."""

    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    topics: int = 0
    """Topics the metadata holds (none, with orphans: the metadata was probably lost)."""
    findings: list[Finding] = field(default_factory=list)
    young: list[str] = field(default_factory=list)
    """Unindexed objects younger than the age bound whose runs start at or past their
    partitions' high watermarks: possibly flushes on their way to their commit."""
    retiring: list[str] = field(default_factory=list)
    """Objects retention queued for deletion once their grace period has passed."""
    unnoted: list[tuple[str, list[SegmentEntry], list[int]]] = field(default_factory=list)
    """Objects indexed at other offsets than written that have no sequence note: (key, footer
    entries, the base offset the index gives each); see :func:`write_missing_notes`."""

    @property
    def sound(self) -> bool:
        return not self.findings

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind is kind]


def _ranges(items: Iterable[SegmentEntry | SegmentRow]) -> tuple[OffsetRange, ...]:
    return tuple(
        OffsetRange(i.topic, i.partition, i.base_offset, i.last_offset)
        for i in sorted(items, key=lambda i: (i.topic, i.partition, i.base_offset))
    )


_Partition = tuple[str, int]


def _index(
    metadata: Metadata,
) -> tuple[dict[str, list[SegmentRow]], dict[_Partition, int], list[Finding]]:
    """Every index row by object key, every partition's high watermark, and the gaps between
    a partition's rows."""
    by_key: dict[str, list[SegmentRow]] = {}
    high_watermarks: dict[_Partition, int] = {}
    findings = []
    for topic in metadata.list_topics():
        for partition, offsets in metadata.partition_offsets(topic.name).items():
            high_watermarks[(topic.name, partition)] = offsets.high_watermark
            expected = offsets.log_start_offset
            # Rows up to the high watermark read: later ones were committed meanwhile, and
            # their objects are judged as flushes on their way to their commit.
            for row in metadata.segments(
                topic.name, partition, offsets.log_start_offset, offsets.high_watermark
            ):
                by_key.setdefault(row.object_key, []).append(row)
                if row.base_offset > expected:
                    findings.append(
                        Finding(
                            FindingKind.INDEX,
                            None,
                            (OffsetRange(topic.name, partition, expected, row.base_offset - 1),),
                            "no index row covers these offsets",
                        )
                    )
                expected = max(expected, row.last_offset + 1)
            if expected != offsets.high_watermark:
                findings.append(
                    Finding(
                        FindingKind.INDEX,
                        None,
                        (OffsetRange(topic.name, partition, expected, offsets.high_watermark - 1),),
                        f"index rows end at offset {expected - 1} but the high watermark is"
                        f" {offsets.high_watermark}",
                    )
                )
    return by_key, high_watermarks, findings


_COMPARED = (
    "length",
    "min_timestamp",
    "max_timestamp",
    "record_count",
    "crc",
)
_FIELDS = operator.attrgetter(
    "topic", "partition", "base_offset", "last_offset", "position", *_COMPARED
)
"""The fields an index row and a footer entry share, as one tuple (in C, for the fast path)."""


def _compare(key: str, rows: list[SegmentRow], entries: list[SegmentEntry]) -> list[Finding]:
    """Findings where the index rows of ``key`` and its footer entries disagree.

    A row and an entry are matched by partition and base offset, or else by byte position and
    checksum: the metadata store sequences offsets at commit, so a row may sit at other offsets
    than its footer entry says the batches were written with, but it must span as many.
    Footer entries no row names are reported only beside rows that do not match either."""
    if sorted(map(_FIELDS, rows)) == sorted(map(_FIELDS, entries)):
        return []  # the usual case: written at the offsets the store assigned
    footer = {(e.topic, e.partition, e.base_offset): e for e in entries}
    by_position = {(e.topic, e.partition, e.position, e.crc): e for e in entries}
    findings = []
    for row in rows:
        entry = footer.pop((row.topic, row.partition, row.base_offset), None)
        if entry is None:
            entry = by_position.get((row.topic, row.partition, row.position, row.crc))
            if entry is not None:
                footer.pop((entry.topic, entry.partition, entry.base_offset), None)
        if entry is None:
            detail = "the footer has no entry for this index row"
        else:
            differ = [
                f"{name} {getattr(row, name)} vs {getattr(entry, name)}"
                for name in _COMPARED
                if getattr(row, name) != getattr(entry, name)
            ]
            span, written = row.last_offset - row.base_offset, entry.last_offset - entry.base_offset
            if span != written:
                differ.insert(0, f"{span + 1} offsets vs {written + 1}")
            if not differ:
                continue
            detail = "index row vs footer: " + ", ".join(differ)
        findings.append(Finding(FindingKind.MISMATCH, key, _ranges([row]), detail))
    # Entries left over beside rows that all match are runs retention or compaction took out
    # of the index (the object stays while its other partitions' runs are named): no finding.
    if footer and findings:
        findings.append(
            Finding(
                FindingKind.MISMATCH,
                key,
                _ranges(footer.values()),
                "footer entries that no index row names",
            )
        )
    return findings


def _corrupt_reason(exc: CorruptSegmentError, key: str) -> str:
    return str(exc).removeprefix(f"segment object {key!r} is corrupt: ")


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.size(key)
    except ObjectNotFoundError:
        return False
    return True


@dataclass(slots=True)
class _Object:
    """One object as read: its footer entries (empty if the footer is damaged) and damage."""

    info: ObjectInfo
    entries: list[SegmentEntry]
    damage: str | None = None  # why the footer is unreadable
    bad_runs: list[SegmentEntry] = field(default_factory=list)


def _read(store: ObjectStore, info: ObjectInfo) -> _Object | None:
    """Read the object whole and check its header, trailer, footer and every run's CRC-32C
    on a view of it (no copies); ``None`` if it was deleted since it was listed."""
    try:
        data = store.get(info.key)
    except ObjectNotFoundError:  # e.g. deleted with its topic
        return None
    info = ObjectInfo(info.key, len(data), info.modified)
    try:
        entries = read_footer(data, info.key)
    except CorruptSegmentError as exc:
        return _Object(info, [], _corrupt_reason(exc, info.key))
    view = memoryview(data)
    bad = [e for e in entries if crc32c.crc32c(view[e.position : e.position + e.length]) != e.crc]
    return _Object(info, entries, None, bad)


def _judge(
    read: _Object, rows: list[SegmentRow] | None, in_flight: bool
) -> tuple[list[Finding], bool]:
    """Findings of an object read against its index rows (``None``: unindexed), and whether
    it is an unindexed object that may be a flush in progress (``in_flight`` says whether
    its age and offsets allow that)."""
    key, entries = read.info.key, read.entries
    findings = []
    if read.damage is not None:
        findings.append(Finding(FindingKind.DAMAGED, key, _ranges(rows or ()), read.damage))
    if read.bad_runs:
        findings.append(
            Finding(FindingKind.DAMAGED, key, _ranges(read.bad_runs), "run checksum mismatch")
        )
    if rows is None:
        if entries and in_flight:
            return findings, True
        findings.append(
            Finding(
                FindingKind.ORPHAN,
                key,
                _ranges(entries),
                f"no index row names this object (written {time.time() - read.info.modified:.0f} s ago)",
            )
        )
    elif entries:
        findings.extend(_compare(key, rows, entries))
    return findings, False


def _sequenced_elsewhere(
    rows: list[SegmentRow], entries: list[SegmentEntry]
) -> tuple[list[SegmentEntry], list[int]] | None:
    """The footer entries matched to index rows (by partition, byte position and checksum)
    and the base offset of each row, if any row sits at other offsets than its entry."""
    by_position = {(e.topic, e.partition, e.position, e.crc): e for e in entries}
    matched = [
        (entry, row.base_offset)
        for row in rows
        if (entry := by_position.get((row.topic, row.partition, row.position, row.crc)))
    ]
    if all(entry.base_offset == base for entry, base in matched):
        return None
    return [entry for entry, _ in matched], [base for _, base in matched]


def write_missing_notes(store: ObjectStore, report: FsckReport) -> list[str]:
    """Write the sequence notes :func:`check` found missing (while the metadata still knows
    where the store put those runs, e.g. a writer died between its commit and its note);
    the keys of the objects noted."""
    return [key for key, entries, bases in report.unnoted if write_note(store, key, entries, bases)]


ALL_QUEUED = 1 << 62
"""A time after every object queued for deletion became unreferenced."""


def check(
    store: ObjectStore,
    metadata: Metadata,
    *,
    orphan_min_age_s: float,
    progress: Progress | None = None,
    on_start: Progress | None = None,
    threads: int | None = None,
) -> FsckReport:
    """Check every segment object in ``store`` against ``metadata``.

    ``on_start(total_bytes)`` is called once the objects are listed; ``progress(n)`` after
    each chunk of objects with their size. The objects are listed before the index is read
    (while the objects are), so an object committed meanwhile is not taken for an orphan,
    and one still on its way to its commit holds offsets at or past the high watermarks read.
    """
    started = time.perf_counter()
    noted = set(store.list(NOTE_PREFIX))
    listed = store.list_info(SEGMENT_PREFIX)
    if on_start is not None:
        on_start(sum(info.size for info in listed))

    def read_chunk(chunk: list[ObjectInfo]) -> list[_Object]:
        return [read for info in chunk if (read := _read(store, info)) is not None]

    chunks = [listed[i : i + CHUNK_OBJECTS] for i in range(0, len(listed), CHUNK_OBJECTS)]
    with ThreadPoolExecutor(
        max(1, threads or store.read_parallelism) + 1, thread_name_prefix="fsck"
    ) as pool:
        index = pool.submit(_index, metadata)
        reads = pool.map(read_chunk, chunks)
        by_key, high_watermarks, findings = index.result()
        retiring = set(metadata.due_objects(ALL_QUEUED))  # read after the index rows
        report = FsckReport(findings=findings, topics=len({t for t, _ in high_watermarks}))
        present = {info.key for info in listed}
        for key in sorted(set(by_key) - present):
            if _exists(store, key):  # put and committed since the listing
                continue
            report.findings.append(
                Finding(
                    FindingKind.MISSING,
                    key,
                    _ranges(by_key[key]),
                    "the index names this object but the object store does not hold it",
                )
            )
        now = time.time()
        for chunk in reads:
            for read in chunk:
                report.objects += 1
                report.bytes += read.info.size
                if read.info.key in retiring and read.info.key not in by_key:
                    report.retiring.append(read.info.key)
                    continue
                in_flight = now - read.info.modified < orphan_min_age_s and all(
                    e.base_offset >= high_watermarks.get((e.topic, e.partition), e.base_offset + 1)
                    for e in read.entries
                )
                rows = by_key.get(read.info.key)
                found, young = _judge(read, rows, in_flight)
                report.findings.extend(found)
                if rows and note_key(read.info.key) not in noted:
                    placed = _sequenced_elsewhere(rows, read.entries)
                    if placed:
                        report.unnoted.append((read.info.key, *placed))
                if young:
                    report.young.append(read.info.key)
            if progress is not None:
                progress(sum(read.info.size for read in chunk))
    report.seconds = time.perf_counter() - started
    return report


@dataclass(slots=True)
class OrphanDeletion:
    """What :func:`delete_orphans` did with each orphan: deleted, or kept and why."""

    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def delete_orphans(
    store: ObjectStore, metadata: Metadata, report: FsckReport, *, orphan_min_age_s: float
) -> OrphanDeletion:
    """Delete the orphans ``report`` found that are at least ``orphan_min_age_s`` old.

    Each is looked up in the index once more, partition by partition of its footer, right
    before it goes: an object any index row names is kept. ``StorageError`` (and nothing
    deleted) if the metadata holds no topic at all: then every object looks like an orphan
    because the metadata was lost, and the objects are the only copy of the log.
    """
    if report.of_kind(FindingKind.ORPHAN) and not metadata.list_topics():
        raise StorageError(
            "the metadata holds no topics, so every object looks like an orphan: nothing"
            " deleted; if the metadata was lost, run `streamhouse fsck --rebuild-metadata`"
        )
    now = time.time()
    ages = {info.key: now - info.modified for info in store.list_info(SEGMENT_PREFIX)}
    done = OrphanDeletion()
    for finding in report.of_kind(FindingKind.ORPHAN):
        key = finding.object_key
        assert key is not None
        if key not in ages:
            continue
        if ages[key] < orphan_min_age_s:
            done.kept[key] = f"younger than {orphan_min_age_s:g} s"
        elif any(
            row.object_key == key
            for r in finding.ranges
            for row in metadata.segments(r.topic, r.partition, r.first, r.last + 1)
        ):
            done.kept[key] = "indexed since the check"
        else:
            store.delete(key)
            log.info("deleted orphan %s", key)
            done.deleted.append(key)
    return done


# -- rebuilding the metadata from the footers ----------------------------------------------------


@dataclass(slots=True)
class RebuildReport:
    """What :func:`rebuild_metadata` restored, what it left out, and what it cannot restore."""

    objects: int = 0
    rows: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    """Topic name -> partition count (one past the highest partition with records)."""
    offsets: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """(topic, partition) -> (log start offset, high watermark)."""
    unreadable: list[str] = field(default_factory=list)
    """Objects whose footer is damaged: their records are not indexed."""
    overlapping: list[str] = field(default_factory=list)
    """Objects left out because a newer object holds the same runs at the same offsets."""
    moved: list[str] = field(default_factory=list)
    """Objects with a run indexed at other offsets than written (another writer's run was
    written with the same ones)."""
    gaps: list[OffsetRange] = field(default_factory=list)
    uncertain: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) -> the offset from which the rebuilt offsets may differ from those
    the store gave (runs written at the same offsets, at least one of them without a sequence
    note saying where the store put it)."""
    notes: int = 0
    """Sequence notes read (runs placed at the offsets the store gave them)."""
    kept_aside: list[Path] = field(default_factory=list)
    """SQLite: the old metadata files, renamed."""
    kept_schema: str | None = None
    """PostgreSQL: the schema the old metadata tables were moved to (``None``: there were none)."""
    producer_id_floor: int = 0
    iceberg_tables: dict[str, str] = field(default_factory=dict)
    """Iceberg tables registered in the catalog again, and their metadata files."""

    aborted_transactions: int = 0
    """Aborted transactions found in the log (ABORT markers), and transactions left open
    (no marker after their records: their coordinator's state is gone, so they are aborted)."""
    open_transactions: int = 0
    """Of those, the ones left open."""

    def not_rebuilt(self) -> list[str]:
        """What the footers do not hold, one sentence each."""
        return [
            "consumer group offsets: groups start again from their auto.offset.reset position",
            "producer state: idempotent producers get new producer ids"
            f" (from {self.producer_id_floor + 1} on, never one handed out before)",
            "topic configs (back to defaults) and partitions that never got a record"
            " (each topic has as many partitions as its highest partition with records + 1)",
            "the SQL catalog (CREATE STREAM/TABLE/VIEW statements): create them again",
            "SASL users: add them again (streamhouse user add NAME --password-stdin)",
            "transactional ids: their producers start afresh (InitProducerId gives new"
            " producer ids); transactions open then are aborted"
            + (f" ({self.open_transactions} found)" if self.open_transactions else ""),
        ]


def _choose(
    footers: Sequence[tuple[str, list[SegmentEntry]]],
    report: RebuildReport,
    notes: Mapping[str, Placement] | None = None,
) -> list[SegmentRow]:
    """Index rows of every object, at the offsets the metadata store gave them where the
    objects tell, with offsets dense where the footers allow.

    A writer never rewrites an object, but several writers may write runs of one partition
    with the same (guessed) offsets, which the metadata store then sequenced at commit; the
    footers hold the written offsets, and a sequence note (``notes``: object key -> written
    to assigned base offset per run) the assigned ones of a run whose guess was wrong. So an
    object whose every run is a byte-identical copy (offsets and checksum) of a newer
    object's is left out whole, and the runs of each partition are taken by assigned offset
    (the written one where the object has no note; then object key): a run keeps those
    offsets unless an earlier run holds some of them, and then follows that run — offsets
    from the first run it collided with on may then differ from those acknowledged
    (:attr:`RebuildReport.uncertain`).
    """
    notes = notes or {}
    seen: set[tuple[str, int, int, int, int]] = set()
    kept: list[tuple[int, str, SegmentEntry]] = []
    for key, entries in sorted(footers, key=lambda f: f[0], reverse=True):
        runs = {(e.topic, e.partition, e.base_offset, e.last_offset, e.crc) for e in entries}
        if runs and runs <= seen:
            report.overlapping.append(key)
            continue
        seen |= runs
        placed = notes.get(key, {})
        kept.extend(
            (placed.get((e.topic, e.partition, e.base_offset), e.base_offset), key, e)
            for e in entries
        )
    kept.sort(key=lambda run: (run[2].topic, run[2].partition, run[0], run[1]))
    rows = []
    moved: set[str] = set()
    bounds: dict[tuple[str, int], tuple[int, int]] = {}  # (log start, high watermark)
    starts: dict[tuple[str, int], list[int]] = {}  # base offsets given so far, ascending
    for placed, key, e in kept:
        partition = (e.topic, e.partition)
        start, next_offset = bounds.get(partition, (placed, placed))
        if placed > next_offset:
            report.gaps.append(OffsetRange(e.topic, e.partition, next_offset, placed - 1))
        base = max(placed, next_offset)
        if base != placed:
            moved.add(key)
            given = starts[partition]
            first = given[bisect.bisect_right(given, placed) - 1]  # the run holding `placed`
            report.uncertain[partition] = min(report.uncertain.get(partition, first), first)
        last = base + e.last_offset - e.base_offset
        bounds[partition] = (start, last + 1)
        starts.setdefault(partition, []).append(base)
        rows.append(index_row(key, e, base))
    for (topic, partition), offsets in bounds.items():
        report.offsets[(topic, partition)] = offsets
        report.topics[topic] = max(report.topics.get(topic, 0), partition + 1)
    report.overlapping.sort()
    report.moved = sorted(moved)
    return rows


def index_row(object_key: str, entry: SegmentEntry, base_offset: int | None = None) -> SegmentRow:
    """The index row naming the run ``entry`` of the object ``object_key``, at its written
    offsets or from ``base_offset``."""
    base = entry.base_offset if base_offset is None else base_offset
    return SegmentRow(
        object_key,
        entry.topic,
        entry.partition,
        base,
        base + entry.last_offset - entry.base_offset,
        entry.position,
        entry.length,
        entry.min_timestamp,
        entry.max_timestamp,
        entry.record_count,
        entry.crc,
    )


def _read_footer(store: ObjectStore, key: str) -> list[SegmentEntry] | None:
    try:
        return read_footer_from_store(store, key)
    except (CorruptSegmentError, ObjectNotFoundError):
        return None


# SQLite's unix VFS holds a shared lock on this byte of the -shm file for as long as a
# connection has the database open in WAL mode (UNIX_SHM_DMS in os_unix.c).
_SHM_DMS_BYTE = 128


def _in_use(path: Path) -> bool:
    """Whether another process has the SQLite file ``path`` open (in WAL mode)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StorageError(f"cannot open {path}-shm: {exc}") from exc
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS_BYTE)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, _SHM_DMS_BYTE)
        return False
    finally:
        os.close(fd)


def rebuild_metadata(
    settings: Settings,
    store: ObjectStore,
    *,
    progress: Progress | None = None,
    on_start: Progress | None = None,
    threads: int | None = None,
) -> RebuildReport:
    """Write a fresh metadata store from the footers of every segment object in ``store``.

    SQLite: the file ``settings`` names (and its ``-wal``/``-shm`` files) is renamed to
    ``<name>.replaced-<UTC time>`` first, never deleted. PostgreSQL: the store is built in a
    schema of its own and swapped in, the old tables moved to ``<schema>_replaced_<UTC time>``
    (:mod:`~streamhouse.log.metadata.postgres_rebuild`). Every process using the store must be
    stopped. Objects with a damaged footer, and objects that claim offsets a newer object holds
    (failed flushes written again), are reported and left unindexed. The objects indexed are
    then read whole once more for their batch headers: the aborted transactions (and those
    left open, aborted) are restored, so that read_committed readers still leave them out.
    ``on_start(objects)`` is called once the objects are listed, ``progress(1)`` per footer.
    """
    path = sqlite_path(settings)
    if path is None:
        from streamhouse.log.metadata.postgres_rebuild import refuse_if_in_use

        refuse_if_in_use(str(settings.metadata), agent_ttl_s=settings.agent_ttl_s)
    elif _in_use(path):
        raise StorageError(
            f"metadata store {path} is open in another process: stop every process using"
            " this data directory (e.g. `streamhouse serve`) before rebuilding its metadata"
        )
    report = RebuildReport()
    listed = store.list_info(SEGMENT_PREFIX)
    if on_start is not None:
        on_start(len(listed))
    footers = []
    with ThreadPoolExecutor(
        max(1, threads or store.read_parallelism), thread_name_prefix="rebuild"
    ) as pool:
        for info, entries in zip(
            listed, pool.map(lambda i: _read_footer(store, i.key), listed), strict=True
        ):
            if entries is None:
                report.unreadable.append(info.key)
            else:
                footers.append((info.key, entries))
            if progress is not None:
                progress(1)
    report.objects = len(footers)
    # Runs that compacted objects replaced are indexed once, in the compacted object.
    replaced = replaced_runs(store, {key for key, _ in footers})
    footers = [
        (key, kept)
        for key, entries in footers
        if (kept := [e for e in entries if (key, e.topic, e.partition) not in replaced])
    ]
    notes = read_notes(store)
    report.notes = len(notes)
    rows = _choose(footers, report, notes)
    report.rows = len(rows)
    report.producer_id_floor = time.time_ns() // 1_000_000

    aborted = _aborted_transactions(store, rows, report, threads or store.read_parallelism)

    def fill(metadata: Metadata) -> None:
        for topic, partitions in sorted(report.topics.items()):
            metadata.create_topic(topic, partitions)
        metadata.restore_segments(rows, producer_id_floor=report.producer_id_floor)
        metadata.transactions.restore_aborted(aborted)

    if path is None:
        from streamhouse.log.metadata.postgres_rebuild import rebuild_postgres_store

        report.kept_schema = rebuild_postgres_store(
            str(settings.metadata), fill, agent_ttl_s=settings.agent_ttl_s
        )
    else:
        _replace_sqlite(path, fill, report)
    from streamhouse.iceberg.catalog import restore_tables

    report.iceberg_tables = restore_tables(settings, store)
    log.info("rebuilt the metadata from %d object(s): %d index row(s)", report.objects, report.rows)
    return report


_DATA = -2  # a transactional data batch, among marker types (ABORT 0, COMMIT 1, unknown -1)


def _transactional_batches(
    store: ObjectStore, key: str, rows: Sequence[SegmentRow]
) -> list[tuple[str, int, int, int, int]]:
    """``(topic, partition, offset, producer id, kind)`` of the transactional batches of one
    object's ``rows``: a marker (its type) or a data batch (``_DATA``), at indexed offsets."""
    data = store.get(key)
    found = []
    for row in rows:
        run = memoryview(data)[row.position : row.position + row.length]
        try:
            batches = split_batches(run)
        except StreamHouseError as exc:  # indexed all the same, as its footer describes it
            log.warning("%s: the run of %s/%d is damaged: %s", key, row.topic, row.partition, exc)
            continue
        if not batches:
            continue
        shift = row.base_offset - batches[0][2].base_offset  # indexed minus written
        for start, end, header in batches:
            if not header.attributes & ATTR_TRANSACTIONAL:
                continue
            kind = marker_type(run[start:end]) if header.attributes & ATTR_CONTROL else _DATA
            offset = header.base_offset + shift
            found.append((row.topic, row.partition, offset, header.producer_id, kind))
    return found


def _aborted_transactions(
    store: ObjectStore, rows: Sequence[SegmentRow], report: RebuildReport, threads: int
) -> list[tuple[str, int, int, int, int]]:
    """The aborted transactions of the log, as ``aborted_transactions`` rows (topic,
    partition, last offset, producer id, first offset), read from every batch header: a
    producer's transactional records up to its ABORT marker, and those no marker follows
    (left open; the last offset is then that of its last batch there). Objects are read in
    ``threads``; only headers are looked at."""
    by_object: dict[str, list[SegmentRow]] = {}
    for row in rows:
        by_object.setdefault(row.object_key, []).append(row)
    events: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="rebuild-txn") as pool:
        for found in pool.map(lambda k: _transactional_batches(store, k, by_object[k]), by_object):
            for topic, partition, offset, producer, kind in found:
                events.setdefault((topic, partition), []).append((offset, producer, kind))
    aborted = []
    for (topic, partition), happened in sorted(events.items()):
        opened: dict[int, tuple[int, int]] = {}  # producer -> (first offset, last batch's)
        for offset, producer, kind in sorted(happened):
            if kind == _DATA:
                first = opened.get(producer, (offset, offset))[0]
                opened[producer] = (first, offset)
                continue
            started = opened.pop(producer, None)
            if started is not None and kind == ABORT:
                aborted.append((topic, partition, offset, producer, started[0]))
        for producer, (first, last) in opened.items():
            aborted.append((topic, partition, last, producer, first))
            report.open_transactions += 1
    report.aborted_transactions = len(aborted)
    return aborted


def _replace_sqlite(path: Path, fill: Callable[[Metadata], None], report: RebuildReport) -> None:
    """Fill a fresh SQLite file beside ``path``, move ``path`` aside, and put it in its place."""
    fresh = path.with_name(f"{path.name}.rebuild-{os.getpid()}")
    _move_aside(fresh, fresh)  # a leftover of an interrupted rebuild
    from streamhouse.log.metadata.sqlite import SQLiteMetadata

    with SQLiteMetadata(fresh) as metadata:
        fill(metadata)
    report.kept_aside = _move_aside(path, path)
    os.replace(fresh, path)
    _fsync_directory(path.parent)


_SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def _move_aside(path: Path, name: Path) -> list[Path]:
    """Rename the SQLite file ``path`` and its companions to ``<name>.replaced-<time>...``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for suffix in _SQLITE_SUFFIXES:
        source = Path(f"{path}{suffix}")
        if not source.exists():
            continue
        target = Path(f"{name}.replaced-{stamp}{suffix}")
        n = 1
        while target.exists():
            n += 1
            target = Path(f"{name}.replaced-{stamp}-{n}{suffix}")
        try:
            os.rename(source, target)
        except OSError as exc:
            raise StorageError(f"cannot move {source} aside to {target}: {exc}") from exc
        moved.append(target)
    return moved


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
