"""A received event stored as its message's queue record, as the event's JSON (compiled; twin: received_ref.py)."""

def received_json(entry: bytes, sequence: int) -> tuple[str, float, bytes]:
    """The event's id, time and JSON, from the outbox entry numbered `sequence` written by events.records.received_entry.

    The entry is one mark byte, then MessagePack [id or writer's number, time, node, the message's
    queue record]. The JSON is the events.records.Received event's, field for field; raises
    ValueError when the entry does not hold such an event, or its time is NaN or 2**53 s or more from 1970.
    """

def received_payload(entry: bytes, sequence: int, name: str) -> tuple[str, bytes]:
    """The event's id and what a webhook's receiver is sent for it (events.webhooks.Payload, as JSON), `name`
    being the event's name there; raises as received_json() does."""
