"""Group commit: writes finished at about the same moment share one write transaction and one fsync.

There is no fixed window. The first item after a quiet spell is written at once; items that
arrive while a write is under way wait for it and then go together in the next one, so batches
grow with load and an idle server adds no latency. Ingress commits new messages this way,
delivery runners commit their outcomes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Settled = Callable[[BaseException | None], None]


class GroupCommit(Generic[Item]):
    def __init__(self, write: Callable[[list[Item]], None], loop: asyncio.AbstractEventLoop) -> None:
        """`write` stores a whole batch in one durable transaction, or raises and stores none of it."""
        self._write = write
        self._loop = loop
        # One thread: LMDB allows a single writer per environment anyway, and the event loop
        # must keep reading other clients while the fsync runs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self._pending: list[tuple[Item, Settled]] = []
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.batches = 0
        self.items = 0

    def submit(self, item: Item, settled: Settled) -> None:
        """settled(None) runs once the item is durable; settled(error) if it could not be stored."""
        self._pending.append((item, settled))
        if not self._busy:
            self._busy = True
            self._idle.clear()
            # call_soon lets every item completed by this loop iteration join the batch.
            self._loop.call_soon(self._write_next)

    def _write_next(self) -> None:
        batch, self._pending = self._pending, []
        future = self._loop.run_in_executor(self._executor, self._write, [item for item, _ in batch])
        future.add_done_callback(lambda done: self._settle(batch, done))

    def _settle(self, batch: list[tuple[Item, Settled]], done: asyncio.Future[None]) -> None:
        error = done.exception()
        self.batches += 1
        self.items += len(batch)
        for _, settled in batch:
            settled(error)
        if self._pending:
            self._write_next()
        else:
            self._busy = False
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
