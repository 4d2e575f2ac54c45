"""Iceberg tables of streams (Tableflow): pyiceberg reads what SQL reads over the log, each
record once, on SQLite and PostgreSQL catalogs and on S3; a killed appender neither repeats
nor skips a record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from kafka_fixtures import REPO, KafkaServer
from pyiceberg.catalog import load_catalog

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import SqlError
from streamhouse.iceberg.catalog import metadata_location, static_table
from streamhouse.iceberg.manifests import table_state
from streamhouse.iceberg.tableflow import OFFSETS_PROPERTY, covered_offsets, expire_snapshots

COLUMNS = "id, name, amount, ts, _partition, _offset, _timestamp"
DECLARE = (
    "CREATE STREAM orders (id BIGINT, name VARCHAR, amount DECIMAL(10, 2), ts TIMESTAMP(3))"
    " WITH (partitions = '3'{extra})"
)


def _produce(sh: StreamHouse, first: int, count: int, per_call: int = 50) -> None:
    for start in range(first, first + count, per_call):
        sh.produce(
            "orders",
            [
                {
                    "id": i,
                    "name": f"n{i % 7}",
                    "amount": f"{i % 1000}.{i % 100:02d}",
                    "ts": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}",
                }
                for i in range(start, min(first + count, start + per_call))
            ],
        )


def _iceberg(sh: StreamHouse, stream: str = "orders") -> pa.Table:
    """The stream's table as pyiceberg reads it, opened from the printed catalog properties."""
    catalog = load_catalog(**sh.iceberg_catalog())
    return catalog.load_table(f"streamhouse.{stream}").scan().to_arrow()


def _same_rows(left: pa.Table, right: pa.Table) -> None:
    """DuckDB: the two tables hold the same multiset of rows (timestamps compared in ms)."""
    con = duckdb.connect()
    con.register("l", left)
    con.register("r", right)
    for a, b in (("l", "r"), ("r", "l")):
        diff = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})")
        assert diff.fetchone() == (0,), f"rows of {a} missing from {b}"
    assert left.num_rows == right.num_rows


def _log_rows(sh: StreamHouse) -> pa.Table:
    return sh.sql(f"SELECT {COLUMNS} FROM orders").to_arrow_table()


def _as_ms(table: pa.Table) -> pa.Table:
    """Iceberg stores timestamps in us: back to the stream's ms, columns in ``COLUMNS`` order."""
    table = table.select([c.strip() for c in COLUMNS.split(",")])
    fields = [
        f.with_type(pa.timestamp("ms")) if pa.types.is_timestamp(f.type) else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields))


def _each_offset_once(table: pa.Table, sh: StreamHouse) -> None:
    """Every partition's offsets in the table: no repeat, and (no value rejected) no gap."""
    offsets = sh.log.metadata.partition_offsets("orders")
    con = duckdb.connect()
    con.register("t", table)
    got = dict(
        con.execute(
            "SELECT _partition, count(*) - count(DISTINCT _offset) FROM t GROUP BY _partition"
        ).fetchall()
    )
    assert set(got.values()) <= {0}, f"repeated offsets per partition: {got}"
    for p, bounds in offsets.items():
        n, low, high = con.execute(
            f"SELECT count(*), min(_offset), max(_offset) FROM t WHERE _partition = {p}"
        ).fetchone()
        assert (n, low, high) == (bounds.high_watermark, 0, bounds.high_watermark - 1), p


