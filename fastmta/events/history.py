"""The history sink: events into SQL, as a timeline (events) and as the state of each message and recipient.

Idempotent by event id: an event already in `events` is skipped whole, so a batch delivered again
(after a crash between this commit and the outbox cursor's) changes nothing, counters included.
Events come in outbox order, so a message's received event precedes its outcomes. Outcomes of a
message whose received event history never saw (it was queued before any events process ran)
stay in the timeline only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

from fastmta.config import Config
from fastmta.events.records import (
    TAGS,
    AnyEvent,
    Attempted,
    AuthFailed,
    Deferred,
    DelayNotified,
    Deleted,
    Delivered,
    Entry,
    Event,
    Expired,
    Failed,
    Held,
    Received,
    Rejected,
    Released,
    Retried,
    SpamDetected,
    VirusDetected,
)
from fastmta.history import cleanup, db, dead_letters
from fastmta.history.schema import DELETED, FAILED, QUEUED, REJECTED, SENT, events, messages, recipients

log = logging.getLogger("fastmta.events")

# How often retention ([history] keep) runs: each run removes about this much time's worth of rows.
_PRUNE_SECONDS = 3600.0
# Ids per IN (...) lookup: well under SQLite's limit on bound parameters.
_LOOKUP_CHUNK = 500


class HistorySink:
    name = "history"

    def __init__(self, engine: sa.Engine, keep: float) -> None:
        self.engine = engine
        self.keep = keep
        self.undecodable = 0  # outbox entries skipped because they could not be decoded
        self.clock: Callable[[], float] = time.time  # the time events are stored at (events.stored_at)
        self._prune_at = 0.0  # retention runs with the first batch, then hourly
        # The last outbox entry this sink committed. The outbox offers entries in order and again only
        # after a failure (rolled back here) or a restart, so a batch that starts past it is all new.
        self._committed_through = -1
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = {table: dialect.insert(table).on_conflict_do_nothing() for table in (events, messages, recipients)}
        self._compiled: dict[UpdateBase, SQLCompiler] = {}

    @classmethod
    def configured(cls, config: Config) -> HistorySink:
        """[history], migrated to the newest schema before the first batch is written."""
        return cls(db.for_writing(config), config.history.keep)

    def deliver(self, batch: Sequence[Entry]) -> None:
        db.ready(self.engine)
        decoded = [(entry, event) for entry in batch if (event := entry.event) is not None]
        if len(decoded) < len(batch):
            skipped = [entry.sequence for entry in batch if entry.event is None]
            self.undecodable += len(skipped)
            log.warning("history: outbox entries %s cannot be decoded; skipped", ", ".join(map(str, skipped)))
        fresh_only = bool(batch) and self._committed_through >= 0 and batch[0].sequence > self._committed_through
        try:
            with self.engine.begin() as connection:
                known = set() if fresh_only else self._known(connection, [event.id for _, event in decoded])
                fresh: list[tuple[Entry, AnyEvent]] = []
                for entry, event in decoded:
                    if event.id not in known:
                        known.add(event.id)
                        fresh.append((entry, event))
                if fresh:
                    self._write(connection, fresh)
        except Exception:
            # The commit may have reached the database before the failure reached us: the batch
            # offered again is looked up, not taken for new (its counters would count twice).
            self._committed_through = -1
            raise
        if batch:
            self._committed_through = batch[-1].sequence
        if self.clock() >= self._prune_at:
            self.prune()
            self._prune_at = self.clock() + _PRUNE_SECONDS

    def _write(self, connection: sa.Connection, fresh: list[tuple[Entry, AnyEvent]]) -> None:
        # One statement per kind of row for the whole batch: per-event statements cost ten times as
        # much. New rows first (a message's received event precedes its outcomes, so they find it),
        # then the changes in outbox order, a run of outcomes at a time.
        stored_at = int(self.clock() * 1_000_000)
        self._many(connection, self._insert[events], [_event_row(entry, event, stored_at) for entry, event in fresh])
        arrivals = [event for _, event in fresh if isinstance(event, Received | Rejected)]
        self._many(connection, self._insert[messages], [_arrival_row(event) for event in arrivals])
        addressed = [row for event in arrivals if isinstance(event, Received) for row in _recipient_rows(event)]
        self._many(connection, self._insert[recipients], addressed)
        outcomes: list[Attempted] = []
        for _, event in fresh:
            if isinstance(event, Delivered | Failed | Expired | Deferred):
                outcomes.append(event)
                continue
            self._apply_outcomes(connection, outcomes)
            outcomes = []
            _apply_change(connection, event)
        self._apply_outcomes(connection, outcomes)

    def prune(self, now: float | None = None) -> int:
        """Removes what is older than `keep`: settled messages unchanged since, with their recipients and
        events, events of no message, dead letters; returns the rows removed. Queued (and held) mail stays."""
        cutoff = (self.clock() if now is None else now) - self.keep
        with self.engine.begin() as connection:
            settled = cleanup.remove_settled(connection, cleanup.SETTLED, cutoff, dry_run=False)
            removed = settled.messages + settled.recipients + settled.events
            removed += cleanup.remove_orphan_events(connection, cutoff)
            removed += dead_letters.remove_older(connection, cutoff)
        return removed

    def close(self) -> None:
        self.engine.dispose()

    def _many(self, connection: sa.Connection, statement: UpdateBase, rows: list[dict[str, Any]]) -> None:
        """One statement for many rows, compiled once and handed to the driver's executemany.

        SQLAlchemy's own executemany processes every parameter of every row in Python, which cost
        more than the database's work (measured: 30 of 66 µs per event); the values here are plain
        (str, int, float, bool, None, JSON already encoded), so they need none of it.
        """
        if not rows:
            return
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = statement.compile(dialect=self.engine.dialect)
        # The statement's own values (status == 'queued') join each row's.
        own = {name: value for name, value in compiled.params.items() if name not in rows[0]}
        if own:
            rows = [row | own for row in rows]
        names = compiled.positiontup
        parameters: list[Any] = rows
        if names:
            values = itemgetter(*names)
            parameters = [values(row) for row in rows] if len(names) > 1 else [(values(row),) for row in rows]
        connection.exec_driver_sql(str(compiled), parameters)

    def _apply_outcomes(self, connection: sa.Connection, outcomes: list[Attempted]) -> None:
        """Delivery outcomes, in order: each recipient's, then the state of each message they touched."""
        if not outcomes:
            return
        self._many(connection, _RECIPIENT_OUTCOME, [
            {"b_message_id": e.message_id, "b_address": e.recipient, "b_status": _OUTCOME_STATUS[type(e)],
             "b_attempts": e.attempts, "b_deferred": int(isinstance(e, Deferred)), "b_reply": e.reply,
             "b_remote_host": e.remote_host, "b_at": e.at}
            for e in outcomes
        ])  # fmt: skip
        latest: dict[str, Attempted] = {}
        deferrals: dict[str, int] = {}
        most_attempts: dict[str, int] = {}
        for e in outcomes:
            latest[e.message_id] = e
            deferrals[e.message_id] = deferrals.get(e.message_id, 0) + int(isinstance(e, Deferred))
            most_attempts[e.message_id] = max(most_attempts.get(e.message_id, 0), e.attempts)
        # The message is settled when no recipient is left queued: failed if any failed, sent otherwise.
        queued, failed = _open_and_failed(connection, list(latest))
        changes = []
        for message_id, last in latest.items():
            status = QUEUED if message_id in queued else FAILED if message_id in failed else SENT
            changes.append({
                "b_id": message_id, "b_status": status, "b_settled_at": None if status == QUEUED else last.at,
                "b_at": last.at, "b_reply": last.reply, "b_deferred": deferrals[message_id],
                "b_attempts": most_attempts[message_id],
            })  # fmt: skip
        self._many(connection, _MESSAGE_OUTCOME, changes)

    def _known(self, connection: sa.Connection, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start:start + _LOOKUP_CHUNK]
            found.update(connection.scalars(sa.select(events.c.id).where(events.c.id.in_(chunk))))
        return found

