"""GET /api/v1/delivery/destinations: the last minutes of delivery attempts, tallied per destination domain and per source IP.

Read from the end of data_dir/delivery.log (every runner's attempts, one line each), at most
READ_LIMIT bytes of it: `complete` says whether that reached back the whole window. No worker
counts per destination, so the tallies cost nothing until someone asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.delivery.journal import Entry, read_since

READ_LIMIT = 32 << 20
# One read of the log at a time: each may hold READ_LIMIT bytes' worth of entries, and a page that
# refreshes (or a script looping) must not multiply that by the admin's threads.
_ONE_READ = anyio.Semaphore(1)
# The address the operating system chose: the route names no source_ips.
DEFAULT_SOURCE = "default"


class DestinationsQuery(msgspec.Struct):
    minutes: Annotated[int, msgspec.Meta(ge=1, le=1440)] = 15
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50  # rows of each list, the busiest first


class Tally(msgspec.Struct):
    name: str  # a recipient domain, or a source IP
    attempts: int
    delivered: int
    deferred: int
    failed: int
    per_minute: float  # attempts
    deferral_rate: float  # deferred / attempts
    last_deferral: str  # the newest deferral's reply: what the destination says


class Destinations(msgspec.Struct):
    since: float
    minutes: int
    complete: bool  # false: delivery.log holds more than READ_LIMIT bytes of this window; these are its newest
    attempts: int
    domains: list[Tally]
    source_ips: list[Tally]


def tally(entries: list[Entry], key: Callable[[Entry], str], minutes: int, limit: int) -> list[Tally]:
    """Entries newest first, grouped by `key`: the busiest `limit` groups."""
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(key(entry), []).append(entry)
    rows = [_row(name, group, minutes) for name, group in groups.items()]
    rows.sort(key=lambda row: (-row.attempts, row.name))
    return rows[:limit]


def _row(name: str, entries: Iterable[Entry], minutes: int) -> Tally:
    counts = {"delivered": 0, "deferred": 0, "failed": 0}
    last_deferral = ""
    attempts = 0
    for entry in entries:
        attempts += 1
        counts[entry.status] = counts.get(entry.status, 0) + 1
        if entry.status == "deferred" and not last_deferral:
            last_deferral = entry.reply
    return Tally(
        name, attempts, counts["delivered"], counts["deferred"], counts["failed"],
        round(attempts / minutes, 2), round(counts["deferred"] / attempts, 3), last_deferral,
    )


def _domain(entry: Entry) -> str:
    return entry.recipient.rpartition("@")[2].lower()


def _source(entry: Entry) -> str:
    return entry.source_ip or DEFAULT_SOURCE


def read(data_dir: Path, query: DestinationsQuery, now: float) -> Destinations:
    since = now - query.minutes * 60
    entries, complete = read_since(data_dir / "delivery.log", since, READ_LIMIT)
    return Destinations(
        since, query.minutes, complete, len(entries),
        tally(entries, _domain, query.minutes, query.limit), tally(entries, _source, query.minutes, query.limit),
    )


async def destinations(call: Call) -> Destinations:
    # Up to READ_LIMIT bytes of a file: in a thread, so /health keeps answering.
    async with _ONE_READ:
        return await anyio.to_thread.run_sync(read, call.state.config.data_dir, call.query, time.time())


ENDPOINTS = [
    Endpoint("GET", "/api/v1/delivery/destinations", "Recent delivery attempts per destination domain and per source IP", destinations, "delivery", query=DestinationsQuery, returns=Destinations),
]
