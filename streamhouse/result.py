"""Lazy query results that speak Arrow, as DuckDB's relations do.

>>> rel = Relation(lambda: pa.table({"x": [1, 2]}))
>>> rel.to_arrow_table().num_rows
2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa


class Relation:
    """A query that runs when its rows are asked for (each time they are asked for).

    Every way out is Arrow: :meth:`to_arrow_table`, :meth:`to_arrow_reader`, the Arrow C stream
    protocol (``pa.table(rel)``, ``polars.from_arrow``, ``duckdb.sql("FROM rel")``), and the
    conveniences :meth:`df` (pandas) and :meth:`pl` (polars).
    """

    def __init__(self, run: Callable[[], pa.Table], *, description: str = "") -> None:
        self._run = run
        self.description = description

    def to_arrow_table(self) -> pa.Table:
        return self._run()

    arrow = to_arrow_table

    def to_arrow_reader(self) -> pa.RecordBatchReader:
        table = self._run()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow_reader().__arrow_c_stream__(requested_schema)

    def df(self) -> Any:
        """The rows as a pandas DataFrame."""
        return self.to_arrow_table().to_pandas()

    def pl(self) -> Any:
        """The rows as a polars DataFrame."""
        import polars

        return polars.from_arrow(self.to_arrow_table())

    def fetchall(self) -> list[tuple[Any, ...]]:
        table = self.to_arrow_table()
        columns = [column.to_pylist() for column in table.columns]
        return list(zip(*columns, strict=True))

    def __repr__(self) -> str:
        return f"<Relation {self.description}>" if self.description else "<Relation>"


def status(message: str) -> Relation:
    """The result of a statement that returns no rows of its own (DDL): one ``status`` row."""
    table = pa.table({"status": [message]})
    return Relation(lambda: table, description=message)
