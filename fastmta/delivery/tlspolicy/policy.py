"""Per destination, what TLS the next hop must do and how its certificate is checked: the route's setting, DANE, MTA-STS.

Precedence (RFC 8461 §2): a host with DANE TLSA records is held to them and MTA-STS is not
consulted for it; otherwise the recipient domain's MTA-STS policy applies. Route settings:
  "none", "required"   as they say, no policy looked up
  "opportunistic"      on kind = "mx": DANE when [tls_policy] dnssec_resolver is set, MTA-STS when
                       [tls_policy] mta_sts is on, else TLS when offered; other kinds: TLS when offered
  "dane"               every host must have usable DANE records, or it is not used
  "mta-sts"            the domain must publish a policy, and it is enforced even in testing mode
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import Store

from fastmta.config import RouteConfig, TlsPolicyConfig
from fastmta.delivery.mx import MxResolver
from fastmta.delivery.outbound import TlsPolicy
from fastmta.delivery.tlspolicy import dane, pkix
from fastmta.delivery.tlspolicy.fetch import PolicyFetcher
from fastmta.delivery.tlspolicy.mta_sts import StsPolicy, mx_allowed
from fastmta.delivery.tlspolicy.sts_cache import StsPolicies

log = logging.getLogger("fastmta.delivery")

# policy ("dane" | "mta-sts"), mode ("enforce" | "testing"), what failed
Report = Callable[[str, str, str], None]
# The route settings DANE applies under, when [tls_policy] dnssec_resolver is set.
_DANE_TLS = ("opportunistic", "dane")


@dataclass(frozen=True)
class Refusal:
    """Why a policy keeps a host from being used."""

    policy: str  # "dane" | "mta-sts"
    reason: str


@dataclass(frozen=True)
class Hop:
    """A next hop to try, and the TLS its connections must do."""

    host: str
    address: str
    tls: TlsPolicy


def _certificates(chain: list[bytes]) -> tuple[list[x509.Certificate], str]:
    """The chain parsed, or why it cannot be checked."""
    if not chain:
        return [], "no certificate was sent"
    try:
        return pkix.parsed(chain), ""
    except ValueError as exc:
        return [], f"certificate cannot be read: {exc}"


@dataclass(frozen=True)
class DaneCheck:
    """TlsPolicy.check of a host with TLSA records. Equal checks share pooled connections."""

    host: str
    records: tuple[dane.Tlsa, ...]
    report: Report = field(compare=False, repr=False)

    def __call__(self, chain: list[bytes] | None) -> str:
        if chain is None:
            problem = f"{self.host} does not offer STARTTLS, which its TLSA records (DANE) require"
        else:
            certificates, problem = _certificates(chain)
            problem = problem or dane.mismatch(certificates, self.records, self.host)
        if problem:
            self.report("dane", "enforce", problem)
        return problem


@dataclass(frozen=True)
class StsCheck:
    """TlsPolicy.check of an MX host under an MTA-STS policy: a certificate for its name from a trusted CA."""

    host: str
    enforce: bool
    listed: bool  # among the policy's MX patterns: always, in enforce mode
    anchors: Store | None = field(compare=False, repr=False)
    report: Report = field(compare=False, repr=False)

    def __call__(self, chain: list[bytes] | None) -> str:
        problems = [] if self.listed else [f"{self.host} is not an MX host of the domain's MTA-STS policy"]
        if chain is None:
            problems.append(f"{self.host} does not offer STARTTLS, which the domain's MTA-STS policy requires")
        elif self.anchors is None:
            problems.append("no CA certificates to verify against (tls_policy.ca_file)")
        else:
            certificates, problem = _certificates(chain)
            problems.append(problem or pkix.path_problem(certificates, self.anchors, self.host))
        problem = "; ".join(p for p in problems if p)
        if not problem:
            return ""
        self.report("mta-sts", "enforce" if self.enforce else "testing", f"{problem} (MTA-STS)")
        return f"{problem} (MTA-STS)" if self.enforce else ""


class TlsPolicies:
    def __init__(self, config: TlsPolicyConfig, resolver: MxResolver, data_dir: Path, timeout: float, report: Report) -> None:
        self._config = config
        self._resolver = resolver
        self._report = report
        context = pkix.ca_context(config.ca_file)
        self._anchors: Store | None
        try:
            self._anchors = pkix.anchors(context)
        except ValueError:
            log.error("MTA-STS: no CA certificates in %s: no MX host can pass a policy", config.ca_file or "the system's bundle")
            self._anchors = None
        self._fetcher = PolicyFetcher(resolver, context, config.fetch_timeout)
        self._sts = StsPolicies(resolver, self._fetcher, data_dir / "mta-sts")
        trusted = MxResolver([config.dnssec_resolver], timeout, dnssec=True) if config.dnssec_resolver else None
        self._tlsa = dane.TlsaLookup(trusted) if trusted is not None else None

    async def destinations(self, route: RouteConfig, domain: str) -> list[tuple[str, str]]:
        """The (host, address) pairs an MX route tries for `domain`, in order. Raises DnsFailure.

        Where DANE may apply and the DNSSEC resolver vouches for the domain's MX RRset, the hosts are
        that RRset's (RFC 7672 §2.2): a forged answer from delivery's resolver cannot swap in a host
        of an unsigned zone, to which DANE would not apply. Otherwise delivery's resolver names them.
        """
        if self._tlsa is not None and route.tls in _DANE_TLS:
            secure = await self._tlsa.destinations(domain)
            if secure is not None:
                return secure
        return await self._resolver.destinations(domain)

    async def plan(self, route: RouteConfig, domain: str, candidates: list[tuple[str, str]]) -> tuple[list[Hop], str]:
        """The candidates (host, address) the route may use for `domain`, each with its TLS; and why any were left out."""
        base = TlsPolicy(route.tls, route.username, route.password)
        if route.tls in ("none", "required") or (route.tls == "opportunistic" and route.kind != "mx"):
            return [Hop(host, address, base) for host, address in candidates], ""
        sts: StsPolicy | None = None
        if route.tls == "mta-sts" or (route.tls == "opportunistic" and self._config.mta_sts):
            sts = await self._sts.policy(domain)
            if sts is not None and sts.mode == "none":
                sts = None
        decided: dict[str, TlsPolicy | Refusal] = {}
        hops: list[Hop] = []
        refusals: list[Refusal] = []
        for host, address in candidates:
            if host not in decided:
                decided[host] = await self._for_host(route, base, domain, host, sts)
            found = decided[host]
            if isinstance(found, TlsPolicy):
                hops.append(Hop(host, address, found))
            elif found not in refusals:
                refusals.append(found)
        if not hops:
            # Counted when the policy leaves nothing to try (a delivery deferred), not per host left out.
            for refusal in refusals:
                self._report(refusal.policy, "enforce", refusal.reason)
        return hops, "; ".join(refusal.reason for refusal in refusals)

    async def _for_host(
        self, route: RouteConfig, base: TlsPolicy, domain: str, host: str, sts: StsPolicy | None
    ) -> TlsPolicy | Refusal:
        """One host's TLS, or why it may not be used."""
        if self._tlsa is not None and route.tls in _DANE_TLS:
            try:
                records = await self._tlsa.records(host, route.port, domain if route.kind == "mx" else None)
            except (dane.DaneUnavailable, dane.NotAnMxHost) as exc:
                return Refusal("dane", str(exc))
            if records is not None:
                return replace(base, mode="required", check=DaneCheck(host, records, self._report))
        if route.tls == "dane":
            return Refusal("dane", f"{host} has no TLSA records the DNSSEC resolver vouches for, which the route requires (DANE)")
        if sts is None:
            if route.tls == "mta-sts":
                return Refusal("mta-sts", f"{domain} publishes no MTA-STS policy, which the route requires")
            return base
        enforce = sts.mode == "enforce" or route.tls == "mta-sts"
        listed = mx_allowed(sts, host)
        if enforce and not listed:
            return Refusal("mta-sts", f"{host} is not an MX host of {domain}'s MTA-STS policy")
        mode = "required" if enforce else "opportunistic"
        return replace(base, mode=mode, check=StsCheck(host, enforce, listed, self._anchors, self._report))

    async def close(self) -> None:
        await self._fetcher.close()
