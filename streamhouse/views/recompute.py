"""A query over an updating input: keep the latest input row per key, re-run the query for the
groups a micro-batch touches.

An aggregate over an updating aggregate (Nexmark q4: the average over categories of each
auction's current maximum bid) cannot merge partials, because an input row can change. Instead
the latest row of every input key is kept, and each micro-batch re-runs the query's own SQL over
the kept rows of the groups whose rows changed (their old and their new group), emitting an
upsert per group, or a tombstone for a group that no longer has rows.

State (``sessions`` column family, a :class:`~streamhouse.state.store.TableState` keyed by the
input keys): ``b"recompute" | u32(run)`` -> Arrow IPC stream of the latest rows of the input
keys one micro-batch changed; a key's latest run holds its row. A micro-batch writes one run,
never the whole table; runs are compacted as they pile up.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from streamhouse.key_codes import group_codes
from streamhouse.sql.execute import run_sql
from streamhouse.sql.plan import Recompute
from streamhouse.state.store import StateBatch, StateView, TableState

log = logging.getLogger(__name__)

RECOMPUTE_KEY = b"recompute"


class RecomputeOperator:
    def __init__(self, plan: Recompute, store: StateView) -> None:
        self.plan = plan
        self.table = TableState(store, RECOMPUTE_KEY, plan.input_keys)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(
        self, changes: pa.Table, batch: StateBatch
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """Apply upserted input rows; returns (rows of the touched groups, groups now empty)."""
        if changes.num_rows == 0:
            return None, None
        keys, groups = self.plan.input_keys, self.plan.group_by
        replaced = self.table.find(changes)
        # the last change per key wins
        codes = group_codes([changes[k] for k in keys])
        _, last_from_end = np.unique(codes[::-1], return_index=True)
        latest = changes.take(pa.array(np.sort(len(codes) - 1 - last_from_end)))
        touched = changes.select(groups)
        if len(replaced):
            old = self.table.take(replaced).select(groups)
            touched = pa.concat_tables([old, touched], promote_options="permissive")
        self.table.replace(replaced, latest, batch)
        rows = self.table.take(self.table.find(touched, groups))
        result = run_sql(self.plan.sql, {self.plan.source: rows}) if rows.num_rows else None
        both = pa.concat_tables([rows.select(groups), touched], promote_options="permissive")
        codes = group_codes([both[g] for g in groups])
        still = np.isin(codes[rows.num_rows :], codes[: rows.num_rows])
        if still.all():
            return result, None
        gone = touched.filter(pa.array(~still))
        gone_codes = codes[rows.num_rows :][~still]
        _, first = np.unique(gone_codes, return_index=True)
        return result, gone.take(pa.array(np.sort(first)))

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
