"""``streamhouse fsck``: findings with exact keys and offset ranges, orphans past the age bound,
rebuilding lost metadata from the footers; a data dir whose metadata is lost is refused."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner, Result

import streamhouse
from streamhouse.cli import main
from streamhouse.config import Settings
from streamhouse.errors import StorageError
from streamhouse.log import Log
from streamhouse.log.fsck import FindingKind, check, delete_orphans
from streamhouse.log.metadata.sqlite import SQLiteMetadata
from streamhouse.log.objectstore import LocalObjectStore
from streamhouse.log.records import build_batch
from streamhouse.log.segment import SegmentBuilder, SegmentEntry, read_footer

TOPIC = "t"


def fsck(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), "fsck", *args])


def _objects(data_dir: Path) -> Path:
    return data_dir / "objects" / "segments"


def _keys(data_dir: Path) -> list[str]:
    return sorted(f"segments/{p.name}" for p in _objects(data_dir).iterdir())


def _footer(data_dir: Path, key: str) -> list[SegmentEntry]:
    return read_footer((data_dir / "objects" / key).read_bytes(), key)


def _ranges(entries: list[SegmentEntry]) -> str:
    return ", ".join(
        f"{e.topic}/{e.partition} offsets {e.base_offset}-{e.last_offset}" for e in entries
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with three objects, each holding runs of the three partitions of ``t``."""
    path = tmp_path / "data"
    with streamhouse.connect(path, linger_ms=200) as sh:  # one object per produce call
        sh.create_topic(TOPIC, partitions=3)
        for call in range(3):
            sh.produce(TOPIC, [{"call": call, "i": i} for i in range(300)])
    assert len(_keys(path)) == 3
    return path


def _records(data_dir: Path) -> dict[int, pa.Table]:
    with streamhouse.connect(data_dir) as sh:
        return {
            p: sh.fetch(TOPIC, p).select(["offset", "timestamp", "key", "value"]) for p in range(3)
        }


