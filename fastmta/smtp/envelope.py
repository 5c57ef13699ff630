"""A transaction's envelope: MAIL and RCPT parameters parsed, and the queue record built from it and the body."""

from __future__ import annotations

from dataclasses import dataclass

from fastmta.queue.records import ACTIVE, HELD, Message, Recipient
from fastmta.smtp import replies as R
from fastmta.smtp.address import xtext_decode
from fastmta.smtp.trace import received_header

_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})
MAX_ENVID = 100


def mail_parameters(raw_params: list[str], max_message_size: int) -> dict[str, str]:
    """MAIL FROM's ESMTP parameters (RFC 1870, 6152, 6531, 3461) by upper-case name; raises the refusal."""
    params: dict[str, str] = {}
    for raw in raw_params:
        key, _, value = raw.partition("=")
        key = key.upper()
        if key == "SIZE":
            if not value.isdigit():
                raise R.BadSyntax("Syntax: SIZE=<number>")
            if int(value) > max_message_size:
                raise R.MessageTooBig()
        elif key == "BODY":
            value = value.upper()
            if value not in ("7BIT", "8BITMIME"):
                raise R.UnknownParameter(f"Unsupported BODY type {value}")
        elif key == "SMTPUTF8":
            if value:
                raise R.BadSyntax("Syntax: SMTPUTF8 takes no value")
        elif key == "RET":
            value = value.upper()
            if value not in ("FULL", "HDRS"):
                raise R.BadSyntax("Syntax: RET=FULL or RET=HDRS")
        elif key == "ENVID":
            value = xtext_decode(value, "ENVID")
            if not value or len(value) > MAX_ENVID:
                raise R.BadSyntax(f"Syntax: ENVID=<xtext of at most {MAX_ENVID} characters>")
        elif key != "AUTH":
            raise R.UnknownParameter(f"Unsupported option {key}")
        params[key] = value
    return params


def recipient(address: str, raw_params: list[str]) -> Recipient:
    """RCPT TO's address with its DSN parameters (RFC 3461 NOTIFY, ORCPT); raises the refusal."""
    result = Recipient(address=address)
    for raw in raw_params:
        key, _, value = raw.partition("=")
        key = key.upper()
        if key == "NOTIFY":
            notify = value.upper().split(",")
            if notify != ["NEVER"] and not (notify and set(notify) <= _NOTIFY_VALUES):
                raise R.BadSyntax("Syntax: NOTIFY=NEVER or a list of SUCCESS,FAILURE,DELAY")
            result.notify = notify
        elif key == "ORCPT":
            kind, semicolon, original = value.partition(";")
            if not semicolon or not kind or not original:
                raise R.BadSyntax("Syntax: ORCPT=<type>;<address>")
            result.orcpt = f"{xtext_decode(kind, 'ORCPT')};{xtext_decode(original, 'ORCPT')}"
        else:
            raise R.UnknownParameter(f"Unsupported option {key}")
    return result


@dataclass(slots=True)
class Envelope:
    """What the session learnt of one transaction, handed to the shell with the body to commit."""

    sender: str
    recipients: list[Recipient]
    params: dict[str, str]
    helo: str
    client_ip: str
    client_port: int
    listener: str
    tls: str
    auth_user: str
    protocol: str
    headers: dict[str, str]
    headers_size: int


def queue_record(
    envelope: Envelope, body: bytes, message_id: str, now: float, hostname: str, worker: str,
    added_headers: bytes = b"", held: bool = False,
) -> tuple[Message, bytes]:
    """The record and the stored bytes: our Received header, `added_headers` (the scanners'), then the
    body as received; `held` queues it held (quarantined) rather than due now."""
    recipients = envelope.recipients
    received = received_header(
        helo=envelope.helo,
        client_ip=envelope.client_ip,
        tls=envelope.tls,
        protocol=envelope.protocol,
        recipient=recipients[0].address if len(recipients) == 1 else "",
        hostname=hostname,
        message_id=message_id,
        now=now,
    )
    stored = received + added_headers + body
    params = envelope.params
    headers = envelope.headers
    message = Message(
        id=message_id,
        sender=envelope.sender,
        recipients=recipients,
        received_at=now,
        size=len(stored),
        next_attempt=now,
        state=HELD if held else ACTIVE,
        client_ip=envelope.client_ip,
        client_port=envelope.client_port,
        helo=envelope.helo,
        protocol=envelope.protocol,
        listener=envelope.listener,
        worker=worker,
        auth_user=envelope.auth_user,
        tls=envelope.tls,
        body_type=params.get("BODY", ""),
        smtputf8="SMTPUTF8" in params,
        declared_size=int(params.get("SIZE", 0)),
        ret=params.get("RET", ""),
        envid=params.get("ENVID", ""),
        message_id=headers.get("message-id", ""),
        header_from=headers.get("from", ""),
        header_to=headers.get("to", ""),
        subject=headers.get("subject", ""),
        date=headers.get("date", ""),
        workspace_id=headers.get("x-workspace-id", ""),
        campaign_id=headers.get("x-campaign-id", ""),
        user_id=headers.get("x-user-id", ""),
        priority=headers.get("x-priority", ""),
        headers_size=envelope.headers_size + len(received) + len(added_headers),
    )
    return message, stored
