"""Pure-Python twin of received.pyx: a received event stored as its message's queue record, as the event's JSON."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Protocol

import msgspec

from fastmta.events import ids

UNDECODABLE = "undecodable received event"
SEQUENCE_RANGE = "an outbox sequence number is 64 bits, unsigned"
NEGATIVE_START = "start must not be negative"
# The largest time (seconds, either way) an entry may carry: its milliseconds fit 63 bits, exactly.
LATEST = float(2**53)


class _Address(msgspec.Struct, gc=False):
    address: str


class _Record(msgspec.Struct, gc=False):
    """The fields of a queue record (queue/records.py Message, with its defaults) that a received event shows;
    the others are skipped, as unknown fields are."""

    id: str
    sender: str
    recipients: list[_Address]
    size: int
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    listener: str = "smtp"
    tls: str = ""
    message_id: str = ""
    header_from: str = ""
    header_to: str = ""
    subject: str = ""
    workspace_id: str = ""
    campaign_id: str = ""
    user_id: str = ""
    priority: str = ""


class _Stored(msgspec.Struct, array_like=True, gc=False):
    id: str | int  # the id, or the writer's number it is derived from
    at: float
    node: str
    record: _Record


_DECODER = msgspec.msgpack.Decoder(_Stored)
_ENCODER = msgspec.json.Encoder()


def _check_entry(entry: object) -> None:
    if not isinstance(entry, bytes):
        raise TypeError(f"entry must be bytes, not {type(entry).__name__}")


def _sequence(sequence: int) -> int:
    number = operator.index(sequence)
    if not 0 <= number < 1 << 64:
        raise OverflowError(SEQUENCE_RANGE)
    return number


def received_json(entry: bytes, sequence: int) -> tuple[str, float, bytes]:
    """The event's id, time and JSON, from the outbox entry numbered `sequence` written by events.records.received_entry.

    The entry is one mark byte, then MessagePack [id or writer's number, time, node, the message's
    queue record]. The JSON is the events.records.Received event's, field for field; raises
    ValueError when the entry does not hold such an event, or its time is NaN or 2**53 s or more from 1970.
    """
    _check_entry(entry)
    sequence = _sequence(sequence)
    try:
        stored = _DECODER.decode(memoryview(entry)[1:])
    except (msgspec.DecodeError, RecursionError):
        # msgspec recurses into nested values, the compiled module does not: an entry nested past the
        # interpreter's recursion limit (hundreds of levels; a queue record nests three) is refused here
        # and read there, the one input on which the two differ.
        raise ValueError(UNDECODABLE) from None
    at = stored.at
    if not -LATEST < at < LATEST:
        raise ValueError(UNDECODABLE)
    if isinstance(stored.id, str):
        identifier = stored.id
    elif 0 <= stored.id < 1 << ids.WRITER_BITS:
        identifier = ids.derived(at, stored.id, sequence)
    else:
        raise ValueError(UNDECODABLE)
    record = stored.record
    event = {
        "type": "received",
        "sender": record.sender,
        "recipients": [recipient.address for recipient in record.recipients],
        "size": record.size,
        "client_ip": record.client_ip,
        "helo": record.helo,
        "auth_user": record.auth_user,
        "listener": record.listener,
        "tls": record.tls,
        "header_message_id": record.message_id,
        "header_from": record.header_from,
        "header_to": record.header_to,
        "subject": record.subject,
        "workspace_id": record.workspace_id,
        "campaign_id": record.campaign_id,
        "user_id": record.user_id,
        "priority": record.priority,
        "id": identifier,
        "at": at,
        "node": stored.node,
        "message_id": record.id,
        "recipient": "",
    }
    return identifier, at, _ENCODER.encode(event)


def received_payload(entry: bytes, sequence: int, name: str) -> tuple[str, bytes]:
    """The event's id and what a webhook's receiver is sent for it (events.webhooks.Payload, as JSON), `name`
    being the event's name there; raises as received_json() does."""
    # Checked in the compiled module's order: the entry's type, the sequence number, the name, then the entry.
    _check_entry(entry)
    _sequence(sequence)
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    # A str that is not UTF-8 (a lone surrogate) is refused before the entry is read; a subclass's text is used.
    text = name.encode().decode()
    identifier, at, event = received_json(entry, sequence)
    sent = {"id": identifier, "event": text, "timestamp": int(at), "data": msgspec.Raw(event)}
    return identifier, _ENCODER.encode(sent)


class _Entry(Protocol):
    sequence: int
    raw: bytes


def received_payloads(entries: Sequence[_Entry], start: int, most: int, name: str) -> tuple[bytes, int, int]:
    """The payloads (as received_payload() makes them) of the stored received events from entries[start] on,
    comma-separated, and how many entries that passed and how many payloads it made; raises as received_payload() does."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    name.encode()  # a lone surrogate is refused before any entry is read
    first, limit = operator.index(start), operator.index(most)
    if first < 0:
        raise ValueError(NEGATIVE_START)
    made: list[bytes] = []
    index = first
    while len(made) < limit and index < len(entries):
        entry = entries[index]
        raw = entry.raw
        if not isinstance(raw, bytes) or raw[:1] != b"R":  # events.records.received_entry's mark
            break
        try:
            made.append(received_payload(raw, entry.sequence, name)[1])
        except ValueError:  # not decodable: passed over, as received_payload's refusal is
            pass
        index += 1
    return b",".join(made), index - first, len(made)
