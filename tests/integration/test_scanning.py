"""Content scanning against the real daemons: clamd with a signature the test writes, spamd with its shipped rules."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmta.config import ScanConfig
from fastmta.events import records as events
from fastmta.metrics import SmtpMetrics
from fastmta.scan.scanner import Outcome, Scanner
from fastmta.scan.verdict import ACCEPT, BUSY, ERROR, REJECT, TEMPFAIL, TIMEOUT, SpamReport, Unavailable, VirusReport
from tests.admin.conftest import Admin
from tests.admin.test_metrics import samples
from tests.conftest import free_port
from tests.integration.nexthop import NextHop
from tests.integration.test_ingress import queued_id, stored_body, without_received
from tests.integration.test_outbox_events import history_events, wait_until
from tests.scanners import SIGNATURE, Daemon, clean, missing, running, start_clamd, start_spamd, with_eicar_attached, with_gtube


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One spamd for the module (no other uses one), still loading its rules: a test calls ready() as late as it can."""
    reason = missing("spamd", "spamd")
    if reason:
        pytest.skip(reason)
    with running(start_spamd(tmp_path_factory.mktemp("spamd"))) as daemon:
        yield daemon


@pytest.fixture
def clamd(tmp_path: Path) -> Iterator[Daemon]:
    """A clamd of the test's own, which it may pause or stop: with one signature, it starts in a tenth of a second."""
    reason = missing("clamd", "clamav-daemon")
    if reason:
        pytest.skip(reason)
    with running(start_clamd(tmp_path / "clamd")) as daemon:
        yield daemon


def send(server_port: int, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", server_port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@example.com")
        client.rcpt("bob@example.org")
        return client.data(message)


def test_the_server_tags_holds_and_refuses(make_server: Any, spamd: Daemon, clamd: Daemon) -> None:
    hop = NextHop().start()
    try:
        server = make_server({
            "admin": {"enabled": True},
            "history": {"enabled": True},
            "delivery": {"workers": 1},
            "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
            "scan": {"spamassassin": True, "spamassassin_port": spamd.port, "spam_action": "hold",
                     "clamav": True, "clamav_port": clamd.port, "virus_action": "reject"},
        })  # fmt: skip
        spamd.ready()  # loading its rules while the server started
        ham, spam, virus = clean(), with_gtube(), with_eicar_attached()
        code, _ = send(server.port, ham)
        assert code == 250
        relayed = without_received(hop.recorder.wait_for(1)[0].content)
        assert relayed.startswith(b"X-Spam-Flag: NO\r\nX-Spam-Score: ") and relayed.endswith(ham)

        code, reply = send(server.port, spam)
        held_id = queued_id(reply)
        assert code == 250 and without_received(stored_body(server, held_id)).startswith(b"X-Spam-Flag: YES\r\nX-Spam-Score: 10")

        code, reply = send(server.port, virus)
        assert (code, reply) == (550, f"5.7.1 Message rejected: virus found ({SIGNATURE}.UNOFFICIAL)".encode())
        clamd.stop()
        code, reply = send(server.port, ham)
        assert (code, reply) == (451, b"4.7.1 Content scanning is unavailable, try again later")

        wait_until(lambda: any(isinstance(e, events.VirusDetected) for e in history_events(server)))
        found = history_events(server)
        (rejected,) = [e for e in found if isinstance(e, events.Rejected) and e.reply.startswith("550")]
        (spam_found,) = [e for e in found if isinstance(e, events.SpamDetected)]
        (virus_found,) = [e for e in found if isinstance(e, events.VirusDetected)]
        assert (spam_found.message_id, spam_found.action, spam_found.sender) == (held_id, "held", "alice@example.com")
        assert "GTUBE" in spam_found.rules and spam_found.score >= 1000 and spam_found.threshold == 5.0
        assert any(isinstance(e, events.Held) and e.message_id == held_id for e in found)
        assert (virus_found.message_id, virus_found.action, virus_found.virus) == (rejected.id, "rejected", f"{SIGNATURE}.UNOFFICIAL")
        assert virus_found.client_ip == "127.0.0.1"

        admin = Admin(server, roles=("viewer",))
        # spamd judged four messages (clamd's outage does not stop it), clamd three and failed once.
        expected = {"spam": {"detected": 1, "rate": 0.25}, "virus": {"detected": 1, "rate": 0.3333}}
        with admin.client("viewer") as client:
            stats = lambda: {k: v for k, v in client.get("/stats").json()["data"].items() if k in expected}  # noqa: E731
            wait_until(lambda: stats() == expected)
            assert client.get("/stats").json()["data"]["queue"]["held"] == 1
        assert sum(samples(admin, "smtp_spam_detected_total", action="held").values()) == 1
        assert sum(samples(admin, "smtp_virus_detected_total", action="rejected").values()) == 1
        assert sum(samples(admin, "smtp_virus_scans_total", result="error").values()) == 1
        assert len(hop.recorder.arrivals) == 1  # the held message stays
        assert server.stop() == 0
    finally:
        hop.stop()


