"""Key groups: how a keyed operator's key space is split among the tasks of a parallel query.

As in Flink, every key belongs to one of ``MAX_PARALLELISM`` key groups by a stable hash of its
values, and task ``i`` of ``n`` owns the contiguous range of key groups ``[i * 128 // n,
(i + 1) * 128 // n)``. The hash is MD5 over the key values as text (computed by DataFusion, a
column at a time), so a key lands in the same group in every process, on every run and in
every version of the libraries: state kept per key group stays where its keys are routed.
Keys of integer columns only (the common case: ids) are mixed with SplitMix64 in numpy
instead, ten times faster than MD5 and just as stable.

>>> import pyarrow as pa
>>> groups = key_groups(pa.table({"k": ["a", "b", "a"]}), ["k"])
>>> bool(groups[0] == groups[2]), bool(0 <= groups.min() and groups.max() < MAX_PARALLELISM)
(True, True)
>>> task_of(groups, 1).tolist()
[0, 0, 0]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from streamhouse.sql.execute import run_sql

MAX_PARALLELISM = 128
"""Key groups of every keyed operator: the most tasks a query can be split into."""

_HEX = np.full(256, 0, dtype=np.uint32)
_HEX[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint32)


def key_groups(table: pa.Table, columns: list[str]) -> np.ndarray:
    """The key group of each row of ``table`` by its values in ``columns`` (int64; all rows
    in group 0's hash of the empty key when there are no columns)."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if columns and all(pa.types.is_integer(table.schema.field(c).type) for c in columns):
        return _integer_groups(table, columns)
    parts = [f'coalesce(CAST("{c}" AS VARCHAR), chr(0))' for c in columns] or ["''"]
    key = parts[0] if len(parts) == 1 else f"concat_ws(chr(31), {', '.join(parts)})"
    hashed = run_sql(f'SELECT md5({key}) AS h FROM "__keys"', {"__keys": table.select(columns)})
    digest = hashed["h"].combine_chunks().cast(pa.string())
    chars = np.frombuffer(
        digest.buffers()[2], dtype=np.uint8, count=32 * n, offset=digest.offset * 32
    ).reshape(n, 32)[:, :8]
    value = np.zeros(n, dtype=np.uint32)
    for i in range(8):  # the first 32 bits of the digest, from its hex text
        value = (value << np.uint32(4)) | _HEX[chars[:, i]]
    return (value % MAX_PARALLELISM).astype(np.int64)


def window_tasks(starts: np.ndarray, parallelism: int, step: int = 1) -> np.ndarray:
    """The task (of ``parallelism``) owning each window, by the key group of its start (epoch
    ms, any shape): a per-window query routed by window (:mod:`.routing`).

    A micro-batch's rows fall in few windows: when the starts are multiples of ``step`` (the
    pane width) spanning no more values than there are starts, each distinct start is hashed
    once and looked up by its index, the same key group as hashing every start.

    >>> starts = np.array([[0, 10_000], [10_000, 20_000]])
    >>> bool((window_tasks(starts, 3, 10_000) == window_tasks(starts, 3)).all())
    True
    """
    flat = np.ascontiguousarray(starts, dtype=np.int64).ravel()
    if flat.size:
        low = int(flat.min())
        span = (int(flat.max()) - low) // step + 1
        if span <= flat.size:
            index = flat - low
            if step == 1 or not np.mod(index, step).any():
                values = np.arange(span, dtype=np.int64) * step + low
                owners = task_of(
                    _integer_groups(pa.table({"start": values}), ["start"]), parallelism
                )
                return owners[index // step].reshape(np.shape(starts))
    groups = _integer_groups(pa.table({"start": flat}), ["start"])
    return task_of(groups, parallelism).reshape(np.shape(starts))


def _integer_groups(table: pa.Table, columns: list[str]) -> np.ndarray:
    mixed = np.zeros(table.num_rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            column = table[c].combine_chunks()
            values = column.fill_null(0).to_numpy(zero_copy_only=False).astype(np.uint64)
            nulls = np.asarray(column.is_null(), dtype=np.uint64)  # null apart from 0
            mixed = _splitmix(mixed ^ _splitmix(values + nulls * np.uint64(0x9E3779B9)))
    return (mixed >> np.uint64(33)).astype(np.int64) % MAX_PARALLELISM


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def task_of(groups: np.ndarray, parallelism: int) -> np.ndarray:
    """The task (of ``parallelism``) owning each key group: contiguous ranges, as Flink's."""
    return groups * parallelism // MAX_PARALLELISM


def owned_groups(task: int, parallelism: int) -> range:
    """The key groups task ``task`` of ``parallelism`` owns."""
    return range(
        -(-task * MAX_PARALLELISM // parallelism), -(-(task + 1) * MAX_PARALLELISM // parallelism)
    )
