"""DNS for delivery: MX hosts in preference order (RFC 5321 §5.1), addresses, any record with its AD bit; cached for the TTL."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import NamedTuple

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.nameserver
import dns.rdatatype
import dns.resolver

from fastmta.config import parse_hostport

# When a zone gives no SOA to say how long "no such record" holds (RFC 2308), and the most any answer is kept.
_NEGATIVE_TTL = 300.0
_MAX_TTL = 86400.0
# Entries kept at most; past that, the expired ones go, then, if need be, all.
_CACHE_ENTRIES = 10_000


class DnsFailure(Exception):
    """permanent: the domain cannot receive mail (NXDOMAIN, null MX); otherwise try again later."""

    def __init__(self, message: str, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


class Answer(NamedTuple):
    records: list[object]
    # The AD bit (RFC 4035 §3.2.3): the resolver validated the answer with DNSSEC. Worth only as
    # much as the resolver and the path to it, so only a resolver made with dnssec=True asks.
    authenticated: bool


class MxResolver:
    def __init__(self, servers: Sequence[str], timeout: float = 10.0, dnssec: bool = False) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in (parse_hostport(s, 53) for s in servers)
            ]
        self._resolver.lifetime = timeout
        if dnssec:
            # AD in the query asks for the AD bit in the answer (RFC 6840 §5.7), DO for the signatures.
            self._resolver.flags = dns.flags.RD | dns.flags.AD
            self._resolver.use_edns(0, dns.flags.DO, 1232)
        # None: no such domain.
        self._cache: dict[tuple[str, dns.rdatatype.RdataType], tuple[float, Answer | None]] = {}

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> list[object]:
        """Records of one type; [] when the name exists without them. Raises DnsFailure."""
        return (await self.lookup(name, rdtype)).records

    async def lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> Answer:
        """Records of one type, and whether the resolver vouched for them; [] when the name exists without them.

        Raises DnsFailure.
        """
        key = (name, rdtype)
        cached = self._cache.get(key)
        if cached and cached[0] > time.monotonic():
            if cached[1] is None:
                raise _no_such_domain(name)
            return cached[1]
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as missing:
            # Kept like an empty answer (RFC 2308 §5): most domains have no _mta-sts record, looked up per delivery.
            self._remember(key, min(_negative_ttl(_response(missing)), _MAX_TTL), None)
            raise _no_such_domain(name) from None
        except dns.resolver.NoAnswer as empty:
            response = _response(empty)
            found = Answer([], response is not None and bool(response.flags & dns.flags.AD))
            ttl = _negative_ttl(response)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise DnsFailure(f"{name}: DNS lookup failed: {exc}", False, "4.4.3") from None
        else:
            found = Answer(list(answer), bool(answer.response.flags & dns.flags.AD))
            ttl = float(answer.rrset.ttl if answer.rrset is not None else _NEGATIVE_TTL)
        self._remember(key, min(ttl, _MAX_TTL), found)
        return found

    def _remember(self, key: tuple[str, dns.rdatatype.RdataType], ttl: float, found: Answer | None) -> None:
        now = time.monotonic()
        if len(self._cache) >= _CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _CACHE_ENTRIES:
                self._cache.clear()
        self._cache[key] = (now + ttl, found)

    async def addresses(self, host: str) -> list[str]:
        """IPv4 then IPv6 addresses; one family failing for now is no reason to give up the other."""
        found: list[str] = []
        trouble: DnsFailure | None = None
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                found += [record.address for record in await self._query(host, rdtype)]  # type: ignore[attr-defined]
            except DnsFailure as failure:
                if failure.permanent:
                    return found
                trouble = failure
        if trouble is not None and not found:
            raise trouble
        return found

    async def destinations(self, domain: str) -> list[tuple[str, str]]:
        """(host name, address) pairs to try in order. Equal preferences are shuffled, to spread the load."""
        records = await self._query(domain, dns.rdatatype.MX)
        if len(records) == 1 and str(records[0].exchange) == ".":  # type: ignore[attr-defined]
            raise DnsFailure(f"{domain} accepts no mail (null MX)", True, "5.1.10")
        if records:
            ordered = sorted(records, key=lambda r: (r.preference, random.random()))  # type: ignore[attr-defined]
            hosts = [str(r.exchange).rstrip(".") for r in ordered if str(r.exchange) != "."]  # type: ignore[attr-defined]
        else:
            hosts = [domain]  # no MX: the domain's own address is the implicit MX
        pairs = []
        for host in hosts:
            try:
                pairs += [(host, address) for address in await self.addresses(host)]
            except DnsFailure:
                continue
        if not pairs:
            raise DnsFailure(f"{domain}: no address for any mail exchanger", False, "4.4.4")
        return pairs


def _no_such_domain(name: str) -> DnsFailure:
    return DnsFailure(f"{name}: no such domain", True, "5.1.2")


def _response(failure: dns.resolver.NXDOMAIN | dns.resolver.NoAnswer) -> dns.message.Message | None:
    """The answer that said "no such name" or "no such record", for its flags and SOA."""
    try:
        response: dns.message.Message = (
            failure.response(failure.qnames()[0]) if isinstance(failure, dns.resolver.NXDOMAIN) else failure.response()
        )
    except (KeyError, AttributeError, TypeError, IndexError):
        return None
    return response


def _negative_ttl(response: dns.message.Message | None) -> float:
    """How long "no such record" may be cached: the SOA's minimum, capped by the SOA's own TTL (RFC 2308 §5)."""
    for rrset in response.authority if response is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum))
    return _NEGATIVE_TTL
