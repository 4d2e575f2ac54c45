"""The exchange of a parallel query: rows cross from the task that read them to the task owning
their key group through an internal topic of our own log, ``<query>.exchange``.

The exchange topic has one partition per task. Each micro-batch of a *producing* side
(:class:`ExchangeWriter`: task ``i`` reads its share of the source partitions, runs the keyed
operator's stateless ``pre_sql`` and computes each row's key group) appends one record to every
partition: the rows of the key groups that partition's task owns — for a TUMBLE, HOP or
CUMULATE aggregate, their partial aggregates per key and pane instead (two-phase aggregation,
as Flink's local/global: a windowed COUNT ships a row per key and pane, not per event); for a
join, Top-N or deduplication, the source rows as read (one exchange topic per source,
``<query>.exchange`` then ``<query>.exchange1``, see :mod:`.routing`) — as an Arrow IPC stream
(written into its record and read back in place: :mod:`.exchange_records`), and the record key
``<task>:<sequence>:<watermark>:<idle>``. Every record carries the producer's
watermark, also when it holds no rows, so a consuming task's watermark (the minimum over the
producing tasks, :class:`ExchangeSource`) moves on even for key groups without new rows. A
producer computes its watermark without its idle partitions (as at parallelism 1); one whose
partitions are all idle says so (``idle`` 1), and the consumers leave it out of the minimum
until it sends rows again, so idle inputs do not hold them back.

Exactly once, per task (Kafka Streams' model, not Flink's aligned barriers: each side commits
its own progress atomically, no task waits for another to checkpoint, and a task killed alone
resumes alone):

- a producer records its micro-batch (end offsets, watermark, sequence number) as ``pending``
  in its RocksDB before appending (fsynced); after a crash it replays the batch with the same
  bounds and sequence number, so its records are the same. The commit that ends the batch is
  not fsynced (one fsync per batch, not two): a machine crash can only take it back to the
  pending batch, which is then replayed;
- a consumer keeps, per producer, the last sequence number it took, committed in the same
  RocksDB write batch as its operator state, its exchange offsets and its sink marks; a record
  replayed by a producer (sequence number not above the last taken) is skipped.

Every record also carries the producer's progress after its batch in a header,
:data:`PROGRESS_HEADER` (JSON: the source end offsets, event times by partition, records read
and rejected so far). A producer restored from an older copy of its state (a task moved to
another agent, :mod:`.placement`) reads the batches it appended since from the exchange
(:meth:`ExchangeWriter.recover`) and stands where the last of them left it, so it never sends
a sequence number again with other rows.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from streamhouse.errors import StreamHouseError
from streamhouse.joins.windowed import Panes
from streamhouse.log import Log
from streamhouse.log.isolation import Isolation
from streamhouse.log.metadata.leases import Lease
from streamhouse.runtime.exchange_records import (
    exchange_batch,
    ipc_size,
    read_exchange,
    write_ipc,
)
from streamhouse.runtime.key_groups import key_groups, task_of, window_tasks
from streamhouse.runtime.operators import run_ordered
from streamhouse.runtime.query import FINAL_WATERMARK, _window_period
from streamhouse.runtime.sources import EVENT_TIME, NO_WATERMARK, QuerySource, SourceRead
from streamhouse.sql.computed import wall_clock_ms
from streamhouse.sql.engine import parse_failure
from streamhouse.sql.nodes import WindowAggregate
from streamhouse.sql.source import RejectedRow, read_records
from streamhouse.sql.window_spec import WindowSpec
from streamhouse.state.store import ColumnFamily, StateBatch, StateStore, partition_key
from streamhouse.windows.operator import pane_partials
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

SEQUENCE = b"exchange/sequence"
PENDING = b"exchange/pending"
WATERMARK = b"exchange/watermark"
TAKEN = b"exchange/taken/"
ROWS_IN = b"exchange/rows_in"
REJECTED = b"exchange/rejected_rows"
IDLE = b"exchange/idle/"
CHECKPOINTED_AT = b"exchange/checkpointed_at"
"""The exchange's high watermarks when this copy of the state was taken (JSON, by partition):
its producer's later batches are at or after them (see :meth:`ExchangeWriter.recover`)."""
PROGRESS_HEADER = "streamhouse.progress"
_BIAS = 1 << 63
_POSITIONS = ("__partition", "__offset")