def _flip(path: Path, position: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    data[position : position + count] = bytes(b ^ 0xFF for b in data[position : position + count])
    path.write_bytes(bytes(data))


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_sound_data_dir_exits_0(data_dir: Path) -> None:
    result = fsck(data_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("checked 3 object(s)")
    assert result.stderr.rstrip().endswith(": 0 finding(s)")


def test_a_damaged_run_is_named_with_its_offsets_alone(data_dir: Path) -> None:
    key = _keys(data_dir)[1]
    entry = _footer(data_dir, key)[1]  # t/1
    _flip(data_dir / "objects" / key, entry.position + entry.length // 2)
    result = fsck(data_dir)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"damaged {key} ({_ranges([entry])}): run checksum mismatch"
    ]


def test_a_damaged_footer_names_the_offsets_the_index_gives(data_dir: Path) -> None:
    key = _keys(data_dir)[2]
    entries = _footer(data_dir, key)
    path = data_dir / "objects" / key
    _flip(path, path.stat().st_size - 40, 4)  # inside the footer, before the trailer
    result = fsck(data_dir)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"damaged {key} ({_ranges(entries)}): footer checksum mismatch"
    ]


def test_orphans_and_missing_objects(data_dir: Path) -> None:
    first, second, third = _keys(data_dir)
    orphan = "segments/00000000000000000001-0rphan00.seg"
    shutil.copy(data_dir / "objects" / third, data_dir / "objects" / orphan)
    (data_dir / "objects" / second).unlink()

    result = fsck(data_dir)
    assert result.exit_code == 1
    with streamhouse.connect(data_dir) as sh:
        rows = sorted(
            (r for p in range(3) for r in sh.log.metadata.segments(TOPIC, p)),
            key=lambda r: r.partition,
        )
    second_ranges = ", ".join(
        f"t/{r.partition} offsets {r.base_offset}-{r.last_offset}"
        for r in rows
        if r.object_key == second
    )
    missing_line = (
        f"missing {second} ({second_ranges}): the index names this object but the object"
        " store does not hold it"
    )
    lines = result.stdout.splitlines()
    assert lines[0] == missing_line
    assert lines[1].startswith(
        f"orphan {orphan} ({_ranges(_footer(data_dir, third))}): no index row names this object"
    )
    assert len(lines) == 2
    assert first not in result.stdout


def test_a_young_object_past_the_high_watermarks_is_a_flush_in_progress(data_dir: Path) -> None:
    with streamhouse.connect(data_dir) as sh:
        high_watermark = sh.log.metadata.partition_offset(TOPIC, 0).high_watermark
    key = _keys(data_dir)[0]
    entry = _footer(data_dir, key)[0]
    run = (data_dir / "objects" / key).read_bytes()[entry.position : entry.position + entry.length]
    builder = SegmentBuilder()
    builder.add(
        TOPIC,
        0,
        struct.pack(">q", high_watermark) + run[8:],  # the run moved to the high watermark
        base_offset=high_watermark,
        last_offset=high_watermark + entry.last_offset - entry.base_offset,
        min_timestamp=entry.min_timestamp,
        max_timestamp=entry.max_timestamp,
        record_count=entry.record_count,
    )
    pending = "segments/99999999999999999999-pend1ng0.seg"
    (data_dir / "objects" / pending).write_bytes(builder.build()[0])

    result = fsck(data_dir)
    assert result.exit_code == 0, result.output
    assert "1 object(s) no metadata names are younger than 3600 s" in result.stderr
    assert fsck(data_dir, "--delete-orphans").exit_code == 0
    assert pending in _keys(data_dir)

    _age(data_dir / "objects" / pending, 7200)  # a flush takes minutes at most: an orphan
    result = fsck(data_dir)
    assert result.exit_code == 1
    assert result.stdout.startswith(
        f"orphan {pending} (t/0 offsets {high_watermark}-"
        f"{high_watermark + entry.last_offset - entry.base_offset}): no index row names this"
    )


def test_a_footer_that_disagrees_with_the_index(data_dir: Path) -> None:
    first, second, _ = _keys(data_dir)
    shutil.copy(data_dir / "objects" / second, data_dir / "objects" / first)
    result = fsck(data_dir)
    assert result.exit_code == 1
    with streamhouse.connect(data_dir) as sh:
        rows = sorted(
            (
                r
                for p in range(3)
                for r in sh.log.metadata.segments(TOPIC, p)
                if r.object_key == first
            ),
            key=lambda r: r.partition,
        )
    assert result.stdout.splitlines() == [
        *(
            f"mismatch {first} (t/{r.partition} offsets {r.base_offset}-{r.last_offset}):"
            " the footer has no entry for this index row"
            for r in rows
        ),
        f"mismatch {first} ({_ranges(_footer(data_dir, second))}):"
        " footer entries that no index row names",
    ]


def test_delete_orphans_respects_the_age_bound_and_the_index(data_dir: Path) -> None:
    keys = _keys(data_dir)
    old = "segments/00000000000000000001-01d0rpha.seg"
    young = "segments/00000000000000000002-y0ung0rp.seg"
    for orphan in (old, young):
        shutil.copy(data_dir / "objects" / keys[0], data_dir / "objects" / orphan)
    _age(data_dir / "objects" / old, 7200)
    for key in keys:  # named objects are kept however old they are
        _age(data_dir / "objects" / key, 7200)
    before = _records(data_dir)

    result = fsck(data_dir, "--delete-orphans")
    assert result.exit_code == 1, result.output  # the young orphan is kept, still a finding
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"deleted orphan {old} (")
    assert lines[1].startswith(f"kept orphan {young} (")
    assert lines[1].endswith("[younger than 3600 s]")
    assert _keys(data_dir) == sorted([*keys, young])
    assert _records(data_dir) == before

    result = fsck(data_dir, "--delete-orphans", "--orphan-min-age", "0")
    assert result.exit_code == 0, result.output
    assert _keys(data_dir) == keys
    assert fsck(data_dir).exit_code == 0


