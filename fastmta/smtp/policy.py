"""Who may relay where, and how much one client IP may do: the checks a session asks before it says yes."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

from fastmta.config import Config, LimitsConfig
from fastmta.ratelimit import RateLimiter
from fastmta.smtp.replies import QuotaExceeded, RateLimited, SmtpReplyError, TooManyConnections, TooManyFromAddress

DAY = 86400.0
HOUR = 3600.0
MINUTE = 60.0


class RelayPolicy:
    """Relay is allowed for mynetworks and authenticated clients; mail to relay_domains from anyone."""

    def __init__(self, mynetworks: list[str], relay_domains: list[str]) -> None:
        self._networks = [ipaddress.ip_network(cidr, strict=False) for cidr in mynetworks]
        exact = {d.lower().lstrip("*.") for d in relay_domains if not d.startswith(("*.", "."))}
        wildcard = {d.lower().lstrip("*.") for d in relay_domains if d.startswith(("*.", "."))}
        self._exact = frozenset(exact)
        self._suffixes = tuple("." + d for d in wildcard)

    def trusted(self, ip: str) -> bool:
        return _in_networks(ip, tuple(self._networks))

    def accepts_domain(self, domain: str) -> bool:
        domain = domain.lower()
        return domain in self._exact or (bool(self._suffixes) and domain.endswith(self._suffixes))


@lru_cache(maxsize=4096)
def _in_networks(ip: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ClientLimits:
    """Per-IP limits shared by every worker through state.lmdb; a limit of 0 costs nothing.

    `exempt` clients skip the per-IP limits but still count towards max_connections. Every
    refusal is reported to `refused` by the name of the setting that refused, for the metrics.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        limits: LimitsConfig,
        max_connections: int,
        max_connections_per_ip: int,
        exempt: RelayPolicy | None = None,
        refused: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self._refused = refused
        self._limiter = limiter
        self._limits = limits
        self._max_connections = max_connections
        self._max_per_ip = max_connections_per_ip
        self._exempt = exempt

    @classmethod
    def configured(
        cls, limiter: RateLimiter, config: Config, policy: RelayPolicy, refused: Callable[[str], None] = lambda limit: None
    ) -> ClientLimits:
        """The limits of [limits] and [smtp]; `policy`'s mynetworks are exempt unless limits.exempt_mynetworks is false."""
        return cls(
            limiter,
            config.limits,
            config.smtp.max_connections,
            config.smtp.max_connections_per_ip,
            exempt=policy if config.limits.exempt_mynetworks else None,
            refused=refused,
        )

    def _limited(self, ip: str) -> bool:
        return self._exempt is None or not self._exempt.trusted(ip)

    def _refusal(self, limit: str, refusal: SmtpReplyError, per_client: bool = True) -> SmtpReplyError:
        if per_client:  # max_connections is the server's, not a client's: no smtp_ratelimit_hits_total
            self._refused(limit)
        refusal.limit = limit
        return refusal

    def admit(self, ip: str) -> None:
        """Counts a new connection, or raises the refusal the client should hear."""
        limited = self._limited(ip)
        if limited and not self._limiter.hit("connections", ip, self._limits.connections_per_minute, MINUTE):
            raise self._refusal("connections_per_minute", RateLimited("Too many connections from your address, try again later"))
        from_ip, total = self._limiter.connection_opened(ip)
        if total > self._max_connections:
            self._limiter.connection_closed(ip)
            raise self._refusal("max_connections", TooManyConnections(), per_client=False)
        if limited and from_ip > self._max_per_ip:
            self._limiter.connection_closed(ip)
            raise self._refusal("max_connections_per_ip", TooManyFromAddress())

    def release(self, ip: str) -> None:
        self._limiter.connection_closed(ip)

    def check_message(self, ip: str) -> None:
        if self._limited(ip) and not self._limiter.hit("messages", ip, self._limits.messages_per_hour, HOUR):
            raise self._refusal("messages_per_hour", RateLimited("Too much mail from your address, try again later"))

    def check_recipient(self, ip: str) -> None:
        if self._limited(ip) and not self._limiter.hit("recipients", ip, self._limits.recipients_per_hour, HOUR):
            raise self._refusal("recipients_per_hour", RateLimited("Too many recipients from your address, try again later"))

    def check_auth_allowed(self, ip: str) -> None:
        limit = self._limits.auth_failures_per_hour
        if limit > 0 and self._limited(ip) and self._limiter.count("auth_failures", ip, HOUR) >= limit:
            raise self._refusal("auth_failures_per_hour", RateLimited("Too many authentication failures, try again later"))

    def record_auth_failure(self, ip: str) -> None:
        if self._limited(ip):
            self._limiter.hit("auth_failures", ip, self._limits.auth_failures_per_hour, HOUR)

    def check_daily_quota(self, username: str, quota: int) -> None:
        """Per account, not per IP, so no network is exempt from it."""
        if not self._limiter.hit("quota", username, quota, DAY):
            raise self._refusal("daily_quota", QuotaExceeded(f"Daily sending quota of {quota} messages reached, try again later"))
