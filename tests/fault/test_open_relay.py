"""Open-relay probes from an outside address, through a PROXY protocol listener.

The peer is 127.0.0.1 (in proxy_trusted); its PROXY header makes the client 203.0.113.x, outside
mynetworks, with example.com the one relay domain. Every variant is refused: `554 5.7.1` for a
foreign domain, `550 5.7.1` for sender-specified routing at the relay domain, `501` for what is
malformed; nothing is queued. A peer outside proxy_trusted may not send a PROXY header at all.
"""

from __future__ import annotations

import socket
from collections import Counter

from tests.conftest import Server
from tests.fault.common import queued, report

RELAY_DOMAIN = "example.com"
FOREIGN = "554 5.7.1"
ROUTING = "550 5.7.1"
MALFORMED = "501 5."

# Domains that are not ours, however they are written. (address, needs SMTPUTF8)
_FOREIGN_DOMAINS = [
    ("evil.org", False), ("EVIL.ORG", False), ("Evil.Org", False), ("evil.org.", False),
    ("example.com.", False), ("EXAMPLE.COM.", False), ("example.com.evil.org", False), ("evil-example.com", False),
    ("sub.example.com", False), ("example.co", False), ("examp1e.com", False), ("localhost", False), ("mx.test", False),
    ("[192.0.2.1]", False), ("[127.0.0.1]", False), ("[203.0.113.9]", False), ("[IPv6:::1]", False),
    ("[IPv6:2001:db8::1]", False), ("[example.com]", False), ("xn--exmple-cua.com", False),
    ("exämple.com", True), ("ехample.com", True), ("example。com", True), ("ｅｘａｍｐｌｅ.com", True), ("例え.jp", True),
]
# Local parts, plain and tricky; any of them at a foreign domain is a relay attempt.
_LOCAL_PARTS = [
    "user", "USER", "user+tag", '"user"', '"us er"', "user%example.com", "example.com!user", "user@example.com",
    '"user@example.com"', "üser",
]

# Sender-specified routing aimed at the relay domain: a receiver downstream might still route on it.
_ROUTING = [
    "user%evil.org", "user%evil.org%other.net", "user%[192.0.2.1]", "user%evil.org.", "evil.org!user",
    "other.net!evil.org!user", "user@evil.org", '"user@evil.org"', "user\\@evil.org", "user@evil.org(comment)",
    '"user%evil.org"', '"evil.org!user"', "USER%EVIL.ORG", "EVIL.ORG!USER", "user%EVIL.ORG", "user%exämple.org",
    "user@@evil.org", "user%evil.org@evil.org", '"user"%evil.org', "user%evil.org+tag",
]
_RELAY_SPELLINGS = ["example.com", "EXAMPLE.COM", "Example.Com"]

# Written wrongly: refused as syntax whatever the domain (the relay check never sees them).
_MALFORMED = ["<user@evil.org", "<<user@evil.org>>", "user@evil.org\x00", "user@evil.org\rX: y", "<user@example.com\x7f>"]


def probes() -> list[tuple[str, bool, str]]:
    """(RCPT TO argument, SMTPUTF8 on MAIL, the reply it must get)."""
    out: list[tuple[str, bool, str]] = []
    for domain, utf8 in _FOREIGN_DOMAINS:
        for local in _LOCAL_PARTS:
            out.append((f"<{local}@{domain}>", utf8 or not local.isascii(), FOREIGN))
    for spelling in _RELAY_SPELLINGS:
        for local in _ROUTING:
            out.append((f"<{local}@{spelling}>", not local.isascii(), ROUTING))
    # Source routes are dropped (RFC 5321 §C): what remains is judged, here a foreign mailbox.
    for route in ["@example.com:", "@example.com,@other.net:", "@EXAMPLE.COM:", "@[192.0.2.1]:"]:
        out.append((f"<{route}user@evil.org>", False, FOREIGN))
    out.append(("<@evil.org:user%other.net@example.com>", False, ROUTING))
    out += [(text, False, MALFORMED) for text in _MALFORMED]
    return out


