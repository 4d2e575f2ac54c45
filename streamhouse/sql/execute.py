"""Run SQL text on DataFusion over Arrow tables registered by name.

Every call gets a fresh context (DataFusion plans each micro-batch afresh; nothing registered
outlives the call, so a long-running query leaks no tables). Identifiers are case-sensitive, as
in Flink. ``ordered=True`` runs on one partition so equal input gives rows in the same order —
the exactly-once sink relies on replays producing identical output.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

import datafusion
import pyarrow as pa

from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.result import check_batch, conform, plain_schema
from streamhouse.sql.builtins import WATERMARK_MARKER
from streamhouse.sql.functions import functions
from streamhouse.sql.memory import format_bytes

T = TypeVar("T")


def session_context(
    *, ordered: bool = False, memory_limit: int | None = None
) -> datafusion.SessionContext:
    """A fresh context; with ``memory_limit``, its operators reserve memory from a pool of
    that many bytes and spill to temporary files when it runs out (:mod:`.memory`)."""
    config = datafusion.SessionConfig().set(
        "datafusion.sql_parser.enable_ident_normalization", "false"
    )
    if ordered:
        config = config.with_target_partitions(1)
    runtime = None
    if memory_limit is not None:
        # what a sort keeps back to merge its spilled runs (DataFusion's default: 10 MB)
        reserve = min(10 << 20, memory_limit // 8)
        config = config.set("datafusion.execution.sort_spill_reservation_bytes", str(reserve))
        runtime = (
            datafusion.RuntimeEnvBuilder().with_disk_manager_os().with_fair_spill_pool(memory_limit)
        )
    ctx = datafusion.SessionContext(config, runtime)
    for function in functions():
        ctx.register_udf(function)
    return ctx


def quoted(name: str) -> str:
    """``name`` as DataFusion registers it: quoted, as it lower-cases an unquoted name here
    while the SQL keeps its case."""
    return '"' + name.replace('"', '""') + '"'


def register(ctx: datafusion.SessionContext, name: str, table: pa.Table) -> None:
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    ctx.register_record_batches(quoted(name), [batches])


_WATERMARK: ContextVar[int | None] = ContextVar("watermark", default=None)


@contextmanager
def current_watermark(watermark_ms: int | None) -> Iterator[None]:
    """``CURRENT_WATERMARK(ts)`` in the SQL run in this context is ``watermark_ms`` (None:
    NULL, before the first watermark)."""
    token = _WATERMARK.set(watermark_ms)
    try:
        yield
    finally:
        _WATERMARK.reset(token)


def run_sql(sql: str, tables: dict[str, pa.Table], *, ordered: bool = True) -> pa.Table:
    """The answer of ``sql`` over ``tables``; DataFusion errors become :class:`SqlError`."""
    watermark = _WATERMARK.get()
    if watermark is not None and WATERMARK_MARKER in sql:
        sql = sql.replace(WATERMARK_MARKER, str(watermark))
    ctx = session_context(ordered=ordered)
    for name, table in tables.items():
        register(ctx, name, table)
    table = sql_errors(lambda: ctx.sql(sql).to_arrow_table())
    check_batch(table)
    return table


def output_names(sql: str, tables: dict[str, pa.Table]) -> list[str]:
    """The names of ``sql``'s output columns over ``tables``, from its plan (not run)."""
    ctx = session_context(ordered=True)
    for name, table in tables.items():
        register(ctx, name, table)
    return sql_errors(lambda: ctx.sql(sql).schema().names)


# What DataFusion makes of an exception a Python function raised: PyErr { type: <class 'E'>,
# value: E('message'), traceback: ... }
_PYTHON_ERROR = re.compile(
    r"PyErr \{ type: <class '(?:[\w.]+\.)?(\w+)'>, value: \w+\((['\"])(.*?)\2\)"
)


# DataFusion's messages about its own internals, as the SQL feature a user can act on.
_EXPLAINED: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (
        re.compile(r"Invalid function '([^']+)'"),
        lambda m: (
            f"function {m.group(1)!r} is not supported: it is neither one of Flink's "
            "built-in functions (docs/functions.md) nor a registered function"
        ),
    ),
    (
        re.compile(
            r"Physical plan does not support logical expression "
            r"(OuterReferenceColumn|ScalarSubquery|Exists|InSubquery)"
        ),
        lambda m: (
            "correlated subqueries in this position (a subquery reading the outer "
            "query's columns) are not supported: write it as a JOIN"
        ),
    ),
    (
        re.compile(r"unnest\(\) can only be applied to array, struct and null"),
        lambda m: "UNNEST takes an ARRAY (UNNEST of a MAP or a scalar is not supported)",
    ),
    (
        re.compile(r'While expanding wildcard, column "([^"]+)" must appear in the GROUP BY'),
        lambda m: (
            f"SELECT * in a grouped query: column {m.group(1)!r} is neither in GROUP BY "
            "nor aggregated; name the columns to select instead of *"
        ),
    ),
]


