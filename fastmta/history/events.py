"""Queries of the event timeline: pulling events in id order past a cursor, and one message's events.

The cursor is an event id. Ids are UUIDv7 written as lowercase hex, so their text order is their
time order on every node and in every database, and the primary key index walks it. An event is
served only once its id is SETTLE seconds old: ids are made before the transaction that stores
the event commits (a session's refusal waits for the next group commit, a runner's outcome for its
settlement), so a newer id can reach history a moment before an older one, and a follower that
had read past the older one would never see it. History written much later than its events
(an events process that was down) can still land behind a follower's cursor: the timeline of
GET /api/v1/messages/{id} has those, a follower does not.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Collection

import msgspec
import sqlalchemy as sa

from fastmta.events.records import AnyEvent
from fastmta.history.schema import events

# Every event type a filter may name: the tags of the events the outbox holds.
TYPES = frozenset(kind.__struct_config__.tag for kind in typing.get_args(AnyEvent))

SETTLE = 2.0


def id_floor(at: float) -> str:
    """The lowest event id of the millisecond `at` falls in: every id made at or after `at` sorts above it."""
    text = f"{int(at * 1000):012x}" + "0" * 20
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def after(
    connection: sa.Connection,
    cursor: str | None,
    limit: int,
    types: Collection[str] = (),
    message_id: str | None = None,
    now: float | None = None,
) -> tuple[list[AnyEvent], str | None, bool]:
    """Up to `limit` events past `cursor` (from the first without one), oldest first, with the cursor
    to continue from and whether more are there already. An event of a type this version does not
    know is skipped, its id still moves the cursor on."""
    settled = id_floor((time.time() if now is None else now) - SETTLE)
    conditions = [events.c.id < settled]
    if cursor is not None:
        conditions.append(events.c.id > cursor)
    if types:
        conditions.append(events.c.type.in_(list(types)))
    if message_id is not None:
        conditions.append(events.c.message_id == message_id)
    rows = connection.execute(
        sa.select(events.c.id, events.c.data).where(*conditions).order_by(events.c.id).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return _known([row.data for row in rows]), rows[-1].id if rows else cursor, more


def timeline(connection: sa.Connection, message_id: str) -> list[AnyEvent]:
    """Every event of a message in the order they happened (the events_message index)."""
    rows = connection.scalars(
        sa.select(events.c.data).where(events.c.message_id == message_id).order_by(events.c.at, events.c.id)
    )
    return _known(list(rows))


def _known(stored: list[dict[str, typing.Any]]) -> list[AnyEvent]:
    found: list[AnyEvent] = []
    for data in stored:
        try:
            found.append(msgspec.convert(data, AnyEvent))
        except msgspec.ValidationError:
            continue  # written by a newer version: a reader skips tags it does not know
    return found
