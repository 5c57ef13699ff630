"""Events: every change of a message's life as the outbox stores it and the sinks receive it, with their ids.

An event is written in the same LMDB transaction as the change it describes, so it exists exactly
when the change does. Events follow the evolution rules of queue records (queue/records.py): a
field is never renamed, removed or retyped; a new field goes last with a default; decoding ignores
unknown fields; a new event type is a new tag, and a reader that does not know a tag skips it.
"""

from __future__ import annotations

import os
import random
import time
import typing

import msgspec

from fastmta._ext import received_json
from fastmta.events import ids
from fastmta.events.names import EVENT_TYPES
from fastmta.queue.records import Message, Recipient


class Event(msgspec.Struct, tag_field="type", kw_only=True):
    """What every event carries. `id` is unique across restarts and nodes; receivers deduplicate on it.

    Every field is written, defaults included: webhook receivers are sent the event as it is
    encoded, and find every field of its type there.
    """

    id: str
    at: float
    node: str
    message_id: str = ""
    recipient: str = ""


class Received(Event, tag="received"):
    """A message entered the queue: from a client, or a notice (bounce, delay, success) we generated."""

    sender: str
    recipients: list[str]
    size: int
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    listener: str = ""
    tls: str = ""
    header_message_id: str = ""
    header_from: str = ""
    header_to: str = ""
    subject: str = ""
    workspace_id: str = ""
    campaign_id: str = ""
    user_id: str = ""
    priority: str = ""


class Attempted(Event, kw_only=True):
    """The outcome of a delivery attempt for one recipient."""

    reply: str = ""
    remote_host: str = ""
    attempts: int = 0
    route: str = ""


class Delivered(Attempted, tag="delivered"):
    pass


class Deferred(Attempted, tag="deferred"):
    next_attempt: float = 0.0


class Failed(Attempted, tag="failed"):
    """A permanent failure; the sender is sent a bounce unless it asked for none."""


class Expired(Attempted, tag="expired"):
    """Deferred past [delivery] max_age: a failure too."""


class DelayNotified(Attempted, tag="delay_notified"):
    """The sender was told the mail is still deferred (NOTIFY=DELAY)."""


class Deleted(Event, tag="deleted"):
    pass


class Held(Event, tag="held"):
    pass


class Released(Event, tag="released"):
    pass


class Retried(Event, tag="retried"):
    """Deferred mail made due now by an operator (retry, flush) or by ETRN."""


class Rejected(Event, tag="rejected"):
    """A refusal during the SMTP session: nothing was queued. `stage` is the command refused."""

    reply: str
    stage: str  # connect, mail, rcpt, data
    command: str = ""
    client_ip: str = ""
    helo: str = ""
    sender: str = ""
    auth_user: str = ""
    listener: str = ""


class AuthFailed(Event, tag="auth_failed"):
    """Wrong SMTP AUTH credentials."""

    client_ip: str
    username: str
    listener: str = ""


class Detected(Event, kw_only=True):
    """A scanner's finding in a message, after DATA. `message_id` is the queue id, or for a refused
    message the id of its `rejected` event; `action` is what became of it: rejected, held or tagged."""

    action: str
    client_ip: str = ""
    sender: str = ""


class SpamDetected(Detected, tag="spam_detected"):
    score: float = 0.0
    threshold: float = 0.0
    rules: list[str] = msgspec.field(default_factory=list)


class VirusDetected(Detected, tag="virus_detected"):
    virus: str = ""


AnyEvent = (
    Received | Delivered | Deferred | Failed | Expired | DelayNotified | Deleted | Held | Released | Retried | Rejected
    | AuthFailed | SpamDetected | VirusDetected
)

# JSON, the form every sink hands on (webhook bodies, history's data column): a webhook forwards
# the stored bytes without decoding them. Entries written by earlier versions are MessagePack.
EVENT_ENCODER = msgspec.json.Encoder()
EVENT_DECODER = msgspec.json.Decoder(AnyEvent)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(AnyEvent)
TAGS = {kind: str(kind.__struct_config__.tag) for kind in typing.get_args(AnyEvent)}


class Head(msgspec.Struct, gc=False):
    """What every event begins with, read without decoding the rest."""

    type: str
    id: str
    at: float


_HEAD_DECODER = msgspec.json.Decoder(Head)


class _StoredReceived(msgspec.Struct, array_like=True, gc=False):
    """A received event as the SMTP worker stores it: the message's queue record, as the worker encoded it
    for the queue anyway, with the event's time and node and what its id is made of (see received_entry).

    `id` is the id itself (as earlier versions stored it), or the writer's number (ids.new_writer) that
    the id is derived from with the entry's sequence number (ids.derived).
    """

    id: str | int
    at: float
    node: str
    record: msgspec.Raw


# The first byte of a stored received event: neither JSON ("{") nor an earlier version's MessagePack map.
_RECEIVED_MARK = b"R"
_STORED_RECEIVED_ENCODER = msgspec.msgpack.Encoder()


