"""Fuzzing StreamHouse's C libraries against the paths they stand in for (the oracle): record
framing (``_framing.c``) against the numpy framing, and the flat JSON reader
(``_json_flat.c``) against the general reader (DuckDB, then pyarrow). Inputs are random and
damaged: bit flips, truncations, huge and non-minimal varints, negative lengths, invalid
UTF-8, lone surrogates, numbers at their limits, fields twice, nesting, every whitespace.

Whatever the C code takes must come out exactly (bit for bit: -0.0 is not 0.0) as the
oracle has it; what it refuses goes to the oracle anyway. Without the libraries built these
tests check the fallback alone (``test_fallback_*``) and the differential ones are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhouse import native
from streamhouse.errors import CorruptRecordError
from streamhouse.log.records import JsonLines, framing
from streamhouse.log.records.decode import _frame_numpy, _parse_headers
from streamhouse.log.records.json_lines import value_views
from streamhouse.log.records.varints import encode_uvarint, encode_varint
from streamhouse.sql import json_flat, json_values
from tests.test_json_flat import SCHEMA  # k int64, i int32, x float64, s string, b bool

JSON_NATIVE = json_flat.flat_readable(SCHEMA)
needs_json = pytest.mark.skipif(not JSON_NATIVE, reason="the C JSON reader is not built")
needs_framing = pytest.mark.skipif(not framing.native, reason="the C framing is not built")
FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- flat JSON

NUMBERS = [
    "0", "-0", "-0.0", "0e0", "-0e0", "-0E+0", "01", "-01", "1.", ".5", "-", "+1", "1e", "1e+",
    "0x10", "1_0", "2147483647", "2147483648", "-2147483648", "-2147483649",
    "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616",
    "9007199254740992", "9007199254740993", "9007199254740993.0", "1e22", "1e23", "1.5e-22",
    "123456789012345678901234567890", "1" + "0" * 70, "0." + "0" * 30 + "1",
    "1.7976931348623157e308", "1.7976931348623159e308", "1e309", "-1e309", "4.9e-324",
    "2.4703282292062328e-324", "1e-400", "2.2250738585072011e-308", "0.1", "NaN", "Infinity",
    "-Infinity",
]  # fmt: skip
TEXTS = [
    '""', '"a"', '"a long enough text to stand outside a view"', '"\\u0000"', '"\\ud800"',
    '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"caf\\u00e9"', '"tab\there"', '"\\/"', '"\x7f"',
    '"unterminated', '"a\\"b"', '"\\x41"',
]  # fmt: skip
BYTES = [
    b'"\xff"',
    b'"\xc3("',
    b'"\xc0\xaf"',
    b'"\xed\xa0\x80"',
    b'"caf\xc3\xa9"',
    b'"\xf4\x90\x80\x80"',
]
OTHERS = ["true", "false", "null", "nul", "True", "tru", "[1]", "[]", '{"a": 1}', "{}", '{"k": 1}']
KEYS = ['"k"', '"i"', '"x"', '"s"', '"b"', '"K"', '"X"', '"other"', '""', '"k "', '"\\u006b"']
SPACES = ["", " ", "\n", "\t", "\r\n", "  \n\t "] * 4 + ["\f", "\v", "\xa0"]  # JSON's, mostly


def _scalar() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.sampled_from(NUMBERS + TEXTS + OTHERS).map(str.encode),
        st.sampled_from(BYTES),
        st.integers(-(2**65), 2**65).map(lambda v: str(v).encode()),
        st.floats(allow_nan=False, allow_infinity=False).map(lambda v: repr(v).encode()),
        st.text(max_size=16).map(lambda t: json.dumps(t).encode()),
        st.text(max_size=16).map(lambda t: json.dumps(t, ensure_ascii=False).encode()),
        st.integers(1, 1200).map(lambda d: b"[" * d + b"]" * d),  # deep nesting
        st.integers(1, 1200).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    )


_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'))
_FITTING = {  # values the C reader takes for each wanted field (and some at its edges)
    '"k"': st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-0, 2**63])),
    '"i"': st.integers(-(2**31) - 1, 2**31),
    '"x"': st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**70), 2**70)
    ),
    '"s"': _ASCII,
    '"b"': st.booleans(),
}


def _fitting(key: str) -> st.SearchStrategy[bytes]:
    kind = _FITTING.get(key)
    if kind is None:
        return _scalar()
    number = st.sampled_from(NUMBERS).map(str.encode) if key in ('"x"', '"k"') else st.nothing()
    return st.one_of(kind.map(lambda v: json.dumps(v).encode()), number, st.just(b"null"))


@st.composite
def json_values_(draw: st.DrawFn) -> bytes:
    """A JSON object of wanted and other fields, with every spacing, maybe damaged."""
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=7, unique=draw(st.booleans())))
    wild = draw(st.booleans())
    pairs = [(k, draw(_scalar() if wild and draw(st.booleans()) else _fitting(k))) for k in keys]
    ws = [s.encode() for s in draw(st.lists(st.sampled_from(SPACES), min_size=4, max_size=4))]
    body = (b"," + ws[1]).join(k.encode() + ws[2] + b":" + ws[3] + v for k, v in pairs)
    text = ws[0] + b"{" + ws[1] + body + ws[2] + b"}" + ws[3]
    if len(text) < 13 and draw(st.booleans()):  # longer than a view's inlined 12 bytes
        text = text.replace(b"{", b'{"pad": "padding", ', 1) if pairs else text + b" " * 13
    damage = draw(st.sampled_from(["none"] * 10 + ["cut", "flip", "insert", "drop", "trail"]))
    if damage == "none" or not text:
        return text
    at = draw(st.integers(0, len(text) - 1))
    if damage == "cut":
        return text[:at]
    if damage == "flip":
        return text[:at] + bytes([text[at] ^ (1 << draw(st.integers(0, 7)))]) + text[at + 1 :]
    if damage == "insert":
        extra = draw(st.sampled_from([b",", b"}", b"{", b'"', b"\\", b"\x00", b"\xff", b"-", b"e"]))
        return text[:at] + extra + text[at:]
    if damage == "drop":
        return text[:at] + text[at + 1 :]
    return text + draw(st.sampled_from([b"x", b",", b"}", b"\x00", b"{}", b" 1"]))


def _exact(rows: list[dict]) -> list[dict]:
    """Rows with floats as their bits, so that -0.0 and 0.0 differ."""
    return [{k: (v.hex() if isinstance(v, float) else v) for k, v in row.items()} for row in rows]


def _parse(values: list[bytes], typed: pa.DataType, flat: bool) -> tuple:
    original = json_values.flat_readable
    json_values.flat_readable = original if flat else (lambda schema: False)
    try:
        array = pa.array(values, typed)
        table, rows, bad = json_values.parse_json(
            JsonLines(np.arange(len(values)), None), array, SCHEMA
        )
    finally:
        json_values.flat_readable = original
    return _exact(table.to_pylist()), rows.tolist(), bad


@needs_json
@FUZZ
@given(
    values=st.lists(json_values_(), min_size=1, max_size=30),
    typed=st.sampled_from([pa.binary(), pa.binary_view(), pa.large_binary()]),
)
def test_json_flat_reads_damaged_and_edge_values_as_the_general_reader(
    values: list[bytes], typed: pa.DataType
) -> None:
    values = [v or b" " for v in values]  # (parse_json takes no empty value)
    assert _parse(values, typed, True) == _parse(values, typed, False)


@needs_json
@pytest.mark.parametrize("number", ["-0", "-0E+0", "-0.0", "-0e-5", "-00", "-0.000"])
def test_json_flat_negative_zero_reads_as_the_general_reader(number: str) -> None:
    line = f'{{"x": {number}, "k": {number}, "pad": "a long enough text"}}'.encode()
    assert _parse([line], pa.binary(), True) == _parse([line], pa.binary(), False)


def test_fallback_json_reads_without_the_c_reader() -> None:
    """The general reader alone (as without the C library) reads what the C one would."""
    lines = [b'{"k": 1, "i": -2, "x": 2.5, "s": "text", "b": true}', b'{"x": -0}', b"[1]"]
    table, rows, bad = _parse(lines, pa.binary(), False)
    assert table == [
        {"k": 1, "i": -2, "x": (2.5).hex(), "s": "text", "b": True},
        {"k": None, "i": None, "x": (0.0).hex(), "s": None, "b": None},
    ]
    assert rows == [0, 1] and [row for row, _ in bad] == [2]


@pytest.mark.parametrize("bad", [b" ", b"\n", b"{", b'{"k":', b"[1", b"\xff", b"nul", b"[1]", b"7"])
def test_json_rejection_does_not_depend_on_the_rows_beside_it(bad: bytes) -> None:
    """A bad value is rejected for the same reason alone as among good ones (as happens when
    the C reader takes the good ones and leaves it alone to the general reader)."""
    alone = _parse([bad], pa.binary(), False)
    among = _parse([b'{"k": 1}', bad, b'{"k": 2}'], pa.binary(), False)
    assert alone[:2] == ([], []) and among[1] == [0, 2]
    assert [reason for _, reason in alone[2]] == [reason for _, reason in among[2]]


# --------------------------------------------------------------------------- record framing


def _varint(draw: st.DrawFn, value: int, hostile: bool) -> bytes:
    """``value`` as a zigzag varint: minimal, padded with continuation bytes, or (hostile)
    huge or unended."""
    how = draw(st.sampled_from(["plain"] * 12 + ["padded"] + ["huge", "unended"] * hostile))
    if how == "padded":  # a non-minimal form of the same value (Kafka's readers take it)
        u = (value << 1) ^ (value >> 63)
        raw = bytearray(encode_uvarint(u))
        raw[-1] |= 0x80
        return bytes(raw) + b"\x80" * draw(st.integers(0, 3)) + b"\x00"
    if how == "huge":
        return draw(st.sampled_from([b"\xff\xff\xff\xff\x0f", b"\xfe\xff\xff\xff\x0f",
                                     b"\xff" * 9 + b"\x01", b"\xff\xff\xff\xff\x7f"]))  # fmt: skip
    if how == "unended":
        return b"\xff" * draw(st.integers(1, 11))
    return encode_varint(value)


@st.composite
def records_sections(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Records sections (and each one's record count as its header says), hand-written so
    that any field can lie: lengths past the record or negative, varints too long."""
    sections, counts = [], []
    hostile = draw(st.booleans())
    lies = [0] * 40 + [-1, 1, -3, 2**31, -(2**31)] * hostile
    bad_headers = [b"\x01", b"\x02", b"\x04\x02h\x02v"] * hostile  # -1; 1 or 2 but 0 there
    for _ in range(draw(st.integers(1, 4))):
        records = []
        for _ in range(draw(st.integers(1, 12))):
            value = draw(st.binary(max_size=30))
            key = draw(st.one_of(st.none(), st.binary(max_size=5)))
            headers = draw(st.sampled_from([b"\x00"] * 3 + [b"\x02\x02h\x02v"] + bad_headers))
            lie = draw(st.sampled_from(lies))
            body = (
                bytes([draw(st.sampled_from([0, 0, 0, 0xFF]))])
                + _varint(draw, draw(st.sampled_from([0, 5, -5, 2**40, -(2**62)])), hostile)
                + _varint(draw, len(records), hostile)
                + _varint(draw, -1 if key is None else len(key) + lie * (value != b""), hostile)
                + (key or b"")
                + _varint(draw, len(value) + lie, hostile)
                + value
                + headers
            )
            length = len(body) + draw(st.sampled_from([x for x in lies if abs(x) < 2]))
            records.append(_varint(draw, length, hostile) + body)
        sections.append(b"".join(records))
        counts.append(len(records) + draw(st.sampled_from([x for x in lies if abs(x) < 2])))
    return b"".join(sections), [len(s) for s in sections], counts


