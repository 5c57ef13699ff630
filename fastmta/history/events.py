"""Queries of the event timeline: pulling events in the order history stored them past a cursor, and one message's events.

A follower must never pass over an event, and events reach history late: an events process that
was down, or a node behind the others, writes events that happened long ago. So followers read in
the order of `stored_at`, the time history stored each event (its writer's clock), not of the time
it happened or of its id. The cursor is the pair (stored_at, id), written "<microseconds>_<id>". A
row is served once its stored_at is SETTLE seconds old: it is set when its transaction begins, and
that transaction commits well within SETTLE, so a row committed later than one already served
cannot sort before it. Nodes sharing PostgreSQL must keep their clocks within SETTLE of each other
(NTP does far better), or a follower may pass over the events of the one that runs behind.
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


ZERO_ID = "00000000-0000-0000-0000-000000000000"


def cursor_at(at: float) -> str:
    """The cursor before every event history stores at or after `at`."""
    return f"{int(at * 1_000_000)}_{ZERO_ID}"


def parse_cursor(cursor: str) -> tuple[int, str]:
    stored_at, _, event_id = cursor.partition("_")
    return int(stored_at), event_id


def after(
    connection: sa.Connection,
    cursor: str | None,
    limit: int,
    types: Collection[str] = (),
    message_id: str | None = None,
    now: float | None = None,
) -> tuple[list[tuple[str, AnyEvent]], str | None, bool]:
    """Up to `limit` events past `cursor` (from the first without one) in the order history stored
    them, each with its own cursor, then the cursor to continue from and whether more are there
    already. An event of a type this version does not know is skipped; its cursor still moves on."""
    settled = int(((time.time() if now is None else now) - SETTLE) * 1_000_000)
    conditions = [events.c.stored_at < settled]
    if cursor is not None:
        stored_at, event_id = parse_cursor(cursor)
        conditions.append(
            sa.or_(events.c.stored_at > stored_at, sa.and_(events.c.stored_at == stored_at, events.c.id > event_id))
        )
    if types:
        conditions.append(events.c.type.in_(list(types)))
    if message_id is not None:
        conditions.append(events.c.message_id == message_id)
    rows = connection.execute(
        sa.select(events.c.stored_at, events.c.id, events.c.data)
        .where(*conditions)
        .order_by(events.c.stored_at, events.c.id)
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    found = [(f"{row.stored_at}_{row.id}", event) for row in rows if (event := _decoded(row.data)) is not None]
    return found, f"{rows[-1].stored_at}_{rows[-1].id}" if rows else cursor, more


def timeline(connection: sa.Connection, message_id: str) -> list[AnyEvent]:
    """Every event of a message in the order they happened (the events_message index)."""
    rows = connection.scalars(
        sa.select(events.c.data).where(events.c.message_id == message_id).order_by(events.c.at, events.c.id)
    )
    return [event for data in rows if (event := _decoded(data)) is not None]


def _decoded(data: dict[str, typing.Any]) -> AnyEvent | None:
    """None for an event written by a newer version: a reader skips tags it does not know."""
    try:
        event: AnyEvent = msgspec.convert(data, AnyEvent)
    except msgspec.ValidationError:
        return None
    return event
