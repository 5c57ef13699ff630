"""Queries of message history: a filtered, paged list newest first, and one message with its recipients.

Every list filter maps onto an index of schema.py (status, workspace, campaign and sender each lead
an index whose second column is received_at, the sort order); `total` counts with the same filters.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import sqlalchemy as sa

from fastmta.history.schema import messages, recipients

T = TypeVar("T")


class MessageRow(msgspec.Struct, kw_only=True):
    """A message as history holds it; `recipients` counts its distinct recipient addresses."""

    id: str
    node: str
    status: str
    held: bool
    sender: str
    recipients: int
    size: int
    client_ip: str
    helo: str
    auth_user: str
    listener: str
    subject: str
    header_message_id: str
    header_from: str
    header_to: str
    workspace_id: str
    campaign_id: str
    user_id: str
    received_at: float
    updated_at: float
    settled_at: float | None
    last_reply: str
    attempts: int
    deferred: int


class RecipientRow(msgspec.Struct, kw_only=True):
    address: str
    status: str
    attempts: int
    deferred: int
    last_reply: str
    remote_host: str
    updated_at: float


@dataclass(frozen=True)
class Filter:
    """What GET /api/v1/messages may ask for; None is "any". `ids` and `not_ids` restrict to or exclude
    given message ids (the queue's leases decide "processing", which history does not know)."""

    status: str | None = None
    workspace_id: str | None = None
    campaign_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    received_from: float | None = None
    received_to: float | None = None
    ids: Collection[str] | None = None
    not_ids: Collection[str] = ()


def _where(chosen: Filter) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    for column, value in (
        (messages.c.status, chosen.status),
        (messages.c.workspace_id, chosen.workspace_id),
        (messages.c.campaign_id, chosen.campaign_id),
        (messages.c.sender, chosen.sender),
    ):
        if value is not None:
            conditions.append(column == value)
    if chosen.recipient is not None:
        # The recipients primary key (message_id, address) answers this per message.
        conditions.append(
            sa.exists().where(recipients.c.message_id == messages.c.id, recipients.c.address == chosen.recipient)
        )
    if chosen.received_from is not None:
        conditions.append(messages.c.received_at >= chosen.received_from)
    if chosen.received_to is not None:
        conditions.append(messages.c.received_at <= chosen.received_to)
    if chosen.ids is not None:
        conditions.append(messages.c.id.in_(list(chosen.ids)))
    if chosen.not_ids:
        conditions.append(messages.c.id.not_in(list(chosen.not_ids)))
    return conditions


def page(connection: sa.Connection, chosen: Filter, limit: int, offset: int) -> tuple[list[MessageRow], int]:
    """The messages matching `chosen`, newest first, from `offset`; and how many match in all."""
    conditions = _where(chosen)
    total = connection.scalar(sa.select(sa.func.count()).select_from(messages).where(*conditions)) or 0
    rows = connection.execute(
        sa.select(messages).where(*conditions)
        .order_by(messages.c.received_at.desc(), messages.c.id.desc())
        .limit(limit).offset(offset)
    ).mappings()
    return [_row(row, MessageRow) for row in rows], total


def one(connection: sa.Connection, message_id: str) -> tuple[MessageRow, list[RecipientRow]] | None:
    """The message and its recipients in address order, or None when history has no such message."""
    row = connection.execute(sa.select(messages).where(messages.c.id == message_id)).mappings().first()
    if row is None:
        return None
    found = connection.execute(
        sa.select(recipients).where(recipients.c.message_id == message_id).order_by(recipients.c.address)
    ).mappings()
    return _row(row, MessageRow), [_row(r, RecipientRow) for r in found]


def _row(row: sa.RowMapping, shape: type[T]) -> T:
    # Column names come as a str subclass, which msgspec does not take as keys. Not strict: SQLite hands
    # booleans back as 0 and 1.
    return msgspec.convert({str(name): value for name, value in row.items()}, shape, strict=False)
