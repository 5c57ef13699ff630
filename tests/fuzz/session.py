"""Fuzz target: the SMTP session fed arbitrary byte streams in fuzzer-chosen pieces, through the test shell.

Input: one byte of flags (the bits below), then a sequence of steps. A step byte below 0xFD is the
length of the piece that follows (shorter if the input ends); 0xFD moves the clock past the
command timeout and calls expire(); 0xFE and 0xFF call shutdown() and shutdown(now=True).

Checked on every input, beyond "no exception": reply lines are well formed; nothing is written
after the session closed; every committed message has a clean Received header, no bare CR or LF
when they are rejected, a valid sender and 1..max_recipients valid recipients, and no control
character in what a DSN or a trace header will quote (HELO, ENVID, ORCPT); and, when neither
events nor STARTTLS are involved (STARTTLS drops what was pipelined behind it, so splits differ
there by design), the same stream fed whole gives the same replies and the same messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.fuzz import harness

with harness.instrumented("ipaddress", "base64"):
    from fastmta.queue.records import Recipient
    from fastmta.queue.store import StoreFullError
    from fastmta.smtp.address import is_mailbox
    from fastmta.smtp.session import SMTPS, SUBMISSION, Session, Settings
    from tests.session_driver import Driver, make_settings

# Flag bits of the first input byte.
ACCEPT_BARE_LINE_ENDINGS = 1
STRANGER = 2
SUBMISSION_LISTENER = 4
IMPLICIT_TLS = 8
PROXY_PROTOCOL = 16
REQUIRE_AUTH = 32
STORE_FULL = 64
AUTH_WITHOUT_TLS = 128

EXPIRE, SHUTDOWN, SHUTDOWN_NOW = 0xFD, 0xFE, 0xFF
TLS = "TLSv1.3"
# Small limits, so that inputs of a few KB reach the too-big, too-many and too-long refusals. A
# message holds a header line of 999 octets (too long) and no more than max_header_size of headers.
MAX_RECIPIENTS = 5
SETTINGS_CHANGES: dict[str, object] = {
    "max_message_size": 1100,
    "max_header_size": 1024,
    "max_line_length": 100,
    "max_recipients": MAX_RECIPIENTS,
    "max_errors": 10,
    "per_client_limits": {"messages": 3, "recipients": 10, "auth_failures": 2},
}

_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])[^\x00-\x1f\x7f]*")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_QUEUE_ID = re.compile(rb"queued as \S+")


@dataclass
class Steps:
    flags: int
    steps: list[bytes | int]  # a piece to feed, or an event byte

    @property
    def stream(self) -> bytes:
        return b"".join(step for step in self.steps if isinstance(step, bytes))

    @property
    def splits_alike(self) -> bool:
        return all(isinstance(step, bytes) for step in self.steps) and b"STARTTLS" not in self.stream.upper()


def decode(data: bytes) -> Steps:
    steps: list[bytes | int] = []
    pos = 1
    while pos < len(data):
        step = data[pos]
        pos += 1
        if step >= EXPIRE:
            steps.append(step)
        else:
            steps.append(data[pos : pos + step])
            pos += step
    return Steps(data[0] if data else 0, steps)


def new_driver(flags: int) -> Driver:
    settings: Settings = make_settings(
        reject_bare_line_endings=not flags & ACCEPT_BARE_LINE_ENDINGS,
        require_auth=bool(flags & REQUIRE_AUTH),
        require_tls_for_auth=not flags & AUTH_WITHOUT_TLS,
        **SETTINGS_CHANGES,
    )
    # Behind PROXY protocol the peer is the proxy (a stranger is refused), and the header names the client.
    ip = "203.0.113.7" if flags & STRANGER else "127.0.0.1"
    listener = SUBMISSION if flags & SUBMISSION_LISTENER else SMTPS if flags & IMPLICIT_TLS else "smtp"
    tls = TLS if flags & IMPLICIT_TLS else ""
    session = Session(settings, ip, 40000, listener, tls=tls, proxy_protocol=bool(flags & PROXY_PROTOCOL))
    return Driver(session, commit_error=StoreFullError("full") if flags & STORE_FULL else None, tls=TLS)


def play(steps: Steps) -> Driver:
    driver = new_driver(steps.flags)
    for step in steps.steps:
        closed = driver.closed
        if step == EXPIRE:
            out = driver.expire(driver.now + driver.session.settings.command_timeout + 1)
        elif step == SHUTDOWN or step == SHUTDOWN_NOW:
            out = driver.shutdown(now=step == SHUTDOWN_NOW)
        else:
            assert isinstance(step, bytes)
            out = driver.feed(step)
        assert not (closed and out), f"replied after the session closed: {out!r}"
    driver.session.connection_lost()
    return driver


def check_replies(out: bytes) -> None:
    if not out:
        return
    assert out.endswith(b"\r\n"), f"reply not CRLF-terminated: {out[-80:]!r}"
    continued = b""
    for line in out[:-2].split(b"\r\n"):
        reply = _REPLY_LINE.fullmatch(line)
        assert reply is not None, f"malformed reply line: {line!r}"
        assert not continued or reply.group(1) == continued, f"multi-line reply changes its code: {line!r}"
        continued = reply.group(1) if reply.group(2) == b"-" else b""
    assert not continued, "multi-line reply without its last line"


def check_commits(driver: Driver) -> None:
    reject_bare = driver.session.settings.reject_bare_line_endings
    for commit in driver.commits:
        stored, data = commit.body, commit.data
        assert stored.endswith(data)
        received = stored[: len(stored) - len(data)]
        assert received.startswith(b"Received: ") and received.endswith(b"\r\n"), received
        assert not _CONTROL.search(received[:-2].replace(b"\r\n\t", b"")), f"control character in {received!r}"
        if reject_bare:
            crlf = stored.count(b"\r\n")
            assert stored.count(b"\r") == crlf == stored.count(b"\n"), "bare CR or LF in a committed message"
        message = commit.message
        assert message.sender == "" or is_mailbox(message.sender), message.sender
        assert 1 <= len(message.recipients) <= MAX_RECIPIENTS
        for recipient in message.recipients:
            assert is_mailbox(recipient.address), recipient.address
        for quoted in (message.helo, message.envid, *(recipient.orcpt for recipient in message.recipients)):
            assert not _CONTROL.search(quoted.encode()), f"control character in {quoted!r}"


def conversation(driver: Driver) -> tuple[bytes, list[tuple[bytes, str, list[Recipient]]]]:
    """What must not depend on how the stream was split: replies (queue ids aside) and the messages."""
    messages = [(c.data, c.message.sender, c.message.recipients) for c in driver.commits]
    return _QUEUE_ID.sub(b"queued as ID", driver.out), messages


def test_one_input(data: bytes) -> None:
    steps = decode(data)
    driver = play(steps)
    check_replies(driver.out)
    check_commits(driver)
    if steps.splits_alike and len(steps.steps) > 1:
        whole = play(Steps(steps.flags, [steps.stream]))
        assert conversation(whole) == conversation(driver), "the conversation depends on how the stream was split"


if __name__ == "__main__":
    harness.fuzz("session", test_one_input)
