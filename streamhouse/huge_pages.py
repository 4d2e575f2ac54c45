"""Transparent huge pages, off for a StreamHouse process unless its settings allow them.

DataFusion's and pyarrow's allocator (mimalloc) reserves its arenas with
``madvise(MADV_HUGEPAGE)``; where the kernel's THP mode is ``madvise`` (the usual default),
every first touch of such memory then faults in a 2 MiB page, compacting memory to find one
(``defrag`` mode ``madvise``) and zeroing all of it. A query that materializes its answer
touches a lot of fresh memory: bounded Nexmark q1 over an Iceberg table (5M rows, 0.5 GB of
Arrow) spent 2.1-3.0 s of system time in those faults, against 0.5 s with 4 KiB pages, and
held 1.33 GB instead of 1.07 GB (``benchmarks/results/iceberg_thp.json``). Databases
usually ask for THP off (PostgreSQL's, MongoDB's and Redis's guides do); here the process
turns them off for itself (``prctl(PR_SET_THP_DISABLE)``, inherited by its children),
which leaves the machine's setting and other processes alone.

``transparent_huge_pages = true`` (``STREAMHOUSE_TRANSPARENT_HUGE_PAGES``) clears the flag
again (one a parent process set is inherited): the machine's THP mode then decides. Elsewhere
than Linux this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["huge_pages_disabled", "keep_off_huge_pages"]

log = logging.getLogger(__name__)

PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42


def keep_off_huge_pages(allowed: bool) -> None:
    """Turn transparent huge pages off for this process, or with ``allowed`` leave them to
    the machine's THP mode."""
    if not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_THP_DISABLE, int(not allowed), 0, 0, 0):
        log.warning(
            "could not set transparent huge pages %s for this process: errno %d",
            "on" if allowed else "off",
            ctypes.get_errno(),
        )


def huge_pages_disabled() -> bool | None:
    """Whether transparent huge pages are off for this process (None: not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return bool(ctypes.CDLL(None).prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0))
