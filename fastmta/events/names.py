"""The names receivers see for events (webhooks, their filters in the config), by the outbox's event type."""

from __future__ import annotations

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
