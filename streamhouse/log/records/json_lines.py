"""Record values as newline-delimited JSON, for SQL sources: values are not copied out of
the decompressed records but become views of them, and the bytes between them are blanked
so that pyarrow's JSON reader parses them where they lie.

>>> buf = np.frombuffer(bytearray(b'xx{"a":1}yy{"a":2}z'), np.uint8).copy()
>>> lines = blank_between_values(buf, len(buf), np.array([2, 11]), np.array([7, 7]))
>>> lines.buffer.to_pybytes()
b'  {"a":1}\\n {"a":2}\\n'
>>> lines.starts.tolist()
[2, 11, 19]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

__all__ = ["JsonLines", "blank_between_values", "value_views", "views_of"]


class JsonLines:
    """The values of some decoded records as newline-delimited text, ready for a JSON reader.

    Line ``i`` is ``buffer[starts[i]:starts[i + 1]]``: the value of row ``rows[i]``, a newline,
    then blanks. Rows with a null or empty value have no line. ``buffer`` and ``starts`` are
    made on first use (by blanking the bytes between the values in place, or by joining the
    values): a reader that takes the values one by one, from the ``value`` column, never
    pays for them.
    """

    __slots__ = ("_make", "_text", "rows")

    def __init__(self, rows: np.ndarray, make: Callable[[], tuple[pa.Buffer, np.ndarray]]) -> None:
        self.rows = rows
        self._make: Callable[[], tuple[pa.Buffer, np.ndarray]] | None = make
        self._text: tuple[pa.Buffer, np.ndarray] | None = None

    def _made(self) -> tuple[pa.Buffer, np.ndarray]:
        if self._text is None:
            self._text = self._make()  # type: ignore[misc]
            self._make = None
        return self._text

    @property
    def buffer(self) -> pa.Buffer:
        return self._made()[0]

    @property
    def starts(self) -> np.ndarray:
        return self._made()[1]


def value_views(
    data: pa.Buffer, buf: np.ndarray, start: np.ndarray, length: np.ndarray
) -> pa.Array:
    """Binary view array of ``buf[start:start+length]`` (null where length < 0), without
    copying: a value longer than 12 bytes is a view into ``data``; a shorter one is inlined."""
    n = len(start)
    size = np.maximum(length, 0)
    words = np.zeros((n, 4), np.int32)  # length | inline bytes, or prefix | buffer 0 | offset
    words[:, 0] = size
    long = size > 12
    words[long, 3] = start[long]
    raw = words.view(np.uint8).reshape(n, 16)
    short = np.flatnonzero(~long)
    if n and int(start.max()) <= len(buf) - 4:  # a long value's first four bytes, as a word
        prefixes = np.ndarray((len(buf) - 3,), dtype="<i4", buffer=buf, strides=(1,))
        words[:, 1] = prefixes[start]
    else:
        for k in range(4):
            raw[:, 4 + k] = buf.take(start + k, mode="clip")
    if len(short):  # a short value is inlined, zero-padded
        head = buf.take(start[short, None] + _COLS12, mode="clip")
        head[_COLS12[None, :] >= size[short, None]] = 0
        raw[short, 4:] = head
    validity = None
    if (length < 0).any():
        validity = pa.py_buffer(np.packbits(length >= 0, bitorder="little"))
    return pa.Array.from_buffers(pa.binary_view(), n, [validity, pa.py_buffer(raw), data])


def views_of(
    data: pa.Buffer, raw: np.ndarray, length: np.ndarray, kept: np.ndarray, n: int
) -> pa.Array:
    """Binary view array over ``data`` of the view entries ``raw`` (n x 16 bytes, as
    :func:`value_views` makes them) at rows ``kept`` (null where ``length`` < 0)."""
    if len(kept) != n:
        raw, length = raw[kept], length[kept]
    validity = None
    if (length < 0).any():
        validity = pa.py_buffer(np.packbits(length >= 0, bitorder="little"))
    return pa.Array.from_buffers(pa.binary_view(), len(raw), [validity, pa.py_buffer(raw), data])


_COLS12 = np.arange(12, dtype=np.int64)
_BLANK_GAPS = 1 << 14


def blank_between_values(
    buf: np.ndarray, total: int, start: np.ndarray, length: np.ndarray
) -> JsonLines:
    """The values in ``buf[:total]`` as newline-delimited text, made in place when first
    asked for: every byte outside the values (non-empty ones) becomes a space, and a newline
    follows each value (over the byte after it, which is part of its record). The caller
    copies out what it needs of those bytes (keys, headers) first."""
    present = length > 0
    rows = np.arange(len(length)) if present.all() else np.flatnonzero(present)

    def blank() -> tuple[pa.Buffer, np.ndarray]:
        lo = start if len(rows) == len(start) else start[rows]
        end = lo + length[rows]
        gap_lo = np.concatenate(([0], end))
        gap_hi = np.concatenate((lo, [total]))
        gap = gap_hi - gap_lo
        index = np.int32 if total < 1 << 31 else np.int64
        for i in range(0, len(gap), _BLANK_GAPS):  # small index arrays: no fresh pages to fault
            g, at = gap[i : i + _BLANK_GAPS], gap_lo[i : i + _BLANK_GAPS]
            first = np.cumsum(g) - g
            spaces = np.repeat((at - first).astype(index), g)
            spaces += np.arange(len(spaces), dtype=index)
            buf[spaces] = 0x20
        buf[end] = 0x0A
        return pa.py_buffer(buf[:total]), np.concatenate((lo, [total]))

    return JsonLines(rows, blank)
