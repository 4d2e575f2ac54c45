"""Window operators: merge each micro-batch's partial aggregates into state, emit closed windows.

:class:`WindowOperator` serves tumbling, hopping and cumulating windows: per window, runs of
partial aggregates in RocksDB (``windows`` column family, key ``u64(end) | u64(start) |
u32(run)``, so the windows a watermark closes are found in end order), one run per micro-batch
that touched the window, merged size-tiered and on emission; the heap holds only run sizes.
:class:`SessionOperator` serves session windows (the open sessions of every key, merged when a
bridging event arrives): runs of partial sessions in RocksDB (``sessions`` column family),
bucketed by key hash so that a merge holds one bucket, never all open keys. Changes are staged into the micro-batch's
:class:`~streamhouse.state.store.StateBatch` and take effect only when the caller has committed
that batch (:meth:`commit`); :meth:`rollback` forgets them.

Lateness: a row assignment to a window whose ``end + allowed_lateness`` is at or before the
watermark *before* the batch is late: dropped and counted (and offered to the late-row side
output). A window is emitted when the watermark *after* the batch reaches
``end + allowed_lateness``, so allowed lateness delays results but keeps them append-only. A
session (``[first, last + gap)``, extended by an event at ``last + gap`` itself) is emitted only
when the watermark passes ``end + allowed_lateness``.
"""

from __future__ import annotations

import logging
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import StorageError
from streamhouse.key_codes import group_codes
from streamhouse.sql.nodes import WindowAggregate
from streamhouse.sql.window_spec import WindowKind
from streamhouse.state.store import (
    ColumnFamily,
    StateBatch,
    StateStore,
    decode_table,
    encode_table,
    key_hashes,
    window_from_key,
    window_key,
)
from streamhouse.windows import aggregate, assign
from streamhouse.windows.aggregate import WINDOW_BOUNDS

log = logging.getLogger(__name__)

WINDOW_TYPE = pa.timestamp("ms")
SESSIONS_KEY = b"open"
_PANE = "__pane"


def pane_partials(
    plan: WindowAggregate, pre: pa.Table, ts: np.ndarray, watermark: int, lateness: int = 0
) -> tuple[pa.Table | None, np.ndarray]:
    """Partial aggregates of ``pre`` (keys ``__k*``, args ``__a*``; ``ts`` its event times)
    per key and pane (column ``__pane``: a slide of a hop, a step of a cumulate, a tumbling
    window), and the indices of the rows late for every window they belong to (left out).

    Rows of one pane belong to the same windows: aggregating per pane first, then spreading the
    few pane partials over their windows, is what makes HOP cheap; and partials are what a
    parallel query's tasks exchange instead of rows."""
    spec = plan.window
    assert spec is not None
    size = spec.size_ms
    pane = size if spec.kind == WindowKind.TUMBLE else (spec.slide_ms or size)
    panes = assign.tumble(ts, pane)
    last_end = panes + size if spec.kind != WindowKind.CUMULATE else assign.tumble(ts, size) + size
    on_time = last_end + lateness > watermark  # on time for at least one window
    late_rows = np.flatnonzero(~on_time)
    if len(late_rows):
        pre, panes = pre.filter(pa.array(on_time)), panes[on_time]
    if len(panes) == 0:
        return None, late_rows
    keys = [*plan.keys, _PANE]
    return aggregate.partial(
        pre.append_column(_PANE, pa.array(panes)), keys, plan.aggregates
    ), late_rows


def _with_window_types(table: pa.Table) -> pa.Table:
    """Window bounds as TIMESTAMP(3), plus ``window_time`` (end - 1 ms) as in Flink."""
    end = table["window_end"]
    table = table.set_column(
        table.schema.get_field_index("window_start"),
        "window_start",
        table["window_start"].cast(WINDOW_TYPE),
    )
    table = table.set_column(
        table.schema.get_field_index("window_end"), "window_end", end.cast(WINDOW_TYPE)
    )
    return table.append_column("window_time", pc.subtract(end, 1).cast(WINDOW_TYPE))