def test_iceberg_table_equals_the_log(tmp_path: Path, metadata_url: str | None) -> None:
    """Several passes over a growing stream, some with several snapshots each: pyiceberg,
    opened with `streamhouse iceberg catalog`'s properties, reads the rows SELECT reads."""
    with streamhouse.connect(
        tmp_path / "data", metadata=metadata_url, iceberg_commit_records=600
    ) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 2000)
        sh.produce("orders", ['{"id": "not a number"}', "not json"], partition=1)
        first = sh.append_iceberg()
        assert first.failed == {} and first.rows == {"orders": 2000}
        assert first.snapshots >= 3  # 2,002 records, at most 600 per snapshot
        assert first.rejected == 2  # to the dead-letter topic, not the table
        dead = sh.fetch("orders.dlq")
        assert dead.num_rows == 2
        _same_rows(_as_ms(_iceberg(sh)), _log_rows(sh))

        _produce(sh, 2000, 700)
        again = sh.append_iceberg()
        assert again.rows == {"orders": 700} and again.rejected == 0
        assert sh.append_iceberg().snapshots == 0  # nothing new: no snapshot
        table = _iceberg(sh)
        _same_rows(_as_ms(table), _log_rows(sh))
        assert table.num_rows == 2700

        props = json.loads(
            CliRunner()
            .invoke(
                main,
                ["--data-dir", str(tmp_path / "data"), *_metadata_args(metadata_url)]
                + ["iceberg", "catalog"],
            )
            .stdout
        )
        assert props == sh.iceberg_catalog()
        iceberg = load_catalog(**props).load_table("streamhouse.orders")
        last = json.loads(iceberg.current_snapshot().summary[OFFSETS_PROPERTY])
        highs = sh.log.metadata.partition_offsets("orders")
        assert {int(p): o + 1 for p, o in last.items()} == {
            p: b.high_watermark for p, b in highs.items()
        }


def _metadata_args(url: str | None) -> list[str]:
    return ["--metadata", url] if url else []


def test_alter_stream_turns_the_table_on_and_appends_the_history(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(DECLARE.format(extra=""))
        _produce(sh, 0, 300)
        assert sh.append_iceberg().rows == {}  # no Iceberg stream yet
        sh.sql("ALTER STREAM orders SET ('iceberg' = 'true')")
        assert "'iceberg'='true'" in sh.sql("SHOW STREAMS").to_arrow_table()["sql"][0].as_py()
        assert sh.append_iceberg().rows == {"orders": 300}
        _same_rows(_as_ms(_iceberg(sh)), _log_rows(sh))
        sh.sql("ALTER STREAM orders SET ('iceberg' = 'false')")
        _produce(sh, 300, 10)
        assert sh.append_iceberg().rows == {}
        assert _iceberg(sh).num_rows == 300


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("ALTER STREAM orders SET ('iceberg' = 'maybe')", "'iceberg' is 'true' or 'false'"),
        ("ALTER STREAM missing SET ('iceberg' = 'true')", "stream 'missing' does not exist"),
        ("ALTER STREAM orders SET ('iceberg' = true)", "SET takes 'key' = 'value' pairs"),
    ],
)
def test_bad_iceberg_options_are_located_errors(
    tmp_path: Path, statement: str, message: str
) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(DECLARE.format(extra=""))
        with pytest.raises(SqlError, match=message) as error:
            sh.sql(statement)
        assert error.value.line == 1 and error.value.column is not None
        with pytest.raises(SqlError, match="'iceberg' is 'true' or 'false'"):
            sh.sql("CREATE STREAM other (a BIGINT) WITH ('iceberg' = 'yes')")


def test_records_deleted_before_they_were_appended_are_skipped(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 300)
        sh.delete_records("orders", {0: 40})
        report = sh.append_iceberg()
        assert report.skipped_records == 40 and report.rows == {"orders": 260}
        _same_rows(_as_ms(_iceberg(sh)), _log_rows(sh))


def test_iceberg_on_s3(tmp_path: Path, moto_server: str, s3_url: Callable[[str], str]) -> None:
    """The warehouse in the object store's bucket: Parquet and metadata files through S3."""
    with streamhouse.connect(
        tmp_path / "data", object_store=s3_url("tableflow"), s3_endpoint_url=moto_server
    ) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 500)
        assert sh.append_iceberg().rows == {"orders": 500}
        props = sh.iceberg_catalog()
        assert props["warehouse"].startswith("s3://") and props["s3.endpoint"] == moto_server
        table = load_catalog(**props).load_table("streamhouse.orders")
        files = [task.file.file_path for task in table.scan().plan_files()]
        assert files and all(f.startswith(props["warehouse"]) for f in files)
        _same_rows(_as_ms(table.scan().to_arrow()), _log_rows(sh))
        # bounded queries read the bucket's Parquet files through DataFusion's object store
        _produce(sh, 500, 100)
        for query in (READ_QUERIES[2], READ_QUERIES[5], S3_WINDOWS):
            _same_answers(sh, query)


