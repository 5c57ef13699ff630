"""Fuzz target: the envelope address parser and the MAIL/RCPT parameters.

The input, decoded as UTF-8 (invalid bytes replaced, as no command argument holds any), is given
to each function as the session would. Only the refusals the client is meant to hear
(SmtpReplyError subclasses) may escape; a mailbox is_mailbox() accepts holds no control
character and keeps RFC 5321's limits (local part 64 octets, domain 255, path 256 with its <>);
an xtext value decodes to text without control characters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from tests.fuzz import harness

with harness.instrumented("ipaddress"):
    from fastmta.smtp import address as A
    from fastmta.smtp.envelope import mail_parameters, recipient
    from fastmta.smtp.replies import SmtpReplyError

_CONTROL = re.compile("[\x00-\x1f\x7f]")
T = TypeVar("T")


def refused_or(function: Callable[..., T], *args: object) -> T | None:
    """function(*args), or None when it raised a refusal the client is meant to hear."""
    try:
        return function(*args)
    except SmtpReplyError:
        return None


def check_mailbox(address: str) -> None:
    if not A.is_mailbox(address):
        return
    local, _, domain = address.rpartition("@")
    assert not _CONTROL.search(address), f"control character in a mailbox: {address!r}"
    assert len(local.encode()) <= A.MAX_LOCAL_PART, address
    assert len(domain.encode()) <= A.MAX_DOMAIN, address
    assert len(address.encode()) + 2 <= A.MAX_PATH, address


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    check_mailbox(text)
    A.has_routing(text)
    A.is_postmaster(text)
    A.domain_of(text)
    decoded = refused_or(A.xtext_decode, text, "ENVID")
    assert decoded is None or not _CONTROL.search(decoded), f"control character decoded: {decoded!r}"
    for keyword in ("FROM:", "TO:"):
        split = refused_or(A.split_path, text, keyword)
        if split is None:
            continue
        address, params = split
        check_mailbox(address)
        for smtputf8 in (False, True):
            refused_or(A.check_sender, address, smtputf8)
            refused_or(A.check_recipient, address, smtputf8)
        if keyword == "FROM:":
            refused_or(mail_parameters, params, 10_000)
        else:
            refused_or(recipient, address, params)


if __name__ == "__main__":
    harness.fuzz("address", test_one_input)
