"""A regular join over updating inputs: it consumes their upserts and retractions and emits an
upsert per output row it changes, keyed by the pair of input row keys, and a tombstone per
output row that stops matching (see :mod:`streamhouse.sql.changelog_join`).

State: the current row of every input row key of each side, in a
:class:`~streamhouse.state.store.TableState` per side (``sessions`` column family,
``b"cjoin_l"|u32(run)`` and ``b"cjoin_r"|u32(run)``), with only the columns the SQL names; an
append-only side keys its rows by a sequence number (``b"cjoin_seq"``; in a task of a parallel
query ``<task>:<n>``, so ids stay unique when a rescale moves rows between tasks). A retracted key is kept
as a dead row (``__live`` false), so a restart does not bring its older row back.

Idle state retention (``SET 'state.ttl'``, Flink's ``table.exec.state.ttl``): each row also
holds ``__touched``, the watermark of the micro-batch that last wrote it, and a row whose key
has not changed while the watermark moved on by more than the TTL is deleted, dead rows too.
The clock is event time, as for the TTL of regular stream joins (Flink's is processing time).
As in Flink, an expired row no longer joins: a later change of its key comes in as a new row
(an aggregate's upsert carries its whole row, so it joins again as it should), but output rows
it was in are not retracted, and a retraction of its key finds nothing to retract.

Each micro-batch applies the changes of both sides, then computes on DataFusion, with the
query's own SQL, the output rows that involve an *affected* input row, once over the state
before the batch and once after: the rows after are upserted, and the pairs only before get
tombstones. The affected rows of a side are the rows it changed and, for the side an outer join
keeps, the rows the ON condition matches to a changed row of the other side (they may gain
their first match or lose their last and be padded, or stop being). Every other output row is
unchanged: neither of its input rows changed, nor did whether its kept row has matches.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from streamhouse.joins.columns import kept_columns, pruned, referenced_names
from streamhouse.key_codes import group_codes
from streamhouse.result import unique_names
from streamhouse.runtime.sink import json_strings
from streamhouse.runtime.sources import NO_WATERMARK
from streamhouse.sql.changelog import ROW_KEY
from streamhouse.sql.changelog_join import LEFT_ID, RIGHT_ID, ChangelogJoin
from streamhouse.sql.execute import run_sql
from streamhouse.sql.projection import declared_stars
from streamhouse.state.store import ColumnFamily, ScopedBatch, StateBatch, StateView, TableState

log = logging.getLogger(__name__)

LEFT, RIGHT = 0, 1
IDS = (LEFT_ID, RIGHT_ID)
LIVE = "__live"
TOUCHED = "__touched"  # with a TTL: the watermark of the micro-batch that last wrote the row
STATE_KEYS = (b"cjoin_l", b"cjoin_r")
SEQUENCE = b"cjoin_seq"
_U64 = struct.Struct(">Q")


class ChangelogJoinOperator:
    def __init__(
        self,
        plan: ChangelogJoin,
        store: StateView,
        schemas: Sequence[pa.Schema | None],
        ttl_ms: int | None = None,
    ) -> None:
        self.plan = plan
        self.ttl_ms = ttl_ms
        self.watermark = NO_WATERMARK  # the micro-batch's, written into rows as TOUCHED
        self.tables = [
            TableState(store, key, [ID]) for key, ID in zip(STATE_KEYS, IDS, strict=True)
        ]
        self.schemas = list(schemas)
        stored = store.get(ColumnFamily.SESSIONS, SEQUENCE)
        self.sequence = _U64.unpack(stored)[0] if stored is not None else 0
        # the task of a parallel query numbering an append-only side's rows (its number starts
        # their ids, ``<task>:<n>``, so that rows moved here by a rescale keep unique ids), or None
        self.task: int | None = None
        self._committed_sequence = self.sequence
        v = plan.variants
        referenced = [referenced_names(sql) for sql in (v.inner_sql, v.left_sql, v.right_sql)]
        self.referenced = (
            None if any(r is None for r in referenced) else frozenset().union(*referenced)  # type: ignore[arg-type]
        )

    @property
    def open_windows(self) -> int:
        return sum(t.rows for t in self.tables)

    def process(
        self,
        rows: Sequence[pa.Table | None],
        retracted: Sequence[Sequence[bytes]],
        batch: StateBatch | ScopedBatch,
        watermark: int = NO_WATERMARK,
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """Apply each side's upserted rows and retracted keys; returns the output rows they
        change, after and before, each keyed by ROW_KEY (a key only before is gone)."""
        self.watermark = watermark
        before = [self._live(side) for side in (LEFT, RIGHT)]
        changed = [self._apply(side, rows[side], retracted[side], batch) for side in (LEFT, RIGHT)]
        if not any(len(c) for c in changed):
            return None, None
        after = [self._live(side) for side in (LEFT, RIGHT)]
        affected = [pc.unique(c) for c in changed]
        if self.plan.match_sql is not None:
            affected = self._padding_affected(before, after, changed, affected)
        if self.sequence != self._committed_sequence:
            batch.put(ColumnFamily.SESSIONS, SEQUENCE, _U64.pack(self.sequence))
        return self._output(after, affected), self._output(before, affected)

    # -- state --------------------------------------------------------------------------------

    def _live(self, side: int) -> pa.Table:
        """The side's current rows (id column included, no dead rows)."""
        table = self.tables[side].current()
        if table.num_columns:
            internal = [c for c in (LIVE, TOUCHED) if c in table.column_names]
            return table.filter(table[LIVE]).drop_columns(internal)
        schema = self.schemas[side]
        if schema is not None:  # a stream: its declared columns
            kept = set(kept_columns(schema.names, self.referenced))
            fields = [f for f in schema if f.name in kept]
        else:  # an input not seen yet: the columns the SQL names, typed when they come
            fields = [pa.field(name, pa.null()) for name in self.plan.columns[side]]
        return pa.schema([*fields, pa.field(IDS[side], pa.string())]).empty_table()

    def _apply(
        self,
        side: int,
        rows: pa.Table | None,
        retracted: Sequence[bytes],
        batch: StateBatch | ScopedBatch,
    ) -> pa.Array:
        """Stage the side's changes; returns the ids of the rows it changed."""
        table, id_column = self.tables[side], IDS[side]
        parts = []
        if rows is not None and rows.num_rows:
            if self.plan.input_updates[side]:
                ids = pc.cast(rows[ROW_KEY], pa.string())
            else:
                numbers = pa.array(np.arange(self.sequence, self.sequence + rows.num_rows))
                ids = pc.cast(numbers, pa.string())
                if self.task is not None:
                    ids = pc.binary_join_element_wise(f"{self.task}:", ids, "")
                self.sequence += rows.num_rows
            kept = pruned(
                rows.drop_columns([c for c in rows.column_names if c.startswith("__")]),
                self.referenced,
            )
            parts.append(
                kept.append_column(id_column, ids).append_column(
                    LIVE, pa.array(np.ones(rows.num_rows, bool))
                )
            )
        if retracted:
            keys = pc.cast(pa.array(list(retracted), pa.binary()), pa.string())
            held = table.take(table.find(pa.table({id_column: keys})))
            candidates = [t for t in [held, *parts] if t.num_rows]
            if candidates:
                both = pa.concat_tables(candidates, promote_options="permissive")
                dead = both.filter(pc.is_in(both[id_column], value_set=keys))
                index = dead.schema.get_field_index(LIVE)
                parts.append(dead.set_column(index, LIVE, pa.array(np.zeros(dead.num_rows, bool))))
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return pa.array([], pa.string())
        changes = _last_per_key(pa.concat_tables(parts, promote_options="permissive"), id_column)
        if self.ttl_ms is not None:
            touched = pa.array(np.full(changes.num_rows, self.watermark, np.int64))
            if TOUCHED in changes.column_names:
                changes = changes.drop_columns([TOUCHED])
            changes = changes.append_column(TOUCHED, touched)
        table.replace(table.find(changes), changes, batch)
        return changes[id_column].combine_chunks()

    def expire(self, watermark: int, batch: StateBatch | ScopedBatch) -> int:
        """Delete the rows (live or dead) not written while the watermark moved on by more than
        the TTL; returns how many."""
        if self.ttl_ms is None or watermark <= NO_WATERMARK:
            return 0
        limit = watermark - self.ttl_ms
        expired = 0
        for table in self.tables:
            held = table.table
            if TOUCHED not in held.column_names:
                continue
            touched = pc.fill_null(held[TOUCHED], limit).to_numpy()  # unknown: not idle
            idle = np.flatnonzero((touched < limit) & table.live)
            table.delete(idle, batch)
            expired += len(idle)
        return expired

    # -- output -------------------------------------------------------------------------------

    def _padding_affected(
        self,
        before: list[pa.Table],
        after: list[pa.Table],
        changed: list[pa.Array],
        affected: list[pa.Array],
    ) -> list[pa.Array]:
        """``affected`` with the rows of a kept side that the ON condition matches to a changed
        row of the other side, before or after: whether they are padded may change."""
        v = self.plan.variants
        match_sql = self.plan.match_sql
        assert match_sql is not None
        result = list(affected)
        for side, keep in ((LEFT, v.keep_left), (RIGHT, v.keep_right)):
            other = 1 - side
            if not keep or not len(changed[other]):
                continue
            moved = [
                t.filter(pc.is_in(t[IDS[other]], value_set=changed[other]))
                for t in (before[other], after[other])
            ]
            moved = [t for t in moved if t.num_rows]
            if not moved:
                continue
            tables = {"__left": after[LEFT], "__right": after[RIGHT]}
            tables["__left" if other == LEFT else "__right"] = pa.concat_tables(
                moved, promote_options="permissive"
            )
            pairs = run_sql(match_sql, tables)
            if pairs.num_rows:
                found = pc.cast(pairs[IDS[side]], pa.string())
                result[side] = pc.unique(pa.concat_arrays([result[side], found.combine_chunks()]))
        return result

    def _output(self, tables: list[pa.Table], affected: list[pa.Array]) -> pa.Table | None:
        """The output rows over ``tables`` that involve an affected row, each once, keyed."""
        v = self.plan.variants
        left, right = tables
        parts = []
        rows = left.filter(pc.is_in(left[LEFT_ID], value_set=affected[LEFT]))
        if rows.num_rows:
            sql = v.left_sql if v.keep_left else v.inner_sql
            parts.append(run_sql(sql, {"__left": rows, "__right": right}, ordered=True))
        rows = right.filter(pc.is_in(right[RIGHT_ID], value_set=affected[RIGHT]))
        if rows.num_rows:
            sql = v.right_sql if v.keep_right else v.inner_sql
            parts.append(run_sql(sql, {"__left": left, "__right": rows}, ordered=True))
        parts = [p for p in parts if p.num_rows]
        if not parts:
            return None
        out = pa.concat_tables(parts, promote_options="permissive")
        keys = pair_keys(out[LEFT_ID], out[RIGHT_ID])
        out = out.drop_columns([LEFT_ID, RIGHT_ID]).append_column(ROW_KEY, keys)
        codes = group_codes([keys])
        _, first = np.unique(codes, return_index=True)
        return out.take(pa.array(np.sort(first))) if len(first) < out.num_rows else out

    # -- checkpoints --------------------------------------------------------------------------

    def commit(self) -> None:
        for table in self.tables:
            table.commit()
        self._committed_sequence = self.sequence

    def rollback(self) -> None:
        for table in self.tables:
            table.rollback()
        self.sequence = self._committed_sequence


