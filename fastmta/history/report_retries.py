"""Delivery report entries the receiver rejected, kept to go out again with a later report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from fastmta.history import db
from fastmta.history.schema import report_retries


class Retry(NamedTuple):
    event_id: str
    entry: dict[str, Any]
    attempts: int  # how often the receiver was sent it


def due(connection: sa.Connection, now: float, limit: int) -> list[Retry]:
    rows = connection.execute(
        sa.select(report_retries.c.event_id, report_retries.c.entry, report_retries.c.attempts)
        .where(report_retries.c.retry_at <= now)
        .order_by(report_retries.c.created_at, report_retries.c.event_id)
        .limit(limit)
    )
    return [Retry(*row) for row in rows]


def keep(connection: sa.Connection, retries: Sequence[Retry], retry_at: float, now: float) -> None:
    """Stores each entry with its attempts so far, to go out again from `retry_at` on."""
    if not retries:
        return
    statement = db.insert(connection, report_retries)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[report_retries.c.event_id],
            set_={"attempts": statement.excluded.attempts, "retry_at": statement.excluded.retry_at},
        ),
        [
            {"event_id": retry.event_id, "entry": retry.entry, "attempts": retry.attempts, "created_at": now,
             "retry_at": retry_at}
            for retry in retries
        ],
    )  # fmt: skip


def forget(connection: sa.Connection, event_ids: Sequence[str]) -> None:
    if event_ids:
        connection.execute(sa.delete(report_retries).where(report_retries.c.event_id.in_(event_ids)))
