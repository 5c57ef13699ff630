"""Bounces built from hostile input: what a next hop answered, what an old record holds, what a sender sent.

Every report is parsed back with the `email` package, as the sender's mail client would read it.
"""

from __future__ import annotations

import email
import re
from email.message import Message as MimePart

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmta.delivery import dsn
from fastmta.delivery.outbound import REPLY_LIMIT, one_line
from fastmta.queue.records import _CROCKFORD, FAILED, Message, Recipient, _base32, new_message_id

LIMIT = 50_000
BODY = b"Subject: hi\r\nMessage-ID: <m@x>\r\n\r\nsecret body\r\n"
# What a control character may look like to some reader of the bounce: C0, DEL, C1 (NEL), line and
# paragraph separators; lone surrogates are what aiosmtplib makes of bytes that are not UTF-8.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def record(reply: str = "550 5.1.1 No such user", address: str = "b@x.test", **changes: object) -> Message:
    recipient = Recipient(address, orcpt="rfc822;B@x.test", state=FAILED, last_reply=reply, remote_host="mx.x.test")
    fields = dict(id="ID1", sender="a@example.com", recipients=[recipient], received_at=1.7e9, size=10, next_attempt=0.0, envid="E1")
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


def bounce(message: Message, body: bytes = BODY, mta: str = "mx.test", bounce_from: str = "MAILER-DAEMON@mx.test",
           limit: int = LIMIT) -> tuple[Message, bytes]:
    built = dsn.build(message, body, message.recipients, "failed", mta, bounce_from, 1.7e9, size_limit=limit)
    assert built is not None
    return built


def parts(body: bytes) -> tuple[MimePart, list[MimePart]]:
    """The report and its parts; the boundary must hold: exactly three parts, no defects."""
    parsed = email.message_from_bytes(body)
    assert parsed.get_content_type() == "multipart/report"
    found = parsed.get_payload()
    assert isinstance(found, list) and len(found) == 3, f"{len(found)} parts"
    assert not parsed.defects and not any(part.defects for part in found)
    return parsed, found


def status_blocks(part: MimePart) -> list[MimePart]:
    """The per-message fields, then one block per recipient, of a (global) delivery-status part."""
    if part.get_content_type() == "message/delivery-status":
        return list(part.get_payload())
    # The email package reads any other message/* as one message: the first block as its header, the rest as its body.
    (inner,) = part.get_payload()
    rest = inner.get_payload()
    return [inner] + [email.message_from_string(block) for block in re.split(r"(?:\r?\n){2,}", rest) if block.strip()]


def raw_parts(body: bytes) -> list[bytes]:
    """The report as written: its header, then each part (header and content), split at the boundary."""
    boundary = email.message_from_bytes(body).get_boundary()
    assert boundary
    return body.split(b"\r\n--" + boundary.encode())


def generated_lines(body: bytes) -> list[bytes]:
    """Every line we wrote: all but the returned content, which is the sender's own."""
    header, text, status, returned, _ = raw_parts(body)
    returned_header = returned.partition(b"\r\n\r\n")[0]
    return b"".join((header, text, status, returned_header)).split(b"\r\n")


def test_one_line_joins_a_multiline_reply() -> None:
    assert one_line("550 5.1.1 first\nAction: delivered") == "550 5.1.1 first; Action: delivered"
    assert one_line("451 4.3.0 a\r\n\r\n  b\rc\n") == "451 4.3.0 a; b; c"
    assert one_line("550 x\x00y\x7fz\x85w\u2028v\tu") == "550 x y z w v u"
    assert one_line("550 M\udcfcller") == "550 M\ufffdller"  # a Latin-1 byte, as aiosmtplib decodes it
    assert one_line("550 ok") == "550 ok"


def test_one_line_is_bounded_in_octets() -> None:
    long = one_line("550 " + "ü" * 5000)
    assert len(long.encode()) <= REPLY_LIMIT and long.startswith("550 üü") and long.endswith("...")


@given(st.text())
def test_one_line_leaves_no_line_break_or_control(text: str) -> None:
    flat = one_line(text)
    assert not _UNSAFE.search(flat) and len(flat.encode()) <= REPLY_LIMIT
    assert one_line(flat) == flat


