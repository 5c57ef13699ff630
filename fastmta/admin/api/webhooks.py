"""Dead letters of webhooks and the delivery report: list them, and ask their sink to send one again."""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.access.roles import Role
from fastmta.admin.endpoint import Call, Endpoint, Outcome
from fastmta.admin.errors import NotFound
from fastmta.admin.state import AdminState
from fastmta.history import dead_letters
from fastmta.history.dead_letters import DeadLetter

# Letter ids are SQL integers (32 bits on PostgreSQL): anything else names no letter.
_LARGEST_ID = 2**31 - 1


class DeadLetterQuery(msgspec.Struct):
    sink: str | None = None  # "webhook:<name>" or "report"
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class DeadLetterPage(msgspec.Struct):
    items: list[DeadLetter]
    total: int
    limit: int
    offset: int


def _page(state: AdminState, query: DeadLetterQuery) -> DeadLetterPage:
    engine = state.database()
    if engine is None:
        return DeadLetterPage([], 0, query.limit, query.offset)
    with engine.connect() as connection:
        items, total = dead_letters.page(connection, query.sink, query.limit, query.offset)
    return DeadLetterPage(items, total, query.limit, query.offset)


def _request_replay(state: AdminState, letter_id: int) -> DeadLetter | None:
    engine = state.database()
    if engine is None:
        return None
    with engine.begin() as connection:
        return dead_letters.request_replay(connection, letter_id, time.time())


async def list_dead_letters(call: Call) -> DeadLetterPage:
    return await anyio.to_thread.run_sync(_page, call.state, call.query)


async def replay(call: Call) -> Outcome:
    raw = call.path("id")
    letter = None
    if raw.isdigit() and int(raw) <= _LARGEST_ID:
        letter = await anyio.to_thread.run_sync(_request_replay, call.state, int(raw))
    if letter is None:
        raise NotFound(f"no dead letter {raw}")
    return Outcome(letter, f"dead-letter:{letter.id}", after={"replay_requested_at": letter.replay_requested_at})


ENDPOINTS = [
    Endpoint("GET", "/api/v1/webhooks/dead-letters", "Events webhooks and the delivery report gave up on, oldest first", list_dead_letters, "webhooks", query=DeadLetterQuery, returns=DeadLetterPage),
    Endpoint("POST", "/api/v1/webhooks/dead-letters/{id}/replay", "Have the events process send a dead letter again", replay, "webhooks", role=Role.operator, returns=DeadLetter, errors=(404,), action="webhook.replay"),
]