Window = tuple[int, int]
"""(start, end) of a window, epoch milliseconds."""
MAX_RUNS = 8
"""A window with more partial runs than this has them merged into one (in the same batch)."""
_RUN = struct.Struct(">I")


def _smaller_half(runs: list) -> list:
    """The runs to merge when there are more than :data:`MAX_RUNS`: the smaller half by rows
    (size-tiered, as an LSM tree), so each row is merged about log(batches) times and a merge
    never holds all of a window's or bucket's rows. A run is ``(seq, rows, ...)``."""
    return sorted(runs, key=lambda run: (run[1], run[0]))[: MAX_RUNS // 2 + 1]


def run_key(window: Window, seq: int) -> bytes:
    """The ``windows`` key of run ``seq`` of ``window``: ``u64(end) | u64(start) | u32(seq)``."""
    return window_key(*window) + _RUN.pack(seq)


def _run_from_key(key: bytes) -> tuple[Window, int]:
    """(window, seq) of a ``windows`` key."""
    return window_from_key(key[:16]), _RUN.unpack(key[16:20])[0]


class WindowOperator:
    """Tumbling, hopping and cumulating window aggregation over RocksDB state.

    Each micro-batch adds, per window it touches, one *run*: the batch's partial aggregates of
    that window, one row per key, written to RocksDB (``windows`` column family, key
    ``u64(end) | u64(start) | u32(seq)``). Runs are merged when a window has more than
    :data:`MAX_RUNS` of them, and when the window closes. The heap holds only run sizes and the
    runs of the current batch; the rest lives in RocksDB (its memtables, then SST files), so
    memory does not grow with the number of open keys, and a batch costs what it touches, not
    what the window holds.
    """

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        self._calls = plan.aggregates
        self.state: dict[Window, list[tuple[int, int]]] = {}  # window -> [(seq, rows)]
        for key, value in store.items(ColumnFamily.WINDOWS):
            window, seq = _run_from_key(key)
            rows = pa.ipc.open_stream(pa.py_buffer(value)).read_all().num_rows
            self.state.setdefault(window, []).append((seq, rows))
        self._staged: dict[Window, list[tuple[int, int]]] | None = None
        self._fresh: dict[tuple[Window, int], pa.Table] = {}  # runs of the uncommitted batch

    @property
    def open_windows(self) -> int:
        return len(self.state)

    def open_keys(self) -> int:
        """Rows of partial aggregates held (keys of open windows; more before runs merge)."""
        return sum(rows for runs in self.state.values() for _, rows in runs)

    def _stage(self) -> dict[Window, list[tuple[int, int]]]:
        if self._staged is None:
            self._staged = {w: list(runs) for w, runs in self.state.items()}
        return self._staged

    def _read(self, window: Window, seq: int) -> pa.Table:
        fresh = self._fresh.get((window, seq))
        if fresh is not None:
            return fresh
        value = self.store.get(ColumnFamily.WINDOWS, run_key(window, seq))
        if value is None:
            raise StorageError(f"window state run {window}/{seq} is missing")
        return decode_table(value)

    def _add_run(self, window: Window, table: pa.Table, batch: StateBatch) -> None:
        runs = self._stage().setdefault(window, [])
        seq = max((s for s, _ in runs), default=-1) + 1
        runs.append((seq, table.num_rows))
        self._fresh[(window, seq)] = table
        batch.put(ColumnFamily.WINDOWS, run_key(window, seq), encode_table(table))
        if len(runs) > MAX_RUNS:
            smallest = _smaller_half(runs)
            merged = self._merge(window, smallest, batch)
            runs[:] = [run for run in runs if run not in smallest]
            self._add_run(window, merged, batch)

    def _take(self, window: Window, batch: StateBatch) -> pa.Table:
        """Every run of ``window``, merged into one row per key, and removed from state."""
        return self._merge(window, self._stage().pop(window), batch)

    def _merge(self, window: Window, runs: list[tuple[int, int]], batch: StateBatch) -> pa.Table:
        """``runs`` of ``window`` merged into one row per key; their keys are deleted."""
        tables = [self._read(window, seq) for seq, _ in runs]
        for seq, _ in runs:
            self._fresh.pop((window, seq), None)
            batch.delete(ColumnFamily.WINDOWS, run_key(window, seq))
        if len(tables) == 1:
            return tables[0]
        return aggregate.combine(tables, list(self.plan.keys), self.keys, self._calls)

    def process(
        self, pre: pa.Table, ts: np.ndarray, watermark: int, batch: StateBatch
    ) -> np.ndarray:
        """Merge ``pre`` (keys ``__k*``, args ``__a*``; ``ts`` its event times) into state.

        Returns the indices of rows that were late for every window they belong to.
        """
        partials, late_rows = pane_partials(self.plan, pre, ts, watermark, self.lateness)
        if partials is not None:
            self.merge_panes(partials, watermark, batch)
        return late_rows

    def merge_panes(
        self, partials: pa.Table, watermark: int, batch: StateBatch, exchanged: bool = False
    ) -> int:
        """Merge pane partials (keys, ``__pane``, partial columns; :func:`pane_partials`) into
        the windows' runs. ``exchanged``: partials of several tasks of a parallel query, one
        row per key and pane each: they are combined, and panes late for every window (before
        ``watermark``) left out; returns how many such partial rows there were."""
        self._stage()
        spec = self.plan.window
        size = spec.size_ms
        pane = size if spec.kind == WindowKind.TUMBLE else (spec.slide_ms or size)
        late = 0
        if exchanged:
            group = [*self.plan.keys, _PANE]
            partials = aggregate.combine([partials], group, group, self._calls)
            if not partials.num_rows:
                return 0
            panes = partials[_PANE].to_numpy()
            last_end = (
                panes + size
                if spec.kind != WindowKind.CUMULATE
                else assign.tumble(panes, size) + size
            )
            on_time = last_end + self.lateness > watermark
            late = int((~on_time).sum())
            if late:
                partials = partials.filter(pa.array(on_time))
            if not partials.num_rows:
                return late
        pane_starts = partials[_PANE].to_numpy()
        partials = partials.drop_columns([_PANE])
        if spec.kind == WindowKind.TUMBLE:
            rows, starts, ends = None, pane_starts, pane_starts + size
        elif spec.kind == WindowKind.HOP:
            rows, starts = assign.hop(pane_starts, pane, size)
            ends = starts + size
        else:
            rows, starts, ends = assign.cumulate(pane_starts, pane, size)
        keep = ends + self.lateness > watermark  # a row's earlier windows may be late
        if rows is not None and not keep.all():
            rows, starts, ends = rows[keep], starts[keep], ends[keep]
        # One slice per window: sort by (end, start), cut where the window changes.
        order = np.lexsort((starts, ends))
        take = order if rows is None else rows[order]
        starts, ends = starts[order], ends[order]
        partials = partials.take(pa.array(take))
        cuts = np.flatnonzero((np.diff(starts) != 0) | (np.diff(ends) != 0)) + 1
        bounds = np.concatenate([[0], cuts, [len(order)]])
        group_keys = list(self.plan.keys)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            window = (int(starts[lo]), int(ends[lo]))
            fresh = partials.slice(lo, hi - lo)
            fresh = fresh.append_column(
                "window_start", pa.repeat(pa.scalar(window[0], pa.int64()), hi - lo)
            ).append_column("window_end", pa.repeat(pa.scalar(window[1], pa.int64()), hi - lo))
            fresh = fresh.select(self.keys + fresh.column_names[len(self.plan.keys) : -2])
            if rows is not None:  # a hop's or cumulate's panes give a key several rows
                fresh = aggregate.combine([fresh], group_keys, self.keys, self._calls)
            self._add_run(window, fresh.combine_chunks(), batch)
        return late

    def emit(self, watermark: int, batch: StateBatch) -> pa.Table | None:
        """Finalized rows of every window the watermark closes, in (end, start) order."""
        staged = self._stage()
        closed = sorted(
            (w for w in staged if w[1] + self.lateness <= watermark), key=lambda w: (w[1], w[0])
        )
        if not closed:
            return None
        tables = [self._take(window, batch) for window in closed]
        final = aggregate.finalize(pa.concat_tables(tables), self.keys, self.plan.aggregates)
        return _with_window_types(final)

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None
        self._fresh = {}

    def rollback(self) -> None:
        self._staged = None
        self._fresh = {}


class SessionOperator:
    """Session window aggregation over RocksDB state, bucketed by key hash and kept as runs.

    State: column family ``sessions``, key ``b"open" | u8(depth) | u64(bucket) | u32(run)`` ->
    Arrow IPC of partial sessions (keys, ``window_start``, ``window_end``, partials). Bucket
    ``b`` at ``depth`` holds the keys whose :func:`~streamhouse.state.store.key_hashes` end in
    the ``depth`` bits ``b``. Buckets split one at a time, as in linear hashing: with
    :attr:`depth` ``d`` and :attr:`split` ``p``, buckets ``0 .. p-1`` and ``2^d .. 2^d+p-1``
    are at depth ``d + 1`` (the halves of the first ``p`` buckets of depth ``d``), the others,
    ``p .. 2^d-1``, still at ``d``; a key's bucket is its hash's low ``d`` bits, or ``d + 1``
    bits when the low ``d`` are below ``p``. State starts as one bucket (depth 0); while the
    buckets hold more than :data:`SPLIT_ROWS` sessions each on average, the next bucket ``p``
    splits in two (``p + 1``; at ``2^d``, depth ``d + 1`` and ``p`` 0 again), so a merge holds
    about that many rows at most, however many keys are open. A micro-batch splits buckets until
    it has rewritten :data:`SPLIT_ROWS` rows more than it added to state (one bucket past that
    at most), so its write batch stays in proportion to its input, never the whole state
    rewritten at once; each split commits with its micro-batch, so a restart finds whole
    buckets at depth ``d`` and ``d + 1`` and knows ``p`` from them (an empty bucket counts as
    not split yet: it holds nothing). Without group keys, or with keys of a type
    :func:`~streamhouse.state.store.key_hashes` has no hash for, state stays one bucket.

    Each micro-batch adds to every bucket it touches one *run*: its own sessions, not yet merged
    with older ones. A bucket's runs are merged (the sessions of a key that overlap or touch
    become one, as a bridging event joins two) when they hold few rows in all
    (:data:`EAGER_ROWS`: small state stays one merged run), when there are more than
    :data:`MAX_RUNS` (the smaller half, size-tiered), and when the watermark may close one of
    its sessions (all of them: closed sessions are emitted, the rest written back as one run).
    The heap holds per run only its row count and smallest end.
    """

    def __init__(
        self, plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
    ) -> None:
        self.plan = plan
        self.store = store
        self.lateness = allowed_lateness_ms
        self.keys = [*plan.keys, *WINDOW_BOUNDS]
        self._calls = plan.aggregates
        self.depth = self.split = 0
        self.state: dict[int, list[SessionRun]] = {}
        found: dict[tuple[int, int], list[SessionRun]] = {}  # (depth, bucket) -> runs
        for key, value in store.items(ColumnFamily.SESSIONS, SESSIONS_KEY):
            if not key.startswith(SESSIONS_KEY):
                break
            depth, bucket, seq = _SESSION_RUN.unpack(key[len(SESSIONS_KEY) :])
            table = decode_table(value)
            if table.num_rows:
                found.setdefault((depth, bucket), []).append(_session_run(seq, table))
        if found:
            self.depth, self.split = _split_point(list(found))
            self.state = {bucket: runs for (_, bucket), runs in found.items()}
        self._staged: tuple[int, int, dict[int, list[SessionRun]]] | None = None
        self._fresh: dict[tuple[int, int, int], pa.Table] = {}  # runs of the uncommitted batch
        self._splittable: bool | None = None  # known from the first micro-batch's key types
        self._added = 0  # sessions the uncommitted batch added to state (before merges)
        self._wrapped = False  # the split point went round to 0 in this micro-batch

    @property
    def open_windows(self) -> int:
        """Sessions held: exact while a bucket holds at most :data:`EAGER_ROWS`; past that, a
        session may count once per run holding part of it until the bucket's runs merge."""
        return sum(run[1] for runs in self.state.values() for run in runs)

    def open_keys(self) -> int:
        return self.open_windows

    def _stage(self) -> dict[int, list[SessionRun]]:
        if self._staged is None:
            self._staged = (
                self.depth,
                self.split,
                {b: list(runs) for b, runs in self.state.items()},
            )
        return self._staged[2]

    @property
    def _layout(self) -> tuple[int, int]:
        """(depth, split point) as staged."""
        staged = self._staged
        return (staged[0], staged[1]) if staged is not None else (self.depth, self.split)

    def _bucket_depth(self, bucket: int) -> int:
        """The depth of ``bucket``'s keys (``d + 1`` once split, else ``d``)."""
        depth, split = self._layout
        return depth + 1 if bucket < split or bucket >= 1 << depth else depth

    def process(
        self, pre: pa.Table, ts: np.ndarray, watermark: int, batch: StateBatch
    ) -> np.ndarray:
        gap = self.plan.window.gap_ms or 0
        on_time = ts + gap + self.lateness > watermark
        late_rows = np.flatnonzero(~on_time)
        if not on_time.all():
            pre = pre.filter(pa.array(on_time))
            ts = ts[on_time]
        self._stage()
        if self._splittable is None:  # whether the keys have a hash (their types say)
            keys = list(self.plan.keys)
            self._splittable = bool(keys) and key_hashes(pre.slice(0, 0), keys) is not None
        if len(ts) == 0:
            return late_rows
        codes = self._key_codes(pre)
        ids, starts, ends = assign.sessions(codes, ts, gap)
        tagged = pre.append_column("window_start", pa.array(starts[ids])).append_column(
            "window_end", pa.array(ends[ids])
        )
        fresh = aggregate.partial(tagged, self.keys, self._calls)
        self._added += fresh.num_rows
        for bucket, part in self._by_bucket(fresh):
            self._add_run(bucket, part, batch)
        return late_rows

    def emit(self, watermark: int, batch: StateBatch) -> pa.Table | None:
        # Strictly before: an event at exactly ``end`` (last event + gap) still extends the
        # session, and such an event is on time while the watermark equals ``end``.
        staged = self._stage()
        closable = [
            bucket
            for bucket, runs in staged.items()
            if runs and min(run[2] for run in runs) + self.lateness < watermark
        ]
        tables = []
        for bucket in sorted(closable):
            current = self._take(bucket, batch)
            closing = pc.less(pc.add(current["window_end"], self.lateness), watermark)
            tables.append(current.filter(closing))
            remaining = current.filter(pc.invert(closing))
            if remaining.num_rows:
                self._add_run(bucket, remaining, batch)
        if self._splittable:
            self._split(batch)
        closed = pa.concat_tables(tables) if tables else None
        if closed is None or closed.num_rows == 0:
            return None
        order = np.lexsort((closed["window_start"].to_numpy(), closed["window_end"].to_numpy()))
        closed = closed.take(pa.array(order))
        return _with_window_types(aggregate.finalize(closed, self.keys, self.plan.aggregates))

    def _held(self) -> int:
        return sum(run[1] for runs in self._stage().values() for run in runs)

    def _by_bucket(self, table: pa.Table) -> list[tuple[int, pa.Table]]:
        """``table``'s rows split by the bucket they fall in (as staged)."""
        depth, split = self._layout
        if (depth == 0 and split == 0) or table.num_rows == 0:
            return [(0, table)]
        hashes = key_hashes(table, list(self.plan.keys)) if self.plan.keys else None
        if hashes is None:  # no hash for these key types: every key stays in bucket 0
            return [(0, table)]
        buckets = hashes & np.uint64((1 << depth) - 1)
        if split:
            split_ones = buckets < np.uint64(split)
            buckets[split_ones] = hashes[split_ones] & np.uint64((2 << depth) - 1)
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
        table = table.take(pa.array(order))
        out = []
        for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(order)].tolist(), strict=True):
            out.append((int(sorted_buckets[lo]), table.slice(lo, hi - lo)))
        return out

    def _split(self, batch: StateBatch) -> None:
        """Split buckets, the next one at a time, while they hold more than :data:`SPLIT_ROWS`
        sessions each on average, until this micro-batch has rewritten :data:`SPLIT_ROWS` more
        rows than it added (the next micro-batch goes on from there). Last in a micro-batch
        (nothing reads state after it), so the rewritten runs are not kept in memory as well as
        in the write batch."""
        budget = SPLIT_ROWS + self._added
        self._wrapped = False
        while budget > 0 and not self._wrapped:
            depth, split = self._layout
            if depth >= _MAX_DEPTH or self._held() <= SPLIT_ROWS * ((1 << depth) + split):
                return
            budget -= self._split_next(batch)

    def _split_next(self, batch: StateBatch) -> int:
        """Bucket ``p`` (at depth ``d``) into ``p`` and ``p + 2^d`` at ``d + 1``; the rows moved."""
        depth, split = self._layout
        runs = self._stage().pop(split, [])
        table = self._merge(split, runs, batch) if runs else None
        split += 1
        if split == 1 << depth:  # every bucket split: the halves written now split no more in
            depth, split = depth + 1, 0  # this micro-batch (only the write batch holds them)
            self._wrapped = True
        self._staged = (depth, split, self._stage())
        if table is None:
            return 0
        log.debug(
            "session bucket split: %d sessions, depth %d, split %d", table.num_rows, *self._layout
        )
        for half, part in self._by_bucket(table):
            if part.num_rows:
                self._add_run(half, part, batch)
                self._fresh.pop((self._bucket_depth(half), half, 0), None)
        return table.num_rows

    def _read(self, depth: int, bucket: int, seq: int) -> pa.Table:
        fresh = self._fresh.get((depth, bucket, seq))
        if fresh is not None:
            return fresh
        value = self.store.get(ColumnFamily.SESSIONS, _session_key(depth, bucket, seq))
        if value is None:
            raise StorageError(f"session state run {bucket}/{seq} is missing")
        return decode_table(value)

    def _add_run(self, bucket: int, table: pa.Table, batch: StateBatch) -> None:
        runs = self._stage().setdefault(bucket, [])
        seq = max((run[0] for run in runs), default=-1) + 1
        table = table.combine_chunks()
        runs.append(_session_run(seq, table))
        depth = self._bucket_depth(bucket)
        self._fresh[(depth, bucket, seq)] = table
        batch.put(ColumnFamily.SESSIONS, _session_key(depth, bucket, seq), encode_table(table))
        if len(runs) > 1 and sum(run[1] for run in runs) <= EAGER_ROWS:
            self._add_run(bucket, self._take(bucket, batch), batch)
        elif len(runs) > MAX_RUNS:
            smallest = _smaller_half(runs)
            merged = self._merge(bucket, smallest, batch)
            runs[:] = [run for run in runs if run not in smallest]
            self._add_run(bucket, merged, batch)

    def _take(self, bucket: int, batch: StateBatch) -> pa.Table:
        """Every run of ``bucket``, merged, and removed from state."""
        return self._merge(bucket, self._stage().pop(bucket), batch)

    def _merge(self, bucket: int, runs: list[SessionRun], batch: StateBatch) -> pa.Table:
        """``runs`` of ``bucket`` merged: one row per key and session; their keys are deleted."""
        depth = self._bucket_depth(bucket)
        tables = [self._read(depth, bucket, run[0]) for run in runs]
        for run in runs:
            self._fresh.pop((depth, bucket, run[0]), None)
            batch.delete(ColumnFamily.SESSIONS, _session_key(depth, bucket, run[0]))
        if len(tables) == 1:
            return tables[0]
        combined = pa.concat_tables(tables, promote_options="permissive")
        merged_ids, m_start, m_end = assign.merge_intervals(
            self._key_codes(combined),
            combined["window_start"].to_numpy(),
            combined["window_end"].to_numpy(),
        )
        combined = combined.set_column(
            combined.schema.get_field_index("window_start"),
            "window_start",
            pa.array(m_start[merged_ids]),
        )
        combined = combined.set_column(
            combined.schema.get_field_index("window_end"), "window_end", pa.array(m_end[merged_ids])
        )
        return aggregate.combine([combined], self.keys, self.keys, self._calls)

    def _key_codes(self, table: pa.Table) -> np.ndarray:
        """Equal codes for rows of one group key (all rows: one key when there are none)."""
        keys = list(self.plan.keys)
        if not keys:
            return np.zeros(table.num_rows, np.int64)
        return group_codes([table[k] for k in keys])

    def commit(self) -> None:
        if self._staged is not None:
            self.depth, self.split, state = self._staged
            self.state = {b: runs for b, runs in state.items() if runs}
            self._staged = None
        self._fresh = {}
        self._added = 0

    def rollback(self) -> None:
        self._staged = None
        self._fresh = {}
        self._added = 0


