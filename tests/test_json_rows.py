"""The C writer of sink rows as JSON objects (streamhouse/runtime/_json_rows.c) against DuckDB's
to_json, which wrote every sink record before it: byte for byte the same text, over random
tables (every column type it takes, NULLs, slices, several chunks, names to escape), doubles
chosen to be hard to print shortest, and the tables it leaves to DuckDB."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse.runtime import json_rows
from streamhouse.runtime.sink import _by_duckdb, encode_columns

pytestmark = pytest.mark.skipif(
    json_rows._write is None, reason="the C JSON writer is not built (pip install -e .)"
)


def _duckdb(table: pa.Table) -> list[bytes]:
    return _by_duckdb(table, [], with_values=True)[0].to_pylist()


def _written(table: pa.Table) -> list[bytes]:
    written = json_rows.json_objects(table)
    assert written is not None, f"not written in C: {table.schema}"
    return written.to_pylist()


_INTS = {
    pa.int8(): 8,
    pa.int16(): 16,
    pa.int32(): 32,
    pa.int64(): 64,
}
_UINTS = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
_TICKS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
_YEAR_1 = -62135596800  # 0001-01-01 in seconds from the epoch
_YEAR_10000 = 253402300800
_NS_RANGE = 2**63 // 10**9 - 1  # nanosecond timestamps fit int64 only within 1677..2262


def _values(data_type: pa.DataType) -> st.SearchStrategy:
    """Values of ``data_type`` (years 1 to 9999 for dates and timestamps)."""
    if data_type in _INTS:
        bits = _INTS[data_type]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if data_type in _UINTS:
        return st.integers(0, 2 ** _UINTS[data_type] - 1)
    if data_type == pa.float64():
        return st.floats() | st.integers(0, 10**9).map(lambda p: p * 0.908)
    if data_type == pa.float32():
        return st.floats(width=32)
    if data_type == pa.bool_():
        return st.booleans()
    if pa.types.is_timestamp(data_type):
        per = _TICKS[data_type.unit]
        low, high = (_YEAR_1, _YEAR_10000) if per < 10**9 else (-_NS_RANGE, _NS_RANGE)
        return st.integers(low * per, high * per - 1) | st.integers(-3 * per, 3 * per)
    if data_type == pa.date32():
        return st.integers(_YEAR_1 // 86400, _YEAR_10000 // 86400 - 1)
    # strings: any text, control characters and quotes among them
    return st.text(st.characters(codec="utf-8"), max_size=40) | st.text('"\\\n\x00\x1f/é')


_TYPES = [
    *_INTS,
    *_UINTS,
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.string_view(),
    pa.timestamp("s"),
    pa.timestamp("ms"),
    pa.timestamp("us"),
    pa.timestamp("ns"),
    pa.date32(),
]


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    n_columns = draw(st.integers(1, 5))
    names = draw(
        st.lists(
            st.text(
                st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8
            ),
            min_size=n_columns,
            max_size=n_columns,
            unique_by=str.lower,
        )
    )
    rows = draw(st.integers(1, 30))
    columns = []
    for _ in range(n_columns):
        data_type = draw(st.sampled_from(_TYPES))
        values = draw(st.lists(st.none() | _values(data_type), min_size=rows, max_size=rows))
        columns.append(pa.array(values, data_type))
    table = pa.table(columns, names=names)
    # several chunks, sliced (array offsets not 0), as query results come
    cut = draw(st.integers(0, rows))
    table = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    start = draw(st.integers(0, rows - 1))
    return table.slice(start)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_rows_are_duckdbs_text(table: pa.Table) -> None:
    written = _written(table)
    assert written == _duckdb(table)
    for text, row in zip(written, table.to_pylist(), strict=True):
        if all(pa.types.is_integer(t) or pa.types.is_string(t) for t in table.schema.types):
            assert json.loads(text) == row


def test_doubles_hard_to_print_shortest() -> None:
    """Random bit patterns (subnormals, NaNs, huge and tiny), powers of two (whose lower
    neighbour is nearer), prices times 0.908 (17 digits), decimals and their next doubles."""
    rng = np.random.default_rng(7)
    n = 20_000
    values = np.concatenate(
        [
            rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64),
            np.ldexp(1.0, rng.integers(-1074, 1024, n)),
            rng.integers(0, 10**9, n) * 0.908,
            rng.integers(0, 10**7, n) / 10.0 ** rng.integers(0, 12, n),
            np.nextafter(np.round(rng.random(n) * 1e6, 3), np.inf),
            rng.random(n) * 10.0 ** rng.integers(-8, 40, n),
            np.array([0.0, -0.0, 1e21, 1e20, 1e-6, 1e-7, 2.0**53, 2.0**53 + 2, 5e-324]),
        ]
    )
    with np.errstate(over="ignore", invalid="ignore"):  # float32: inf where out of range
        table = pa.table({"d": values, "f": values.astype(np.float32)})
    assert _written(table) == _duckdb(table)


def test_strings_all_escapes() -> None:
    """Strings of nothing but control characters: six bytes of text each, past the first
    guess of the room they need (the writer retries with the most they can take)."""
    text = "".join(chr(c) for c in range(32)) * 50
    table = pa.table({"s": [text] * 300, "t": ["é\u2028😀\x7f"] * 300})
    assert _written(table) == _duckdb(table)


def test_names_escaped_as_duckdb() -> None:
    table = pa.table({'a"b\\c\n\x01é': [1], 'to_char(x,Utf8("%H"))': ["00"]})
    assert (
        _written(table)
        == _duckdb(table)
        == [b'{"a\\"b\\\\c\\n\\u0001\xc3\xa9":1,"to_char(x,Utf8(\\"%H\\"))":"00"}']
    )


def test_dictionary_columns_are_their_values() -> None:
    table = pa.table({"d": pa.array(["x", None, "y", "x"]).dictionary_encode(), "i": [1, 2, 3, 4]})
    assert _written(table) == _duckdb(table)


@pytest.mark.parametrize(
    "column",
    [
        pa.array([datetime.datetime(2026, 1, 1)], pa.timestamp("ms", tz="UTC")),
        pa.array([1], pa.decimal128(10, 2)),
        pa.array([[1, 2]]),
        pa.array([{"a": 1}]),
        pa.array([datetime.time(1, 2)]),
        pa.array([b"\x00\xff"], pa.binary()),
        pa.array([-62135596800001], pa.timestamp("ms")),  # 0001-12-31 (BC)
        pa.array([253402300800000], pa.timestamp("ms")),  # 10000-01-01
    ],
)
def test_other_columns_left_to_duckdb(column: pa.Array) -> None:
    """A column the C writer does not write (or a date outside its years): the whole table's
    text comes from DuckDB, as before."""
    table = pa.table({"x": column, "i": [7]})
    assert json_rows.json_objects(table) is None
    values, keys = encode_columns(table, [])
    assert values.to_pylist() == _duckdb(table) and keys is None


@pytest.mark.parametrize("names", [["a", "A"], ["", "b"], ["\x00", "b"], ["a\x00b", "c"]])
def test_names_duckdb_renames_are_left_to_it(names: list[str]) -> None:
    table = pa.table([pa.array([1]), pa.array([2])], names=names)
    assert json_rows.json_objects(table) is None
    assert encode_columns(table, [])[0].to_pylist() == _duckdb(table)


def test_sink_keys_beside_written_values() -> None:
    """Keyed rows: values written in C, keys (one column, several, NULL) as before."""
    table = pa.table({"k": [1, None, 3], "s": ["a", "b", None], "v": [1.5, 2.0, None]})
    for keys in (["k"], ["k", "s"], ["s"]):
        values, key_array = encode_columns(table, keys)
        expected_values, expected_keys = _by_duckdb(table, keys, with_values=True)
        assert values.to_pylist() == expected_values.to_pylist()
        assert key_array.to_pylist() == expected_keys.to_pylist()
    assert encode_columns(table, ["k"])[1].to_pylist() == [b"1", b'{"k":null}', b"3"]
