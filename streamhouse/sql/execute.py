"""Run SQL text on DataFusion over Arrow tables registered by name.

Every call gets a fresh context (DataFusion plans each micro-batch afresh; nothing registered
outlives the call, so a long-running query leaks no tables). Identifiers are case-sensitive, as
in Flink. ``ordered=True`` runs on one partition so equal input gives rows in the same order —
the exactly-once sink relies on replays producing identical output.
"""

from __future__ import annotations

import re

import datafusion
import pyarrow as pa

from streamhouse.errors import SqlError, StreamHouseError
from streamhouse.sql.functions import functions


def session_context(*, ordered: bool = False) -> datafusion.SessionContext:
    config = datafusion.SessionConfig().set(
        "datafusion.sql_parser.enable_ident_normalization", "false"
    )
    if ordered:
        config = config.with_target_partitions(1)
    ctx = datafusion.SessionContext(config)
    for function in functions():
        ctx.register_udf(function)
    return ctx


def register(ctx: datafusion.SessionContext, name: str, table: pa.Table) -> None:
    batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
    # Quoted: DataFusion lower-cases an unquoted name here, while the SQL keeps its case.
    ctx.register_record_batches('"' + name.replace('"', '""') + '"', [batches])


def run_sql(sql: str, tables: dict[str, pa.Table], *, ordered: bool = True) -> pa.Table:
    """The answer of ``sql`` over ``tables``; DataFusion errors become :class:`SqlError`."""
    ctx = session_context(ordered=ordered)
    for name, table in tables.items():
        register(ctx, name, table)
    try:
        return ctx.sql(sql).to_arrow_table()
    except StreamHouseError:
        raise
    except Exception as exc:  # DataFusion raises plain exceptions for planning and execution
        raise SqlError(datafusion_message(exc)) from None


# What DataFusion makes of an exception a Python function raised: PyErr { type: <class 'E'>,
# value: E('message'), traceback: ... }
_PYTHON_ERROR = re.compile(
    r"PyErr \{ type: <class '(?:[\w.]+\.)?(\w+)'>, value: \w+\((['\"])(.*?)\2\)"
)


def datafusion_message(exc: Exception) -> str:
    text = str(exc).strip()
    raised = _PYTHON_ERROR.search(text)
    if raised is not None:
        kind, message = raised.group(1), raised.group(3)
        return message if kind == "SqlError" else f"a Python function raised {kind}: {message}"
    for prefix in ("DataFusion error: ", "Error during planning: ", "Schema error: "):
        text = text.replace(prefix, "")
    return text.splitlines()[0] if text else type(exc).__name__