# The statements run once per batch with a list of parameters: bound names differ from column names,
# which SQLAlchemy reserves for the SET clause.
_RECIPIENT_OUTCOME = (
    sa.update(recipients)
    .where(recipients.c.message_id == sa.bindparam("b_message_id"), recipients.c.address == sa.bindparam("b_address"))
    .values(
        status=sa.bindparam("b_status"), attempts=sa.bindparam("b_attempts"),
        deferred=recipients.c.deferred + sa.bindparam("b_deferred"), last_reply=sa.bindparam("b_reply"),
        remote_host=sa.bindparam("b_remote_host"), updated_at=sa.bindparam("b_at"),
    )
)
# A deleted message stays deleted whatever attempt finishes after the delete.
_MESSAGE_OUTCOME = (
    sa.update(messages)
    .where(messages.c.id == sa.bindparam("b_id"), messages.c.status == QUEUED)
    .values(
        status=sa.bindparam("b_status"), settled_at=sa.bindparam("b_settled_at"), updated_at=sa.bindparam("b_at"),
        last_reply=sa.bindparam("b_reply"), deferred=messages.c.deferred + sa.bindparam("b_deferred"),
        attempts=sa.case(
            (messages.c.attempts < sa.bindparam("b_attempts"), sa.bindparam("b_attempts")), else_=messages.c.attempts
        ),
    )
)


