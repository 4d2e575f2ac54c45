"""JSON values to Arrow: DuckDB's transform with pyarrow for the rows it cannot vouch for."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from streamhouse.log.records import JsonLines
from streamhouse.sql.json_values import JsonParser, newline_joined, parse_json

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("score", pa.float64()),
        ("ok", pa.bool_()),
        ("t", pa.timestamp("ms")),
    ]
)


def _parse(values: list[bytes], schema: pa.Schema = SCHEMA) -> tuple[list[dict], list, list]:
    table, rows, bad = _parse_table(values, schema)
    return table.to_pylist(), rows, bad


def _parse_table(values: list[bytes], schema: pa.Schema = SCHEMA) -> tuple[pa.Table, list, list]:
    """Parsed from newline-delimited text, and (the same answer) from an array of values."""
    array = pa.array(values, pa.binary())
    lines = JsonLines(np.arange(len(values)), lambda: newline_joined(array))
    table, rows, bad = parse_json(lines, None, schema)
    assert table.schema == schema
    for as_array in (array, array.cast(pa.binary_view()), array.cast(pa.large_binary())):
        unread = JsonLines(np.arange(len(values)), lambda: newline_joined(array))
        again, again_rows, again_bad = parse_json(unread, as_array, schema)
        assert again.equals(table) and again_rows.tolist() == rows.tolist() and again_bad == bad
    return table, rows.tolist(), bad


def _pyarrow(values: list[bytes], schema: pa.Schema = SCHEMA) -> tuple[list[dict], list, list]:
    buffer, bounds = newline_joined(pa.array(values, pa.binary()))
    table, rows, bad = JsonParser(buffer, bounds, schema).parse()
    return table.to_pylist(), rows.tolist(), bad


def test_rows_duckdb_cannot_vouch_for_are_parsed_or_rejected_by_pyarrow() -> None:
    values = [
        b'{"id": 1, "name": "a", "score": 1.5, "ok": true, "t": "2026-01-01 00:00:00.250"}',
        b'{"id": 2}',  # absent fields: NULL, from DuckDB
        b'{"id": null, "name": null}',
        b'{"id": "seven"}',  # does not convert: pyarrow rejects it
        b"[1, 2]",  # not an object
        b"5",
        b"null",
        b'{"id": 3, "t": 1767225600000}',  # epoch milliseconds: pyarrow reads them
        b'{"id": 4, "t": "2026-01-01T02:00:00+02:00"}',  # an offset is honoured
        b'{"id": 5, "name": {"nested": 1}, "score": {"x": 1}}',
        b'{"id": 6, "name": "\\u00e9\\n"}',
    ]
    rows, picked, bad = _parse(values)
    assert picked == [0, 1, 2, 7, 8, 10]
    assert [r for r, _ in bad] == [3, 4, 5, 6, 9]
    assert all(reason for _, reason in bad)
    midnight = datetime(2026, 1, 1)
    assert rows[0] == {
        "id": 1,
        "name": "a",
        "score": 1.5,
        "ok": True,
        "t": datetime(2026, 1, 1, 0, 0, 0, 250000),
    }
    assert rows[1] == {"id": 2, "name": None, "score": None, "ok": None, "t": None}
    assert rows[2]["id"] is None
    assert rows[3]["t"] == midnight
    assert rows[4]["t"] == midnight
    assert rows[5]["name"] == "é\n"


def test_values_pyarrow_accepts_come_out_the_same() -> None:
    values = [
        json.dumps({"id": i, "name": f"n{i}", "score": i / 4, "ok": i % 2 == 0}).encode()
        for i in range(50)
    ] + [b'{"t": "2026-03-04T05:06:07.089Z", "id": -1}', b'  {"id": 7}  ', b'{"id":\n 8}']
    assert _parse(values) == _pyarrow(values)


def test_epoch_milliseconds_and_text_timestamps_read_alike() -> None:
    epoch = [json.dumps({"id": i, "t": 1767225600000 + i}).encode() for i in range(20)]
    text = [json.dumps({"id": i, "t": f"2026-01-01T00:00:00.{i:03d}Z"}).encode() for i in range(20)]
    for values in (epoch, text, epoch + text, text + epoch, epoch):
        rows, picked, bad = _parse(values)
        assert (rows, picked, bad) == _pyarrow(values)
        assert [r["t"] for r in rows] == [
            datetime(2026, 1, 1, 0, 0, 0, r["id"] * 1000) for r in rows
        ]


def test_a_value_that_is_not_json_is_found_among_many() -> None:
    values = [json.dumps({"id": i}).encode() for i in range(1000)]
    values[613] = b'{"id": 613'
    values[900] = b"\xff\xfe"
    rows, picked, bad = _parse(values)
    assert [r for r, _ in bad] == [613, 900]
    assert picked == [i for i in range(1000) if i not in (613, 900)]
    assert [r["id"] for r in rows] == picked


def test_a_batch_of_mostly_bad_values_keeps_its_good_ones() -> None:
    values = [json.dumps({"id": i}).encode() if i % 3 == 0 else b"a,b,%d" % i for i in range(300)]
    rows, picked, bad = _parse(values)
    assert picked == list(range(0, 300, 3))
    assert [r["id"] for r in rows] == picked
    assert [r for r, _ in bad] == [i for i in range(300) if i % 3]
    assert all(reason for _, reason in bad)


def test_names_that_differ_only_in_case_are_two_fields() -> None:
    schema = pa.schema([("a", pa.int64()), ("A", pa.int64())])
    values = [b'{"a": %d, "A": %d}' % (i, -i) for i in range(1, 50)]
    rows, picked, bad = _parse(values, schema)
    assert rows == [{"a": i, "A": -i} for i in range(1, 50)] and bad == []


def test_schemas_with_other_types_are_read_by_pyarrow_alone() -> None:
    schema = pa.schema([("xs", pa.list_(pa.int64())), ("d", pa.decimal128(10, 2))])
    values = [b'{"xs": [1, 2], "d": 1.25}', b'{"xs": [1, "x"]}']
    assert _parse(values, schema) == _pyarrow(values, schema)
    assert [r for r, _ in _parse(values, schema)[2]] == [1]


_field_values = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from(["2026-01-01 00:00:00", "2026-01-01T00:00:00Z", "soon"]),
)
_values = st.one_of(
    st.dictionaries(st.sampled_from(SCHEMA.names), _field_values, max_size=5).map(
        lambda d: json.dumps(d).encode()
    ),
    st.sampled_from([b"[1]", b"7", b'"x"', b"{not json", b"null"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_values, min_size=1, max_size=40), st.integers(1, 39))
def test_a_rows_fate_does_not_depend_on_its_neighbours(values: list[bytes], cut: int) -> None:
    """Parsing all the values at once equals parsing them in two parts: each row is read or
    rejected by its own text (a micro-batch boundary never changes what a row becomes)."""
    whole_rows, whole_picked, whole_bad = _parse_table(values)
    cut = min(cut, len(values))
    parts = [(values[:cut], 0), (values[cut:], cut)] if cut < len(values) else [(values, 0)]
    tables, picked, bad = [], [], []
    for part, base in parts:
        table, p, b = _parse_table(part)
        tables.append(table)
        picked += [i + base for i in p]
        bad += [(i + base, reason) for i, reason in b]
    assert pa.concat_tables(tables).equals(whole_rows)
    assert picked == whole_picked
    assert [i for i, _ in bad] == [i for i, _ in whole_bad]
    assert np.all(np.diff(whole_picked) > 0)


def test_a_rows_fate_does_not_depend_on_the_batch_before() -> None:
    """DuckDB reads timestamps as text or as epoch milliseconds, trying first the structure
    that read most rows of the last batch. A row with an absent field (so a NULL under both)
    and a float for an integer (which DuckDB rounds, and pyarrow rejects) was read when text
    came first and sent to pyarrow, which rejected it, when epoch milliseconds did."""
    rows = [
        b'{"id": 0.25, "t": "2026-01-01T00:00:00Z"}',
        b'{"id": 0.25, "t": 1767225600000}',
        b'{"id": 2.75, "name": "\\ud9a6\\uddf0", "t": "2026-01-01 00:00:00"}',
    ]
    full = {"name": "a", "score": 1.5, "ok": True}
    as_text = [
        json.dumps({"id": i, "t": "2026-01-01T00:00:00Z", **full}).encode() for i in range(9)
    ]
    as_epoch = [json.dumps({"id": i, "t": 1767225600000, **full}).encode() for i in range(9)]
    answers = []
    for before in (as_text, as_epoch, as_text):
        _parse(before)
        answers.append(_parse(rows))
    assert answers[0] == answers[1] == answers[2]
    parsed, picked, bad = answers[0]
    assert picked == [0, 1, 2] and bad == []
    midnight = datetime(2026, 1, 1)
    assert parsed == [
        {"id": 0, "name": None, "score": None, "ok": None, "t": midnight},
        {"id": 0, "name": None, "score": None, "ok": None, "t": midnight},
        {"id": 3, "name": "\U000799f0", "score": None, "ok": None, "t": midnight},
    ]