def exchange_topic(query: str, source: int = 0) -> str:
    """The internal topic a parallel query's rows of its source ``source`` (by index) cross
    tasks through."""
    return f"{query}.exchange" if source == 0 else f"{query}.exchange{source}"


def stage_topic(query: str) -> str:
    """The internal topic the changelog of a two-stage query's first stage crosses to the
    tasks of its second stage through (:mod:`.stages`)."""
    return f"{query}.exchange-stage2"


def encode(table: pa.Table) -> pa.Buffer:
    """``table`` as an Arrow IPC stream (its buffer, not copied into bytes).

    Sized first (a dry run that copies nothing), then written once into a buffer of that
    size: a growing ``BufferOutputStream`` reallocates and copies megabytes several times
    over (several times the CPU of the write itself)."""
    out = pa.allocate_buffer(ipc_size(table))
    write_ipc(table, memoryview(out))
    return out


def decode(value: bytes | pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(value).read_all()


class ExchangeWriter:
    """The producing side of task ``task``: its source partitions, to the exchange by key group.

    With ``pre_sql``, the rows it selects are sent (keyed by ``key_columns`` of its output);
    without, the source rows as read (keyed by ``key_columns`` of the source, hashed as text
    if ``text_keys``: the other input of a join keys by a column of another type)."""

    def __init__(
        self,
        log_: Log,
        source: QuerySource,
        pre_sql: str | None,
        key_columns: list[str],
        task: int,
        parallelism: int,
        store: StateStore,
        topic: str,
        max_batch_records: int,
        idle_timeout_ms: int,
        dead_letters: Callable[[list[RejectedRow]], None],
        strict: bool = False,
        window: WindowAggregate | None = None,
        text_keys: bool = False,
        by_window: WindowSpec | None = None,
        latest: bool = False,
        reach: tuple[int, int] | None = None,
        fence: Lease | None = None,
        proctime: WindowSpec | None = None,
    ) -> None:
        self.log = log_
        # a window over a PROCTIME() column: rows are stamped with the batch's processing
        # time here, and the producer's watermark is its clock (see :meth:`step`)
        self.proctime = proctime
        self.fence = fence  # the task's lease on an agent: appends only while it is held
        # a per-window query routed by window: a row to every task owning a window of it
        self.by_window = by_window
        self.reach = reach  # and to the owners of the windows it joins (routing.Routing.reach)
        self.text_keys = text_keys
        self.source = source
        self.pre_sql = pre_sql
        self.key_columns = key_columns
        self.task = task
        self.parallelism = parallelism
        self.store = store
        self.topic = topic
        self.max_batch_records = max_batch_records
        self.idle_timeout_ms = idle_timeout_ms
        self.dead_letters = dead_letters  # rows that do not parse go there
        self.strict = strict  # json.ignore-parse-errors = 'false': such a row fails the query
        self.window = window  # a TUMBLE/HOP/CUMULATE aggregate: partials cross, not rows
        source.load(log_, store, latest)  # latest: a first run starts at the end ('latest-offset')
        self.sequence = store.get_int(SEQUENCE) or 0
        stored = store.get_int(WATERMARK)
        self.watermark = stored - _BIAS if stored is not None else NO_WATERMARK
        self.rows_in = store.get_int(ROWS_IN) or 0  # source records read, over every run
        self.idle = False  # every source partition idle: the consumers leave this task out
        self.rejected_rows = store.get_int(REJECTED) or 0

    def caught_up(self, targets: dict[int, int]) -> bool:
        """Whether every owned partition was read up to ``targets``."""
        return all(self.source.positions.get(p, 0) >= o for p, o in targets.items())

    def step(self, final: bool = False) -> bool:
        """Read, route and append one micro-batch; False if there was nothing to send.
        ``final``: the watermark becomes ``final_watermark`` (end of input)."""
        pending = self.store.get_json(PENDING)
        source = self.source
        now = wall_clock_ms()  # the batch's processing time, never behind the last batch's
        if self.watermark < FINAL_WATERMARK:
            now = max(now, self.watermark)
        if pending is not None:
            ends = {int(p): int(o) for p, o in pending["end"].items()}
            sequence = int(pending["sequence"])
            now = int(pending.get("proctime", now))
        else:
            ends = source.plan_batch(self.log, self.max_batch_records) if not final else {}
            ends = ends or dict(source.positions)
            sequence = self.sequence + 1
        has_data = any(ends[p] > source.positions.get(p, 0) for p in ends)
        read = source.read(self.log, ends) if has_data else SourceRead(None)
        if self.proctime is not None and read.table is not None and source.computed is not None:
            read.table = source.computed.stamp(read.table, now)  # (a replay: the same time)
        if has_data and not final:  # catching up: decode the next batch while this one is sent
            source.prefetch(
                self.log, ends, source.plan_batch(self.log, self.max_batch_records, ends)
            )
        if read.rejected:
            if self.strict:
                raise parse_failure(source.name, read.rejected[0])
            if pending is None:  # (a replay sent them before: at least once, as at parallelism 1)
                self.dead_letters(read.rejected)
        event_times = source.event_times_after(read.table)
        if pending is not None:
            watermark = int(pending["watermark"])
        elif final:
            watermark = FINAL_WATERMARK
        elif self.proctime is not None:  # its windows close by the producers' clocks
            watermark = now
        else:
            watermark = max(self.watermark, source.watermark(event_times, self.idle_timeout_ms))
        idle = bool(pending["idle"]) if pending is not None else source.idle(self.idle_timeout_ms)
        if self.proctime is not None:
            idle = False  # every producer's clock runs: none is left out of the minimum
        if pending is None and not has_data and not self._moved(watermark) and idle == self.idle:
            return False
        if pending is None:
            intent = self.store.batch()
            intent.put_json(
                PENDING,
                {
                    "end": ends,
                    "watermark": watermark,
                    "sequence": sequence,
                    "idle": idle,
                    "proctime": now,
                },
            )
            self.store.commit(intent)
        progress = {
            "end": {str(p): o for p, o in ends.items()},
            "event_times": {str(p): t for p, t in event_times.items()},
            "rows_in": self.rows_in + read.records,
            "rejected_rows": self.rejected_rows + len(read.rejected),
        }
        self._send(read.table, sequence, watermark, idle, progress)
        self._advance(sequence, watermark, idle, progress)
        return True

    def _moved(self, watermark: int) -> bool:
        """Whether ``watermark`` is worth a record without rows: it moved (over a PROCTIME()
        window: past a window's end, as the clock moves every batch)."""
        if self.proctime is None or watermark >= FINAL_WATERMARK:
            return watermark != self.watermark
        period, offset = _window_period(self.proctime)
        return (watermark - offset) // period > (self.watermark - offset) // period

    def _advance(self, sequence: int, watermark: int, idle: bool, progress: dict) -> None:
        """Commit batch ``sequence`` as sent: the source stands at its ends."""
        ends = {int(p): int(o) for p, o in progress["end"].items()}
        event_times = {int(p): int(t) for p, t in progress["event_times"].items()}
        batch = self.store.batch()
        self.source.save(batch, ends, event_times)
        batch.put_int(SEQUENCE, sequence)
        batch.put_int(ROWS_IN, int(progress["rows_in"]))
        batch.put_int(REJECTED, int(progress["rejected_rows"]))
        batch.put_int(WATERMARK, watermark + _BIAS)
        batch.delete(ColumnFamily.META, PENDING)
        # not fsynced: lost only with the machine, when the synced intent above is still there
        # and the batch is sent again alike (same bounds, same sequence number: skipped by the
        # consumers that took it); the next batch's synced intent makes this durable first
        # (after a recovery, which reads the same batches back again)
        self.store.commit(batch, sync=False)
        self.source.advance(ends, event_times)
        self.sequence, self.watermark, self.idle = sequence, watermark, idle
        self.rows_in, self.rejected_rows = int(progress["rows_in"]), int(progress["rejected_rows"])

    def mark_checkpoint(self) -> None:
        """Record the exchange's high watermarks in the state, before a copy of it is taken."""
        metadata = self.log.metadata
        fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)
        ends = {str(t): fresh(self.topic, t).high_watermark for t in range(self.parallelism)}
        batch = self.store.batch()
        batch.put_json(CHECKPOINTED_AT, ends)
        self.store.commit(batch)

    def recover(self) -> int:
        """Catch up with the batches this producer appended after its state was copied (by
        :meth:`mark_checkpoint`; all of the exchange when there is no copy), as the exchange
        holds them: the source then stands where the last one left it. A batch that reached
        some exchange partitions only (a crash between their appends) becomes pending, to be
        sent again whole by the next :meth:`step`. Returns how many batches it caught up."""
        since = {int(t): int(o) for t, o in (self.store.get_json(CHECKPOINTED_AT) or {}).items()}
        metadata = self.log.metadata
        fresh = getattr(metadata, "fresh_offset", metadata.partition_offset)
        prefix = f"{self.task}:".encode()
        found: list[dict[int, tuple[int, bool, dict]]] = []
        for target in range(self.parallelism):
            start = since.get(target, 0)
            end = fresh(self.topic, target).high_watermark
            seen: dict[int, tuple[int, bool, dict]] = {}
            if end > start:
                records = read_records(
                    self.log,
                    self.topic,
                    [target],
                    {target: start},
                    {target: end},
                    isolation=Isolation.READ_UNCOMMITTED,
                )
                keys, headers = records["key"].to_pylist(), records["headers"].to_pylist()
                for key, pairs in zip(keys, headers, strict=True):  # one per producer batch
                    if not key or not key.startswith(prefix):
                        continue
                    _, sequence, watermark, idle = (int(x) for x in key.split(b":"))
                    progress = next(
                        (json.loads(h["value"]) for h in pairs if h["key"] == PROGRESS_HEADER),
                        None,
                    )
                    if sequence > self.sequence and progress is not None:
                        seen[sequence] = (watermark, bool(idle), progress)
            found.append(seen)
        appended = sorted(set().union(*found))
        if not appended:
            return 0
        last = appended[-1]
        whole = all(last in seen for seen in found)
        caught_up = appended if whole else appended[:-1]
        if caught_up:
            done = caught_up[-1]
            watermark, idle, progress = next(s[done] for s in found if done in s)
            self._advance(done, watermark, idle, progress)
        if not whole:
            watermark, idle, progress = next(s[last] for s in found if last in s)
            intent = self.store.batch()
            intent.put_json(
                PENDING,
                {"end": progress["end"], "watermark": watermark, "sequence": last, "idle": idle},
            )
            self.store.commit(intent)
        log.info(
            "%s: producer %d caught up with %d batch(es) it appended before (to sequence %d)",
            self.topic,
            self.task,
            len(appended),
            last,
        )
        return len(appended)

    def _send(
        self, table: pa.Table | None, sequence: int, watermark: int, idle: bool, progress: dict
    ) -> None:
        """One record to every exchange partition: the rows its task owns, and the watermark."""
        rows = table
        if rows is not None and self.pre_sql is not None:
            rows = run_ordered(self.pre_sql, {self.source.name: table})
            # source positions are for the late-row side output, not sent
            rows = rows.drop_columns([c for c in _POSITIONS if c in rows.column_names])
        if rows is not None and self.window is not None:  # partials per key and pane instead
            ts, valid = event_time_ms(rows, "__ts")
            if not valid.all():
                rows, ts = rows.filter(pa.array(valid)), ts[valid]
            # lateness is the consuming task's to judge (by the minimum of every producer)
            rows, _ = pane_partials(self.window, rows, ts, NO_WATERMARK)
        shares = self._shares(rows) if rows is not None and rows.num_rows else None
        key = f"{self.task}:{sequence}:{watermark}:{int(idle)}".encode()
        headers = [(PROGRESS_HEADER, json.dumps(progress).encode())]
        append_shares(
            self.log, self.topic, self.parallelism, rows, shares, key, headers, self.fence
        )

    def _shares(self, rows: pa.Table) -> list[np.ndarray]:
        """Per task, which of ``rows`` it is sent: those of its key groups (routed by window:
        those in a window it owns, a row to several tasks when its windows overlap)."""
        if self.by_window is not None:
            ts, _ = event_time_ms(rows, self.by_window.time_column)  # no time: pane 0's tasks
            panes = Panes.of(self.by_window)
            starts = panes.window_starts(panes.start(ts))
            if self.reach is not None:
                starts = np.hstack([starts, reached_windows(panes.width, ts, self.reach)])
            tasks = window_tasks(starts, self.parallelism, panes.width)
            return [(tasks == target).any(axis=1) for target in range(self.parallelism)]
        owner = task_of(self._key_groups(rows), self.parallelism)
        return [owner == target for target in range(self.parallelism)]

    def _key_groups(self, rows: pa.Table) -> np.ndarray:
        keys = rows.select(self.key_columns)
        if self.text_keys:
            keys = pa.table(
                [c.cast(pa.string()) if pa.types.is_integer(c.type) else c for c in keys.columns],
                names=keys.column_names,
            )
        return key_groups(keys, self.key_columns)


