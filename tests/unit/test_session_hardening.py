"""Regression tests for what probing the session as an attacker found, one block per finding."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from fastmta.config import LimitsConfig
from fastmta.limits import ClientLimits
from fastmta.ratelimit import RateLimiter
from fastmta.smtp.session import Admit, Session
from fastmta.smtp.trace import received_header
from tests.session_driver import LIMITS, Driver, make_settings

TRUSTED = "127.0.0.1"
STRANGER = "203.0.113.7"


def session(ip: str = TRUSTED, **changes: object) -> Driver:
    return Driver(Session(make_settings(max_errors=100, **changes), ip, 4000))


def transaction(driver: Driver, rcpt: bytes = b"<d@example.org>") -> None:
    driver.feed(b"EHLO client.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:" + rcpt + b"\r\n")


# ----- 1. header injection through HELO/EHLO and every other argument ----------------------------

@pytest.mark.parametrize("line", [
    b"EHLO a\rX-Injected: yes", b"HELO a\rX-Injected: yes", b"EHLO a\x00b", b"EHLO a\x1bb", b"EHLO a\x7fb",
    b"EHLO a\tb", b"MAIL FROM:<a@b.example>\x0b", b"VRFY a\x01", b"NOOP \x1f",
])  # fmt: skip
def test_control_characters_in_any_command_are_refused(line: bytes) -> None:
    driver = session()
    assert driver.feed(line + b"\r\n") == b"501 5.5.4 Syntax: control character in command\r\n"
    assert driver.session.helo == ""


def test_received_header_never_carries_a_line_break_from_its_values() -> None:
    header = received_header(
        helo="a\rX-Injected: yes", client_ip="1.2.3.4\n", tls="TLS\r\n\r\n", protocol="ESMTP\n",
        recipient="d@e\rX: y", hostname="mx\n", message_id="ID", now=0,
    )  # fmt: skip
    assert header.count(b"\r") == header.count(b"\r\n") == 4  # the header's own three folds and its end
    assert header.count(b"\n") == 4
    assert b"X-Injected" in header and b"\r\nX-Injected" not in header


# ----- 4. address syntax and sender-specified routing --------------------------------------------

@pytest.mark.parametrize("sender", [
    b"<a@b@example.org>", b"<a b@c.d>", b"<a..b@c.d>", b"<.a@c.d>", b"<a@-c.d>", b"<a@c-.d>", b"<a@c..d>",
    b"<a@[300.1.1.1]>", b"<a@[IPv6:zz::1]>", b"<a(comment)@c.d>", b"<a\\@b@c.d>", b"<" + b"x" * 65 + b"@c.d>",
    b"<a@" + b"c" * 64 + b"." + b"d" * 200 + b">", b"<a@c.d.>", b"<postmaster>",
])  # fmt: skip
def test_a_malformed_sender_gets_501_5_1_7(sender: bytes) -> None:
    driver = session()
    driver.feed(b"EHLO x\r\n")
    assert driver.feed(b"MAIL FROM:" + sender + b"\r\n").startswith(b"501 5.1.7 "), sender


@pytest.mark.parametrize("sender", [
    b"<>", b"<a@b.example>", b'<"a b"@c.d>', b'<"a\\"b"@c.d>', b"<a.b+c@d-e.f>", b"<a@[192.0.2.1]>",
    b"<a@[IPv6:2001:db8::1]>", b"<@hop.example,@hop2.example:a@b.example>", b"<!#$%&'*+/=?^_`{|}~-@x.y>",
])  # fmt: skip
def test_a_well_formed_sender_is_accepted(sender: bytes) -> None:
    driver = session()
    driver.feed(b"EHLO x\r\n")
    assert driver.feed(b"MAIL FROM:" + sender + b"\r\n") == b"250 2.1.0 Ok\r\n", sender


def test_utf8_addresses_need_smtputf8() -> None:
    driver = session()
    driver.feed(b"EHLO x\r\n")
    address = "<j\u00f6rg@b\u00fccher.example>".encode()
    assert driver.feed(b"MAIL FROM:" + address + b"\r\n").startswith(b"553 5.6.7")
    assert driver.feed(b"MAIL FROM:" + address + b" SMTPUTF8\r\n") == b"250 2.1.0 Ok\r\n"
    assert driver.feed(b"RCPT TO:" + address + b"\r\n") == b"250 2.1.5 Ok\r\n"


def test_a_malformed_recipient_gets_501_5_1_3() -> None:
    driver = session()
    transaction(driver)
    for bad in (b"<a@b@example.org>", b"<a..b@example.org>", b"<@example.org>", b"<>", b"<a@example.org.>"):
        assert driver.feed(b"RCPT TO:" + bad + b"\r\n").startswith(b"501 5.1.3 "), bad


ROUTING_TRICKS = [
    b"<user%evil.org@example.org>", b"<evil.org!user@example.org>", b'<"user@evil.org"@example.org>',
    b"<user@evil.org@example.org>", b"<user\\@evil.org@example.org>", b"<user@evil.org(comment)@example.org>",
]  # fmt: skip


@pytest.mark.parametrize("rcpt", ROUTING_TRICKS)
def test_sender_specified_routing_is_refused_from_untrusted_clients(rcpt: bytes) -> None:
    driver = session(STRANGER)
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    assert driver.feed(b"RCPT TO:<plain@example.org>\r\n") == b"250 2.1.5 Ok\r\n"
    assert driver.feed(b"RCPT TO:" + rcpt + b"\r\n") == b"550 5.7.1 Sender-specified routing is not allowed\r\n"


def test_trusted_clients_may_route_with_valid_syntax() -> None:
    driver = session(TRUSTED)
    transaction(driver)
    assert driver.feed(b"RCPT TO:<user%evil.org@example.org>\r\n") == b"250 2.1.5 Ok\r\n"
    assert driver.feed(b"RCPT TO:<user@evil.org@example.org>\r\n").startswith(b"501 5.1.3")


def test_postmaster_without_a_domain_is_accepted_from_anyone() -> None:
    driver = session(STRANGER)
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    assert driver.feed(b"RCPT TO:<Postmaster>\r\n") == b"250 2.1.5 Ok\r\n"
    driver.feed(b"DATA\r\nSubject: hi\r\n\r\nhi\r\n.\r\n")
    assert [r.address for r in driver.commits[0].message.recipients] == ["postmaster@mx.test"]


def test_foreign_domains_are_relay_denied_before_syntax() -> None:
    driver = session(STRANGER)
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    for rcpt in (b"<a@evil.org.>", b"<a%b@evil.org>", b"<@example.org:a@evil.org>", b"<a@[192.0.2.1]>"):
        assert driver.feed(b"RCPT TO:" + rcpt + b"\r\n") == b"554 5.7.1 Relay access denied\r\n", rcpt


# ----- 5. DSN parameters that decode to control characters --------------------------------------

@pytest.mark.parametrize("command", [
    b"MAIL FROM:<a@b.example> ENVID=x+0D+0AReporting-MTA:+20evil",
    b"MAIL FROM:<a@b.example> ENVID=x+00",
    b"MAIL FROM:<a@b.example> ENVID=x+0",
    b"MAIL FROM:<a@b.example> ENVID=x+ZZ",
])  # fmt: skip
def test_envid_with_decoded_control_characters_or_bad_xtext_is_refused(command: bytes) -> None:
    driver = session()
    driver.feed(b"EHLO x\r\n")
    assert driver.feed(command + b"\r\n").startswith(b"501 5.5.4 Syntax: "), command


def test_orcpt_with_decoded_control_characters_is_refused_and_a_clean_one_decoded() -> None:
    driver = session()
    driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.example> ENVID=a+2Bb\r\n")
    out = driver.feed(b"RCPT TO:<d@example.org> ORCPT=rfc822;d+0D+0A--boundary@example.org\r\n")
    assert out.startswith(b"501 5.5.4 Syntax: control character in ORCPT")
    assert driver.feed(b"RCPT TO:<d@example.org> ORCPT=rfc822;d+2Be@example.org\r\n") == b"250 2.1.5 Ok\r\n"
    driver.feed(b"DATA\r\n\r\nhi\r\n.\r\n")
    message = driver.commits[0].message
    assert message.envid == "a+b" and message.recipients[0].orcpt == "rfc822;d+e@example.org"


# ----- 6. slowloris: deadlines that a trickle does not move --------------------------------------

def test_a_trickled_command_is_cut_at_the_command_timeout() -> None:
    driver = session(command_timeout=10.0)
    for byte in b"EHLO slow.example":
        driver.now += 3
        if driver.now >= driver.session.deadline:
            break
        driver.feed(bytes([byte]))
    assert driver.now - 1000.0 < 15
    assert driver.expire(driver.now) == b"421 4.4.2 Timeout exceeded, closing connection\r\n" and driver.closed


def test_each_complete_command_starts_a_new_deadline() -> None:
    driver = session(command_timeout=10.0)
    for _ in range(5):
        driver.now += 9
        assert driver.expire(driver.now) == b""
        assert driver.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert driver.session.deadline == driver.now + 10


def test_data_must_keep_the_minimum_rate() -> None:
    driver = session(command_timeout=10.0, min_data_rate=100)
    transaction(driver)
    driver.feed(b"DATA\r\n")
    driver.feed(b"x" * 1000)  # ten more seconds of grace
    assert driver.session.deadline == pytest.approx(driver.now + 20)
    for _ in range(19):  # one byte a second buys a hundredth of a second each
        driver.now += 1
        driver.feed(b"y")
    assert driver.session.deadline == pytest.approx(1020.19)
    assert driver.expire(1020.2) == b"421 4.4.2 Data arriving too slowly, closing connection\r\n"


def test_a_session_ends_at_its_time_limit_however_busy() -> None:
    driver = session(command_timeout=10.0, max_session=30.0)
    while driver.now + 5 < 1030.0:
        driver.now += 5
        driver.feed(b"NOOP\r\n")
    assert driver.session.deadline == 1030.0
    assert driver.expire(1030.0) == b"421 4.4.2 Session time limit exceeded, closing connection\r\n"


def test_no_deadline_while_the_commit_is_under_way() -> None:
    class SlowCommit(Driver):
        def _settle(self, step: tuple[bytes, object]) -> None:
            out, action = step
            self.out += out
            if type(action).__name__ == "Commit":
                return  # the shell has not answered yet
            super()._settle(step)

    driver = SlowCommit(Session(make_settings(command_timeout=1.0), TRUSTED, 1))
    transaction(driver)
    driver.feed(b"DATA\r\n\r\nhi\r\n.\r\n")
    assert driver.session.blocked and driver.session.deadline == float("inf")


# ----- 7. BDAT applies the bare line ending policy ----------------------------------------------

SMUGGLING = [
    b"a\n.\nb\r\n", b"a\n.\r\nb\r\n", b"a\r.\rb\r\n", b"a\r\n.\rb\r\n", b"a\r.\nb\r\n", b"a\n.\rb\r\n",
    b"a\r\n.\nb\r\n", b"bare\rcr\r\n", b"bare\nlf\r\n", b"a\r\r\n",
]  # fmt: skip


@pytest.mark.parametrize("content", SMUGGLING)
def test_bdat_refuses_bare_line_endings_like_data(content: bytes) -> None:
    for command in (b"DATA\r\n" + content.replace(b"\r\n.\r\n", b"") + b".\r\n", b"BDAT %d LAST\r\n" % len(content) + content):
        driver = session()
        transaction(driver)
        assert driver.feed(command).endswith(b"550 5.6.0 Message contains bare CR or bare LF line endings\r\n")
        assert not driver.commits


def test_a_crlf_split_across_bdat_chunks_is_not_bare() -> None:
    driver = session()
    transaction(driver)
    assert driver.feed(b"BDAT 2\r\na\r").startswith(b"250 2.0.0 Ok: 2 octets")
    assert driver.feed(b"BDAT 3 LAST\r\n\nb\r").endswith(b"550 5.6.0 Message contains bare CR or bare LF line endings\r\n")
    transaction(driver)
    driver.feed(b"BDAT 2\r\na\r")
    assert b"queued as" in driver.feed(b"BDAT 4 LAST\r\n\nb\r\n")


def test_bare_line_endings_pass_through_bdat_when_accepted() -> None:
    driver = session(reject_bare_line_endings=False)
    transaction(driver)
    assert b"queued as" in driver.feed(b"BDAT 6 LAST\r\na\n.\nb\n")
    assert driver.commits[0].body.endswith(b"a\n.\nb\n")


# ----- 8. PROXY headers only from trusted proxies ------------------------------------------------

def test_a_peer_outside_proxy_trusted_is_refused_before_any_header() -> None:
    driver = Driver(Session(make_settings(), "198.51.100.1", 1, proxy_protocol=True))
    assert driver.out == b"421 4.7.0 PROXY header not accepted from this address\r\n" and driver.closed


def test_proxy_unknown_is_not_trusted_as_the_proxy_itself() -> None:
    admissions: list[Admit] = []

    class Recording(Driver):
        def _admit(self, request: Admit) -> tuple[bytes, object]:
            admissions.append(request)
            return super()._admit(request)

    driver = Recording(Session(make_settings(max_errors=100), TRUSTED, 1, proxy_protocol=True))
    driver.feed(b"PROXY UNKNOWN\r\nEHLO x\r\nMAIL FROM:<a@b.example>\r\n")
    assert driver.feed(b"RCPT TO:<z@elsewhere.example>\r\n") == b"554 5.7.1 Relay access denied\r\n"
    assert admissions == [Admit(TRUSTED, known=False)]


# ----- 9. header limits -------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_header_lines_and_header_blocks_are_limited(verb: str) -> None:
    def send(header: bytes) -> bytes:
        driver = session(max_header_size=4096)
        transaction(driver)
        body = header + b"\r\n\r\nbody\r\n"
        if verb == "DATA":
            return driver.feed(b"DATA\r\n" + body + b".\r\n")
        return driver.feed(b"BDAT %d LAST\r\n" % len(body) + body)

    assert b"queued as" in send(b"X-Long: " + b"a" * 990)  # 998 octets
    assert send(b"X-Long: " + b"a" * 991).endswith(b"552 5.3.4 Message header line exceeds 998 octets\r\n")
    folded = b"X-Many: a" + b"\r\n b" * 2000
    assert send(folded).endswith(b"552 5.3.4 Message header size exceeds limit\r\n")


# ----- the limits are reserved ahead and given back ---------------------------------------------

def test_limits_hold_across_concurrent_connections_and_unused_reservations_come_back(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "state.lmdb")
    limits = LimitsConfig(messages_per_hour=64)
    per_client = {"messages": 64, "recipients": 0, "auth_failures": 0}

    def connect() -> Driver:
        new = Session(make_settings(per_client_limits=per_client, max_errors=1000), STRANGER, 1)
        LIMITS[new] = ClientLimits(limiter, limits, 100, 100)
        driver = Driver(new)
        driver.feed(b"EHLO x\r\n")
        return driver

    def send(driver: Driver) -> bool:
        out = driver.feed(b"MAIL FROM:<a@b.example>\r\n")
        driver.feed(b"RSET\r\n")
        return out == b"250 2.1.0 Ok\r\n"

    first, second = connect(), connect()
    accepted = sum(send(first) + send(second) for _ in range(40))
    assert accepted == 64
    # Chunks of 64/32 = 2: about one reservation per two messages, not one write per message.
    assert len(first.reservations) + len(second.reservations) <= 64 // 2 + 2
    assert first.closed or second.closed  # the connection that found the limit was told 421 and closed
    third = connect()
    unused = first.session.connection_lost() or {}
    limits_of_first = LIMITS[first.session]
    limits_of_first.release(STRANGER, unused)
    assert sum(send(third) for _ in range(5)) == sum(unused.values())
    limiter.close()


def test_the_first_chunks_are_reserved_with_the_admission(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "state.lmdb")
    per_client = {"messages": 64, "recipients": 64, "auth_failures": 2}
    new = Session(make_settings(per_client_limits=per_client), STRANGER, 1)
    LIMITS[new] = ClientLimits(limiter, LimitsConfig(messages_per_hour=64, recipients_per_hour=64), 100, 100)
    driver = Driver(new)
    assert driver.feed(b"EHLO x\r\nMAIL FROM:<a@b.example>\r\n").endswith(b"250 2.1.0 Ok\r\n")
    assert driver.reservations == []  # no reservation of its own: in a cluster, no round trip of its own
    # Chunks of 64/32 = 2 each; AUTH failures are held only when AUTH is tried.
    assert new.connection_lost() == {("messages", STRANGER): 1, ("recipients", STRANGER): 2}
    limiter.close()


def test_auth_failures_are_held_before_the_check_and_successes_give_them_back(tmp_path: Path) -> None:
    limiter = RateLimiter(tmp_path / "state.lmdb")
    limits = ClientLimits(limiter, LimitsConfig(auth_failures_per_hour=2), 100, 100)
    per_client = {"messages": 0, "recipients": 0, "auth_failures": 2}
    good = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0right") + b"\r\n"
    for _ in range(5):  # successes never use up the limit
        new = Session(make_settings(per_client_limits=per_client), STRANGER, 1, tls="TLSv1.3")
        LIMITS[new] = limits
        driver = Driver(new)
        assert driver.feed(b"EHLO x\r\n" + good).endswith(b"235 2.7.0 Authentication successful\r\n")
        limits.release(STRANGER, new.connection_lost() or {})
    assert limiter.count("auth_failures", STRANGER, 3600) == 0
    limiter.close()