S3_WINDOWS = (
    "SELECT window_start, count(*) AS n, max(amount) AS top FROM"
    " TABLE(HOP(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '3' MINUTE))"
    " GROUP BY window_start, window_end"
)


def _same_answers(sh: StreamHouse, query: str) -> None:
    """``query`` answers the same through the stream's Iceberg table as through the log."""
    sh.sql("SET 'read.iceberg' = 'true'")
    columnar = sh.sql(query)
    through_table = columnar.to_arrow_table()
    assert columnar.stats.iceberg_files >= 1, query
    sh.sql("SET 'read.iceberg' = 'false'")
    logged = sh.sql(query)
    through_log = logged.to_arrow_table()
    assert logged.stats.iceberg_files == 0
    assert through_log.num_rows > 0, query
    _same_rows(through_table, through_log)


def _data_files(data: Path) -> set[Path]:
    return set((data / "objects" / "iceberg" / "streamhouse" / "orders" / "data").glob("*"))


TOTAL = 2_400


@pytest.mark.slow
def test_kill_9_during_iceberg_commits_neither_repeats_nor_skips(
    tmp_path: Path, metadata_url: str | None
) -> None:
    """`streamhouse compact` appends 2,400 records in snapshots of 240 and is killed with
    SIGKILL as its Parquet files land, twice: each time the table holds whole snapshots
    only, and the pass after that appends the rest, each record once."""
    data = tmp_path / "data"
    with streamhouse.connect(data, metadata=metadata_url, linger_ms=1) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, TOTAL, per_call=80)
    command = [sys.executable, "-m", "streamhouse", *_metadata_args(metadata_url)]
    command += ["--data-dir", str(data), "compact"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STREAMHOUSE_COMPACTION_LEASE_S": "1",
        "STREAMHOUSE_COMPACTION_TARGET_BYTES": "0",  # Iceberg only
        "STREAMHOUSE_ICEBERG_COMMIT_RECORDS": "240",
    }
    unreferenced = 0
    for kill_after in (1, 4):  # the kill-th new Parquet file of this run
        before = _data_files(data)
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120  # a loaded host starts Python slowly
        while len(_data_files(data) - before) < kill_after:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait()
        with streamhouse.connect(data, metadata=metadata_url) as sh:
            table = load_catalog(**sh.iceberg_catalog()).load_table("streamhouse.orders")
            rows = table.scan().to_arrow()
            referenced = {
                Path(t.file.file_path.removeprefix("file://")) for t in table.scan().plan_files()
            }
            unreferenced += len(_data_files(data) - referenced)
            covered = covered_offsets(table)
            # whole snapshots: what the summary says is covered is exactly what the table holds
            con = duckdb.connect()
            con.register("t", rows)
            held = dict(con.execute("SELECT _partition, max(_offset) FROM t GROUP BY 1").fetchall())
            assert held == {p: o for p, o in covered.items() if o >= 0}
            assert (
                rows.num_rows
                == con.execute("SELECT count(DISTINCT (_partition, _offset)) FROM t").fetchone()[0]
            )
            assert rows.num_rows < TOTAL, "killed after the pass had appended everything"
        time.sleep(1.0)  # the killed appender's lease expires
    # A kill landed between a file's write and its snapshot's commit at least once.
    assert unreferenced > 0
    with streamhouse.connect(data, metadata=metadata_url) as sh:
        assert sh.append_iceberg().failed == {}  # the next pass appends the rest
        table = _iceberg(sh)
        assert table.num_rows == TOTAL
        _each_offset_once(table, sh)
        _same_rows(_as_ms(table), _log_rows(sh))


@pytest.mark.slow
def test_serve_appends_in_the_background(tmp_path: Path) -> None:
    """`serve` appends every iceberg_freshness_s: rows produced through it reach the table."""
    data = tmp_path / "data"
    with streamhouse.connect(data) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
    env = {"STREAMHOUSE_ICEBERG_FRESHNESS_S": "0.3", "STREAMHOUSE_LINGER_MS": "1"}
    server = KafkaServer(data, env=env).start()
    try:
        with streamhouse.connect(data) as sh:
            _produce(sh, 0, 400)
            deadline = time.monotonic() + 60
            # polled by the offsets the newest snapshot records (its metadata file and
            # manifests read directly): cheap beside the server, unlike pyiceberg's catalog
            while _appended(sh) < 400:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.2)
            _same_rows(_as_ms(_iceberg(sh)), _log_rows(sh))
    finally:
        assert server.stop() == 0, server.log()


