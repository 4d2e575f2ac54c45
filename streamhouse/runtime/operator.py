"""The one interface the continuous runtime drives every operator through.

Each micro-batch hands an operator a :class:`MicroBatch` (the new rows of each of its inputs,
the watermark before and after, the write batch its state changes go into) and gets back a
:class:`Changelog` (rows appended or upserted, record keys retracted, late rows). State is
restored when the operator is built (from its :class:`~streamhouse.state.store.StateView`),
snapshotted into the micro-batch's write batch, and made current by :meth:`Operator.commit`
once that write batch is durable (:meth:`Operator.rollback` if it is not). What an operator's
rows mean is its plan node's :attr:`~streamhouse.sql.changelog.PlanNode.mode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.runtime.options import QueryOptions
from streamhouse.sql.ddl import StreamDef
from streamhouse.state.store import ScopedBatch, StateBatch


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch as an operator sees it."""

    inputs: Mapping[str, pa.Table | None]
    """The new rows of each input by name; None when an input has none."""
    previous_watermark: int
    """The watermark the last micro-batch ended with."""
    watermark: int
    """The watermark this micro-batch ends with (never lower than ``previous_watermark``)."""
    state: StateBatch | ScopedBatch
    """Where the operator writes its state changes; committed with the source offsets."""
    derived: bool = False
    """The rows feed another operator (a derived input), not the query's sink."""
    retracted: Mapping[str, list[bytes]] = field(default_factory=dict)
    """The record keys each derived input retracted (its tombstones), by name."""
    row_keys: bool = True
    """With ``derived``: whether the operator over the rows reads their row keys
    (:attr:`~streamhouse.sql.changelog.PlanNode.reads_row_keys`); if not, an updating
    operator hands on its rows without them and retracts nothing."""


@dataclass
class Changelog:
    """What an operator emits for one micro-batch."""

    rows: pa.Table | None = None
    """Rows appended (append-only) or upserted by key (upsert mode)."""
    retracted: list[bytes] = field(default_factory=list)
    """Record keys whose row is gone: the sink writes a tombstone for each."""
    late: int = 0
    """How many input rows came behind the watermark and were dropped."""
    late_rows: pa.Table | None = None
    """Those rows as read from the source, when a late-row topic wants them."""


class Operator(Protocol):
    """A node of a running continuous query."""

    @property
    def state_size(self) -> int:
        """Open windows, groups or buffered chunks the operator holds (``open_windows``)."""
        ...

    def process(self, batch: MicroBatch) -> Changelog:
        """Take the micro-batch's rows and watermark; write state changes to ``batch.state``."""
        ...

    def commit(self) -> None:
        """The micro-batch's write batch is durable: its state becomes the operator's."""
        ...

    def rollback(self) -> None:
        """The micro-batch's write batch was not committed: forget what it staged."""
        ...


class QueryContext(Protocol):
    """What building an operator needs to know of the query that runs it."""

    @property
    def options(self) -> QueryOptions: ...

    @property
    def statement(self) -> exp.Expr: ...

    def schema(
        self, name: str, windowed: bool = False, all_metadata: bool = False
    ) -> pa.Schema | None:
        """The rows of source ``name`` as an operator sees them: with the window columns if
        ``windowed``, with every metadata column if ``all_metadata`` (else those the query
        names); None for a derived input or a topic whose schema is not inferred yet."""
        ...

    def time_column(self, name: str) -> str | None:
        """The time attribute (WATERMARK column) of source ``name``, if it has one."""
        ...

    def lookup_table(self, name: str) -> StreamDef | None:
        """The definition of ``name`` if it is a lookup table ('connector'='jdbc')."""
        ...

    def definition(self, name: str) -> StreamDef | None:
        """The declaration of stream or table ``name`` (None: a topic or derived input)."""
        ...

    @property
    def ordered_by_proctime(self) -> bool:
        """Whether the query is an OVER or ORDER BY over a ``PROCTIME()`` column, run on the
        clock (its batches' processing times are its watermark)."""
        ...

    def missing_time_attribute(self, name: str) -> str:
        """Why source ``name`` has no time attribute, and what to write instead."""
        ...

    def error(self, message: str, table_name: str) -> SqlError:
        """An error located at the query's reference to ``table_name``."""
        ...