def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.sampled_from([raw[at] ^ (1 << draw(st.integers(0, 7))), 0x80, 0xFF, 0]))
    return bytes(raw)


@needs_framing
@FUZZ
@given(data=st.data())
def test_native_framing_of_hostile_records_is_the_numpy_framing(data: st.DataObject) -> None:
    """Whatever records the C framing finds, the numpy framing finds the same (every field
    and view); what it refuses, numpy finds malformed or reads headers the record lacks."""
    section, sizes, counts = data.draw(records_sections())
    section = _mutated(data.draw, section) if data.draw(st.integers(0, 3)) == 0 else section
    ends = np.cumsum(sizes, dtype=np.int64)
    ends[-1] = len(section)
    starts = np.concatenate(([0], ends[:-1])).astype(np.int64)
    counts = np.array([max(c, 1) for c in counts], np.int64)
    buf = np.frombuffer(section + bytes(16), np.uint8).copy()  # (zero padding, as decoded)
    native = framing.frame(buf, starts, ends, counts, views=True)
    batches = [(SimpleNamespace(record_count=int(c), base_offset=0), 0) for c in counts]
    try:
        oracle = _frame_numpy(buf, batches, starts, ends, counts)
    except CorruptRecordError:
        assert native is None
        return
    if native is None:  # numpy's framing passes it: then its headers must fail to parse
        with pytest.raises((CorruptRecordError, IndexError, UnicodeDecodeError)):
            for i in np.flatnonzero(oracle.header_count):
                start = int(oracle.value_start[i] + max(oracle.value_len[i], 0))
                _parse_headers(buf.tobytes(), start, int(oracle.end[i]))
        return
    for field in ("start", "end", "ts_delta", "off_delta", "key_start", "key_len"):
        assert np.array_equal(getattr(native, field), getattr(oracle, field)), field
    for field in ("value_start", "value_len", "header_count"):
        assert np.array_equal(getattr(native, field), getattr(oracle, field)), field
    views = value_views(pa.py_buffer(buf), buf, oracle.value_start, oracle.value_len)
    expected = np.frombuffer(views.buffers()[1], np.uint8).reshape(-1, 16)
    assert np.array_equal(native.views, expected)


