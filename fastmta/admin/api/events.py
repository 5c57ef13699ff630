"""GET /api/v1/events and /api/v1/events/stream: the event timeline pulled past a cursor, or followed as Server-Sent Events.

The cursor is the place of an event in the order history stored them (history/events.py says why
it is safe to resume from, on any node sharing history): `next_cursor` of a page, or the SSE `id:` of the last event read, which a client
sends back as Last-Event-ID when it reconnects. Without one, a pull starts at the oldest event and
a stream at the newest. A stream polls history every POLL seconds, each client with its own
cursor, and holds one of the [admin] max_stream_clients places the realtime stream also counts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import msgspec
from starlette.responses import Response

from fastmta.admin import history
from fastmta.admin.api.realtime import Feed, Stream
from fastmta.admin.endpoint import Call, Endpoint
from fastmta.admin.errors import ValidationFailed
from fastmta.admin.state import AdminState
from fastmta.events.records import AnyEvent
from fastmta.history import events

log = logging.getLogger("fastmta.admin")

POLL = 0.5
KEEP_ALIVE = 15.0  # seconds of silence after which a comment line keeps proxies from closing the stream
_BATCH = 500  # events per poll of a stream
_CURSOR = r"^[0-9]{1,19}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_json = msgspec.json.Encoder()

Cursor = Annotated[str, msgspec.Meta(pattern=_CURSOR, description="next_cursor of a page, or the SSE id of an event")]
Types = Annotated[str, msgspec.Meta(description="event types, comma-separated: " + ", ".join(sorted(events.TYPES)))]


class StreamQuery(msgspec.Struct):
    after: Cursor | None = None  # Last-Event-ID, when a client sends it, wins
    type: Types | None = None
    message_id: str | None = None


class EventsQuery(StreamQuery):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class EventPage(msgspec.Struct):
    items: list[AnyEvent]  # in the order history stored them
    next_cursor: str | None  # `after` for the next page; the same as given when nothing came
    has_more: bool  # more events are there already: ask again now rather than after a pause


def _types(value: str | None) -> frozenset[str]:
    chosen = frozenset(name.strip() for name in value.split(",")) if value else frozenset()
    unknown = sorted(chosen - events.TYPES)
    if unknown:
        raise ValidationFailed(f"type: unknown event type {', '.join(unknown)}; known: {', '.join(sorted(events.TYPES))}", "type")
    return chosen


async def pull(call: Call) -> EventPage:
    query: EventsQuery = call.query
    read = functools.partial(events.after, cursor=query.after, limit=query.limit, types=_types(query.type), message_id=query.message_id)
    found, cursor, more = await history.read(call.state, read)
    return EventPage([event for _, event in found], cursor, more)


def _resumed(call: Call) -> str | None:
    resumed = call.request.headers.get("last-event-id")
    if resumed is None:
        return call.query.after or events.cursor_at(time.time())
    try:
        return msgspec.convert(resumed, Cursor)
    except msgspec.ValidationError:
        raise ValidationFailed(f"Last-Event-ID: not an event cursor: {resumed!r}", "Last-Event-ID") from None


async def _follow(state: AdminState, feed: Feed, cursor: str | None, types: frozenset[str], message_id: str | None) -> AsyncIterator[bytes]:
    # Tells EventSource to reconnect after a second; also sends the first bytes at once.
    yield b"retry: 1000\n\n"
    quiet = 0.0
    try:
        while not feed.closed:
            read = functools.partial(events.after, cursor=cursor, limit=_BATCH, types=types, message_id=message_id)
            found, cursor, more = await history.read(state, read)
            for event_cursor, event in found:
                kind = type(event).__struct_config__.tag
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (event_cursor.encode(), str(kind).encode(), _json.encode(event))
            quiet = 0.0 if found else quiet + POLL
            if quiet >= KEEP_ALIVE:
                yield b": keep-alive\n\n"
                quiet = 0.0
            if not more:
                await anyio.sleep(POLL)
    except Exception:
        # The client reconnects with its Last-Event-ID and misses nothing.
        log.exception("reading history for an event stream failed; the stream ends")


def endpoints(feed: Feed) -> list[Endpoint]:
    """The pull and the stream; the stream's places are `feed`'s, shared with the realtime stream."""

    async def stream(call: Call) -> Response:
        query: StreamQuery = call.query
        types, cursor = _types(query.type), _resumed(call)
        history.engine_of(call.state)
        feed.admit(call.state)
        return Stream(_follow(call.state, feed, cursor, types, query.message_id), feed.release)

    return [
        Endpoint("GET", "/api/v1/events", "Events in order past a cursor", pull, "events", query=EventsQuery, returns=EventPage, errors=(503,)),
        Endpoint(
            "GET",
            "/api/v1/events/stream",
            "Events as Server-Sent Events, resumable with Last-Event-ID",
            stream,
            "events",
            query=StreamQuery,
            returns=AnyEvent,
            media_type="text/event-stream",
            errors=(503,),
        ),
    ]
