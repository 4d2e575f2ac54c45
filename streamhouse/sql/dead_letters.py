"""Dead letters: records whose values do not fit a stream's schema, kept in a topic with why.

Each dead letter is the record's key and value as they were, with the headers ``reason``,
``topic``, ``partition`` and ``offset`` saying where it came from and why it was left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamhouse.log.records import Compression, build_batch
from streamhouse.sql.source import RejectedRow

if TYPE_CHECKING:
    from streamhouse.log import Log
    from streamhouse.log.metadata.leases import Lease

__all__ = ["write_dead_letters"]


def write_dead_letters(
    log_: Log, topic: str, rejected: list[RejectedRow], fence: Lease | None = None
) -> None:
    """Append ``rejected`` to ``topic`` (created with one partition if missing), once durable;
    with ``fence``, only while that lease is held."""
    if log_.get_topic(topic) is None:
        log_.create_topic(topic, 1)
    headers = [
        [
            ("reason", row.reason.encode()),
            ("topic", row.topic.encode()),
            ("partition", str(row.partition).encode()),
            ("offset", str(row.offset).encode()),
        ]
        for row in rejected
    ]
    batch = build_batch(
        [row.value for row in rejected],
        [row.key for row in rejected],
        None,
        headers,
        compression=Compression.LZ4,
    )
    log_.append(topic, 0, batch, fence=fence).result()
