"""A received event stored as its message's queue record, as the event's JSON (compiled; twin: received_ref.py)."""

from collections.abc import Sequence
from typing import Protocol

def received_json(entry: bytes, sequence: int) -> tuple[str, float, bytes]:
    """The event's id, time and JSON, from the outbox entry numbered `sequence` written by events.records.received_entry.

    The entry is one mark byte, then MessagePack [id or writer's number, time, node, the message's
    queue record]. The JSON is the events.records.Received event's, field for field; raises
    ValueError when the entry does not hold such an event, or its time is NaN or 2**53 s or more from 1970.
    """

def received_payload(entry: bytes, sequence: int, name: str) -> tuple[str, bytes]:
    """The event's id and what a webhook's receiver is sent for it (events.webhooks.Payload, as JSON), `name`
    being the event's name there; raises as received_json() does."""

class _Entry(Protocol):
    sequence: int
    raw: bytes

def received_payloads(entries: Sequence[_Entry], start: int, most: int, name: str) -> tuple[bytes, int, int]:
    """The payloads (as received_payload() makes them) of the stored received events from entries[start] on,
    comma-separated in one buffer, and how many entries that passed and how many payloads it made.

    Stops before the first entry that is not a stored received event (its `raw` not bytes beginning
    b"R") and once `most` payloads are made; an entry that does not decode is passed over, making
    none. Raises as received_payload() does for a name or a sequence number it refuses, and
    ValueError for a negative start. Making a run at once spares the webhook sink an object, a call
    and a copy per event.
    """