def spelled_out(
    plan: ChangelogJoin, schemas: Sequence[pa.Schema | None], hidden: frozenset[str]
) -> ChangelogJoin:
    """``plan`` with each ``alias.*`` over a stream input spelled out as the stream's declared
    columns (``schemas``: each input's, None for a derived one; ``hidden`` left out), and a
    repeated output name (``SELECT *`` over ``c JOIN b ON c.k = b.k``) renamed ``k_1`` as
    DuckDB and the sink name it: Arrow cannot concatenate tables with repeated names."""
    v = plan.variants
    sources = {}
    for name, schema, columns in zip(("__left", "__right"), schemas, plan.columns, strict=True):
        sources[name] = (
            schema if schema is not None else pa.schema([(c, pa.null()) for c in columns])
        )

    def spelled(sql: str) -> str:
        query = sqlglot.parse_one(sql, read="postgres")
        if "*" in sql:
            query = declared_stars(query, sources, hidden)
        if not isinstance(query, exp.Select):
            return sql
        names = [p.alias_or_name for p in query.expressions]
        unique = unique_names(names)
        if unique == names:
            return sql if "*" not in sql else query.sql(dialect="postgres", identify=True)
        query.set(
            "expressions",
            [
                p if new == old else exp.alias_(p.this if isinstance(p, exp.Alias) else p, new)
                for p, old, new in zip(query.expressions, names, unique, strict=True)
            ],
        )
        return query.sql(dialect="postgres", identify=True)

    variants = replace(
        v,
        inner_sql=spelled(v.inner_sql),
        left_sql=spelled(v.left_sql),
        right_sql=spelled(v.right_sql),
    )
    return replace(plan, variants=variants)


def _last_per_key(rows: pa.Table, column: str) -> pa.Table:
    """The last row of each value of ``column``, in order of those rows."""
    codes = group_codes([rows[column]])
    _, last_from_end = np.unique(codes[::-1], return_index=True)
    if len(last_from_end) == rows.num_rows:
        return rows
    return rows.take(pa.array(np.sort(len(codes) - 1 - last_from_end)))


def pair_keys(left: pa.ChunkedArray | pa.Array, right: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The key of each output row: the JSON array of its left and right input row keys."""
    joined = pc.binary_join_element_wise("[", json_strings(left), ",", json_strings(right), "]", "")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    return pc.cast(joined, pa.binary())
