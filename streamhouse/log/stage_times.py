"""Where the produce path spends its time: cumulative seconds per stage, per flush.

The writer and the object stores add one figure per stage per flush (never per record), so the
clock is always on; ``serve`` logs the means when it stops and ``benchmarks/log/ack_latency.py``
reads them to break an acknowledgement's latency down.
"""

from __future__ import annotations

import threading

__all__ = ["StageTimes"]


class StageTimes:
    """Seconds spent in each named stage so far, and how often each stage ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
            self._counts[stage] = self._counts.get(stage, 0) + 1

    def means_ms(self) -> dict[str, dict[str, float]]:
        """``{stage: {"count": n, "mean_ms": m}}``, in the order the stages first ran."""
        with self._lock:
            return {
                stage: {
                    "count": self._counts[stage],
                    "mean_ms": round(seconds * 1000 / self._counts[stage], 3),
                }
                for stage, seconds in self._seconds.items()
            }
