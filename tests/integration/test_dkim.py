"""DKIM end to end: keys made by `fastmta dkim keygen`, their records served by a loopback DNS server, mail
relayed by the real server to an aiosmtpd next hop, and what arrived there checked by dkimpy's verifier."""

from __future__ import annotations

import contextlib
import io
import random
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage

import dkim
import dns.resolver
import httpx
import pytest

from fastmta import cli
from tests.conftest import Server
from tests.integration.nexthop import Dns, NextHop
from tests.integration.test_ingress import without_received

# (domain, selector, algorithm, workspace, signing)
KEYS = [
    ("example.com", "old", "rsa", "", False),  # retired by a rotation, still published
    ("example.com", "new", "rsa", "", True),
    ("example.com", "acme1", "ed25519", "acme", True),
    ("ed.example", "ed1", "ed25519", "", True),
    ("ed.example", "rsa1", "rsa", "", True),  # beside it: an RSA signature for receivers without Ed25519
]


@dataclass
class Relay:
    server: Server
    hop: NextHop
    dns: Dns
    viewer_token: str

    def verify(self, content: bytes, index: int) -> bool:
        """dkimpy's verdict on the index-th signature, the key looked up in the test's DNS server as a receiver would."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], self.dns.port

        def txt(name: bytes, timeout: int = 5) -> bytes:
            return b"".join(resolver.resolve(name.decode(), "TXT", lifetime=timeout)[0].strings)

        return bool(dkim.DKIM(content).verify(index, dnsfunc=txt))


def _keygen(server: Server, domain: str, selector: str, algorithm: str) -> list[str]:
    """The character-strings of the TXT record keygen printed, as the zone would publish them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["dkim", "keygen", domain, selector, "--algorithm", algorithm, "--config", str(server.config_path)]) == 0
    return [part for index, part in enumerate(out.getvalue().split('"')) if index % 2]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    hop = NextHop().start()
    entries = [
        {"domain": domain, "selector": selector, "workspace": workspace, "signing": signing}
        for domain, selector, _, workspace, signing in KEYS
    ]
    server = Server(tmp_path_factory.mktemp("dkim"), {
        "smtp": {"workers": 1},
        "delivery": {"workers": 1},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
        "admin": {"enabled": True},
        "dkim": {"keys": entries},
    })
    records: dict[str, list[str | list[str]]] = {
        f"{selector}._domainkey.{domain}": [_keygen(server, domain, selector, algorithm)]
        for domain, selector, algorithm, _, _ in KEYS
    }
    zone = Dns(mx={}, a={}, txt=records).start()
    server.start()
    token = server.cli("token", "create", "--role", "viewer", "--name", "dkim").stdout.decode().split()[-1]
    try:
        yield Relay(server, hop, zone, token)
    finally:
        server.stop()
        zone.stop()
        hop.stop()


def _text_with_8bit_and_long_lines() -> bytes:
    long_line = ("Grüße aus Köln, " * 70).encode()[:998]  # RFC 5321's longest line, split inside a UTF-8 sequence
    return (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: eight bit\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + long_line + b"\r\n\tindented \t and   spaced   \r\n\xff\xfe latin-1 \xe9t\xe9\r\n\r\n\r\n"
    )


def _with_attachment() -> bytes:
    message = EmailMessage()
    message["From"] = "Ed <ed@ed.example>"
    message["To"] = "bob@example.org"
    message["Subject"] = "attachment"
    message.set_content("See the attached file.\n")
    message.add_alternative("<p>See the <b>attached</b>   file.</p>\n", subtype="html")
    attachment = random.Random(7).randbytes(30_000)
    message.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="data.bin")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


SENT = {
    "eight bit": _text_with_8bit_and_long_lines(),
    "attachment": _with_attachment(),
    "workspace": b"From: a@example.com\r\nX-Workspace-ID: acme\r\nSubject: workspace\r\n\r\nfor acme\r\n",
    "no key": b"From: a@nokey.example\r\nSubject: no key\r\n\r\nunsigned\r\n",
}


def _signatures(content: bytes) -> list[dict[bytes, bytes]]:
    """The tags of each DKIM-Signature, all of them in front of our Received header."""
    block = content[: content.index(b"\r\nReceived: ")]
    assert content.startswith(b"DKIM-Signature:") and content.count(b"DKIM-Signature:") == block.count(b"DKIM-Signature:")
    return [dkim.util.parse_tag_value(field) for field in block.split(b"DKIM-Signature:")[1:]]


def test_what_the_next_hop_receives_verifies_against_the_published_key(relay: Relay) -> None:
    with smtplib.SMTP("127.0.0.1", relay.server.port) as client:
        for body in SENT.values():
            client.sendmail("sender@example.com", ["bob@example.org"], body, mail_options=["BODY=8BITMIME"])
    arrivals = {a.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode(): a for a in relay.hop.recorder.wait_for(4)}
    expected = {
        "eight bit": [(b"example.com", b"new", b"rsa-sha256")],
        "attachment": [(b"ed.example", b"ed1", b"ed25519-sha256"), (b"ed.example", b"rsa1", b"rsa-sha256")],
        "workspace": [(b"example.com", b"acme1", b"ed25519-sha256")],
    }
    for subject, keys in expected.items():
        content = arrivals[subject].content
        signatures = _signatures(content)
        assert [(tags[b"d"], tags[b"s"], tags[b"a"]) for tags in signatures] == keys
        for index, tags in enumerate(signatures):
            assert tags[b"c"] == b"relaxed/relaxed" and abs(int(tags[b"t"]) - time.time()) < 60
            assert relay.verify(content, index), (subject, index)
        # The signatures and our Received header in front, the message itself byte for byte behind them.
        assert without_received(content[content.index(b"\r\nReceived: ") + 2 :]) == SENT[subject]
    unsigned = arrivals["no key"].content
    assert b"DKIM-Signature" not in unsigned and without_received(unsigned) == SENT["no key"]


def test_the_api_lists_each_key_with_its_age_and_record(relay: Relay) -> None:
    with httpx.Client(base_url=relay.server.admin_url, timeout=10) as client:
        assert client.get("/api/v1/dkim").status_code == 401
        answer = client.get("/api/v1/dkim", headers={"Authorization": f"Bearer {relay.viewer_token}"})
    assert answer.status_code == 200
    listed = {(k["domain"], k["selector"]): k for k in answer.json()["data"]}
    assert len(listed) == len(KEYS)
    for domain, selector, algorithm, workspace, signing in KEYS:
        key = listed[(domain, selector)]
        assert (key["workspace"], key["signing"], key["problem"]) == (workspace, signing, "")
        assert key["algorithm"] == f"{algorithm}-sha256" and key["bits"] == (2048 if algorithm == "rsa" else 256)
        assert key["dns_name"] == f"{selector}._domainkey.{domain}"
        (published,) = relay.dns.txt[key["dns_name"]]
        assert key["dns_record"] == "".join(published)
        assert 0 <= key["age_seconds"] < 600 and key["key_file"].endswith(f"/dkim/{domain}/{selector}.key")
