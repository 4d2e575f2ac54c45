"""Kafka transactions in the metadata store: each transactional producer's state, the
partitions its open transaction holds, its pending consumer offsets, and the aborted
transactions read_committed fetches list.

Every change is one store transaction that first reads (and locks) the producer's row and
checks it is still what the caller expects: producer id, epoch and state. Two agents, or a
coordinator and its timeout sweep, therefore never both move one transaction on; the loser
gets a :class:`Verdict` saying why. The SQL is written once for every backend.

Only a new producer (:meth:`register`) waits for the disk on its own. Adding partitions and
offsets, the decision of EndTxn and the completion are *lazy* commits (no fsync of their own;
a crash of the process keeps them): the store's log is written in order, so the next durable
commit covers them, and the coordinator answers nothing before one: the segment commit
acknowledging the transaction's first records, the markers' segment commit (or a durable
completion when no marker was written). A power loss can take a lazy commit only with
everything after it: a lost addition with the records it admitted, unacknowledged; a lost
decision with its markers, before EndTxn was answered.

A commit of records answered early (:meth:`TransactionStore.commit_in`) is decided and completed
at once, inside the segment commit that indexes its markers, never stored as
``PREPARE_COMMIT``: it is durable with its markers, and refused unless every record is indexed.

A transaction's life (Kafka's states)::

    EMPTY --add--> ONGOING --end--> PREPARE_COMMIT | PREPARE_ABORT --markers written-->
    COMPLETE_COMMIT | COMPLETE_ABORT --add--> ONGOING ...

In a ``PREPARE_*`` state the outcome is decided (it survives a crash) but the markers may not
all be written: whoever finds it there writes them (again: a repeated marker changes
nothing a reader sees) and completes it. Completing removes the transaction's partitions,
which moves each partition's last stable offset up; an abort also records an
``aborted_transactions`` row per partition; a commit moves its pending offsets into
``group_offsets``.

>>> Verdict.FENCED.value, State.ONGOING.value
('fenced', 'Ongoing')
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_EPOCH",
    "OpenPartition",
    "PartitionAddition",
    "State",
    "TopicStability",
    "TransactionState",
    "TransactionStore",
    "Verdict",
]

MAX_EPOCH = 32766
"""The highest epoch a producer id is given; past it the transactional id gets a new one."""


class State(enum.Enum):
    """Where a transactional producer's current transaction is (stored by value)."""

    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def preparing(self) -> bool:
        return self in (State.PREPARE_COMMIT, State.PREPARE_ABORT)

    @property
    def committing(self) -> bool:
        return self in (State.PREPARE_COMMIT, State.COMPLETE_COMMIT)


class Verdict(enum.Enum):
    """Why a change was refused (or ``OK``)."""

    OK = "ok"
    UNKNOWN = "unknown"  # no such transactional id, or another producer id holds it
    FENCED = "fenced"  # the producer's epoch is not the current one
    BUSY = "busy"  # markers of the last transaction are still being written
    INVALID_STATE = "invalid state"  # the request does not fit the state
    UNDURABLE = "undurable"  # records answered before they were durable may be missing


@dataclass(frozen=True, slots=True)
class OpenPartition:
    """A partition in an open transaction, from ``first_offset`` (its high watermark when it
    joined) on."""

    topic: str
    partition: int
    first_offset: int


@dataclass(frozen=True, slots=True)
class TopicStability:
    """What transactions hide of a topic's partitions from a read_committed reader, read in one
    snapshot: ``high_watermarks[p]``; ``open_from[p]``, the first offset of p's oldest open transaction (its last stable offset;
    absent: none is open), and ``aborted[p]``, its aborted transactions as (producer id,
    first offset, offset of the ABORT marker), by first offset."""

    high_watermarks: dict[int, int]
    open_from: dict[int, int]
    aborted: dict[int, list[tuple[int, int, int]]]


