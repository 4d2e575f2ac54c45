"""The log cleaner: which partitions of compacted topics to clean, and when, as Kafka's
``LogCleaner`` decides.

The compaction pass every ``retention_check_interval_s`` cleans compacted topics with the rest.
Kafka cleans them more eagerly: its cleaner wakes every ``log.cleaner.backoff.ms`` (15 s) and
cleans a partition whose dirty ratio (bytes written since its last cleaning over all of its
cleanable bytes) is above the topic's ``min.cleanable.dirty.ratio``, or whose oldest uncleaned
record is older than the topic's ``max.compaction.lag.ms``. :class:`Cleaner` does the same for
``serve`` every ``log_cleaner_backoff_s``, through a compaction pass over just those partitions
(:func:`~streamhouse.log.compaction.compact`; what a cleaning keeps:
:mod:`~streamhouse.log.key_compaction`). What is cleanable is Kafka's too: never the last
index row (the active segment), nor rows from the first one with a record younger than
``min.compaction.lag.ms`` on.

Where each partition's cleaning reached is kept in memory (Kafka keeps it in a checkpoint
file): after a restart every compacted partition counts as dirty once. A partition nothing
was written to since is not read at all, so a pass over clean topics costs one index read
per partition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamhouse.errors import UnknownTopicError
from streamhouse.log.compaction import CompactionReport, compact, compactor_id
from streamhouse.log.key_compaction import cleanable_rows, is_compacted
from streamhouse.log.metadata import SegmentRow
from streamhouse.log.metadata.rules import now_ms

if TYPE_CHECKING:
    from streamhouse.log import Log

__all__ = ["Cleaner", "needs_cleaning"]

log = logging.getLogger(__name__)

DEFAULT_MIN_DIRTY_RATIO = 0.5
"""Kafka's default ``min.cleanable.dirty.ratio``."""
NO_MAX_LAG = 2**63 - 1
"""Kafka's default ``max.compaction.lag.ms``: none."""


def needs_cleaning(
    cleanable: Sequence[SegmentRow],
    first_dirty: int,
    min_dirty_ratio: float,
    max_lag_ms: int,
    now: int,
) -> bool:
    """Whether a partition whose cleanable rows are ``cleanable`` and whose records from
    ``first_dirty`` on were never cleaned is due, by Kafka's rules.

    >>> from types import SimpleNamespace as Row
    >>> rows = [Row(base_offset=0, last_offset=9, length=100, min_timestamp=0),
    ...         Row(base_offset=10, last_offset=19, length=100, min_timestamp=50)]
    >>> needs_cleaning(rows, 10, 0.5, NO_MAX_LAG, 100)  # half dirty: not above 0.5
    False
    >>> needs_cleaning(rows, 10, 0.4, NO_MAX_LAG, 100), needs_cleaning(rows, 10, 0.5, 40, 100)
    (True, True)
    >>> needs_cleaning(rows, 20, 0.0, 0, 100)  # nothing dirty
    False
    """
    dirty = [r for r in cleanable if r.last_offset >= first_dirty]
    if not dirty:
        return False
    dirty_bytes = sum(r.length for r in dirty)
    total = sum(r.length for r in cleanable)
    if dirty_bytes / max(total, 1) > min_dirty_ratio:
        return True
    return min(r.min_timestamp for r in dirty) < now - max_lag_ms


class Cleaner:
    """Cleans the partitions of compacted topics that are due (see the module); one thread at
    a time calls :meth:`run_once`."""

    def __init__(self, log_: Log) -> None:
        self.log = log_
        self.holder = compactor_id()  # its own leases: never two cleanings of one partition
        self.first_dirty: dict[tuple[str, int], tuple[str, int]] = {}
        """(topic, partition) -> (the topic's id, the first offset no cleaning covered yet):
        a re-created topic starts dirty."""
        self._ids: dict[str, str] = {}

    def due(self, now: int) -> dict[str, dict[int, int]]:
        """topic -> {partition: the offset the cleaning will have covered up to (excluded)}."""
        found: dict[str, dict[int, int]] = {}
        self._ids = {}
        for info in self.log.list_topics():
            config = info.config
            if not is_compacted(config):
                continue
            ratio = float(config.get("min.cleanable.dirty.ratio", DEFAULT_MIN_DIRTY_RATIO))
            max_lag = int(config.get("max.compaction.lag.ms", NO_MAX_LAG))
            self._ids[info.name] = info.topic_id
            for partition in range(info.partitions):
                rows = self.log.metadata.segments(info.name, partition)
                cleanable = cleanable_rows(rows, config, now)
                topic_id, first_dirty = self.first_dirty.get((info.name, partition), ("", 0))
                if topic_id != info.topic_id:
                    first_dirty = 0
                if cleanable and needs_cleaning(cleanable, first_dirty, ratio, max_lag, now):
                    found.setdefault(info.name, {})[partition] = cleanable[-1].last_offset + 1
        return found

    def run_once(self) -> CompactionReport | None:
        """Clean what is due now; the pass's report, or None if nothing was due."""
        due = self.due(now_ms())
        if not due:
            return None
        try:
            report = compact(self.log, list(due), holder=self.holder, partitions=due)
        except UnknownTopicError:
            return None  # deleted since: the next pass goes without it
        busy = set(report.busy)
        for topic, partitions in due.items():
            for partition, through in partitions.items():
                if (topic, partition) not in busy:
                    self.first_dirty[(topic, partition)] = (self._ids[topic], through)
        return report
