"""Damaged storage: a damaged run makes only its own offsets unreadable, and says which.

Every test starts from the same data dir: one topic ``t`` of one partition whose three segment
objects hold offsets 0-999, 1000-1999 and 2000-2999, with 16 bytes of the second object's data
flipped (or the object cut short). The records are JSON ``{"i": offset, "b": offset % 7}``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from kafka_fixtures import KafkaServer, free_port
from window_cases import start_paused

import streamhouse
from streamhouse import ConfigError, DamagedRangeError, StorageError
from streamhouse.cli import main
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.records import decode_batches
from streamhouse.runtime.launch import start_query

RECORDS = 1000  # per object
OBJECTS = 3
GOOD = [*range(RECORDS), *range(2 * RECORDS, 3 * RECORDS)]  # the offsets that stay readable


@dataclass(frozen=True)
class Damaged:
    data_dir: Path
    row: SegmentRow  # the damaged run: offsets 1000-1999

    @property
    def key(self) -> str:
        return self.row.object_key

    @property
    def named(self) -> str:
        """What every error about the damage says."""
        return f"topic 't' partition 0 offsets [1000, 1999] are unreadable: segment object {self.key!r}"


def _write(data_dir: Path, **settings: object) -> SegmentRow:
    """Three produce calls of 1,000 records, one object each; the index row of the second."""
    with streamhouse.connect(data_dir, **settings) as sh:
        sh.create_topic("t", partitions=1)
        for n in range(OBJECTS):
            offsets = range(n * RECORDS, (n + 1) * RECORDS)
            sh.produce("t", [{"i": i, "b": i % 7} for i in offsets], partition=0)
        rows = sh.log.metadata.segments("t", 0)
    assert [(r.base_offset, r.last_offset) for r in rows] == [(0, 999), (1000, 1999), (2000, 2999)]
    assert len({r.object_key for r in rows}) == OBJECTS
    return rows[1]


def _flip(path: Path, at: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def damaged(tmp_path: Path) -> Damaged:
    """16 bytes flipped in the middle of the second object's only run."""
    data_dir = tmp_path / "data"
    row = _write(data_dir)
    _flip(data_dir / "objects" / row.object_key, row.position + row.length // 2)
    return Damaged(data_dir, row)


@pytest.fixture
def cut(tmp_path: Path) -> Damaged:
    """The second object cut to its first 100 bytes: no trailer, no footer, most of the run gone."""
    data_dir = tmp_path / "data"
    row = _write(data_dir)
    path = data_dir / "objects" / row.object_key
    path.write_bytes(path.read_bytes()[:100])
    return Damaged(data_dir, row)


def _cli(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--data-dir", str(data_dir), *args])


def _reason(case: str, d: Damaged) -> str:
    """Why the run is unreadable: 92 bytes of it are left after the 8-byte header of a cut object."""
    return (
        "checksum mismatch in the run"
        if case == "damaged"
        else f"run truncated: 92 of {d.row.length} bytes"
    )


def _ids(values: list[bytes]) -> list[int]:
    return [json.loads(v)["i"] for v in values]


# -- consume -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["damaged", "cut"])
def test_consume_prints_every_record_before_the_damage_then_fails_naming_it(
    case: str, request: pytest.FixtureRequest
) -> None:
    d: Damaged = request.getfixturevalue(case)
    result = _cli(d.data_dir, "consume", "t", "--from-beginning", "--timeout", "0")
    assert result.exit_code == 1, result.output
    assert _ids(result.stdout_bytes.splitlines()) == list(range(RECORDS))
    (line,) = result.stderr.splitlines()
    assert line == f"Error: {d.named} is damaged ({_reason(case, d)})", line
    assert "Traceback" not in result.output


def test_fetch_returns_the_batches_before_the_damage_and_fails_inside_it(damaged: Damaged) -> None:
    with streamhouse.connect(damaged.data_dir) as sh:
        before = sh.log.fetch("t", 0, 0, max_bytes=1 << 30)  # would reach past the damage
        assert decode_batches(before.records)["offset"].to_pylist() == list(range(RECORDS))
        for offset in (1000, 1500, 1999):
            with pytest.raises(DamagedRangeError) as err:
                sh.log.fetch("t", 0, offset, max_bytes=1 << 30)
            e = err.value
            assert (e.topic, e.partition, e.base_offset, e.last_offset, e.key) == (
                "t",
                0,
                1000,
                1999,
                damaged.key,
            )
        after = decode_batches(sh.log.fetch("t", 0, 2000, max_bytes=1 << 30).records)
        assert after["offset"].to_pylist() == list(range(2000, 3000))
        # The Python API reads the same way: up to the damage, then the error.
        assert _ids(sh.fetch("t", 0)["value"].to_pylist()) == list(range(RECORDS))
        with pytest.raises(DamagedRangeError, match=r"offsets \[1000, 1999\]"):
            sh.fetch("t", 0, offset=1000)
        assert _ids(sh.fetch("t", 0, offset=2000)["value"].to_pylist()) == list(range(2000, 3000))


def test_a_damaged_footer_loses_nothing(tmp_path: Path) -> None:
    """Runs are checked against the checksums in the metadata, so an object whose footer is
    damaged still serves every record of its (intact) runs."""
    data_dir = tmp_path / "data"
    row = _write(data_dir)
    path = data_dir / "objects" / row.object_key
    _flip(path, path.stat().st_size - 40)  # the footer's entry and the trailer
    with streamhouse.connect(data_dir) as sh:
        assert _ids(sh.fetch("t", 0)["value"].to_pylist()) == list(range(3 * RECORDS))
        assert sh.sql("SELECT count(*) AS n FROM t").to_arrow_table()["n"].to_pylist() == [3000]


# -- Kafka -------------------------------------------------------------------------------------


def test_confluent_kafka_gets_the_records_before_the_damage_then_an_error(
    damaged: Damaged,
) -> None:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    server = KafkaServer(damaged.data_dir).start()
    consumer = Consumer(
        {
            "bootstrap.servers": server.bootstrap,
            "group.id": "damage",
            "enable.auto.commit": False,
            "fetch.error.backoff.ms": 100,
        }
    )
    try:
        consumer.assign([TopicPartition("t", 0, 0)])
        offsets: list[int] = []
        errors: list[KafkaError] = []
        deadline = time.monotonic() + 60
        while len(errors) < 3 and time.monotonic() < deadline:  # several fetches meet it
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                errors.append(message.error())
            else:
                offsets.append(message.offset())
        assert offsets == list(range(RECORDS))
        assert len(errors) == 3, errors
        assert {e.code() for e in errors} == {KafkaError.INVALID_MSG}  # CORRUPT_MESSAGE (2)
    finally:
        consumer.close()
        assert server.stop() == 0, server.log()
    lines = server.log_path.read_text().splitlines()
    error_lines = [line for line in lines if " ERROR " in line]
    assert len(error_lines) == 1, error_lines
    assert damaged.named in error_lines[0] and "CORRUPT_MESSAGE" in error_lines[0]


def test_kafka_python_raises_the_corrupt_message_error(damaged: Damaged) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import CorruptRecordError

    server = KafkaServer(damaged.data_dir).start()
    consumer = KafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition("t", 0)
        consumer.assign([partition])
        consumer.seek(partition, 0)
        offsets: list[int] = []
        deadline = time.monotonic() + 60
        with pytest.raises(CorruptRecordError):
            while time.monotonic() < deadline:
                for records in consumer.poll(500).values():
                    offsets.extend(r.offset for r in records)
        assert offsets == list(range(RECORDS))
    finally:
        consumer.close()
        assert server.stop() == 0, server.log()


# -- SQL ---------------------------------------------------------------------------------------

GROUP_BY_B = "SELECT b, count(*) AS n FROM t GROUP BY b ORDER BY b"


def _counts_of(offsets: list[int]) -> dict[str, list[int]]:
    counts = Counter(i % 7 for i in offsets)
    return {"b": sorted(counts), "n": [counts[b] for b in sorted(counts)]}


@pytest.mark.parametrize("case", ["damaged", "cut"])
def test_query_fails_naming_the_object_and_the_offsets(
    case: str, request: pytest.FixtureRequest
) -> None:
    d: Damaged = request.getfixturevalue(case)
    with streamhouse.connect(d.data_dir) as sh, pytest.raises(DamagedRangeError) as err:
        sh.sql(GROUP_BY_B).to_arrow_table()
    assert str(err.value).startswith(d.named)
    result = _cli(d.data_dir, "query", GROUP_BY_B)
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {d.named}")


@pytest.mark.parametrize("case", ["damaged", "cut"])
def test_skip_answers_over_the_rest_and_reports_the_range(
    case: str, request: pytest.FixtureRequest
) -> None:
    d: Damaged = request.getfixturevalue(case)
    with streamhouse.connect(d.data_dir) as sh:
        assert sh.sql("SET 'read.on-damage' = 'skip'").to_arrow_table().num_rows == 1
        relation = sh.sql(GROUP_BY_B)
        assert relation.to_arrow_table().to_pydict() == _counts_of(GOOD)
        (skipped,) = relation.stats.damaged
        assert (skipped.base_offset, skipped.last_offset, skipped.key) == (1000, 1999, d.key)
        assert relation.stats.rows_read == 2 * RECORDS
        sh.sql("SET 'read.on-damage' = 'fail'")
        with pytest.raises(DamagedRangeError):
            sh.sql(GROUP_BY_B).to_arrow_table()

    result = _cli(d.data_dir, "query", "--skip-damaged", "--format", "json", GROUP_BY_B)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows == [{"b": b, "n": n} for b, n in zip(*_counts_of(GOOD).values(), strict=True)]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: 1000 record(s) skipped: {d.named} is damaged ({_reason(case, d)})"
    ]


def test_the_same_setting_in_the_query_text(damaged: Damaged) -> None:
    sql = f"SET 'read.on-damage' = 'skip'; {GROUP_BY_B}"
    result = _cli(damaged.data_dir, "query", "--format", "json", sql)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum(r["n"] for r in rows) == 2 * RECORDS


def test_other_values_of_read_on_damage_are_refused_by_name(damaged: Damaged) -> None:
    with streamhouse.connect(damaged.data_dir) as sh:
        with pytest.raises(
            ConfigError, match="read.on-damage must be 'fail' or 'skip', not 'ignore'"
        ):
            sh.sql("SET 'read.on-damage' = 'ignore'")
        with pytest.raises(ConfigError, match="unknown setting 'read.on-damages'"):
            sh.sql("SET 'read.on-damages' = 'skip'")
        with pytest.raises(ConfigError, match="not 'sometimes'"):
            start_paused(sh, "SET 'read.on-damage' = 'sometimes'; SELECT i FROM t", "bad")
    result = _cli(damaged.data_dir, "query", f"SET 'read.on-damage' = 'ignore'; {GROUP_BY_B}")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: read.on-damage must be 'fail' or 'skip', not 'ignore'"
    ]


