"""A received event stored as its message's queue record, as the event's JSON (compiled; twin: received_ref.py)."""

def received_json(entry: bytes) -> tuple[str, float, bytes]:
    """The event's id, time and JSON, from an outbox entry written by events.records.received_entry.

    The entry is one mark byte, then MessagePack [id, time, node, the message's queue record]. The
    JSON is the events.records.Received event's, field for field; raises ValueError when the entry
    does not hold such an event.
    """
