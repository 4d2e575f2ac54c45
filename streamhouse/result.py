"""Lazy query results that speak Arrow, as DuckDB's relations do.

>>> rel = Relation(lambda: pa.table({"x": [1, 2]}))
>>> rel.to_arrow_table().num_rows
2
>>> plain_type(pa.list_(pa.string_view()))
ListType(list<item: string>)
>>> unique_names(["a", "b", "a", "a_1"])
['a', 'b', 'a_2', 'a_1']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from streamhouse.errors import SqlError


class Relation:
    """A query that runs when its rows are asked for (each time they are asked for).

    Every way out is Arrow: :meth:`to_arrow_table`, :meth:`to_arrow_reader` (the record
    batches as the query engine produces them; the answer is never collected whole), the
    Arrow C stream protocol (``pa.table(rel)``, ``polars.from_arrow``,
    ``duckdb.sql("FROM rel")``), and the conveniences :meth:`df` (pandas) and :meth:`pl`
    (polars). Column names are the query's output names, duplicates included (as PostgreSQL
    keeps them); :meth:`pl` renames later duplicates ``a_1``, ``a_2`` as DuckDB does, since a
    polars frame cannot hold two columns of one name.
    """

    def __init__(
        self,
        run: Callable[[], pa.Table],
        *,
        stream: Callable[[], pa.RecordBatchReader] | None = None,
        description: str = "",
        listing: bool = False,
    ) -> None:
        self._run = run
        self._stream = stream
        self.description = description
        self.listing = listing  # rows that are the lines of one text (EXPLAIN): shown whole

    def to_arrow_table(self) -> pa.Table:
        return self._run()

    arrow = to_arrow_table

    def to_arrow_reader(self) -> pa.RecordBatchReader:
        """The rows as record batches, produced while they are read when the query allows."""
        if self._stream is not None:
            return self._stream()
        table = self._run()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow_reader().__arrow_c_stream__(requested_schema)

    def df(self) -> Any:
        """The rows as a pandas DataFrame."""
        return self.to_arrow_table().to_pandas()

    def pl(self) -> Any:
        """The rows as a polars DataFrame (later duplicate names renamed ``a_1``, ...)."""
        import polars

        table = self.to_arrow_table()
        return polars.from_arrow(table.rename_columns(unique_names(table.column_names)))

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


def plain_type(type_: pa.DataType) -> pa.DataType:
    """``type_`` with ``string_view`` and ``binary_view`` (DataFusion's string types) replaced by
    ``string`` and ``binary``, inside lists, structs and maps too: CSV writers and many readers
    know only those. (List views are left alone: pyarrow 26 casts them to lists wrongly.)"""
    if type_ == pa.string_view():
        return pa.string()
    if type_ == pa.binary_view():
        return pa.binary()
    if pa.types.is_list(type_):
        return pa.list_(type_.value_field.with_type(plain_type(type_.value_type)))
    if pa.types.is_large_list(type_):
        return pa.large_list(type_.value_field.with_type(plain_type(type_.value_type)))
    if pa.types.is_fixed_size_list(type_):
        return pa.list_(type_.value_field.with_type(plain_type(type_.value_type)), type_.list_size)
    if pa.types.is_struct(type_):
        return pa.struct([f.with_type(plain_type(f.type)) for f in type_.fields])
    if pa.types.is_map(type_):
        return pa.map_(
            type_.key_field.with_type(plain_type(type_.key_type)),
            type_.item_field.with_type(plain_type(type_.item_type)),
            type_.keys_sorted,
        )
    return type_


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with :func:`plain_type` applied to every field."""
    return pa.schema([f.with_type(plain_type(f.type)) for f in schema], schema.metadata)


def conform(batches: Iterator[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """``batches`` as ``schema``: columns cast to its (plain) types and given its names.

    Each batch is checked first (a cheap check of its buffers' sizes and end offsets): an
    invalid array from the query engine is an error here, not a crash where it is read.
    """
    for batch in batches:
        check_batch(batch)
        if batch.schema.equals(schema):
            yield batch
            continue
        columns = [
            c if c.type == f.type else c.cast(f.type)
            for c, f in zip(batch.columns, schema, strict=True)
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=schema)


def check_batch(batch: pa.RecordBatch | pa.Table) -> None:
    """Raise :class:`SqlError` if ``batch`` has an array whose buffers do not hold what its
    offsets and lengths say (reading such an array crashes the process)."""
    try:
        batch.validate()
    except pa.ArrowInvalid as exc:
        raise SqlError(f"the query engine produced an invalid result: {exc}") from None


def unique_names(names: list[str]) -> list[str]:
    """``names`` with each later duplicate renamed ``name_1``, ``name_2``, ... (DuckDB's rule),
    skipping suffixes that are names already."""
    taken = set(names)
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        candidate, n = name, 0
        while candidate in seen or (candidate != name and candidate in taken):
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out