_OUTCOME_STATUS: dict[type[Attempted], str] = {Delivered: SENT, Deferred: QUEUED, Failed: FAILED, Expired: FAILED}


def _open_and_failed(connection: sa.Connection, message_ids: list[str]) -> tuple[set[str], set[str]]:
    """Of these messages, those with a recipient still queued, and those with one failed."""
    queued: set[str] = set()
    failed: set[str] = set()
    for start in range(0, len(message_ids), _LOOKUP_CHUNK):
        chunk = message_ids[start:start + _LOOKUP_CHUNK]
        found = connection.execute(
            sa.select(recipients.c.message_id, recipients.c.status)
            .where(recipients.c.message_id.in_(chunk), recipients.c.status.in_((QUEUED, FAILED)))
            .distinct()
        )
        for message_id, status in found:
            (queued if status == QUEUED else failed).add(message_id)
    return queued, failed


def _apply_change(connection: sa.Connection, event: AnyEvent) -> None:
    """A change that is not a delivery outcome: rare (operators' actions, notices), so one statement each."""
    match event:
        case Deleted():
            # Kept, not removed: what an operator did to a message is what history is asked about, and
            # the recipients still queued were never delivered (a removed row would read as never sent).
            connection.execute(
                sa.update(recipients)
                .where(recipients.c.message_id == event.message_id, recipients.c.status == QUEUED)
                .values(status=DELETED, updated_at=event.at)
            )
            connection.execute(
                sa.update(messages).where(messages.c.id == event.message_id, messages.c.status == QUEUED)
                .values(status=DELETED, settled_at=event.at, updated_at=event.at)
            )
        case Held() | Released():
            _touch(connection, event, held=isinstance(event, Held))
        case DelayNotified() | Retried():
            _touch(connection, event)
        case Received() | Rejected() | AuthFailed() | SpamDetected() | VirusDetected():
            pass  # rows of their own (inserted with the batch), about a client, or in the timeline only


def _touch(connection: sa.Connection, event: Event, **values: Any) -> None:
    connection.execute(sa.update(messages).where(messages.c.id == event.message_id).values(updated_at=event.at, **values))


def _arrival_row(event: Received | Rejected) -> dict[str, Any]:
    if isinstance(event, Received):
        return _message_row(
            event, QUEUED, sender=event.sender, recipients=len(set(event.recipients)), size=event.size,
            client_ip=event.client_ip, helo=event.helo, auth_user=event.auth_user, listener=event.listener,
            subject=event.subject, header_message_id=event.header_message_id, header_from=event.header_from,
            header_to=event.header_to, workspace_id=event.workspace_id, campaign_id=event.campaign_id,
            user_id=event.user_id,
        )
    # A refusal queued nothing, yet GET /api/v1/messages?status=rejected lists it among messages with the
    # same filters (sender, client, time): so it is a messages row too, keyed by its event id, settled
    # at once, with the refused recipient (if the refusal was of one) counted.
    return _message_row(
        event, REJECTED, message_id=event.id, settled_at=event.at, last_reply=event.reply, sender=event.sender,
        recipients=int(bool(event.recipient)), client_ip=event.client_ip, helo=event.helo,
        auth_user=event.auth_user, listener=event.listener,
    )


def _recipient_rows(event: Received) -> list[dict[str, Any]]:
    return [
        {"message_id": event.message_id, "address": address, "status": QUEUED, "attempts": 0, "deferred": 0,
         "last_reply": "", "remote_host": "", "updated_at": event.at}
        for address in dict.fromkeys(event.recipients)
    ]  # fmt: skip


def _event_row(entry: Entry, event: AnyEvent, stored_at: int) -> dict[str, Any]:
    # A refusal's own messages row is keyed by its event id (see _arrival_row).
    message_id = event.id if isinstance(event, Rejected) else event.message_id or None
    return {
        "id": event.id, "seq": entry.sequence, "type": TAGS[type(event)], "at": event.at, "node": event.node,
        "message_id": message_id, "recipient": event.recipient, "data": entry.json().decode(), "stored_at": stored_at,
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
