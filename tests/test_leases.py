"""Leases on both metadata backends: one holder at a time, takeover after expiry, a fencing
epoch that only rises, and the fence checked inside a write transaction."""

from __future__ import annotations

import threading
import time

import pytest
from test_metadata import Entry

from streamhouse.errors import FencedError
from streamhouse.log.metadata import leases
from streamhouse.log.metadata.checkpoints import QueryCheckpoint
from streamhouse.log.metadata.migrations import POSTGRESQL, SQLITE
from streamhouse.log.metadata.postgres import PostgresMetadata
from streamhouse.log.metadata.sqlite import SQLiteMetadata

Store = SQLiteMetadata | PostgresMetadata


def test_one_holder_at_a_time_and_renewal_keeps_the_epoch(md: Store) -> None:
    first = md.acquire_lease("group/g1", "agent-a", 10_000)
    assert first is not None and (first.holder, first.epoch) == ("agent-a", 1)
    assert 9_000 < first.remaining_ms <= 10_000
    assert md.acquire_lease("group/g1", "agent-b", 10_000) is None
    again = md.acquire_lease("group/g1", "agent-a", 20_000)
    assert again is not None and again.epoch == 1 and again.remaining_ms > 19_000
    assert md.renew_lease(first, 10_000)
    other = md.acquire_lease("group/g2", "agent-b", 10_000)
    assert other is not None and other.epoch == 1
    assert [(lease.name, lease.holder, lease.epoch) for lease in md.list_leases("group/")] == [
        ("group/g1", "agent-a", 1),
        ("group/g2", "agent-b", 1),
    ]
    assert md.list_leases("query/") == []


def test_expired_lease_is_taken_over_at_a_higher_epoch_and_the_old_holder_is_fenced(
    md: Store,
) -> None:
    old = md.acquire_lease("query/q", "agent-a", 150)
    assert old is not None
    time.sleep(0.3)
    assert not md.list_leases("query/q")[0].live
    new = md.acquire_lease("query/q", "agent-b", 10_000)
    assert new is not None and (new.holder, new.epoch) == ("agent-b", 2)
    assert not md.renew_lease(old, 10_000)
    md.release_lease(old)  # a stale release changes nothing
    assert md.acquire_lease("query/q", "agent-a", 10_000) is None
    # An expired lease nobody took cannot be renewed either: re-acquiring raises the epoch.
    short = md.acquire_lease("query/r", "agent-a", 150)
    assert short is not None
    time.sleep(0.3)
    assert not md.renew_lease(short, 10_000)
    back = md.acquire_lease("query/r", "agent-a", 10_000)
    assert back is not None and back.epoch == short.epoch + 1


def test_release_frees_at_once_and_the_epoch_never_goes_back(md: Store) -> None:
    epochs = []
    for holder in ["a", "b", "a", "c"]:
        lease = md.acquire_lease("compact/t/0", holder, 10_000)
        assert lease is not None
        epochs.append(lease.epoch)
        md.release_lease(lease)
    assert epochs == [1, 2, 3, 4]


