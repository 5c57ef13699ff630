"""Delivery status notifications (RFC 3464): the multipart/report that tells a sender what became of its mail."""

from __future__ import annotations

import email.utils
import re
import time

from fastmta.queue.records import Message, Recipient, new_message_id

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


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
) -> tuple[Message, bytes] | None:
    """The notice for `recipients` of `original` (action 'failed', 'delayed', 'delivered' or 'relayed'), or None when none is due.

    Never to the null sender: a bounce of a bounce is how mail loops start.
    """
    if not original.sender:
        return None
    reported = [r for r in recipients if wants_notice(r, action)]
    if not reported:
        return None
    now = time.time() if now is None else now
    bounce_id = new_message_id(now)
    boundary = f"{bounce_id}/{reporting_mta}"
    date = email.utils.formatdate(now)
    headers, _, _ = original_body.partition(b"\r\n\r\n")
    subject, explanation, default_status = _WORDING[action]
    human = "".join(f"\r\n<{r.address}>: {r.last_reply or 'no reply'}\r\n" for r in reported)
    per_message = [f"Reporting-MTA: dns; {reporting_mta}"]
    if original.envid:
        per_message.append(f"Original-Envelope-Id: {original.envid}")
    per_message.append(f"Arrival-Date: {email.utils.formatdate(original.received_at)}")
    per_recipient = []
    for recipient in reported:
        fields = []
        if recipient.orcpt:
            kind, _, address = recipient.orcpt.partition(";")
            fields.append(f"Original-Recipient: {kind.strip()}; {address.strip()}")
        fields += [
            f"Final-Recipient: rfc822; {recipient.address}",
            f"Action: {action}",
            f"Status: {status_of(recipient.last_reply) if recipient.last_reply else default_status}",
        ]
        if recipient.remote_host:
            fields.append(f"Remote-MTA: dns; {recipient.remote_host}")
        if recipient.last_reply:
            fields.append(f"Diagnostic-Code: smtp; {recipient.last_reply}")
        fields.append(f"Last-Attempt-Date: {date}")
        per_recipient.append("\r\n".join(fields))
    full = original.ret.upper() == "FULL"
    returned_type = "message/rfc822" if full else "text/rfc822-headers"
    returned = original_body if full else headers + b"\r\n"
    text = (
        f"From: Mail Delivery System <{bounce_from}>\r\n"
        f"To: <{original.sender}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{bounce_id}@{reporting_mta}>\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"This is the mail system at {reporting_mta}.\r\n\r\n{explanation}\r\n{human}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        + "\r\n".join(per_message)
        + "\r\n\r\n"
        + "\r\n\r\n".join(per_recipient)
        + "\r\n\r\n"
        f"--{boundary}\r\n"
        f"Content-Type: {returned_type}\r\n"
        "\r\n"
    ).encode()
    body = text + returned + f"\r\n--{boundary}--\r\n".encode()
    bounce = Message(
        id=bounce_id,
        sender="",
        recipients=[Recipient(original.sender)],
        received_at=now,
        size=len(body),
        next_attempt=now,
        protocol="DSN",
        listener="bounce",
        smtputf8=not original.sender.isascii(),
        message_id=f"<{bounce_id}@{reporting_mta}>",
        header_from=bounce_from,
        header_to=original.sender,
        subject=subject,
        headers_size=text.find(b"\r\n\r\n") + 4,
    )
    return bounce, body