def received_entry(record: bytes, node: str, now: float, writer: int) -> bytes:
    """The outbox entry of a message's received event, made of its encoded queue record; `writer` is the
    number of this process's writes to the outbox (Outbox.writer) that the event's id is derived from.

    Building the event and encoding it as JSON would cost the SMTP worker three times as much, inside
    ingress; the events process does it when a sink asks (Entry.json(), compiled: fastmta/_ext/received.pyx).
    The record evolves by its own rules (queue/records.py), which a reader of the entry follows too.
    """
    stored = _StoredReceived(writer, now, node, msgspec.Raw(record))
    return _RECEIVED_MARK + _STORED_RECEIVED_ENCODER.encode(stored)


_NOT_MADE = ("", 0.0, b"")  # Entry._received before received_json() was asked


class Entry:
    """An outbox entry as the sinks get it: its sequence number and stored bytes; its head, JSON and event are
    made on first use. A sink that needs only the head and the JSON (a webhook) never decodes an event
    stored as JSON, and gets a received event's JSON made straight from the stored record (compiled: the
    events process does this for every message received). An entry that cannot be decoded, or whose type
    this version does not know, has no event and no head (None): a reader skips it."""

    __slots__ = ("sequence", "raw", "_event", "_decoded", "_received")

    def __init__(self, sequence: int, raw: bytes) -> None:
        self.sequence = sequence
        self.raw = raw
        self._event: AnyEvent | None = None
        self._decoded = False
        # A received event stored as its record: its id, time and JSON once made, None if it does not decode.
        self._received: tuple[str, float, bytes] | None = _NOT_MADE

    @classmethod
    def of(cls, sequence: int, event: Event) -> Entry:
        return cls(sequence, EVENT_ENCODER.encode(event))

    @property
    def event(self) -> AnyEvent | None:
        if not self._decoded:
            self._decoded = True
            try:
                self._event = self._decoded_event()
            except msgspec.DecodeError:
                self._event = None
        return self._event

    @property
    def head(self) -> Head | None:
        """The event's type, id and time."""
        mark = self.raw[:1]
        if mark == _RECEIVED_MARK:
            made = self._made_received()
            return None if made is None else Head("received", made[0], made[1])
        if mark != b"{":
            event = self.event
            return None if event is None else Head(TAGS[type(event)], event.id, event.at)
        try:
            head = _HEAD_DECODER.decode(self.raw)
        except msgspec.DecodeError:
            return None
        return head if head.type in EVENT_TYPES else None

    @property
    def stored_received(self) -> bool:
        """A received event stored as its message's record (received_entry): its JSON is made from that, compiled."""
        return self.raw[:1] == _RECEIVED_MARK

    def json(self) -> bytes:
        """The event as JSON: the stored bytes themselves, when they are JSON."""
        mark = self.raw[:1]
        if mark == b"{":
            return self.raw
        if mark == _RECEIVED_MARK and (made := self._made_received()) is not None:
            return made[2]
        return EVENT_ENCODER.encode(self.event)

    def _decoded_event(self) -> AnyEvent | None:
        mark = self.raw[:1]
        if mark == b"{":
            return EVENT_DECODER.decode(self.raw)
        if mark == _RECEIVED_MARK:
            made = self._made_received()
            return None if made is None else EVENT_DECODER.decode(made[2])
        return _MSGPACK_DECODER.decode(self.raw)

    def _made_received(self) -> tuple[str, float, bytes] | None:
        if self._received is _NOT_MADE:
            try:
                self._received = received_json(self.raw, self.sequence)
            except ValueError:
                self._received = None
        return self._received


def new_event_id(now: float | None = None) -> str:
    """A UUIDv7 of 74 random bits (see ids)."""
    return ids.uuid7(int((time.time() if now is None else now) * 1000), _random.getrandbits(74))


# Seeded from os.urandom in every process: a child must not draw what its parent or siblings draw.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def received(message: Message, node: str, now: float, event_id: str = "") -> Received:
    """The event of a message entering the queue; `event_id` is the id it was stored under, if it was."""
    return Received(
        id=event_id or new_event_id(now),
        at=now,
        node=node,
        message_id=message.id,
        sender=message.sender,
        recipients=[r.address for r in message.recipients],
        size=message.size,
        client_ip=message.client_ip,
        helo=message.helo,
        auth_user=message.auth_user,
        listener=message.listener,
        tls=message.tls,
        header_message_id=message.message_id,
        header_from=message.header_from,
        header_to=message.header_to,
        subject=message.subject,
        workspace_id=message.workspace_id,
        campaign_id=message.campaign_id,
        user_id=message.user_id,
        priority=message.priority,
    )


def about_message(kind: type[Deleted | Held | Released | Retried], message_id: str, node: str) -> Event:
    """An operator's (or ETRN's) action on a message, now."""
    now = time.time()
    return kind(id=new_event_id(now), at=now, node=node, message_id=message_id)


def attempted(
    kind: type[Attempted], message: Message, recipient: Recipient, node: str, now: float, route: str = ""
) -> Attempted:
    event = kind(
        id=new_event_id(now),
        at=now,
        node=node,
        message_id=message.id,
        recipient=recipient.address,
        reply=recipient.last_reply,
        remote_host=recipient.remote_host,
        attempts=recipient.attempts,
        route=route,
    )
    if isinstance(event, Deferred):
        event.next_attempt = recipient.next_attempt
    return event
