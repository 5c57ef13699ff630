"""Next hops for delivery tests: an aiosmtpd server that records what arrived and answers as scripted,
and a loopback DNS server (dnslib) with a fixed zone."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from dnslib import AAAA, MX, QTYPE, RR, SOA, TLSA, TXT, A, DNSLabel
from dnslib.server import BaseResolver, DNSServer

from tests.conftest import free_port


@dataclass
class Arrival:
    sender: str
    recipients: list[str]
    content: bytes
    peer: tuple[str, int]
    at: float
    tls: bool = False
    login: bytes | None = None  # the AUTH user the client logged in as


@dataclass
class Recorder:
    """The handler: `data_replies` are answered to DATA in order (then 250), `rcpt_replies` per address."""

    arrivals: list[Arrival] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_delay: float = 0.0
    open_now: int = 0
    most_open: int = 0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        self.arrivals.append(
            Arrival(
                envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content, session.peer, time.time(),
                tls=session.ssl is not None, login=session.auth_data,
            )
        )
        return "250 2.0.0 OK"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Arrival]:
        deadline = time.monotonic() + timeout
        while len(self.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.arrivals) >= count, f"{len(self.arrivals)} of {count} arrived"
        return self.arrivals


class _CountingSMTP(SMTP):
    def connection_made(self, transport):  # noqa: ANN001
        recorder: Recorder = self.event_handler
        with recorder.lock:
            recorder.connections += 1
            recorder.open_now += 1
            recorder.most_open = max(recorder.most_open, recorder.open_now)
        super().connection_made(transport)

    def connection_lost(self, exc):  # noqa: ANN001
        recorder: Recorder = self.event_handler
        with recorder.lock:
            recorder.open_now -= 1
        super().connection_lost(exc)


class _Controller(Controller):
    def __init__(self, handler: Recorder, smtp_options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.smtp_options = smtp_options

    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.smtp_options)


def accept_password(password: bytes) -> Any:
    """An aiosmtpd authenticator that takes any user with this password."""

    def authenticate(server, session, envelope, mechanism, auth_data):  # noqa: ANN001
        return AuthResult(success=auth_data.password == password, auth_data=auth_data.login)

    return authenticate


class NextHop:
    def __init__(self, port: int | None = None, host: str = "127.0.0.1", smtputf8: bool = True, **smtp_options: Any) -> None:
        """`smtp_options` go to aiosmtpd's SMTP: tls_context, authenticator, auth_require_tls..."""
        self.host = host
        self.port = port or free_port()
        self.smtp_options = {"enable_SMTPUTF8": smtputf8, **smtp_options}
        self.recorder = Recorder()
        self._controller: Controller | None = None

    def start(self) -> NextHop:
        self._controller = _Controller(self.recorder, self.smtp_options, hostname=self.host, port=self.port)
        self._controller.start()
        self.recorder.connections = 0  # start() made one to see the server answer
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class _ZoneResolver(BaseResolver):
    def __init__(self, zone: Dns) -> None:
        self.zone = zone

    def resolve(self, request, handler):  # noqa: ANN001
        zone = self.zone
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        zone.queries[(name, qtype)] += 1
        if (name, qtype) in zone.servfail:
            reply.header.rcode = 2  # SERVFAIL
            return reply
        if not any(name in records for records in (zone.mx, zone.a, zone.aaaa, zone.txt, zone.tlsa)):
            reply.header.rcode = 3  # NXDOMAIN
            reply.add_auth(_soa(name, zone.negative_ttl))
            return reply
        # As a validating resolver: AD for what it validated (a signed zone), never merely echoed from the query.
        reply.header.ad = int(name in zone.secure)
        if qtype == "MX":
            for preference, exchange in zone.mx.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(DNSLabel(exchange), preference), ttl=zone.ttl))
        elif qtype == "A" and name in zone.a:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(zone.a[name]), ttl=zone.ttl))
        elif qtype == "AAAA" and name in zone.aaaa:
            reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(zone.aaaa[name]), ttl=zone.ttl))
        elif qtype == "TXT":
            for text in zone.txt.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=zone.ttl))
        elif qtype == "TLSA":
            for usage, selector, matching, data in zone.tlsa.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.TLSA, rdata=TLSA(usage, selector, matching, data), ttl=zone.ttl))
        if not reply.rr:
            reply.add_auth(_soa(name, zone.negative_ttl))
        return reply


def _soa(name: str, negative_ttl: int) -> RR:
    """For "no such name" and "no such record": the zone's SOA says how long that answer may be cached (RFC 2308)."""
    soa = SOA(DNSLabel("ns.test"), DNSLabel("hostmaster.test"), (1, 60, 60, 600, negative_ttl))
    return RR(DNSLabel(name), QTYPE.SOA, rdata=soa, ttl=negative_ttl)


class Dns:
    """UDP and TCP on one loopback port; names in `mx`, `a`, `aaaa`, `txt` and `tlsa` exist, all others are NXDOMAIN.

    `servfail` holds (name, type) pairs that fail; `queries` counts what was asked, for cache tests.
    Answers about names in `secure` carry the AD bit: the server plays a DNSSEC-validating resolver.
    A `txt` record is its text, or its character-strings where it is longer than one may hold (255
    octets), as a DKIM RSA key's record is.
    """

    def __init__(
        self, mx: dict[str, list[tuple[int, str]]], a: dict[str, str], aaaa: dict[str, str] | None = None,
        ttl: int = 60, negative_ttl: int = 60, servfail: set[tuple[str, str]] | None = None,
        txt: dict[str, list[str | list[str]]] | None = None, tlsa: dict[str, list[tuple[int, int, int, bytes]]] | None = None,
        secure: set[str] | None = None,
    ) -> None:
        self.port = free_port()
        self.mx, self.a, self.aaaa = mx, a, aaaa or {}
        self.txt, self.tlsa, self.secure = txt or {}, tlsa or {}, secure or set()
        self.ttl, self.negative_ttl = ttl, negative_ttl
        self.servfail = servfail or set()
        self.queries: Counter[tuple[str, str]] = Counter()
        resolver = _ZoneResolver(self)
        self._servers = [
            DNSServer(resolver, address="127.0.0.1", port=self.port, tcp=tcp, logger=_Quiet()) for tcp in (False, True)
        ]

    def start(self) -> Dns:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()


class _Quiet:
    def __getattr__(self, name: str):  # noqa: ANN204
        return lambda *args, **kwargs: None
