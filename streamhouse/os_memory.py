"""How a StreamHouse process takes memory pages from the kernel and gives them back.

DataFusion's and pyarrow's allocator (mimalloc) serves the Arrow buffers queries build. Two of
its habits cost bounded queries more system time than their own work:

- **Transparent huge pages.** It reserves its arenas with ``madvise(MADV_HUGEPAGE)``; where
  the kernel's THP mode is ``madvise`` (the usual default), every first touch of such memory
  then faults in a 2 MiB page, compacting memory to find one (``defrag`` mode ``madvise``) and
  zeroing all of it. A query that materializes its answer touches a lot of fresh memory:
  bounded Nexmark q1 over an Iceberg table (5M rows, 0.5 GB of Arrow) spent 2.2-2.9 s of
  system time in those faults, against 0.5 s with 4 KiB pages, and held 1.33 GB instead of
  1.08 GB (``benchmarks/results/iceberg_5m_thp.json``). Databases usually ask for THP off;
  here the process turns them off for itself (``prctl(PR_SET_THP_DISABLE)``, inherited by
  its children), which leaves the machine's setting and other processes alone.
  ``transparent_huge_pages = true`` (``STREAMHOUSE_TRANSPARENT_HUGE_PAGES``) clears the flag
  again (one a parent process set is inherited): the machine's THP mode then decides.
- **Purging freed pages.** DataFusion's mimalloc returns freed pages to the kernel 10 ms after
  they are freed, so an aggregation growing its hash tables faults in fresh pages again and
  again: q5 took 173,000 page faults (0.43-0.47 s of system time) where a one-second delay
  (what newer mimalloc versions default to, and pyarrow's already has) takes 92,000-104,000
  (0.20-0.25 s), at 90-100 MB more resident memory until the delay passes.
  :func:`keep_freed_pages` sets ``MIMALLOC_PURGE_DELAY`` to 1000 ms unless the environment
  names one; it must run before DataFusion is imported (``streamhouse`` does so first).

- **Trimming the C heap.** numpy and pyarrow's buffers come from glibc's ``malloc``. By
  default it serves a request over 128 KiB (a threshold it raises, request by request, to
  the largest block freed) with a fresh mapping, and gives the top of a thread's heap back to
  the kernel (``madvise``) once more than twice that is free there; the next piece a scan
  decodes then faults every page in again, zeroed. A cold 4M-record GROUP BY spent about a
  quarter of its CPU on those faults: 1.46-1.54 CPU s against 1.07-1.18 with blocks up to
  8 MiB kept in the heap and 16 MiB of free heap kept before trimming (peak 233 MB against
  236-239). :func:`keep_heap_pages` sets those two (``mallopt``) unless the environment sets
  glibc's malloc itself (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
  ``GLIBC_TUNABLES``).

Elsewhere than Linux none of this does anything.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

__all__ = ["huge_pages_disabled", "keep_freed_pages", "keep_heap_pages", "keep_off_huge_pages"]

log = logging.getLogger(__name__)

PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PURGE_DELAY_ENV = "MIMALLOC_PURGE_DELAY"
PURGE_DELAY_MS = 1000
M_TRIM_THRESHOLD = -1  # mallopt's parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
HEAP_BLOCK_BYTES = 8 << 20  # blocks up to this come from the heap, not a mapping of their own
HEAP_TRIM_BYTES = 16 << 20  # free heap kept before its top goes back to the kernel
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_pages() -> None:
    """Have mimalloc keep freed pages :data:`PURGE_DELAY_MS` before returning them (unless the
    environment already says, or DataFusion, whose allocator reads it when loaded, is in)."""
    if not sys.platform.startswith("linux") or "datafusion" in sys.modules:
        return
    os.environ.setdefault(PURGE_DELAY_ENV, str(PURGE_DELAY_MS))


def keep_heap_pages() -> bool:
    """Have glibc's malloc keep blocks up to :data:`HEAP_BLOCK_BYTES` in its heaps and
    :data:`HEAP_TRIM_BYTES` of free heap, unless the environment tunes it (or it is not
    glibc's). Whether it was set."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in MALLOC_ENV):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # another C library (musl): its own policy
    return bool(
        libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)
        and libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_BYTES)
    )


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