def test_an_orphan_indexed_after_the_check_is_kept(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with SQLiteMetadata(tmp_path / "metadata.sqlite3") as metadata:
        metadata.create_topic(TOPIC)
        with streamhouse.connect(tmp_path / "other") as sh:
            sh.create_topic(TOPIC)
            sh.produce(TOPIC, [b"a", b"b"])
            (key,) = _keys(tmp_path / "other")
        store.put(key, (tmp_path / "other" / "objects" / key).read_bytes())
        report = check(store, metadata, orphan_min_age_s=0)
        assert [f.kind for f in report.findings] == [FindingKind.ORPHAN]
        metadata.commit_segment(key, _footer(tmp_path / "other", key))  # a late commit
        deletion = delete_orphans(store, metadata, report, orphan_min_age_s=0)
        assert deletion.deleted == [] and deletion.kept == {key: "indexed since the check"}
        assert store.list() == [key]
        assert check(store, metadata, orphan_min_age_s=0).sound


def _drop_metadata(data_dir: Path) -> None:
    for path in data_dir.glob("metadata.sqlite3*"):
        path.unlink()


def test_a_data_dir_without_its_metadata_is_refused(data_dir: Path) -> None:
    _drop_metadata(data_dir)
    with pytest.raises(StorageError) as info:
        streamhouse.connect(data_dir)
    message = str(info.value)
    assert message.startswith(f"metadata store {data_dir / 'metadata.sqlite3'} is missing but")
    assert "3 segment object(s)" in message
    assert "`streamhouse fsck --rebuild-metadata`" in message
    assert not (data_dir / "metadata.sqlite3").exists()  # nothing was created

    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "topic", "list"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"Error: {message}"]

    # An empty metadata store (e.g. a fresh file put in its place) is refused the same way.
    SQLiteMetadata(data_dir / "metadata.sqlite3").close()
    with pytest.raises(StorageError, match="holds no topics but the object store holds 3"):
        streamhouse.connect(data_dir)