_FALLBACK_PROBE = """
import json, sys
import numpy as np, pyarrow as pa
from streamhouse.log.records import JsonLines, framing
from streamhouse.log.records.build import build_batch
from streamhouse.log.records.decode import decode_records
from streamhouse.sql import json_flat, json_values
SCHEMA = pa.schema([("k", pa.int64()), ("x", pa.float64()), ("s", pa.string()), ("b", pa.bool_())])
values = [b'{"k": %d, "x": -0, "s": "text number %d", "b": true}' % (i, i) for i in range(40)]
decoded = decode_records([build_batch(values + [b"[1]", b" "])], json_lines=True)
column = decoded.table["value"].combine_chunks()
table, rows, bad = json_values.parse_json(decoded.lines[0], column, SCHEMA)
print(json.dumps([framing.native, json_flat.flat_readable(SCHEMA), decoded.table.num_rows,
                  [str(v) for v in table.to_pylist()], rows.tolist(), bad]))
"""


def _probes(*natives: str) -> list[list]:
    """The probe's answer in a fresh process with each STREAMHOUSE_NATIVE (run together)."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", _FALLBACK_PROBE],
            env={**os.environ, "STREAMHOUSE_NATIVE": native, "PYTHONPATH": os.getcwd()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for native in natives
    ]
    answers = []
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        answers.append(json.loads(out))
    return answers


def test_fallback_without_the_c_libraries_reads_as_with_them() -> None:
    """STREAMHOUSE_NATIVE=0 (as where no C compiler built them): numpy framing and the
    general JSON reader, with the same rows, values and rejections."""
    without, with_ = _probes("0", "1")
    assert without[:2] == [False, False] and without[2] == 42
    assert len(without[3]) == 40 and [row for row, _ in without[5]] == [40, 41]
    assert with_[2:] == without[2:]


def test_a_library_older_than_its_source_is_not_loaded(tmp_path: Path) -> None:
    """A C library built from an older source (a checkout since its build) may take other
    arguments than its caller now passes: it is left for the slower path, never called."""
    built = [p for p in Path(framing.__file__).parent.iterdir() if p.name.startswith("_framing.")]
    built = [p for p in built if p.suffix != ".c"]
    if not built:
        pytest.skip("the C framing is not built")
    library = tmp_path / built[0].name
    shutil.copy(built[0], library)
    source = tmp_path / "_framing.c"
    source.write_text("/* changed since the build */")
    module = str(tmp_path / "framing.py")
    os.utime(library, (1_000_000, 1_000_000))
    os.utime(source, (1_000_010, 1_000_010))
    assert native.load(module, "_framing", "frame_records", 15) is None
    os.utime(source, (999_990, 999_990))
    assert native.load(module, "_framing", "frame_records", 15) is not None


def test_the_c_extensions_are_built() -> None:
    """``make test`` builds every C extension (the editable install), so the tests above that
    need one never skip there: a build that silently fell back to Python fails here."""
    from streamhouse.log.records import build
    from streamhouse.runtime import json_rows

    assert framing.native, "streamhouse/log/records/_framing.c is not built"
    assert JSON_NATIVE, "streamhouse/sql/_json_flat.c is not built"
    assert build._encoder is not None, "streamhouse/log/records/_encode.c is not built"
    assert json_rows._write is not None, "streamhouse/runtime/_json_rows.c is not built"
