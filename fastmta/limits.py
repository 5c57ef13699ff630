"""Per-client limits shared by every worker through state.lmdb, in no protocol's terms: SMTP sessions and admin logins use them.

Connections are counted when they open and close. Messages, recipients, AUTH failures and an
account's daily quota are reserved in small chunks (reserve) and what a connection did not use is
given back when it closes (release), so a connection costs one state write at either end however
much mail it carries, and a limit is never exceeded across workers: a chunk held by one
connection is only unavailable to the others until it is used or returned. The first chunks of
messages and recipients are reserved with the connection's admission, in the same write: in a
cluster that is one Redis round trip for a connection that sends a message or a few.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from fastmta.config import Config, LimitsConfig
from fastmta.counters.interface import Counters, Opened, Unused, Wanted
from fastmta.networks import Networks

DAY = 86400.0
HOUR = 3600.0
MINUTE = 60.0


class Spendable(NamedTuple):
    setting: str  # the limit's name in metrics and refusals
    window: float
    chunks: int  # a reservation is limit/chunks events, at least one; 0: one at a time


# What a session spends and reserves ahead, by kind.
SPENDABLE = {
    "messages": Spendable("messages_per_hour", HOUR, 32),
    "recipients": Spendable("recipients_per_hour", HOUR, 32),
    # One at a time: every AUTH attempt holds one failure until it succeeds.
    "auth_failures": Spendable("auth_failures_per_hour", HOUR, 0),
    "quota": Spendable("daily_quota", DAY, 32),
}
# Reserved as a connection is admitted: nearly every connection that is let in sends mail.
AT_ADMISSION = ("messages", "recipients")


class Admission(NamedTuple):
    """A connection to count (ClientLimits.admission): what Counters.connection_opened is asked for it."""

    ip: str
    exempt: bool
    per_minute: int  # connections_per_minute, 0 when exempt
    reserve: list[Wanted]


class LimitExceeded(Exception):
    """A client reached a limit; `limit` names the setting that refused."""

    def __init__(self, limit: str) -> None:
        super().__init__(f"{limit} reached")
        self.limit = limit


class ClientLimits:
    """A limit of 0 costs nothing. Every refusal is reported to `refused` by the name of its setting."""

    def __init__(
        self,
        limiter: Counters,
        limits: LimitsConfig,
        max_connections: int,
        max_connections_per_ip: int,
        exempt: Networks | None = None,
        refused: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._refused = refused
        self._limiter = limiter
        self._limits = limits
        self._max_connections = max_connections
        self._max_per_ip = max_connections_per_ip
        self._exempt = exempt
        self.per_client = {
            "messages": limits.messages_per_hour,
            "recipients": limits.recipients_per_hour,
            "auth_failures": limits.auth_failures_per_hour,
        }

    @classmethod
    def configured(
        cls, limiter: Counters, config: Config, refused: Callable[[str], None] = lambda limit: None
    ) -> ClientLimits:
        """The limits of [limits] and [smtp]; mynetworks are exempt unless limits.exempt_mynetworks is false."""
        return cls(
            limiter,
            config.limits,
            config.smtp.max_connections,
            config.smtp.max_connections_per_ip,
            exempt=Networks(config.smtp.mynetworks) if config.limits.exempt_mynetworks else None,
            refused=refused,
        )

    def exempt(self, ip: str) -> bool:
        """Hosts we relay for skip the per-client limits (they still count towards max_connections)."""
        return self._exempt is not None and ip in self._exempt

    def admit(self, ip: str, exempt: bool) -> dict[tuple[str, str], int]:
        """Counts a new connection and reserves its first chunks (AT_ADMISSION), in one write; what
        was reserved, by (kind, key). Raises LimitExceeded (and counts nothing) instead."""
        admission = self.admission(ip, exempt)
        return self.admitted(admission, self._limiter.connection_opened(ip, admission.per_minute, reserve=admission.reserve))

    def admission(self, ip: str, exempt: bool) -> Admission:
        """What counting a new connection from `ip` asks of the counters; admit() in two halves, for
        counters that answer later (fastmta.smtp.admissions)."""
        limited = [] if exempt else [kind for kind in AT_ADMISSION if self.per_client[kind] > 0]
        reserve = [self._wanted(kind, ip, self.per_client[kind]) for kind in limited]
        return Admission(ip, exempt, 0 if exempt else self._limits.connections_per_minute, reserve)

    def admitted(self, admission: Admission, opened: Opened | None) -> dict[tuple[str, str], int]:
        """The counters' answer to an admission: what was reserved, by (kind, key); or LimitExceeded, nothing kept counted."""
        if opened is None:
            raise self._refusal("connections_per_minute")
        ip, reserve = admission.ip, admission.reserve
        reserved = {(wanted.kind, wanted.key): granted for wanted, granted in zip(reserve, opened.reserved, strict=True)}
        if opened.total > self._max_connections:
            self.release(ip, reserved)
            # The server's own limit, not a client's: no smtp_ratelimit_hits_total.
            raise LimitExceeded("max_connections")
        if not admission.exempt and opened.from_ip > self._max_per_ip:
            self.release(ip, reserved)
            raise self._refusal("max_connections_per_ip")
        return reserved

    def reserve(self, kind: str, key: str, limit: int) -> int:
        """Reserves up to a chunk of `kind` for `key`; 0 means the limit is reached (and is reported)."""
        wanted = self._wanted(kind, key, limit)
        granted = self._limiter.take(kind, key, limit, wanted.window, wanted.want)
        if not granted:
            self._refused(SPENDABLE[kind].setting)
        return granted

    @staticmethod
    def _wanted(kind: str, key: str, limit: int) -> Wanted:
        """A chunk of `kind`: 1/chunks of the limit, at least one."""
        spendable = SPENDABLE[kind]
        return Wanted(kind, key, limit, spendable.window, max(1, limit // spendable.chunks) if spendable.chunks else 1)

    def release(self, ip: str, unused: Mapping[tuple[str, str], int]) -> None:
        """The connection from `ip` closed; `unused` is what it reserved and did not spend, by (kind, key)."""
        self._limiter.connection_closed(
            ip, [Unused(kind, key, SPENDABLE[kind].window, amount) for (kind, key), amount in unused.items() if amount]
        )

    def check_auth_allowed(self, ip: str) -> None:
        """For logins outside an SMTP session (HTTP Basic): raises LimitExceeded past auth_failures_per_hour."""
        limit = self._limits.auth_failures_per_hour
        if limit > 0 and not self.exempt(ip) and self._limiter.count("auth_failures", ip, HOUR) >= limit:
            raise self._refusal("auth_failures_per_hour")

    def record_auth_failure(self, ip: str) -> None:
        if not self.exempt(ip):
            self._limiter.hit("auth_failures", ip, self._limits.auth_failures_per_hour, HOUR)

    def _refusal(self, limit: str) -> LimitExceeded:
        self._refused(limit)
        return LimitExceeded(limit)
