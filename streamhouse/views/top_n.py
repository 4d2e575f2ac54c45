"""Top-N per key (and deduplication, N = 1) as an updating view.

Only the source rows currently ranked within N are kept: with an insert-only input a row that
falls out of the top N never comes back. Each micro-batch looks up the kept rows of the keys it
touches, re-ranks them together with its new rows with the query's own SQL on DataFusion, keeps
the new top N, and returns the query's rows for those keys — one upsert per (key, rank) — and
their rows before, so that a (key, rank) the query no longer outputs (``WHERE rn <= 3 AND t <
...``) gets a tombstone.

State (``sessions`` column family, a :class:`~streamhouse.state.store.TableState` keyed by the
partition columns): ``b"top_n" | u32(run)`` -> Arrow IPC stream of the kept rows of the keys
one micro-batch re-ranked (all of each key's kept rows); a key's latest run holds its rows.
A micro-batch writes one run, never the whole table; runs are compacted as they pile up.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from streamhouse.sql.execute import run_sql
from streamhouse.sql.plan import RANKED, TopN
from streamhouse.state.store import StateBatch, StateStore, TableState

log = logging.getLogger(__name__)

TOP_N_KEY = b"top_n"


class TopNOperator:
    def __init__(self, plan: TopN, store: StateStore) -> None:
        self.plan = plan
        self.table = TableState(store, TOP_N_KEY, plan.partition_by)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(self, rows: pa.Table, batch: StateBatch) -> tuple[pa.Table | None, pa.Table | None]:
        """Re-rank the touched keys; returns the query's rows for them, after and before this
        batch (a row of a (key, rank) that is no longer there, because the query filters on more
        than the rank, needs a tombstone; when it filters on the rank only, a (key, rank) never
        goes away and there is no before)."""
        if rows.num_rows == 0:
            return None, None
        found = self.table.find(rows)
        before = None
        candidates = rows
        if len(found):
            previous = self.table.take(found)
            if not self.plan.ranks_only:  # rows the query filters out may need tombstones
                before = run_sql(self.plan.sql, {self.plan.source: previous})
            candidates = pa.concat_tables([previous, rows], promote_options="permissive")
        ranked = run_sql(self.plan.retain_sql, {self.plan.source: candidates})
        kept = ranked.drop_columns(["__rn"])
        self.table.replace(found, kept, batch)
        if self.plan.output_sql is not None:  # the ranks just computed: no second ranking
            names = [self.plan.rank_column if c == "__rn" else c for c in ranked.column_names]
            return run_sql(self.plan.output_sql, {RANKED: ranked.rename_columns(names)}), before
        return run_sql(self.plan.sql, {self.plan.source: kept}), before

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