def test_a_multiline_reply_stays_inside_its_diagnostic() -> None:
    """A remote 550 whose next lines are 'Action: delivered' and a fake MIME boundary, as an old record stored it."""
    hostile = "550 5.1.1 No such user\nAction: delivered\r\n\r\n--fake\r\nContent-Type: text/html\r\n\r\n<b>hi</b>"
    _, body = bounce(record(hostile))
    _, (text, status, returned) = parts(body)
    per_message, *per_recipient = status_blocks(status)
    assert len(per_recipient) == 1
    (fields,) = per_recipient
    assert fields.get_all("Action") == ["failed"] and fields.get_all("Status") == ["5.1.1"]
    assert fields.get_all("Diagnostic-Code") == [
        "smtp; 550 5.1.1 No such user; Action: delivered; --fake; Content-Type: text/html; <b>hi</b>"
    ]
    assert "Action" not in per_message
    assert "550 5.1.1 No such user; Action: delivered;" in text.get_payload()
    assert not any(line.startswith((b"Action: delivered", b"--fake", b"<b>")) for line in body.split(b"\r\n"))
    assert returned.get_content_type() == "text/rfc822-headers"


def test_hostile_record_values_are_written_clean() -> None:
    """ENVID and ORCPT decoded to CR/LF before the session refused them, an address, a host: none starts a line."""
    message = record(
        address="b@x.test\rReporting-MTA: dns; evil",
        envid="E1\r\nAction: delivered",
    )
    message.recipients[0].orcpt = "rfc822;B@x.test\r\n\r\n--fake"
    message.recipients[0].remote_host = "mx.x.test\nX-Injected: yes"
    _, body = bounce(message, mta="mx.test\r\nX-Injected: yes", bounce_from="MAILER-DAEMON@mx.test\r\nBcc: victim@x.test")
    parsed, (text, status, _) = parts(body)
    assert sorted(parsed.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version", "Content-Type"]
    )
    per_message, fields = status_blocks(status)
    assert per_message.keys() == ["Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"]
    assert per_message["Original-Envelope-Id"] == "E1+0D+0AAction:+20delivered"  # RFC 3461 xtext, as it came in
    assert fields.keys() == ["Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-MTA", "Diagnostic-Code",
                             "Last-Attempt-Date"]
    assert fields["Original-Recipient"] == "rfc822; B@x.test+0D+0A+0D+0A--fake"
    assert fields["Final-Recipient"] == "rfc822; b@x.test+0DReporting-MTA:+20dns;+20evil"
    assert fields.get_all("Action") == ["failed"]
    for line in generated_lines(body):
        assert not re.search(rb"[\x00-\x1f\x7f]", line), line
        assert not line.startswith((b"X-Injected", b"Bcc", b"Reporting-MTA: dns; evil", b"--fake")), line


def test_clean_values_are_written_as_they_came() -> None:
    message = record(envid="batch+7=ok")
    message.recipients[0].orcpt = "rfc822;bob+tag@x.test"
    _, body = bounce(message)
    per_message, fields = status_blocks(parts(body)[1][1])
    assert per_message["Original-Envelope-Id"] == "batch+7=ok"
    assert fields["Original-Recipient"] == "rfc822; bob+tag@x.test"
    assert fields["Final-Recipient"] == "rfc822; b@x.test"


def test_no_bounce_to_a_return_path_no_command_could_carry() -> None:
    message = record(sender="a@example.com\r\nRCPT TO:<victim@x.test>")
    assert dsn.build(message, BODY, message.recipients, "failed", "mx.test", "m@mx.test", size_limit=LIMIT) is None


def test_the_returned_message_cannot_end_our_part_even_knowing_the_bounce_id() -> None:
    """A bounce's id follows from the time, the node, the pid and a counter: a sender can guess it, so the boundary holds more."""
    known = new_message_id(1.7e9)
    guessed = _base32(sum(_CROCKFORD.index(c) << 5 * n for n, c in enumerate(reversed(known))) + 1, len(known))
    forged = (
        f"Subject: hi\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\none\r\n--x--\r\n"
        f"--{guessed}\r\n--{guessed}/mx.test\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; b@x.test\r\nAction: delivered\r\n\r\n"
        f"--{guessed}/mx.test--\r\n"
    ).encode()
    report, body = bounce(record(ret="FULL"), body=forged)
    assert report.id == guessed  # the guess was right
    _, (_, status, returned) = parts(body)
    assert [block.get_all("Action") for block in status_blocks(status)[1:]] == [["failed"]]
    # The sender's own MIME structure is the returned message's business, not a part of ours.
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = returned.get_payload()
    assert inner["Subject"] == "hi" and len(inner.get_payload()) == 1