@dataclass(frozen=True, slots=True)
class TransactionState:
    """A transactional producer as stored; ``age_ms`` is how long its ongoing transaction has
    been open by the store's clock (-1 when none is)."""

    transactional_id: str
    producer_id: int
    producer_epoch: int
    state: State
    timeout_ms: int
    age_ms: int
    partitions: tuple[OpenPartition, ...] = ()

    @property
    def expired(self) -> bool:
        """An ongoing transaction open longer than its timeout."""
        return self.state is State.ONGOING and self.age_ms > self.timeout_ms


_COLUMNS = "transactional_id, producer_id, producer_epoch, state, timeout_ms, {age}"
_AGE = "CASE WHEN started_ms < 0 THEN -1 ELSE {now} - started_ms END"
_SELECT = "SELECT " + _COLUMNS + " FROM transactions"
_UPSERT = (
    "INSERT INTO transactions (transactional_id, producer_id, producer_epoch, state,"
    " timeout_ms, started_ms, updated_ms) VALUES (?, ?, ?, ?, ?, -1, {now})"
    " ON CONFLICT (transactional_id) DO UPDATE SET producer_id = excluded.producer_id,"
    " producer_epoch = excluded.producer_epoch, state = excluded.state,"
    " timeout_ms = excluded.timeout_ms, started_ms = -1, updated_ms = excluded.updated_ms"
)
_SET_STATE = (
    "UPDATE transactions SET state = ?, producer_epoch = ?, started_ms = {started},"
    " updated_ms = {now} WHERE transactional_id = ?"
)
_PARTITIONS = (
    "SELECT topic, partition_id, first_offset FROM transaction_partitions"
    " WHERE transactional_id = ? ORDER BY topic, partition_id"
)
_JOIN = (
    "INSERT INTO transaction_partitions (transactional_id, topic, partition_id, producer_id,"
    " first_offset) SELECT ?, topic, partition_id, ?, high_watermark FROM partitions"
    " WHERE topic = ? AND partition_id IN ({partitions})"
    " ON CONFLICT (transactional_id, topic, partition_id) DO NOTHING"
)
"""A producer joins some of a topic's partitions (``{partitions}``: as many ``?``)."""
_PENDING_OFFSET = (
    "INSERT INTO transaction_offsets (transactional_id, group_id, topic, partition_id,"
    " committed_offset, metadata) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (transactional_id, group_id, topic, partition_id) DO UPDATE SET"
    " committed_offset = excluded.committed_offset, metadata = excluded.metadata"
)
_PUBLISH_OFFSETS = (
    "INSERT INTO group_offsets (group_id, topic, partition_id, committed_offset, metadata,"
    " commit_ms) SELECT group_id, topic, partition_id, committed_offset, metadata, {now}"
    " FROM transaction_offsets WHERE transactional_id = ?"
    " ON CONFLICT (group_id, topic, partition_id) DO UPDATE SET"
    " committed_offset = excluded.committed_offset, metadata = excluded.metadata,"
    " commit_ms = excluded.commit_ms"
)
_ABORTED = (
    "INSERT INTO aborted_transactions (topic, partition_id, last_offset, producer_id,"
    " first_offset) VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, partition_id, last_offset)"
    " DO NOTHING"
)
LAST_STABLE = (
    "SELECT min(first_offset) FROM transaction_partitions WHERE topic = ? AND partition_id = ?"
)
"""The first offset of the oldest open transaction on a partition (NULL when none is)."""
OPEN_FROM = (
    "SELECT partition_id, min(first_offset) FROM transaction_partitions"
    " WHERE topic = ? GROUP BY partition_id"
)
""":data:`LAST_STABLE` of every partition of a topic with an open transaction."""
ABORTED_BETWEEN = (
    "SELECT producer_id, first_offset FROM aborted_transactions"
    " WHERE topic = ? AND partition_id = ? AND last_offset >= ? AND first_offset < ?"
    " ORDER BY first_offset"
)
"""Aborted transactions overlapping offsets [from, to) of a partition."""
STABILITY = (
    "SELECT -1, min(first_offset) FROM transaction_partitions"
    " WHERE topic = ? AND partition_id = ?"
    " UNION ALL SELECT producer_id, first_offset FROM aborted_transactions"
    " WHERE topic = ? AND partition_id = ? AND last_offset >= ? AND first_offset < ?"
)
""":data:`LAST_STABLE` (the row with producer id -1) and :data:`ABORTED_BETWEEN` in one
statement: what a read_committed fetch asks of each partition."""
TOPIC_STABILITY = (
    "SELECT partition_id, -2, high_watermark, 0 FROM partitions WHERE topic = ?"
    " UNION ALL SELECT partition_id, -1, min(first_offset), 0 FROM transaction_partitions"
    " WHERE topic = ? GROUP BY partition_id"
    " UNION ALL SELECT partition_id, producer_id, first_offset, last_offset"
    " FROM aborted_transactions WHERE topic = ? AND last_offset >= ?"
)
"""Every partition of a topic at once, in one snapshot: its high watermark (rows with
producer id -2), the first offset of its oldest open transaction (-1), and its aborted transactions ending at or after an offset (producer id,
first offset, marker offset): what our own read_committed reads (SQL, ``consume``) ask."""
FORGET_ABORTED = (
    "DELETE FROM aborted_transactions WHERE last_offset < (SELECT p.log_start_offset"
    " FROM partitions AS p WHERE p.topic = aborted_transactions.topic"
    " AND p.partition_id = aborted_transactions.partition_id)"
)
"""Aborted transactions wholly below their partition's log start offset."""
FORGET_TOPIC: tuple[str, ...] = tuple(
    f"DELETE FROM {table} WHERE topic = ?"
    for table in ("transaction_partitions", "transaction_offsets", "aborted_transactions")
)
"""What deleting a topic removes of transactions."""

