"""Index swaps: consecutive index rows of one partition replaced by one row naming a compacted
object that holds the same offsets, in one metadata transaction, fenced by a lease.

The compactor (:mod:`streamhouse.log.compaction`) writes the records of rows ``old`` into a new
object, then asks the store to swap. The swap happens only if, inside the transaction,

- the compactor still holds its lease ``compact/<topic>/<partition>`` at the epoch it acquired
  it with (:data:`~streamhouse.log.metadata.leases.HOLDS`): a compactor paused past its lease
  while another took over cannot swap;
- the rows are still exactly ``old`` (retention or DeleteRecords may have dropped some since
  they were read; nothing else changes committed rows).

Then the old rows go, the new row is inserted (its ``running_max_timestamp`` the largest of the
old rows': running maxima never decrease along a partition, so the rows after keep theirs), and
every old object no row names any more is queued for deletion after the grace period
(:data:`~streamhouse.log.metadata.rules.MARK_UNREFERENCED`), so a fetch or query that read the
old rows still finds their objects. The SQL is written once for every backend; each backend
runs :func:`swap_segments` inside its own write transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum

from streamhouse.log.metadata import SegmentRow, leases
from streamhouse.log.metadata.leases import Lease
from streamhouse.log.metadata.migrations import Dialect, SqlConnection
from streamhouse.log.metadata.rules import MARK_UNREFERENCED, SEGMENT_INSERT_COLUMNS, now_ms

__all__ = ["SegmentSwap", "SwapOutcome", "lease_name", "swap_segments"]


def lease_name(topic: str, partition: int) -> str:
    """The lease one compactor at a time holds to compact ``topic``'s ``partition``.

    >>> lease_name("events", 3)
    'compact/events/3'
    """
    return f"compact/{topic}/{partition}"


class SwapOutcome(Enum):
    """What :func:`swap_segments` did."""

    SWAPPED = "swapped"
    FENCED = "fenced"  # the lease expired or was taken over
    CHANGED = "changed"  # the old rows are no longer all there (retention dropped some)


@dataclass(frozen=True, slots=True)
class SegmentSwap:
    """Index rows ``old`` (consecutive, of one partition) replaced by ``new``, which spans
    exactly their offsets in another object (holding all their records, or fewer where key
    compaction dropped some)."""

    old: tuple[SegmentRow, ...]
    new: SegmentRow

    def __post_init__(self) -> None:
        old, new = self.old, self.new
        if not old:
            raise ValueError("a swap replaces at least one index row")
        if any((r.topic, r.partition) != (new.topic, new.partition) for r in old):
            raise ValueError("a swap replaces rows of one partition")
        if any(b.base_offset != a.last_offset + 1 for a, b in zip(old, old[1:], strict=False)):
            raise ValueError("a swap replaces consecutive index rows")
        if (new.base_offset, new.last_offset) != (old[0].base_offset, old[-1].last_offset):
            raise ValueError(
                f"the new row holds offsets [{new.base_offset}, {new.last_offset}], the old"
                f" rows [{old[0].base_offset}, {old[-1].last_offset}]"
            )
        if new.record_count > sum(r.record_count for r in old):
            raise ValueError("the new row holds more records than the old rows")


_OLD_ROWS = (
    "SELECT object_key, base_offset, last_offset, byte_position, byte_length, crc,"
    " running_max_timestamp FROM segments"
    " WHERE topic = ? AND partition_id = ? AND base_offset >= ? AND base_offset <= ?"
    " ORDER BY base_offset"
)
_DELETE_OLD = (
    "DELETE FROM segments"
    " WHERE topic = ? AND partition_id = ? AND base_offset >= ? AND base_offset <= ?"
)
_INSERT = (
    f"INSERT INTO segments ({SEGMENT_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _identity(row: SegmentRow) -> tuple[str, int, int, int, int, int]:
    return (row.object_key, row.base_offset, row.last_offset, row.position, row.length, row.crc)


def swap_segments(
    conn: SqlConnection, dialect: Dialect, swap: SegmentSwap, lease: Lease
) -> SwapOutcome:
    """Swap inside the caller's write transaction (see the module); the caller commits
    whatever the outcome (nothing is written unless :attr:`SwapOutcome.SWAPPED`)."""
    if not list(conn.execute(leases.sql(leases.HOLDS, dialect), (lease.name, lease.holder,
                                                                  lease.epoch))):  # fmt: skip
        return SwapOutcome.FENCED
    new = swap.new
    where = (new.topic, new.partition, new.base_offset, swap.old[-1].base_offset)
    found = list(conn.execute(dialect.sql(_OLD_ROWS), where))
    if [tuple(r[:6]) for r in found] != [_identity(r) for r in swap.old]:
        return SwapOutcome.CHANGED
    running_max = max(max(int(r[6]) for r in found), new.max_timestamp)
    conn.execute(dialect.sql(_DELETE_OLD), where)
    conn.execute(
        dialect.sql(_INSERT),
        (new.topic, new.partition, new.base_offset, new.last_offset, new.object_key,
         new.position, new.length, new.min_timestamp, new.max_timestamp, running_max,
         new.record_count, new.crc),
    )  # fmt: skip
    now = now_ms()
    marks = [(key, now, key) for key in sorted({r.object_key for r in swap.old})]
    if isinstance(conn, sqlite3.Connection):
        conn.executemany(dialect.sql(MARK_UNREFERENCED), marks)
    else:  # psycopg: executemany is the cursor's (pipelined)
        with conn.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.executemany(dialect.sql(MARK_UNREFERENCED), marks)
    return SwapOutcome.SWAPPED