def test_rebuild_restores_every_record_and_offset(data_dir: Path) -> None:
    with streamhouse.connect(data_dir) as sh:
        sh.log.metadata.commit_group_offsets("g", {(TOPIC, 0): (5, "")})
        offsets = sh.log.metadata.partition_offsets(TOPIC)
    before = _records(data_dir)
    old = (data_dir / "metadata.sqlite3").read_bytes()
    SQLiteMetadata(data_dir / "fresh.sqlite3").close()
    os.replace(data_dir / "fresh.sqlite3", data_dir / "metadata.sqlite3")  # replaced: empty

    result = fsck(data_dir, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "rebuilt the metadata from 3 object(s): 1 topic(s), 3 partition(s)" in result.stderr
    assert "consumer group offsets" in result.stderr
    assert "producer state" in result.stderr
    (aside,) = data_dir.glob("metadata.sqlite3.replaced-*[0-9]Z")
    assert f"the old metadata file is kept as {aside}" in result.stderr
    assert aside.read_bytes() != old  # the empty file that had replaced it, kept

    assert _records(data_dir) == before
    with streamhouse.connect(data_dir) as sh:
        assert sh.log.metadata.partition_offsets(TOPIC) == offsets
        assert sh.log.metadata.group_offsets("g") == {}
        assert sh.produce(TOPIC, [b"next"], partition=0).offsets == {
            0: (offsets[0].high_watermark, offsets[0].high_watermark)
        }
    assert fsck(data_dir).exit_code == 0


def test_rebuild_restores_aborted_and_open_transactions(tmp_path: Path) -> None:
    """Aborted transactions come back from the markers in the objects, and a transaction
    left open (its coordinator's state is lost with the metadata) is aborted: read_committed
    readers see what they saw before, plus what the open one held back."""
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.create_topic("tx", partitions=2)
        with sh.transaction() as committed:
            committed.produce("tx", [b"committed"], partition=0)
        aborted = sh.transaction()
        aborted.produce("tx", [b"aborted-0"], partition=0)
        aborted.produce("tx", [b"aborted-1"], partition=1)
        aborted.abort()
        left_open = sh.transaction()
        left_open.produce("tx", [b"open"], partition=1)
        sh.produce("tx", [b"after"], partition=1)
        assert sorted(sh.fetch("tx")["value"].to_pylist()) == [b"committed"]
    SQLiteMetadata(tmp_path / "fresh.sqlite3").close()
    os.replace(tmp_path / "fresh.sqlite3", data / "metadata.sqlite3")  # lost: empty

    result = fsck(data, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    assert "3 aborted transaction(s) (1 of them left open)" in result.stderr
    assert "transactions open then are aborted (1 found)" in result.stderr
    with streamhouse.connect(data) as sh:
        assert sorted(sh.fetch("tx")["value"].to_pylist()) == [b"after", b"committed"]
        everything = sh.fetch("tx", isolation_level="read_uncommitted")["value"].to_pylist()
        assert sorted(everything) == [b"aborted-0", b"aborted-1", b"after", b"committed", b"open"]


def test_rebuild_leaves_out_an_object_a_newer_one_overrides(data_dir: Path) -> None:
    keys = _keys(data_dir)
    before = _records(data_dir)
    stale = "segments/00000000000000000001-5ta1e000.seg"  # older key, same offsets
    shutil.copy(data_dir / "objects" / keys[1], data_dir / "objects" / stale)
    _age(data_dir / "objects" / stale, 7200)
    _drop_metadata(data_dir)

    result = fsck(data_dir, "--rebuild-metadata")
    assert result.exit_code == 1  # the left-out object is an orphan now
    assert f"not rebuilt: {stale} holds offsets a newer object holds" in result.stderr
    assert result.stdout.splitlines()[0].startswith(f"orphan {stale} (")
    assert _records(data_dir) == before
    assert fsck(data_dir, "--delete-orphans").exit_code == 0
    assert _keys(data_dir) == keys


def test_rebuild_refuses_while_another_process_has_the_metadata_open(data_dir: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_METADATA, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        before = (data_dir / "metadata.sqlite3").stat().st_ino
        result = fsck(data_dir, "--rebuild-metadata")
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"Error: metadata store {data_dir / 'metadata.sqlite3'} is open in another process:"
            " stop every process using this data directory (e.g. `streamhouse serve`) before"
            " rebuilding its metadata"
        ]
        assert (data_dir / "metadata.sqlite3").stat().st_ino == before  # left alone
        assert not list(data_dir.glob("*.replaced-*"))
    finally:
        holder.communicate("\n", timeout=30)
    assert fsck(data_dir, "--rebuild-metadata").exit_code == 0  # once it is closed


HOLD_METADATA = """
import sys
import streamhouse
with streamhouse.connect(sys.argv[1]) as sh:
    sh.topics()
    print("open", flush=True)
    sys.stdin.readline()
"""


def test_the_metadata_refuses_writes_once_its_file_is_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metadata.sqlite3"
    with SQLiteMetadata(path) as metadata:
        metadata.create_topic("before")
        path.unlink()
        with caplog.at_level(logging.ERROR), pytest.raises(StorageError) as info:
            metadata.create_topic("after")
        assert str(info.value) == (
            f"metadata store {path} was deleted while in use; nothing more is written"
            " (stop the process and run `streamhouse fsck --rebuild-metadata`)"
        )
        with pytest.raises(StorageError):
            metadata.next_producer_id()
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "was deleted while in use" in errors[0].getMessage()
        assert not path.exists()  # no new file was made in its place


def test_the_metadata_refuses_writes_once_its_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite3"
    with SQLiteMetadata(path) as metadata:
        SQLiteMetadata(tmp_path / "other.sqlite3").close()
        os.replace(tmp_path / "other.sqlite3", path)
        with pytest.raises(StorageError, match="was replaced by another file while in use"):
            metadata.create_topic("after")


def test_fsck_settings_come_from_the_environment(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan = "segments/00000000000000000001-0rphan00.seg"
    shutil.copy(data_dir / "objects" / _keys(data_dir)[0], data_dir / "objects" / orphan)
    monkeypatch.setenv("STREAMHOUSE_ORPHAN_MIN_AGE_S", "0")
    assert Settings.load().orphan_min_age_s == 0
    result = fsck(data_dir, "--delete-orphans")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"deleted orphan {orphan} (")
    assert orphan not in _keys(data_dir)


def test_fsck_of_a_directory_that_holds_no_data(tmp_path: Path) -> None:
    result = fsck(tmp_path / "nothing")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"Error: no metadata store at {tmp_path / 'nothing' / 'metadata.sqlite3'} and no"
        " segment objects: not a data directory"
    ]
    assert not (tmp_path / "nothing" / "metadata.sqlite3").exists()


def test_fsck_while_producing_finds_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    stop = threading.Event()
    with streamhouse.connect(data_dir, linger_ms=1) as sh:
        sh.create_topic(TOPIC, partitions=4)

        first = threading.Event()

        def produce() -> None:
            while not stop.is_set():
                sh.produce(TOPIC, [b"x" * 100] * 50)
                first.set()

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            assert first.wait(30)
            store = LocalObjectStore(data_dir / "objects")
            with SQLiteMetadata(data_dir / "metadata.sqlite3") as metadata:
                reports = [check(store, metadata, orphan_min_age_s=3600) for _ in range(20)]
        finally:
            stop.set()
            producer.join()
    assert [f for r in reports for f in r.findings] == []
    assert reports[-1].objects > reports[0].objects > 0
    assert fsck(data_dir).exit_code == 0


@pytest.fixture
def pg_data_dir(tmp_path: Path, postgres_url: str) -> Path:
    """A data dir whose metadata is the fresh PostgreSQL schema of ``postgres_url``: three
    objects, each holding runs of the three partitions of ``t``; group ``g`` at offset 5."""
    path = tmp_path / "data"
    with streamhouse.connect(path, metadata=postgres_url, linger_ms=200) as sh:
        sh.create_topic(TOPIC, partitions=3)
        for call in range(3):
            sh.produce(TOPIC, [{"call": call, "i": i} for i in range(300)])
        sh.log.metadata.commit_group_offsets("g", {(TOPIC, 0): (5, "")})
    assert len(_keys(path)) == 3
    return path


def _pg_records(data_dir: Path, url: str) -> tuple[dict[int, pa.Table], dict]:
    with streamhouse.connect(data_dir, metadata=url) as sh:
        records = {
            p: sh.fetch(TOPIC, p).select(["offset", "timestamp", "key", "value"]) for p in range(3)
        }
        return records, sh.log.metadata.partition_offsets(TOPIC)


def _pg_fsck(data_dir: Path, url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), "--metadata", url, "fsck", *args])


