"""JSON values that are never handed to a JSON reader or a schema, because they can crash
the process. Two kinds are found without parsing them, by vectorized passes over their bytes:

- values nested too deep (:func:`too_deep`). pyarrow 26's JSON reader overflows the stack
  (a segmentation fault) between 10,000 and 20,000 levels, and formatting such a type
  (``ListType::ToString``) at 10,000; Python's ``json`` raises RecursionError near 1,000;
  DataFusion 55 refuses an Arrow schema nested more than 64 levels, which fails the whole
  query; DuckDB's reader (yyjson) takes 1,000,000 levels. So a schema is inferred only from
  values at most :data:`MAX_JSON_DEPTH` deep (DataFusion's bound), and pyarrow's reader
  never sees one deeper than :data:`READER_MAX_DEPTH` (a tenth of where it crashes);
- values whose first non-blank byte is ``n`` (:func:`null_first`): JSON ``null``, or not
  JSON at all. pyarrow 26's JSON reader crashes (a segmentation fault) when a block it
  reads starts with one, with or without an explicit schema. None is a JSON object, so
  none is a row.

The check costs little: only values longer than the bound can be deeper, only those among
them with more than the bound of ``[`` and ``{`` bytes are looked at closely (string-aware),
and each step is a vectorized pass over the bytes, never a loop over values. With the
reader's bound of 1,000, no ordinary record gets past the byte count.

>>> import pyarrow as pa
>>> too_deep(pa.array([b'{"a": [1]}', b"[" * 100 + b"]" * 100, b'{"s": "' + b"[" * 100 + b'"}']))
array([1])
>>> null_first(pa.array([b'{"a": 1}', b"null", b"  null", b"nix", None, b'"null"']))
array([1, 2, 3])
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MAX_JSON_DEPTH = 63
"""The deepest JSON value a schema is inferred from or ``produce`` takes as JSON: a
top-level object is depth 1, ``{"a": [1]}`` depth 2. DataFusion takes its Arrow type."""

READER_MAX_DEPTH = 1_000
"""The deepest JSON value handed to pyarrow's JSON reader."""

NOT_AN_OBJECT = "not a JSON object"
"""The reason a value starting with ``n`` is rejected (the reason the readers give)."""

_OPEN = 0x7B  # '{'; '[' (0x5B) differs only in bit 0x20
_CLOSE = 0x7D  # '}'; ']' (0x5D) likewise
_CASE_BIT = 0x20
_QUOTE = 0x22
_BACKSLASH = 0x5C
_N = 0x6E  # 'n'
_BLANKS = np.frombuffer(b" \t\r\n", np.uint8)
_NO_BYTES = np.zeros(0, np.uint8)
_INLINE = 12  # a view holds a value of up to this many bytes itself
_SCAN_BYTES = 1 << 24  # bytes of deep-looking values scanned exactly at a time


def unreadable(
    values: pa.Array | pa.ChunkedArray, bound: int = READER_MAX_DEPTH
) -> list[tuple[int, str]]:
    """(index, reason) of each value never handed to a reader (deeper than ``bound``, or
    starting with ``n``), in index order.

    >>> unreadable(pa.array([b"null", b'{"a": 1}', b"[" * 64]), MAX_JSON_DEPTH)
    [(0, 'not a JSON object'), (2, 'nested deeper than 63 levels')]
    """
    deep = too_deep(values, bound)
    null = np.setdiff1d(null_first(values), deep)
    reason = f"nested deeper than {bound} levels"
    found = [(int(i), reason) for i in deep] + [(int(i), NOT_AN_OBJECT) for i in null]
    return sorted(found)


def too_deep(values: pa.Array | pa.ChunkedArray, bound: int = MAX_JSON_DEPTH) -> np.ndarray:
    """The indices of the ``values`` (binary, text or their view and large types) that nest
    deeper than ``bound``. Brackets inside strings do not count; a value that is not JSON
    counts its unclosed brackets."""
    if isinstance(values, pa.ChunkedArray):
        found, base = [], 0
        for chunk in values.chunks:
            found.append(too_deep(chunk, bound) + base)
            base += len(chunk)
        return np.concatenate(found) if found else np.zeros(0, np.int64)
    if bound < _INLINE and (
        pa.types.is_binary_view(values.type) or pa.types.is_string_view(values.type)
    ):
        values = values.cast(pa.binary())  # (inlined values are not in a data buffer)
    buffers, which, starts, lengths = _spans(values)
    long = np.flatnonzero(lengths > bound)  # only a value longer than the bound can be deeper
    if len(long) == 0:
        return np.zeros(0, np.int64)
    deep: list[np.ndarray] = []
    for b in range(len(buffers)) if len(buffers) > 1 else [0]:
        rows = long[which[long] == b] if len(buffers) > 1 else long
        if len(rows) == 0:
            continue
        if (starts[rows][1:] < starts[rows][:-1]).any():
            rows = rows[np.argsort(starts[rows], kind="stable")]
        data = np.frombuffer(buffers[b], np.uint8)
        rows = rows[_many_brackets(data, starts[rows], lengths[rows], bound)]
        for part in _parts(rows, lengths):
            deep.append(part[_depths(data, starts[part], lengths[part]) > bound])
    return np.sort(np.concatenate(deep)) if deep else np.zeros(0, np.int64)


