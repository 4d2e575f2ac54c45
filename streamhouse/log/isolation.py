"""Isolation levels of our own reads: SQL queries (bounded and continuous), ``consume`` and
the Python API read what Kafka's read_committed consumers see, unless asked otherwise.

A read_committed read of a partition stops at its last stable offset (the first offset of
its oldest open transaction, else the high watermark read in the same store snapshot, so a
transaction opening after it cannot slip in) and leaves out the batches of aborted
transactions. read_uncommitted reads everything up to the high watermark, as before
transactions existed. Markers (control batches) are never shown either way.

>>> isolation_level("READ_UNCOMMITTED")
<Isolation.READ_UNCOMMITTED: 'read_uncommitted'>
>>> stable_ends(TopicStability({0: 9, 1: 7}, {0: 5}, {}), {0: None, 1: 3})
{0: 5, 1: 3}
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from streamhouse.errors import ConfigError
from streamhouse.log.metadata.transactions import TopicStability

__all__ = ["ISOLATION_LEVEL", "Isolation", "TopicStability", "isolation_level", "stable_ends"]

ISOLATION_LEVEL = "isolation.level"
"""The setting's name (Kafka's consumer config): ``SET 'isolation.level' = '...'``."""


class Isolation(enum.Enum):
    """What a read sees of transactions (Kafka's names)."""

    READ_COMMITTED = "read_committed"
    READ_UNCOMMITTED = "read_uncommitted"


def isolation_level(value: Any) -> Isolation:
    """The :class:`Isolation` ``value`` names; any other value is refused by name."""
    if isinstance(value, Isolation):
        return value
    name = str(value).strip().lower()
    for level in Isolation:
        if level.value == name:
            return level
    raise ConfigError(
        f"{ISOLATION_LEVEL} must be 'read_committed' or 'read_uncommitted', not {value!r}"
    )


def stable_ends(stability: TopicStability, ends: Mapping[int, int | None]) -> dict[int, int]:
    """Each partition's end offset of a read_committed read: ``ends[p]`` (None: the high
    watermark) cut at the partition's last stable offset."""
    out = {}
    for p, end in ends.items():
        stable = stability.high_watermarks.get(p, 0)
        if p in stability.open_from:
            stable = min(stable, stability.open_from[p])
        out[p] = stable if end is None else min(end, stable)
    return out
