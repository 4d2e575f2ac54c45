"""Named background threads, started on first use and shared by the whole process.

Each name is one :class:`ThreadPoolExecutor` with a single thread: work submitted under one
name runs in order, while the caller goes on (e.g. JSON parsing beside decoding, or decoding
the next micro-batch of a continuous query while this one is processed). :func:`pool` is a
named executor with a thread per core, for work split in pieces that release the GIL
(decoding and parsing a bounded query's segments).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_workers: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def worker(name: str) -> ThreadPoolExecutor:
    """The single-thread executor called ``name`` (its thread: ``streamhouse-<name>``)."""
    with _lock:
        if name not in _workers:
            _workers[name] = ThreadPoolExecutor(1, thread_name_prefix=f"streamhouse-{name}")
        return _workers[name]


_pools: dict[str, ThreadPoolExecutor] = {}


def pool(name: str) -> ThreadPoolExecutor:
    """The executor called ``name`` with a thread per core (its threads:
    ``streamhouse-<name>_<i>``). Work submitted to it must not wait for work of the same pool."""
    with _lock:
        if name not in _pools:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            _pools[name] = ThreadPoolExecutor(
                threads or os.cpu_count() or 1, thread_name_prefix=f"streamhouse-{name}"
            )
        return _pools[name]