class ExchangeSource(QuerySource):
    """The consuming side of task ``task``: its exchange partition, rows of its key groups.

    Its "event times" are the producers' watermarks, by producing task; its watermark is the
    minimum over the producers (a producer reading no source partition does not count)."""

    def __init__(self, index: int, name: str, topic: str, task: int, producers: int) -> None:
        super().__init__(index, name, topic, None, None, 0)
        self.isolation = Isolation.READ_UNCOMMITTED  # our own records, never transactional
        self.owned = {task}
        self.producers = producers
        self.taken: dict[int, int] = {}  # last sequence number taken, by producer
        self._read_marks: dict[int, int] = {}
        self._read_taken: dict[int, int] = {}
        self.idle_producers: set[int] = set()  # as their latest records say
        self._read_idle: set[int] = set()

    def load(self, log_: Log, store: StateStore, latest: bool) -> None:
        super().load(log_, store, False)
        for producer in range(self.producers):
            stored = store.get_int(partition_key(TAKEN + self._prefix, producer))
            if stored is not None:
                self.taken[producer] = stored
            # every producer's watermark, not only the one of this task's own index (the
            # partition it reads): else a restarted task's watermark waits for a record of
            # every producer (and a drain, which runs none, never moves it)
            mark = store.get_int(partition_key(EVENT_TIME + self._prefix, producer))
            if mark is not None:
                self.event_times[producer] = mark - _BIAS
        self.idle_producers = set(store.get_json(IDLE + self._prefix) or [])
        self._read_idle = set(self.idle_producers)

    def prefetch(self, log_: Log, starts: dict[int, int], ends: dict[int, int]) -> None:
        return  # records of the exchange are few and already Arrow

    def read(self, log_: Log, ends: dict[int, int]) -> SourceRead:
        wanted = [p for p in ends if ends[p] > self.positions[p]]
        self._read_marks, self._read_taken = {}, dict(self.taken)
        self._read_idle = set(self.idle_producers)
        if not wanted:
            return SourceRead(None)
        now = time.monotonic()
        for p in wanted:
            self.last_data[p] = now
        records = read_exchange(
            log_, self.topic, wanted, {p: self.positions[p] for p in wanted}, ends
        )
        tables = []
        for record in records:  # one record per producer micro-batch, not per row
            producer, sequence, watermark, idle = (int(x) for x in (record.key or b"").split(b":"))
            if sequence <= self._read_taken.get(producer, 0):
                continue  # a producer's replay of a batch taken before
            if idle:
                self._read_idle.add(producer)
            else:
                self._read_idle.discard(producer)
            self._read_taken[producer] = sequence
            self._read_marks[producer] = max(watermark, self._read_marks.get(producer, watermark))
            if record.value is not None and record.value.size:  # read in place, not copied
                tables.append(decode(record.value))
        if not tables:
            return SourceRead(None, len(records))
        table = pa.concat_tables(tables, promote_options="default")
        return SourceRead(table, table.num_rows)

    def event_times_after(self, table: pa.Table | None) -> dict[int, int]:
        times = dict(self.event_times)
        for producer, mark in self._read_marks.items():
            times[producer] = max(mark, times.get(producer, NO_WATERMARK))
        return times

    def watermark(self, event_times: dict[int, int], idle_timeout_ms: int) -> int:
        """The minimum over the producers, those whose source partitions are all idle left out
        (unless every one is), as idle partitions at parallelism 1."""
        active = [p for p in range(self.producers) if p not in self._read_idle]
        marks = [event_times.get(p, NO_WATERMARK) for p in active or range(self.producers)]
        return min(marks) if marks else NO_WATERMARK

    def save(self, batch: StateBatch, ends: dict[int, int], event_times: dict[int, int]) -> None:
        super().save(batch, ends, event_times)
        for producer, sequence in self._read_taken.items():
            batch.put_int(partition_key(TAKEN + self._prefix, producer), sequence)
        batch.put_json(IDLE + self._prefix, sorted(self._read_idle))

    def advance(self, ends: dict[int, int], event_times: dict[int, int]) -> None:
        super().advance(ends, event_times)
        self.taken = dict(self._read_taken)
        self.idle_producers = set(self._read_idle)


