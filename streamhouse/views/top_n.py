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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.key_codes import group_codes
from streamhouse.sql.execute import run_sql
from streamhouse.sql.nodes import RANKED, TopN
from streamhouse.state.store import StateBatch, StateStore, TableState, take_sorted

log = logging.getLogger(__name__)

TOP_N_KEY = b"top_n"
TOP_N_GROWTH = 8
"""The runs after the first are compacted with it once they hold this many times its rows (see
:class:`~streamhouse.state.store.TableState`): a Top-N's runs hold mostly rows of keys no later
run touches (few of a key's rows leave its top N), so a compaction rewrites mostly current rows
and is put off longer than by default, each row then rewritten 1.25 times instead of twice."""


class TopNOperator:
    def __init__(self, plan: TopN, store: StateStore, arrival: str | None = None) -> None:
        self.plan = plan
        self.arrival = arrival  # ties broken by arrival, "ascending" or "descending" (PROCTIME)
        self.table = TableState(store, TOP_N_KEY, plan.partition_by, growth=TOP_N_GROWTH)

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
        before = previous = None
        candidates = rows
        if len(found):
            # the held rows of the touched keys, few: one chunk, not a sliver per run chunk
            previous = self.table.take(found).combine_chunks()
            if not self.plan.ranks_only:  # rows the query filters out may need tombstones
                before = run_sql(self.plan.sql, {self.plan.source: previous})
            candidates = pa.concat_tables([previous, rows], promote_options="permissive")
        ranking = self._arrow_ranks(candidates)
        columns = self.plan.output_columns
        was = None
        if ranking is None:
            ranked = run_sql(self.plan.retain_sql, {self.plan.source: candidates})
            kept = ranked.drop_columns(["__rn"])
            self.table.replace(found, kept, batch)
        else:
            picked, rank, codes = ranking
            held = len(found)
            was = _ranks_before(picked < held, rank)
            # A key none of whose new rows made its top N keeps its rows as they are (the input
            # only adds rows): only the keys a new row entered are written again.
            changed = np.zeros(int(codes.max()) + 1, dtype=bool)
            changed[codes[picked[picked >= held]]] = True
            rewritten = changed[codes[picked]]
            if columns is not None and not rewritten.all():
                # nor output (each of their rows is at its rank): their rows are not even taken
                picked, rank, was = picked[rewritten], rank[rewritten], was[rewritten]
                rewritten = rewritten[rewritten]
            # Taken in increasing positions (chunk by chunk, see _take_rows); with the outer
            # query picking columns, only the (key, rank)s whose row changed are output (a kept
            # row still at its rank is not): those rows are taken first, so the output is a
            # slice of the rows written, not a copy of them.
            moved = len(picked)
            if columns is not None:
                moved = int(np.count_nonzero(was != rank))
                order = np.lexsort((picked, was == rank))
            else:
                order = np.argsort(picked, kind="stable")
            picked, rank, rewritten = picked[order], rank[order], rewritten[order]
            ranked = _take_rows(candidates, picked, moved).append_column(
                pa.field("__rn", pa.uint64(), nullable=False), pa.array(rank.astype(np.uint64))
            )
            kept = ranked.drop_columns(["__rn"])
            written = kept if rewritten.all() else kept.filter(pa.array(rewritten))
            self.table.replace(found[changed[codes[:held]]], written, batch)
            ranked = ranked.slice(0, moved)
        names = [self.plan.rank_column if c == "__rn" else c for c in ranked.column_names]
        if columns is not None:  # the outer query picks columns: no SQL needed
            ranked = ranked.rename_columns(names)
            return (ranked if columns == ("*",) else ranked.select(list(columns))), before
        if self.plan.output_sql is not None:  # the ranks just computed: no second ranking
            return run_sql(self.plan.output_sql, {RANKED: ranked.rename_columns(names)}), before
        return run_sql(self.plan.sql, {self.plan.source: kept}), before

    def _arrow_ranks(
        self, candidates: pa.Table
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(row, rank) of the candidates ranked within N, by rank within each key, and each
        candidate's key code (:func:`group_codes`), when the plan ranks source rows by plain
        columns and those hold no NULL (None: rank them with SQL).
        Arrow's sort is stable, as DataFusion's: rows that tie keep their order (or, ordered by
        a PROCTIME() column, the order :attr:`arrival` says: the latest row first for DESC)."""
        order_by = self.plan.order_by
        if order_by is None or any(candidates[c].null_count for c, _ in order_by):
            return None
        codes = group_codes([candidates[k] for k in self.plan.partition_by])
        keys = pa.table(
            {"__k": codes, **{f"__o{i}": candidates[c] for i, (c, _) in enumerate(order_by)}}
        )
        sort_keys = [("__k", "ascending")] + [
            (f"__o{i}", "descending" if desc else "ascending")
            for i, (_, desc) in enumerate(order_by)
        ]
        if self.arrival is not None:  # kept rows first, then the batch's rows as read
            keys = keys.append_column("__arrival", pa.array(np.arange(len(codes))))
            sort_keys.append(("__arrival", self.arrival))
        order = pc.sort_indices(keys, sort_keys=sort_keys).to_numpy()
        sorted_codes = codes[order]
        n = len(order)
        heads = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        rank = np.arange(n) - np.repeat(heads, np.diff(np.r_[heads, n])) + 1
        kept = rank <= self.plan.limit
        return order[kept], rank[kept], codes

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()


def _take_rows(candidates: pa.Table, picked: np.ndarray, moved: int) -> pa.Table:
    """The candidates' rows ``picked[:moved]`` then ``picked[moved:]`` (each increasing), taken
    chunk by chunk (:func:`take_sorted`): only the picked rows are copied."""
    chunks = candidates.to_batches()
    return pa.concat_tables(
        [take_sorted(chunks, part, candidates) for part in (picked[:moved], picked[moved:])]
    )


def _ranks_before(held: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Each picked row's rank before the batch (0 for a new row), from the ranking of the held
    and new rows together (the picked rows in ranked order, key by key: ``held`` whether each
    was kept before, ``rank`` its rank now): among the held rows alone a held row is preceded
    by the held rows of its key ahead of it now (the sort is stable, and every row ahead of a
    picked row is picked)."""
    counted = np.cumsum(held)
    first = np.arange(len(held)) - rank.astype(np.int64) + 1  # where each row's key starts
    before_key = counted[first] - held[first]
    return np.where(held, counted - before_key, 0)
