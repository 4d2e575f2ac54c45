"""Streaming scans of bounded queries (issue 23): answers equal the whole-table path and
DuckDB at random segment and batch states; LIMIT and WHERE on the metadata columns are
checked by what the scan read; the memory limit spills or fails naming itself; answers stream
out before the scan has read everything."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner

import streamhouse
from streamhouse import StreamHouse
from streamhouse.cli import main
from streamhouse.errors import ConfigError, SqlError
from streamhouse.log.metadata import SegmentRow
from streamhouse.sql import scan as scan_module
from streamhouse.sql import source as source_module
from streamhouse.sql.scan_cache import ColumnarCache

PARTITIONS = 3
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

QUERIES = [
    "SELECT k, count(*) AS n, sum(x) AS sx, min(s) AS lo FROM t GROUP BY k ORDER BY k",
    "SELECT count(*) AS n, sum(x) AS sx FROM t WHERE _offset >= {mid}",
    "SELECT _partition, count(*) AS n, max(_offset) AS top FROM t "
    "WHERE _partition IN (0, 2) GROUP BY _partition ORDER BY _partition",
    "SELECT _partition, _offset, k, s FROM t WHERE _offset BETWEEN {low} AND {mid} "
    "AND x > 10 ORDER BY _partition, _offset",
    "SELECT count(*) AS n FROM t WHERE _timestamp >= TIMESTAMP '{tail_time}'",
    "SELECT k, count(*) AS n FROM t WHERE _partition = 1 AND _offset < {mid} GROUP BY k ORDER BY k",
    "SELECT a.k, count(*) AS n FROM t a JOIN (SELECT k FROM t WHERE x < 50) b ON a.k = b.k "
    "GROUP BY a.k ORDER BY a.k",
]


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups and pieces of a few hundred records, so every topic here makes many."""
    monkeypatch.setattr(source_module, "SCAN_GROUP_RECORDS", 300)
    monkeypatch.setattr(scan_module, "SCAN_GROUP_RECORDS", 300)
    monkeypatch.setattr(scan_module, "PIECE_RECORDS", 64)
    monkeypatch.setattr(scan_module, "FIRST_PIECE_RECORDS", 16)


def _fill(sh: StreamHouse, rng: random.Random) -> list[dict]:
    """A stream ``t`` over a topic of random objects and batches; returns every stored row
    with its metadata as DuckDB will read it."""
    sh.sql(
        "CREATE STREAM t (k BIGINT, x DOUBLE, s STRING) "
        f"WITH ('topic' = 'events', 'partitions' = '{PARTITIONS}')"
    )
    rows: list[dict] = []
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    i = 0
    for _ in range(rng.randint(12, 20)):  # one object each
        partition = rng.randrange(PARTITIONS)
        values: list[bytes] = []
        stamps: list[int] = []
        for _ in range(rng.randint(1, 160)):
            i += 1
            stamp = BASE_MS + i * 1000
            row = {"k": rng.randrange(7), "x": rng.randrange(100) + 0.5, "s": f"v{i}"}
            values.append(json.dumps(row).encode())
            offset = next_offset[partition] + len(values) - 1
            rows.append({**row, "_partition": partition, "_offset": offset, "_ts": stamp})
            stamps.append(stamp)
        sh.produce("events", values, partition=partition, timestamp=stamps)
        next_offset[partition] += len(values)
    return rows


def _duckdb(rows: list[dict], sql: str) -> list[tuple]:
    con = duckdb.connect()
    table = pa.Table.from_pylist(rows).rename_columns(
        ["k", "x", "s", "_partition", "_offset", "_timestamp"]
    )
    table = table.set_column(5, "_timestamp", table["_timestamp"].cast(pa.timestamp("ms")))
    con.register("t", table)
    return con.sql(sql).fetchall()


