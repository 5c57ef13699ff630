"""The admin ASGI app: the routes of every endpoint module and of the web console, the request id, the guard,
and the error envelope for the rest.

Starlette supplies routing, requests, responses and streaming; validation, auth and the OpenAPI
document come from the endpoint declarations (endpoint.py), built on msgspec like the rest of fastmta.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastmta.admin import heartbeat
from fastmta.admin.api import (
    audit,
    cluster,
    delivery,
    destinations,
    dkim,
    docs,
    events,
    health,
    maintenance,
    messages,
    metrics,
    queue,
    realtime,
    stats,
    stored,
    tokens,
    users,
    webhooks,
)
from fastmta.admin.console import routes as console
from fastmta.admin.endpoint import REQUEST_ID, Endpoint, error_response, route
from fastmta.admin.errors import ApiError, MethodNotAllowed, NotFound
from fastmta.admin.guard import Guard
from fastmta.admin.state import AdminState
from fastmta.config import Config

log = logging.getLogger("fastmta.admin")

_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def endpoints(feed: realtime.Feed | None = None) -> list[Endpoint]:
    """Every endpoint; `feed` is the event streams', and a new one does where the endpoints are only described."""
    feed = feed or realtime.Feed()
    described = [
        endpoint
        for module in (
            health, metrics, stats, queue, delivery, destinations, users, tokens, audit, messages, maintenance, webhooks, stored,
            dkim, cluster,
        )
        for endpoint in module.ENDPOINTS
    ] + realtime.endpoints(feed) + events.endpoints(feed)
    return described + docs.endpoints(described)


class RequestId:
    """Takes the client's X-Request-ID if it is sane, else makes one; echoes it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if _CLIENT_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        scope[REQUEST_ID] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


async def _routing_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: ApiError = (
        MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        if exc.status_code == 405
        else NotFound(f"no endpoint {request.url.path}")
    )
    return error_response(error, request)


def create_app(config: Config, feed: realtime.Feed) -> Starlette:
    state = AdminState.open(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        beating = None if state.cluster is None else asyncio.ensure_future(heartbeat.beat_forever(state, state.cluster))
        yield
        if beating is not None:
            beating.cancel()
        state.close()

    api = endpoints(feed)
    return Starlette(
        routes=[Route(e.path, route(e, state), methods=[e.method]) for e in api] + console.routes(state, api),
        # RequestId outside, so that the guard's own 413 carries the request's id.
        middleware=[Middleware(RequestId), Middleware(Guard, max_body_bytes=config.admin.max_body_bytes)],
        exception_handlers={HTTPException: _routing_error},
        lifespan=lifespan,
    )
