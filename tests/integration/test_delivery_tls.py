"""Outbound TLS and AUTH against aiosmtpd next hops: opportunistic, required, a failed handshake, credentials."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nexthop import NextHop, accept_password
from tests.integration.test_delivery import journal, relay_config, send, wait_until


def server_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    return context


@pytest.fixture
def tls_hop(tls_files: tuple[Path, Path]) -> Iterator[NextHop]:
    hop = NextHop(tls_context=server_context(tls_files), authenticator=accept_password(b"secret")).start()
    yield hop
    hop.stop()


def test_opportunistic_tls_and_auth_through_it(make_server: Any, tls_hop: NextHop) -> None:
    server = make_server(relay_config(tls_hop.port, tls="opportunistic", username="relay", password="secret"))
    send(server)
    arrival = tls_hop.recorder.wait_for(1)[0]
    assert arrival.tls and arrival.login == b"relay"
    assert server.stop() == 0


def test_required_tls_verifies_the_certificate(make_server: Any, tls_hop: NextHop) -> None:
    # The test certificate is self-signed: "required" trusts only what the system trusts.
    server = make_server(relay_config(tls_hop.port, tls="required"))
    send(server)
    wait_until(lambda: journal(server))
    entry = journal(server)[0]
    assert entry["status"] == "deferred" and "certificate verify failed" in entry["reply"].lower()
    assert tls_hop.recorder.arrivals == []
    assert server.stop() == 0


def test_a_failed_handshake_falls_back_to_plain_text_when_opportunistic(make_server: Any, tls_files: tuple[Path, Path]) -> None:
    # A next hop that offers STARTTLS, then ends every handshake: it wants a client certificate
    # (TLS 1.2, so the refusal comes within the handshake itself).
    picky = server_context(tls_files)
    picky.maximum_version = ssl.TLSVersion.TLSv1_2
    picky.verify_mode = ssl.CERT_REQUIRED
    picky.load_verify_locations(tls_files[0])
    hop = NextHop(tls_context=picky).start()
    try:
        server = make_server(relay_config(hop.port, tls="opportunistic"))
        send(server)
        arrival = hop.recorder.wait_for(1)[0]
        assert not arrival.tls
        assert server.stop() == 0
    finally:
        hop.stop()
