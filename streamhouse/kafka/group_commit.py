"""Group commit of store writes made from the event loop: requests that arrive while one
store transaction is under way wait for it to end, then go together in the next one.

A request alone is written at once (no lingering: the latency of a lone producer does not
grow); under load, N concurrent requests cost one thread hop, one write lock and one commit
instead of N. Each caller gets its own result once the transaction holding it has committed,
so nothing is answered before its write. If a grouped transaction fails, each request of it
is written again on its own, so one bad request fails alone.

>>> import asyncio
>>> async def demo():  # three at once: one store transaction
...     group = GroupCommit(lambda items: [i * 2 for i in items], "demo")
...     return await asyncio.gather(*(group.submit(i) for i in range(3))), group.commits
>>> asyncio.run(demo())
([0, 2, 4], 1)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Writes items through ``write_all`` (called in a worker thread with every item waiting,
    returning their results in order), one call at a time; used from one event loop."""

    def __init__(self, write_all: Callable[[Sequence[Item]], list[Result]], name: str) -> None:
        self._write_all = write_all
        self._name = name
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writing: asyncio.Task[None] | None = None
        self.commits = 0  # store transactions made
        self.items = 0  # items written in them

    async def submit(self, item: Item) -> Result:
        """``item``'s result once the store transaction holding it has committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_while_waiting())
        return await future

    async def _write_while_waiting(self) -> None:
        group: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await self._write(group)
        except BaseException as exc:  # cancelled (shutdown): nobody waits forever
            for _, future in [*group, *self._waiting]:
                _settle(future, exc=exc)
            self._waiting = []
            raise
        finally:
            self._writing = None

    async def _write(self, group: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        items = [item for item, _ in group]
        try:
            results = await asyncio.to_thread(self._write_all, items)
        except Exception as exc:  # noqa: BLE001 - each is written again alone, below
            if len(group) == 1:
                _settle(group[0][1], exc=exc)
                return
            log.info("%s: group of %d failed (%s); one at a time", self._name, len(group), exc)
            for one in group:
                await self._write([one])
            return
        self.commits += 1
        self.items += len(items)
        for (_, future), result in zip(group, results, strict=True):
            _settle(future, result=result)


def _settle(
    future: asyncio.Future[Result],
    *,
    result: Result | None = None,
    exc: BaseException | None = None,
) -> None:
    if future.done():  # its caller was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]
