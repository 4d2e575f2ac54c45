"""Continuous queries: read new records in micro-batches, run the plan, write results, checkpoint.

One micro-batch:

1. read each source partition from its committed offset up to its high watermark (at most
   ``max-batch-records`` in all) and decode the rows (rows that do not parse go to the
   dead-letter topic with the reason);
2. advance per-partition event time; the watermark is the minimum over partitions of
   ``max event time - declared delay`` (partitions idle longer than ``idle-timeout`` excluded),
   and never goes back;
3. run the plan: stateless SQL on DataFusion, or the window operator (late rows counted and
   dropped or sent to the side output; closed windows emitted, then HAVING and the SELECT list
   on DataFusion);
4. write results to the sink and commit state, source offsets, event times, sink progress and
   counters in one synced RocksDB write batch — a checkpoint.

Exactly once into a topic sink: before writing results, the batch's end offsets and watermark
are recorded as ``pending``; after a crash the same batch is replayed with the same bounds, so it
produces the same rows, and the sink skips those already written (see :mod:`.sink`).
Dead-letter and late-row side outputs are at least once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.log import Log
from streamhouse.log.records import Compression, build_batch
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.sink import TopicSink
from streamhouse.sql.ddl import stream_definition
from streamhouse.sql.execute import run_sql
from streamhouse.sql.parse import parse
from streamhouse.sql.plan import FLOWS, ContinuousPlan, Stateless, check_columns, plan_query
from streamhouse.sql.source import (
    METADATA_FIELDS,
    decode_json,
    infer_schema,
    read_records,
    with_metadata,
)
from streamhouse.state.store import StateStore, partition_key
from streamhouse.windows.operator import make_operator
from streamhouse.windows.table import event_time_ms

log = logging.getLogger(__name__)

FINAL_WATERMARK = 1 << 62
"""The watermark of a source that has ended: every window closes."""
NO_WATERMARK = -(1 << 62)

SOURCE = b"source/"
EVENT_TIME = b"event_time/"
SINK = b"sink/"
PENDING = b"pending"
COUNTERS = b"counters"


@dataclass(frozen=True)
class SourceInfo:
    name: str
    topic: str
    schema: pa.Schema | None  # None: inferred from the first records
    time_column: str | None
    delay_ms: int


def _run_sql(sql: str, tables: dict[str, pa.Table]) -> pa.Table:
    # On one partition: a replayed micro-batch must give the same rows in the same order, or
    # the exactly-once sink would skip the wrong ones.
    return run_sql(sql, tables, ordered=True)


class ContinuousQuery:
    """A continuous query over one source; runs in a background thread once started.

    >>> q = sh.start("queries/clicks.sql")   # doctest: +SKIP
    >>> q.status()["rows_in"]                # doctest: +SKIP
    """

    def __init__(
        self,
        log_: Log,
        resolve: Callable[[str], tuple[str, Any] | None],
        statement: exp.Expr,
        name: str,
        state_dir: Path,
        options: QueryOptions | None = None,
        on_results: Callable[[pa.Table], None] | None = None,
    ) -> None:
        self.log = log_
        self.name = name
        self.statement = statement
        self.plan: ContinuousPlan = plan_query(statement)
        self.options = options or QueryOptions()
        self.source = self._source_info(resolve)
        self._on_results = on_results
        self._results: deque[pa.RecordBatch] = deque()
        self._results_ready = threading.Condition()
        self.store = StateStore(state_dir)
        self.operator = (
            None
            if isinstance(self.plan.operator, Stateless)
            else make_operator(self.plan.operator, self.store, self.options.allowed_lateness_ms)
        )
        self.sink = None
        if self.plan.sink_kind == "topic" and self.plan.sink:
            if self.log.get_topic(self.plan.sink) is None:
                self.log.create_topic(self.plan.sink, 1)
            key_names = getattr(self.plan.operator, "key_sql", [])
            self.sink = TopicSink(self.log, self.plan.sink, key_names)
        self.dead_letter_topic = self.options.dead_letter_topic or f"{name}.dlq"
        counters = self.store.get_json(COUNTERS) or {}
        self.rows_in = int(counters.get("rows_in", 0))
        self.rows_out = int(counters.get("rows_out", 0))
        self.late_rows = int(counters.get("late_rows", 0))
        self.rejected_rows = int(counters.get("rejected_rows", 0))
        self.batches = 0
        self._load_progress()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._step_lock = threading.Lock()
        self._closed = False
        self.error: BaseException | None = None
        self.log.add_listener(self._on_commit)

    # -- setup --------------------------------------------------------------------------------

    def _source_info(self, resolve: Callable[[str], tuple[str, Any] | None]) -> SourceInfo:
        name = self.plan.source
        resolved = resolve(name)
        if resolved is None:
            raise SqlError(f"unknown stream or topic {name!r}")
        kind, entry = resolved
        window = getattr(self.plan.operator, "window", None)
        window_column = window.time_column if window is not None else None
        if kind == "topic":
            return SourceInfo(name, name, None, window_column, 0)
        if kind not in ("stream", "table"):
            raise SqlError(f"continuous queries read streams and topics; {name!r} is a {kind}")
        definition = stream_definition(parse(entry.sql)[0])
        columns = {f.name: f.type for f in METADATA_FIELDS}
        columns |= {c.name: c.type for c in definition.columns}
        check_columns(self.plan, self.statement, columns)
        watermark = definition.watermark
        column = watermark.column if watermark is not None else window_column
        delay = watermark.delay_ms if watermark is not None else 0
        return SourceInfo(name, definition.topic, definition.schema(), column, delay)

    def _load_progress(self) -> None:
        info = self.log.topic(self.source.topic)
        self.positions: dict[int, int] = {}
        self.event_times: dict[int, int] = {}
        for p in range(info.partitions):
            stored = self.store.get_int(partition_key(SOURCE, p))
            if stored is None:
                bounds = self.log.offsets(self.source.topic, p)
                latest = self.options.startup == "latest-offset"
                stored = bounds.high_watermark if latest else bounds.log_start_offset
            self.positions[p] = stored
            event_time = self.store.get_int(partition_key(EVENT_TIME, p))
            if event_time is not None:
                self.event_times[p] = event_time - (1 << 63)
        stored_wm = self.store.get_int(b"watermark")
        self.watermark = stored_wm - (1 << 63) if stored_wm is not None else NO_WATERMARK
        self.sink_marks: dict[int, int] = {}
        if self.sink is not None:
            current = self.sink.high_watermarks()
            for p, hw in current.items():
                stored = self.store.get_int(partition_key(SINK, p))
                self.sink_marks[p] = stored if stored is not None else hw
        started = time.monotonic()
        self._last_data = dict.fromkeys(self.positions, started)

    def _on_commit(self, topic: str, partition: int, high_watermark: int) -> None:
        if topic == self.source.topic:
            self._wake.set()

    # -- running ------------------------------------------------------------------------------

    def start(self) -> ContinuousQuery:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"query-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        log.info("query %s started from offsets %s", self.name, self.positions)
        while not self._stop.is_set():
            try:
                progressed = self.step()
            except BaseException as exc:  # the query stops; the server and other queries go on
                log.exception("query %s failed", self.name)
                self.error = exc
                break
            if not progressed:
                self._wake.wait(self.options.poll_interval_ms / 1000)
                self._wake.clear()
        log.info("query %s stopped at offsets %s", self.name, self.positions)

    def stop(self) -> None:
        """Stop after the current micro-batch is committed, and release the state."""
        already = self._stop.is_set()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._step_lock:
            if not already:
                self._closed = True
                self.store.close()
        with self._results_ready:
            self._results_ready.notify_all()

    def run_until_caught_up(self, final: bool = False) -> None:
        """Process every record in the source now (in this thread); ``final`` closes every window."""
        while self.step():
            pass
        if final:
            self.step(final=True)

    def step(self, final: bool = False, max_records: int | None = None) -> bool:
        """Run one micro-batch; False if there was nothing to do.

        Safe to call while the background thread runs: micro-batches never overlap.
        """
        with self._step_lock:
            if self._closed:
                raise StreamHouseError(f"query {self.name} is stopped")
            return self._step(final, max_records)

    def _step(self, final: bool, max_records: int | None) -> bool:
        pending = self.store.get_json(PENDING)
        topic = self.source.topic
        partitions = sorted(self.positions)
        info = self.log.topic(topic)
        for p in range(len(partitions), info.partitions):  # partitions added since
            self.positions[p] = 0
            self._last_data[p] = time.monotonic()
        partitions = sorted(self.positions)
        high = {p: self.log.offsets(topic, p).high_watermark for p in partitions}
        if pending is not None:
            ends = {int(p): int(o) for p, o in pending["end"].items()}
            forced_watermark: int | None = int(pending["watermark"])
        else:
            budget = max_records or self.options.max_batch_records
            ends = {}
            for p in partitions:
                available = high[p] - self.positions[p]
                ends[p] = self.positions[p] + max(0, min(available, budget))
                budget -= ends[p] - self.positions[p]
            forced_watermark = None
        has_data = any(ends[p] > self.positions[p] for p in partitions)
        now = time.monotonic()
        for p in partitions:
            if ends[p] > self.positions[p]:
                self._last_data[p] = now
        new_event_times = dict(self.event_times)
        table, rejected, records = self._read(ends)
        if (
            table is not None
            and self.source.time_column
            and self.source.time_column in table.column_names
        ):
            ts, valid = event_time_ms(table, self.source.time_column)
            if valid.any():
                grouped = pa.table(
                    {"p": table["_partition"].filter(pa.array(valid)), "t": pa.array(ts[valid])}
                )
                maxima = grouped.group_by("p").aggregate([("t", "max")])
                for p, t in zip(maxima["p"].to_pylist(), maxima["t_max"].to_pylist(), strict=True):
                    new_event_times[p] = max(t, new_event_times.get(p, NO_WATERMARK))
        if forced_watermark is not None:
            new_watermark = forced_watermark
        elif final:
            new_watermark = FINAL_WATERMARK
        else:
            new_watermark = max(
                self.watermark, self._compute_watermark(new_event_times, partitions, now)
            )
        if not has_data and new_watermark == self.watermark and pending is None:
            return False

        batch = self.store.batch()
        outputs: pa.Table | None = None
        late_rows = 0
        late_table = None
        if table is not None and table.num_rows and isinstance(self.plan.operator, Stateless):
            outputs = _run_sql(self.plan.operator.sql, {self.source.name: table})
        elif self.operator is not None:
            plan = self.plan.operator
            if table is not None and table.num_rows:
                pre = _run_sql(plan.pre_sql, {self.source.name: table})
                ts, valid = event_time_ms(pre, "__ts")
                if not valid.all():
                    pre, ts = pre.filter(pa.array(valid)), ts[valid]
                late = self.operator.process(pre, ts, self.watermark, batch)
                late_rows = len(late)
                if late_rows and self.options.late_topic:
                    late_table = _rows_by_position(table, pre.take(pa.array(late)))
            emitted = self.operator.emit(new_watermark, batch)
            if emitted is not None and emitted.num_rows:
                outputs = _run_sql(plan.post_sql, {FLOWS: emitted})

        if outputs is not None and outputs.num_rows and self.sink is not None:
            if pending is None:
                intent = self.store.batch()
                intent.put_json(
                    PENDING,
                    {"end": {str(p): o for p, o in ends.items()}, "watermark": new_watermark},
                )
                # The sink marks the replay of this batch skips from: never stored before the
                # first output of a query, and a restart must not take the topic's end for them.
                for p, hw in self.sink_marks.items():
                    intent.put_int(partition_key(SINK, p), hw)
                self.store.commit(intent)
                del intent
            marks = self.sink.write(outputs, self.sink_marks)
            for p, hw in marks.items():
                batch.put_int(partition_key(SINK, p), hw)
        else:
            marks = None
        if rejected:
            self._dead_letters(rejected, records)
        if late_table is not None and late_table.num_rows:
            self._late_rows(late_table)

        rows_in = self.rows_in + (records.num_rows if records is not None else 0)
        rows_out = self.rows_out + (outputs.num_rows if outputs is not None else 0)
        late_total = self.late_rows + late_rows
        rejected_total = self.rejected_rows + len(rejected)
        for p in partitions:
            batch.put_int(partition_key(SOURCE, p), ends[p])
        for p, t in new_event_times.items():
            batch.put_int(partition_key(EVENT_TIME, p), t + (1 << 63))
        batch.put_int(b"watermark", new_watermark + (1 << 63))
        batch.put_json(
            COUNTERS,
            {
                "rows_in": rows_in,
                "rows_out": rows_out,
                "late_rows": late_total,
                "rejected_rows": rejected_total,
            },
        )
        batch.delete("meta", PENDING)
        try:
            self.store.commit(batch)
        except BaseException:
            if self.operator is not None:
                self.operator.rollback()
            raise
        del batch
        if self.operator is not None:
            self.operator.commit()
        self.positions = ends
        self.event_times = new_event_times
        self.watermark = new_watermark
        if marks is not None:
            self.sink_marks = marks
        self.rows_in, self.rows_out, self.late_rows, self.rejected_rows = (
            rows_in,
            rows_out,
            late_total,
            rejected_total,
        )
        self.batches += 1
        if outputs is not None and outputs.num_rows:
            self._deliver(outputs)
        return True

    def _compute_watermark(
        self, event_times: dict[int, int], partitions: list[int], now: float
    ) -> int:
        idle_after = self.options.idle_timeout_ms / 1000
        active = [p for p in partitions if now - self._last_data.get(p, now) < idle_after]
        considered = active if active else partitions
        values = []
        for p in considered:
            if p not in event_times:
                if p in active:
                    return NO_WATERMARK  # an active partition with no event time yet holds it back
                continue
            values.append(event_times[p] - self.source.delay_ms)
        return min(values) if values else NO_WATERMARK

    def _read(
        self, ends: dict[int, int]
    ) -> tuple[pa.Table | None, list[tuple[int, str]], pa.Table | None]:
        wanted = [p for p in ends if ends[p] > self.positions[p]]
        if not wanted:
            return None, [], None
        records = read_records(self.log, self.source.topic, wanted, self.positions, ends)
        if records.num_rows == 0:
            return None, [], records
        schema = self.source.schema
        if schema is None:
            schema = infer_schema(records["value"])
            if schema is None:
                raise StreamHouseError(f"topic {self.source.topic!r} does not hold JSON objects")
            self.source = SourceInfo(
                self.source.name, self.source.topic, schema, self.source.time_column, 0
            )
        table, rows, rejected = decode_json(records["value"], schema)
        return with_metadata(table, records, rows), rejected, records

    # -- side outputs -------------------------------------------------------------------------

    def _dead_letters(self, rejected: list[tuple[int, str]], records: pa.Table | None) -> None:
        if records is None:
            return
        if self.log.get_topic(self.dead_letter_topic) is None:
            self.log.create_topic(self.dead_letter_topic, 1)
        index = pa.array([i for i, _ in rejected])
        picked = records.take(index)
        headers = [
            [
                ("reason", reason.encode()),
                ("topic", self.source.topic.encode()),
                ("partition", str(p).encode()),
                ("offset", str(o).encode()),
            ]
            for (_, reason), p, o in zip(
                rejected, picked["partition"].to_pylist(), picked["offset"].to_pylist(), strict=True
            )
        ]
        batch = build_batch(
            picked["value"].to_pylist(),
            picked["key"].to_pylist(),
            None,
            headers,
            compression=Compression.LZ4,
        )
        self.log.append(self.dead_letter_topic, 0, batch).result()
        log.warning(
            "query %s: %d row(s) did not parse and went to %s",
            self.name,
            len(rejected),
            self.dead_letter_topic,
        )

    def _late_rows(self, late: pa.Table) -> None:
        topic = self.options.late_topic
        assert topic is not None
        if self.log.get_topic(topic) is None:
            self.log.create_topic(topic, 1)
        from streamhouse.runtime.sink import encode_rows

        values, _ = encode_rows(
            late.drop_columns([c for c in late.column_names if c.startswith("_")]), []
        )
        self.log.append(topic, 0, build_batch(values, compression=Compression.LZ4)).result()

    # -- results ------------------------------------------------------------------------------

    def _deliver(self, outputs: pa.Table) -> None:
        if self._on_results is not None:
            self._on_results(outputs)
        if self.plan.sink_kind == "results":
            with self._results_ready:
                self._results.extend(outputs.to_batches())
                self._results_ready.notify_all()

    def results(self, timeout: float | None = None) -> Iterator[pa.RecordBatch]:
        """Result batches as windows close; ends when the query stops (or after ``timeout`` idle s)."""
        while True:
            with self._results_ready:
                if not self._results:
                    if self._stop.is_set() or self.error is not None:
                        return
                    if not self._results_ready.wait(timeout) and timeout is not None:
                        return
                if self._results:
                    item = self._results.popleft()
                else:
                    continue
            yield item

    def status(self) -> dict[str, Any]:
        """Offsets, watermark, rows in and out, late and rejected rows, state size."""
        running = self._thread is not None and self._thread.is_alive()
        return {
            "name": self.name,
            "state": "failed" if self.error is not None else ("running" if running else "stopped"),
            "error": str(self.error) if self.error is not None else None,
            "source": self.source.topic,
            "sink": self.plan.sink,
            "offsets": dict(self.positions),
            "watermark": _format_time(self.watermark),
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "late_rows": self.late_rows,
            "rejected_rows": self.rejected_rows,
            "open_windows": self.operator.open_windows if self.operator is not None else 0,
            "state_bytes": self.store.size_bytes() if not self._stop.is_set() else None,
            "batches": self.batches,
        }

    def explain(self) -> str:
        return self.plan.explain()


def _rows_by_position(source: pa.Table, late_pre: pa.Table) -> pa.Table:
    """The source rows (by partition and offset) behind late pre-projected rows."""
    wanted = pc.add(
        pc.multiply(pc.cast(late_pre["__partition"], pa.int64()), 1 << 40), late_pre["__offset"]
    )
    have = pc.add(
        pc.multiply(pc.cast(source["_partition"], pa.int64()), 1 << 40), source["_offset"]
    )
    return source.filter(pc.is_in(have, value_set=pc.unique(wanted)))


def _format_time(ms: int) -> str | None:
    if ms <= NO_WATERMARK:
        return None
    if ms >= FINAL_WATERMARK:
        return "end of input"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