# -- continuous queries ------------------------------------------------------------------------


def test_a_continuous_query_fails_on_the_damage_or_skips_it(damaged: Damaged) -> None:
    with streamhouse.connect(damaged.data_dir) as sh:
        failing = start_paused(sh, "SELECT i FROM t", "fails")
        try:
            with pytest.raises(DamagedRangeError) as err:
                failing.run_until_caught_up(final=True)
            assert str(err.value).startswith(damaged.named)
        finally:
            failing.stop()

        seen: list[int] = []
        query = start_query(
            sh.engine,
            "SET 'read.on-damage' = 'skip'; SELECT i FROM t",
            name="skips",
            state_root=damaged.data_dir / "queries",
            on_results=lambda table: seen.extend(table["i"].to_pylist()),
            start=False,
        )
        try:
            query.run_until_caught_up(final=True)
            status = query.status()
        finally:
            query.stop()
    assert sorted(seen) == GOOD
    assert status["damaged_rows"] == RECORDS and status["rows_in"] == 2 * RECORDS
    assert status["offsets"] == {0: 3 * RECORDS}


# -- S3: a store that fails is not damage ------------------------------------------------------


def test_an_s3_get_that_fails_after_retries_is_a_storage_error_not_damage(
    tmp_path: Path, moto_server: str, s3_url: Callable[[str], str]
) -> None:
    url = s3_url("damage")
    _write(tmp_path, object_store=url, s3_endpoint_url=moto_server, linger_ms=1)
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: every GET is refused
    with streamhouse.connect(tmp_path, object_store=url, s3_endpoint_url=gone) as sh:
        sh.sql("SET 'read.on-damage' = 'skip'")
        relation = sh.sql(GROUP_BY_B)
        with pytest.raises(StorageError, match="cannot read object 'segments/") as err:
            relation.to_arrow_table()
        assert not isinstance(err.value, DamagedRangeError)
        assert relation.stats.damaged == []
    # The objects were never damaged: with the store back, everything reads.
    with streamhouse.connect(tmp_path, object_store=url, s3_endpoint_url=moto_server) as sh:
        assert sh.sql(GROUP_BY_B).to_arrow_table().to_pydict() == _counts_of(list(range(3000)))