def _appended(sh: StreamHouse) -> int:
    """How many records of ``orders`` its table's current snapshot records as appended."""
    location = metadata_location(sh.log.settings, "orders")
    if location is None:
        return 0
    state = table_state(location, lambda uri: Path(uri.removeprefix("file://")).read_bytes())
    recorded = state.summaries[0][1].get(OFFSETS_PROPERTY) if state.summaries else None
    return sum(last + 1 for last in json.loads(recorded or "{}").values())


READ_QUERIES = [
    "SELECT name, count(*) AS n, sum(amount) AS total, min(ts) AS first, max(doubled) AS top"
    " FROM orders GROUP BY name",
    "SELECT count(*) AS n, sum(_offset) AS offsets, min(_timestamp) AS t FROM orders"
    " WHERE id > 1000 AND _partition = 1",
    "SELECT * FROM orders WHERE id < 30",
    "SELECT id, doubled FROM orders WHERE ts >= TIMESTAMP '2026-01-01 00:20:00' AND doubled > 100",
    "SELECT id FROM orders WHERE _offset BETWEEN 100 AND 180",
    "SELECT a.id, b.name FROM orders a JOIN orders b ON a.id = b.id + 1 WHERE a.id < 50",
    "SELECT count(*) AS n FROM (SELECT id FROM orders WHERE name = 'n3' LIMIT 20) t",
    "SELECT window_start, count(*) AS n, max(doubled) AS top, min(_offset) AS first FROM"
    " TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '5' MINUTE))"
    " GROUP BY window_start, window_end",
    # windows DataFusion adds over the Parquet scan: HOP (a WHERE on the windowed side's
    # offsets prunes that side only), CUMULATE, and a stream joined to a window aggregate
    "SELECT window_start, window_end, count(*) AS n, sum(amount) AS total FROM"
    " TABLE(HOP(TABLE orders, DESCRIPTOR(ts), INTERVAL '2' MINUTE, INTERVAL '6' MINUTE))"
    " WHERE _offset >= 20 GROUP BY window_start, window_end",
    "SELECT window_start, window_end, window_time, max(doubled) AS top FROM"
    " TABLE(CUMULATE(TABLE orders, DESCRIPTOR(ts), INTERVAL '2' MINUTE, INTERVAL '10' MINUTE))"
    " GROUP BY window_start, window_end, window_time",
    "SELECT o.id, o.amount, o.ts FROM orders o JOIN (SELECT max(amount) AS top,"
    " window_end AS te FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(ts), INTERVAL '5' MINUTE))"
    " WHERE _offset < 400 GROUP BY window_start, window_end) m ON o.amount = m.top"
    " WHERE o.ts BETWEEN m.te - INTERVAL '5' MINUTE AND m.te AND o.id > 10",
    # q5's shape: two subqueries count alike (over two windowed copies): computed once
    "SELECT a.name, a.n, a.ws FROM (SELECT name, count(*) AS n, window_start AS ws,"
    " window_end AS we FROM TABLE(HOP(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' MINUTE,"
    " INTERVAL '3' MINUTE)) GROUP BY name, window_start, window_end) AS a JOIN (SELECT"
    " max(c.n) AS top, c.ws, c.we FROM (SELECT count(*) AS n, window_start AS ws, window_end"
    " AS we FROM TABLE(HOP(TABLE orders, DESCRIPTOR(ts), INTERVAL '1' MINUTE, INTERVAL '3'"
    " MINUTE)) GROUP BY name, window_start, window_end) AS c GROUP BY c.ws, c.we) AS m"
    " ON a.ws = m.ws AND a.we = m.we AND a.n >= m.top",
]


