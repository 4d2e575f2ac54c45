"""The rows of an Arrow table as JSON objects, written in C (``_json_rows.c``, loaded by
:mod:`streamhouse.native`, the GIL released) with the text DuckDB's ``to_json`` gives them: a
sink's records are the same bytes whichever writes them.

The C writer takes integers, floats, booleans, strings (also large and view), timestamps
without a time zone and dates (years 1 to 9999), and dictionaries of those; for a table with
any other column (decimals, times, zoned timestamps, nested types, ...) :func:`json_objects`
answers None and the caller asks DuckDB. Over a stateless query's output (seven columns,
270 bytes a row) it takes about a fifth of DuckDB's CPU (``benchmarks/nexmark/q10_ab.json``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamhouse.native import load as native_library

__all__ = ["Scratch", "json_name", "json_objects"]

_write = native_library(__file__, "_json_rows", "encode_json_rows", 7)

_KINDS = {
    pa.int8(): 0,
    pa.int16(): 1,
    pa.int32(): 2,
    pa.int64(): 3,
    pa.uint8(): 4,
    pa.uint16(): 5,
    pa.uint32(): 6,
    pa.uint64(): 7,
    pa.float32(): 8,
    pa.float64(): 9,
    pa.bool_(): 10,
    pa.string(): 11,
    pa.large_string(): 12,
    pa.string_view(): 13,
    pa.timestamp("s"): 14,
    pa.timestamp("ms"): 15,
    pa.timestamp("us"): 16,
    pa.timestamp("ns"): 17,
    pa.date32(): 18,
}
_STRING, _LARGE_STRING, _STRING_VIEW = 11, 12, 13
_WORDS = 7  # a column's words in the C writer's spec (see _json_rows.c)
_SCALAR = 48  # room the C writer wants for one scalar value (MAX_SCALAR)
_ERR_SPACE = -1
_ERRORS = {-2: "a date outside years 1..9999", -3: "rows past 2 GiB", -4: "an unknown kind"}

_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
_ESCAPES.update({c: f"\\u{c:04X}" for c in range(0x20) if c not in _ESCAPES})


def json_name(name: str) -> bytes:
    """``name`` as a JSON string, escaped as DuckDB's ``to_json`` escapes it."""
    return ('"' + name.translate(_ESCAPES) + '"').encode()


def _kind(data_type: pa.DataType) -> int | None:
    return _KINDS.get(data_type)


class Scratch:
    """Memory the text of :func:`json_objects` is written to, kept from call to call: a
    micro-batch's text is tens of MB, and memory fresh from the system costs the kernel as
    much to clear as the writing does. An array written to it is valid until the next call
    with it (a sink encodes, frames a copy in record batches, then drops the text)."""

    def __init__(self) -> None:
        self._memory = np.empty(0, np.uint8)

    def take(self, size: int) -> np.ndarray:
        """At least ``size`` bytes (the memory kept, unless too small or four times too
        large: then new memory, kept instead)."""
        if not size <= len(self._memory) <= 4 * size:
            self._memory = np.empty(size, np.uint8)
        return self._memory


def json_objects(table: pa.Table, scratch: Scratch | None = None) -> pa.Array | None:
    """Each row of ``table`` as a JSON object (``{"column":value,...}`` in column order), a
    binary array (in ``scratch``'s memory if given); None where the C writer is not built or
    does not write the table (a column type it does not take, no columns, names DuckDB
    renames, a date it does not write)."""
    names = table.column_names
    # DuckDB renames an empty name (or one with a NUL: a C string's end) and one that
    # differs from another only in case (its names are case-insensitive): left to it
    renamed = len({n.lower() for n in names}) < len(names) or any(not n or "\0" in n for n in names)
    if _write is None or not names or renamed:
        return None
    columns = []
    for column in table.columns:
        data_type = column.type
        if pa.types.is_dictionary(data_type):
            if _kind(data_type.value_type) is None:
                return None
            column = column.cast(data_type.value_type)
        elif _kind(data_type) is None:
            return None
        columns.append(column)
    table = pa.table(columns, names=names)
    n = table.num_rows
    prefixes = [(b"{" if i == 0 else b",") + json_name(name) + b":" for i, name in enumerate(names)]
    text = np.frombuffer(b"".join(prefixes), np.uint8)
    starts = np.cumsum([0] + [len(p) for p in prefixes[:-1]])
    string_bytes = sum(_text_bytes(column) for column in table.columns)
    fixed = n * (1 + len(text) + _SCALAR * len(names)) + 2 * _SCALAR
    for capacity in (fixed + string_bytes, fixed + 6 * string_bytes):
        out = scratch.take(capacity) if scratch is not None else np.empty(capacity, np.uint8)
        offsets = np.empty(n + 1, np.int32)
        written = _write_batches(table, text, starts, out, offsets)
        if written != _ERR_SPACE:
            break
    if written < 0:
        if written in _ERRORS:  # the caller's DuckDB writes what this does not
            return None
        raise AssertionError(f"JSON rows: C writer returned {written}")
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out[:written])]
    )


def _text_bytes(column: pa.ChunkedArray) -> int:
    """The bytes of ``column``'s strings (0 for other types)."""
    kind = _kind(column.type)
    if kind not in (_STRING, _LARGE_STRING, _STRING_VIEW):
        return 0
    total = 0
    for chunk in column.chunks:
        if kind == _STRING_VIEW:
            views = np.frombuffer(chunk.buffers()[1], np.int32).reshape(-1, 4)
            total += int(views[chunk.offset : chunk.offset + len(chunk), 0].sum())
        else:
            index = np.int64 if kind == _LARGE_STRING else np.int32
            offsets = np.frombuffer(chunk.buffers()[1], index)
            total += int(offsets[chunk.offset + len(chunk)]) - int(offsets[chunk.offset])
    return total


def _write_batches(
    table: pa.Table, text: np.ndarray, starts: np.ndarray, out: np.ndarray, offsets: np.ndarray
) -> int:
    """Write ``table``'s record batches one after another into ``out``: the bytes written, or
    the C writer's error."""
    assert _write is not None
    columns = table.num_columns
    spec = np.zeros((columns, _WORDS), np.int64)
    spec[:, 5] = text.ctypes.data + starts
    spec[:, 6] = np.diff(np.append(starts, len(text)))
    position, row = 0, 0
    for batch in table.to_batches():
        keep = []  # the view columns' lists of buffer addresses, alive until the call returns
        for c, array in enumerate(batch.columns):
            kind = _KINDS[array.type]
            buffers = array.buffers()
            spec[c, 0] = kind
            spec[c, 3] = buffers[0].address if buffers[0] is not None and array.null_count else 0
            spec[c, 4] = array.offset
            if kind in (_STRING, _LARGE_STRING):
                spec[c, 1] = buffers[2].address if buffers[2] is not None else spec[c, 5]
                spec[c, 2] = buffers[1].address
            elif kind == _STRING_VIEW:
                addresses = np.array([b.address for b in buffers[2:]] or [0], np.int64)
                keep.append(addresses)
                spec[c, 1] = addresses.ctypes.data
                spec[c, 2] = buffers[1].address
            else:
                spec[c, 1] = buffers[1].address
        rows = batch.num_rows
        position = _write(
            rows,
            columns,
            spec.ctypes.data,
            out.ctypes.data,
            position,
            len(out),
            offsets[row:].ctypes.data,
        )
        del keep
        if position < 0:
            return position
        row += rows
    if row == 0:
        offsets[0] = 0
    return position
