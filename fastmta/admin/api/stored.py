"""GET /api/v1/stored: the messages an sqlite route stored, searched through its FTS5 index of subject and body text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio.to_thread
import msgspec
from starlette.responses import Response

from fastmta.admin import paging
from fastmta.admin.endpoint import Call, Endpoint, json_response
from fastmta.admin.errors import NotFound, ValidationFailed
from fastmta.admin.state import AdminState
from fastmta.config import Config
from fastmta.stores import sqlite
from fastmta.stores.sqlite import StoredMessage


class StoredQuery(msgspec.Struct):
    q: Annotated[
        str | None,
        msgspec.Meta(description='SQLite FTS5 query: words (all must match), "a phrase", prefix*, OR, NOT, subject:word'),
    ] = None
    route: Annotated[int, msgspec.Meta(ge=0, description="index in [[routes]] of an sqlite route; the first one by default")] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    offset: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0


class StoredPage(msgspec.Struct):
    items: list[StoredMessage]  # best match first with q, newest first without
    total: int  # matching messages, also in X-Total-Count
    limit: int
    offset: int
    has_more: bool
    route: int  # the route searched


def _route(config: Config, asked: int | None) -> int:
    if asked is None:
        found = next((index for index, route in enumerate(config.routes) if route.kind == "sqlite"), None)
        if found is None:
            raise NotFound("no route of kind sqlite is configured: nothing is stored to search")
        return found
    if asked >= len(config.routes):
        raise ValidationFailed(f"route: there is no routes[{asked}] ({len(config.routes)} routes)", "route")
    if config.routes[asked].kind != "sqlite":
        raise ValidationFailed(f"route: routes[{asked}] is of kind {config.routes[asked].kind}, not sqlite", "route")
    return asked


def _page(state: AdminState, path: Path, query: StoredQuery) -> tuple[list[StoredMessage], int]:
    engine = state.stored_database(path)
    if engine is None:
        return [], 0
    with engine.connect() as connection:
        try:
            return sqlite.page(connection, query.q, query.limit, query.offset)
        except sqlite.BadQuery as bad:
            raise ValidationFailed(f"q: not an FTS5 query: {bad}", "q") from None


async def search(call: Call) -> Response:
    query: StoredQuery = call.query
    index = _route(call.state.config, query.route)
    path = Path(call.state.config.routes[index].path)
    rows, total = await anyio.to_thread.run_sync(_page, call.state, path, query)
    found = StoredPage(rows, total, query.limit, query.offset, query.offset + len(rows) < total, index)
    return json_response({"success": True, "data": found}, headers=paging.headers(call.request, total, query.limit, query.offset))


ENDPOINTS = [
    Endpoint("GET", "/api/v1/stored", "Messages an sqlite route stored, found by full-text search, with X-Total-Count and Link headers", search, "stored", query=StoredQuery, returns=StoredPage, errors=(404,)),
]
