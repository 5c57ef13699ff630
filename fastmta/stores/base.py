"""What every store takes and promises: a copy of one message, durable once put() returns, or an error saying why not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Copy:
    """One message as a route stores it: the queue's id and envelope, and the body as received."""

    message_id: str  # the queue id: unique, and the same when the message is stored again after a crash
    sender: str  # the envelope sender; "" for the null sender
    recipients: tuple[str, ...]  # the route's recipients of it: one for a mailbox, all of them for an archive
    received_at: float  # seconds since the epoch; archives file the copy under this day, so a retry finds the same place
    body: bytes


class Refused(Exception):
    """A permanent refusal: this copy can never be stored (no such mailbox). The recipient fails."""


class Failed(Exception):
    """Nothing durable was stored this time (a full disk, a lock held, a store that is down). The recipient is deferred."""


class Store(Protocol):
    # Mailboxes (maildir, mbox) get a copy per recipient; archives (eml-tree, sqlite, s3) one per message.
    per_recipient: bool

    def put(self, copy: Copy) -> None:
        """Stores the copy; when it returns, the copy survives a crash or power cut. Blocking: runs in a thread."""

    def close(self) -> None: ...
