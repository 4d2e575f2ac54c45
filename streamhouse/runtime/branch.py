"""One INSERT of a continuous query: its plan, its operators' state and its sink.

A plain query has one branch. A statement set (``EXECUTE STATEMENT SET BEGIN INSERT ...;
INSERT ...; END``) has one per INSERT: the query reads each source once per micro-batch, hands
the rows to every branch, writes every branch's sink and commits all of it in one checkpoint.
A branch's state lives under its own key prefix in the query's store (none for a plain query,
so its layout is what it always was) and its sink progress under ``sink/<prefix>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
from sqlglot import exp

from streamhouse.errors import SqlError
from streamhouse.runtime.operator import Operator
from streamhouse.runtime.operators import open_operator
from streamhouse.runtime.options import QueryOptions
from streamhouse.runtime.sink import TopicSink
from streamhouse.sql.changelog import PlanNode
from streamhouse.sql.ddl import StreamDef
from streamhouse.sql.parse import node_position
from streamhouse.sql.plan import ContinuousPlan, plan_query
from streamhouse.sql.source import METADATA_FIELDS
from streamhouse.state.store import StateStore, StateView
from streamhouse.windows.table import WINDOW_TYPE

if TYPE_CHECKING:
    from streamhouse.runtime.query import ContinuousQuery
    from streamhouse.runtime.stages import StageSink

__all__ = ["Branch"]

WINDOW_FIELDS = [
    pa.field("window_start", WINDOW_TYPE),
    pa.field("window_end", WINDOW_TYPE),
    pa.field("window_time", WINDOW_TYPE),
]


class Branch:
    """One statement of a continuous query; the context its operators are built in."""

    def __init__(self, query: ContinuousQuery, statement: exp.Expr, prefix: bytes) -> None:
        self.query = query
        self.statement = statement
        self.prefix = prefix
        self.plan: ContinuousPlan = query._planned(plan_query(statement))
        self.named = {c.name for c in statement.find_all(exp.Column)}
        nodes = [self.plan.operator, *self.plan.derived.values()]
        # the derived inputs read by an operator that reads their row keys
        self.row_keyed = {
            name
            for name in self.plan.derived
            if any(name in node.sources and node.reads_row_keys for node in nodes)
        }
        self.operator: Operator | None = None
        self.children: dict[str, tuple[PlanNode, Operator]] = {}
        self.sink: TopicSink | StageSink | None = None

    @property
    def options(self) -> QueryOptions:
        return self.query.options

    def open(self, store: StateStore) -> None:
        """Open the branch's operators on their state in ``store``."""
        self.operator = open_operator(
            self.plan.operator, StateView(store, self.prefix + b"0/"), self
        )
        self.children = {
            name: (node, open_operator(node, StateView(store, self.state_prefix(i + 1)), self))
            for i, (name, node) in enumerate(self.plan.derived.items())
        }
        refused = self.plan.union_without_time(self.stream_time)
        if refused is not None:  # a window's rows from that input would be dropped as late
            stream, reason = refused
            raise self.error(
                f"a window over a UNION ALL needs its time attribute: {reason}", stream
            )

    def state_prefix(self, index: int) -> bytes:
        """The key prefix of operator ``index`` (0: the branch's own, then its derived inputs)."""
        return self.prefix + f"{index}/".encode()

    def schema(
        self, name: str, windowed: bool = False, all_metadata: bool = False
    ) -> pa.Schema | None:
        """The rows of source ``name`` as an operator sees them: with the window columns if
        ``windowed``, with every metadata column if ``all_metadata`` (else those the statement
        names); None for a derived input or a topic whose schema is not inferred yet."""
        source = self.query.sources.get(name)
        if source is None or source.schema is None:
            return None
        meta = [f for f in METADATA_FIELDS if all_metadata or f.name in self.named]
        computed = source.computed.fields() if source.computed else []
        return pa.schema([*source.schema, *computed, *meta] + (WINDOW_FIELDS if windowed else []))

    def lookup_table(self, name: str) -> StreamDef | None:
        """The definition of ``name`` if it is a lookup table ('connector'='jdbc')."""
        return self.query.lookup_tables.get(name)

    def definition(self, name: str) -> StreamDef | None:
        """The declaration of stream or table ``name`` (None: a topic or derived input)."""
        return self.query.definitions.get(name)

    def time_column(self, name: str) -> str | None:
        """The time attribute (WATERMARK column) of source ``name``, if it has one (a derived
        input's: that of the input it keeps the time attribute of)."""
        return self.plan.time_attribute(name, self.stream_time)

    @property
    def ordered_by_proctime(self) -> bool:
        return self.query.proctime_order

    def missing_time_attribute(self, name: str) -> str:
        """Why source ``name`` has no time attribute, and what to write instead."""
        return self.plan.missing_time_attribute(name, self.stream_time)

    def stream_time(self, name: str) -> str | None:
        """The time attribute of stream or topic ``name`` the query reads, if it has one."""
        source = self.query.sources.get(name)
        return source.time_column if source is not None else None

    def error(self, message: str, table_name: str) -> SqlError:
        """An error located at the statement's reference to ``table_name``."""
        for table in self.statement.find_all(exp.Table):
            if table.name == table_name:
                return SqlError(message, *node_position(table))
        return SqlError(message)

    @property
    def operators(self) -> list[Operator]:
        assert self.operator is not None
        return [self.operator, *(o for _, o in self.children.values())]
