"""A GROUP BY without a window: an updating view, one upsert per changed key per micro-batch.

Each micro-batch computes its partial aggregates per key (see
:mod:`streamhouse.windows.aggregate`), looks up the stored partials of the keys it touched,
merges the two, finalizes those keys and hands them on: the sink writes one upsert per key, or a
tombstone when HAVING no longer keeps the key. A ``COUNT(DISTINCT x)`` is kept as a count, next
to the set of (group, x) pairs seen so far: a batch adds to the count the pairs it sees first.

State (``sessions`` column family, each a :class:`~streamhouse.state.store.TableState`, so a
micro-batch writes runs of the keys it changed, never the whole table):

``b"groups" | u32(run)``
    Arrow IPC stream of keys and partials of the groups one micro-batch changed, one row per
    group (a group's latest run holds its row); with ``COUNT(DISTINCT)`` also ``__gid``, an
    int64 numbering groups in order of their first row.
``b"distinct" | u32(call) | u32(run)``
    for the ``call``-th aggregate, a ``COUNT(DISTINCT)``: Arrow IPC stream of the (``__gid``,
    ``v``) pairs one micro-batch saw first. Pairs are only ever added.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.key_codes import group_codes
from streamhouse.sql.aggregates import AggregateFunction
from streamhouse.sql.nodes import WindowAggregate
from streamhouse.state.store import StateBatch, StateStore, TableState
from streamhouse.windows import aggregate

log = logging.getLogger(__name__)

GROUPS_KEY = b"groups"
DISTINCT_KEY = b"distinct"
GROUP_ID = "__gid"
_U32 = struct.Struct(">I")


class GroupAggregate:
    """Keeps every key's partial aggregates; emits the finalized rows of changed keys."""

    def __init__(self, plan: WindowAggregate, store: StateStore) -> None:
        self.plan = plan
        self.keys = list(plan.keys) or ["__all"]
        # COUNT(DISTINCT) partials are counts here (merged by sum, finalized as a count)
        self.calls = [
            replace(c, func=AggregateFunction.COUNT)
            if c.func is AggregateFunction.COUNT_DISTINCT
            else c
            for c in plan.aggregates
        ]
        self.distinct = {
            i: c.arg
            for i, c in enumerate(plan.aggregates)
            if c.func is AggregateFunction.COUNT_DISTINCT
        }
        self.group_keys = self.keys + ([GROUP_ID] if self.distinct else [])
        self.plain = [(i, c) for i, c in enumerate(self.calls) if i not in self.distinct]
        self.columns = [*self.group_keys, *_partial_names(list(enumerate(self.calls)))]
        self.table = TableState(store, GROUPS_KEY, self.keys)
        self.seen = {
            i: TableState(store, DISTINCT_KEY + _U32.pack(i), [GROUP_ID, "v"])
            for i in self.distinct
        }

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(self, pre: pa.Table, batch: StateBatch) -> pa.Table | None:
        """Merge ``pre`` in; returns finalized rows (keys ``__k*``, aggregates) of changed keys."""
        if pre.num_rows == 0:
            return None
        if not self.plan.keys:
            pre = pre.append_column("__all", pa.array(np.zeros(pre.num_rows, dtype=np.int8)))
        fresh = aggregate.partial(pre, self.keys, [c for _, c in self.plain])
        fresh = fresh.rename_columns([*self.keys, *_partial_names(self.plain)])
        found = self.table.find(fresh)
        previous = self.table.take(found)
        if self.distinct:
            fresh = self._count_distinct(pre, fresh, previous, batch)
        fresh = fresh.select(self.columns)
        merged = aggregate.combine([previous, fresh], self.group_keys, self.group_keys, self.calls)
        self.table.replace(found, merged, batch)
        final = aggregate.finalize(merged, self.keys, self.calls)
        return final.drop_columns(["__all"]) if not self.plan.keys else final

    def _count_distinct(
        self, pre: pa.Table, fresh: pa.Table, previous: pa.Table, batch: StateBatch
    ) -> pa.Table:
        """``fresh`` with its groups' ids and, per COUNT(DISTINCT), the count of (group, value)
        pairs this batch sees first (which are added to the seen pairs)."""
        # group ids: those of known groups, the next free ones for new groups
        n = previous.num_rows
        both = (
            pa.concat_tables(
                [previous.select(self.keys), fresh.select(self.keys)], promote_options="permissive"
            )
            if n
            else fresh
        )
        codes = group_codes([both[k] for k in self.keys])
        ids = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        if n:
            ids[codes[:n]] = previous[GROUP_ID].to_numpy()
        fresh_ids = ids[codes[n:]]
        new = fresh_ids < 0
        fresh_ids[new] = self._next_group_id() + np.arange(int(new.sum()))
        fresh = fresh.append_column(GROUP_ID, pa.array(fresh_ids))
        # each row's group id: rows and fresh's groups coded together
        both = pa.concat_tables(
            [fresh.select(self.keys), pre.select(self.keys)], promote_options="permissive"
        )
        codes = group_codes([both[k] for k in self.keys])
        by_code = np.empty(int(codes.max()) + 1, dtype=np.int64)
        by_code[codes[: fresh.num_rows]] = fresh_ids
        row_ids = pa.array(by_code[codes[fresh.num_rows :]])
        for i, arg in self.distinct.items():
            values = pre[arg]
            pairs = pa.table({GROUP_ID: row_ids, "v": values}).filter(pc.is_valid(values))
            # pairs seen before dropped first: most are, and hashing the rest is cheaper
            first = pairs.filter(pa.array(~self.seen[i].contains(pairs)))
            first = first.group_by([GROUP_ID, "v"], use_threads=False).aggregate([])
            self.seen[i].replace(np.zeros(0, dtype=np.int64), first, batch)
            counts = np.zeros(len(fresh_ids), dtype=np.int64)
            if first.num_rows:
                # group ids are dense: count per id, then read each fresh group's count
                gid = first[GROUP_ID].to_numpy()
                low = int(fresh_ids.min())
                per_id = np.bincount(gid - low, minlength=int(fresh_ids.max()) - low + 1)
                counts = per_id[fresh_ids - low]
            fresh = fresh.append_column(f"p{i}", pa.array(counts))
        return fresh

    def _next_group_id(self) -> int:
        """One more than the largest group id held (0 for none)."""
        table = self.table.table
        if GROUP_ID not in table.column_names or table.num_rows == 0:
            return 0
        return int(pc.max(table[GROUP_ID]).as_py()) + 1

    def commit(self) -> None:
        self.table.commit()
        for seen in self.seen.values():
            seen.commit()

    def rollback(self) -> None:
        self.table.rollback()
        for seen in self.seen.values():
            seen.rollback()


def _partial_names(calls: list[tuple[int, aggregate.AggregateCall]]) -> list[str]:
    """The partial columns of ``calls``, each numbered by its place among the query's calls."""
    names = []
    for i, call in calls:
        names.append(f"p{i}")
        if call.func is AggregateFunction.AVG:
            names.append(f"p{i}_n")
    return names
