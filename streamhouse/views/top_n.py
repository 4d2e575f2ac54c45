"""Top-N per key (and deduplication, N = 1) as an updating view.

Only the source rows currently ranked within N are kept, in the ``sessions`` column family under
``b"top_n"``: with an insert-only input a row that falls out of the top N never comes back.
Each micro-batch re-ranks, with the query's own SQL on DataFusion, the kept rows of the keys it
touches together with its new rows, keeps the new top N, and returns the query's rows for
those keys — one upsert per (key, rank) — and their rows before, so that a (key, rank) the
query no longer outputs (``WHERE rn <= 3 AND t < ...``) gets a tombstone.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.sql.execute import run_sql
from streamhouse.sql.plan import TopN
from streamhouse.state.store import StateBatch, StateStore, TableState
from streamhouse.windows.assign import group_codes

log = logging.getLogger(__name__)

TOP_N_KEY = b"top_n"


class TopNOperator:
    def __init__(self, plan: TopN, store: StateStore) -> None:
        self.plan = plan
        self.table = TableState(store, TOP_N_KEY)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(self, rows: pa.Table, batch: StateBatch) -> tuple[pa.Table | None, pa.Table | None]:
        """Re-rank the touched keys; returns the query's rows for them, after and before this
        batch (a row of a (key, rank) that is no longer there, because the query filters on more
        than the rank, needs a tombstone)."""
        current = self.table.current
        if rows.num_rows == 0:
            return None, None
        keys = self.plan.partition_by
        before = None
        if current is not None and current.num_rows:
            combined = pa.concat_tables([current, rows], promote_options="permissive")
            codes = group_codes([combined[k] for k in keys])
            touched = pc.is_in(pa.array(codes), value_set=pa.array(codes[current.num_rows :]))
            was_touched = touched.slice(0, current.num_rows)
            untouched = current.filter(pc.invert(was_touched))
            candidates = combined.filter(touched)
            previous = current.filter(was_touched)
            if previous.num_rows:
                before = run_sql(self.plan.sql, {self.plan.source: previous})
        else:
            untouched, candidates = None, rows
        kept = run_sql(self.plan.retain_sql, {self.plan.source: candidates}).drop_columns(["__rn"])
        state = (
            kept
            if untouched is None
            else pa.concat_tables([untouched, kept], promote_options="permissive")
        )
        self.table.stage(state, batch)
        return run_sql(self.plan.sql, {self.plan.source: kept}), before

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
