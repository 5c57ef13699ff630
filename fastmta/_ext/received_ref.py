"""Pure-Python twin of received.pyx: a received event stored as its message's queue record, as the event's JSON."""

from __future__ import annotations

import msgspec

UNDECODABLE = "undecodable received event"


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
    id: str
    at: float
    node: str
    record: _Record


_DECODER = msgspec.msgpack.Decoder(_Stored)
_ENCODER = msgspec.json.Encoder()


def received_json(entry: bytes) -> tuple[str, float, bytes]:
    """The event's id, time and JSON, from an outbox entry written by events.records.received_entry.

    The entry is one mark byte, then MessagePack [id, time, node, the message's queue record]. The
    JSON is the events.records.Received event's, field for field; raises ValueError when the entry
    does not hold such an event.
    """
    try:
        stored = _DECODER.decode(memoryview(entry)[1:])
    except (msgspec.DecodeError, RecursionError):
        # msgspec recurses into nested values, the compiled module does not: an entry nested past the
        # interpreter's recursion limit (hundreds of levels; a queue record nests three) is refused here
        # and read there, the one input on which the two differ.
        raise ValueError(UNDECODABLE) from None
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
        "id": stored.id,
        "at": stored.at,
        "node": stored.node,
        "message_id": record.id,
        "recipient": "",
    }
    return stored.id, stored.at, _ENCODER.encode(event)
