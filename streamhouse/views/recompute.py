"""A query over an updating input: keep the latest input row per key, re-run the query for the
groups a micro-batch touches.

An aggregate over an updating aggregate (Nexmark q4: the average over categories of each
auction's current maximum bid) cannot merge partials, because an input row can change. Instead
the latest row of every input key is kept (``sessions`` column family, ``b"recompute"``), and
each micro-batch re-runs the query's own SQL over the kept rows of the groups whose rows changed
(their old and their new group), emitting an upsert per group, or a tombstone for a group that
no longer has rows.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.sql.execute import run_sql
from streamhouse.sql.plan import Recompute
from streamhouse.state.store import StateBatch, StateView, TableState
from streamhouse.windows.assign import group_codes

log = logging.getLogger(__name__)

RECOMPUTE_KEY = b"recompute"


class RecomputeOperator:
    def __init__(self, plan: Recompute, store: StateView) -> None:
        self.plan = plan
        self.table = TableState(store, RECOMPUTE_KEY)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(
        self, changes: pa.Table, batch: StateBatch
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """Apply upserted input rows; returns (rows of the touched groups, groups now empty)."""
        current = self.table.current
        if changes.num_rows == 0:
            return None, None
        keys, groups = self.plan.input_keys, self.plan.group_by
        if current is not None and current.num_rows:
            combined = pa.concat_tables([current, changes], promote_options="permissive")
            codes = group_codes([combined[k] for k in keys])
            n = current.num_rows
            replaced = np.isin(codes[:n], codes[n:])
            touched_old = current.filter(pa.array(replaced)).select(groups)
            # the last change per key wins
            new_codes = codes[n:]
            _, last_from_end = np.unique(new_codes[::-1], return_index=True)
            latest = np.sort(len(new_codes) - 1 - last_from_end)
            state = pa.concat_tables(
                [current.filter(pa.array(~replaced)), changes.take(pa.array(latest))],
                promote_options="permissive",
            )
            touched = pa.concat_tables(
                [touched_old, changes.select(groups)], promote_options="permissive"
            )
        else:
            state, touched = changes, changes.select(groups)
        self.table.stage(state, batch)
        both = pa.concat_tables([state.select(groups), touched], promote_options="permissive")
        codes = group_codes([both[g] for g in groups])
        affected = np.isin(codes[: state.num_rows], codes[state.num_rows :])
        rows = state.filter(pa.array(affected))
        result = run_sql(self.plan.sql, {self.plan.source: rows}) if rows.num_rows else None
        still = np.isin(codes[state.num_rows :], codes[: state.num_rows][affected])
        gone = touched.filter(pa.array(~still)) if not still.all() else None
        if gone is not None:
            gone = pc.unique(gone[groups[0]]) if len(groups) == 1 else gone
        return result, gone if gone is None or isinstance(gone, pa.Table) else pa.table(
            {groups[0]: gone}
        )

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
