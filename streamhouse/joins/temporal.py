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
from typing import Protocol

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


class Versions(Protocol):
    """One versioned table of a temporal join: how a probe row finds its row of the table."""

    waits_on: str | None
    """The probe's time column whose rows wait for the watermark (event time); None: probe
    rows are matched as they come (processing time)."""

    @property
    def size(self) -> int:
        """Rows kept in state."""
        ...

    def take(self, rows: pa.Table | None) -> None:
        """The micro-batch's new rows of the table, before any probe of it is matched."""
        ...

    def matches(self, probes: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """The table's rows and, per probe row, the index of the one it joins (-1: none)."""
        ...

    def stage(self, watermark: int, batch: StateBatch) -> None:
        """Write what is kept into ``batch`` (after the micro-batch's probes are matched)."""
        ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class _Kept:
    """Versions kept in state under ``key`` of the ``joins`` column family: staged per
    micro-batch, made current on commit."""

    def __init__(self, store: StateStore, key: bytes, schema: pa.Schema | None) -> None:
        self.key, self.schema = key, schema
        stored = store.get(ColumnFamily.JOINS, key)
        self.kept: pa.Table | None = decode_table(stored) if stored is not None else None
        self.current: pa.Table | None = self.kept
        self._staged: pa.Table | None = None

    @property
    def size(self) -> int:
        return self.kept.num_rows if self.kept is not None else 0

    def _table(self) -> pa.Table | None:
        if self.current is None and self.schema is not None:
            return self.schema.empty_table()
        return self.current

    def _put(self, table: pa.Table | None, batch: StateBatch) -> None:
        if table is not None and table is not self.kept:
            batch.put(ColumnFamily.JOINS, self.key, encode_table(table))
            self._staged = table

    def commit(self) -> None:
        if self._staged is not None:
            self.kept, self._staged = self._staged, None
        self.current = self.kept

    def rollback(self) -> None:
        self._staged = None
        self.current = self.kept


class EventTimeVersions(_Kept):
    """An event-time versioned table (a stream with a primary key and a WATERMARK): each probe
    row joins the version current at its time; per key, versions older than the one current
    at the watermark are dropped."""

    def __init__(
        self,
        store: StateStore,
        key: bytes,
        schema: pa.Schema | None,
        probe_time: str,
        probe_keys: list[str],
        version_time: str,
        version_keys: list[str],
    ) -> None:
        super().__init__(store, key, schema)
        self.waits_on: str | None = probe_time
        self.probe_keys, self.version_time, self.version_keys = (
            probe_keys, version_time, version_keys,
        )  # fmt: skip

    def take(self, rows: pa.Table | None) -> None:
        self.current = _concat(self.current, rows)

    def matches(self, probes: pa.Table) -> tuple[pa.Table, np.ndarray]:
        table = self._table()
        if table is None:  # a topic whose schema is not known: nothing to join yet
            return probes.schema.empty_table(), np.full(probes.num_rows, -1, dtype=np.int64)
        assert self.waits_on is not None
        return table, match_versions(
            probes, self.waits_on, self.probe_keys, table, self.version_time, self.version_keys
        )

    def stage(self, watermark: int, batch: StateBatch) -> None:
        table = self.current
        if table is not None and table.num_rows:
            table = self._prune(table, watermark)
        self._put(table, batch)

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


class LatestVersions(_Kept):
    """A StreamHouse table with a primary key probed at processing time (``AS OF`` a
    ``PROCTIME()`` column): each probe row joins the latest row of its key, this micro-batch's
    rows of the table taken in first."""

    waits_on = None

    def __init__(
        self,
        store: StateStore,
        key: bytes,
        schema: pa.Schema | None,
        probe_keys: list[str],
        version_keys: list[str],
    ) -> None:
        super().__init__(store, key, schema)
        self.probe_keys, self.version_keys = probe_keys, version_keys

    def take(self, rows: pa.Table | None) -> None:
        if rows is not None and rows.num_rows:
            self.current = latest_rows(_concat(self.current, rows), self.version_keys)  # type: ignore[arg-type]

    def matches(self, probes: pa.Table) -> tuple[pa.Table, np.ndarray]:
        table = self._table()
        if table is None:
            return probes.schema.empty_table(), np.full(probes.num_rows, -1, dtype=np.int64)
        return table, latest_matches(probes, self.probe_keys, table, self.version_keys)

    def stage(self, watermark: int, batch: StateBatch) -> None:
        self._put(self.current, batch)


def versions_key(index: int) -> bytes:
    """The state key of the ``index``-th versioned table of a temporal join."""
    return VERSIONS if index == 0 else VERSIONS + str(index).encode()


class TemporalJoin:
    """A continuous temporal join of a probe stream with one or more versioned tables (a star
    schema), each named in ``sql`` (``__right``, or ``__right0``, ``__right1``, ...). While
    a table is event-time, probe rows wait in state until the watermark is past their time."""

    def __init__(self, sql: str, store: StateStore, tables: dict[str, Versions]) -> None:
        self.sql, self.tables = sql, tables
        self.times = sorted({t.waits_on for t in tables.values() if t.waits_on is not None})
        stored = store.get(ColumnFamily.JOINS, PROBES)
        self.waiting: pa.Table | None = decode_table(stored) if stored is not None else None
        self._staged: pa.Table | None = None

    @property
    def open_windows(self) -> int:
        waiting = self.waiting.num_rows if self.waiting is not None else 0
        return waiting + sum(t.size for t in self.tables.values())

    def process(
        self,
        probes: pa.Table | None,
        rows: dict[str, pa.Table | None],
        watermark: int,
        batch: StateBatch,
    ) -> pa.Table | None:
        """Take in new rows; join the probe rows that are ready (each table's ``rows`` by its
        name in ``sql``)."""
        for name, table in self.tables.items():
            table.take(rows.get(name))
        waiting = _concat(self.waiting, probes)
        outputs = None
        if waiting is not None and waiting.num_rows:
            # A row at the watermark is still on time, so a version at exactly a probe's time
            # may yet arrive: a probe row is ready once the watermark is past its time.
            ready = np.ones(waiting.num_rows, dtype=bool)
            for column in self.times:
                ready &= event_time_ms(waiting, column)[0] < watermark
            if ready.any():
                now = waiting.filter(pa.array(ready))
                waiting = waiting.filter(pa.array(~ready))
                inputs: dict[str, pa.Table] = {}
                for name, table in self.tables.items():
                    versions, matched = table.matches(now)
                    inputs["__left"], inputs[name] = temporal_inputs(now, versions, matched)
                outputs = run_sql(self.sql, inputs, ordered=True)
        for table in self.tables.values():
            table.stage(watermark, batch)
        if self.times and waiting is not None:
            batch.put(ColumnFamily.JOINS, PROBES, encode_table(waiting))
            self._staged = waiting
        return outputs if outputs is not None and outputs.num_rows else None

    def commit(self) -> None:
        if self._staged is not None:
            self.waiting, self._staged = self._staged, None
        for table in self.tables.values():
            table.commit()

    def rollback(self) -> None:
        self._staged = None
        for table in self.tables.values():
            table.rollback()


def _concat(old: pa.Table | None, new: pa.Table | None) -> pa.Table | None:
    tables = [t for t in (old, new) if t is not None and t.num_rows]
    if not tables:
        return old if old is not None else new
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


__all__ = [
    "EventTimeVersions",
    "LatestVersions",
    "TemporalJoin",
    "Versions",
    "latest_matches",
    "latest_rows",
    "match_versions",
    "temporal_inputs",
    "versions_key",
]