def test_concurrent_acquirers_get_one_holder(md: Store) -> None:
    won: list[str] = []

    def contend(holder: str) -> None:
        if md.acquire_lease("group/race", holder, 10_000) is not None:
            won.append(holder)

    threads = [threading.Thread(target=contend, args=(f"agent-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert md.list_leases("group/race")[0].holder == won[0]


def test_fence_inside_a_write_transaction(md: Store) -> None:
    lease = md.acquire_lease("query/fenced", "agent-a", 150)
    assert lease is not None
    dialect = SQLITE if isinstance(md, SQLiteMetadata) else POSTGRESQL
    check = leases.sql(leases.HOLDS, dialect)
    params = (lease.name, lease.holder, lease.epoch)

    def holds() -> bool:
        with md._transaction("fenced write") as conn:
            return conn.execute(check, params).fetchone() is not None

    assert holds()
    time.sleep(0.3)
    assert not holds()


def test_a_fenced_segment_commit_is_refused_once_the_lease_is_lost(md: Store) -> None:
    md.create_topic("out", 1)
    old = md.acquire_lease("query/q", "agent-a", 200)
    assert old is not None
    assert md.commit_segment("o1", [Entry("out", 0, 0, 4)], fence=old) == [0]
    time.sleep(0.3)  # expired: even before anyone takes it over, the old epoch writes nothing
    with pytest.raises(FencedError, match="'query/q' at epoch 1 is no longer held by agent-a"):
        md.commit_segment("o2", [Entry("out", 0, 5, 9)], fence=old)
    new = md.acquire_lease("query/q", "agent-b", 10_000)
    assert new is not None and new.epoch == 2
    with pytest.raises(FencedError):
        md.commit_segment("o3", [Entry("out", 0, 5, 9)], fence=old)
    assert md.partition_offset("out", 0).high_watermark == 5  # nothing of the refused ones
    assert not md.is_indexed("o2") and not md.is_indexed("o3")
    assert md.commit_segment("o4", [Entry("out", 0, 5, 9)], fence=new) == [5]
    assert md.commit_segment("o5", [Entry("out", 0, 0, 0)]) == [10]  # unfenced as before


def test_query_checkpoints_are_recorded_under_the_lease(md: Store) -> None:
    assert md.query_checkpoint("q") is None
    old = md.acquire_lease("query/q", "agent-a", 200)
    assert old is not None
    md.record_query_checkpoint(old, QueryCheckpoint("q", "00001-0001"))
    md.record_query_checkpoint(old, QueryCheckpoint("q", "00001-0002"))
    assert md.query_checkpoint("q") == "00001-0002"
    time.sleep(0.3)
    new = md.acquire_lease("query/q", "agent-b", 10_000)
    assert new is not None
    with pytest.raises(FencedError, match="checkpoint 00001-0003 of query 'q' refused"):
        md.record_query_checkpoint(old, QueryCheckpoint("q", "00001-0003"))
    assert md.query_checkpoint("q") == "00001-0002"
    md.record_query_checkpoint(
        new, QueryCheckpoint("q", "00002-0001", 0, {"events": {0: 12, 1: 7}})
    )
    assert md.query_checkpoint("q") == "00002-0001" and md.query_checkpoint("other") is None
    (recorded,) = md.list_query_checkpoints()
    assert (recorded.query, recorded.checkpoint_id, recorded.epoch) == ("q", "00002-0001", 2)
    assert recorded.positions == {"events": {0: 12, 1: 7}} and 0 <= recorded.age_ms < 5_000


def test_a_holder_paused_inside_a_fenced_transaction_does_not_keep_the_lease(
    postgres_url: str,
) -> None:
    """PostgreSQL: the fence share-locks the lease row, so a takeover waits for the fenced
    transaction; a holder paused inside it is cut off after the lease's TTL, and the lease is
    taken over then (its COMMIT fails: nothing of it is written)."""
    import psycopg

    from streamhouse.log.metadata.postgres import _fence

    md = PostgresMetadata(postgres_url)
    try:
        old = md.acquire_lease("query/q", "agent-a", 1_000)
        assert old is not None
        paused = psycopg.connect(postgres_url)
        assert _fence(paused, old).fetchone() is not None  # inside the transaction, then paused
        started = time.monotonic()
        new = None
        while new is None and time.monotonic() - started < 10:
            new = md.acquire_lease("query/q", "agent-b", 10_000)  # waits on the lock
        took = time.monotonic() - started
        assert new is not None and new.epoch == old.epoch + 1
        assert took < 4  # the lease's 1 s, the server's timeout check, the acquire
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            paused.execute("COMMIT")
        paused.close()
    finally:
        md.close()


def test_bad_ttl_is_refused(md: Store) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        md.acquire_lease("x", "a", 0)
