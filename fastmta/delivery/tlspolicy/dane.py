"""DANE for SMTP (RFC 7672): TLSA records, when the trusted resolver vouches for them, and a chain checked against them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dns.rdatatype
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.verification import Store

from fastmta.delivery.mx import Answer, DnsFailure, MxResolver
from fastmta.delivery.tlspolicy.pkix import path_problem

DANE_TA, DANE_EE = 2, 3
# RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are not for SMTP; records with them are unusable.
_USAGES = (DANE_TA, DANE_EE)
_SELECTORS = (0, 1)  # the whole certificate, its SubjectPublicKeyInfo
_MATCHING = (0, 1, 2)  # exact, SHA-256, SHA-512


@dataclass(frozen=True)
class Tlsa:
    usage: int
    selector: int
    matching: int
    data: bytes


class DaneUnavailable(Exception):
    """A host's TLSA records cannot be known now: the host is not used, rather than used without them (RFC 7672 §2.2)."""


class NotAnMxHost(Exception):
    """The domain's MX RRset is authenticated and does not name the host: an answer from elsewhere was forged (RFC 7672 §2.2)."""


class TlsaLookup:
    """Asks the trusted resolver (made with dnssec=True), and believes its AD bit."""

    def __init__(self, resolver: MxResolver) -> None:
        self._resolver = resolver

    async def destinations(self, domain: str) -> list[tuple[str, str]] | None:
        """`domain`'s (host, address) pairs from the trusted resolver when it vouches for the MX RRset; else None.

        None (an unsigned MX RRset, or no such domain): DANE does not apply to the domain, and any
        resolver may name its hosts. Raises DnsFailure, also when the trusted resolver cannot answer
        for now (as it fails a forged RRset): the hosts are then not taken from anyone else.
        """
        try:
            answer = await self._resolver.lookup(domain, dns.rdatatype.MX)
        except DnsFailure as failure:
            if failure.permanent:
                return None
            raise
        if not answer.authenticated:
            return None
        return await self._resolver.destinations(domain)

    async def records(self, host: str, port: int, domain: str | None) -> tuple[Tlsa, ...] | None:
        """None: DANE does not apply to `host` (reached through `domain`'s MX, when given); else its usable records.

        An empty tuple means TLSA records are published but none is usable: TLS is still mandatory,
        without authentication (RFC 7672 §2.2). DANE needs every step to be authenticated: the MX
        RRset, the host's address records (their zone is signed), then the TLSA RRset itself.
        Raises NotAnMxHost when the MX RRset is authenticated and `host` is not one it names.
        """
        if domain is not None:
            mx = await self._authenticated(domain, dns.rdatatype.MX)
            if mx is None:
                return None
            if host.lower().rstrip(".") not in _mail_exchangers(mx, domain):
                raise NotAnMxHost(f"{host} is not a mail exchanger of {domain}'s DNSSEC-signed MX records (DANE)")
        if await self._authenticated(host, dns.rdatatype.A) is None:
            return None
        tlsa = await self._authenticated(f"_{port}._tcp.{host}", dns.rdatatype.TLSA)
        if tlsa is None or not tlsa.records:
            return None
        found = (Tlsa(r.usage, r.selector, r.mtype, r.cert) for r in tlsa.records)  # type: ignore[attr-defined]
        return tuple(t for t in found if t.usage in _USAGES and t.selector in _SELECTORS and t.matching in _MATCHING)

    async def _authenticated(self, name: str, rdtype: dns.rdatatype.RdataType) -> Answer | None:
        """The answer when the trusted resolver vouches for it; None when it does not, or the name does not exist."""
        try:
            answer = await self._resolver.lookup(name, rdtype)
        except DnsFailure as failure:
            if failure.permanent:  # no such name: nothing to authenticate
                return None
            # A validating resolver fails answers it finds forged: that is no reason to do without DANE.
            raise DaneUnavailable(f"DANE: {failure}") from None
        return answer if answer.authenticated else None


def _mail_exchangers(mx: Answer, domain: str) -> set[str]:
    """The host names an MX RRset names; with no MX records, the domain itself is its mail exchanger."""
    names = {str(r.exchange).rstrip(".").lower() for r in mx.records}  # type: ignore[attr-defined]
    return names or {domain.lower().rstrip(".")}


def _matches(record: Tlsa, certificate: x509.Certificate) -> bool:
    if record.selector == 0:
        content = certificate.public_bytes(Encoding.DER)
    else:
        content = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if record.matching == 1:
        content = hashlib.sha256(content).digest()
    elif record.matching == 2:
        content = hashlib.sha512(content).digest()
    return content == record.data


def mismatch(chain: list[x509.Certificate], records: tuple[Tlsa, ...], host: str) -> str:
    """Why the chain (leaf first) fails `host`'s TLSA records; "" when one of them matches.

    DANE-EE(3) matches the leaf alone: no name, no dates, no CA (RFC 7672 §3.1.1). DANE-TA(2) matches
    a certificate the server sent above the leaf, which then anchors an ordinary path check for the
    host name (RFC 7672 §3.1.2, §3.2).
    """
    if not records:
        return ""
    if any(r.usage == DANE_EE and _matches(r, chain[0]) for r in records):
        return ""
    problems = []
    for record in (r for r in records if r.usage == DANE_TA):
        for depth, anchor in enumerate(chain[1:], start=1):
            if _matches(record, anchor):
                problem = path_problem(chain[:depth], Store([anchor]), host)
                if not problem:
                    return ""
                problems.append(problem)
    found = f"; {problems[0]}" if problems else ""
    return f"certificate of {host} matches none of its TLSA records (DANE){found}"
