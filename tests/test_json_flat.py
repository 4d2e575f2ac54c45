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


def _parse(lines: list[str], typed: pa.DataType, flat: bool, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(json_values, "flat_readable", json_flat.flat_readable if flat else bool)
    array = pa.array(lines, typed)
    table, rows, bad = json_values.parse_json(JsonLines(np.arange(len(lines)), None), array, SCHEMA)
    return table.to_pylist(), rows.tolist(), bad


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
