"""Dead letters: events a sink gave up on, listed for operators, and replayed by their sink when one asks.

The admin process only marks a letter (replay_requested_at); the sink that wrote it sends it again
on its next step and records the outcome, so no process but the events process calls receivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec
import sqlalchemy as sa

from fastmta.history import db
from fastmta.history.schema import dead_letters


class DeadLetter(msgspec.Struct):
    id: int
    sink: str
    event_id: str
    event: str
    payload: Any
    reason: str
    attempts: int
    created_at: float
    updated_at: float
    replay_requested_at: float | None
    replayed_at: float | None


class Letter(NamedTuple):
    """An event about to be given up on: its id, its name for the receiver, what the receiver is sent."""

    event_id: str
    event: str
    payload: Any


def add(connection: sa.Connection, sink: str, letters: Sequence[Letter], reason: str, attempts: int, now: float) -> None:
    """Keeps the letters; one already kept for this sink (the same batch given up twice) stays as it was."""
    if not letters:
        return
    rows = [
        {"sink": sink, "event_id": letter.event_id, "event": letter.event, "payload": letter.payload, "reason": reason,
         "attempts": attempts, "created_at": now, "updated_at": now}
        for letter in letters
    ]  # fmt: skip
    connection.execute(db.insert(connection, dead_letters).on_conflict_do_nothing(), rows)


def page(connection: sa.Connection, sink: str | None, limit: int, offset: int) -> tuple[list[DeadLetter], int]:
    """Letters oldest first (of one sink, or all), and how many there are in all."""
    if not _exists(connection):  # the events process has not migrated history yet: nothing was given up
        return [], 0
    where = [dead_letters.c.sink == sink] if sink else []
    total = connection.scalar(sa.select(sa.func.count()).select_from(dead_letters).where(*where)) or 0
    rows = connection.execute(
        sa.select(dead_letters).where(*where).order_by(dead_letters.c.id).limit(limit).offset(offset)
    ).mappings()
    return [_letter(row) for row in rows], total


def request_replay(connection: sa.Connection, letter_id: int, now: float) -> DeadLetter | None:
    """Marks a letter for its sink to send again; None when there is no such letter."""
    if not _exists(connection):
        return None
    connection.execute(
        sa.update(dead_letters).where(dead_letters.c.id == letter_id).values(replay_requested_at=now, replayed_at=None)
    )
    row = connection.execute(sa.select(dead_letters).where(dead_letters.c.id == letter_id)).mappings().first()
    return None if row is None else _letter(row)


# Built once: a sink looks for replays every second, and building the statement cost more than running it.
_DUE = (
    sa.select(dead_letters)
    .where(dead_letters.c.sink == sa.bindparam("sink"), dead_letters.c.replay_requested_at.is_not(None))
    .order_by(dead_letters.c.id)
    .limit(sa.bindparam("limit"))
)


def due(connection: sa.Connection, sink: str, limit: int) -> list[DeadLetter]:
    """The sink's letters an operator asked to replay, oldest first."""
    rows = connection.execute(_DUE, {"sink": sink, "limit": limit}).mappings()
    return [_letter(row) for row in rows]


def replayed(connection: sa.Connection, ids: Sequence[int], now: float) -> None:
    """The receiver took them: kept as a record of what was replayed when."""
    connection.execute(
        sa.update(dead_letters).where(dead_letters.c.id.in_(ids))
        .values(replay_requested_at=None, replayed_at=now, updated_at=now, attempts=dead_letters.c.attempts + 1)
    )


def failed_again(connection: sa.Connection, ids: Sequence[int], reason: str, now: float) -> None:
    """The replay failed: the letters wait for another request, with the new reason."""
    connection.execute(
        sa.update(dead_letters).where(dead_letters.c.id.in_(ids))
        .values(replay_requested_at=None, reason=reason, updated_at=now, attempts=dead_letters.c.attempts + 1)
    )


def remove_older(connection: sa.Connection, before: float) -> int:
    """Letters untouched since `before` ([history] keep): a receiver gone that long will not ask for them."""
    return connection.execute(sa.delete(dead_letters).where(dead_letters.c.updated_at < before)).rowcount


def _exists(connection: sa.Connection) -> bool:
    return sa.inspect(connection).has_table(dead_letters.name)


def _letter(row: sa.RowMapping) -> DeadLetter:
    return DeadLetter(**dict(row))