def _answer(sh: StreamHouse, sql: str, *, stream: bool) -> list[tuple]:
    sh.engine.stream_sources = stream
    try:
        return sh.sql(sql).fetchall()
    finally:
        sh.engine.stream_sources = True


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answers_equal_the_whole_table_path_and_duckdb(
    tmp_path: Path, small_pieces: None, seed: int
) -> None:
    rng = random.Random(seed)
    with streamhouse.connect(tmp_path / "data") as sh:
        rows = _fill(sh, rng)
        if seed == 3:  # the log start inside a stored batch: never read below it
            start = {p: rng.randint(1, 40) for p in range(PARTITIONS)}
            sh.delete_records("events", start)
            rows = [r for r in rows if r["_offset"] >= start[r["_partition"]]]
        top = max(r["_offset"] for r in rows)
        params = {
            "low": top // 5,
            "mid": top // 2,
            "tail_time": "2026-01-01 00:{:02d}:{:02d}".format(
                *divmod(len(rows) * 3 // 4 % 3600, 60)
            ),
        }
        sh.sql(
            "CREATE STREAM loose (k BIGINT, x DOUBLE, s STRING) WITH ('topic' = 'events', "
            "'json.ignore-parse-errors' = 'true')"
        )
        cache = sh.engine.scan_cache
        for template in QUERIES:
            sql = template.format(**params)
            loose = sql.replace("FROM t", "FROM loose")
            whole = _answer(sh, loose, stream=False)
            assert whole == _duckdb(rows, sql), sql
            sh.engine.scan_cache = None  # decoded piece by piece
            assert _answer(sh, loose, stream=True) == whole, sql
            sh.engine.scan_cache = cache  # cold, then warm
            assert _answer(sh, loose, stream=True) == whole, sql
            hits = cache.hits
            assert _answer(sh, loose, stream=True) == whole, sql
            assert cache.hits > hits


def test_a_value_that_does_not_parse_fails_the_stream_naming_it(
    tmp_path: Path, small_pieces: None
) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql(
            "CREATE STREAM t (k BIGINT) WITH ('topic' = 'e', 'json.ignore-parse-errors' = 'false')"
        )
        sh.produce("e", [b'{"k": %d}' % i for i in range(500)] + [b"oops"])
        with pytest.raises(
            SqlError, match=r"partition 0 offset 500: .*'json.ignore-parse-errors' is 'false'"
        ):
            sh.sql("SELECT sum(k) FROM t").to_arrow_table()
        relation = sh.sql("SELECT sum(k) AS n FROM t WHERE _offset < 500")
        assert relation.fetchall() == [
            (sum(range(500)),)
        ]  # the bad record is pruned away, never read


@pytest.mark.parametrize(
    "window",
    [
        "TUMBLE(TABLE {s}, DESCRIPTOR(ts), INTERVAL '10' SECOND)",
        "HOP(TABLE {s}, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)",
        "CUMULATE(TABLE {s}, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)",
    ],
)
def test_a_window_over_a_stream_reads_its_streaming_scan_and_its_bad_values(
    tmp_path: Path, small_pieces: None, window: str
) -> None:
    """Windows of a stream without an Iceberg table are added by DataFusion over the stream's
    streaming scan: the counts are DuckDB's over the good rows; a value that does not parse is
    left out and reported (or fails the query naming it, 'json.ignore-parse-errors' false)."""
    with streamhouse.connect(tmp_path / "data") as sh:
        for name, ignore in (("loose", "true"), ("strict", "false")):
            sh.sql(
                f"CREATE STREAM {name} (k BIGINT, ts TIMESTAMP(3)) WITH ('topic' = 'e', "
                f"'json.ignore-parse-errors' = '{ignore}')"
            )
        good = [{"k": i % 3, "ts": BASE_MS + i * 700} for i in range(900)]
        sh.produce("e", good[:450])
        sh.produce("e", [b'{"k": 1, "ts": "not a time"}'])
        sh.produce("e", good[450:])
        select = (
            "SELECT k, window_start, window_end, count(*) AS n FROM TABLE({w}) "
            "GROUP BY k, window_start, window_end ORDER BY k, window_start, window_end"
        )
        scans = []
        original = scan_module.TopicScan.__init__

        def recording(self: scan_module.TopicScan, *args: object, **kwargs: object) -> None:
            original(self, *args, **kwargs)
            scans.append(self)

        scan_module.TopicScan.__init__ = recording  # type: ignore[method-assign]
        try:
            relation = sh.sql(select.format(w=window.format(s="loose")))
            got = [tuple(r) for r in relation.fetchall()]
        finally:
            scan_module.TopicScan.__init__ = original  # type: ignore[method-assign]
        assert [s.topic for s in scans] == ["e"]  # the window's rows came from the scan
        assert [r.offset for r in scans[0].rejected] == [450]
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        rows = pa.table({"k": [r["k"] for r in good], "ms": [r["ts"] for r in good]})
        con.register("loose", rows)
        duck = window.format(s="loose").replace("TABLE loose", "loose")
        size, slide = 10_000, 5_000 if "TUMBLE" not in window else 10_000
        expected = _window_counts(con, duck, size, slide, cumulate="CUMULATE" in window)
        assert got == expected
        with pytest.raises(
            SqlError, match=r"partition 0 offset 450: .*'json.ignore-parse-errors' is 'false'"
        ):
            sh.sql(select.format(w=window.format(s="strict"))).to_arrow_table()


def _window_counts(
    con: duckdb.DuckDBPyConnection, _tvf: str, size: int, slide: int, cumulate: bool
) -> list[tuple]:
    """Per key, each window's count of rows (epoch-aligned windows of ``size`` ms, one
    every ``slide`` ms; cumulating: the ``slide``-ms steps of each ``size``-ms window)."""
    indexes = ", ".join(f"({i})" for i in range(size // slide))
    steps = ", ".join(f"({i})" for i in range(1, size // slide + 1))
    if cumulate:
        windows = f"""
            SELECT k, ms - ms % {size} AS ws, ms - ms % {size} + step * {slide} AS we
            FROM loose,
                 (VALUES {steps}) AS r(step)
            WHERE ms - ms % {size} + step * {slide} > ms"""
    else:
        windows = f"""
            SELECT k, ms - ms % {slide} - i * {slide} AS ws,
                   ms - ms % {slide} - i * {slide} + {size} AS we
            FROM loose, (VALUES {indexes}) AS r(i)"""
    return [
        tuple(r)
        for r in con.sql(
            f"SELECT k, make_timestamp(ws * 1000), make_timestamp(we * 1000), count(*) "
            f"FROM ({windows}) GROUP BY k, ws, we ORDER BY k, ws, we"
        ).fetchall()
    ]


@pytest.fixture
def many_objects(tmp_path: Path, small_pieces: None) -> Iterator[tuple[StreamHouse, list]]:
    """A declared stream over 40 objects, one partition each (round-robin), 100 records
    each, timestamps rising by a second per record."""
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql("CREATE STREAM t (k BIGINT, s STRING) WITH ('topic' = 'e', 'partitions' = '4')")
        for n in range(40):
            base = n * 100
            sh.produce(
                "e",
                [{"k": base + i, "s": f"v{base + i}"} for i in range(100)],
                partition=n % 4,
                timestamp=[BASE_MS + (base + i) * 1000 for i in range(100)],
            )
        rows = [r for p in range(4) for r in sh.log.metadata.segments("e", p)]
        yield sh, rows


def test_limit_without_order_by_stops_reading(many_objects: tuple[StreamHouse, list]) -> None:
    sh, rows = many_objects
    full = sh.sql("SELECT count(*) AS n FROM t")
    assert full.fetchall() == [(4000,)]
    assert full.stats.objects_read == 40
    assert full.stats.bytes_read == sum(sh.log.store.size(r.object_key) for r in rows)
    limited = sh.sql("SELECT k, s FROM t LIMIT 5")
    got = limited.to_arrow_table()
    assert got.num_rows == 5
    assert set(got["s"].to_pylist()) <= {f"v{k}" for k in range(4000)}
    # each fragment has read at most its first group (of whole objects) when the limit is met
    assert limited.stats.objects_read <= 2 * scan_module.SCAN_GROUP_RECORDS // 100 + 2
    assert limited.stats.rows_read < 1000
    ordered = sh.sql("SELECT k FROM t ORDER BY k DESC LIMIT 3")  # ORDER BY reads everything
    assert ordered.fetchall() == [(3999,), (3998,), (3997,)]
    assert ordered.stats.objects_read == 40


@pytest.mark.parametrize(
    ("where", "keeps"),
    [
        # offsets of partition p: object n (n % 4 == p) holds [n // 4 * 100, n // 4 * 100 + 99]
        ("_offset >= 950", lambda n: n // 4 == 9),
        ("_offset > 899 AND _offset < 905", lambda n: n // 4 == 9),
        ("_offset = 150", lambda n: n // 4 == 1),
        ("_partition = 2", lambda n: n % 4 == 2),
        ("_partition IN (1, 3) AND _offset BETWEEN 0 AND 99", lambda n: n % 2 == 1 and n < 4),
        ("_timestamp >= TIMESTAMP '2026-01-01 01:05:00'", lambda n: (n + 1) * 100 > 3900),
        ("k >= 3900", lambda n: True),  # not a metadata column: no pruning
        ("_offset >= 950 OR k = 1", lambda n: True),  # a disjunction: no pruning
    ],
)
def test_where_on_metadata_columns_prunes_segments(
    many_objects: tuple[StreamHouse, list], where: str, keeps
) -> None:
    sh, _ = many_objects
    relation = sh.sql(f"SELECT count(*) AS n, sum(k) AS sk FROM t WHERE {where}")
    got = relation.fetchall()
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE t AS SELECT i AS k, i % 4 AS _partition, "
        "(i // 400) * 100 + i % 100 AS _offset, "
        "TIMESTAMP '2026-01-01' + to_seconds(i) AS _timestamp FROM range(4000) r(i)"
    )
    # record i lies in object i // 100, partition (i // 100) % 4
    con.execute("UPDATE t SET _partition = (k // 100) % 4, _offset = (k // 400) * 100 + k % 100")
    assert got == con.sql(f"SELECT count(*), sum(k) FROM t WHERE {where}").fetchall()
    assert relation.stats.objects_read == sum(1 for n in range(40) if keeps(n))


def test_answers_stream_out_before_the_scan_ends(many_objects: tuple[StreamHouse, list]) -> None:
    sh, _ = many_objects
    relation = sh.sql("SELECT k, s, _offset FROM t WHERE k % 2 = 0")
    reader = relation.to_arrow_reader()
    first = reader.read_next_batch()
    assert 0 < first.num_rows < 2000
    assert relation.stats.objects_read == 0  # counted once the answer is read to its end
    rest = reader.read_all()
    assert first.num_rows + rest.num_rows == 2000
    assert sorted(first["k"].to_pylist() + rest["k"].to_pylist()) == list(range(0, 4000, 2))
    assert relation.stats.objects_read == 40


def test_memory_limit_spills_or_fails_naming_the_limit(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data", memory_limit="48MB") as sh:
        assert sh.engine.memory_limit == 48 << 20
        sh.create_topic("e", partitions=2)
        for start in range(0, 400_000, 100_000):
            sh.produce(
                "e",
                [
                    b'{"a": %d, "s": "%s"}' % (i, b"x%d" % i * 16)
                    for i in range(start, start + 100_000)
                ],
            )
        # a sort of about 60 MB of rows: spilled, and right (under 64 MB: at 48 MB the merge
        # of its spilled runs beside two partitions' scans sometimes found no room left)
        sh.sql("SET 'memory.limit' = '64MB'")
        got = sh.sql("SELECT a FROM e ORDER BY s DESC").to_arrow_table()
        sh.sql("SET 'memory.limit' = '48MB'")
        expected = sorted(range(400_000), key=lambda i: f"x{i}" * 16, reverse=True)
        assert got["a"].to_pylist() == expected
        # a hash join's build side cannot spill: a clear error naming the limit
        with pytest.raises(SqlError, match=r"needs more memory than memory\.limit = 48 MB allows"):
            sh.sql("SELECT count(*) FROM e x JOIN e y ON x.s = y.s").to_arrow_table()
        sh.sql("SET 'memory.limit' = '1GB'")
        assert sh.engine.memory_limit == 1 << 30
        assert sh.sql("SELECT count(*) FROM e x JOIN e y ON x.s = y.s").fetchall() == [(400_000,)]
        with pytest.raises(ConfigError, match="memory limit 'lots' is not a size"):
            sh.sql("SET 'memory.limit' = 'lots'")


def test_cli_memory_limit(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with streamhouse.connect(data) as sh:
        sh.create_topic("e")
        sh.produce("e", [{"a": i} for i in range(100)])
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "--data-dir",
            data,
            "query",
            "--memory-limit",
            "64MB",
            "--format",
            "csv",
            "SELECT count(*) AS n FROM e",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines() == ['"n"', "100"]
    bad = runner.invoke(main, ["--data-dir", data, "query", "--memory-limit", "x", "SELECT 1"])
    assert bad.exit_code == 1
    assert "memory limit 'x' is not a size" in bad.stderr


def test_columnar_cache_is_only_a_cache(many_objects: tuple[StreamHouse, list]) -> None:
    sh, _ = many_objects
    cache = sh.engine.scan_cache
    sql = "SELECT k % 10 AS m, count(*) AS n, sum(k) AS sk, max(s) AS top FROM t GROUP BY m ORDER BY m"
    cold = sh.sql(sql)
    expected = cold.fetchall()
    assert cold.stats.objects_read == 40 and cold.stats.cached_runs == 0
    warm = sh.sql(sql)
    assert warm.fetchall() == expected
    assert (warm.stats.objects_read, warm.stats.cached_runs) == (0, 40)
    files = sorted(cache.directory.iterdir())
    assert len(files) == 40
    # a flipped byte in one file, another cut short: both found, decoded again, answer the same
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[0].write_bytes(bytes(data))
    files[1].write_bytes(files[1].read_bytes()[:100])
    damaged = sh.sql(sql)
    assert damaged.fetchall() == expected
    assert (damaged.stats.objects_read, damaged.stats.cached_runs) == (2, 38)
    assert cache.damaged == 2
    # deleting the whole cache loses nothing
    for path in cache.directory.iterdir():
        path.unlink()
    sh.engine.scan_cache = ColumnarCache(cache.directory, cache.capacity)
    again = sh.sql(sql)
    assert again.fetchall() == expected
    assert again.stats.objects_read == 40


def test_a_cached_run_keeps_its_partition_offsets_and_keys_as_numbers(tmp_path: Path) -> None:
    """A run's partition, offsets that run one by one and keys that are all null are not
    written as columns but made again on reading; other offsets and keys are written."""
    n = 5000
    cache = ColumnarCache(tmp_path / "cache", 1 << 30)
    plain = pa.table(
        {
            "k": pa.array(range(n)),
            "_offset": pa.array(range(700, 700 + n)),
            "_partition": pa.array([3] * n, pa.int32()),
            "_timestamp": pa.array([1767225600000 + i for i in range(n)], pa.timestamp("ms")),
            "_key": pa.nulls(n, pa.string()),
        }
    )
    plain = pa.Table.from_batches(plain.to_batches(max_chunksize=1024))  # pieces, as parsed
    gaps = plain.set_column(1, "_offset", pa.array([700 + 2 * i for i in range(n)]))
    keyed = plain.set_column(4, "_key", pa.array([None] * (n - 1) + ["last"]))
    for name, table in {"plain": plain, "gaps": gaps, "keyed": keyed}.items():
        cache.put(f"{name}.arrow", table)
        again = cache.get(f"{name}.arrow")
        assert again is not None and again.equals(table) and again.schema == table.schema
    size = {p.stem: p.stat().st_size for p in cache.directory.iterdir()}
    # no offsets (8 bytes a row), partitions (4) nor keys (4-byte offsets) in the plain run
    assert size["gaps"] - size["plain"] >= 8 * n and size["keyed"] - size["plain"] >= 4 * n
    assert cache.damaged == 0


def test_columnar_cache_keeps_within_its_size(many_objects: tuple[StreamHouse, list]) -> None:
    sh, _ = many_objects
    one_run = sh.engine.scan_cache
    sh.sql("SELECT k FROM t WHERE _offset < 100 AND _partition = 0").fetchall()
    size = next(one_run.directory.iterdir()).stat().st_size
    sh.engine.scan_cache = small = ColumnarCache(one_run.directory, 5 * size + size // 2)
    assert sh.sql("SELECT sum(k) AS sk FROM t").fetchall() == [(sum(range(4000)),)]
    sizes = [p.stat().st_size for p in small.directory.iterdir()]
    assert len(sizes) <= 6 and sum(sizes) <= small.capacity + size
    assert sh.sql("SELECT sum(k) AS sk FROM t").fetchall() == [(sum(range(4000)),)]


def test_a_scan_larger_than_the_cache_keeps_what_it_cached_first(
    many_objects: tuple[StreamHouse, list],
) -> None:
    sh, _ = many_objects
    one_run = sh.engine.scan_cache
    sh.sql("SELECT k FROM t WHERE _offset < 100 AND _partition = 0").fetchall()
    size = next(one_run.directory.iterdir()).stat().st_size
    for path in one_run.directory.iterdir():
        path.unlink()
    sh.engine.scan_cache = small = ColumnarCache(one_run.directory, 5 * size + size // 2)
    cold = sh.sql("SELECT sum(k) AS sk FROM t")
    assert cold.fetchall() == [(sum(range(4000)),)]
    cached = {path.name for path in small.directory.iterdir()}
    assert 1 <= len(cached) <= 6  # (two fragments may each add one past the bound at once)
    # the repeat reads those runs from the cache (least recently used eviction alone would
    # have pushed each out before the repeat reached it) and evicts none of them
    warm = sh.sql("SELECT sum(k) AS sk FROM t")
    assert warm.fetchall() == [(sum(range(4000)),)]
    assert warm.stats.cached_runs == len(cached)
    assert warm.stats.objects_read == cold.stats.objects_read - len(cached)
    assert cached <= {path.name for path in small.directory.iterdir()}


def test_a_topic_pruned_to_nothing_keeps_its_inferred_columns(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.create_topic("e", partitions=2)
        sh.produce("e", [{"k": i, "s": f"v{i}"} for i in range(50)], partition=1)
        empty = sh.sql("SELECT k, s FROM e WHERE _offset >= 1000000").to_arrow_table()
        assert (empty.num_rows, empty.column_names) == (0, ["k", "s"])
        tail = sh.sql("SELECT k FROM e WHERE _partition = 1 AND _offset >= 45 ORDER BY k")
        assert tail.fetchall() == [(k,) for k in range(45, 50)]


def test_an_unusable_cache_directory_leaves_queries_uncached(tmp_path: Path) -> None:
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.create_topic("e")
        sh.produce("e", [{"a": i} for i in range(10)])
        (tmp_path / "data" / "scan-cache").write_text("not a directory")
        for _ in range(2):
            relation = sh.sql("SELECT sum(a) AS s FROM e")
            assert relation.fetchall() == [(45,)]
            assert (relation.stats.objects_read, relation.stats.cached_runs) == (2, 0)


def test_a_wide_topic_of_short_runs_is_cached_run_by_run(tmp_path: Path) -> None:
    """One object holding a short run of each of 200 partitions (and two long runs): cold,
    the short runs are decoded together; every run is cached on its own, and warm answers,
    from the cache alone, are the same as DuckDB's."""
    rng = random.Random(5)
    with streamhouse.connect(tmp_path / "data") as sh:
        sh.sql("CREATE STREAM w (k BIGINT, x DOUBLE) WITH ('topic' = 'wide', 'partitions' = '200')")
        rows: list[dict] = []
        for partition in range(200):
            count = 400 if partition in (17, 150) else rng.randint(1, 5)
            for offset in range(count):
                rows.append({"k": rng.randrange(9), "x": rng.random(), "_partition": partition,
                             "_offset": offset})  # fmt: skip
        payloads = []
        for partition in range(200):
            values = [json.dumps({"k": r["k"], "x": r["x"]}).encode()
                      for r in rows if r["_partition"] == partition]  # fmt: skip
            payloads += sh.batches("wide", values, partition=partition)
        sh.append_batches("wide", payloads)
        assert len(sh.log.metadata.segments("wide", 0)) == 1
        sql = (
            "SELECT k, count(*) AS n, sum(x) AS sx, max(_offset) AS o, "
            "count(DISTINCT _partition) AS p FROM w GROUP BY k ORDER BY k"
        )
        con = duckdb.connect()
        con.register("w", pa.Table.from_pylist(rows))
        expected = [tuple(round(v, 6) if isinstance(v, float) else v for v in row)
                    for row in con.sql(sql).fetchall()]  # fmt: skip
        for runs_cached in (0, 200):
            relation = sh.sql(sql)
            got = [tuple(round(v, 6) if isinstance(v, float) else v for v in row)
                   for row in relation.fetchall()]  # fmt: skip
            assert got == expected
            assert relation.stats.cached_runs == runs_cached
        assert len(list(sh.engine.scan_cache.directory.iterdir())) == 200


def _run(partition: int, base: int, last: int) -> SegmentRow:
    return SegmentRow("obj", "t", partition, base, last, 0, 1, 0, 0, last - base + 1, 0)


def test_decoded_runs_are_cut_run_by_run_and_those_beyond_the_key_bits_left_uncached() -> None:
    """``_run_slices`` gives each run its own records (none for a run whose records were all
    left out, such as an aborted transaction's), and nothing when a run's partition or
    offsets do not fit the composite key, even if none of its records were decoded."""
    runs = [_run(0, 0, 2), _run(0, 3, 4), _run(1, 0, 1), _run(3, 7, 7)]
    table = pa.table({"_partition": [0, 0, 0, 1, 1, 3], "_offset": [0, 1, 2, 0, 1, 7]})
    slices = scan_module._run_slices(table, runs)
    assert [s.to_pylist() for s in slices] == [
        table.slice(0, 3).to_pylist(),
        [],
        table.slice(3, 2).to_pylist(),
        table.slice(5, 1).to_pylist(),
    ]
    empty = table.slice(0, 0)
    assert scan_module._run_slices(empty, [_run(1 << 19, 0, 0)]) == []
    assert scan_module._run_slices(table.slice(0, 3), [runs[0], _run(0, 1 << 44, 1 << 44)]) == []


@pytest.mark.parametrize(("asked", "backend"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_arrow_buffers_come_from_the_system_allocator_unless_asked_otherwise(
    tmp_path: Path, asked: str | None, backend: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if asked is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = asked
    script = (
        "import sys, pyarrow as pa, streamhouse\n"
        "with streamhouse.connect(sys.argv[1]) as sh:\n"
        "    print(sh.sql('SELECT 1 AS one').to_arrow_table().num_rows,"
        " pa.default_memory_pool().backend_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", backend]


def test_columnar_cache_default_follows_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamhouse.sql import scan_cache as scan_cache_module

    def capacity(**settings: object) -> int:
        sh = streamhouse.connect(tmp_path / "data", **settings)
        try:
            return 0 if sh.engine.scan_cache is None else sh.engine.scan_cache.capacity
        finally:
            sh.close()

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert capacity() == pytest.approx(free // 4, rel=0.01)
    # what the cache already holds counts as its own: the bound does not shrink as it fills
    held = tmp_path / "data" / "scan-cache" / ("0" * 40 + ".arrow")
    held.parent.mkdir(parents=True, exist_ok=True)
    held.write_bytes(os.urandom(8 << 20))
    os.fsync(os.open(held, os.O_RDONLY))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert capacity() == pytest.approx((free + (8 << 20)) // 4, rel=0.01)
    monkeypatch.setattr(scan_cache_module, "DEFAULT_CAP", 3 << 20)
    assert capacity() == 3 << 20
    # an explicit setting wins, from connect() or the environment
    assert capacity(scan_cache_bytes=12345) == 12345
    assert capacity(scan_cache_bytes="2GB") == 2 << 30
    monkeypatch.setenv("STREAMHOUSE_SCAN_CACHE_BYTES", "0")
    assert capacity() == 0
    monkeypatch.setenv("STREAMHOUSE_SCAN_CACHE_BYTES", "lots")
    with pytest.raises(ConfigError, match="scan_cache_bytes 'lots' is not a size"):
        capacity()
