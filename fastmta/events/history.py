"""The history sink: events into SQL, as a timeline (events) and as the state of each message and recipient.

Idempotent by event id: an event already in `events` is skipped whole, so a batch delivered again
(after a crash between this commit and the outbox cursor's) changes nothing, counters included.
Events come in outbox order, so a message's received event precedes its outcomes. Outcomes of a
message whose received event history never saw (it was queued before any events process ran)
stay in the timeline only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fastmta.config import Config
from fastmta.events.records import (
    AnyEvent,
    Attempted,
    AuthFailed,
    Deferred,
    DelayNotified,
    Deleted,
    Delivered,
    Event,
    Expired,
    Failed,
    Held,
    Received,
    Rejected,
    Released,
    Retried,
)
from fastmta.history import db
from fastmta.history.schema import DELETED, FAILED, QUEUED, REJECTED, SENT, events, messages, recipients

# Ids per IN (...) lookup: well under SQLite's limit on bound parameters.
_LOOKUP_CHUNK = 500


class HistorySink:
    name = "history"

    def __init__(self, engine: sa.Engine, keep: float) -> None:
        self.engine = engine
        self.keep = keep
        self.undecodable = 0  # outbox entries skipped because they could not be decoded
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    @classmethod
    def configured(cls, config: Config) -> HistorySink:
        """Opens [history] and migrates it to the newest schema."""
        if not config.history.url:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        engine = db.engine(db.url(config))
        db.migrate(engine)
        return cls(engine, config.history.keep)

    def deliver(self, batch: Sequence[tuple[int, AnyEvent | None]]) -> None:
        decoded = [(sequence, event) for sequence, event in batch if event is not None]
        self.undecodable += len(batch) - len(decoded)
        with self.engine.begin() as connection:
            known = self._known(connection, [event.id for _, event in decoded])
            fresh: list[tuple[int, AnyEvent]] = []
            for sequence, event in decoded:
                if event.id not in known:
                    known.add(event.id)
                    fresh.append((sequence, event))
            if not fresh:
                return
            connection.execute(
                self._dialect.insert(events).on_conflict_do_nothing(), [_event_row(seq, event) for seq, event in fresh]
            )
            for _, event in fresh:
                self._apply(connection, event)

    def prune(self, now: float | None = None) -> int:
        """Removes messages unchanged for `keep`, with their recipients and events; returns the rows removed."""
        cutoff = (time.time() if now is None else now) - self.keep
        old = sa.select(messages.c.id).where(messages.c.updated_at < cutoff)
        with self.engine.begin() as connection:
            removed = connection.execute(sa.delete(recipients).where(recipients.c.message_id.in_(old))).rowcount
            removed += connection.execute(sa.delete(messages).where(messages.c.updated_at < cutoff)).rowcount
            # A kept message keeps its whole timeline, however old its first events are.
            orphan = ~sa.exists().where(messages.c.id == events.c.message_id)
            removed += connection.execute(sa.delete(events).where(events.c.at < cutoff, orphan)).rowcount
        return removed

    def close(self) -> None:
        self.engine.dispose()

    def _known(self, connection: sa.Connection, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start:start + _LOOKUP_CHUNK]
            found.update(connection.scalars(sa.select(events.c.id).where(events.c.id.in_(chunk))))
        return found

    def _apply(self, connection: sa.Connection, event: AnyEvent) -> None:
        match event:
            case Received():
                self._received(connection, event)
            case Rejected():
                self._rejected(connection, event)
            case Delivered() | Failed() | Expired() | Deferred():
                self._attempted(connection, event)
            case Deleted():
                self._deleted(connection, event)
            case Held() | Released():
                _touch(connection, event, held=isinstance(event, Held))
            case DelayNotified() | Retried():
                _touch(connection, event)
            case AuthFailed():
                pass  # about a client, not a message: the timeline has it

    def _received(self, connection: sa.Connection, event: Received) -> None:
        addresses = list(dict.fromkeys(event.recipients))
        connection.execute(
            self._dialect.insert(messages).on_conflict_do_nothing(),
            _message_row(event, QUEUED, sender=event.sender, recipients=len(addresses), size=event.size,
                         client_ip=event.client_ip, helo=event.helo, auth_user=event.auth_user, listener=event.listener,
                         subject=event.subject, header_message_id=event.header_message_id,
                         header_from=event.header_from, header_to=event.header_to, workspace_id=event.workspace_id,
                         campaign_id=event.campaign_id, user_id=event.user_id),
        )
        if addresses:
            connection.execute(
                self._dialect.insert(recipients).on_conflict_do_nothing(),
                [
                    {"message_id": event.message_id, "address": address, "status": QUEUED, "attempts": 0,
                     "deferred": 0, "last_reply": "", "remote_host": "", "updated_at": event.at}
                    for address in addresses
                ],
            )

    def _rejected(self, connection: sa.Connection, event: Rejected) -> None:
        # A refusal queued nothing, yet GET /api/v1/messages?status=rejected lists it among messages with
        # the same filters (sender, client, time): so it is a messages row too, keyed by its event id,
        # settled at once, with the refused recipient (if the refusal was of one) counted.
        connection.execute(
            self._dialect.insert(messages).on_conflict_do_nothing(),
            _message_row(event, REJECTED, message_id=event.id, settled_at=event.at, last_reply=event.reply,
                         sender=event.sender, recipients=int(bool(event.recipient)), client_ip=event.client_ip,
                         helo=event.helo, auth_user=event.auth_user, listener=event.listener),
        )

    def _attempted(self, connection: sa.Connection, event: Attempted) -> None:
        deferred = isinstance(event, Deferred)
        status = QUEUED if deferred else SENT if isinstance(event, Delivered) else FAILED
        this = (recipients.c.message_id == event.message_id) & (recipients.c.address == event.recipient)
        connection.execute(
            sa.update(recipients).where(this).values(
                status=status, attempts=event.attempts, deferred=recipients.c.deferred + int(deferred),
                last_reply=event.reply, remote_host=event.remote_host, updated_at=event.at,
            )
        )
        # The message is settled when no recipient is left queued: failed if any failed, sent otherwise.
        counts = {
            status: count
            for status, count in connection.execute(
                sa.select(recipients.c.status, sa.func.count())
                .where(recipients.c.message_id == event.message_id)
                .group_by(recipients.c.status)
            )
        }
        settled = QUEUED if counts.get(QUEUED) else FAILED if counts.get(FAILED) else SENT
        connection.execute(
            sa.update(messages).where(messages.c.id == event.message_id, messages.c.status == QUEUED).values(
                status=settled, settled_at=None if settled == QUEUED else event.at, updated_at=event.at,
                last_reply=event.reply, deferred=messages.c.deferred + int(deferred),
                attempts=sa.case((messages.c.attempts < event.attempts, event.attempts), else_=messages.c.attempts),
            )
        )

    def _deleted(self, connection: sa.Connection, event: Deleted) -> None:
        # Kept, not removed: what an operator did to a message is what history is asked about, and the
        # recipients still queued were never delivered (a removed row would read as never sent at all).
        connection.execute(
            sa.update(recipients)
            .where(recipients.c.message_id == event.message_id, recipients.c.status == QUEUED)
            .values(status=DELETED, updated_at=event.at)
        )
        connection.execute(
            sa.update(messages).where(messages.c.id == event.message_id, messages.c.status == QUEUED)
            .values(status=DELETED, settled_at=event.at, updated_at=event.at)
        )


def _touch(connection: sa.Connection, event: Event, **values: Any) -> None:
    connection.execute(sa.update(messages).where(messages.c.id == event.message_id).values(updated_at=event.at, **values))


def _event_row(sequence: int, event: AnyEvent) -> dict[str, Any]:
    # A refusal's own messages row is keyed by its event id (see _rejected).
    message_id = event.id if isinstance(event, Rejected) else event.message_id or None
    return {
        "id": event.id, "seq": sequence, "type": type(event).__struct_config__.tag, "at": event.at, "node": event.node,
        "message_id": message_id, "recipient": event.recipient, "data": event,
    }


def _message_row(event: Event, status: str, **values: Any) -> dict[str, Any]:
    """A messages row with every column given: what `values` lacks is empty."""
    row: dict[str, Any] = {
        "id": event.message_id, "node": event.node, "status": status, "held": False, "sender": "", "recipients": 0,
        "size": 0, "client_ip": "", "helo": "", "auth_user": "", "listener": "", "subject": "",
        "header_message_id": "", "header_from": "", "header_to": "", "workspace_id": "", "campaign_id": "",
        "user_id": "", "received_at": event.at, "updated_at": event.at, "settled_at": None, "last_reply": "",
        "attempts": 0, "deferred": 0,
    }
    if "message_id" in values:
        row["id"] = values.pop("message_id")
    row.update(values)
    return row
