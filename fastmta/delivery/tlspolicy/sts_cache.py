"""Which MTA-STS policy holds for a domain now (RFC 8461 §5.1): its TXT id, the cached policy, a fetch when the id is new.

A fetched policy is kept in memory and in data_dir/mta-sts/<domain>.json, so a restarted runner
keeps honouring it without a fetch; it holds for its max_age. A policy whose TXT record is gone,
or whose refetch fails, is still used until then: that is what keeps an attacker who strips the
TXT record or blocks the HTTPS host from turning the policy off.

The files are read and written in a thread: a slow disk holds up the deliveries to that domain,
not the runner's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.rdatatype
import msgspec

from fastmta.delivery.mx import DnsFailure, MxResolver
from fastmta.delivery.tlspolicy.fetch import FetchFailed
from fastmta.delivery.tlspolicy.mta_sts import StsPolicy, policy_id

log = logging.getLogger("fastmta.delivery")

# A failed fetch is not tried again for the same id before this many seconds: one broken policy
# host should not cost a fetch per message.
RETRY_FAILED_FETCH = 300.0
# Domains whose state is kept in memory; past that, memory starts over (the files stay).
_MEMORY_ENTRIES = 10_000
# A domain name as letters, digits and hyphens in dot-separated labels: one that can have a policy host, and a safe file name.
_DOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


class CachedPolicy(msgspec.Struct, frozen=True):
    """One domain's policy as kept. Stored in files that outlive upgrades: new fields go last, with defaults."""

    policy_id: str
    policy: StsPolicy
    fetched_at: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.policy.max_age


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(CachedPolicy).decode

Fetch = Callable[[str], Awaitable[StsPolicy]]


class StsPolicies:
    def __init__(self, resolver: MxResolver, fetch: Fetch, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self._resolver = resolver
        self._fetch = fetch
        self._directory = directory
        self._clock = clock
        self._known: dict[str, CachedPolicy | None] = {}  # None: no file either
        self._failed: dict[tuple[str, str], float] = {}  # (domain, id) -> when a fetch may be tried again
        self._fetching: dict[tuple[str, str], asyncio.Future[StsPolicy | None]] = {}

    async def policy(self, domain: str) -> StsPolicy | None:
        """The policy `domain` has now; None when it has none (or none that could ever be fetched)."""
        domain = domain.lower().rstrip(".")
        if not _DOMAIN.match(domain):
            return None
        cached = await self._cached(domain)
        try:
            answer = await self._resolver.lookup(f"_mta-sts.{domain}", dns.rdatatype.TXT)
            current = policy_id([b"".join(r.strings).decode("ascii", "replace") for r in answer.records])  # type: ignore[attr-defined]
        except DnsFailure:
            current = None
        if current is None or (cached is not None and cached.policy_id == current):
            return cached.policy if cached is not None else None
        fetched = await self._refresh(domain, current)
        if fetched is not None:
            return fetched
        return cached.policy if cached is not None else None

    async def _cached(self, domain: str) -> CachedPolicy | None:
        if domain not in self._known:
            read = await asyncio.to_thread(self._read, domain)
            if len(self._known) >= _MEMORY_ENTRIES:
                self._known.clear()
            # A policy fetched while the file was read is newer than the file.
            self._known.setdefault(domain, read)
        entry = self._known[domain]
        return entry if entry is not None and entry.fresh(self._clock()) else None

    async def _refresh(self, domain: str, current: str) -> StsPolicy | None:
        """One fetch for a domain's new id, however many deliveries wait for it."""
        key = (domain, current)
        if self._failed.get(key, 0.0) > self._clock():
            return None
        pending = self._fetching.get(key)
        if pending is None:
            pending = self._fetching[key] = asyncio.ensure_future(self._fetch_and_keep(domain, current))
            pending.add_done_callback(lambda _: self._fetching.pop(key, None))
        # Shielded: a delivery that is cancelled while it waits does not cancel the others' fetch.
        return await asyncio.shield(pending)

    async def _fetch_and_keep(self, domain: str, current: str) -> StsPolicy | None:
        try:
            policy = await self._fetch(domain)
        except FetchFailed as exc:
            log.warning("MTA-STS policy of %s (id %s) not fetched: %s", domain, current, exc)
            if len(self._failed) >= _MEMORY_ENTRIES:
                self._failed.clear()
            self._failed[(domain, current)] = self._clock() + RETRY_FAILED_FETCH
            return None
        entry = CachedPolicy(current, policy, self._clock())
        self._known[domain] = entry
        await asyncio.to_thread(self._write, domain, entry)
        return policy

    def _path(self, domain: str) -> Path:
        return self._directory / f"{domain}.json"

    def _read(self, domain: str) -> CachedPolicy | None:
        try:
            return _decode(self._path(domain).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError) as exc:  # unreadable or torn: it is only a cache
            log.warning("MTA-STS cache %s ignored: %s", self._path(domain), exc)
            return None

    def _write(self, domain: str, entry: CachedPolicy) -> None:
        """Replaced whole (rename), so another runner never reads half a file; no fsync: a lost file costs a fetch."""
        path = self._path(domain)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(_encode(entry))
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("MTA-STS cache %s not written: %s", path, exc)
