"""The sans-I/O session on its own: replies and actions for byte streams, however they are split."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from fastmta.access.accounts import User
from fastmta.config import LimitsConfig
from fastmta.limits import ClientLimits
from fastmta.queue.store import StoreFullError
from fastmta.ratelimit import RateLimiter
from fastmta.smtp.session import Admit, Close, Commit, Session
from tests.session_driver import LIMITS, Driver, make_settings


@pytest.fixture(scope="module")
def limiter(tmp_path_factory: pytest.TempPathFactory) -> RateLimiter:
    return RateLimiter(tmp_path_factory.mktemp("state") / "state.lmdb")


def new_session(limiter: RateLimiter, ip: str = "127.0.0.1", limits: LimitsConfig | None = None, **changes: object) -> Session:
    """A session whose Driver admits and reserves against real limits on a real state.lmdb."""
    limits = limits or LimitsConfig()
    per_client = {"messages": limits.messages_per_hour, "recipients": limits.recipients_per_hour,
                  "auth_failures": limits.auth_failures_per_hour}  # fmt: skip
    session = Session(make_settings(per_client_limits=per_client, **changes), ip, 4000)
    LIMITS[session] = ClientLimits(limiter, limits, 1000, 1000)
    return session


TRANSCRIPT = (
    b"EHLO client.test\r\n"
    b"MAIL FROM:<a@example.com> SIZE=100\r\n"
    b"RCPT TO:<b@example.org> NOTIFY=SUCCESS\r\n"
    b"RCPT TO:<c@example.net>\r\n"
    b"DATA\r\n"
    b"Subject: s\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n..dot\r\n.\r\n"
    b"MAIL FROM:<>\r\nRCPT TO:<d@example.org>\r\nBDAT 8\r\nchunk1\r\nBDAT 8 LAST\r\nchunk2\r\n"
    b"NOOP\r\nVRFY x\r\nQUIT\r\n"
)


def test_transcript(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    driver.feed(TRANSCRIPT)
    lines = driver.out.decode().split("\r\n")
    assert lines[0] == "220 mx.test ESMTP fastmta"
    codes = [line[:9] for line in lines if line and not line.startswith("250-")]
    assert codes == [
        "220 mx.te", "250 CHUNK", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354 End d", "250 2.0.0",
        "250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0", "250 2.0.0", "252 2.0.0", "221 2.0.0",
    ]
    first, second = driver.commits
    assert first.body.endswith(b"\r\n\r\nbody\r\n.dot\r\n")
    assert first.message.message_id == "<x@y>" and first.message.subject == "s"
    assert [r.address for r in first.message.recipients] == ["b@example.org", "c@example.net"]
    assert first.message.recipients[0].notify == ["SUCCESS"]
    assert second.message.sender == "" and second.body.endswith(b" +0000\r\nchunk1\r\nchunk2\r\n")
    assert b"\tfor <d@example.org>; " in second.body
    assert driver.closed


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(min_value=1, max_value=len(TRANSCRIPT)), max_size=30))
def test_any_split_gives_the_same_conversation(limiter: RateLimiter, cuts: list[int]) -> None:
    whole = Driver(new_session(limiter))
    whole.feed(TRANSCRIPT)
    split = Driver(new_session(limiter))
    points = sorted(set(cuts))
    for start, end in zip([0, *points], [*points, len(TRANSCRIPT)]):
        split.feed(TRANSCRIPT[start:end])

    def strip_times(out: bytes) -> bytes:
        return b"\n".join(line.split(b" as ")[0] for line in out.split(b"\r\n"))

    assert strip_times(split.out) == strip_times(whole.out)
    assert [c.body.split(b"\r\n", 3)[3] for c in split.commits] == [c.body.split(b"\r\n", 3)[3] for c in whole.commits]


def test_store_full_answers_452_and_keeps_the_session(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter), commit_error=StoreFullError("full"))
    out = driver.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert b"452 4.3.1 " in out and out.endswith(b"250 2.0.0 Ok\r\n")


def test_other_commit_errors_answer_451(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter), commit_error=OSError("disk"))
    out = driver.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nhi\r\n.\r\n")
    assert out.endswith(b"451 4.3.0 Local error in processing\r\n")


def test_auth_flows(limiter: RateLimiter) -> None:
    session = new_session(limiter)
    session.tls = "TLSv1.3 test"
    driver = Driver(session)
    plain = base64.b64encode(b"\0alice\0right")
    assert driver.feed(b"EHLO x\r\n").find(b"AUTH PLAIN LOGIN") > 0
    assert driver.feed(b"AUTH PLAIN " + plain + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert driver.feed(b"AUTH PLAIN\r\n").startswith(b"503 5.5.1")
    assert session.auth_user == "alice"

    session = new_session(limiter)
    session.tls = "TLSv1.3 test"
    driver = Driver(session)
    driver.feed(b"EHLO x\r\n")
    assert driver.feed(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert driver.feed(base64.b64encode(b"bob") + b"\r\n") == b"334 UGFzc3dvcmQ6\r\n"
    assert driver.feed(base64.b64encode(b"wrong") + b"\r\n").startswith(b"535 5.7.8")
    assert driver.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert driver.feed(b"*\r\n").startswith(b"501 5.7.0")
    assert driver.feed(b"AUTH PLAIN !!!\r\n").startswith(b"501 5.5.4")
    assert driver.feed(b"AUTH CRAM-MD5\r\n").startswith(b"504 5.5.4")


def test_an_over_long_auth_answer_ends_the_exchange(limiter: RateLimiter) -> None:
    session = new_session(limiter)
    session.tls = "TLSv1.3 test"
    driver = Driver(session)
    driver.feed(b"EHLO x\r\n")
    assert driver.feed(b"AUTH LOGIN\r\n") == b"334 VXNlcm5hbWU6\r\n"
    assert driver.feed(b"A" * 600 + b"\r\n").startswith(b"500 5.5.2")
    assert driver.feed(b"NOOP\r\n").startswith(b"250")  # a command again, not the next AUTH answer


def test_auth_needs_tls_and_failures_are_limited(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    assert b"AUTH" not in driver.feed(b"EHLO x\r\n")
    assert driver.feed(b"AUTH PLAIN AGEAYg==\r\n").startswith(b"538 5.7.11")
    session = new_session(limiter, ip="192.0.2.9", limits=LimitsConfig(auth_failures_per_hour=2))
    session.tls = "TLS"
    driver = Driver(session)
    driver.feed(b"EHLO x\r\n")
    bad = b"AUTH PLAIN " + base64.b64encode(b"\0u\0bad") + b"\r\n"
    assert driver.feed(bad).startswith(b"535")
    assert driver.feed(bad).startswith(b"535")
    assert driver.feed(bad).startswith(b"421 4.7.0") and driver.closed


def test_credentials_that_cannot_be_checked_are_a_temporary_failure_not_a_counted_one(limiter: RateLimiter) -> None:
    session = new_session(limiter, ip="192.0.2.10", limits=LimitsConfig(auth_failures_per_hour=1))
    session.tls = "TLS"
    driver = Driver(session)
    driver.feed(b"EHLO x\r\n")
    unavailable = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0unavailable") + b"\r\n"
    assert driver.feed(unavailable) == b"454 4.7.0 Temporary authentication failure, try again later\r\n"
    assert driver.feed(unavailable).startswith(b"454 4.7.0") and not driver.closed
    assert driver.feed(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0right") + b"\r\n").startswith(b"235 2.7.0")


def test_daily_quota_of_an_authenticated_user(limiter: RateLimiter) -> None:
    session = new_session(limiter)
    session.tls = "TLS"
    driver = Driver(session, user=User("quota-user", "", quota=2))
    driver.feed(b"EHLO x\r\nAUTH PLAIN " + base64.b64encode(b"\0quota-user\0right") + b"\r\n")
    for _ in range(2):
        assert driver.feed(b"MAIL FROM:<a@b.c>\r\n").startswith(b"250")
        driver.feed(b"RSET\r\n")
    assert driver.feed(b"MAIL FROM:<a@b.c>\r\n").startswith(b"450 4.7.1 Daily sending quota of 2")
    assert not driver.closed


def test_too_many_errors_closes(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    out = driver.feed(b"BOGUS\r\n" * 10)
    assert out.count(b"500 5.5.2") == 5 and out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")
    assert driver.closed


def test_shutdown_lets_open_transaction_finish(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    out, action = driver.session.shutdown()
    assert out == b"" and action is None
    out = driver.feed(b"RCPT TO:<d@example.org>\r\nDATA\r\nhi\r\n.\r\n")
    assert b"queued as" in out and out.endswith(b"421 4.3.2 Service shutting down, closing connection\r\n")
    assert driver.closed and len(driver.commits) == 1


def test_shutdown_answers_421_even_to_unknown_commands(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\n")
    driver.session.shutdown()
    out = driver.feed(b"RSET\r\nBOGUS\r\n")
    assert out.startswith(b"250") and out.endswith(b"421 4.3.2 Service shutting down, closing connection\r\n")
    assert driver.closed


def test_shutdown_closes_idle_session(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    driver.feed(b"EHLO x\r\n")
    out, action = driver.session.shutdown()
    assert out.startswith(b"421 4.3.2") and isinstance(action, Close)


def test_an_admission_answered_after_shutdown_began_closes_and_gives_back_what_it_reserved() -> None:
    """In a cluster the answer comes later (fastmta.smtp.admissions): the server may have begun to stop meanwhile."""
    session = Session(make_settings(), "192.0.2.1", 1234)
    out, action = session.start(0.0)
    assert out == b"" and isinstance(action, Admit)
    assert session.shutdown() == (b"", None)  # still waiting for the answer: nothing to say, nothing new to do
    out, action = session.admitted("", False, {("messages", "192.0.2.1"): 3})
    assert out.startswith(b"421 4.3.2") and isinstance(action, Close)
    assert session.connection_lost() == {("messages", "192.0.2.1"): 3}


def test_an_action_under_way_is_handed_out_once_whatever_arrives_meanwhile() -> None:
    """Data, a shutdown or the clock while the shell carries out an action must not make it happen twice
    (a second admission counted, a message stored twice)."""
    session = Session(make_settings(), "192.0.2.1", 1234)
    out, admit = session.start(0.0)
    assert isinstance(admit, Admit)
    assert session.feed(b"EHLO x\r\n", 1.0) == (b"", None)  # an early talker
    assert session.shutdown() == (b"", None)
    assert session.expire(2.0) == (b"", None)
    out, action = session.admitted("", False)
    assert out.startswith(b"421 4.3.2") and isinstance(action, Close)  # once: the server began to stop meanwhile
    session = Session(make_settings(), "192.0.2.1", 1234)
    session.start(0.0)
    session.admitted("", False)
    out, commit = session.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nhi\r\n.\r\n", 1.0)
    assert isinstance(commit, Commit)
    assert session.feed(b"QUIT\r\n", 1.5) == (b"", None)  # pipelined, in a read of its own
    out, action = session.committed("1", None)
    assert out.startswith(b"250 ") and out.endswith(b"221 2.0.0 Bye\r\n") and isinstance(action, Close)


def test_a_client_left_waiting_for_its_admission_is_told_it_timed_out() -> None:
    """A backstop: the shell gives up on the counters well before (fastmta.smtp.admissions)."""
    session = Session(make_settings(command_timeout=30.0), "192.0.2.1", 1234)
    session.start(0.0)
    assert session.deadline == 30.0
    out, action = session.expire(30.0)
    assert out.startswith(b"421 4.4.2") and isinstance(action, Close)
    assert session.connection_lost() is None  # nothing was counted for it


def test_bare_line_endings(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter))
    out = driver.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\na\n.\nb\r\n.\r\n")
    assert out.endswith(b"550 5.6.0 Message contains bare CR or bare LF line endings\r\n") and not driver.commits
    driver = Driver(new_session(limiter, reject_bare_line_endings=False))
    driver.feed(b"HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\na\n.\nb\r\n.\r\n")
    assert driver.commits[0].body.endswith(b"\r\na\n.\nb\r\n")


def test_proxy_header_then_greeting() -> None:
    session = Session(make_settings(), "127.0.0.1", 1, proxy_protocol=True)
    driver = Driver(session)
    assert driver.out == b""
    driver.feed(b"PROXY TCP4 198.51.100.4 127.0.0.1 5555 25\r\nEHLO x\r\n")
    assert driver.out.startswith(b"220 mx.test") and session.client_ip == "198.51.100.4"
    assert driver.feed(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<z@elsewhere.com>\r\n").endswith(b"554 5.7.1 Relay access denied\r\n")
    garbage = Driver(Session(make_settings(), "127.0.0.1", 1, proxy_protocol=True))
    garbage.feed(b"EHLO no proxy header\r\n")
    assert garbage.closed and garbage.out == b""


def test_address_checks(limiter: RateLimiter) -> None:
    driver = Driver(new_session(limiter, max_errors=20))
    driver.feed(b"EHLO x\r\n")
    for bad in (b"<a b@c.d>", b"<@c.d>", b"<a@>", b"<a@b..c>", b"<noat>"):
        assert driver.feed(b"MAIL FROM:" + bad + b"\r\n").startswith(b"501 5.1.7"), bad
    assert driver.feed(b"MAIL FROM:<a@b.c\r\n").startswith(b"501 5.5.4")
    assert driver.feed(b"MAIL TO:<a@b.c>\r\n").startswith(b"501 5.5.4")
    assert driver.feed(b'MAIL FROM:<"odd >name"@b.c>\r\n').startswith(b"250 2.1.0")
    assert driver.feed(b"RCPT TO:<@relay.example:d@example.org>\r\n").startswith(b"250 2.1.5")
    assert driver.feed(b"RCPT TO:<e@example.org> NOTIFY=SOMETIMES\r\n").startswith(b"501 5.5.4")
    assert driver.feed(b"RCPT TO:<e@example.org> FOO=1\r\n").startswith(b"555 5.5.4")


def test_received_header(limiter: RateLimiter, tmp_path: Path) -> None:
    driver = Driver(new_session(limiter))
    driver.feed(b"EHLO client.test\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@example.org>\r\nDATA\r\nhi\r\n.\r\n")
    commit = driver.commits[0]
    header = commit.body[: commit.body.index(b"hi\r\n")]
    assert header.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n\tby mx.test (fastmta) with ESMTP id ")
    assert b"\r\n\tfor <d@example.org>; " in header and header.endswith(b" +0000\r\n")
    assert commit.message.size == len(commit.body)
