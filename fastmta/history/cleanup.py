"""Removing settled messages from history on request: the rows of each, counted or deleted in one transaction.

Only settled messages (sent, failed, rejected, deleted) can go: a queued one is still changing and
its next event would find no row. Age is judged by updated_at, as the sink's own retention judges it
([history] keep), on the messages_updated index.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec
import sqlalchemy as sa

from fastmta.history.schema import DELETED, FAILED, REJECTED, SENT, events, messages, recipients

SETTLED = frozenset({SENT, FAILED, REJECTED, DELETED})


class Removed(msgspec.Struct):
    """Rows removed, or that would be on a dry run."""

    messages: int
    recipients: int
    events: int


def remove_settled(connection: sa.Connection, statuses: Collection[str], before: float, dry_run: bool) -> Removed:
    """Messages in `statuses` unchanged since `before`, with their recipients and events; `connection` is in
    a transaction, so a dry run and a real one count the same rows."""
    assert SETTLED.issuperset(statuses), statuses
    chosen = sa.select(messages.c.id).where(messages.c.status.in_(list(statuses)), messages.c.updated_at < before)
    # Messages last: the other two find their rows through them.
    counts = {
        table.name: _count(connection, table, column.in_(chosen)) if dry_run else _delete(connection, table, column.in_(chosen))
        for table, column in ((recipients, recipients.c.message_id), (events, events.c.message_id), (messages, messages.c.id))
    }
    return Removed(**counts)


def remove_orphan_events(connection: sa.Connection, before: float) -> int:
    """Events older than `before` of no message history keeps (auth failures, outcomes of mail queued
    before history began); a kept message keeps its whole timeline, however old its first events."""
    orphan = ~sa.exists().where(messages.c.id == events.c.message_id)
    return connection.execute(sa.delete(events).where(events.c.at < before, orphan)).rowcount


def _count(connection: sa.Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    return connection.scalar(sa.select(sa.func.count()).select_from(table).where(where)) or 0


def _delete(connection: sa.Connection, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    return connection.execute(sa.delete(table).where(where)).rowcount
