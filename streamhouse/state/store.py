"""The state of one continuous query, in RocksDB (rocksdict, raw mode, column families).

Column families and their key layouts (all integers big-endian; signed millisecond times are
stored offset by 2**63 so byte order equals time order):

``windows``
    ``u64(window_end) | u64(window_start) | u32(run)`` -> Arrow IPC stream of the partial
    aggregates one micro-batch added to that window (a run), one row per group key; runs are
    merged when the window closes. Iterating in
    key order visits windows by end time, so the windows a watermark closes are a prefix.
``sessions``
    ``b"open" | u8(depth) | u64(bucket) | u32(run)`` -> Arrow IPC stream of open sessions:
    group keys, ``window_start``, ``window_end`` (last event + gap) and partial aggregates, of
    the keys whose :func:`key_hashes` end in the ``depth`` bits ``bucket`` (see
    :class:`~streamhouse.windows.operator.SessionOperator`). Updating views keep their table
    as runs (:class:`TableState`): ``b"groups" | u32(run)`` (GROUP BY: keys, partials),
    ``b"distinct" | u32(call) | u32(run)`` (COUNT DISTINCT: the (group, value) pairs a run
    added), ``b"top_n" | u32(run)`` and ``b"recompute" | u32(run)``.
``joins``
    ``side | u64(max event time) | u64(sequence)`` -> Arrow IPC stream of buffered join input
    rows (``side`` is ``b"L"`` or ``b"R"``). Window joins: ``u8(input) | u64(pane_end) |
    u64(pane_start) | u32(run)`` (see :mod:`streamhouse.joins.windowed`). A continuous
    ``ORDER BY`` the time attribute: ``b"sort" | u64(min event time) | u64(run)`` (see
    :mod:`streamhouse.windows.time_sort`). Key order puts the oldest rows first, so expiry
    deletes a prefix.
``meta``
    ``b"source/" + u32(partition)`` -> u64 next source offset to read;
    ``b"event_time/" + u32(partition)`` -> u64 max event time seen in that partition;
    ``b"sink/" + u32(partition)`` -> u64 records this query has written to that sink partition;
    ``b"pending"`` -> JSON end offsets of a micro-batch whose output may be partly written;
    ``b"counters"`` -> JSON counters (rows in, rows out, late rows, rejected rows);
    ``b"definition"`` -> the query's statement as it runs (views inlined), SQL text: state
    built by another definition is refused (:mod:`streamhouse.runtime.query`);
    ``b"format"`` -> u64 :data:`STATE_FORMAT`, the layout above, written when the state is
    created. A store of another format (or none: an older build's) is refused with
    :class:`~streamhouse.errors.StateFormatError`, never read.

A micro-batch is one atomic, synced ``WriteBatch``: state, source offsets and sink progress move
together, so every committed micro-batch is a checkpoint.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rocksdict import Checkpoint, Options, Rdict, WriteBatch, WriteOptions

from streamhouse.errors import StateFormatError, StorageError
from streamhouse.key_codes import group_codes

log = logging.getLogger(__name__)


class ColumnFamily(StrEnum):
    """The column families of a query's state; their key layouts are above."""

    WINDOWS = "windows"
    SESSIONS = "sessions"
    JOINS = "joins"
    META = "meta"


COLUMN_FAMILIES = tuple(ColumnFamily)
STATE_FORMAT = 1
"""The version of the key layout above; a change to it that old state cannot be read in bumps it."""
FORMAT = b"format"
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_BIAS = 1 << 63


def time_key(ms: int) -> bytes:
    """An order-preserving 8-byte key for a signed millisecond time."""
    return _U64.pack(ms + _BIAS)


def time_from_key(key: bytes) -> int:
    return _U64.unpack(key)[0] - _BIAS


def window_key(start: int, end: int) -> bytes:
    return time_key(end) + time_key(start)


def window_from_key(key: bytes) -> tuple[int, int]:
    """(start, end) of a ``windows`` key."""
    return time_from_key(key[8:16]), time_from_key(key[:8])


def partition_key(prefix: bytes, partition: int) -> bytes:
    return prefix + _U32.pack(partition)


