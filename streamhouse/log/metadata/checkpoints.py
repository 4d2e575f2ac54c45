"""Which checkpoint each continuous query resumes from, recorded under the query's lease.

A query running on one agent of several copies its state to the object store
(:mod:`streamhouse.state.remote`) and then records the checkpoint's id here, in a transaction
fenced by its lease (:func:`~streamhouse.log.metadata.leases.fence`): a holder that lost its
lease records nothing, and the agent that takes the query over resumes from the checkpoint
named here, never from one a fenced holder uploaded later. The SQL is written once for every
backend, as in :mod:`.leases`.
"""

from __future__ import annotations

RECORD = (
    "INSERT INTO query_checkpoints (query_name, checkpoint_id, epoch, written_ms)"
    " VALUES (?, ?, ?, {now})"
    " ON CONFLICT (query_name) DO UPDATE SET checkpoint_id = excluded.checkpoint_id,"
    " epoch = excluded.epoch, written_ms = excluded.written_ms"
)
"""Name the query's latest checkpoint. Parameters: query name, checkpoint id, lease epoch."""

LATEST = "SELECT checkpoint_id FROM query_checkpoints WHERE query_name = ?"
"""The query's latest checkpoint id. Parameters: query name."""
