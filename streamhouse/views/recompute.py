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

An input that also retracts rows by record key (an outer join, whose rows padded with NULLs are
tombstoned when their match arrives: :attr:`Recompute.retracts`) keeps a ``__live`` column: a
retracted key's row stays, marked dead, so its group is recomputed without it (and a restart
does not bring it back). A group left without live rows, or dropped by HAVING, is tombstoned.

A Top-N over an updating input (:attr:`Recompute.ranks`) is keyed by (partition, rank), not by
group: its rows for the touched partitions are computed before and after the micro-batch's
changes, and a (partition, rank) only before is tombstoned (a partition may lose rows).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.key_codes import group_codes
from streamhouse.sql.execute import run_sql
from streamhouse.sql.nodes import Recompute
from streamhouse.state.store import StateBatch, StateView, TableState

log = logging.getLogger(__name__)

RECOMPUTE_KEY = b"recompute"
LIVE = "__live"
RECORD_KEY = "__key"


class RecomputeOperator:
    def __init__(self, plan: Recompute, store: StateView) -> None:
        self.plan = plan
        self.table = TableState(store, RECOMPUTE_KEY, plan.input_keys)

    @property
    def open_windows(self) -> int:
        return self.table.rows

    def process(
        self, changes: pa.Table | None, batch: StateBatch, retracted: Sequence[bytes] = ()
    ) -> tuple[pa.Table | None, pa.Table | None]:
        """Apply upserted input rows (then the retracted record keys); returns (rows of the
        touched groups, groups now gone)."""
        if self.plan.retracts:
            changes = self._with_retractions(changes, retracted)
        if changes is None or changes.num_rows == 0:
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
        if self.plan.ranks:  # rows keyed by rank: compare the touched groups' rows before
            before = self._output(self._rows_of(touched))
            self.table.replace(replaced, latest, batch)
            return self._output(self._rows_of(touched)), before
        self.table.replace(replaced, latest, batch)
        if not groups:  # one group: every kept row (a global Top-N)
            rows = self.table.current()
            return (
                run_sql(self.plan.sql, {self.plan.source: rows}) if rows.num_rows else None
            ), None
        rows = self.table.take(self.table.find(touched, groups))
        if self.plan.retracts:
            rows = rows.filter(rows[LIVE]).drop_columns([LIVE])
            result = run_sql(self.plan.sql, {self.plan.source: rows}) if rows.num_rows else None
            return result, self._gone(touched, result)
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

    def _rows_of(self, touched: pa.Table) -> pa.Table:
        """The current live input rows of the ``touched`` groups (every row without groups)."""
        groups = self.plan.group_by
        rows = self.table.take(self.table.find(touched, groups)) if groups else self.table.current()
        if self.plan.retracts and rows.num_rows:
            rows = rows.filter(rows[LIVE]).drop_columns([LIVE])
        return rows

    def _output(self, rows: pa.Table) -> pa.Table | None:
        """The query's rows over ``rows`` (None for none)."""
        if rows.num_rows == 0:
            return None
        return run_sql(self.plan.sql, {self.plan.source: rows}, ordered=True)

    def _with_retractions(
        self, changes: pa.Table | None, retracted: Sequence[bytes]
    ) -> pa.Table | None:
        """``changes`` marked live, followed by the rows of the retracted keys marked dead (the
        held row of a key, or the one this micro-batch upserts)."""
        upserts = None
        if changes is not None and changes.num_rows:
            upserts = changes.append_column(LIVE, pa.array(np.ones(changes.num_rows, bool)))
        if not retracted:
            return upserts
        keys = pa.array(retracted, pa.binary())
        held = self.table.take(self.table.find(pa.table({RECORD_KEY: keys})))
        candidates = [t for t in (held, upserts) if t is not None and t.num_rows]
        if not candidates:
            return upserts
        both = pa.concat_tables(candidates, promote_options="permissive")
        dead = both.filter(pc.is_in(both[RECORD_KEY], value_set=keys))
        if dead.num_rows == 0:
            return upserts
        index = dead.schema.get_field_index(LIVE)
        dead = dead.set_column(index, LIVE, pa.array(np.zeros(dead.num_rows, bool)))
        parts = [upserts, dead] if upserts is not None else [dead]
        return pa.concat_tables(parts, promote_options="permissive")

    def _gone(self, touched: pa.Table, result: pa.Table | None) -> pa.Table | None:
        """The touched groups the result has no row for (no live rows, or HAVING drops them),
        each once."""
        if self.plan.one_group:  # gone when it has no row
            return None if result is not None and result.num_rows else touched.slice(0, 1)
        groups = self.plan.group_by
        outputs = [k for k in self.plan.key_outputs if k is not None]
        present = touched.slice(0, 0)
        if result is not None and result.num_rows:
            present = pa.table(
                [
                    result[o].cast(touched.schema.field(g).type)
                    for o, g in zip(outputs, groups, strict=True)
                ],
                names=groups,
            )
        both = pa.concat_tables([present, touched])
        codes = group_codes([both[g] for g in groups])
        n = present.num_rows
        left = ~np.isin(codes[n:], codes[:n])
        if not left.any():
            return None
        _, first = np.unique(codes[n:][left], return_index=True)
        return touched.filter(pa.array(left)).take(pa.array(np.sort(first)))

    def commit(self) -> None:
        self.table.commit()

    def rollback(self) -> None:
        self.table.rollback()