def test_bounded_queries_read_the_table_then_the_log_tail(tmp_path: Path) -> None:
    """The table covers the first 1,500 records (3 snapshots); 400 more are only in the log;
    DeleteRecords moved a log start inside the table's range: each query answers the same
    either way (DuckDB compares them as multisets), the table's Parquet files read."""
    with streamhouse.connect(tmp_path / "data", iceberg_commit_records=500) as sh:
        sh.sql(
            "CREATE STREAM orders (id BIGINT, name VARCHAR, amount DECIMAL(10, 2),"
            " ts TIMESTAMP(3), doubled AS id * 2) WITH (partitions = '3', 'iceberg' = 'true')"
        )
        # the same topic without a computed column: its files are DataFusion's Parquet scans
        sh.sql(
            "CREATE STREAM plain (id BIGINT, name VARCHAR, amount DECIMAL(10, 2), ts TIMESTAMP(3))"
            " WITH (topic = 'orders', 'iceberg' = 'true')"
        )
        _produce(sh, 0, 1500)
        assert sh.append_iceberg().rows == {"orders": 1500, "plain": 1500}
        _produce(sh, 1500, 400)
        sh.delete_records("orders", {2: 60})
        plain = [q.replace("orders", "plain").replace("doubled", "id * 2") for q in READ_QUERIES]
        # the read's plan of the table, from its files without pyiceberg, is pyiceberg's
        location = metadata_location(sh.log.settings, "plain")
        state = table_state(location, lambda uri: Path(uri.removeprefix("file://")).read_bytes())
        table = static_table(sh.log.settings, location)
        assert state.snapshot_id == table.current_snapshot().snapshot_id
        assert len(state.summaries) == 3
        assert {(f.path, f.size) for f in state.files} == {
            (t.file.file_path, t.file.file_size_in_bytes) for t in table.scan().plan_files()
        }
        # each file has a page index: a scan filtering as it decodes skips the other pages
        for data_file in state.files:
            chunks = pq.ParquetFile(data_file.path.removeprefix("file://")).metadata
            for group in range(chunks.num_row_groups):
                for column in range(chunks.num_columns):
                    chunk = chunks.row_group(group).column(column)
                    assert chunk.has_offset_index and chunk.has_column_index, data_file.path
        for query in READ_QUERIES + plain:
            _same_answers(sh, query)


def test_the_log_is_read_where_the_table_could_differ(tmp_path: Path) -> None:
    """``_key`` (not in the table), a table that left out a record that did not fit the
    schema, and a key-compacted topic (the table keeps every version) are read from the log;
    so is a stream whose table has no snapshot yet."""
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 200)
        before = sh.sql("SELECT count(*) AS n FROM orders")
        assert before.to_arrow_table()["n"][0].as_py() == 200
        assert before.stats.iceberg_files == 0  # nothing appended yet
        sh.append_iceberg()
        keyed = sh.sql("SELECT count(_key) AS k, count(*) AS n FROM orders")
        assert keyed.to_arrow_table().to_pylist() == [{"k": 0, "n": 200}]
        assert keyed.stats.iceberg_files == 0
        plain = sh.sql("SELECT count(*) AS n FROM orders")
        assert plain.to_arrow_table()["n"][0].as_py() == 200 and plain.stats.iceberg_files == 1
        # A value that does not fit every column: the table leaves the record out, a query
        # parsing only `name` keeps it; such a table is not read.
        sh.produce("orders", [{"id": "not a number", "name": "n1"}], partition=0)
        assert sh.append_iceberg().rejected == 1
        names = sh.sql("SELECT count(name) AS n FROM orders")
        assert names.to_arrow_table()["n"][0].as_py() == 201 and names.stats.iceberg_files == 0
        sh.sql("CREATE STREAM latest (k VARCHAR, v BIGINT) WITH (topic = 'kv', 'iceberg' = 'true')")
        sh.alter_topic("kv", {"cleanup.policy": "compact"})
        sh.produce("kv", [{"k": "a", "v": i} for i in range(5)], key="a")
        assert sh.append_iceberg().rows["latest"] == 5
        assert sh.sql("SELECT count(*) AS n FROM latest").stats.iceberg_files == 0


