"""Append-only joins of two insert-only streams: regular joins and interval joins.

Every micro-batch joins what is new on one side with everything buffered (and new) on the
other, on DataFusion, with the query's own SQL:

    out = (new L) ⋈ (old R ∪ new R)  ∪  (old L) ⋈ (new R)

so each matching pair is produced exactly once, whatever the micro-batch split. Input rows
(only the columns the SQL names, and the time column) are buffered in the ``joins`` column
family in chunks keyed by ``side | u64(max event time) | u64(sequence)``. An interval join's bounds (:mod:`.bounds`) let a chunk go once the watermark
shows that every row in it is too old to match a future row of the other side; a regular join
keeps its rows (``state.ttl`` bounds them by event time). The next chunk sequence is kept in
``meta`` (``join/sequence``) too: an outer join numbers its rows by it, and an id must never
recur once its chunks expired (a recurring id's tombstone would delete another row's output).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.errors import StreamHouseError
from streamhouse.joins.columns import pruned, referenced_names
from streamhouse.sql.bounds import TimeBound
from streamhouse.sql.execute import run_sql
from streamhouse.sql.nodes import OuterJoin
from streamhouse.state.store import (
    ColumnFamily,
    StateBatch,
    StateStore,
    decode_table,
    encode_table,
    time_key,
)
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

LEFT, RIGHT = b"L", b"R"
_SEQ = struct.Struct(">Q")
SEQUENCE = b"join/sequence"
"""``meta`` key: the next chunk sequence number, so row ids are never numbered twice (also once
every chunk holding them has expired)."""
TASK_ROWS = 1 << 26
"""Rows one chunk numbers at most at parallelism > 1 (see :meth:`StreamJoin._numbered`)."""


@dataclass
class _Chunk:
    key: bytes
    max_ts: int
    rows: pa.Table


class StreamJoin:
    """Buffers both inputs and joins each micro-batch against them."""

    def __init__(
        self,
        sql: str,
        store: StateStore,
        left_time: str | None,
        right_time: str | None,
        bound: TimeBound | None,
        ttl_ms: int | None = None,
        outer: OuterJoin | None = None,
    ) -> None:
        self.sql = sql
        self.outer = outer
        self.store = store
        self.times = {LEFT: left_time, RIGHT: right_time}
        self.bound = bound
        self.ttl_ms = ttl_ms
        self.columns = _referenced(sql, outer)
        self.chunks: dict[bytes, list[_Chunk]] = {LEFT: [], RIGHT: []}
        stored = store.get(ColumnFamily.META, SEQUENCE)
        self.sequence = _SEQ.unpack(stored)[0] if stored is not None else 0
        # the task of a parallel query numbering rows (its number is in their ids), or None
        self.task: int | None = None
        for key, value in store.items(ColumnFamily.JOINS):
            side = key[:1]
            if side in self.chunks:
                self.chunks[side].append(_Chunk(key, _decode_time(key[1:9]), decode_table(value)))
                self.sequence = max(self.sequence, _SEQ.unpack(key[9:17])[0] + 1)
        self._staged: dict[bytes, list[_Chunk]] | None = None

    @property
    def open_windows(self) -> int:
        return sum(len(c) for c in self.chunks.values())

    def _buffer(self, side: bytes, chunks: dict[bytes, list[_Chunk]]) -> pa.Table | None:
        tables = [c.rows for c in chunks[side]]
        return pa.concat_tables(tables, promote_options="permissive") if tables else None

    def process(
        self,
        new_left: pa.Table | None,
        new_right: pa.Table | None,
        schemas: dict[bytes, pa.Schema],
        batch: StateBatch,
    ) -> tuple[pa.Table | None, list[bytes]]:
        """Join the new rows; returns (the joined rows, keys to tombstone)."""
        staged = {side: list(chunks) for side, chunks in self.chunks.items()}
        self._staged = staged
        new_left = self._pruned(LEFT, new_left)
        new_right = self._pruned(RIGHT, new_right)
        old_left = self._buffer(LEFT, staged)
        old_right = self._buffer(RIGHT, staged)
        if self.outer is not None:
            return self._outer(new_left, new_right, old_left, old_right, schemas, staged, batch)
        outputs = []
        if new_left is not None and new_left.num_rows:
            right_all = _concat(old_right, new_right, None)
            if right_all is not None and right_all.num_rows:
                outputs.append(run_sql(self.sql, {"__left": new_left, "__right": right_all}))
        if (
            new_right is not None
            and new_right.num_rows
            and old_left is not None
            and old_left.num_rows
        ):
            outputs.append(run_sql(self.sql, {"__left": old_left, "__right": new_right}))
        for side, rows in ((LEFT, new_left), (RIGHT, new_right)):
            if rows is not None and rows.num_rows:
                self._append(side, rows, staged, batch)
        outputs = [o for o in outputs if o.num_rows]
        if not outputs:
            return None, []
        return concat(outputs), []

    def _outer(
        self,
        new_left: pa.Table | None,
        new_right: pa.Table | None,
        old_left: pa.Table | None,
        old_right: pa.Table | None,
        schemas: dict[bytes, pa.Schema | None],
        staged: dict[bytes, list[_Chunk]],
        batch: StateBatch,
    ) -> tuple[pa.Table | None, list[bytes]]:
        """An outer join as upserts: each output row is keyed by its (left row, right row) ids;
        a row padded with NULLs is tombstoned when its first match arrives."""
        outer = self.outer
        assert outer is not None
        new_left = self._numbered(LEFT, new_left)
        new_right = self._numbered(RIGHT, new_right)
        empty = {
            side: (schemas.get(side) or pa.schema([]))
            .append(pa.field(ID[side], pa.int64()))
            .empty_table()
            if schemas.get(side) is not None
            else None
            for side in (LEFT, RIGHT)
        }
        all_left = _concat(old_left, new_left, empty[LEFT])
        all_right = _concat(old_right, new_right, empty[RIGHT])
        outputs: list[pa.Table] = []
        tombstones: list[bytes] = []
        if new_left is not None and all_right is not None:
            sql = outer.left_sql if outer.keep_left else outer.inner_sql
            matched = run_sql(sql, {"__left": new_left, "__right": all_right})
            outputs.append(matched)
            if outer.keep_right:  # right rows padded before may have their first match now
                rids = pc.drop_null(matched["__rid"]).to_pylist()
                tombstones += [f"|{r}".encode() for r in sorted(set(rids))]
        if new_right is not None and all_left is not None:
            if old_left is not None and old_left.num_rows:
                matched = run_sql(outer.inner_sql, {"__left": old_left, "__right": new_right})
                outputs.append(matched)
                if outer.keep_left:
                    lids = matched["__lid"].to_pylist()
                    tombstones += [f"{lid}|".encode() for lid in sorted(set(lids))]
            if outer.keep_right:  # new right rows that match no left row at all
                padded = run_sql(outer.right_sql, {"__left": all_left, "__right": new_right})
                outputs.append(padded.filter(pc.is_null(padded["__lid"])))
        for side, rows in ((LEFT, new_left), (RIGHT, new_right)):
            if rows is not None and rows.num_rows:
                self._append(side, rows, staged, batch)
        outputs = [o for o in outputs if o.num_rows]
        if not outputs:
            return None, tombstones
        out = concat(outputs)
        lids = pc.cast(out["__lid"], pa.string())
        rids = pc.cast(out["__rid"], pa.string())
        keys = pc.binary_join_element_wise(pc.fill_null(lids, ""), pc.fill_null(rids, ""), "|")
        out = out.drop_columns(["__lid", "__rid"]).append_column(
            "__key", pc.cast(keys, pa.binary())
        )
        return out, tombstones

    def _pruned(self, side: bytes, rows: pa.Table | None) -> pa.Table | None:
        """``rows`` with only the columns the SQL reads (and the time column): all it buffers."""
        return rows if rows is None else pruned(rows, self.columns, [self.times[side]])

    def _numbered(self, side: bytes, rows: pa.Table | None) -> pa.Table | None:
        """``rows`` with a unique id per row: the chunk sequence, then the row index; in a task
        of a parallel query, the sequence (30 bits), the task (7 bits) and the index (26 bits),
        so ids of rows that other tasks numbered, moved here by a rescale, never recur."""
        if rows is None or rows.num_rows == 0:
            return None
        index = np.arange(rows.num_rows, dtype=np.int64)
        if self.task is None:
            ids = (self.sequence << 32) + index
        elif rows.num_rows > TASK_ROWS:
            raise StreamHouseError(
                f"an outer join at parallelism > 1 numbers at most {TASK_ROWS} rows of a side per"
                f" micro-batch ({rows.num_rows} came): lower 'max-batch-records'"
            )
        else:
            ids = (self.sequence << 33) + (self.task << 26) + index
        return rows.append_column(ID[side], pa.array(ids))

    def _append(
        self, side: bytes, rows: pa.Table, staged: dict[bytes, list[_Chunk]], batch: StateBatch
    ) -> None:
        column = self.times[side]
        max_ts = 1 << 62
        if column is not None and column in rows.column_names:
            ts, valid = event_time_ms(rows, column)
            max_ts = int(ts[valid].max()) if valid.any() else max_ts
        key = side + time_key(max_ts) + _SEQ.pack(self.sequence)
        self.sequence += 1
        batch.put(ColumnFamily.META, SEQUENCE, _SEQ.pack(self.sequence))
        staged[side].append(_Chunk(key, max_ts, rows))
        batch.put(ColumnFamily.JOINS, key, encode_table(rows))

    def expire(self, watermark: int, batch: StateBatch) -> None:
        """Drop buffered chunks no future row can match."""
        staged = (
            self._staged
            if self._staged is not None
            else {s: list(c) for s, c in self.chunks.items()}
        )
        self._staged = staged
        limits = {LEFT: None, RIGHT: None}
        if self.bound is not None:
            limits[LEFT] = self.bound.left_expiry(watermark)
            limits[RIGHT] = self.bound.right_expiry(watermark)
        if self.ttl_ms is not None:
            for side in limits:
                ttl_limit = watermark - self.ttl_ms
                limits[side] = ttl_limit if limits[side] is None else max(limits[side], ttl_limit)
        for side, limit in limits.items():
            if limit is None:
                continue
            keep = []
            for chunk in staged[side]:
                if chunk.max_ts < limit:
                    batch.delete(ColumnFamily.JOINS, chunk.key)
                else:
                    keep.append(chunk)
            staged[side] = keep

    def commit(self) -> None:
        if self._staged is not None:
            self.chunks = self._staged
            self._staged = None

    def rollback(self) -> None:
        self._staged = None


ID = {LEFT: "__lid", RIGHT: "__rid"}


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables of one query's output (names may repeat, as SQL allows)."""
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        return pa.concat_tables(tables)
    return pa.concat_tables([t.cast(first) for t in tables])


def _referenced(sql: str, outer: OuterJoin | None) -> frozenset[str] | None:
    texts = [sql] if outer is None else [sql, outer.inner_sql, outer.left_sql, outer.right_sql]
    names = [referenced_names(text) for text in texts]
    return None if any(n is None for n in names) else frozenset().union(*names)  # type: ignore[arg-type]


def _decode_time(key: bytes) -> int:
    return _SEQ.unpack(key)[0] - (1 << 63)


def _concat(old: pa.Table | None, new: pa.Table | None, empty: pa.Table | None) -> pa.Table | None:
    tables = [t for t in (old, new) if t is not None and t.num_rows]
    if not tables:
        return empty
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