def test_a_damaged_run_leaves_the_other_partitions_of_its_object_readable(tmp_path: Path) -> None:
    """Objects hold runs of many partitions: damage in one run costs only that run's range."""
    data_dir = tmp_path / "data"
    with streamhouse.connect(data_dir) as sh:
        sh.create_topic("two", partitions=2)
        for _ in range(OBJECTS):  # unkeyed: 100 records to each partition, in one flush
            assert sh.produce("two", [{"i": i} for i in range(200)]).records == 200
        rows = [sh.log.metadata.segments("two", p) for p in (0, 1)]
        assert [r.object_key for r in rows[0]] == [r.object_key for r in rows[1]]
        row = rows[1][1]  # partition 1, offsets 100-199, beside partition 0's in its object
    _flip(data_dir / "objects" / row.object_key, row.position + 20)
    with streamhouse.connect(data_dir) as sh:
        table = sh.fetch("two")  # every partition: each ends before its own damage
        got = sorted(zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True))
        assert got == [(0, i) for i in range(300)] + [(1, i) for i in range(100)]
        with pytest.raises(DamagedRangeError, match=r"partition 1 offsets \[100, 199\]"):
            sh.fetch("two", offset=100)
        sh.sql("SET 'read.on-damage' = 'skip'")
        relation = sh.sql(
            "SELECT _partition AS p, count(*) AS n FROM two GROUP BY _partition ORDER BY p"
        )
        assert relation.to_arrow_table().to_pydict() == {"p": [0, 1], "n": [300, 200]}
        assert [(d.partition, d.base_offset, d.last_offset) for d in relation.stats.damaged] == [
            (1, 100, 199)
        ]
