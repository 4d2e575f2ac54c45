"""A GROUP BY without a window: an updating view, one upsert per changed key per micro-batch.

Partial aggregates per key (see :mod:`streamhouse.windows.aggregate`) live in the ``sessions``
column family under ``b"groups"`` (one Arrow IPC stream of keys and partials). Each micro-batch
merges its partials in, finalizes the keys it touched and hands them on: the sink writes one
upsert per key, or a tombstone when HAVING no longer keeps the key.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from streamhouse.sql.plan import WindowAggregate
from streamhouse.state.store import StateBatch, StateStore, TableState
from streamhouse.windows import aggregate
from streamhouse.windows.assign import group_codes

log = logging.getLogger(__name__)

GROUPS_KEY = b"groups"


class GroupAggregate:
    """Keeps every key's partial aggregates; emits the finalized rows of changed keys."""

    def __init__(self, plan: WindowAggregate, store: StateStore) -> None:
        self.plan = plan
        self.keys = list(plan.keys) or ["__all"]
        self.table = TableState(store, GROUPS_KEY)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(self, pre: pa.Table, batch: StateBatch) -> pa.Table | None:
        """Merge ``pre`` in; returns finalized rows (keys ``__k*``, aggregates) of changed keys."""
        current = self.table.current
        if pre.num_rows == 0:
            return None
        if not self.plan.keys:
            pre = pre.append_column("__all", pa.array(np.zeros(pre.num_rows, dtype=np.int8)))
        fresh = aggregate.partial(pre, self.keys, self.plan.aggregates)
        if current is None or current.num_rows == 0:
            merged = fresh
            changed = np.ones(fresh.num_rows, dtype=bool)
        else:
            combined = pa.concat_tables([current, fresh], promote_options="permissive")
            codes = group_codes([combined[k] for k in self.keys])
            touched = np.unique(codes[current.num_rows :])
            merged = aggregate.merge_table(combined, self.keys, self.plan.aggregates)
            changed = np.isin(np.arange(merged.num_rows), touched)  # merged rows are in code order
        self.table.stage(merged, batch)
        final = aggregate.finalize(
            merged.filter(pa.array(changed)), self.keys, self.plan.aggregates
        )
        return final.drop_columns(["__all"]) if not self.plan.keys else final

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
