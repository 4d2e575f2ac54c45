"""Record framing in C: the fields of every record of many record batches in one pass.

``_framing.c`` is built with the package and loaded here (:mod:`streamhouse.native`: the GIL
is released while it runs), so two scan fragments frame their records on both cores. Without the library
:data:`native` is False and :mod:`~streamhouse.log.records.decode` finds the same fields in
numpy steps. Either way a malformed record is named by the numpy path: :func:`frame` only says
that something is wrong (None).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamhouse.native import load as native_library

__all__ = ["Frames", "frame", "native"]


@dataclass(frozen=True, slots=True)
class Frames:
    """Per record: where it starts and ends, its timestamp and offset deltas, its key's and
    value's start and length (-1: null), its header count; ``views``: the values as Arrow
    binary-view entries over the records buffer (n x 16 bytes), if asked for."""

    start: np.ndarray
    end: np.ndarray
    ts_delta: np.ndarray
    off_delta: np.ndarray
    key_start: np.ndarray
    key_len: np.ndarray
    value_start: np.ndarray
    value_len: np.ndarray
    header_count: np.ndarray
    views: np.ndarray | None


_library = native_library(__file__, "_framing", "frame_records", 15)
native = _library is not None
"""Whether the C framing is loaded."""


def _address(array: np.ndarray) -> int:
    return array.ctypes.data


def frame(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    counts: np.ndarray,
    views: bool = False,
) -> Frames | None:
    """The records of the sections ``buf[starts[i]:ends[i]]`` (``counts[i]`` records each),
    or None if a record is malformed or the sections do not hold exactly their records.
    ``views`` requires ``buf`` shorter than 2**31 bytes (a view's offset is an int32)."""
    assert _library is not None
    assert buf.dtype == np.uint8 and buf.flags.c_contiguous
    n = int(counts.sum())
    sections = [np.ascontiguousarray(a, np.int64) for a in (starts, ends, counts)]
    out = np.empty((9, n), np.int64)
    raw = np.empty((n, 16), np.uint8) if views else None
    bad = _library(
        _address(buf),
        len(counts),
        *(_address(a) for a in sections),
        *(_address(out[k]) for k in range(9)),
        None if raw is None else _address(raw),
    )
    if bad >= 0:
        return None
    return Frames(*out, views=raw)