def append_shares(
    log_: Log,
    topic: str,
    parallelism: int,
    rows: pa.Table | None,
    shares: list[np.ndarray] | None,
    key: bytes,
    headers: list[tuple[str, bytes]] | None = None,
    fence: Lease | None = None,
) -> dict[int, int]:
    """One record keyed ``key`` to every partition of exchange ``topic``: the ``rows`` of its
    task's share (``shares[task]``, a mask; none without rows), as Arrow IPC. The records'
    offsets, by partition."""
    records = {}
    for target in range(parallelism):
        picked = None
        if rows is not None and shares is not None:
            picked = rows.filter(pa.array(shares[target]))
        # not compressed: a record is read back once, by a task of this machine or agent,
        # and LZ4 both ways cost more CPU than the copy it saves
        records[target] = exchange_batch(picked, key, headers or [])
    # one flush for every task's record: one object, one fsync and one commit per batch
    appended = log_.append_together(topic, records, fence=fence, framed_here=True)
    return {target: future.result() for target, future in appended.items()}


def reached_windows(width: int, ts: np.ndarray, reach: tuple[int, int]) -> np.ndarray:
    """Per event time ``t``, the starts (multiples of ``width``) of the windows starting in
    ``[t + reach[0], t + reach[1]]``, one row each (repeating its first where it has fewer).

    >>> reached_windows(10, np.array([20, 25]), (-10, 0)).tolist()
    [[10, 20], [20, 20]]
    """
    lo, hi = reach
    first = -((-(ts + lo)) // width) * width  # the first multiple of width at or after t + lo
    starts = first[:, None] + np.arange((hi - lo) // width + 1)[None, :] * width
    return np.where(starts <= (ts + hi)[:, None], starts, first[:, None])


def producing_tasks(partitions: int, parallelism: int) -> int:
    """How many tasks read a source partition (task ``i`` reads those ``p % n == i``)."""
    if partitions <= 0:
        raise StreamHouseError("a parallel query's source has no partitions")
    return min(partitions, parallelism)


def owned_partitions(task: int, parallelism: int, partitions: int) -> set[int]:
    return {p for p in range(partitions) if p % parallelism == task}


__all__ = [
    "ExchangeSource",
    "append_shares",
    "stage_topic",
    "ExchangeWriter",
    "exchange_topic",
    "owned_partitions",
    "producing_tasks",
    "reached_windows",
]
