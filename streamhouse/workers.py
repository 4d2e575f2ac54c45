"""Named background threads, started on first use and shared by the whole process.

Each name is one :class:`ThreadPoolExecutor` with a single thread: work submitted under one
name runs in order, while the caller goes on (e.g. JSON parsing beside decoding, or decoding
the next micro-batch of a continuous query while this one is processed).
"""

from __future__ import annotations

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
