"""GET /api/v1/messages and /api/v1/messages/{id}: message history, filtered and paged, and one message in full.

History does not know leases, the queue does: "processing" is a message history holds as queued
that a delivery runner has leased now, and "queued" is the rest of history's queued ones. A message
the queue holds and history does not (history off, or behind) is still shown, from its queue record.
"""

from __future__ import annotations

import datetime
import time
from typing import Annotated, Literal

import anyio.to_thread
import msgspec
import sqlalchemy as sa
from starlette.responses import Response

from fastmta.admin import history, paging
from fastmta.admin.bodies import body_of
from fastmta.admin.endpoint import Call, Endpoint, json_response
from fastmta.admin.errors import NotFound, ValidationFailed
from fastmta.admin.parts import Body, parse
from fastmta.admin.state import AdminState
from fastmta.events.records import AnyEvent
from fastmta.history import events, messages
from fastmta.history.messages import Filter, MessageRow, RecipientRow
from fastmta.history.schema import FAILED, QUEUED, SENT
from fastmta.queue.records import DELIVERED, HELD, Message
from fastmta.queue.records import FAILED as RECIPIENT_FAILED
from fastmta.queue.schedule import Scheduler
from fastmta.queue.store import CorruptRecord

PROCESSING = "processing"
Status = Literal["queued", "processing", "sent", "failed", "rejected", "deleted"]
When = Annotated[str, msgspec.Meta(description="ISO 8601 (without an offset: UTC) or seconds since the epoch")]


class MessagesQuery(msgspec.Struct):
    status: Status | None = None
    workspace_id: str | None = None
    campaign_id: str | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    recipient: str | None = msgspec.field(default=None, name="to")
    date_from: When | None = None  # received at or after
    date_to: When | None = None  # received at or before
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    # Within the 64-bit integers SQL takes, with room to spare: no history holds a billion messages.
    offset: Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)] = 0


class MessagePage(msgspec.Struct):
    items: list[MessageRow]  # newest first
    total: int  # messages matching the filters, also in X-Total-Count
    limit: int
    offset: int
    has_more: bool


class MessageDetail(msgspec.Struct):
    message: MessageRow
    recipients: list[RecipientRow]
    events: list[AnyEvent]  # its timeline, in the order things happened; empty when only the queue knows it
    body: Body | None  # while a body is kept: for now while the message is in the queue


def _seconds(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValidationFailed(f"{field}: neither ISO 8601 nor seconds since the epoch: {value!r}", field) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _leased(state: AdminState) -> set[str]:
    return Scheduler(state.store).leased(state.config.delivery.lease_time)


def _shown(row: MessageRow, leased: set[str]) -> MessageRow:
    if row.status == QUEUED and row.id in leased:
        row.status = PROCESSING
    return row


async def list_messages(call: Call) -> Response:
    query: MessagesQuery = call.query
    # The dates first: a malformed one is the client's mistake whether history is on or not.
    received_from, received_to = _seconds(query.date_from, "date_from"), _seconds(query.date_to, "date_to")
    history.engine_of(call.state)
    leased = await anyio.to_thread.run_sync(_leased, call.state)
    status = QUEUED if query.status == PROCESSING else query.status
    chosen = Filter(
        status=status, workspace_id=query.workspace_id, campaign_id=query.campaign_id, sender=query.sender,
        recipient=query.recipient, received_from=received_from, received_to=received_to,
        ids=leased if query.status == PROCESSING else None, not_ids=leased if query.status == QUEUED else (),
    )
    rows, total = await history.read(call.state, lambda connection: messages.page(connection, chosen, query.limit, query.offset))
    found = MessagePage([_shown(row, leased) for row in rows], total, query.limit, query.offset, query.offset + len(rows) < total)
    return json_response({"success": True, "data": found}, headers=paging.headers(call.request, total, query.limit, query.offset))


# The longest id history stores; LMDB would refuse a key much longer than this with an error, not a miss.
_ID_LIMIT = 64


async def show(call: Call) -> MessageDetail:
    return await detail(call.state, call.path("id"))


async def detail(state: AdminState, message_id: str) -> MessageDetail:
    """What history knows of the message, or else the queue; NotFound when neither does."""
    if len(message_id.encode()) > _ID_LIMIT:
        raise NotFound(f"no message {message_id[:_ID_LIMIT]}…: longer than any message id")
    queued, body = await anyio.to_thread.run_sync(_from_queue, state, message_id)
    leased = {message_id} if queued is not None and queued.lease_until > time.time() else set()
    recorded = None
    if state.config.history.enabled and state.database() is not None:
        recorded = await history.read(state, lambda connection: _recorded(connection, message_id))
    if recorded is not None:
        row, recipients, timeline = recorded
        return MessageDetail(_shown(row, leased), recipients, timeline, body)
    if queued is None:
        raise NotFound(f"no message {message_id} in history or in the queue")
    row, recipients = _queue_record(queued, state.store.node)
    return MessageDetail(_shown(row, leased), recipients, [], body)


def _from_queue(state: AdminState, message_id: str) -> tuple[Message | None, Body | None]:
    # A corrupt record is for GET /api/v1/queue to report; history may still know the message.
    try:
        queued = state.store.get(message_id)
    except CorruptRecord:
        queued = None
    raw = body_of(state, message_id)
    return queued, None if raw is None else parse(raw)


def _recorded(connection: sa.Connection, message_id: str) -> tuple[MessageRow, list[RecipientRow], list[AnyEvent]] | None:
    found = messages.one(connection, message_id)
    if found is None:
        return None
    return found[0], found[1], events.timeline(connection, message_id)


_RECIPIENT_STATUS = {DELIVERED: SENT, RECIPIENT_FAILED: FAILED}


def _queue_record(message: Message, node: str) -> tuple[MessageRow, list[RecipientRow]]:
    """A message only the queue knows, in history's shape: queued until every recipient is settled."""
    addresses = list({r.address: r for r in message.recipients}.values())
    row = MessageRow(
        id=message.id, node=node, status=QUEUED, held=message.state == HELD, sender=message.sender,
        recipients=len(addresses), size=message.size, client_ip=message.client_ip, helo=message.helo,
        auth_user=message.auth_user, listener=message.listener, subject=message.subject,
        header_message_id=message.message_id, header_from=message.header_from, header_to=message.header_to,
        workspace_id=message.workspace_id, campaign_id=message.campaign_id, user_id=message.user_id,
        received_at=message.received_at, updated_at=max([message.received_at] + [r.updated_at for r in addresses]),
        # The queue keeps no count of deferrals; the recipients' replies and attempts say what it knows.
        settled_at=None, last_reply="", attempts=message.attempts, deferred=0,
    )
    recipients = [
        RecipientRow(address=r.address, status=_RECIPIENT_STATUS.get(r.state, QUEUED), attempts=r.attempts,
                     deferred=0, last_reply=r.last_reply, remote_host=r.remote_host, updated_at=r.updated_at)
        for r in addresses
    ]
    return row, recipients


ENDPOINTS = [
    Endpoint("GET", "/api/v1/messages", "Message history, newest first, with X-Total-Count and Link headers", list_messages, "messages", query=MessagesQuery, returns=MessagePage, errors=(503,)),
    Endpoint("GET", "/api/v1/messages/{id}", "One message: its recipients, its timeline and, while kept, its body", show, "messages", returns=MessageDetail, errors=(404,)),
]