def encode_table(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream, written once into a buffer of its exact size (measured
    first: a growing buffer would copy a large run over and over as it doubles)."""
    measured = pa.MockOutputStream()
    with pa.ipc.new_stream(measured, table.schema) as writer:
        writer.write_table(table)
    buffer = pa.allocate_buffer(measured.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buffer), table.schema) as writer:
        writer.write_table(table)
    return buffer.to_pybytes()


def decode_table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


class StateStore:
    """One RocksDB database per continuous query; one process may open it at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._db = Rdict(
                str(self.path),
                _options(),
                column_families={name: Options(raw_mode=True) for name in COLUMN_FAMILIES},
            )
        except Exception as exc:  # rocksdict raises plain Exceptions (e.g. the LOCK is held)
            raise StorageError(f"cannot open query state at {self.path}: {exc}") from None
        self._cf = {name: self._db.get_column_family(name) for name in COLUMN_FAMILIES}
        self._handles = {name: self._db.get_column_family_handle(name) for name in COLUMN_FAMILIES}
        self._sync = WriteOptions()
        self._sync.sync = True
        self._unsynced = WriteOptions()  # written to the WAL file, not fsynced (see commit)
        try:
            self._check_format()
        except BaseException:
            self.close()
            raise

    def _check_format(self) -> None:
        """Stamp new state with :data:`STATE_FORMAT`; refuse state of any other format."""
        found = self.get_int(FORMAT)
        if found is None and not any(
            next(iter(cf.keys()), None) is not None for cf in self._cf.values()
        ):
            batch = self.batch()
            batch.put_int(FORMAT, STATE_FORMAT)
            self.commit(batch)
            return
        if found != STATE_FORMAT:
            written = f"state format {found}" if found is not None else "no state format"
            raise StateFormatError(
                f"query state at {self.path} has {written} (an older build's?); this StreamHouse"
                f" reads state format {STATE_FORMAT}: delete the directory to start the query"
                " afresh from its sources"
            )

    # -- reads --------------------------------------------------------------------------------

    def get(self, family: str, key: bytes) -> bytes | None:
        return self._cf[family].get(key)

    def items(self, family: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        yield from self._cf[family].items(from_key=start) if start else self._cf[family].items()

    def get_int(self, key: bytes) -> int | None:
        value = self._cf[ColumnFamily.META].get(key)
        return None if value is None else _U64.unpack(value)[0]

    def get_json(self, key: bytes) -> Any:
        value = self._cf[ColumnFamily.META].get(key)
        return None if value is None else json.loads(value)

    def size_bytes(self) -> int:
        """Estimated live bytes of state (window and session column families)."""
        total = 0
        for name in (ColumnFamily.WINDOWS, ColumnFamily.SESSIONS, ColumnFamily.JOINS):
            for prop in ("rocksdb.estimate-live-data-size", "rocksdb.cur-size-all-mem-tables"):
                value = self._cf[name].property_int_value(prop)
                total += value or 0
        return total

    # -- writes -------------------------------------------------------------------------------

    def batch(self) -> StateBatch:
        return StateBatch(self)

    def commit(self, batch: StateBatch, sync: bool = True) -> None:
        """Apply ``batch`` atomically and durably; without ``sync`` atomically, and durable
        against a killed process (the WAL is written) but not an operating system crash until
        the next synced commit (the WAL is one ordered file: that commit makes this one
        durable first)."""
        try:
            self._db.write(batch.write_batch, self._sync if sync else self._unsynced)
        except Exception as exc:
            raise StorageError(f"cannot commit query state at {self.path}: {exc}") from None

    def checkpoint(self, directory: Path) -> None:
        """A consistent hard-link copy of the state in ``directory`` (which must not exist)."""
        Checkpoint(self._db).create_checkpoint(str(directory))

    def close(self) -> None:
        for family in self._cf.values():
            family.close()
        self._cf.clear()
        self._handles.clear()
        self._db.close()


class StateBatch:
    """Writes that become visible together when committed."""

    def __init__(self, store: StateStore) -> None:
        self._handles = store._handles
        self.write_batch = WriteBatch(raw_mode=True)

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.write_batch.put(key, value, self._handles[family])

    def delete(self, family: str, key: bytes) -> None:
        self.write_batch.delete(key, self._handles[family])

    def put_int(self, key: bytes, value: int) -> None:
        self.put(ColumnFamily.META, key, _U64.pack(value))

    def put_json(self, key: bytes, value: Any) -> None:
        self.put(ColumnFamily.META, key, json.dumps(value).encode())


class StateView:
    """One operator's share of a query's state: every key it reads or writes is prefixed.

    A query whose plan nests operators (a join over a windowed aggregate, say) gives each its own
    prefix, so their keys never meet in a column family.
    """

    def __init__(self, store: StateStore, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix

    def get(self, family: str, key: bytes) -> bytes | None:
        return self.store.get(family, self.prefix + key)

    def items(self, family: str, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        n = len(self.prefix)
        for key, value in self.store.items(family, self.prefix + (start or b"")):
            if not key.startswith(self.prefix):
                return
            yield key[n:], value

    def size_bytes(self) -> int:
        return self.store.size_bytes()


class ScopedBatch:
    """A :class:`StateBatch` seen through a :class:`StateView`'s prefix."""

    def __init__(self, batch: StateBatch, prefix: bytes) -> None:
        self.batch = batch
        self.prefix = prefix

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.batch.put(family, self.prefix + key, value)

    def delete(self, family: str, key: bytes) -> None:
        self.batch.delete(family, self.prefix + key)


def take_sorted(
    parts: Sequence[pa.Table | pa.RecordBatch], indices: np.ndarray, empty: pa.Table
) -> pa.Table:
    """The rows at ``indices`` (increasing positions in ``parts`` one after the other), taken
    part by part, as one chunk per part reached: a take over a chunked table would first copy
    every row of every chunk into one array, those not taken too. ``empty``: a table of the
    parts' schema, sliced when nothing is taken."""
    if not parts:
        return empty.slice(0, 0)
    ends = np.cumsum([part.num_rows for part in parts])
    cuts = np.searchsorted(indices, ends[:-1])
    taken = []
    for part, start, picked in zip(
        parts, np.r_[0, ends[:-1]], np.split(indices, cuts), strict=True
    ):
        if len(picked):
            rows = part.take(pa.array(picked - start, pa.int64()))
            taken.append(
                pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows
            )
    if not taken:
        return empty.slice(0, 0)
    return pa.concat_tables(taken, promote_options="permissive")


MAX_CHUNKS = 256
"""A run of more chunks than this is combined into one: its rows are kept as the chunks they
came in (a compaction concatenates runs without copying their rows), but each chunk costs a
record batch in the run's IPC stream and a take of its own."""


def _few_chunks(table: pa.Table) -> pa.Table:
    if max((column.num_chunks for column in table.columns), default=0) > MAX_CHUNKS:
        return table.combine_chunks()
    return table


class TableState:
    """Operator state: the rows of one Arrow table keyed by some of its columns, held in memory
    and kept in the ``sessions`` column family as *runs*.

    ``key | u32(run)`` -> Arrow IPC stream of the rows one micro-batch wrote. A run holds every current row of each key it holds:
    it supersedes the rows of those keys in earlier runs, so a micro-batch writes only the keys
    it changed, never the whole table. Reading back keeps, per key, the rows of the latest run
    holding it. Runs are compacted into one (in the same micro-batch, deleting the old ones)
    when the runs after the first outgrow ``growth`` times it, when superseded rows outnumber
    current ones, or when there are more than :data:`MAX_RUNS`, so a row is rewritten a bounded
    number of times on average (about ``(growth + 1) / growth``: a larger ``growth`` rewrites
    less and keeps more runs, each of which a lookup searches).

    In memory the runs stay as written, with a mask of their current rows (:attr:`live`) and,
    for keys of integer and temporal columns, a sorted index of each run's keys
    (:class:`_RunIndex`): :meth:`find` binary-searches the probed keys in each run's index, so a
    micro-batch costs its own rows times a logarithm, not a scan of the table. Other keys
    (strings) are looked up by Arrow hashing over one encoded key column per run. Changes
    are staged (:meth:`replace` also writes them into the batch) and become committed with the
    batch (:meth:`commit`); :meth:`rollback` drops them.
    """

    MAX_RUNS = 16

    def __init__(
        self, store: StateStore | StateView, key: bytes, keys: list[str], growth: int = 1
    ) -> None:
        self.key = key
        self.keys = list(keys)
        self.growth = growth
        self._runs: list[tuple[int, pa.Table]] = []  # (run, rows), in run order
        self._held: list[pa.Array | None] = []  # the encoded keys of each run's rows
        for stored, value in store.items(ColumnFamily.SESSIONS, key):
            if not stored.startswith(key):
                break
            if len(stored) == len(key) + 4:
                self._runs.append((_U32.unpack(stored[len(key) :])[0], decode_table(value)))
        self._runs.sort(key=lambda run: run[0])
        self._held = [_encoded_keys(rows, self.keys) for _, rows in self._runs]
        self._index = [_RunIndex.of(held) for held in self._held]
        self._table: pa.Table | None = None
        self.live = self._latest_per_key()
        self._saved: tuple[list, list, list, np.ndarray] | None = None

    def _latest_per_key(self) -> np.ndarray:
        """Which held rows are current: per key, those of the latest run holding it."""
        sizes = [rows.num_rows for _, rows in self._runs]
        if len(sizes) <= 1:
            return np.ones(sum(sizes), dtype=bool)
        table = self.table
        codes = group_codes([table[k] for k in self.keys])
        run = np.repeat(np.arange(len(sizes)), sizes)
        latest = np.full(int(codes.max()) + 1 if len(codes) else 0, -1)
        np.maximum.at(latest, codes, run)
        return run == latest[codes]

    # -- reads --------------------------------------------------------------------------------

    @property
    def table(self) -> pa.Table:
        """Every held row, current or superseded (see :attr:`live`), in run order."""
        if self._table is None:
            tables = [rows for _, rows in self._runs]
            self._table = (
                pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
            )
        return self._table

    @property
    def rows(self) -> int:
        """Current rows (staged changes included)."""
        return int(self.live.sum())

    def current(self) -> pa.Table:
        """The current rows, as one table."""
        return self.table.filter(pa.array(self.live)) if self._runs else pa.table({})

    def take(self, indices: np.ndarray) -> pa.Table:
        """The held rows at ``indices`` (increasing positions in :attr:`table`), taken chunk by
        chunk of each run (see :func:`take_sorted`)."""
        chunks = [chunk for _, rows in self._runs for chunk in rows.to_batches()]
        return take_sorted(chunks, indices, self.table)

    def find(self, rows: pa.Table, columns: list[str] | None = None) -> np.ndarray:
        """Positions (in :attr:`table`) of the current rows whose ``columns`` (the state's keys
        by default) equal those of a row of ``rows``; nulls equal nulls."""
        columns = self.keys if columns is None else columns
        if not self._runs or rows.num_rows == 0:
            return np.zeros(0, dtype=np.int64)
        if columns == self.keys:
            hits = self._index_hits(rows)
            if hits is not None:  # each position once, increasing (a mask: no sort of the hits)
                found = np.zeros(len(self.live), dtype=bool)
                found[hits[0]] = True
                return np.flatnonzero(found)
        held = (
            self._held
            if columns == self.keys
            else [_encoded_keys(r, columns) for _, r in self._runs]
        )
        probe = _encoded_keys(rows, columns)
        if _comparable(held, probe):
            hit = pc.is_in(pa.chunked_array(held, probe.type), value_set=probe, skip_nulls=False)
            hit = hit.to_numpy(zero_copy_only=False)
        else:  # a key type without an encoding: code the held keys and the probe together
            hit = _codes_in(self.table.select(columns), rows.select(columns))
        return np.flatnonzero(hit & self.live)

    def contains(self, rows: pa.Table) -> np.ndarray:
        """Whether each row of ``rows`` has the key of a current row (a bool mask over ``rows``)."""
        hits = self._index_hits(rows)
        if hits is not None:
            mask = np.zeros(rows.num_rows, dtype=bool)
            mask[hits[1]] = True
            return mask
        found = self.find(rows)
        if len(found) == 0:
            return np.zeros(rows.num_rows, dtype=bool)
        probe = _encoded_keys(rows, self.keys)
        if _comparable(self._held, probe):
            held = pa.chunked_array(self._held, probe.type).take(pa.array(found))
            return pc.is_in(probe, value_set=held.combine_chunks(), skip_nulls=False).to_numpy(
                zero_copy_only=False
            )
        return _codes_in(rows.select(self.keys), self.take(found).select(self.keys))

    def _index_hits(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray] | None:
        """(positions in :attr:`table`, rows of ``rows``) of each current row whose keys equal
        those of a row of ``rows``, found in the runs' indexes; None when a run or the probe has
        no index (keys of a type without one), or when there is nothing to look up."""
        if not self._runs or rows.num_rows == 0 or any(i is None for i in self._index):
            return None
        probe = _RunIndex.probe(_encoded_keys(rows, self.keys))
        if probe is None or any(i.width != probe[1].shape[1] for i in self._index):
            return None
        hashes, words, exact = probe
        order = np.argsort(hashes)  # probed in hash order: see _RunIndex.lookup
        hashes, words = hashes[order], words[order]
        positions, probed = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        start = 0
        for index, (_, run) in zip(self._index, self._runs, strict=True):
            found, row = index.lookup(hashes, words, exact)
            found += start
            current = self.live[found]
            positions.append(found[current])
            probed.append(order[row[current]])
            start += run.num_rows
        return np.concatenate(positions), np.concatenate(probed)

    # -- changes ------------------------------------------------------------------------------

    def replace(
        self, superseded: np.ndarray, rows: pa.Table, batch: StateBatch | ScopedBatch
    ) -> None:
        """Stage ``rows`` as every current row of their keys, in place of the held rows at
        positions ``superseded`` (all current rows of those keys, from :meth:`find`). Every key
        of a superseded row must have a row in ``rows``: a key is never deleted, only
        replaced."""
        if self._saved is None:
            self._saved = (list(self._runs), list(self._held), list(self._index), self.live)
        live = self.live.copy()
        live[superseded] = False
        if rows.num_rows == 0 and not len(superseded):
            return
        seq = self._runs[-1][0] + 1 if self._runs else 1
        rows = _few_chunks(rows)
        self._runs.append((seq, rows))
        self._held.append(_encoded_keys(rows, self.keys))
        self._index.append(_RunIndex.of(self._held[-1]))
        self.live = np.concatenate([live, np.ones(rows.num_rows, dtype=bool)])
        self._table = None
        if self._should_compact():
            self._compact(batch)
        else:
            batch.put(ColumnFamily.SESSIONS, self._run_key(seq), encode_table(rows))

    def delete(self, positions: np.ndarray, batch: StateBatch | ScopedBatch) -> None:
        """Stage the removal of the current rows at ``positions`` (in :attr:`table`): their keys
        are gone. A run can only supersede keys, so the current rows are rewritten as one run
        (as a compaction does)."""
        if not len(positions):
            return
        if self._saved is None:
            self._saved = (list(self._runs), list(self._held), list(self._index), self.live)
        live = self.live.copy()
        live[positions] = False
        self.live = live
        self._compact(batch)

    def _should_compact(self) -> bool:
        if len(self._runs) <= 1:
            return False
        first = self._runs[0][1].num_rows
        later = len(self.live) - first
        current = int(self.live.sum())
        return (
            later > self.growth * first
            or len(self.live) > 2 * current
            or len(self._runs) > self.MAX_RUNS
        )

    def _compact(self, batch: StateBatch | ScopedBatch) -> None:
        """Rewrite the current rows as one run and delete the others (the staged one included,
        which is not written)."""
        kept, start = [], 0
        for _, run in self._runs:  # a run whose rows are all current is kept as it is, no copy
            current = self.live[start : start + run.num_rows]
            start += run.num_rows
            if current.all():
                kept.append(run)
            elif current.any():
                kept.append(run.filter(pa.array(current)))
        rows = _few_chunks(
            pa.concat_tables(kept, promote_options="permissive") if kept else self.table.slice(0, 0)
        )
        for seq, _ in self._runs[:-1]:
            batch.delete(ColumnFamily.SESSIONS, self._run_key(seq))
        seq = self._runs[-1][0]
        batch.put(ColumnFamily.SESSIONS, self._run_key(seq), encode_table(rows))
        self._runs = [(seq, rows)]
        self._held = [_encoded_keys(rows, self.keys)]
        self._index = [_RunIndex.compacted(self._index, self.live, self._held[0])]
        self.live = np.ones(rows.num_rows, dtype=bool)
        self._table = None

    def _run_key(self, seq: int) -> bytes:
        return self.key if seq == 0 else self.key + _U32.pack(seq)

    def commit(self) -> None:
        self._saved = None

    def rollback(self) -> None:
        if self._saved is not None:
            runs, held, index, self.live = self._saved
            self._runs, self._held, self._index = runs, held, index
            self._saved, self._table = None, None


class _RunIndex:
    """The keys of one run, sorted, for binary search: each row's encoded key
    (:func:`_encoded_keys`) as ``width`` 64-bit words, and a 64-bit hash of them, sorted.

    A key of one integer or temporal column without nulls is its own hash (exact); other keys of
    fixed-width columns (several columns, or nulls) hash their words, and a hash that matches is
    confirmed by comparing the words, so colliding hashes never make distinct keys equal.
    """

    __slots__ = ("exact", "hashes", "order", "width", "words")

    def __init__(
        self, words: np.ndarray, hashes: np.ndarray, exact: bool, order: np.ndarray | None = None
    ) -> None:
        self.words = words
        self.width = words.shape[1]
        self.exact = exact
        self.order = np.argsort(hashes) if order is None else order
        self.hashes = hashes[self.order] if order is None else hashes

    @classmethod
    def of(cls, encoded: pa.Array | None) -> _RunIndex | None:
        probe = cls.probe(encoded)
        return None if probe is None else cls(probe[1], probe[0], probe[2])

    @classmethod
    def compacted(
        cls, indexes: list[_RunIndex | None], live: np.ndarray, encoded: pa.Array | None
    ) -> _RunIndex | None:
        """The index of the current rows (``live`` over the runs of ``indexes``, in order)
        rewritten as one run with keys ``encoded``: the runs' sorted hashes merged (a stable sort
        of sorted pieces is a merge), not hashed and sorted afresh."""
        if encoded is None or any(i is None for i in indexes):
            return cls.of(encoded)
        keyed = cls.key_words(encoded)
        if keyed is None or any(i.width != keyed[0].shape[1] for i in indexes):  # type: ignore[union-attr]
            return cls.of(encoded)
        renumbered = np.cumsum(live) - 1  # held position -> position among the current rows
        hashes, positions = [], []
        start = 0
        for index in indexes:
            assert index is not None
            held = index.order + start
            current = live[held]
            hashes.append(index.hashes[current])
            positions.append(renumbered[held[current]])
            start += len(index.order)
        merged = np.concatenate(hashes)
        order = np.argsort(merged, kind="stable")
        return cls(keyed[0], merged[order], keyed[1], np.concatenate(positions)[order])

    @staticmethod
    def probe(encoded: pa.Array | None) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """(hashes, words, exact) of encoded keys, or None for keys without fixed-width words."""
        keyed = _RunIndex.key_words(encoded)
        if keyed is None:
            return None
        words, exact = keyed
        if exact:
            return words[:, 0], words, True
        hashes = np.zeros(len(words), np.uint64)
        for i in range(words.shape[1]):
            hashes = _mix(hashes ^ words[:, i])
        return hashes, words, False

    @staticmethod
    def key_words(encoded: pa.Array | None) -> tuple[np.ndarray, bool] | None:
        """(words, exact) of encoded keys: ``exact`` when one word is the key (and its hash)."""
        if encoded is None:
            return None
        kind = encoded.type
        if pa.types.is_int64(kind):
            if encoded.null_count:
                values = encoded.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
                nulls = pc.is_null(encoded).to_numpy(zero_copy_only=False).astype(np.uint64)
                return np.stack([values, nulls], axis=1), False
            return encoded.to_numpy(zero_copy_only=False).view(np.uint64).reshape(-1, 1), True
        if pa.types.is_fixed_size_binary(kind) and kind.byte_width % 8 == 0:
            width, n = kind.byte_width // 8, len(encoded)
            data = np.frombuffer(encoded.buffers()[1], np.uint64)
            return data[encoded.offset * width : (encoded.offset + n) * width].reshape(
                n, width
            ), False
        return None

    def lookup(
        self, hashes: np.ndarray, words: np.ndarray, exact: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row of this run, row of the probe) of every pair of equal keys; ``hashes`` sorted
        (binary searches for sorted needles walk the index once, in order: ten times faster
        than the same searches in random order over an index larger than the caches)."""
        size = len(self.hashes)
        low = np.searchsorted(self.hashes, hashes, "left")
        near = self.hashes[np.minimum(low, size - 1)] if size else low.astype(np.uint64)
        probed = np.flatnonzero((low < size) & (near == hashes))
        if len(probed) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        low = low[probed]
        counts = np.searchsorted(self.hashes, hashes[probed], "right") - low
        if int(counts.max()) > 1:  # keys held more than once (Top-N), or colliding hashes
            total = int(counts.sum())
            probed = np.repeat(probed, counts)
            low = np.repeat(low - (np.cumsum(counts) - counts), counts) + np.arange(total)
        found = self.order[low]
        if not (self.exact and exact):
            same = (self.words[found] == words[probed]).all(axis=1)
            found, probed = found[same], probed[same]
        return found.astype(np.int64), probed


def _comparable(held: list[pa.Array | None], probe: pa.Array | None) -> bool:
    """Whether encoded keys ``held`` and ``probe`` can be compared (one type, none missing)."""
    return probe is not None and all(h is not None and h.type == probe.type for h in held)


def _codes_in(table: pa.Table, other: pa.Table) -> np.ndarray:
    """Whether each row of ``table`` equals a row of ``other`` (nulls equal), by coding both
    together."""
    both = pa.concat_tables([table, other], promote_options="permissive")
    codes = group_codes([both[c] for c in both.column_names])
    n = table.num_rows
    return np.isin(codes[:n], codes[n:])


def key_hashes(table: pa.Table, columns: list[str]) -> np.ndarray | None:
    """A stable 64-bit hash of each row's ``columns`` (equal keys, equal hashes, in every
    process and version: state is placed by it), or None for a column type without one.

    Integers, temporal values and floats hash their 64-bit value; strings and binaries a
    polynomial hash of their bytes; several columns, their packed encoding
    (:func:`_encoded_keys`). Each is finished with SplitMix64's mixer.
    """
    encoded = _encoded_keys(table, columns)
    if encoded is None:
        return None
    if pa.types.is_integer(encoded.type):
        values = encoded.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint64)
        nulls = pc.is_null(encoded).to_numpy(zero_copy_only=False)
        return _mix(values ^ (nulls.astype(np.uint64) * _NULL_HASH))
    binary = encoded.cast(pa.binary())
    step = 1 << 16  # rows at a time: the prefix sums take 8 bytes per byte of key
    hashes = np.concatenate(
        [np.zeros(0, np.uint64)]
        + [_bytes_hash(binary.slice(i, step)) for i in range(0, len(binary), step)]
    )
    lengths = pc.fill_null(pc.binary_length(binary), 0).to_numpy(zero_copy_only=False)
    nulls = pc.is_null(binary).to_numpy(zero_copy_only=False)
    return _mix(
        hashes ^ (lengths.astype(np.uint64) * _GOLDEN) ^ (nulls.astype(np.uint64) * _NULL_HASH)
    )


def _bytes_hash(binary: pa.Array) -> np.ndarray:
    """sum(b[i] * P^i) over each value's bytes, from prefix sums: unsigned arithmetic wraps
    modulo 2^64, where P is invertible (odd), so each slice is scaled back by P^-start."""
    n = len(binary)
    offsets = np.frombuffer(binary.buffers()[1], np.int32)[binary.offset : binary.offset + n + 1]
    first, last = int(offsets[0]), int(offsets[-1])
    if last == first:
        return np.zeros(n, np.uint64)
    data = np.frombuffer(binary.buffers()[2], np.uint8)[first:last]
    starts = (offsets[:-1] - first).astype(np.int64)
    ends = (offsets[1:] - first).astype(np.int64)
    powers = np.full(len(data) + 1, _POLY, np.uint64)
    powers[0] = 1
    np.cumprod(powers, out=powers)
    sums = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(data.astype(np.uint64) * powers[:-1], out=sums[1:])
    inverse = np.full(len(data) + 1, _POLY_INVERSE, np.uint64)
    inverse[0] = 1
    np.cumprod(inverse, out=inverse)
    return (sums[ends] - sums[starts]) * inverse[starts]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL_HASH = np.uint64(0xD6E8FEB86659FD93)
_POLY = np.uint64(0x100000001B3)  # the 64-bit FNV prime: odd, so invertible modulo 2^64
_POLY_INVERSE = np.uint64(pow(0x100000001B3, -1, 1 << 64))


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: every input bit moves every output bit."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _encoded_keys(table: pa.Table, columns: list[str]) -> pa.Array | None:
    """One array with equal values for rows with equal ``columns`` (nulls included), of a type
    that depends only on the columns' kinds; None for a column type without an encoding.

    One column of an integer, temporal or boolean type is itself, as int64; strings and
    binaries are binary. Several columns are packed into a binary value per row: 8 bytes per
    fixed-width column and a validity mask, then each string as a 4-byte length (``0xFFFFFFFF``
    for null) and its bytes.
    """
    n = table.num_rows
    fixed: list[np.ndarray] = []
    valid = np.zeros(n, dtype=np.int64)
    variable: list[pa.Array] = []
    for i, name in enumerate(columns):
        column = table[name]
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        kind = column.type
        if pa.types.is_dictionary(kind):
            column, kind = column.dictionary_decode(), kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            if len(columns) == 1:
                return column.cast(pa.binary())
            variable.append(column.cast(pa.binary()))
            continue
        values = _as_int64(column)
        if values is None:
            return None
        if len(columns) == 1:
            return values
        mask = pc.is_valid(values).to_numpy(zero_copy_only=False)
        valid |= mask.astype(np.int64) << (i % 63)
        fixed.append(values.fill_null(0).to_numpy(zero_copy_only=False))
    fixed.append(valid)
    matrix = np.ascontiguousarray(np.stack(fixed, axis=1).astype(">i8"))
    packed = pa.Array.from_buffers(pa.binary(8 * len(fixed)), n, [None, pa.py_buffer(matrix)])
    if not variable:
        return packed
    parts: list[pa.Array] = [packed.cast(pa.binary())]
    for column in variable:
        lengths = pc.binary_length(column).cast(pa.int64()).fill_null(0xFFFFFFFF)
        lengths = lengths.to_numpy(zero_copy_only=False)
        prefix = np.ascontiguousarray(lengths.astype(">u4"))
        parts.append(
            pa.Array.from_buffers(pa.binary(4), n, [None, pa.py_buffer(prefix)]).cast(pa.binary())
        )
        parts.append(column.fill_null(b""))
    return pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.binary()))


def _as_int64(column: pa.Array) -> pa.Array | None:
    """The column's values as int64 (nulls kept), or None for a type that has no such view."""
    kind = column.type
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.int64())
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        return column.cast(pa.int64(), safe=False)  # uint64 wraps around, still one-to-one
    if pa.types.is_temporal(kind) and kind.bit_width in (32, 64):
        return column.view(pa.int32() if kind.bit_width == 32 else pa.int64()).cast(pa.int64())
    if pa.types.is_floating(kind):  # -0.0 + 0.0 is 0.0: equal floats get equal bits
        bits = pc.add(column.cast(pa.float64()), 0.0)
        return pa.Array.from_buffers(pa.int64(), len(bits), bits.buffers(), bits.null_count)
    return None
