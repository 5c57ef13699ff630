"""The names receivers see for events (webhooks, their filters in the config), by the outbox's event type."""

from __future__ import annotations

from collections.abc import Callable

# Failed and expired are one name to a receiver: both are a final failure (`data.type` tells them apart).
WEBHOOK_NAMES: dict[str, str] = {
    "received": "message.received",
    "delivered": "message.sent",
    "failed": "message.failed",
    "expired": "message.failed",
    "deferred": "message.deferred",
    "delay_notified": "message.delayed",
    "rejected": "message.rejected",
    "deleted": "message.deleted",
    "held": "message.held",
    "released": "message.released",
    "retried": "message.retried",
    "auth_failed": "auth.failed",
    "spam_detected": "spam.detected",
    "virus_detected": "virus.detected",
}

WEBHOOK_EVENTS = tuple(dict.fromkeys(WEBHOOK_NAMES.values()))

# Every type of event the outbox holds, and those the delivery report is made of (the outcomes of attempts).
EVENT_TYPES = frozenset(WEBHOOK_NAMES)
REPORTED_TYPES = frozenset({"delivered", "failed", "expired", "deferred"})


def webhook_types(wants: Callable[[str], bool]) -> frozenset[str]:
    """The outbox's event types a webhook is sent, from its filter of names."""
    return frozenset(kind for kind, name in WEBHOOK_NAMES.items() if wants(name))
