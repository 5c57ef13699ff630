"""The delivery side's pure parts: routes, retry timing, bounces, the token bucket, the wake-up FIFO."""

from __future__ import annotations

import asyncio
import email
import random
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.config import RouteConfig, parse_rate
from fastmta.delivery import dsn, retry
from fastmta.delivery.outbound import crlf_lines, dot_stuffed, xtext
from fastmta.delivery.pool import TokenBucket
from fastmta.delivery.routes import Router, matches
from fastmta.queue.records import FAILED, Message, Recipient
from fastmta.queue.wakeup import Poker, Waiter


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("*", "anything.test", True),
        ("example.org", "example.org", True),
        ("example.org", "sub.example.org", False),
        ("*.example.org", "sub.example.org", True),
        ("*.example.org", "example.org", False),
        (".example.org", "a.b.example.org", True),
        ("Example.ORG", "example.org", True),
    ],
)
def test_route_patterns(pattern: str, domain: str, expected: bool) -> None:
    assert matches(pattern, domain) is expected


def test_first_matching_route_wins() -> None:
    router = Router([RouteConfig(match=["a.test"], kind="discard"), RouteConfig(match=["*"], kind="mx")])
    assert router.route_for("A.TEST.")[0] == 0 and router.route_for("b.test")[0] == 1
    assert Router([RouteConfig(match=["a.test"], kind="discard")]).route_for("b.test") is None


def test_retry_steps_with_jitter() -> None:
    schedule = [60.0, 300.0]
    rng = random.Random(1)
    for attempts, step in ((1, 60.0), (2, 300.0), (7, 300.0)):
        delay = retry.next_attempt(attempts, schedule, 1000.0, rng) - 1000.0
        assert 0.9 * step <= delay <= 1.1 * step
    assert retry.expired(0.0, 100.0, 100.0) and not retry.expired(0.0, 100.0, 99.0)


@pytest.mark.parametrize(("text", "per_second"), [("", 0.0), ("100/s", 100.0), ("60/m", 1.0), ("7200/h", 2.0)])
def test_rates(text: str, per_second: float) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["100", "x/s", "5/w", "0/s", "-1/s"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_token_bucket_paces_after_a_burst() -> None:
    async def main() -> float:
        bucket = TokenBucket(20.0)
        start = time.monotonic()
        for _ in range(30):  # 20 at once, then 10 at 20/s
            await bucket.take()
        return time.monotonic() - start

    assert 0.4 <= asyncio.run(main()) < 1.5


def original(sender: str = "a@example.com", **changes: object) -> Message:
    recipient = Recipient("b@x.test", orcpt="rfc822;B@x.test", state=FAILED, last_reply="550 5.1.1 No such user", remote_host="mx.x.test")
    fields = dict(id="ID1", sender=sender, recipients=[recipient], received_at=1.7e9, size=10, next_attempt=0.0, envid="E1")
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


BODY = b"Subject: hi\r\nMessage-ID: <m@x>\r\n\r\nsecret body\r\n"


def test_bounce_is_an_rfc3464_report() -> None:
    message = original()
    bounce, body = dsn.build(message, BODY, message.recipients, "failed", "mx.test", "MAILER-DAEMON@mx.test", 1.7e9, size_limit=50_000)
    assert bounce.sender == "" and [r.address for r in bounce.recipients] == ["a@example.com"]
    parsed = email.message_from_bytes(body)
    assert parsed.get_content_type() == "multipart/report" and parsed.get_param("report-type") == "delivery-status"
    text, status, returned = parsed.get_payload()
    assert "550 5.1.1 No such user" in text.get_payload()
    fields = status.as_string()
    for expected in ("Reporting-MTA: dns; mx.test", "Original-Envelope-Id: E1", "Final-Recipient: rfc822; b@x.test",
                     "Original-Recipient: rfc822; B@x.test", "Action: failed", "Status: 5.1.1", "Remote-MTA: dns; mx.x.test"):
        assert expected in fields
    assert returned.get_content_type() == "text/rfc822-headers" and b"secret body" not in body
    full = dsn.build(original(ret="FULL"), BODY, message.recipients, "failed", "mx.test", "m@mx.test", size_limit=50_000)
    assert full[1].count(b"secret body") == 1


def test_no_bounce_to_the_null_sender_or_against_notify() -> None:
    message = original(sender="")
    assert dsn.build(message, BODY, message.recipients, "failed", "mx.test", "m@mx.test", size_limit=50_000) is None
    never = original()
    never.recipients[0].notify = ["NEVER"]
    assert dsn.build(never, BODY, never.recipients, "failed", "mx.test", "m@mx.test", size_limit=50_000) is None
    assert not dsn.wants_notice(Recipient("x@y"), "delayed") and dsn.wants_notice(Recipient("x@y", notify=["DELAY"]), "delayed")


@pytest.mark.parametrize("action", ["delivered", "relayed"])
def test_success_reports_only_on_request(action: str) -> None:
    message = original()
    message.recipients[0].last_reply = "250 2.0.0 Ok: queued as X1"
    assert dsn.build(message, BODY, message.recipients, action, "mx.test", "m@mx.test", size_limit=50_000) is None
    message.recipients[0].notify = ["SUCCESS", "FAILURE"]
    report, body = dsn.build(message, BODY, message.recipients, action, "mx.test", "m@mx.test", size_limit=50_000)
    assert report.subject == "Successful Mail Delivery Report" and report.sender == ""
    assert f"Action: {action}".encode() in body and b"Status: 2.0.0" in body


@pytest.mark.parametrize(("reply", "status"), [("550 5.1.1 gone", "5.1.1"), ("451 try later", "4.0.0"), ("554 no", "5.0.0"),
                                               ("250 ok", "2.0.0")])
def test_status_of_a_reply(reply: str, status: str) -> None:
    assert dsn.status_of(reply) == status


def test_xtext() -> None:
    assert xtext("rfc822;a+b=c@d é") == "rfc822;a+2Bb+3Dc@d+20+C3+A9"


def test_a_poke_wakes_the_waiter_and_no_waiter_costs_nothing(tmp_path: Path) -> None:
    Poker(tmp_path).poke()  # nobody listens yet: silently nothing

    async def main() -> bool:
        event = asyncio.Event()
        waiter = Waiter(tmp_path, asyncio.get_running_loop(), event)
        poker = Poker(tmp_path)
        try:
            poker.poke()
            await asyncio.wait_for(event.wait(), 2)
            return event.is_set()
        finally:
            poker.close()
            waiter.close()

    assert asyncio.run(main())


@given(st.binary(max_size=300) | st.lists(st.sampled_from([b".", b"..", b"\r\n", b"\n", b"\r", b"x", b"\r\n."]), max_size=40).map(b"".join))
def test_wire_form_is_what_the_client_library_would_send(body: bytes) -> None:
    """aiosmtplib's own DATA preparation (regular expressions, line by line) is the reference."""
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) if body else b""
    assert dot_stuffed(crlf_lines(body)) == expected


def test_wire_form_known_answers() -> None:
    assert crlf_lines(b"a\r\nb\r\n") == b"a\r\nb\r\n"
    assert crlf_lines(b"a\nb\rc") == b"a\r\nb\r\nc\r\n"
    assert dot_stuffed(b".a\r\n..b\r\nc.\r\n") == b"..a\r\n...b\r\nc.\r\n"
