"""Named fields of flat JSON objects read in C (``_json_flat.c``, loaded by
:mod:`streamhouse.native`), ahead of the general reader of :mod:`streamhouse.sql.json_values`.

The C reader takes only what it can read one way: objects of scalar values, strings without
escapes, ASCII, each wanted field once and of its own kind (an integer for an integer field,
any number for a float, a string for text, a boolean for a boolean, for a millisecond
timestamp an integer of at most 15 digits (epoch milliseconds) or the text
``YYYY-MM-DD[ T]HH:MM:SS[.fff][Z]`` of a real date, read as UTC; or null). The rows it
does not take go to the general reader, which decides how they read or why they are
rejected; so every row reads as the general reader would read it, faster (80-100 ns a row of
CPU for two or three fields, Arrow columns included, against about 200 for DuckDB's
``json_transform``) and with the GIL released.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamhouse.native import load as native_library

__all__ = ["flat_readable", "read_flat"]

_read = native_library(__file__, "_json_flat", "read_flat_objects", 12)

_TYPES = {
    pa.int64(): 0,
    pa.int32(): 1,
    pa.float64(): 2,
    pa.string(): 3,
    pa.bool_(): 4,
    pa.timestamp("ms"): 5,  # ISO-8601 text without an offset (UTC) or epoch milliseconds
    pa.timestamp("ms", tz="UTC"): 5,
}
_TEXT = 3
_MAX_FIELDS = 64
_INLINE = 12  # a binary view's longest inlined value: those are left to the general reader


def flat_readable(schema: pa.Schema) -> bool:
    """Whether the C reader is loaded and reads every field type of ``schema``."""
    return (
        _read is not None
        and 0 < len(schema) <= _MAX_FIELDS
        and all(f.type in _TYPES for f in schema)
        and len(set(schema.names)) == len(schema)
    )


def _bounds(text: pa.Array) -> tuple[pa.Buffer, np.ndarray, np.ndarray] | None:
    """The buffer holding ``text``'s values and where each value starts and ends in it (start
    -1: not there), or None if they are not in one buffer."""
    buffers = text.buffers()
    if buffers[0] is not None and text.null_count:
        return None
    n, offset = len(text), text.offset
    if pa.types.is_string_view(text.type) or pa.types.is_binary_view(text.type):
        if len(buffers) != 3:  # inline only, or values in several buffers
            return None
        words = np.frombuffer(buffers[1], np.int32).reshape(-1, 4)[offset : offset + n]
        size = words[:, 0].astype(np.int64)
        start = np.where((size > _INLINE) & (words[:, 2] == 0), words[:, 3], -1).astype(np.int64)
        return buffers[2], start, start + size
    if pa.types.is_string(text.type) or pa.types.is_large_string(text.type):
        index = np.int64 if pa.types.is_large_string(text.type) else np.int32
        offsets = np.frombuffer(buffers[1], index)[offset : offset + n + 1].astype(np.int64)
        return buffers[2], offsets[:-1], offsets[1:]
    return None


def read_flat(text: pa.Array, schema: pa.Schema) -> tuple[pa.Table, np.ndarray] | None:
    """The JSON values ``text`` read with ``schema`` (:func:`flat_readable`): a table of
    ``len(text)`` rows (null where not read) and which rows were read; None if ``text`` is
    not laid out as the C reader takes it."""
    assert _read is not None
    found = _bounds(text)
    if found is None:
        return None
    data, start, end = found
    n, fields = len(text), len(schema)
    if n == 0 or data.size >= 1 << 31:  # (text fields become views: int32 offsets)
        return None
    names = [f.name.encode() for f in schema]
    name_at = np.concatenate(([0], np.cumsum([len(name) for name in names]))).astype(np.int32)
    packed = np.frombuffer(b"".join(names) or b"\0", np.uint8)
    types = np.array([_TYPES[f.type] for f in schema], np.int32)
    values = np.empty((fields, n), np.int64)
    views = (
        np.zeros((fields, n, 16), np.uint8) if _TEXT in types else np.zeros((1, 1, 16), np.uint8)
    )
    valid = np.empty((fields, n), np.uint8)
    read = np.empty(n, np.uint8)
    _read(
        data.address,
        n,
        start.ctypes.data,
        end.ctypes.data,
        fields,
        packed.ctypes.data,
        name_at.ctypes.data,
        types.ctypes.data,
        values.ctypes.data,
        views.ctypes.data,
        valid.ctypes.data,
        read.ctypes.data,
    )
    columns = [
        _column(f.type, values[k], views[k] if f.type == pa.string() else None, valid[k], data)
        for k, f in enumerate(schema)
    ]
    return pa.table(columns, schema=schema), read.view(np.bool_)


def _column(
    type_: pa.DataType,
    values: np.ndarray,
    views: np.ndarray | None,
    valid: np.ndarray,
    data: pa.Buffer,
) -> pa.Array:
    n = len(values)
    valid = valid.view(np.bool_)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    if views is not None:  # text: binary views over ``data``, as the C reader wrote them
        text = pa.Array.from_buffers(pa.string_view(), n, [bitmap, pa.py_buffer(views), data])
        return text.cast(pa.string())
    if type_ == pa.bool_():
        bits = pa.py_buffer(np.packbits(values.astype(np.bool_), bitorder="little"))
        return pa.Array.from_buffers(type_, n, [bitmap, bits])
    if type_ == pa.int32():
        values = values.astype(np.int32)
    elif type_ == pa.float64():
        values = values.view(np.float64)
    # (a timestamp's epoch milliseconds are its int64 values as they are)
    return pa.Array.from_buffers(type_, n, [bitmap, pa.py_buffer(values)])
