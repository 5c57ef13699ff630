"""GET /api/v1/stats/realtime: Server-Sent Events, one `metrics` event a second; and what every event stream shares.

One reading a second serves every client: a client costs a one-slot queue, not its own snapshot of
every worker's metrics, and the admin process does the same work for one client or for sixty.
The feed also holds the places of every event stream of the admin process (this one and
/api/v1/events/stream), at most [admin] max_stream_clients in all, and ends them all when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
import anyio.to_thread
import msgspec
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.admin.errors import TooManyStreams
from fastmta.admin.state import AdminState

log = logging.getLogger("fastmta.admin")

_json = msgspec.json.Encoder()
# Put in a client's queue to end its stream: when the reading fails, and when the admin process stops.
_END = b""


class RealtimeQuery(msgspec.Struct):
    # Ends the stream after this many events; without it the stream runs until the client leaves.
    events: Annotated[int, msgspec.Meta(ge=1, le=86400)] | None = None


class RealtimeEvent(msgspec.Struct):
    """Rates are per second since the event before; fields may be added, never removed or renamed."""

    at: float
    messages_per_second: float  # accepted over SMTP
    queue_depth: int
    active_connections: int
    sent_per_second: float = 0.0  # recipients delivered
    deferred_per_second: float = 0.0  # recipients deferred
    rejected_per_second: float = 0.0  # messages refused in the SMTP session, or not stored


class Feed:
    """The clients of the stream and the one task that reads the metrics for them while there are any."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes]] = set()
        self._reader: asyncio.Task[None] | None = None
        self._latest: bytes | None = None
        self._closed = False
        self._clients = 0  # of every event stream

    @property
    def closed(self) -> bool:
        """The admin process is stopping: streams polling on their own end when they see it."""
        return self._closed

    def admit(self, state: AdminState) -> None:
        """A place for one more client of an event stream, given back by release(); or TooManyStreams."""
        limit = state.config.admin.max_stream_clients
        if self._clients >= limit:
            raise TooManyStreams(f"{limit} clients are on the event streams, [admin] max_stream_clients; try again later")
        self._clients += 1

    def release(self) -> None:
        self._clients -= 1

    def join(self, state: AdminState) -> asyncio.Queue[bytes]:
        self.admit(state)
        # One slot: a client that reads slowly gets the newest reading, never a backlog.
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)
        if self._closed:
            queue.put_nowait(_END)
            return queue
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._queues.add(queue)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(state))
        return queue

    def leave(self, queue: asyncio.Queue[bytes]) -> None:
        self.release()
        self._queues.discard(queue)
        if not self._queues:
            self._stop_reading()

    def close(self) -> None:
        """Ends every stream, now and for clients still to come: the server waits for open responses
        before it stops, and an event stream never ends by itself."""
        self._closed = True
        self._offer(_END)
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._latest = None

    async def _read(self, state: AdminState) -> None:
        previous: Counts | None = None
        try:
            while True:
                event, previous = await anyio.to_thread.run_sync(_reading, state, previous)
                self._latest = b"event: metrics\ndata: " + _json.encode(event) + b"\n\n"
                self._offer(self._latest)
                await anyio.sleep(1.0)
        except Exception:
            log.exception("the event stream's metrics reading failed; its clients are disconnected")
            self._offer(_END)
            self._reader = None
            self._latest = None

    def _offer(self, item: bytes) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)


# What each rate counts: (metric, its `status`, or None: every status but "accepted").
_RATES = {
    "messages_per_second": ("smtp_messages_received_total", "accepted"),
    "sent_per_second": ("smtp_messages_sent_total", "delivered"),
    "deferred_per_second": ("smtp_messages_sent_total", "deferred"),
    "rejected_per_second": ("smtp_messages_received_total", None),
}
Counts = tuple[float, dict[str, float]]  # when they were read (monotonic), and each rate's counter then


def _reading(state: AdminState, previous: Counts | None) -> tuple[RealtimeEvent, Counts]:
    """The event, and the counts the next one measures its rates from; runs in a thread."""
    snapshot = state.readings.snapshot()
    now = time.monotonic()
    counts = {}
    for rate, (metric, status) in _RATES.items():
        by_status = snapshot.by_label(metric, "status")
        counts[rate] = by_status.get(status, 0.0) if status else sum(v for k, v in by_status.items() if k != "accepted")
    rates = {
        rate: 0.0 if previous is None else round((count - previous[1][rate]) / max(now - previous[0], 1e-6), 2)
        for rate, count in counts.items()
    }
    event = RealtimeEvent(
        at=round(time.time(), 3),
        queue_depth=state.store.count(),
        active_connections=int(snapshot.total("smtp_connections_active")),
        **rates,
    )
    return event, (now, counts)


class Stream(StreamingResponse):
    """The event stream of one client, which gives up its place (`on_end`) however the response ends."""

    def __init__(self, events: AsyncIterator[bytes], on_end: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Not in the generator's own finally: a client that leaves while a chunk is being sent
        # cancels the response outside the generator, which would then be closed only when collected.
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_end()


async def _relay(queue: asyncio.Queue[bytes], limit: int | None) -> AsyncIterator[bytes]:
    sent = 0
    while limit is None or sent < limit:
        event = await queue.get()
        if event == _END:
            return
        yield event
        sent += 1


def endpoints(feed: Feed) -> list[Endpoint]:
    """The stream's endpoint, serving from `feed`: one per admin process."""

    async def realtime(call: Call) -> Response:
        queue = feed.join(call.state)
        return Stream(_relay(queue, call.query.events), lambda: feed.leave(queue))

    return [
        Endpoint(
            "GET",
            "/api/v1/stats/realtime",
            "A `metrics` event every second: messages received, sent, deferred and rejected per second, queue depth, active connections",
            realtime,
            "monitoring",
            query=RealtimeQuery,
            returns=RealtimeEvent,
            media_type="text/event-stream",
            errors=(503,),
        ),
    ]
