"""Event-time temporal joins: each row of a stream joined with the version of a versioned table
(a stream with a primary key, i.e. an upsert stream) that was current at the row's time.

``... FROM orders AS o JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.currency = r.currency``
pairs each order with the rates row of the same currency whose time is the latest one not after
``o.ts``. Matching is vectorized: versions are sorted by (key, time) and every probe row finds
its version with one ``searchsorted``. The matched versions are then lined up with the probe
rows, and the query's own SQL runs on DataFusion with the temporal join replaced by an equi-join
on the row number (``LEFT JOIN`` keeps rows without a version, as in Flink).

Continuously, probe rows wait in state until the watermark is past their time (rows at the
watermark are still on time), so that every version up to that time has arrived; versions older
than the one current at the watermark are dropped per key. State: ``joins`` column family,
``b"P"`` -> IPC(waiting probe rows), ``b"V"`` -> IPC(versions).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from streamhouse.key_codes import group_codes
from streamhouse.sql.execute import run_sql
from streamhouse.sql.nodes import ROW
from streamhouse.state.store import ColumnFamily, StateBatch, StateStore, decode_table, encode_table
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

PROBES, VERSIONS = b"P", b"V"


def match_versions(
    probes: pa.Table,
    probe_time: str,
    probe_keys: list[str],
    versions: pa.Table,
    version_time: str,
    version_keys: list[str],
) -> np.ndarray:
    """For each probe row, the index of its version in ``versions`` (-1: none)."""
    n, m = probes.num_rows, versions.num_rows
    if n == 0 or m == 0:
        return np.full(n, -1, dtype=np.int64)
    probe_codes, version_codes = _key_codes(probes, probe_keys, versions, version_keys)
    probe_ts, probe_ok = event_time_ms(probes, probe_time)
    version_ts, version_ok = event_time_ms(versions, version_time)
    base = min(probe_ts.min(), version_ts.min())
    span = int(max(probe_ts.max(), version_ts.max()) - base) + 2
    order = np.lexsort((version_ts, version_codes))
    version_value = version_codes[order] * span + (version_ts[order] - base)
    probe_value = probe_codes * span + (probe_ts - base)
    position = np.searchsorted(version_value, probe_value, side="right") - 1
    found = position >= 0
    candidate = order[np.clip(position, 0, m - 1)]
    found &= version_codes[candidate] == probe_codes
    found &= probe_ok & version_ok[candidate]
    return np.where(found, candidate, -1)


def temporal_inputs(
    probes: pa.Table, versions: pa.Table, matched: np.ndarray
) -> tuple[pa.Table, pa.Table]:
    """(probes, their versions) as two tables joinable on ``ROW`` (unmatched probes have no
    version row)."""
    rows = np.arange(probes.num_rows, dtype=np.int64)
    left = probes.append_column(ROW, pa.array(rows))
    hits = matched >= 0
    right = versions.take(pa.array(matched[hits])).append_column(ROW, pa.array(rows[hits]))
    return left, right


def latest_matches(
    probes: pa.Table, probe_keys: list[str], versions: pa.Table, version_keys: list[str]
) -> np.ndarray:
    """For each probe row, the index of the last row of ``versions`` with its key (-1: none,
    or a NULL in the probe's key): a processing-time temporal join, which sees the table as
    it is now."""
    n, m = probes.num_rows, versions.num_rows
    if n == 0 or m == 0:
        return np.full(n, -1, dtype=np.int64)
    probe_codes, version_codes = _key_codes(probes, probe_keys, versions, version_keys)
    distinct, from_end = np.unique(version_codes[::-1], return_index=True)
    last = m - 1 - from_end
    at = np.clip(np.searchsorted(distinct, probe_codes), 0, len(distinct) - 1)
    found = distinct[at] == probe_codes
    for name in probe_keys:
        found &= pc.is_valid(probes[name]).to_numpy(zero_copy_only=False)
    return np.where(found, last[at], -1)


def latest_rows(versions: pa.Table, keys: list[str]) -> pa.Table:
    """The last row of each key of ``versions`` (rows in arrival order), in arrival order."""
    codes = group_codes([versions[k] for k in keys])
    _, from_end = np.unique(codes[::-1], return_index=True)
    last = np.sort(versions.num_rows - 1 - from_end)
    return versions if len(last) == versions.num_rows else versions.take(pa.array(last))


class LatestVersionJoin:
    """Continuous processing-time temporal join against a StreamHouse table with a primary
    key: each micro-batch's probe rows are joined at once with the latest row of their key
    (this batch's rows of the table taken in first). State: ``joins`` column family,
    ``b"V"`` -> IPC(the latest row per key)."""

    def __init__(
        self, sql: str, store: StateStore, probe_keys: list[str], version_keys: list[str]
    ) -> None:
        self.sql = sql
        self.probe_keys, self.version_keys = probe_keys, version_keys
        stored = dict(store.items(ColumnFamily.JOINS))
        self.versions: pa.Table | None = (
            decode_table(stored[VERSIONS]) if VERSIONS in stored else None
        )
        self._staged: pa.Table | None = None

    @property
    def open_windows(self) -> int:
        return self.versions.num_rows if self.versions is not None else 0

    def process(
        self,
        probes: pa.Table | None,
        versions: pa.Table | None,
        schema: pa.Schema | None,
        batch: StateBatch,
    ) -> pa.Table | None:
        table = self.versions
        if versions is not None and versions.num_rows:
            table = latest_rows(_concat(table, versions), self.version_keys)  # type: ignore[arg-type]
            batch.put(ColumnFamily.JOINS, VERSIONS, encode_table(table))
            self._staged = table
        if probes is None or not probes.num_rows:
            return None
        if table is None:
            if schema is None:
                return None
            table = schema.empty_table()
        matched = latest_matches(probes, self.probe_keys, table, self.version_keys)
        left, right = temporal_inputs(probes, table, matched)
        out = run_sql(self.sql, {"__left": left, "__right": right})
        return out if out.num_rows else None

    def commit(self) -> None:
        if self._staged is not None:
            self.versions, self._staged = self._staged, None

    def rollback(self) -> None:
        self._staged = None


def _key_codes(
    probes: pa.Table, probe_keys: list[str], versions: pa.Table, version_keys: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(probe codes, version codes): equal where the probe's and the version's keys are."""
    keys = [
        pa.concat_arrays([_array(probes[p]), _array(versions[v]).cast(_array(probes[p]).type)])
        for p, v in zip(probe_keys, version_keys, strict=True)
    ]
    codes = group_codes(keys)
    return codes[: probes.num_rows], codes[probes.num_rows :]


def _array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class TemporalJoin:
    """Continuous event-time temporal join (see the module docstring)."""

    def __init__(
        self,
        sql: str,
        store: StateStore,
        probe_time: str,
        probe_keys: list[str],
        version_time: str,
        version_keys: list[str],
    ) -> None:
        self.sql = sql
        self.probe_time, self.probe_keys = probe_time, probe_keys
        self.version_time, self.version_keys = version_time, version_keys
        stored = {k: decode_table(v) for k, v in store.items(ColumnFamily.JOINS)}
        self.state: dict[bytes, pa.Table | None] = {
            PROBES: stored.get(PROBES),
            VERSIONS: stored.get(VERSIONS),
        }
        self._staged: dict[bytes, pa.Table | None] | None = None

    @property
    def open_windows(self) -> int:
        return sum(t.num_rows for t in self.state.values() if t is not None)

    def process(
        self,
        probes: pa.Table | None,
        versions: pa.Table | None,
        watermark: int,
        schemas: dict[bytes, pa.Schema | None],
        batch: StateBatch,
    ) -> pa.Table | None:
        """Take in new rows; join the probe rows the watermark has passed."""
        all_probes = _concat(self.state[PROBES], probes)
        all_versions = _concat(self.state[VERSIONS], versions)
        outputs = None
        waiting = all_probes
        if all_probes is not None and all_probes.num_rows:
            ts, _ = event_time_ms(all_probes, self.probe_time)
            # A row at the watermark is still on time, so a version at exactly a probe's time
            # may yet arrive: a probe row is ready once the watermark is past its time.
            ready = ts < watermark
            if ready.any():
                now = all_probes.filter(pa.array(ready))
                waiting = all_probes.filter(pa.array(~ready))
                version_table = all_versions
                if version_table is None:
                    schema = schemas.get(VERSIONS)
                    version_table = schema.empty_table() if schema is not None else None
                if version_table is not None:
                    matched = match_versions(
                        now, self.probe_time, self.probe_keys,
                        version_table, self.version_time, self.version_keys,
                    )  # fmt: skip
                    left, right = temporal_inputs(now, version_table, matched)
                    outputs = run_sql(self.sql, {"__left": left, "__right": right})
        if all_versions is not None and all_versions.num_rows:
            all_versions = self._prune(all_versions, watermark)
        self._staged = {PROBES: waiting, VERSIONS: all_versions}
        for key, table in self._staged.items():
            if table is not None:
                batch.put(ColumnFamily.JOINS, key, encode_table(table))
        return outputs if outputs is not None and outputs.num_rows else None

    def _prune(self, versions: pa.Table, watermark: int) -> pa.Table:
        """Per key, drop versions older than the one current at the watermark."""
        ts, _ = event_time_ms(versions, self.version_time)
        codes = group_codes([versions[k] for k in self.version_keys])
        order = np.lexsort((ts, codes))
        c, t = codes[order], ts[order]
        # the last version at or before the watermark, per key: later ones of the same key
        # with time <= watermark supersede it
        superseded = np.zeros(len(order), dtype=bool)
        superseded[:-1] = (c[:-1] == c[1:]) & (t[1:] <= watermark)
        keep = np.ones(len(order), dtype=bool)
        keep[order[superseded]] = False
        return versions.filter(pa.array(keep)) if not keep.all() else versions

    def commit(self) -> None:
        if self._staged is not None:
            self.state = self._staged
            self._staged = None

    def rollback(self) -> None:
        self._staged = None


def _concat(old: pa.Table | None, new: pa.Table | None) -> pa.Table | None:
    tables = [t for t in (old, new) if t is not None and t.num_rows]
    if not tables:
        return old if old is not None else new
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


__all__ = [
    "LatestVersionJoin",
    "TemporalJoin",
    "latest_matches",
    "latest_rows",
    "match_versions",
    "temporal_inputs",
]