Connection = Any
"""A DB-API connection of the store's driver."""

PartitionAddition = tuple[str, int, int, list[tuple[str, int]]]
"""An AddPartitionsToTxn: transactional id, producer id, epoch and the partitions."""


class TransactionStore:
    """The transactional state of one metadata store (see module)."""

    def __init__(
        self,
        transaction: Callable[[str], AbstractContextManager[Connection]],
        lazy: Callable[[str], AbstractContextManager[Connection]],
        reader: Callable[[str], AbstractContextManager[Connection]],
        sql: Callable[[str], str],
        now_ms: str,
        for_update: str,
    ) -> None:
        self._transaction = transaction
        self._lazy = lazy
        self._reader = reader
        self._sql = sql
        self._now = now_ms
        self._for_update = for_update
        self._texts: dict[tuple[Any, ...], str] = {}

    def _text(self, template: str, **extra: str) -> str:
        key = (template, *extra.items())
        text = self._texts.get(key)
        if text is None:  # formatted once: every transaction runs the same few statements
            age = _AGE.format(now=self._now)
            text = self._texts[key] = self._sql(template.format(now=self._now, age=age, **extra))
        return text

    def _read(
        self, conn: Connection, transactional_id: str, *, lock: bool
    ) -> TransactionState | None:
        sql = self._text(_SELECT + " WHERE transactional_id = ?") + (
            self._for_update if lock else ""
        )
        row = conn.execute(sql, (transactional_id,)).fetchone()
        if row is None:
            return None
        parts = conn.execute(self._sql(_PARTITIONS), (transactional_id,)).fetchall()
        txn, pid, epoch, state, timeout, age = row
        opened = tuple(OpenPartition(t, int(p), int(o)) for t, p, o in parts)
        return TransactionState(
            txn, int(pid), int(epoch), State(state), int(timeout), int(age), opened
        )

    def get(self, transactional_id: str) -> TransactionState | None:
        """The producer's state and open partitions, or ``None``."""
        with self._reader(f"read transaction {transactional_id!r}") as conn:
            return self._read(conn, transactional_id, lock=False)

    def list(self) -> list[TransactionState]:
        """Every transactional producer (without partitions), by id."""
        with self._reader("list transactions") as conn:
            rows = conn.execute(self._text(_SELECT + " ORDER BY transactional_id")).fetchall()
        return [
            TransactionState(t, int(p), int(e), State(s), int(to), int(a))
            for t, p, e, s, to, a in rows
        ]

    def _set_state(
        self, conn: Connection, txn: TransactionState, state: State, epoch: int, *, start: bool
    ) -> None:
        started = self._now if start else ("started_ms" if state is State.ONGOING else "-1")
        conn.execute(
            self._text(_SET_STATE, started=started), (state.value, epoch, txn.transactional_id)
        )

    def register(
        self,
        transactional_id: str,
        timeout_ms: int,
        expect: TransactionState | None,
        producer_id: int,
        epoch: int,
    ) -> Verdict:
        """Give ``transactional_id`` producer id and epoch in state ``EMPTY`` (InitProducerId),
        if it is still as ``expect`` (``None``: unknown) and holds no transaction."""
        with self._transaction(f"register transactional id {transactional_id!r}") as conn:
            now = self._read(conn, transactional_id, lock=True)
            if _key(now) != _key(expect):
                return Verdict.BUSY
            if now is not None and (now.state is State.ONGOING or now.state.preparing):
                return Verdict.BUSY
            conn.execute(
                self._text(_UPSERT),
                (transactional_id, producer_id, epoch, State.EMPTY.value, timeout_ms),
            )
        return Verdict.OK

    def _current(
        self, conn: Connection, transactional_id: str, producer_id: int, epoch: int
    ) -> tuple[Verdict, TransactionState | None]:
        txn = self._read(conn, transactional_id, lock=True)
        if txn is None or txn.producer_id != producer_id:
            return Verdict.UNKNOWN, txn
        if txn.producer_epoch != epoch:
            return Verdict.FENCED, txn
        if txn.state.preparing:
            return Verdict.BUSY, txn
        return Verdict.OK, txn

    def add_partitions(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[tuple[str, int]],
    ) -> tuple[Verdict, list[tuple[str, int]]]:
        """Put ``partitions`` in the producer's transaction (starting it); the verdict and
        the partitions that do not exist (then nothing is added)."""
        with self._lazy(f"add partitions to {transactional_id!r}") as conn:
            return self._add_partitions(
                conn, (transactional_id, producer_id, epoch, list(partitions))
            )

    def add_partitions_of(
        self, additions: Iterable[PartitionAddition]
    ) -> list[tuple[Verdict, list[tuple[str, int]]]]:
        """:meth:`add_partitions` of several producers in one store transaction (a group
        commit: one write lock, one commit for all); their results in order. The
        transactional ids must differ (each addition reads and changes its producer's row).
        The rows are locked in the order of their ids, so two agents' groups (PostgreSQL)
        cannot deadlock on them."""
        additions = list(additions)
        order = sorted(range(len(additions)), key=lambda i: additions[i][0])
        results: list[tuple[Verdict, list[tuple[str, int]]]] = [(Verdict.OK, [])] * len(order)
        with self._lazy(f"add partitions to {len(additions)} transactions") as conn:
            for i in order:
                results[i] = self._add_partitions(conn, additions[i])
        return results

    def _add_partitions(
        self, conn: Connection, addition: PartitionAddition
    ) -> tuple[Verdict, list[tuple[str, int]]]:
        transactional_id, producer_id, epoch, partitions = addition
        verdict, txn = self._current(conn, transactional_id, producer_id, epoch)
        if verdict is not Verdict.OK:
            return verdict, []
        assert txn is not None
        wanted = sorted(set(partitions))
        known: set[tuple[str, int]] = set()
        for topic, chunk in _by_topic(wanted):  # a statement per topic, not per partition
            sql = self._sql(
                "SELECT partition_id FROM partitions"
                f" WHERE topic = ? AND partition_id IN ({', '.join('?' * len(chunk))})"
            )
            known.update((topic, int(row[0])) for row in conn.execute(sql, (topic, *chunk)))
        missing = [p for p in wanted if p not in known]
        if missing:
            return Verdict.OK, missing
        for topic, chunk in _by_topic(wanted):
            sql = self._text(_JOIN, partitions=", ".join("?" * len(chunk)))
            conn.execute(sql, (transactional_id, producer_id, topic, *chunk))
        self._begin(conn, txn)
        return Verdict.OK, []

    def _begin(self, conn: Connection, txn: TransactionState) -> None:
        if txn.state is not State.ONGOING:
            self._set_state(conn, txn, State.ONGOING, txn.producer_epoch, start=True)

    def add_offsets(self, transactional_id: str, producer_id: int, epoch: int) -> Verdict:
        """Start the producer's transaction if it is not (AddOffsetsToTxn: its consumer
        offsets will be committed with it)."""
        with self._lazy(f"add offsets to {transactional_id!r}") as conn:
            verdict, txn = self._current(conn, transactional_id, producer_id, epoch)
            if verdict is Verdict.OK:
                assert txn is not None
                self._begin(conn, txn)
        return verdict

    def commit_offsets(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        group: str,
        offsets: Mapping[tuple[str, int], tuple[int, str]],
    ) -> Verdict:
        """Hold ``(topic, partition) -> (offset, metadata)`` of ``group`` until the producer's
        ongoing transaction ends (TxnOffsetCommit)."""
        with self._lazy(f"commit offsets in {transactional_id!r}") as conn:
            verdict, txn = self._current(conn, transactional_id, producer_id, epoch)
            if verdict is not Verdict.OK:
                return verdict
            assert txn is not None
            if txn.state is not State.ONGOING:
                return Verdict.INVALID_STATE
            for (topic, partition), (offset, metadata) in offsets.items():
                conn.execute(
                    self._sql(_PENDING_OFFSET),
                    (transactional_id, group, topic, partition, offset, metadata or ""),
                )
        return Verdict.OK

    def prepare(
        self,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        commit: bool,
        *,
        new_epoch: int | None = None,
        durable: bool = True,
    ) -> tuple[Verdict, TransactionState | None]:
        """Decide the producer's ongoing transaction: ``PREPARE_COMMIT`` or
        ``PREPARE_ABORT`` (at ``new_epoch`` if given: a timeout or a new producer fences the
        old one). The state with the partitions whose markers are to be written.
        ``durable=False`` commits lazily: for a caller that tells nobody before a durable
        commit after it (the markers' segment commit, or :meth:`complete` with ``durable``).

        A transaction already prepared the same way is handed back as it is (finish it); one
        completed the same way is ``OK`` with no partitions (a retried EndTxn)."""
        begin = self._transaction if durable else self._lazy
        with begin(f"end transaction {transactional_id!r}") as conn:
            txn = self._read(conn, transactional_id, lock=True)
            if txn is None or txn.producer_id != producer_id:
                return Verdict.UNKNOWN, txn
            if txn.producer_epoch != epoch:
                return Verdict.FENCED, txn
            target = State.PREPARE_COMMIT if commit else State.PREPARE_ABORT
            done = State.COMPLETE_COMMIT if commit else State.COMPLETE_ABORT
            if txn.state in (target, done):
                return Verdict.OK, txn if txn.state is target else None
            if txn.state is not State.ONGOING:
                return Verdict.INVALID_STATE, txn
            bumped = epoch if new_epoch is None else new_epoch
            self._set_state(conn, txn, target, bumped, start=False)
        return Verdict.OK, TransactionState(
            txn.transactional_id, producer_id, bumped, target, txn.timeout_ms, -1, txn.partitions
        )

    def complete(
        self,
        txn: TransactionState,
        markers: Mapping[tuple[str, int], int],
        *,
        durable: bool = False,
    ) -> bool:
        """Finish ``txn`` (as :meth:`prepare` returned it) once its markers are durable at
        ``markers`` (partition -> marker offset): partitions leave it, an abort is recorded
        for read_committed fetches, a commit publishes its offsets. ``False`` if someone
        else finished it first. A lazy commit unless ``durable``."""
        begin = self._transaction if durable else self._lazy
        with begin(f"complete transaction {txn.transactional_id!r}") as conn:
            now = self._read(conn, txn.transactional_id, lock=True)
            if _key(now) != _key(txn) or now is None or now.state is not txn.state:
                return False
            self._complete_in(conn, now, txn.state.committing, markers)
        return True

    def _complete_in(
        self,
        conn: Connection,
        txn: TransactionState,
        commit: bool,
        markers: Mapping[tuple[str, int], int],
    ) -> None:
        """:meth:`complete` in the open transaction of ``conn``; ``txn`` as read there."""
        tid = txn.transactional_id
        if commit:
            conn.execute(self._text(_PUBLISH_OFFSETS), (tid,))
        else:
            for part in txn.partitions:
                last = markers[(part.topic, part.partition)]
                conn.execute(
                    self._sql(_ABORTED),
                    (part.topic, part.partition, last, txn.producer_id, part.first_offset),
                )
        for table in ("transaction_partitions", "transaction_offsets"):
            conn.execute(self._sql(f"DELETE FROM {table} WHERE transactional_id = ?"), (tid,))
        done = State.COMPLETE_COMMIT if commit else State.COMPLETE_ABORT
        self._set_state(conn, txn, done, txn.producer_epoch, start=False)

    def commit_in(
        self,
        conn: Connection,
        transactional_id: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[tuple[str, int]],
        sequences: Mapping[tuple[str, int], int],
    ) -> Verdict:
        """Decide and complete the producer's ongoing transaction as committed at once, in the
        open transaction of ``conn``: the one that commits its markers (to ``partitions``,
        which must be all of the transaction's) and, before them in the same segments or
        earlier, its records. ``sequences`` gives the last sequence number of the producer's
        records on each partition it wrote to: unless the store indexed every one
        (``UNDURABLE`` otherwise), a record would be missing from the transaction. Nothing is
        written unless ``OK``."""
        verdict, txn = self._current(conn, transactional_id, producer_id, epoch)
        if verdict is not Verdict.OK:
            return verdict
        assert txn is not None
        joined = {(p.topic, p.partition) for p in txn.partitions}
        if txn.state is not State.ONGOING or joined != set(partitions):
            return Verdict.INVALID_STATE
        stored: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, chunk in _by_topic(sorted(sequences)):  # a statement per topic
            sql = self._sql(
                "SELECT partition_id, producer_epoch, last_sequence FROM producer_sequences"
                " WHERE topic = ? AND producer_id = ?"
                f" AND partition_id IN ({', '.join('?' * len(chunk))})"
            )
            for partition, stored_epoch, stored_last in conn.execute(
                sql, (topic, producer_id, *chunk)
            ):
                stored[(topic, int(partition))] = (int(stored_epoch), int(stored_last))
        if any(stored.get(key) != (epoch, last) for key, last in sequences.items()):
            return Verdict.UNDURABLE
        self._complete_in(conn, txn, True, {})
        return Verdict.OK

    def due(self) -> list[TransactionState]:
        """Transactions to finish by the coordinator itself: ongoing past their timeout, or
        prepared (a coordinator died writing their markers)."""
        sql = self._text(
            _SELECT + " WHERE state IN (?, ?) OR (state = ? AND started_ms >= 0"
            " AND {now} - started_ms > timeout_ms) ORDER BY transactional_id"
        )
        params = (State.PREPARE_COMMIT.value, State.PREPARE_ABORT.value, State.ONGOING.value)
        with self._reader("list due transactions") as conn:
            ids = [row[0] for row in conn.execute(sql, params).fetchall()]
            found = [self._read(conn, t, lock=False) for t in ids]
        return [t for t in found if t is not None]

    def restore_aborted(self, rows: Iterable[tuple[str, int, int, int, int]]) -> None:
        """Record aborted transactions as ``(topic, partition, last offset, producer id, first
        offset)``: a rebuild of lost metadata from the log (``fsck --rebuild-metadata``)."""
        with self._transaction("restore aborted transactions") as conn:
            for row in rows:
                conn.execute(self._sql(_ABORTED), row)

    def forget_aborted(self) -> int:
        """Forget the aborted transactions whose marker is below their partition's log start
        offset (retention deleted them): no fetch can meet them again. How many."""
        with self._transaction("forget aborted transactions") as conn:
            return int(conn.execute(self._sql(FORGET_ABORTED)).rowcount or 0)

    def last_stable_offset(self, topic: str, partition: int) -> int | None:
        """The first offset of the oldest transaction open on the partition, ``None`` if none
        is (then the last stable offset is the high watermark)."""
        with self._reader(f"read the last stable offset of {topic}-{partition}") as conn:
            row = conn.execute(self._sql(LAST_STABLE), (topic, partition)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def open_from(self, topic: str) -> dict[int, int]:
        """:meth:`last_stable_offset` of each partition of ``topic`` with a transaction open
        on it (the others: none), in one statement."""
        with self._reader(f"read the open transactions of {topic}") as conn:
            rows = conn.execute(self._sql(OPEN_FROM), (topic,)).fetchall()
        return {int(p): int(o) for p, o in rows}

    def stability(
        self, topic: str, partition: int, from_offset: int, to_offset: int
    ) -> tuple[int | None, list[tuple[int, int]]]:
        """:meth:`last_stable_offset` and :meth:`aborted` in one statement."""
        with self._reader(f"read the transactions of {topic}-{partition}") as conn:
            rows = conn.execute(
                self._sql(STABILITY),
                (topic, partition, topic, partition, from_offset, to_offset),
            ).fetchall()
        open_from = next((o for p, o in rows if p == -1), None)
        aborted = sorted((int(p), int(o)) for p, o in rows if p != -1)
        return (None if open_from is None else int(open_from)), aborted

    def topic_stability(self, topic: str, from_offset: int = 0) -> TopicStability:
        """:data:`TOPIC_STABILITY`: every partition's oldest open transaction and its aborted
        transactions whose markers are at or after ``from_offset``; one statement."""
        with self._reader(f"read the transactions of {topic}") as conn:
            rows = conn.execute(
                self._sql(TOPIC_STABILITY), (topic, topic, topic, from_offset)
            ).fetchall()
        high: dict[int, int] = {}
        open_from: dict[int, int] = {}
        aborted: dict[int, list[tuple[int, int, int]]] = {}
        for partition, producer, first, last in rows:
            if producer == -2:
                high[int(partition)] = int(first)
            elif producer == -1:
                if first is not None:
                    open_from[int(partition)] = int(first)
            else:
                aborted.setdefault(int(partition), []).append(
                    (int(producer), int(first), int(last))
                )
        aborted = {p: sorted(a, key=lambda t: t[1]) for p, a in aborted.items()}
        return TopicStability(high, open_from, aborted)

    def pending_offsets(self, group_id: str) -> set[tuple[str, int]]:
        """``(topic, partition)`` of each offset of ``group_id`` committed inside a transaction
        still open (TxnOffsetCommit): not final until that transaction ends."""
        with self._reader(f"read pending offsets of group {group_id!r}") as conn:
            rows = conn.execute(
                self._sql("SELECT topic, partition_id FROM transaction_offsets WHERE group_id = ?"),
                (group_id,),
            ).fetchall()
        return {(t, int(p)) for t, p in rows}

    def aborted(
        self, topic: str, partition: int, from_offset: int, to_offset: int
    ) -> list[tuple[int, int]]:
        """``(producer id, first offset)`` of the aborted transactions overlapping offsets
        ``[from_offset, to_offset)``, by first offset."""
        with self._reader(f"read aborted transactions of {topic}-{partition}") as conn:
            rows = conn.execute(
                self._sql(ABORTED_BETWEEN), (topic, partition, from_offset, to_offset)
            ).fetchall()
        return [(int(p), int(o)) for p, o in rows]


_BY_TOPIC = 500
"""Partitions named in one ``IN`` list at most (SQLite allows 32766 parameters)."""


def _by_topic(keys: Sequence[tuple[str, int]]) -> Iterator[tuple[str, list[int]]]:
    """``keys`` (sorted) as ``(topic, partitions)``, at most :data:`_BY_TOPIC` at a time."""
    for topic, group in itertools.groupby(keys, key=lambda k: k[0]):
        partitions = [p for _, p in group]
        for i in range(0, len(partitions), _BY_TOPIC):
            yield topic, partitions[i : i + _BY_TOPIC]


def _key(txn: TransactionState | None) -> tuple[int, int] | None:
    return None if txn is None else (txn.producer_id, txn.producer_epoch)
