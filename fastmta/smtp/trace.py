"""The Received: trace header fastmta prepends, built only from values that hold no control characters.

Every value that came from a client (HELO name, address, TLS description) passes through
header_safe here, the one place that builds the header, so no client can start a line of its own.
"""

from __future__ import annotations

import re
import time

_UNSAFE = re.compile("[\x00-\x1f\x7f]")


def header_safe(value: str) -> str:
    """The value with every control character (CR and LF among them) replaced by '?'."""
    # isprintable() is false for every control character and is much cheaper than the substitution.
    return value if value.isprintable() else _UNSAFE.sub("?", value)


def received_header(
    *, helo: str, client_ip: str, tls: str, protocol: str, recipient: str, hostname: str, message_id: str, now: float
) -> bytes:
    """`recipient` goes into a "for" clause when the message has exactly one; empty otherwise."""
    for_clause = f"\r\n\tfor <{header_safe(recipient)}>" if recipient else ""
    tls_clause = f"\r\n\t(using {header_safe(tls)})" if tls else ""
    return (
        f"Received: from {header_safe(helo)} (unknown [{header_safe(client_ip)}]){tls_clause}\r\n"
        f"\tby {header_safe(hostname)} (fastmta) with {header_safe(protocol)} id {message_id}"
        f"{for_clause}; {rfc5322_date(now)}\r\n"
    ).encode()


_date_second = -1
_date_text = ""


def rfc5322_date(now: float) -> str:
    """Formatting a date costs more than the rest of the header; one per second is enough."""
    global _date_second, _date_text
    second = int(now)
    if second != _date_second:
        _date_second = second
        _date_text = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(second))
    return _date_text