def null_first(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The indices of the ``values`` whose first byte that is not a blank is ``n``."""
    if isinstance(values, pa.ChunkedArray):
        found, base = [], 0
        for chunk in values.chunks:
            found.append(null_first(chunk) + base)
            base += len(chunk)
        return np.concatenate(found) if found else np.zeros(0, np.int64)
    first, lengths = _first_bytes(values)
    hits = (first == _N) & (lengths > 0)
    blank = np.flatnonzero(np.isin(first, _BLANKS) & (lengths > 0))
    if len(blank):
        hits[blank] = _null_after_blanks(values, blank)
    return np.flatnonzero(hits)


def _null_after_blanks(values: pa.Array, rows: np.ndarray) -> np.ndarray:
    """Whether the first byte after the leading blanks of each of ``values[rows]`` is ``n``:
    one vectorized step per leading blank."""
    if pa.types.is_binary_view(values.type) or pa.types.is_string_view(values.type):
        values = values.view(pa.binary_view()).cast(pa.binary())  # (a copy: a rare path)
    buffers, _, starts, lengths = _spans(values)
    data = np.frombuffer(buffers[0], np.uint8)
    at, end = starts[rows].copy(), starts[rows] + lengths[rows]
    result = np.zeros(len(rows), np.bool_)
    live = np.arange(len(rows))
    while len(live):
        byte = data[at[live]]
        blank = np.isin(byte, _BLANKS)
        result[live[~blank]] = byte[~blank] == _N
        live = live[blank]
        at[live] += 1
        live = live[at[live] < end[live]]
    return result


def _first_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each value's first byte (0 if it has none) and its length (0 for a null)."""
    n, kind = len(values), values.type
    buffers = values.buffers()
    if pa.types.is_binary_view(kind) or pa.types.is_string_view(kind):
        words = np.frombuffer(buffers[1], np.int32, count=4 * n, offset=values.offset * 16)
        lengths = words[::4].astype(np.int64)
        first = words.view(np.uint8)[4::16].copy()  # the prefix, or the inlined value
    else:
        _, _, starts, lengths = _spans(values)
        data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else _NO_BYTES
        first = (
            data[np.minimum(starts, max(len(data) - 1, 0))] if len(data) else np.zeros(n, np.uint8)
        )
    if values.null_count:
        lengths = np.where(values.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    return np.where(lengths > 0, first, 0).astype(np.uint8), lengths


def depth(value: bytes) -> int:
    """How deeply one JSON text nests (0 for a scalar).

    >>> depth(b'{"a": [[1], {"b": "]]"}]}')
    3
    """
    data = np.frombuffer(value, np.uint8)
    if len(data) == 0:
        return 0
    return int(_depths(data, np.zeros(1, np.int64), np.array([len(data)], np.int64))[0])


def _spans(values: pa.Array) -> tuple[list[pa.Buffer], np.ndarray, np.ndarray, np.ndarray]:
    """Where each value's bytes are: its data buffer (an index into the first result), start
    and length (0 for a null, and for a view's value of up to 12 bytes, which it inlines)."""
    n, kind = len(values), values.type
    buffers = values.buffers()
    if pa.types.is_binary_view(kind) or pa.types.is_string_view(kind):
        words = np.frombuffer(buffers[1], np.int32, count=4 * n, offset=values.offset * 16)
        words = words.reshape(n, 4)  # length | prefix | buffer index | offset
        lengths = np.where(words[:, 0] > _INLINE, words[:, 0], 0).astype(np.int64)
        which, starts = words[:, 2].astype(np.int64), words[:, 3].astype(np.int64)
        data = buffers[2:]
    else:
        wide = pa.types.is_large_binary(kind) or pa.types.is_large_string(kind)
        if not (wide or pa.types.is_binary(kind) or pa.types.is_string(kind)):
            raise TypeError(f"not binary or text values: {kind}")
        width = np.dtype(np.int64 if wide else np.int32)
        offsets = np.frombuffer(
            buffers[1], width, count=n + 1, offset=values.offset * width.itemsize
        ).astype(np.int64)
        starts, lengths = offsets[:-1], np.diff(offsets)
        which = np.zeros(n, np.int64)
        data = [buffers[2] if buffers[2] is not None else pa.py_buffer(b"")]
    if values.null_count:
        lengths = np.where(values.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    return data, which, starts, lengths


def _many_brackets(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, bound: int
) -> np.ndarray:
    """Which spans of ``data`` (sorted by start) hold more than ``bound`` ``[`` and ``{``
    bytes: the cheap test every long value passes through. Where no ``bound + 1`` brackets
    lie closer together than the longest span, no span is counted one by one."""
    if len(starts) == 0:
        return np.zeros(0, np.bool_)
    first, last = int(starts[0]), int((starts + lengths).max())
    folded = np.bitwise_or(data[first:last], _CASE_BIT)
    opening = np.flatnonzero(np.equal(folded, _OPEN, out=folded.view(np.bool_))) + first
    if len(opening) <= bound:
        return np.zeros(len(starts), np.bool_)
    if (opening[bound:] - opening[: len(opening) - bound] >= lengths.max()).all():
        return np.zeros(len(starts), np.bool_)
    counts = np.searchsorted(opening, starts + lengths) - np.searchsorted(opening, starts)
    return counts > bound


def _parts(rows: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """``rows`` cut into runs of about :data:`_SCAN_BYTES` bytes (the exact scan's memory)."""
    if len(rows) == 0:
        return []
    ends = np.cumsum(lengths[rows])
    cuts = np.searchsorted(ends, np.arange(_SCAN_BYTES, int(ends[-1]), _SCAN_BYTES))
    return [part for part in np.split(rows, np.unique(cuts)) if len(part)]


def _depths(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The deepest nesting in each span of ``data`` (sorted by start, non-empty): brackets
    outside strings, a string running from a quote to the next quote that is not escaped by
    an odd run of backslashes. Only the brackets and quotes are looked at one by one."""
    spans = np.stack([starts, lengths], axis=1)
    unique, inverse = np.unique(spans, axis=0, return_inverse=True)
    starts, lengths = unique[:, 0], unique[:, 1]
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():  # overlapping spans: each on its own (never in a log)
        alone = [_depths(data, starts[i : i + 1], lengths[i : i + 1]) for i in range(len(starts))]
        return np.concatenate(alone)[inverse.reshape(-1)]
    first, last = int(starts[0]), int(ends[-1])
    region = data[first:last]
    folded = region | np.uint8(_CASE_BIT)
    structural = (folded == _OPEN) | (folded == _CLOSE) | (region == _QUOTE)
    at = np.flatnonzero(structural) + first
    lo, hi = np.searchsorted(at, starts), np.searchsorted(at, ends)  # each span's events
    counts = hi - lo
    heads = np.cumsum(counts) - counts  # where each span's events start, once gathered
    span = np.repeat(np.arange(len(starts)), counts)
    at = at[np.repeat(lo - heads, counts) + np.arange(int(counts.sum()))]
    span_first = np.repeat(heads, counts)
    byte = data[at]
    quote = byte == _QUOTE
    _drop_escaped(quote, at, span, starts, np.flatnonzero(region == _BACKSLASH) + first)
    byte |= np.uint8(_CASE_BIT)
    step = (byte == _OPEN).view(np.int8) - (byte == _CLOSE).view(np.int8)
    quotes = np.cumsum(quote, dtype=np.int32)
    before = quotes - quote  # quotes before each event
    in_string = ((quotes - before[span_first]) & 1).astype(np.bool_)  # (a quote counts itself)
    step[in_string] = 0
    level = np.cumsum(step, dtype=np.int32)
    level -= (level - step)[span_first]
    result = np.zeros(len(starts), np.int64)
    some = counts > 0
    if some.any():
        result[some] = np.maximum.reduceat(level, heads[some])
    return result[inverse.reshape(-1)]


def _drop_escaped(
    quote: np.ndarray, at: np.ndarray, span: np.ndarray, starts: np.ndarray, backslash: np.ndarray
) -> None:
    """Unmark the quotes (``quote`` over the events ``at``, in ``span``) that follow an odd
    run of backslashes within their span."""
    if len(backslash) == 0:
        return
    events = np.flatnonzero(quote)
    q = at[events]
    k = np.searchsorted(backslash, q - 1)
    preceded = (k < len(backslash)) & (backslash[np.minimum(k, len(backslash) - 1)] == q - 1)
    if not preceded.any():
        return
    new_run = np.r_[True, np.diff(backslash) != 1]
    run_first = backslash[np.maximum.accumulate(np.where(new_run, np.arange(len(backslash)), 0))]
    run_from = np.maximum(run_first[np.minimum(k, len(backslash) - 1)], starts[span[events]])
    escaped = preceded & ((q - run_from) % 2 == 1)
    quote[events[escaped]] = False