def scanner(**settings: Any) -> Scanner:
    return Scanner(ScanConfig(**settings), SmtpMetrics("smtp-0", enabled=False))


def test_both_daemons_judge_at_once(spamd: Daemon, clamd: Daemon) -> None:
    spamd.ready()
    both = scanner(spamassassin=True, spamassassin_port=spamd.port, clamav=True, clamav_port=clamd.port)

    async def judge() -> list[Outcome]:
        return await asyncio.gather(*(both.scan(m) for m in (clean(), with_gtube(), with_eicar_attached())))

    ham, spam, virus = asyncio.run(judge())
    assert isinstance(ham.spam, SpamReport) and not ham.spam.spam and ham.virus == VirusReport("")
    assert ham.verdict.action == ACCEPT and ham.verdict.headers.startswith(b"X-Spam-Flag: NO\r\n")
    assert isinstance(spam.spam, SpamReport) and spam.spam.spam and "GTUBE" in spam.spam.rules
    assert spam.verdict.action == ACCEPT and spam.verdict.headers.startswith(b"X-Spam-Flag: YES\r\n")  # tagged
    assert virus.virus == VirusReport(f"{SIGNATURE}.UNOFFICIAL") and virus.verdict.action == REJECT
    assert both.metrics.spam_scans == {"clean": 2, "detected": 1} and both.metrics.spam_detected == {"tagged": 1}
    assert both.metrics.virus_scans == {"clean": 2, "detected": 1} and both.metrics.virus_detected == {"rejected": 1}


def test_a_scanner_that_hangs_is_timed_out_and_the_next_message_does_not_wait_behind_it(clamd: Daemon) -> None:
    stuck = scanner(clamav=True, clamav_port=clamd.port, timeout=0.5, max_concurrent=1)

    async def two_at_once() -> tuple[Outcome, Outcome, float]:
        first = asyncio.ensure_future(stuck.scan(clean()))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        second = await stuck.scan(clean())
        waited = time.monotonic() - started
        return await first, second, waited

    clamd.pause()  # accepts connections (the kernel does), answers nothing
    try:
        first, second, waited = asyncio.run(two_at_once())
    finally:
        clamd.resume()
    assert first.virus == Unavailable(TIMEOUT, "no answer within 500ms") and first.verdict.action == TEMPFAIL
    assert isinstance(second.virus, Unavailable) and second.virus.why == BUSY and waited < 0.25
    assert stuck.metrics.virus_scans == {"timeout": 1, "busy": 1} and stuck.active == 0
    assert asyncio.run(stuck.scan(with_eicar_attached())).verdict.action == REJECT  # answering again


def test_a_scanner_that_is_down_gets_the_configured_policy() -> None:
    closed = free_port()
    for unavailable, action in (("tempfail", TEMPFAIL), ("accept", ACCEPT)):
        down = scanner(clamav=True, clamav_port=closed, unavailable=unavailable)
        outcome = asyncio.run(down.scan(with_eicar_attached()))
        assert isinstance(outcome.virus, Unavailable) and outcome.virus.why == ERROR
        assert outcome.verdict.action == action
