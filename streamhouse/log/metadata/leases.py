"""Leases: one holder at a time for a named piece of work, with a fencing epoch.

A lease names work that exactly one agent may do at a time (coordinating a consumer group,
running a continuous query, compacting a partition). Its holder renews it before
``expires_ms``; when a holder dies or pauses past that, any agent may take the lease over.
Every change of holder (and every re-acquisition of an expired lease) raises the ``epoch``,
so a holder that was paused past its lease finds its epoch stale: writes it makes under the
old epoch are refused by :data:`HOLDS` checked in the same transaction (fencing).

Expiry is decided by the store's clock, never the agents', so their clocks need not agree.
A released lease keeps its row (expired at once) so the epoch never goes back. The SQL is
written once for every backend; :class:`~streamhouse.log.metadata.migrations.Dialect` spells
the placeholders and the store's clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamhouse.errors import FencedError
from streamhouse.log.metadata.migrations import Dialect


@dataclass(frozen=True, slots=True)
class Lease:
    """``holder`` holds ``name`` at ``epoch``, for ``remaining_ms`` more by the store's clock
    when it was read (zero or less: expired, free to take)."""

    name: str
    holder: str
    epoch: int
    remaining_ms: int

    @property
    def live(self) -> bool:
        return self.remaining_ms > 0


_NOW = "{now}"

ACQUIRE = (
    "INSERT INTO leases (name, holder, epoch, expires_ms) VALUES (?, ?, 1, {now} + ?)"
    " ON CONFLICT (name) DO UPDATE SET"
    " epoch = CASE WHEN leases.holder = excluded.holder AND leases.expires_ms > {now}"
    " THEN leases.epoch ELSE leases.epoch + 1 END,"
    " holder = excluded.holder, expires_ms = excluded.expires_ms"
    " WHERE leases.holder = excluded.holder OR leases.expires_ms <= {now}"
    " RETURNING name, holder, epoch, expires_ms - {now}"
)
"""Take ``name`` for ``holder`` for ``ttl_ms``: a row back when it is now held (the same epoch
when the holder renews a live lease of its own, a higher one otherwise), none when another
holder's lease is live. Parameters: name, holder, ttl_ms."""

RENEW = (
    "UPDATE leases SET expires_ms = {now} + ?"
    " WHERE name = ? AND holder = ? AND epoch = ? AND expires_ms > {now}"
)
"""Extend a live lease; no row changes when it expired (even if nobody took it: the holder must
acquire it again, at a new epoch). Parameters: ttl_ms, name, holder, epoch."""

RELEASE = "UPDATE leases SET expires_ms = -1 WHERE name = ? AND holder = ? AND epoch = ?"
"""Give a lease up at once, keeping its epoch. Parameters: name, holder, epoch."""

HOLDS = (
    "SELECT epoch FROM leases WHERE name = ? AND holder = ? AND epoch = ? AND expires_ms > {now}"
)
"""A row when ``holder`` still holds ``name`` at ``epoch``: run it inside a write transaction
to fence the write (commit it only when a row came back). Parameters: name, holder, epoch."""

_SHARE_LOCKING = {"postgresql": " FOR SHARE"}


def fence(dialect: Dialect) -> str:
    """:data:`HOLDS` in ``dialect``, locking the lease row where the store would otherwise let a
    takeover commit between this check and the fenced transaction's ``COMMIT``.

    PostgreSQL: ``FOR SHARE`` makes :data:`ACQUIRE` wait for the fenced transaction, so a new
    holder that reads what the old one wrote reads all of it. SQLite serializes write
    transactions already (``BEGIN IMMEDIATE``).
    """
    return sql(HOLDS, dialect) + _SHARE_LOCKING.get(dialect.name, "")


def fence_params(lease: Lease) -> tuple[str, str, int]:
    """The parameters of :func:`fence` (and :data:`HOLDS`) for ``lease``."""
    return lease.name, lease.holder, lease.epoch


def refused(lease: Lease, what: str) -> FencedError:
    """The error of a write refused because ``lease`` is no longer held."""
    return FencedError(
        f"{what} refused: lease {lease.name!r} at epoch {lease.epoch} is no longer held by"
        f" {lease.holder} (it expired or was taken over)"
    )


LIST = (
    "SELECT name, holder, epoch, expires_ms - {now} FROM leases"
    " WHERE name >= ? AND name < ? ORDER BY name"
)
"""Every lease whose name starts with a prefix. Parameters: prefix, prefix + U+10FFFF."""


def sql(statement: str, dialect: Dialect) -> str:
    """``statement`` in ``dialect``: its placeholders and the store's clock in milliseconds.

    >>> from streamhouse.log.metadata.migrations import POSTGRESQL
    >>> sql(RELEASE, POSTGRESQL)
    'UPDATE leases SET expires_ms = -1 WHERE name = %s AND holder = %s AND epoch = %s'
    """
    return dialect.sql(statement.replace(_NOW, dialect.now_ms))


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """The parameters of :data:`LIST` for names starting with ``prefix`` (no LIKE, so no
    escaping of ``%`` and ``_`` in names)."""
    return prefix, prefix + "\U0010ffff"


def check_ttl(ttl_ms: int) -> int:
    """``ttl_ms`` if it is a usable lease duration; ``ValueError`` otherwise."""
    if not isinstance(ttl_ms, int) or ttl_ms <= 0:
        raise ValueError(f"a lease's ttl_ms must be a positive integer, not {ttl_ms!r}")
    return ttl_ms
