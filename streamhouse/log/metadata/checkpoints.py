"""Which checkpoint each continuous query resumes from, recorded under the query's lease.

A query running on one agent of several copies its state to the object store
(:mod:`streamhouse.state.remote`) and then records the checkpoint's id here, in a transaction
fenced by its lease (:func:`~streamhouse.log.metadata.leases.fence`): a holder that lost its
lease records nothing, and the agent that takes the query over resumes from the checkpoint
named here, never from one a fenced holder uploaded later. The SQL is written once for every
backend, as in :mod:`.leases`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamhouse.log.metadata.leases import Lease


@dataclass(frozen=True, slots=True)
class QueryCheckpoint:
    """The checkpoint ``query`` resumes from, recorded at lease ``epoch`` ``age_ms`` ago (by
    the store's clock), holding source ``positions``: topic -> partition -> next offset."""

    query: str
    checkpoint_id: str
    epoch: int = 0  # when recording: the lease's
    positions: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    age_ms: int = 0

    @classmethod
    def of(cls, row: tuple[str, str, int, str, int]) -> QueryCheckpoint:
        query, checkpoint_id, epoch, positions, age_ms = row
        decoded = {
            topic: {int(p): int(o) for p, o in offsets.items()}
            for topic, offsets in json.loads(positions).items()
        }
        return cls(query, checkpoint_id, int(epoch), decoded, int(age_ms))


def record_params(lease: Lease, checkpoint: QueryCheckpoint) -> tuple[str, str, int, str]:
    """The parameters of :data:`RECORD`: ``checkpoint`` at ``lease``'s epoch."""
    positions = {t: {str(p): o for p, o in ps.items()} for t, ps in checkpoint.positions.items()}
    return checkpoint.query, checkpoint.checkpoint_id, lease.epoch, json.dumps(positions)


def describe(checkpoint: QueryCheckpoint) -> str:
    """How messages name ``checkpoint``."""
    return f"checkpoint {checkpoint.checkpoint_id} of query {checkpoint.query!r}"


RECORD = (
    "INSERT INTO query_checkpoints (query_name, checkpoint_id, epoch, positions, written_ms)"
    " VALUES (?, ?, ?, ?, {now})"
    " ON CONFLICT (query_name) DO UPDATE SET checkpoint_id = excluded.checkpoint_id,"
    " epoch = excluded.epoch, positions = excluded.positions, written_ms = excluded.written_ms"
)
"""Name the query's latest checkpoint. Parameters: :func:`record_params`."""

LATEST = "SELECT checkpoint_id FROM query_checkpoints WHERE query_name = ?"
"""The query's latest checkpoint id. Parameters: query name."""

LIST = (
    "SELECT query_name, checkpoint_id, epoch, positions, {now} - written_ms"
    " FROM query_checkpoints ORDER BY query_name"
)
"""Every query's latest checkpoint (:meth:`QueryCheckpoint.of` of each row)."""