def test_a_large_message_comes_back_as_its_headers() -> None:
    """As Postfix's bounce_size_limit: past it, RET=FULL returns the headers only."""
    large = b"Subject: big\r\nMessage-ID: <big@x>\r\n\r\n" + b"x" * 998 + b"\r\n" + (b"y" * 998 + b"\r\n") * 200
    assert len(large) > 200_000
    _, body = bounce(record(ret="FULL"), body=large)
    _, (_, _, returned) = parts(body)
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <big@x>" in body and b"xxxx" not in body and len(body) < 5_000
    small = b"Subject: small\r\n\r\n" + b"z" * 100 + b"\r\n"
    _, body = bounce(record(ret="FULL"), body=small)
    _, (_, _, returned) = parts(body)
    assert returned.get_content_type() == "message/rfc822" and b"z" * 100 in body


def test_returned_headers_are_capped_too() -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"h" * 90) for n in range(2000))
    _, body = bounce(record(), body=b"Subject: many\r\n" + headers + b"\r\nbody\r\n", limit=10_000)
    _, (_, _, returned) = parts(body)
    kept = returned.get_payload()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert 9_000 < len(kept) <= 10_000 and kept.startswith("Subject: many")
    assert all(line.startswith("X-Filler-") for line in kept.splitlines()[1:] if line)  # whole lines only
    _, (_, _, returned) = parts(bounce(record(), body=b"Subject: " + b"s" * 200 + b"\r\n\r\nbody\r\n", limit=100)[1])
    assert returned.get_payload() == ""  # not even the first line fits


@pytest.mark.parametrize(("ret", "returned_type"), [("", "message/global-headers"), ("FULL", "message/global")])
def test_smtputf8_mail_gets_a_global_report(ret: str, returned_type: str) -> None:
    """RFC 6533: an SMTPUTF8 message's report and returned content are the message/global* types."""
    original = "From: jürgen@x.test\r\nSubject: Grüße\r\n\r\nça va\r\n".encode()
    message = record("550 5.1.1 Unbekannt: bücher", address="bücher@x.test", smtputf8=True, ret=ret)
    message.recipients[0].orcpt = "utf-8;bücher@x.test"
    report, body = bounce(message, body=original)
    parsed, (text, status, returned) = parts(body)
    assert parsed.get_param("report-type") == "global-delivery-status"
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == returned_type
    _, fields = status_blocks(status)
    raw = body.decode()
    assert "Final-Recipient: utf-8; bücher@x.test\r\n" in raw and "Original-Recipient: utf-8; bücher@x.test\r\n" in raw
    assert "Diagnostic-Code: smtp; 550 5.1.1 Unbekannt: bücher\r\n" in raw
    assert fields.get_all("Action") == ["failed"]
    assert report.smtputf8 and report.body_type == "8BITMIME"


def test_non_ascii_address_alone_makes_the_report_global() -> None:
    _, body = bounce(record(address="josé@x.test"))
    parsed, (_, status, returned) = parts(body)
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global-headers"
    assert "Final-Recipient: utf-8; josé@x.test\r\n" in body.decode()


def test_an_ascii_report_stays_ascii() -> None:
    """Plain message/delivery-status is US-ASCII (RFC 3464): a reply in UTF-8 or Latin-1 is shown with '?' there."""
    report, body = bounce(record("550 5.1.1 M\udcfcller unbekannt, bücher"))
    _, (text, status, _) = parts(body)
    assert status.get_content_type() == "message/delivery-status"
    _, fields = status_blocks(status)
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 M?ller unbekannt, b?cher"
    assert raw_parts(body)[2].isascii() and not report.smtputf8
    assert "bücher" in text.get_payload(decode=True).decode()  # the human-readable part is UTF-8


def test_a_field_never_outgrows_a_line() -> None:
    """Found by fuzzing: an ENVID of 2,261 characters in a stored record made a 2,355-octet line."""
    recipient = Recipient(address="b@x.test", notify=["FAILURE"], state="failed", last_reply="550 no")
    original = Message(
        id="0" * 16, sender="s@example.com", recipients=[recipient], received_at=0.0, size=1, next_attempt=0.0,
        envid="e\r\nReporting-MTA: x" + "x" * 2261, ret="HDRS",
    )  # fmt: skip
    built = dsn.build(original, b"Subject: s\r\n\r\nb\r\n", [recipient], "failed", "mx.test", "M@mx.test", 0.0, size_limit=2000)
    assert built is not None
    lines = built[1].split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    (envid,) = [line for line in lines if line.startswith(b"Original-Envelope-Id: ")]
    assert envid.endswith(b"...") and not any(line.startswith(b"Reporting-MTA: x") for line in lines)
