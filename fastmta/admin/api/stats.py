"""GET /stats: totals since start over every worker, the queue by state, processing-time percentiles, scan findings."""

from __future__ import annotations

from collections import Counter

import anyio.to_thread
import msgspec

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.admin.readings import Snapshot
from fastmta.queue.records import DEFERRED, HELD
from fastmta.queue.store import CorruptRecord, QueueStore


class MessageStats(msgspec.Struct):
    received: int
    rejected: int
    sent: int
    failed: int
    queued: int


class ConnectionStats(msgspec.Struct):
    current: int
    total: int
    rejected: int


class AuthStats(msgspec.Struct):
    success: int
    failure: int


class Percentiles(msgspec.Struct):
    """Seconds from the end of DATA to the 250 reply; null until a message was accepted."""

    p50: float | None
    p95: float | None
    p99: float | None


class ScanStats(msgspec.Struct):
    """Messages a scanner found something in, and their share of those it gave a verdict on (null: none yet)."""

    detected: int
    rate: float | None


class Stats(msgspec.Struct):
    messages: MessageStats
    connections: ConnectionStats
    auth: AuthStats
    queue: dict[str, int]
    processing: Percentiles
    spam: ScanStats
    virus: ScanStats


def queue_states(store: QueueStore) -> dict[str, int]:
    """active, held, deferred (active with a recipient waiting for a retry) and corrupt."""
    states: Counter[str] = Counter(active=0, held=0, deferred=0, corrupt=0)
    for entry in store.scan():
        if isinstance(entry, CorruptRecord):
            states["corrupt"] += 1
        elif entry.state == HELD:
            states["held"] += 1
        elif any(r.state == DEFERRED for r in entry.recipients):
            states["deferred"] += 1
        else:
            states["active"] += 1
    return dict(states)


def scan_stats(snapshot: Snapshot, scanner: str) -> ScanStats:
    """From smtp_<scanner>_scans_total: scans with a verdict (clean or detected), detected among them."""
    results = snapshot.by_label(f"smtp_{scanner}_scans_total", "result")
    detected = int(results.get("detected", 0))
    judged = detected + int(results.get("clean", 0))
    return ScanStats(detected=detected, rate=round(detected / judged, 4) if judged else None)


def summarize(snapshot: Snapshot, queue: dict[str, int]) -> Stats:
    received = snapshot.by_label("smtp_messages_received_total", "status")
    sent = snapshot.by_label("smtp_messages_sent_total", "status")
    auth = snapshot.by_label("smtp_auth_attempts_total", "result")
    histogram = "smtp_processing_duration_seconds"
    return Stats(
        MessageStats(
            received=int(received.get("accepted", 0)),
            rejected=int(sum(count for status, count in received.items() if status != "accepted")),
            sent=int(sent.get("delivered", 0)),
            failed=int(sent.get("failed", 0)),
            queued=sum(queue.values()),
        ),
        ConnectionStats(
            current=int(snapshot.total("smtp_connections_active")),
            total=int(snapshot.total("smtp_connections_total")),
            rejected=int(snapshot.total("smtp_connections_rejected_total")),
        ),
        AuthStats(success=int(auth.get("success", 0)), failure=int(auth.get("failure", 0))),
        queue,
        Percentiles(*(snapshot.quantile(histogram, q) for q in (0.5, 0.95, 0.99))),
        scan_stats(snapshot, "spam"),
        scan_stats(snapshot, "virus"),
    )


async def stats(call: Call) -> Stats:
    state = call.state
    queue = await anyio.to_thread.run_sync(queue_states, state.store)
    snapshot = await anyio.to_thread.run_sync(state.readings.snapshot)
    return summarize(snapshot, queue)


ENDPOINTS = [
    Endpoint("GET", "/stats", "Messages, connections, auth, queue and processing percentiles", stats, "monitoring", returns=Stats),
]
