"""The queue: list with status/limit/offset, show, retry, delete, hold, release, flush."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from typing import Annotated, Any, Literal

import anyio.to_thread
import msgspec

from fastmta.access.roles import Role
from fastmta.admin.endpoint import Call, Endpoint, Outcome
from fastmta.admin.errors import Conflict, NotFound
from fastmta.queue.records import DEFERRED, HELD, Message, to_document
from fastmta.queue.store import CorruptRecord, QueueStore

Status = Literal["active", "held", "deferred", "corrupt"]
# LMDB refuses a key much longer than this with an error, not a miss; no message id is near it.
MessageId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Text = Annotated[str, msgspec.Meta(max_length=320)]


class QueueQuery(msgspec.Struct):
    status: Status | None = None
    sender: Text | None = None  # part of the envelope sender, in any case
    recipient: Text | None = None  # part of a recipient's address, in any case
    domain: Text | None = None  # a recipient's domain, whole, in any case
    workspace_id: Text | None = None
    older_than: Annotated[int, msgspec.Meta(ge=0)] | None = None  # seconds since it was received, at least
    newer_than: Annotated[int, msgspec.Meta(ge=0)] | None = None  # and at most
    # The page starts past this id (next_after of the page before): deep pages cost what the first one does.
    after: MessageId | None = None
    # total counts every match, a read of the whole queue; false reads no further than the page.
    count: bool = True
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


class QueueEntry(msgspec.Struct):
    id: str
    status: Status
    sender: str = ""
    recipients: list[str] = []
    size: int = 0
    received_at: float = 0.0
    next_attempt: float = 0.0
    attempts: int = 0
    subject: str = ""
    error: str = ""
    workspace_id: str = ""


class QueuePage(msgspec.Struct):
    items: list[QueueEntry]
    total: int | None  # entries matching the filters (past `after`); null when count is false
    limit: int
    offset: int
    has_more: bool = False
    next_after: str | None = None  # `after` for the next page, while there is one


class Deleted(msgspec.Struct):
    id: str
    deleted: bool


class Flushed(msgspec.Struct):
    scheduled: int


def status_of(message: Message) -> Status:
    if message.state == HELD:
        return "held"
    return "deferred" if any(r.state == DEFERRED for r in message.recipients) else "active"


def _entry(found: Message | CorruptRecord) -> QueueEntry:
    if isinstance(found, CorruptRecord):
        return QueueEntry(found.message_id, "corrupt", error=found.reason)
    return QueueEntry(
        found.id,
        status_of(found),
        found.sender,
        [r.address for r in found.recipients],
        found.size,
        found.received_at,
        found.next_attempt,
        found.attempts,
        found.subject,
        workspace_id=found.workspace_id,
    )


def _matcher(query: QueueQuery, now: float) -> Callable[[Message | CorruptRecord], bool]:
    sender = (query.sender or "").lower()
    recipient = (query.recipient or "").lower()
    domain = (query.domain or "").lower().rstrip(".")
    by_message = sender or recipient or domain or query.workspace_id or query.older_than is not None or query.newer_than is not None

    def matches(found: Message | CorruptRecord) -> bool:
        if isinstance(found, CorruptRecord):
            # Nothing is known of it but its id: it matches no filter but its status.
            return not by_message and query.status in (None, "corrupt")
        if query.status and status_of(found) != query.status:
            return False
        addresses = [r.address.lower() for r in found.recipients]
        age = now - found.received_at
        return (
            sender in found.sender.lower()
            and (not recipient or any(recipient in address for address in addresses))
            and (not domain or any(address.rpartition("@")[2] == domain for address in addresses))
            and (not query.workspace_id or found.workspace_id == query.workspace_id)
            and (query.older_than is None or age >= query.older_than)
            and (query.newer_than is None or age <= query.newer_than)
        )

    return matches


def page(store: QueueStore, query: QueueQuery, now: float | None = None) -> QueuePage:
    """One page of the queue, oldest first. It reads past the page only to count (`count`), or while
    too few records match to fill it."""
    matches = _matcher(query, time.time() if now is None else now)
    end = query.offset + query.limit
    items: list[QueueEntry] = []
    matched = 0
    with closing(store.scan(query.after)) as records:
        for found in records:
            if not matches(found):
                continue
            if query.offset <= matched < end:
                items.append(_entry(found))
            matched += 1
            if matched > end and not query.count:
                break
    has_more = matched > end
    return QueuePage(
        items,
        matched if query.count else None,
        query.limit,
        query.offset,
        has_more,
        items[-1].id if has_more and items else None,
    )


def _schedule(message: Message) -> dict[str, Any]:
    return {"state": message.state, "next_attempt": message.next_attempt}


def _existing(store: QueueStore, message_id: str) -> Message:
    try:
        message = store.get(message_id)
    except CorruptRecord as corrupt:
        raise Conflict(f"message {message_id} is corrupt: {corrupt.reason}") from None
    if message is None:
        raise NotFound(f"no message {message_id} in the queue")
    return message


async def list_queue(call: Call) -> QueuePage:
    # A scan of a large queue takes a while: in a thread, so /health keeps answering.
    return await anyio.to_thread.run_sync(page, call.state.store, call.query)


async def show(call: Call) -> dict[str, Any]:
    return to_document(_existing(call.state.store, call.path("id")))


async def retry(call: Call) -> Outcome:
    state, message_id = call.state, call.path("id")
    before = _existing(state.store, message_id)
    if before.state == HELD:
        raise Conflict(f"message {message_id} is held: release it instead")
    await anyio.to_thread.run_sync(state.make_due, [message_id])
    after = _existing(state.store, message_id)
    return Outcome(to_document(after), message_id, _schedule(before), _schedule(after))


async def delete(call: Call) -> Outcome:
    store, message_id = call.state.store, call.path("id")
    before = _existing(store, message_id)
    if not await anyio.to_thread.run_sync(store.delete, message_id):
        raise NotFound(f"no message {message_id} in the queue")
    return Outcome(Deleted(message_id, True), message_id, to_document(before))


def _holding(held: bool):  # type: ignore[no-untyped-def]
    async def change(call: Call) -> Outcome:
        store, message_id = call.state.store, call.path("id")
        before = _existing(store, message_id)
        if (before.state == HELD) == held:
            raise Conflict(f"message {message_id} is {'already held' if held else 'not held'}")
        after = await anyio.to_thread.run_sync(store.set_held, message_id, held)
        if after is None:
            raise NotFound(f"no message {message_id} in the queue")
        if not held:
            call.state.wake_runners()
        return Outcome(to_document(after), message_id, _schedule(before), _schedule(after))

    return change


async def flush(call: Call) -> Outcome:
    scheduled = await anyio.to_thread.run_sync(call.state.make_due, None)
    return Outcome(Flushed(scheduled), "queue", after={"scheduled": scheduled})


_ERRORS = (404, 409)
ENDPOINTS = [
    Endpoint("GET", "/api/v1/queue", "Queued messages, oldest first", list_queue, "queue", query=QueueQuery, returns=QueuePage),
    Endpoint("POST", "/api/v1/queue/flush", "Make all deferred mail due now", flush, "queue", role=Role.operator, returns=Flushed, action="queue.flush"),
    Endpoint("GET", "/api/v1/queue/{id}", "One message's record", show, "queue", returns=Message, errors=_ERRORS),
    Endpoint("DELETE", "/api/v1/queue/{id}", "Remove a message without delivering it", delete, "queue", role=Role.operator, returns=Deleted, errors=_ERRORS, action="queue.delete"),
    Endpoint("POST", "/api/v1/queue/{id}/retry", "Make a deferred message due now", retry, "queue", role=Role.operator, returns=Message, errors=_ERRORS, action="queue.retry"),
    Endpoint("POST", "/api/v1/queue/{id}/hold", "Keep a message out of delivery", _holding(True), "queue", role=Role.operator, returns=Message, errors=_ERRORS, action="queue.hold"),
    Endpoint("POST", "/api/v1/queue/{id}/release", "Put a held message back, due now", _holding(False), "queue", role=Role.operator, returns=Message, errors=_ERRORS, action="queue.release"),
]
