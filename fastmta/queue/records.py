"""Queue records: the Structs stored in queue.lmdb, their ids, and the rules for evolving them.

Records outlive upgrades, so they change only under these rules:
1. A field is never renamed, removed, or given another type; retire it by ignoring it.
2. A new field goes last, with a default, so records written before it still decode.
3. Records are msgpack maps keyed by field name, and decoding ignores unknown fields,
   so an older fastmta can still read what a newer one wrote (a downgrade stays possible).
4. A record that cannot be decoded is reported as corrupt, never silently dropped.
"""

from __future__ import annotations

import itertools
import os
import time

import msgspec

# Recipient states: queued, then deferred any number of times, then exactly one of the settled states.
QUEUED = "queued"
DEFERRED = "deferred"
DELIVERED = "delivered"
FAILED = "failed"
SETTLED = frozenset({DELIVERED, FAILED})

# Message states: held messages stay out of the schedule until released.
ACTIVE = "active"
HELD = "held"


class Recipient(msgspec.Struct, omit_defaults=True):
    address: str
    orcpt: str = ""
    notify: list[str] = msgspec.field(default_factory=list)
    state: str = QUEUED
    attempts: int = 0
    last_reply: str = ""
    next_attempt: float = 0.0
    updated_at: float = 0.0
    remote_host: str = ""
    delay_notified: bool = False


class Message(msgspec.Struct, omit_defaults=True):
    id: str
    sender: str
    recipients: list[Recipient]
    received_at: float
    size: int
    next_attempt: float
    state: str = ACTIVE
    attempts: int = 0
    client_ip: str = ""
    client_port: int = 0
    helo: str = ""
    protocol: str = "SMTP"
    listener: str = "smtp"
    worker: str = ""
    auth_user: str = ""
    tls: str = ""
    body_type: str = ""
    smtputf8: bool = False
    declared_size: int = 0
    ret: str = ""
    envid: str = ""
    message_id: str = ""
    header_from: str = ""
    header_to: str = ""
    subject: str = ""
    date: str = ""
    workspace_id: str = ""
    campaign_id: str = ""
    user_id: str = ""
    priority: str = ""
    headers_size: int = 0
    # A delivery runner's claim: until lease_until nobody else sends this message.
    lease_owner: str = ""
    lease_until: float = 0.0


def to_document(message: Message) -> dict[str, object]:
    """Every field, defaults included: what operators and scripts read, unlike the compact stored form."""
    document = msgspec.structs.asdict(message)
    document["recipients"] = [msgspec.structs.asdict(recipient) for recipient in message.recipients]
    return document


MESSAGE_ENCODER = msgspec.msgpack.Encoder()
MESSAGE_DECODER = msgspec.msgpack.Decoder(Message)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_counter = itertools.count()
_pid = 0


def _base32(number: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        out.append(_CROCKFORD[number & 31])
        number >>= 5
    return "".join(reversed(out))


def new_message_id(now: float | None = None) -> str:
    """16 characters, sortable by time: milliseconds (44 bits), pid (22 bits), a per-process counter (14 bits).

    The pid keeps workers apart, even a restarted one; the counter keeps a process's ids within
    one millisecond apart.
    """
    global _pid
    if not _pid:
        _pid = os.getpid()
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis & ((1 << 44) - 1)) << 36 | (_pid & ((1 << 22) - 1)) << 14 | (next(_counter) & 0x3FFF)
    return _base32(value, 16)


def _forget_pid() -> None:
    global _pid
    _pid = 0


os.register_at_fork(after_in_child=_forget_pid)