def _schema_rows(url: str, schema: str, table: str) -> int:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        return conn.execute(query).fetchone()[0]


def test_rebuild_into_postgresql_after_its_tables_were_lost(
    pg_data_dir: Path, postgres_url: str
) -> None:
    import psycopg

    before, offsets = _pg_records(pg_data_dir, postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        (schema,) = conn.execute("SELECT current_schema()").fetchone()
        for table in ("segments", "partitions", "topics", "group_offsets"):
            conn.execute(f"TRUNCATE {table}")  # lost: an empty store over existing objects
    with pytest.raises(StorageError, match="holds no topics but the object store holds 3"):
        streamhouse.connect(pg_data_dir, metadata=postgres_url)

    result = _pg_fsck(pg_data_dir, postgres_url, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "rebuilt the metadata from 3 object(s): 1 topic(s), 3 partition(s)" in result.stderr
    assert "consumer group offsets" in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "old metadata tables" in x]
    aside = line.removeprefix("the old metadata tables are kept in schema ")
    assert aside.startswith(f"{schema}_replaced_")
    assert _schema_rows(postgres_url, aside, "schema_migrations") >= 3  # the old, emptied store
    assert _schema_rows(postgres_url, aside, "topics") == 0
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        schemas = {name for (name,) in conn.execute("SELECT nspname FROM pg_namespace")}
    assert not [name for name in schemas if name.startswith(f"{schema}_rebuild_")]

    assert _pg_records(pg_data_dir, postgres_url) == (before, offsets)
    with streamhouse.connect(pg_data_dir, metadata=postgres_url) as sh:
        assert sh.log.metadata.group_offsets("g") == {}
        assert sh.produce(TOPIC, [b"next"], partition=0).offsets == {
            0: (offsets[0].high_watermark, offsets[0].high_watermark)
        }
    assert _pg_fsck(pg_data_dir, postgres_url).exit_code == 0


def test_rebuild_into_postgresql_keeps_a_sound_store_aside(
    pg_data_dir: Path, postgres_url: str
) -> None:
    before, offsets = _pg_records(pg_data_dir, postgres_url)
    result = _pg_fsck(pg_data_dir, postgres_url, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stderr.splitlines() if "old metadata tables" in x]
    aside = line.removeprefix("the old metadata tables are kept in schema ")
    assert _schema_rows(postgres_url, aside, "topics") == 1  # nothing of it lost
    assert _schema_rows(postgres_url, aside, "group_offsets") == 1
    assert _schema_rows(postgres_url, aside, "segments") == 9
    assert _pg_records(pg_data_dir, postgres_url) == (before, offsets)


def test_rebuild_into_postgresql_refuses_while_an_agent_is_alive(
    pg_data_dir: Path, postgres_url: str
) -> None:
    from streamhouse.log.metadata.postgres import PostgresMetadata

    with PostgresMetadata(postgres_url) as metadata:
        metadata.register_agent("agent-1", "127.0.0.1", 9092, "", "default")
        result = _pg_fsck(pg_data_dir, postgres_url, "--rebuild-metadata")
        assert result.exit_code == 1
        assert result.stderr.splitlines() == [
            f"Error: metadata store {postgres_url} is in use by 1 live agent(s) (agent-1):"
            " stop every process using it (e.g. `streamhouse serve`) before rebuilding its"
            " metadata"
        ]
        assert metadata.list_agents()[0].agent_id == "agent-1"  # the store left alone
        metadata.deregister_agent("agent-1")
    assert _pg_fsck(pg_data_dir, postgres_url, "--rebuild-metadata").exit_code == 0


def test_fsck_with_postgresql_metadata(tmp_path: Path, postgres_url: str) -> None:
    data_dir = tmp_path / "data"
    with streamhouse.connect(data_dir, metadata=postgres_url) as sh:
        sh.create_topic(TOPIC, partitions=2)
        sh.produce(TOPIC, [b"a", b"b", b"c"], partition=1)
        (row,) = sh.log.metadata.segments(TOPIC, 1)
    env = {"STREAMHOUSE_METADATA": postgres_url}
    runner = CliRunner()
    result = runner.invoke(main, ["--data-dir", str(data_dir), "fsck"], env=env)
    assert result.exit_code == 0, result.output
    (data_dir / "objects" / row.object_key).unlink()
    result = runner.invoke(main, ["--data-dir", str(data_dir), "fsck"], env=env)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"missing {row.object_key} (t/1 offsets 0-2): the index names this object but the"
        " object store does not hold it"
    ]


