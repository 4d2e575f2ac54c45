"""Computed columns of a stream (``b AS a + 1``) and its metadata columns (``ts TIMESTAMP_LTZ(3)
METADATA FROM 'timestamp'``), evaluated when the source is read.

A computed column is an expression over the stream's physical columns and its metadata columns
(``_offset``, ``_partition``, ``_timestamp``, ``_key``), as in Flink; it cannot name another
computed column. Its type is what DataFusion gives the expression (a ``CAST`` fixes it). It can
be a stream's event time (``WATERMARK FOR ts AS ts - ...`` over ``ts AS TO_TIMESTAMP(...)``).

Bounded and continuous reads alike append the computed columns to each decoded table with one
DataFusion projection (:meth:`ComputedColumns.apply`); ``SELECT *`` lists the columns in the
order they were declared. Metadata columns take Flink's Kafka keys ``timestamp``, ``partition``
and ``offset`` (cast to the declared type); other metadata keys are refused when the stream is
declared.

``p AS PROCTIME()`` is the processing time: the wall-clock time (UTC, ``TIMESTAMP(3)``) at which
the rows are read, one reading of the clock per decoded batch (so not reproducible). It must be
a column on its own; it is what ``FOR SYSTEM_TIME AS OF`` takes in a lookup join. A continuous
query reads the clock once per micro-batch and records the reading with the batch's bounds, so
a micro-batch replayed after a crash gets the processing time it had (:meth:`stamp`).

>>> from streamhouse.sql.ddl import stream_definition
>>> from streamhouse.sql.parse import parse_one
>>> d = stream_definition(parse_one("CREATE STREAM s (a INT, b AS a + 1) WITH (topic='s')"))
>>> c = ComputedColumns.of(d)
>>> c.apply(pa.table({"a": pa.array([1, 2], pa.int32())})).to_pydict()
{'a': [1, 2], 'b': [2, 3]}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.sql.ddl import Column, StreamDef
from streamhouse.sql.execute import run_sql
from streamhouse.sql.functions import to_datafusion
from streamhouse.sql.parse import parse_one
from streamhouse.sql.source import METADATA_FIELDS

__all__ = [
    "METADATA_KEYS",
    "PROCTIME_TYPE",
    "ComputedColumnError",
    "ComputedColumns",
    "is_proctime_call",
    "wall_clock_ms",
]

_SOURCE = "__source"


class ComputedColumnError(SqlError):
    """A computed or metadata column that cannot be evaluated; ``column`` names it."""

    def __init__(self, column: str, message: str, kind: str = "computed column") -> None:
        super().__init__(f"{kind} {column!r}: {message}")
        self.column = column


METADATA_KEYS = {"timestamp": "_timestamp", "partition": "_partition", "offset": "_offset"}
"""Flink's Kafka metadata keys StreamHouse has, and the metadata columns that hold them."""
_METADATA_TYPES = {f.name: f.type for f in METADATA_FIELDS}


PROCTIME_TYPE = pa.timestamp("ms")
"""The type of a ``PROCTIME()`` column: Flink's TIMESTAMP(3), the UTC wall clock."""


def wall_clock_ms() -> int:
    """Milliseconds since the epoch now: the processing time of the rows being read."""
    return time.time_ns() // 1_000_000


def is_proctime_call(tree: exp.Expr) -> bool:
    """Whether ``tree`` is the call ``PROCTIME()``."""
    return isinstance(tree, exp.Anonymous) and tree.name.upper() == "PROCTIME"


