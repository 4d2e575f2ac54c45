"""The audit log: an INFO line for every failed login and every denied request, at most
:data:`AUDIT_LINES_PER_S` a second, so that a storm cannot flood the log (the lines left out
are counted in the next one written)."""

from __future__ import annotations

import logging
import time

__all__ = ["AUDIT", "AUDIT_LINES_PER_S", "Audit"]

log = logging.getLogger(__name__)

AUDIT_LINES_PER_S = 10


class Audit:
    """Rate-limited audit lines (event loop thread)."""

    def __init__(self, per_second: int = AUDIT_LINES_PER_S) -> None:
        self.per_second = per_second
        self.second = 0
        self.lines = 0
        self.suppressed = 0

    def line(self, message: str, *args: object) -> None:
        """Log ``message % args`` (INFO, ``audit: `` first) unless this second's lines are used."""
        now = int(time.monotonic())
        if now != self.second:
            if self.suppressed:
                log.info("audit: %d more line(s) not logged", self.suppressed)
            self.second, self.lines, self.suppressed = now, 0, 0
        if self.lines >= self.per_second:
            self.suppressed += 1
            return
        self.lines += 1
        log.info("audit: " + message, *args)


AUDIT = Audit()