def test_delete_orphans_refuses_when_the_metadata_was_emptied(data_dir: Path) -> None:
    keys = _keys(data_dir)
    for key in keys:
        _age(data_dir / "objects" / key, 7200)
    SQLiteMetadata(data_dir / "fresh.sqlite3").close()
    for path in data_dir.glob("metadata.sqlite3*"):
        path.unlink()
    os.replace(data_dir / "fresh.sqlite3", data_dir / "metadata.sqlite3")

    result = fsck(data_dir)
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 3  # every object an orphan
    assert "the metadata holds no topics: if it was lost, run" in result.stderr
    result = fsck(data_dir, "--delete-orphans", "--orphan-min-age", "0")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: the metadata holds no topics, so every object looks like an orphan: nothing"
        " deleted; if the metadata was lost, run `streamhouse fsck --rebuild-metadata`"
    ]
    assert _keys(data_dir) == keys
    assert fsck(data_dir, "--rebuild-metadata").exit_code == 0
    assert sum(t.num_rows for t in _records(data_dir).values()) == 900


def _two_writers_guess_alike(data_dir: Path) -> list[int]:
    """Two logs on one data dir: ``b`` commits a run of ``t``/0 at the offset ``a`` then guesses
    for its next run, which the store sequences after ``b``'s. The acknowledged offsets."""
    settings = Settings.load(data_dir=data_dir, linger_ms=1)
    with Log.open(settings) as a, Log.open(settings) as b:
        a.create_topic(TOPIC)
        acks = [a.append(TOPIC, 0, build_batch([b"a0", b"a1"])).result(10)]
        acks.append(b.append(TOPIC, 0, build_batch([b"b2"])).result(10))
        acks.append(a.append(TOPIC, 0, build_batch([b"a3", b"a4"])).result(10))  # written at 2
        assert a.writer.stats.sequenced_elsewhere == 1
    return acks