@dataclass(frozen=True)
class ComputedColumns:
    """The computed columns of one stream, in declaration order among all its columns."""

    stream: str
    columns: tuple[Column, ...]  # every declared column, computed or not
    physical: pa.Schema
    clock: Callable[[], int] = field(default=wall_clock_ms, compare=False)
    """Milliseconds since the epoch, read once per :meth:`apply` for ``PROCTIME()`` columns."""

    @classmethod
    def of(cls, definition: StreamDef) -> ComputedColumns:
        return cls(definition.name, definition.columns, definition.schema())

    @property
    def computed(self) -> list[Column]:
        return [c for c in self.columns if c.expression is not None]

    @property
    def metadata(self) -> list[Column]:
        """Columns declared ``METADATA [FROM 'key']``: the record's timestamp, partition or
        offset, cast to the declared type."""
        return [c for c in self.columns if c.metadata is not None]

    def __bool__(self) -> bool:
        return bool(self.computed or self.metadata)

    @cached_property
    def _expressions(self) -> dict[str, exp.Expr]:
        """Each computed column's expression, checked: a located SqlError names the column."""
        physical = set(self.physical.names) | {f.name for f in METADATA_FIELDS}
        computed = {c.name for c in self.computed}
        out: dict[str, exp.Expr] = {}
        for column in self.computed:
            tree = parse_one(f"SELECT {column.expression}").expressions[0]
            if is_proctime_call(tree) and tree.expressions:
                raise ComputedColumnError(column.name, "PROCTIME() takes no arguments")
            if not is_proctime_call(tree) and any(
                map(is_proctime_call, tree.find_all(exp.Anonymous))
            ):
                raise ComputedColumnError(
                    column.name,
                    "PROCTIME() must be a column on its own (p AS PROCTIME()), "
                    "not part of an expression",
                )
            for ref in tree.find_all(exp.Column):
                if ref.name in computed:
                    raise ComputedColumnError(
                        column.name,
                        f"it names computed column {ref.name!r}: a computed column reads "
                        "physical and metadata columns only",
                    )
                if ref.name not in physical:
                    raise ComputedColumnError(
                        column.name, f"{ref.name!r} is not a column of {self.stream!r}"
                    )
            out[column.name] = tree
        return out

    @property
    def proctime(self) -> list[str]:
        """The ``PROCTIME()`` columns."""
        return [n for n, tree in self._expressions.items() if is_proctime_call(tree)]

    def needs(self, columns: set[str] | None) -> set[str] | None:
        """``columns`` (those a query reads; None: all) with the physical columns the computed
        ones among them are made of."""
        if columns is None:
            return None
        needed = set(columns)
        for name, tree in self._expressions.items():
            if name in columns:
                needed |= {ref.name for ref in tree.find_all(exp.Column)}
        return needed

    def select_items(self, names: list[str]) -> list[str]:
        """The SELECT items (DataFusion's SQL) that make :meth:`apply`'s columns of a table
        whose columns are ``names``, before its metadata casts and clock (``PROCTIME()``
        columns are NULL here)."""
        declared = {c.name for c in self.columns}
        items = []
        present = set(names)
        for column in self.columns:
            if column.expression is not None:
                tree = self._expressions[column.name]
                if is_proctime_call(tree):
                    items.append(f'NULL AS "{column.name}"')  # the clock, set by apply
                    continue
                if not {ref.name for ref in tree.find_all(exp.Column)} <= present:
                    continue  # its columns were not parsed: the query does not read it
                items.append(f'{to_datafusion(tree)} AS "{column.name}"')
            elif column.metadata is not None and METADATA_KEYS[column.metadata] in present:
                items.append(f'"{METADATA_KEYS[column.metadata]}" AS "{column.name}"')
            elif column.name in present:
                items.append(f'"{column.name}"')
        return items + [f'"{n}"' for n in names if n not in declared]

    def apply(self, table: pa.Table) -> pa.Table:
        """``table`` (decoded rows of the stream) with the computed columns whose columns it
        has (see :meth:`needs`), in declared order; its other columns (metadata) follow."""
        if not self:
            return table
        items = self.select_items(table.column_names)
        try:
            out = run_sql(f'SELECT {", ".join(items)} FROM "{_SOURCE}"', {_SOURCE: table})
        except SqlError as error:
            raise SqlError(f"computed columns of {self.stream!r}: {error.message}") from None
        for column in self.metadata:
            if column.name in out.column_names:
                i = out.column_names.index(column.name)
                out = out.set_column(i, column.name, out.column(i).cast(column.type))
        return self.stamp(out, self.clock() if self.proctime and out.num_rows else 0)

    def stamp(self, table: pa.Table, at_ms: int) -> pa.Table:
        """``table`` with its ``PROCTIME()`` columns set to ``at_ms`` (a continuous query's
        micro-batch sets the time it recorded, so a replay gives the same rows)."""
        at = pa.repeat(pa.scalar(at_ms, PROCTIME_TYPE), table.num_rows)
        for name in self.proctime:
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, at)
        return table

    def fields(self) -> list[pa.Field]:
        """The computed and metadata columns as Arrow fields (the types DataFusion plans)."""
        return self._fields

    @cached_property
    def _fields(self) -> list[pa.Field]:
        if not self:
            return []
        empty = pa.schema([*self.physical, *METADATA_FIELDS]).empty_table()
        schema = self.apply(empty).schema
        return [schema.field(c.name) for c in self.columns if not c.physical]

    def check(self) -> None:
        """Raise a :class:`ComputedColumnError` if a computed column cannot be evaluated (at
        CREATE STREAM)."""
        self._expressions  # noqa: B018 (names and functions checked)
        for column in self.metadata:
            source = METADATA_KEYS.get(column.metadata or "")
            if source is None:
                raise ComputedColumnError(
                    column.name,
                    f"METADATA FROM {column.metadata!r} is not supported (StreamHouse has "
                    f"{', '.join(repr(k) for k in METADATA_KEYS)})",
                    "metadata column",
                )
            try:
                pa.array([], _METADATA_TYPES[source]).cast(column.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise ComputedColumnError(
                    column.name,
                    f"the record's {column.metadata} ({_METADATA_TYPES[source]}) does not cast "
                    f"to {column.type}",
                    "metadata column",
                ) from None
        empty = pa.schema([*self.physical, *METADATA_FIELDS]).empty_table()
        for column in self.computed:
            if column.name in self.proctime:
                continue
            sql = to_datafusion(self._expressions[column.name])
            try:
                run_sql(f'SELECT {sql} FROM "{_SOURCE}"', {_SOURCE: empty})
            except SqlError as error:
                raise ComputedColumnError(column.name, error.message) from None
