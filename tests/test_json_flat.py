"""The C reader of flat JSON objects (streamhouse/sql/_json_flat.c) reads every row it takes
as the general reader (DuckDB, then pyarrow) reads it, and leaves it the rest: the same rows,
values and rejections with it as without it, over values made to sit on every edge it has
(numbers of every form, escapes, non-ASCII text, nesting, fields twice, wrong kinds, bad
JSON)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.log.records import JsonLines
from streamhouse.sql import json_flat, json_values

pytestmark = pytest.mark.skipif(
    not json_flat.flat_readable(pa.schema([("k", pa.int64())])),
    reason="the C JSON reader is not built (pip install -e .)",
)

SCHEMA = pa.schema(
    [
        ("k", pa.int64()),
        ("i", pa.int32()),
        ("x", pa.float64()),
        ("s", pa.string()),
        ("b", pa.bool_()),
    ]
)

numbers = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        ["0", "-0", "01", "1.", ".5", "1e400", "-1e-400", "1E+2", "2.50", "1e2", "-", "+1", "0x10"]
    ),
    st.sampled_from(["2147483647", "2147483648", "-2147483649", "9223372036854775808"]),
)
texts = st.one_of(
    st.text(max_size=20).map(json.dumps),
    st.text(max_size=20).map(lambda t: json.dumps(t, ensure_ascii=False)),
    st.sampled_from(['"a\\"b"', '"\\u00e9"', '"tab\there"', '"unterminated', '""']),
)
scalars = st.one_of(
    numbers, texts, st.sampled_from(["true", "false", "null", "nul", "True", "[1]", '{"a": 1}'])
)
keys = st.sampled_from(["k", "i", "x", "s", "b", "K", "other", "k ", 'k\\"'])


@st.composite
def values(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(keys, scalars), max_size=6))
    space = draw(st.sampled_from(["", " ", "\n", "\t "]))
    body = ("," + space).join(f'"{k}"{space}:{space}{v}' for k, v in pairs)
    text = "{" + space + body + space + "}"
    return draw(
        st.one_of(
            st.just(text),
            st.just(space + text + space),
            st.just(text[:-1] + ",}"),  # a trailing comma
            st.just(text[: len(text) // 2]),  # cut short
            st.sampled_from(["[1, 2]", "42", '"text"', "null", "{}", "{ }"]),
        )
    )


def _parse(
    lines: list[str],
    typed: pa.DataType,
    flat: bool,
    monkeypatch: pytest.MonkeyPatch,
    schema: pa.Schema = SCHEMA,
):
    # (without: no schema is flat-readable, so the general reader reads every row)
    never = lambda schema: False  # noqa: E731
    monkeypatch.setattr(json_values, "flat_readable", json_flat.flat_readable if flat else never)
    array = pa.array(lines, typed)
    table, rows, bad = json_values.parse_json(JsonLines(np.arange(len(lines)), None), array, schema)
    # timestamps as their epoch milliseconds (datetime stops at year 9999)
    as_ms = [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    return pa.table(as_ms, names=table.column_names).to_pylist(), rows.tolist(), bad


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(values(), min_size=1, max_size=40),
    typed=st.sampled_from([pa.string(), pa.string_view()]),
)
def test_flat_reader_reads_as_the_general_reader(
    lines: list[str], typed: pa.DataType, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _parse(lines, typed, True, monkeypatch) == _parse(lines, typed, False, monkeypatch)


def test_flat_reader_takes_plain_rows_and_leaves_the_rest() -> None:
    lines = [
        '{"k": 1, "i": -2, "x": 2.5, "s": "a long enough text", "b": true}',
        '{"k": 1.0, "x": 1}',  # an integer field given a float: DuckDB's rounding decides
        '{"k": 5, "k": 7, "x": 0.25}',  # a field twice
        '{"s": "caf\u00e9 au lait"}',  # not ASCII
        '{"other": {"nested": 1}, "k": 3}',
        '{"k": null, "x": 1e3, "b": false}',
    ]
    found = json_flat.read_flat(pa.array(lines), SCHEMA)
    assert found is not None
    table, read = found
    assert read.tolist() == [True, False, False, False, False, True]
    assert table.slice(0, 1).to_pylist() == [
        {"k": 1, "i": -2, "x": 2.5, "s": "a long enough text", "b": True}
    ]
    assert table.slice(5, 1).to_pylist() == [
        {"k": None, "i": None, "x": 1000.0, "s": None, "b": False}
    ]


TIMED = pa.schema([("k", pa.int64()), ("t", pa.timestamp("ms")), ("u", pa.timestamp("ms", "UTC"))])


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """A timestamp field's value: ISO-8601 text in the form the C reader takes and around it
    (other separators, fraction digits, zones, dates that do not exist), or a number."""
    year = draw(st.sampled_from([1, 1969, 1970, 2000, 2024, 2026, 2100, 9999]))
    month, day = draw(st.integers(0, 13)), draw(st.integers(0, 32))
    hour, minute, second = (
        draw(st.integers(0, 24)),
        draw(st.integers(0, 60)),
        draw(st.integers(0, 60)),
    )
    fraction = draw(st.sampled_from(["", ".", ".1", ".12", ".123", ".1234", ".123456", ".5x"]))
    zone = draw(st.sampled_from(["", "", "Z", "+02:00", "-05:30", " UTC", "z"]))
    sep = draw(st.sampled_from([" ", "T", "t", "_"]))
    text = f"{year:04d}-{month:02d}-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}"
    return draw(
        st.one_of(
            st.just(json.dumps(text + fraction + zone)),
            st.just(json.dumps(text[:10])),  # a date alone
            st.just(json.dumps(f"{year}-{month}-{day} {hour}:{minute}:{second}")),  # 1 digit
            st.integers(-(10**16), 10**16).map(str),  # epoch milliseconds, 15 digits or more
            st.sampled_from(["-0", "1.5", "1e3", "null", "true", '"1700000000000"']),
        )
    )


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    stamps=st.lists(st.tuples(timestamps(), timestamps()), min_size=1, max_size=30),
    typed=st.sampled_from([pa.string(), pa.string_view()]),
)
def test_flat_reader_reads_timestamps_as_the_general_reader(
    stamps: list[tuple[str, str]], typed: pa.DataType, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        f'{{"k": {i}, "t": {t}, "u": {u}, "pad": "some text"}}' for i, (t, u) in enumerate(stamps)
    ]
    flat = _parse(lines, typed, True, monkeypatch, TIMED)
    general = _parse(lines, typed, False, monkeypatch, TIMED)
    # The same rows, values and rejected rows. (pyarrow words some reasons after the rows it
    # read beside them, "changed from string to number in row 0", and which rows those are
    # depends on the structure DuckDB tried first, after the batch before: not compared.)
    assert flat[:2] == general[:2]
    assert [row for row, _ in flat[2]] == [row for row, _ in general[2]]


def test_flat_reader_takes_plain_timestamps() -> None:
    """Nexmark's form, ISO with T and Z, and epoch milliseconds are read in C, as UTC."""
    lines = [
        '{"k": 1, "t": "2026-01-01 00:00:00.000", "u": "2024-02-29T23:59:59.5Z"}',
        '{"k": 2, "t": 1767225600000, "u": -1}',
        '{"k": 3, "t": "0001-01-01 00:00:00", "u": "9999-12-31 23:59:59.999"}',
        '{"k": 4, "t": "2026-02-29 00:00:00", "u": null}',  # no such day: left
        '{"k": 5, "t": "2026-01-01 00:00:00+01:00"}',  # an offset: left
    ]
    table, read = json_flat.read_flat(pa.array(lines), TIMED)
    assert read.tolist() == [True, True, True, False, False]
    got = table.filter(pa.array(read))
    assert got["t"].cast(pa.int64()).to_pylist() == [1767225600000, 1767225600000, -62135596800000]
    assert got["u"].cast(pa.int64()).to_pylist() == [1709251199500, -1, 253402300799999]
