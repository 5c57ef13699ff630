"""The events process: the outbox's one reader, handing each sink the events past its cursor.

Each sink moves at its own pace. Its cursor advances only once it took a batch, so an event
reaches every sink at least once, whatever dies when; a sink that fails is offered the same batch
again after a pause that doubles up to a minute, and the others go on meanwhile. Ingress never
waits for any of this: the outbox only grows (on disk) while a sink is behind.

The cursors are saved (and what every sink has leaves the outbox) once a second and at a clean
stop, not after every batch: each save is a durable write on the queue's environment, which
ingress commits queue behind. A runner killed between saves offers up to a second of events again,
which at-least-once delivery allows and the sinks deduplicate.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import uvloop

from fastmta.config import Config
from fastmta.events.outbox import Outbox
from fastmta.events.sinks import Sink
from fastmta.metrics import EventsMetrics
from fastmta.queue.store import QueueStore

log = logging.getLogger("fastmta.events")

BATCH = 500
# How often an idle runner looks at the outbox: the lag a quiet sink can show, at most.
_IDLE_LOOK_SECONDS = 0.2
_RETRY_FIRST = 1.0
_RETRY_MAX = 60.0
_SAVE_SECONDS = 1.0


@dataclass
class _Progress:
    cursor: int  # the last entry the sink has
    saved: int  # the cursor as the outbox has it
    failures: int = 0
    retry_at: float = 0.0


class EventsRunner:
    def __init__(self, outbox: Outbox, sinks: list[Sink], metrics: EventsMetrics) -> None:
        self.outbox = outbox
        self.sinks = sinks
        self.metrics = metrics
        outbox.register([sink.name for sink in sinks])
        self._progress = {sink.name: _Progress(outbox.cursor(sink.name), outbox.cursor(sink.name)) for sink in sinks}
        self._saved_at = 0.0
        self.behind = False

    def step(self, now: float) -> int:
        """Offers every sink that is not pausing its next batch; returns how many events were delivered.

        Afterwards `behind` says whether a sink took a whole batch, so more may be waiting for it.
        """
        delivered = 0
        self.behind = False
        for sink in self.sinks:
            progress = self._progress[sink.name]
            if now < progress.retry_at:
                continue
            limit = min(getattr(sink, "batch_limit", BATCH), BATCH)  # see Sink
            batch = self.outbox.read(progress.cursor, limit)
            if not batch and not getattr(sink, "idle_calls", False):  # see Sink
                continue
            try:
                sink.deliver(batch)
            except Exception as exc:  # any failure of a sink's own: it waits, the others go on
                progress.failures += 1
                longest = getattr(sink, "max_pause", _RETRY_MAX)  # see Sink
                pause = min(_RETRY_FIRST * 2 ** (progress.failures - 1), longest)
                progress.retry_at = now + pause
                if progress.failures == 1:
                    log.error("sink %s failed, retrying (pausing up to %.0f s): %s", sink.name, longest, exc)
                continue
            if progress.failures:
                log.info("sink %s delivers again after %d failures", sink.name, progress.failures)
            progress.failures, progress.retry_at = 0, 0.0
            if batch:
                progress.cursor = batch[-1].sequence
            delivered += len(batch)
            self.behind = self.behind or len(batch) == limit
        if now - self._saved_at >= _SAVE_SECONDS:
            self.save(now)
        return delivered

    def save(self, now: float) -> None:
        """Writes the cursors that moved, removing from the outbox what every sink has."""
        moved = {name: p.cursor for name, p in self._progress.items() if p.cursor != p.saved}
        if moved:
            self.outbox.advance(moved)
            for name, cursor in moved.items():
                self._progress[name].saved = cursor
        self._saved_at = now

    def lags(self, now: float) -> dict[str, float]:
        """Per sink: the age of the oldest event it does not have yet, 0 when it has them all."""
        return {name: self.outbox.lag(p.cursor, now) for name, p in self._progress.items()}

    def close(self) -> None:
        self.save(time.time())
        for sink in self.sinks:
            sink.close()


async def _serve(runner: EventsRunner, stop: asyncio.Event) -> None:
    last_reading = 0.0
    while not stop.is_set():
        await asyncio.to_thread(runner.step, time.time())
        now = time.time()
        if now - last_reading >= 1.0:
            for sink, lag in runner.lags(now).items():
                runner.metrics.lag(sink, lag)
            last_reading = now
        if not runner.behind:
            try:
                await asyncio.wait_for(stop.wait(), _IDLE_LOOK_SECONDS)
            except TimeoutError:
                pass


def run(config: Config, name: str, make_sinks: Callable[[Config], list[Sink]]) -> int:
    """The events process's life, at the SCHED_IDLE policy its role (supervisor) set before importing this."""
    store = QueueStore.opened(config)
    runner = EventsRunner(store.outbox, make_sinks(config), EventsMetrics(name, config.server.metrics))
    # What start-up made (modules, SQLAlchemy's and the sinks' objects) lives as long as the process:
    # out of the collector's sight, each collection the events' own objects set off costs a few of
    # them, not the whole heap (a quarter of this process's CPU per event, measured at 4,000 msg/s).
    gc.freeze()

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        log.info("%s feeding %s", name, ", ".join(sink.name for sink in runner.sinks) or "no sink")
        await _serve(runner, stop)

    try:
        uvloop.run(main())
    finally:
        runner.close()
        store.close()
    return 0
