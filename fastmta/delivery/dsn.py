"""Delivery status notifications (RFC 3464, RFC 6533 for SMTPUTF8): the report that tells a sender what became of its mail.

Much of what a report says came from elsewhere: a next hop's reply, the sender's ENVID and ORCPT,
addresses, host names from the config or from DNS, records stored by older versions. Each value
goes through the one function that writes its field, so none can start a line, a field or a MIME
part of its own.
"""

from __future__ import annotations

import email.utils
import re
import secrets
import time

from fastmta.delivery.outbound import one_line, xtext
from fastmta.queue.records import Message, Recipient, new_message_id

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
# C0, DEL, C1, the Unicode line and paragraph separators, lone surrogates: what no field we write may hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def status_of(reply: str) -> str:
    """The enhanced status code of a reply like '550 5.1.1 No such user'; a generic one if it has none."""
    code, _, text = reply.partition(" ")
    found = _ENHANCED.match(text.strip())
    if found:
        return found.group(0)
    return f"{code[:1]}.0.0" if code[:1] in ("2", "4") else "5.0.0"


# Per action: the subject, what the human-readable part says, the status when the reply gave none.
_WORDING = {
    "failed": (
        "Undelivered Mail Returned to Sender",
        "Your message could not be delivered to one or more recipients.\r\nThe mail system gave up on:",
        "5.4.7",
    ),
    "delayed": (
        "Delayed Mail (still being retried)",
        "Your message has not been delivered yet to the recipients below.\r\n"
        "The mail system will keep trying; you do not need to send it again.",
        "4.4.7",
    ),
    "delivered": (
        "Successful Mail Delivery Report",
        "Your message was delivered to the recipients below.",
        "2.0.0",
    ),
    "relayed": (
        "Successful Mail Delivery Report",
        "Your message was passed on to a mail system that sends no delivery reports,\r\n"
        "so this is the last report you will get for the recipients below.",
        "2.0.0",
    ),
}


def wants_notice(recipient: Recipient, action: str) -> bool:
    """RFC 3461 NOTIFY: failures are reported unless the sender said otherwise; delays and successes only on request."""
    notify = {n.upper() for n in recipient.notify}
    if "NEVER" in notify:
        return False
    if action == "failed":
        return not notify or "FAILURE" in notify
    if action == "delayed":
        return "DELAY" in notify
    return "SUCCESS" in notify