class ProxiedClient:
    """One SMTP session on the PROXY listener, claiming `client` as the address it speaks for."""

    def __init__(self, port: int, client: str, source: str = "127.0.0.1", header: bytes | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        self.replies = self.sock.makefile("rb")
        self.sock.sendall(header if header is not None else f"PROXY TCP4 {client} 192.0.2.25 40000 25\r\n".encode())

    def reply(self) -> bytes:
        lines = []
        while True:
            line = self.replies.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.replies.close()
        self.sock.close()


def probe(server: Server, number: int, recipient: str, smtputf8: bool) -> tuple[bytes, bytes]:
    """MAIL, RCPT and DATA pipelined; returns the RCPT reply and what DATA got (a body is sent only after 354)."""
    client = ProxiedClient(server.port, f"203.0.113.{number % 250 + 1}")
    try:
        assert client.reply().startswith(b"220"), "no greeting behind the PROXY header"
        client.send(b"EHLO probe.outside.test\r\n")
        assert client.reply().startswith(b"250")
        parameters = b" SMTPUTF8" if smtputf8 else b""
        client.send(
            b"MAIL FROM:<probe@outside.test>" + parameters + b"\r\nRCPT TO:" + recipient.encode() + b"\r\nDATA\r\n"
        )
        assert client.reply().startswith(b"250 2.1.0")
        rcpt, data = client.reply(), client.reply()
        if data.startswith(b"354"):
            client.send(b"Subject: relayed?\r\n\r\nThis must never be queued.\r\n.\r\n")
            data += client.reply()
        client.send(b"QUIT\r\n")
        return rcpt, data
    finally:
        client.close()


def test_open_relay_probes_from_outside_are_refused_and_nothing_is_queued(make_server) -> None:
    server = make_server(
        {"smtp": {"proxy_protocol": True, "proxy_trusted": ["127.0.0.1/32"], "relay_domains": [RELAY_DOMAIN]}}
    )
    wrong: list[tuple[str, str, bytes]] = []
    answers: Counter[str] = Counter()
    variants = probes()
    for number, (recipient, smtputf8, expected) in enumerate(variants):
        rcpt, data = probe(server, number, recipient, smtputf8)
        answers[rcpt[:9].decode()] += 1
        if not rcpt.startswith(expected.encode()) or b"queued" in data:
            wrong.append((recipient, expected, rcpt + data))
    listing = queued(server)
    report("open relay probes", probes=len(variants), answers=dict(answers), wrong=len(wrong), queued=len(listing))
    assert not wrong, "\n".join(f"{r!r}: expected {e}, got {got!r}" for r, e, got in wrong)
    assert listing == []
    assert len(variants) >= 250
    # The same client may still send to the relay domain itself: the refusals above are not blanket ones.
    client = ProxiedClient(server.port, "203.0.113.200")
    client.reply()
    client.send(b"EHLO probe.outside.test\r\nMAIL FROM:<probe@outside.test>\r\nRCPT TO:<user@EXAMPLE.com>\r\nRSET\r\n")
    assert [client.reply()[:9] for _ in range(4)] == [b"250-mx.te", b"250 2.1.0", b"250 2.1.5", b"250 2.0.0"]
    client.close()
    assert server.stop() == 0


def test_a_proxy_header_counts_only_from_proxy_trusted_peers(make_server) -> None:
    server = make_server(
        {"smtp": {"proxy_protocol": True, "proxy_trusted": ["127.0.0.1/32"], "relay_domains": [RELAY_DOMAIN]}}
    )
    # 127.0.0.2 is not a trusted proxy: refused at once, whatever address it claims.
    outsider = ProxiedClient(server.port, "127.0.0.1", source="127.0.0.2")
    assert outsider.reply() == b"421 4.7.0 PROXY header not accepted from this address\r\n"
    assert outsider.replies.readline() == b""
    outsider.close()
    # A trusted proxy that sends no header, or a broken one, gets no session either.
    for header in (b"EHLO no-header.test\r\n", b"PROXY TCP4 999.0.0.1 127.0.0.1 1 25\r\n", b"PROXY TCP9 a b c d\r\n"):
        client = ProxiedClient(server.port, "", header=header)
        assert client.replies.readline() == b"", header
        client.close()
    # PROXY UNKNOWN: the client's address is not known, so the proxy's own (127.0.0.1, in mynetworks) is not lent to it.
    unknown = ProxiedClient(server.port, "", header=b"PROXY UNKNOWN\r\n")
    assert unknown.reply().startswith(b"220")
    unknown.send(b"EHLO unknown.test\r\nMAIL FROM:<a@outside.test>\r\nRCPT TO:<user@evil.org>\r\n")
    assert [unknown.reply()[:9] for _ in range(3)] == [b"250-mx.te", b"250 2.1.0", FOREIGN.encode()]
    unknown.close()
    assert queued(server) == []
    report("proxy header", untrusted_peer="421 4.7.0, closed", no_or_bad_header="closed without a reply",
           proxy_unknown_relay=FOREIGN)
    assert server.stop() == 0