def test_only_committed_transactions_reach_the_table(tmp_path: Path) -> None:
    """The appender stops at the last stable offset: an open transaction's records wait for
    its commit (then arrive, none skipped), an aborted one's never arrive."""
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        row = {"id": 0, "name": "n", "amount": "1.00", "ts": "2026-01-01T00:00:00"}
        aborted = sh.transaction()
        aborted.produce("orders", [{**row, "id": i} for i in range(1000, 1010)], partition=0)
        aborted.abort()
        _produce(sh, 0, 60)
        held = sh.transaction()
        held.produce("orders", [{**row, "id": i} for i in range(2000, 2020)], partition=1)
        _produce(sh, 60, 60)
        sh.append_iceberg()
        ids = set(_iceberg(sh)["id"].to_pylist())
        assert not ids & set(range(1000, 1010)), "an aborted transaction's rows were appended"
        assert not ids & set(range(2000, 2020)), "an open transaction's rows were appended"
        held.commit()
        sh.append_iceberg()
        table = _iceberg(sh)
        ids = set(table["id"].to_pylist())
        assert set(range(2000, 2020)) <= ids, "a committed transaction's rows were skipped"
        assert not ids & set(range(1000, 1010))
        _same_rows(_as_ms(table), _log_rows(sh))


def test_old_snapshots_expire_and_appends_go_on(tmp_path: Path) -> None:
    """Each pass expires the snapshots older than the retention but the current one and
    those back to the one recording the offsets: the table still equals the log, the next
    pass neither repeats nor skips, and bounded reads still read the table."""
    with streamhouse.connect(
        tmp_path / "data", iceberg_commit_records=100, iceberg_snapshot_retention_s=0
    ) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 300)
        first = sh.append_iceberg()
        assert first.snapshots >= 3 and first.expired_snapshots == first.snapshots - 1
        catalog = load_catalog(**sh.iceberg_catalog())
        table = catalog.load_table("streamhouse.orders")
        assert [s.snapshot_id for s in table.snapshots()] == [table.current_snapshot().snapshot_id]
        _produce(sh, 300, 150)
        second = sh.append_iceberg()
        assert second.rows == {"orders": 150} and second.expired_snapshots == second.snapshots
        rows = _iceberg(sh)
        _each_offset_once(rows, sh)
        _same_rows(_as_ms(rows), _log_rows(sh))
        _same_answers(sh, READ_QUERIES[0].replace(", max(doubled) AS top", ""))
        # another writer's snapshot on top: it and the one recording the offsets stay
        table = catalog.load_table("streamhouse.orders")
        recorded = table.current_snapshot().snapshot_id
        table.append(rows.slice(0, 1).cast(table.schema().as_arrow()))
        table = catalog.load_table("streamhouse.orders")
        assert expire_snapshots(table, 0, now_ms=int(time.time() * 1000) + 60_000) == 0
        table = catalog.load_table("streamhouse.orders")
        assert {s.snapshot_id for s in table.snapshots()} == {
            recorded,
            table.current_snapshot().snapshot_id,
        }
        # the next pass starts after the offsets recorded below the other writer's snapshot
        _produce(sh, 450, 30)
        third = sh.append_iceberg()
        assert third.failed == {} and third.rows == {"orders": 30}


def test_fsck_rebuild_registers_the_tables_again(tmp_path: Path) -> None:
    """``fsck --rebuild-metadata`` starts a fresh metadata database: the Iceberg tables of
    the warehouse are registered in its catalog again, at their newest metadata files, and
    Tableflow goes on after the offsets they record once the stream is declared again."""
    data = tmp_path / "data"
    with streamhouse.connect(data, iceberg_commit_records=100) as sh:
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 0, 200)
        sh.append_iceberg()
        before = _iceberg(sh)
    result = CliRunner().invoke(main, ["--data-dir", str(data), "fsck", "--rebuild-metadata"])
    assert result.exit_code == 0, result.output
    assert "Iceberg table streamhouse.orders registered again at file://" in result.output
    with streamhouse.connect(data) as sh:
        _same_rows(_iceberg(sh), before)
        # streams are not in the footers: declared again, the stream finds its table
        sh.sql(DECLARE.format(extra=", 'iceberg' = 'true'"))
        _produce(sh, 200, 50)
        assert sh.append_iceberg().rows == {"orders": 50}
        rows = _iceberg(sh)
        _each_offset_once(rows, sh)
        _same_rows(_as_ms(rows), _log_rows(sh))