def build(
    original: Message,
    original_body: bytes,
    recipients: list[Recipient],
    action: str,
    reporting_mta: str,
    bounce_from: str,
    now: float | None = None,
    *,
    size_limit: int,
) -> tuple[Message, bytes] | None:
    """The notice for `recipients` of `original` (action 'failed', 'delayed', 'delivered' or 'relayed'), or None when none is due.

    Never to the null sender: a bounce of a bounce is how mail loops start. Nor to a return path
    with a control character in it, which no MAIL or RCPT command could carry. The original comes
    back whole only when RET=FULL asked for it and it is at most `size_limit` bytes; otherwise its
    headers, as many whole lines as fit in `size_limit` (Postfix's bounce_size_limit).
    """
    if not original.sender or _CONTROL.search(original.sender):
        return None
    reported = [r for r in recipients if wants_notice(r, action)]
    if not reported:
        return None
    now = time.time() if now is None else now
    # RFC 6533: an SMTPUTF8 message, or a UTF-8 address, gets the global report types, where UTF-8 may stand.
    utf8 = original.smtputf8 or not all(
        value.isascii() for value in (original.sender, *(r.address for r in reported), *(r.orcpt for r in reported))
    )
    bounce_id = new_message_id(now)
    # Random, so the returned message (the sender's to write) cannot hold our delimiter.
    boundary = f"{bounce_id}.{secrets.token_hex(12)}"
    message_id = f"<{bounce_id}@{_clean(reporting_mta)}>"
    date = email.utils.formatdate(now)
    subject, explanation, default_status = _WORDING[action]
    head = _lines(
        _field("From", f"Mail Delivery System <{bounce_from}>"),
        _field("To", f"<{original.sender}>"),
        _field("Subject", subject),
        _field("Date", date),
        _field("Message-ID", message_id),
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type={"global-" if utf8 else ""}delivery-status; boundary="{boundary}"',
        "",
    ).encode()
    human = [_clean(f"This is the mail system at {reporting_mta}."), "", *explanation.split("\r\n")]
    per_message = [_field("Reporting-MTA", f"dns; {reporting_mta}")]
    if original.envid:
        # ENVID is ASCII xtext on the wire (RFC 3461), SMTPUTF8 or not; it comes back decoded where it can.
        per_message.append(_field("Original-Envelope-Id", _as_written(original.envid, utf8=False)))
    per_message.append(_field("Arrival-Date", email.utils.formatdate(original.received_at)))
    per_recipient = []
    for recipient in reported:
        reply = one_line(recipient.last_reply)
        address = _as_written(recipient.address, utf8)
        human += ["", f"<{address}>:", f"    {reply or 'no reply'}"]
        fields = []
        if recipient.orcpt:
            kind, _, orcpt = recipient.orcpt.partition(";")
            written = f"{_as_written(kind.strip(), utf8=False)}; {_as_written(orcpt.strip(), utf8)}"
            fields.append(_field("Original-Recipient", written))
        fields += [
            _field("Final-Recipient", f"{'rfc822' if address.isascii() else 'utf-8'}; {address}"),
            _field("Action", action),
            _field("Status", status_of(reply) if reply else default_status),
        ]
        if recipient.remote_host:
            fields.append(_field("Remote-MTA", f"dns; {recipient.remote_host}"))
        if reply:
            # message/delivery-status is US-ASCII (RFC 3464); the human-readable part keeps the UTF-8.
            fields.append(_field("Diagnostic-Code", f"smtp; {reply if utf8 else _ascii(reply)}"))
        fields.append(_field("Last-Attempt-Date", date))
        per_recipient.append(_lines(*fields))
    returned, whole = _returned(original_body, original.ret.upper() == "FULL", size_limit)
    if utf8:
        status_type, returned_type = "message/global-delivery-status", "message/global" if whole else "message/global-headers"
    else:
        status_type, returned_type = "message/delivery-status", "message/rfc822" if whole else "text/rfc822-headers"
    parts = [
        _part("text/plain; charset=utf-8", _lines(*human).encode()),
        _part(status_type, "\r\n".join([_lines(*per_message), *per_recipient]).encode()),
        _part(returned_type, returned),
    ]
    delimiter = f"--{boundary}\r\n".encode()
    body = head + b"".join(delimiter + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode()
    bounce = Message(
        id=bounce_id,
        sender="",
        recipients=[Recipient(original.sender)],
        received_at=now,
        size=len(body),
        next_attempt=now,
        protocol="DSN",
        listener="bounce",
        smtputf8=utf8,
        body_type="" if body.isascii() else "8BITMIME",
        message_id=message_id,
        header_from=bounce_from,
        header_to=original.sender,
        subject=subject,
        headers_size=len(head),
    )
    return bounce, body


# RFC 5322 §2.1.1: the most a line may hold, CRLF excluded.
_MAX_LINE = 998


def _clean(value: str) -> str:
    """Every control character a space: whatever it is, the value stays on its line."""
    return _CONTROL.sub(" ", value)


def _field(name: str, value: str) -> str:
    """A header or delivery-status field: the one place each is written, so the one place that cleans.

    A field stays within RFC 5322's 998 octets a line: a longer value (an ENVID or ORCPT stored
    before the session bounded them) is cut, and says so with "...".
    """
    line = f"{name}: {_clean(value)}"
    encoded = line.encode()
    if len(encoded) <= _MAX_LINE:
        return line
    return encoded[: _MAX_LINE - 3].decode("utf-8", "ignore") + "..."


def _as_written(value: str, utf8: bool) -> str:
    """An ENVID, ORCPT or address as it came if it may stand in a field so, else all of it as RFC 3461 xtext.

    It may when it has no control character and is ASCII (or UTF-8 in a global report). The session
    refuses the rest; only a record stored before it did holds such a value, and its report can
    still be read back.
    """
    if not _CONTROL.search(value) and (utf8 or value.isascii()):
        return value
    return xtext(value)


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()


def _lines(*lines: str) -> str:
    return "".join(f"{line}\r\n" for line in lines)


def _part(content_type: str, content: bytes) -> bytes:
    """One body part; 8bit declared where its content is not ASCII (RFC 6152, RFC 6532)."""
    encoding = "" if content.isascii() else "Content-Transfer-Encoding: 8bit\r\n"
    return f"Content-Type: {content_type}\r\n{encoding}\r\n".encode() + content


def _returned(body: bytes, full: bool, limit: int) -> tuple[bytes, bool]:
    """What comes back of the original, and whether that is all of it.

    Past the limit only the headers, cut after a whole line: a truncated body could end inside a MIME
    part, and the sender has the message anyway; the headers say which one it was.
    """
    if full and len(body) <= limit:
        return body, True
    headers = body.partition(b"\r\n\r\n")[0] + b"\r\n"
    if len(headers) > limit:
        cut = headers.rfind(b"\r\n", 0, limit)
        headers = headers[: cut + 2] if cut >= 0 else b""
    return headers, False
