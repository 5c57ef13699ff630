"""Fuzz target: the DSN builder given hostile replies and stored values.

The input is split on NUL into the next hop's reply, the remote host, the recipient's address, its
ORCPT, the message's ENVID, and the original message; the first byte picks the action and whether
the original was SMTPUTF8 with RET=FULL. Whatever they hold, the notice parses back as one
multipart/report with exactly its three parts, one Action field per recipient (the one asked
for), no line over 998 octets in the header block or the report, and no control character but
TAB in any line the builder wrote.
"""

from __future__ import annotations

import email
import email.policy
import re

from tests.fuzz import harness

with harness.instrumented("email"):
    from fastmta.delivery import dsn
    from fastmta.delivery.outbound import one_line
    from fastmta.queue.records import FAILED, Message, Recipient

_ACTIONS = ("failed", "delayed", "delivered", "relayed")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def fields(data: bytes, count: int) -> list[str]:
    parts = data.split(b"\0", count - 1)
    parts += [b""] * (count - len(parts))
    return [part.decode("utf-8", "replace") for part in parts]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    flags, rest = data[0], data[1:]
    reply, host, address, orcpt, envid, original = fields(rest, 6)
    action = _ACTIONS[flags & 3]
    recipient = Recipient(
        address=address or "r@example.org", orcpt=orcpt, notify=["SUCCESS", "FAILURE", "DELAY"], state=FAILED,
        last_reply=one_line(reply) if flags & 16 else reply, remote_host=host,
    )  # fmt: skip
    message = Message(
        id="0000000000000000", sender="s@example.com", recipients=[recipient], received_at=0.0, size=len(original),
        next_attempt=0.0, smtputf8=bool(flags & 4), ret="FULL" if flags & 8 else "HDRS", envid=envid,
    )  # fmt: skip
    built = dsn.build(message, original.encode(), [recipient], action, "mx.test", "MAILER-DAEMON@mx.test", 0.0, size_limit=2000)
    if built is None:
        return
    _, body = built
    parsed = email.message_from_bytes(body, policy=email.policy.compat32)
    assert parsed.get_content_type() == "multipart/report", parsed.get_content_type()
    parts = parsed.get_payload()
    assert isinstance(parts, list) and len(parts) == 3, f"{len(parts) if isinstance(parts, list) else 'no'} parts"
    boundary = parsed.get_boundary()
    assert boundary is not None
    # The report as written (the email package would rewrite its line endings): the second part.
    text = body.split(b"\r\n--" + boundary.encode() + b"\r\n")[2]
    actions = re.findall(rb"(?mi)^Action:[ \t]*(\S+)", text)
    assert actions == [action.encode()], actions
    written = body.split(b"\r\n\r\n", 1)[0].split(b"\r\n") + text.split(b"\r\n")
    for line in written:
        assert len(line) <= 998, f"a line of {len(line)} octets"
        assert not _CONTROL.search(line), f"control character in {line[:80]!r}"


if __name__ == "__main__":
    harness.fuzz("dsn", test_one_input)
