"""Changelog modes: what the rows a plan node emits mean, as Flink's ChangelogMode says it.

Every node of a continuous plan states its mode once (:attr:`PlanNode.mode`); the runtime, the
sink, the planner's checks on operator inputs and the reader of a materialized view all ask the
node, never its type.

>>> ChangelogMode.UPSERT.updating, ChangelogMode.APPEND.updating
(True, False)
"""

from __future__ import annotations

from enum import StrEnum


class ChangelogMode(StrEnum):
    """The changelog a node emits."""

    APPEND = "append-only"
    """+I only: each row is a new fact that is never revised."""
    UPSERT = "upsert"
    """+I/+U by a key (a later row for a key replaces the earlier one), -D as a tombstone."""
    RETRACT = "retract"
    """-U/+U/-D of whole rows. No operator emits it: every updating node's rows have a unique
    key (:data:`ROW_KEY`), so upserts and tombstones by it carry the same changes."""

    @property
    def updating(self) -> bool:
        """Whether a later row may revise an earlier one."""
        return self is not ChangelogMode.APPEND


ROW_KEY = "__key"
"""The column that keys each row an updating operator hands to the operator over it (a derived
input): upserts replace the row of their key, retractions (``MicroBatch.retracted``) name keys
whose row is gone. Every updating node has one, so an edge needs no -U/+U pairs: a row's key is
a unique key of the node's output (the group keys of an aggregate, the (partition, rank) of a
Top-N, the pair of input row keys of a join), and an update is an upsert of that key."""


APPEND_ONLY = frozenset({ChangelogMode.APPEND})
"""What every node but :class:`~streamhouse.sql.nodes.Recompute` takes: rows never revised."""


class PlanNode:
    """What every node of a continuous plan says about its input and its output.

    Subclasses are frozen dataclasses with a ``source`` (or ``sources``) field; they override
    :attr:`mode` and :attr:`key_columns` when they emit updates.
    """

    source: str

    @property
    def sources(self) -> list[str]:
        """The names of the inputs the node reads (streams, topics or derived inputs)."""
        return [self.source]

    @property
    def mode(self) -> ChangelogMode:
        return ChangelogMode.APPEND

    @property
    def accepts(self) -> frozenset[ChangelogMode]:
        """The changelog modes the node can take as input (a derived input's mode must be one)."""
        return APPEND_ONLY

    @property
    def updating(self) -> bool:
        """Whether the node's rows are upserts per key (see :attr:`mode`), not appends."""
        return self.mode.updating

    @property
    def key_columns(self) -> list[str]:
        """The output columns that key each record: the upsert key of an updating node, the
        group keys of a window aggregate; none for other append-only nodes."""
        return []

    @property
    def upsert_key(self) -> str:
        """The key of the node's upserts, as ``EXPLAIN`` shows it."""
        return ", ".join(self.key_columns)

    @property
    def window_column(self) -> str | None:
        """The column the node's window is over (the first input's, for several), if any."""
        return None

    @property
    def time_source(self) -> str | None:
        """The input whose time attribute the node's rows keep as it is (same column, never
        older than that input's watermark), if any: a join over the node evicts by it."""
        return None

    @property
    def reads_row_keys(self) -> bool:
        """Whether the node reads the row keys of its updating inputs (their :data:`ROW_KEY`
        column and retractions). An updating input builds them only for a node that does: a
        node keying the rows by columns of its own (a :class:`~streamhouse.sql.nodes.Recompute`
        of groups) says it does not."""
        return True

    @property
    def keeps_metadata(self) -> bool:
        """Whether the node reads its inputs with every metadata column (``_partition``,
        ``_offset``, ...) rather than only those the query names."""
        return False

    @property
    def changelog(self) -> str:
        """The node's mode and key, as ``EXPLAIN`` shows them."""
        if self.mode is ChangelogMode.UPSERT:
            return f"changelog: upsert by ({self.upsert_key or 'the one group'})"
        return f"changelog: {self.mode}"
