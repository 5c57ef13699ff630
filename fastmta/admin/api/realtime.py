"""GET /api/v1/stats/realtime: Server-Sent Events, one `metrics` event a second."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import anyio.to_thread
import msgspec
from starlette.responses import Response, StreamingResponse

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.admin.state import AdminState

_json = msgspec.json.Encoder()


class RealtimeQuery(msgspec.Struct):
    # Ends the stream after this many events; without it the stream runs until the client leaves.
    events: Annotated[int, msgspec.Meta(ge=1, le=86400)] | None = None


class RealtimeEvent(msgspec.Struct):
    at: float
    messages_per_second: float
    queue_depth: int
    active_connections: int


async def _events(state: AdminState, limit: int | None) -> AsyncIterator[bytes]:
    previous: tuple[float, float] | None = None
    sent = 0
    while limit is None or sent < limit:
        snapshot = await anyio.to_thread.run_sync(state.readings.snapshot)
        now = time.monotonic()
        received = snapshot.total("smtp_messages_received_total", status="accepted")
        rate = 0.0 if previous is None else (received - previous[1]) / max(now - previous[0], 1e-6)
        previous = (now, received)
        event = RealtimeEvent(
            at=round(time.time(), 3),
            messages_per_second=round(rate, 2),
            queue_depth=state.store.count(),
            active_connections=int(snapshot.total("smtp_connections_active")),
        )
        yield b"event: metrics\ndata: " + _json.encode(event) + b"\n\n"
        sent += 1
        if limit is None or sent < limit:
            await anyio.sleep(1.0)


async def realtime(call: Call) -> Response:
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(call.state, call.query.events), media_type="text/event-stream", headers=headers)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/stats/realtime",
        "A `metrics` event every second: messages/s, queue depth, active connections",
        realtime,
        "monitoring",
        query=RealtimeQuery,
        returns=RealtimeEvent,
        media_type="text/event-stream",
    ),
]
