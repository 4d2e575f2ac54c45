"""The SQL read path: multi-partition scans and the pipelined source equal the plain path."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import streamhouse
from streamhouse import StreamHouse
from streamhouse.log.records import decode_batches
from streamhouse.sql import source
from streamhouse.sql.source import (
    decode_json,
    infer_schema,
    object_rows,
    read_records,
    read_source,
    with_metadata,
)
from streamhouse.workers import worker

SCHEMA = pa.schema([("a", pa.int64()), ("s", pa.string())])


@pytest.fixture
def sh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StreamHouse]:
    monkeypatch.setattr(source, "SCAN_GROUP_RECORDS", 700)  # several pipeline groups
    with streamhouse.connect(tmp_path / "data") as conn:
        conn.create_topic("e", partitions=3)
        values = [{"a": i, "s": f"x{i}"} for i in range(3000)]
        for start in range(0, 3000, 500):  # several segment objects
            conn.produce("e", values[start : start + 500])
        conn.produce("e", [b"bad", b'{"a":"q"}', b""])
        conn.produce("e", values[:1000], key=[str(i % 7) for i in range(1000)])
        yield conn


def _one_partition_at_a_time(
    sh: StreamHouse, partitions: list[int], starts: dict[int, int], ends: dict[int, int]
) -> pa.Table:
    tables = []
    for p in partitions:
        runs = [data for _, data in sh.log.reader.runs("e", p, starts.get(p, 0), ends.get(p))]
        table = decode_batches(runs, min_offset=starts.get(p, 0))
        if (end := ends.get(p)) is not None:
            table = table.filter(pc.less(table["offset"], end))
        tables.append(table.append_column("partition", pa.array([p] * len(table), pa.int32())))
    return pa.concat_tables(tables)


@pytest.mark.parametrize(
    ("partitions", "starts", "ends"),
    [
        ([0, 1, 2], {}, {}),
        ([2, 0], {}, {}),
        ([0, 1, 2], {0: 7, 1: 600, 2: 1333}, {}),
        ([0, 1, 2], {1: 100}, {0: 0, 1: 700, 2: 1}),
        ([1], {1: 1333}, {1: 1334}),
    ],
)
def test_read_records_equals_reading_one_partition_at_a_time(
    sh: StreamHouse, partitions: list[int], starts: dict[int, int], ends: dict[int, int]
) -> None:
    got = read_records(sh.log, "e", partitions, starts, ends)
    assert got.equals(_one_partition_at_a_time(sh, partitions, starts, ends))


def _plain(sh: StreamHouse, schema: pa.Schema | None, columns: set[str] | None) -> tuple:
    records = read_records(sh.log, "e")
    if schema is None:
        schema = infer_schema(records["value"])
    if columns is not None:
        schema = pa.schema([f for f in schema if f.name in columns])
    if len(schema) == 0:  # no field read: the values that are no JSON object are left out
        rows, rejected = object_rows(records)
        table = pa.table({})
    else:
        table, rows, rejected = decode_json(records["value"], schema)
    offsets = records["offset"].to_numpy()
    return with_metadata(table, records, rows), [int(offsets[i]) for i, _ in rejected]


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(
    ("schema", "columns"),
    [(SCHEMA, None), (SCHEMA, {"a", "_offset"}), (None, None), (None, {"_partition"})],
)
def test_pipelined_source_equals_the_plain_path(
    sh: StreamHouse, schema: pa.Schema | None, columns: set[str] | None, parallel: bool
) -> None:
    expected, rejected_offsets = _plain(sh, schema, columns)
    got = read_source(sh.log, "e", schema, columns, parallel=parallel)
    assert got.table.equals(expected)
    assert got.rows_read == 4003
    assert [r.offset for r in got.rejected] == rejected_offsets
    # b"bad" and b"" are no objects; {"a": "q"} only fails a parse of "a"
    assert len(got.rejected) == (3 if "a" in got.table.column_names else 2)


def test_groups_the_json_thread_falls_behind_on_are_parsed_by_the_reader(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the JSON thread held up, the reading thread parses the groups it would wait on;
    the rows come out the same and in the same order."""
    expected, rejected_offsets = _plain(sh, SCHEMA, None)
    parsed_on: list[str] = []
    parse = source.decode_json_lines

    def recording(*args: object) -> object:
        parsed_on.append(threading.current_thread().name)
        return parse(*args)

    monkeypatch.setattr(source, "decode_json_lines", recording)
    held = threading.Event()
    worker("json").submit(held.wait, 30)
    threading.Timer(1.0, held.set).start()  # the reader waits on the oldest group until then
    got = read_source(sh.log, "e", SCHEMA)
    assert got.table.equals(expected)
    assert [r.offset for r in got.rejected] == rejected_offsets
    here = threading.current_thread().name
    assert here in parsed_on and any(name != here for name in parsed_on), parsed_on


def test_a_parallel_read_decodes_and_parses_its_groups_on_the_scan_pool(
    sh: StreamHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bounded query's read (``parallel``) decodes and parses each group whole on the
    ``scan`` pool's threads, not on the reader's: the rows and rejections are those of the
    plain path, in its order."""
    expected, rejected_offsets = _plain(sh, SCHEMA, None)
    decoded_on: list[str] = []
    decode = source.RunScan.decode

    def recording(self: source.RunScan, *args: object, **kwargs: object) -> object:
        decoded_on.append(threading.current_thread().name)
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(source.RunScan, "decode", recording)
    got = read_source(sh.log, "e", SCHEMA, parallel=True)
    assert got.table.equals(expected)
    assert [r.offset for r in got.rejected] == rejected_offsets
    assert len(decoded_on) > 2
    assert all(name.startswith("streamhouse-scan") for name in decoded_on), decoded_on


def test_decode_json_reports_nulls_and_keeps_chunk_indices() -> None:
    values = pa.chunked_array(
        [pa.array([b'{"a":1}', None], pa.binary()), pa.array([b"", b'{"a":2}'], pa.binary())]
    )
    table, rows, rejected = decode_json(values, SCHEMA)
    assert table["a"].to_pylist() == [1, 2]
    assert rows.tolist() == [0, 3]
    assert rejected == [(1, "empty or null value"), (2, "empty or null value")]


def test_pretty_printed_values_parse_and_bad_ones_are_reported(tmp_path: Path) -> None:
    """Values spanning lines (indented JSON) among one-line ones: the reader finds out and
    parses them all; a value that is not JSON is still reported by offset."""
    rows = [{"a": i, "s": f"x{i}"} for i in range(40)]
    values = [json.dumps(r, indent=2 if i % 3 == 0 else None).encode() for i, r in enumerate(rows)]
    values[17] = b"{not json"
    with streamhouse.connect(tmp_path / "data") as conn:
        conn.create_topic("p", partitions=1)
        conn.produce("p", values)
        got = read_source(conn.log, "p", SCHEMA)
    assert got.table["a"].to_pylist() == [i for i in range(40) if i != 17]
    assert [(r.offset, r.value) for r in got.rejected] == [(17, b"{not json")]