SessionRun = tuple[int, int, int]
"""(run, sessions, smallest window_end) of one run of a session bucket."""
SPLIT_ROWS = 1 << 18
"""Session buckets split (the next one in two) while they hold more than this many sessions
each on average; a micro-batch splits until it has rewritten this many rows more than it
added. A split or merge of a bucket holds a few copies of its rows for a moment: 10M open keys
at parallelism 2 peaked at 1.56-1.63 GiB summed over the processes at 256k, 1.80-1.95 GiB at
512k, for the same CPU (2 alternating pairs:
``benchmarks/results/windows_parallel_state_session_split_ab.json``)."""
EAGER_ROWS = 1 << 16
"""A bucket whose runs hold this many sessions or fewer is kept merged into one run."""
_MAX_DEPTH = 24
_SESSION_RUN = struct.Struct(">BQI")


def _session_key(depth: int, bucket: int, seq: int) -> bytes:
    return SESSIONS_KEY + _SESSION_RUN.pack(depth, bucket, seq)


def _split_point(buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """(depth, split point) of stored session state from its non-empty ``(depth, bucket)``s:
    buckets of one depth ``d`` (split point 0), or of ``d`` and ``d + 1`` in the middle of
    splitting, the split point past the last bucket of ``d`` that has halves at ``d + 1``."""
    depths = sorted({depth for depth, _ in buckets})
    if len(depths) == 1:
        return depths[0], 0
    low = depths[0]
    mask = (1 << low) - 1
    halves = [bucket & mask for depth, bucket in buckets if depth == low + 1]
    unsplit = [bucket for depth, bucket in buckets if depth == low]
    if len(depths) > 2 or not halves or min(unsplit) <= max(halves):
        raise StorageError(f"session state buckets at depths {depths} do not fit together")
    return low, max(halves) + 1


def _session_run(seq: int, table: pa.Table) -> SessionRun:
    ends = table["window_end"]
    return (seq, table.num_rows, int(pc.min(ends).as_py()) if table.num_rows else 1 << 62)


def make_operator(
    plan: WindowAggregate, store: StateStore, allowed_lateness_ms: int = 0
) -> WindowOperator | SessionOperator:
    if plan.window.kind == WindowKind.SESSION:
        return SessionOperator(plan, store, allowed_lateness_ms)
    return WindowOperator(plan, store, allowed_lateness_ms)
