"""The thread behind each backend's commit feed (:meth:`Metadata.commit_feed`).

A feed *follows* the store (PostgreSQL: ``LISTEN``; SQLite: polling) until told to stop;
when following fails (the server went away, the file is busy), the feed is no longer live,
and it starts following again after ``RETRY_S``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

RETRY_S = 1.0
"""Pause before following the store again after a failure."""
STOP_WAIT_S = 5.0


class FeedThread:
    """Runs ``follow(stopping)`` on a daemon thread until :meth:`stop`; again after failures.

    ``follow`` calls ``on_live(True)`` once it hears every commit and returns when
    ``stopping`` is set; a failure calls ``on_live(False)``.
    """

    def __init__(
        self,
        name: str,
        follow: Callable[[threading.Event], None],
        on_live: Callable[[bool], None],
    ) -> None:
        self._name = name
        self._follow = follow
        self._on_live = on_live
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamhouse-commit-feed")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._follow(self._stopping)
            except Exception as exc:  # the store failed: follow it again, later
                self._on_live(False)
                logger.warning("commit feed of %s failed, retrying: %s", self._name, exc)
                self._stopping.wait(RETRY_S)

    def stop(self) -> None:
        """End the feed; ``on_live`` and the commit callback are not called any more."""
        self._stopping.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(STOP_WAIT_S)
