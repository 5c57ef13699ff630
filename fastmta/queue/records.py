"""Queue records: the Structs stored in queue.lmdb, their ids, and the rules for evolving them.

Records outlive upgrades, so they change only under these rules:
1. A field is never renamed, removed, or given another type; retire it by ignoring it.
2. A new field goes last, with a default, so records written before it still decode.
3. Records are msgpack maps keyed by field name, and decoding ignores unknown fields,
   so an older fastmta can still read what a newer one wrote (a downgrade stays possible).
4. A record that cannot be decoded is reported as corrupt, never silently dropped.
"""

from __future__ import annotations

import hashlib
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


def node_tag(node_id: str) -> str:
    """The 5 characters (25 bits of SHA-256) that stand for `node_id` in its queue ids.

    Two nodes share a tag with odds n(n-1)/2 / 2**25 for n nodes: 1 in 3.7 million for 3 nodes,
    1 in 6,700 for 100 (GET /api/v1/cluster/nodes shows each node's tag, so a clash can be seen
    and a node renamed). Even then their ids clash only when two of their processes with the same
    pid draw the same counter value in the same millisecond.
    """
    digest = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:4], "big")
    return _base32(digest >> 7, 5)


_node = node_tag("")


def name_node(node_id: str) -> None:
    """Makes this process's ids carry `node_id`'s tag; every child does it once, after fork."""
    global _node
    _node = node_tag(node_id)


def new_message_id(now: float | None = None) -> str:
    """21 characters, sortable by time and unique across the nodes of a cluster sharing one history.

    Characters 1-9: milliseconds (44 bits, then a zero bit); 10-14: the node's tag (node_tag);
    15-21: pid (22 bits) and a per-process counter (13 bits). The pid keeps a node's workers apart,
    even a restarted one; the counter keeps a process's ids within one millisecond apart.
    Ids from before the node's tag (16 characters: milliseconds, pid, a 14-bit counter) start with
    the same 44 bits of time, so old and new ids still sort together by time, and stay valid.
    """
    global _pid
    if not _pid:
        _pid = os.getpid()
    millis = int((time.time() if now is None else now) * 1000)
    process = (_pid & ((1 << 22) - 1)) << 13 | (next(_counter) & 0x1FFF)
    return _base32((millis & ((1 << 44) - 1)) << 1, 9) + _node + _base32(process, 7)


def _forget_pid() -> None:
    global _pid
    _pid = 0


os.register_at_fork(after_in_child=_forget_pid)