def datafusion_message(exc: Exception) -> str:
    text = str(exc).strip()
    raised = _PYTHON_ERROR.search(text)
    if raised is not None:
        kind, message = raised.group(1), raised.group(3)
        return message if kind == "SqlError" else f"a Python function raised {kind}: {message}"
    for pattern, explain in _EXPLAINED:
        if (match := pattern.search(text)) is not None:
            return explain(match)
    for prefix in (
        "DataFusion error: ",
        "Error during planning: ",
        "Schema error: ",
        "External error: ",
        "Arrow error: ",
    ):
        text = text.replace(prefix, "")
    return text.splitlines()[0] if text else type(exc).__name__


class Scanned(Protocol):
    """A source DataFusion pulls batches from, which keeps the error that stopped it."""

    error: BaseException | None


def sql_errors(
    step: Callable[[], T],
    where: tuple[int | None, int | None] = (None, None),
    scans: Sequence[Scanned] = (),
    memory_limit: int | None = None,
) -> T:
    """``step()``, with DataFusion's planning and execution errors raised as :class:`SqlError`
    (at ``where``, the statement's line and column); an error a source of ``scans`` raised
    while DataFusion pulled from it is raised as it is. Running out of the memory pool names
    ``memory_limit`` and how to raise it."""
    try:
        return step()
    except StreamHouseError:
        raise
    except Exception as exc:  # DataFusion raises plain exceptions for planning and execution
        for scan in scans:
            if scan.error is not None:
                raise scan.error from None
        message = datafusion_message(exc)
        if memory_limit is not None and "Resources exhausted" in str(exc):
            message = (
                f"the query needs more memory than memory.limit = {format_bytes(memory_limit)} "
                "allows, even spilling to disk (raise it with SET 'memory.limit' = '...', "
                f"--memory-limit or connect(memory_limit=...)): {message}"
            )
        raise SqlError(message, *where) from None


class Answer:
    """The answer of a query, computed when read: a DataFusion frame (or rows already
    computed), given back the output names DataFusion could not hold (``renamed``: its name
    -> ours) and plain types in place of view types."""

    def __init__(
        self,
        rows: datafusion.DataFrame | pa.Table,
        where: tuple[int | None, int | None] = (None, None),
        renamed: Mapping[str, str] | None = None,
        *,
        scans: Sequence[Scanned] = (),
        done: Callable[[], None] = lambda: None,
        memory_limit: int | None = None,
    ) -> None:
        self._rows = rows
        self._where = where
        self._renamed = dict(renamed or {})
        self._scans = scans
        self._done = done  # called once every row was read
        self._memory_limit = memory_limit

    def _schema(self, schema: pa.Schema) -> pa.Schema:
        schema = plain_schema(schema)
        if not self._renamed:
            return schema
        return pa.schema(
            [f.with_name(self._renamed.get(f.name, f.name)) for f in schema], schema.metadata
        )

    def to_arrow_table(self) -> pa.Table:
        rows = self._rows
        if isinstance(rows, pa.Table):
            table = rows
        else:
            try:
                table = sql_errors(
                    rows.to_arrow_table, self._where, self._scans, self._memory_limit
                )
            finally:
                self._done()
        schema = self._schema(table.schema)
        return pa.Table.from_batches(list(conform(iter(table.to_batches()), schema)), schema)

    def to_arrow_reader(self) -> pa.RecordBatchReader:
        """The rows as DataFusion produces them, batch by batch.

        Each batch is taken with its own schema: the stream's declared schema can name another
        type than its batches hold (``'{' || concat_ws(..) || '}'`` is declared Utf8 and comes
        as Utf8View), and a reader trusting it reads the buffers as the wrong type (a crash).
        """
        rows = self._rows
        if isinstance(rows, pa.Table):
            schema = self._schema(rows.schema)
            batches: Iterator[pa.RecordBatch] = iter(rows.to_batches())
        else:
            stream = sql_errors(rows.execute_stream, self._where, self._scans, self._memory_limit)
            schema = self._schema(rows.schema())
            batches = (batch.to_pyarrow() for batch in stream)
        return pa.RecordBatchReader.from_batches(schema, conform(self._read(batches), schema))

    def _read(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        while True:
            try:
                batch = sql_errors(
                    lambda: next(batches, None), self._where, self._scans, self._memory_limit
                )
            except BaseException:
                self._done()
                raise
            if batch is None:
                self._done()
                return
            yield batch
