"""A client of SpamAssassin's spamd (the SPAMC/1.5 protocol): one SYMBOLS request per connection, over asyncio.

No library: aiospamc, the asyncio client on PyPI, brings loguru, typer and certifi into every SMTP
worker for what is one request and one short answer.
"""

from __future__ import annotations

import math

from fastmta.scan.connection import exchange
from fastmta.scan.verdict import ScanError, SpamReport

# A SYMBOLS answer is a status line, two headers and the names of the rules that hit.
_MAX_REPLY = 64 * 1024


async def check(host: str, port: int, message: bytes, connect_timeout: float) -> SpamReport:
    """spamd's verdict on `message`; raises OSError, ScanError (the caller bounds the whole call in time)."""
    request = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message)
    # spamd closes the connection after its answer: that is where it ends.
    reply = await exchange(host, port, connect_timeout, (request, message), _never, _MAX_REPLY)
    return parse_reply(reply)


def _never(answer: bytes) -> bool:
    return False


def parse_reply(reply: bytes) -> SpamReport:
    """SPAMD/1.1 0 EX_OK, a Spam: header (True ; 6.2 / 5.0), then the rules that hit, comma-separated."""
    head, separator, body = reply.partition(b"\r\n\r\n")
    if not separator:
        raise ScanError(f"spamd answered no complete reply: {_quoted(reply)}")
    status, *header_lines = head.decode("ascii", "replace").split("\r\n")
    protocol, _, rest = status.partition(" ")
    code, _, message = rest.partition(" ")
    if not protocol.startswith("SPAMD/") or code != "0":
        raise ScanError(f"spamd refused the request: {_quoted(status.encode())}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    spam = headers.get("spam")
    if spam is None:
        raise ScanError("spamd's reply has no Spam header")
    flag, _, scores = spam.partition(";")
    found, _, required = scores.partition("/")
    if flag.strip() not in ("True", "False", "Yes", "No"):
        raise ScanError(f"spamd's Spam header is not understood: {_quoted(spam.encode())}")
    rules = tuple(name.strip() for name in body.decode("ascii", "replace").split(",") if name.strip())
    return SpamReport(flag.strip() in ("True", "Yes"), _score(found), _score(required), rules)


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScanError(f"spamd's score is not a number: {_quoted(text.encode())}") from None
    if not math.isfinite(value):
        raise ScanError(f"spamd's score is not a number: {_quoted(text.encode())}")
    return value


def _quoted(raw: bytes) -> str:
    return repr(raw[:80])