def test_runs_sequenced_after_another_writers_are_rebuilt_at_their_acknowledged_offsets(
    tmp_path: Path,
) -> None:
    """The footer of ``a``'s second object says offsets 2-3, the store gave 3-4: its sequence
    note says so, and a rebuild from the objects gives back exactly the acknowledged offsets
    (by written offsets and keys alone ``a``'s run would come first, at 2)."""
    assert _two_writers_guess_alike(tmp_path) == [0, 2, 3]
    (note,) = (tmp_path / "objects" / "sequenced").iterdir()
    result = fsck(tmp_path)
    assert result.exit_code == 0, result.output

    _drop_metadata(tmp_path)
    result = fsck(tmp_path, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    assert "index row(s), 1 sequence note(s)" in result.stderr
    assert "moved:" not in result.stderr
    assert "offsets may differ" not in result.stderr
    with streamhouse.connect(tmp_path) as sh:
        table = sh.fetch(TOPIC, 0)
        assert table["offset"].to_pylist() == [0, 1, 2, 3, 4]
        assert table["value"].to_pylist() == [b"a0", b"a1", b"b2", b"a3", b"a4"]
        sh.delete_topic(TOPIC)
    assert not note.exists()  # deleted with its object


def test_a_rebuild_without_the_sequence_note_says_which_offsets_may_differ(
    tmp_path: Path,
) -> None:
    _two_writers_guess_alike(tmp_path)
    shutil.rmtree(tmp_path / "objects" / "sequenced")  # e.g. the writer died before its put
    _drop_metadata(tmp_path)
    result = fsck(tmp_path, "--rebuild-metadata")
    assert result.exit_code == 0, result.output
    assert "moved: segments/" in result.stderr
    assert (
        "offsets may differ: t/0 from offset 2 on may not be the offsets producers were"
        " acknowledged with (runs written by concurrent writers at the same offsets, without a"
        " sequence note of where the store put them)"
    ) in result.stderr.splitlines()
    with streamhouse.connect(tmp_path) as sh:
        table = sh.fetch(TOPIC, 0)  # every record once, densely, but not as acknowledged
        assert table["offset"].to_pylist() == [0, 1, 2, 3, 4]
        assert table["value"].to_pylist() == [b"a0", b"a1", b"a3", b"a4", b"b2"]


def test_fsck_writes_a_missing_sequence_note_while_the_metadata_knows_it(tmp_path: Path) -> None:
    _two_writers_guess_alike(tmp_path)
    notes = tmp_path / "objects" / "sequenced"
    ((name, text),) = [(p.name, p.read_bytes()) for p in notes.iterdir()]
    shutil.rmtree(notes)  # e.g. the writer died between its commit and its note
    result = fsck(tmp_path)
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("noted: ")]
    assert line.startswith(f"noted: segments/{name.removesuffix('.json')} is indexed at other")
    assert (notes / name).read_bytes() == text  # the note the writer would have written
    assert "noted:" not in fsck(tmp_path).stderr  # once

    _drop_metadata(tmp_path)
    assert fsck(tmp_path, "--rebuild-metadata").exit_code == 0
    with streamhouse.connect(tmp_path) as sh:
        assert sh.fetch(TOPIC, 0)["value"].to_pylist() == [b"a0", b"a1", b"b2", b"a3", b"a4"]
