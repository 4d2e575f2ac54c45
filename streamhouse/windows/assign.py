"""Window assigners: which windows each row belongs to, vectorized over a whole batch.

Windows are half-open ``[start, end)`` in epoch milliseconds, aligned to the epoch (a one-minute
tumbling window starts on the minute). Every function takes event times as an int64 numpy
array of milliseconds and returns numpy arrays; none loops over rows in Python.

- tumbling: one window per row;
- hopping (``slide``, ``size``; size a multiple of slide): ``size / slide`` windows per row;
- cumulating (``step``, ``size``): the windows ``[floor(ts, size), floor(ts, size) + k*step)`` that
  still contain the row;
- session (``gap``): per key, rows closer than ``gap`` (inclusive, as Flink merges
  touching windows) share a session ``[first, last + gap)``.

>>> import numpy as np
>>> tumble(np.array([0, 59_999, 60_000]), 60_000)
array([    0,     0, 60000])
"""

from __future__ import annotations

import numpy as np

_I64 = np.int64


def tumble(ts: np.ndarray, size: int) -> np.ndarray:
    """The start of each row's tumbling window."""
    return ts - np.mod(ts, size)


def hop(ts: np.ndarray, slide: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(row index, window start) for every hopping window of every row."""
    per_row = size // slide
    last = ts - np.mod(ts, slide)
    rows = np.repeat(np.arange(len(ts), dtype=_I64), per_row)
    starts = (last[:, None] - np.arange(per_row, dtype=_I64)[None, :] * slide).ravel()
    return rows, starts


def cumulate(ts: np.ndarray, step: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row index, window start, window end) for every cumulating window of every row."""
    starts = ts - np.mod(ts, size)
    first = (ts - starts) // step + 1  # the smallest k with start + k*step > ts
    per_row = size // step - first + 1
    rows = np.repeat(np.arange(len(ts), dtype=_I64), per_row)
    # k runs first..size/step for each row: a running index inside each row's run
    run_start = np.repeat(np.cumsum(per_row) - per_row, per_row)
    k = np.arange(len(rows), dtype=_I64) - run_start + np.repeat(first, per_row)
    return rows, starts[rows], starts[rows] + k * step


def sessions(
    codes: np.ndarray, ts: np.ndarray, gap: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sessions per key code: (session id per row, session start per id, session end per id).

    A session is ``[first event, last event + gap)``; the next event of the same key starts a new
    session only if it comes more than ``gap`` after the previous one.
    """
    n = len(ts)
    if n == 0:
        empty = np.zeros(0, dtype=_I64)
        return empty, empty, empty
    order = np.lexsort((ts, codes))
    sorted_ts = ts[order]
    sorted_codes = codes[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (sorted_codes[1:] != sorted_codes[:-1]) | (sorted_ts[1:] - sorted_ts[:-1] > gap)
    sorted_ids = np.cumsum(new) - 1
    ids = np.empty(n, dtype=_I64)
    ids[order] = sorted_ids
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], n) - 1
    return ids, sorted_ts[heads], sorted_ts[tails] + gap


def merge_intervals(
    codes: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge intervals ``[start, end]`` of the same key that overlap or touch.

    Returns (merged id per input interval, merged start per id, merged end per id). This is how
    a late-arriving bridging event joins two open sessions into one.
    """
    n = len(starts)
    if n == 0:
        empty = np.zeros(0, dtype=_I64)
        return empty, empty, empty
    order = np.lexsort((starts, codes))
    s, e, c = starts[order], ends[order], codes[order]
    # Running max of the end within each key: offset each key's ends so a plain running max
    # never carries over from the previous key.
    base = s.min()
    span = int(e.max() - base) + 1
    key_rank = np.cumsum(np.r_[True, c[1:] != c[:-1]]) - 1
    if span * (int(key_rank[-1]) + 1) < (1 << 62):
        shifted = (e - base) + key_rank * span
        running = np.maximum.accumulate(shifted) - key_rank * span + base
    else:  # astronomically wide data: fall back to a per-key loop over keys (not rows)
        running = np.empty_like(e)
        bounds = np.flatnonzero(np.r_[True, c[1:] != c[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            running[lo:hi] = np.maximum.accumulate(e[lo:hi])
    new = np.ones(n, dtype=bool)
    new[1:] = (c[1:] != c[:-1]) | (s[1:] > running[:-1])
    sorted_ids = np.cumsum(new) - 1
    ids = np.empty(n, dtype=_I64)
    ids[order] = sorted_ids
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], n) - 1
    return ids, s[heads], running[tails]
