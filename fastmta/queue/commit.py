"""Group commit: writes finished at about the same moment share one write transaction and one fsync.

There is no fixed window. The first item after a quiet spell is written at once; items that
arrive while a write is under way wait for it and then go together in the next one, so batches
grow with load and an idle server adds no latency. Ingress commits new messages this way,
delivery runners commit their outcomes.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Settled = Callable[[BaseException | None], None]
# Stores a batch in one durable transaction. It may return an outcome per item (None: stored),
# for items it could not take while storing the others; if it raises, none of the batch is stored.
Write = Callable[[list[Item]], Sequence[BaseException | None] | None]


class GroupCommit(Generic[Item]):
    def __init__(self, write: Write[Item], loop: asyncio.AbstractEventLoop) -> None:
        self._write = write
        self._loop = loop
        # One thread: LMDB allows a single writer per environment anyway, and the event loop
        # must keep reading other clients while the fsync runs. It hands each result straight
        # back to the loop: no futures in between, so the replies go out one loop turn sooner.
        self._batches: queue.SimpleQueue[list[tuple[Item, Settled]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_batches, name="group-commit", daemon=True)
        self._thread.start()
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
        self._batches.put(batch)

    def _write_batches(self) -> None:
        """The commit thread."""
        while (batch := self._batches.get()) is not None:
            items = [item for item, _ in batch]
            try:
                outcomes = self._write(items) or [None] * len(items)
            except BaseException as exc:  # handed to every waiting client, never lost in this thread
                outcomes = [exc] * len(items)
            self._loop.call_soon_threadsafe(self._settle, batch, outcomes)

    def _settle(self, batch: list[tuple[Item, Settled]], errors: Sequence[BaseException | None]) -> None:
        self.batches += 1
        self.items += len(batch)
        for (_, settled), error in zip(batch, errors, strict=True):
            settled(error)
        if self._pending:
            self._write_next()
        else:
            self._busy = False
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        self._batches.put(None)
        self._thread.join()
