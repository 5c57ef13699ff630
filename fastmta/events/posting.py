"""Posting JSON to receivers (webhooks, the delivery report): one pooled HTTP client with bounded waits, and signatures.

A request made with a secret carries `X-Fastmta-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>">`, as Stripe signs its webhooks: the receiver checks who sent the body, and from t,
that it is recent (a captured request replayed later fails that check).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import NamedTuple

import httpx

SIGNATURE_HEADER = "X-Fastmta-Signature"
EVENT_ID_HEADER = "X-Fastmta-Event-Id"
# Of an answer only its status and a short body are used (the report's list of rejected ids at most).
_MAX_ANSWER_BYTES = 1 << 20
_SUMMARY_CHARACTERS = 200


class Unreachable(Exception):
    """No answer: the connection failed or the receiver took longer than the timeout."""


class Answer(NamedTuple):
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def transient(self) -> bool:
        """A failure worth retrying: the receiver is busy or broken, not refusing this request."""
        return self.status in (408, 429) or self.status >= 500

    def summary(self) -> str:
        text = self.body[:_SUMMARY_CHARACTERS].decode("utf-8", "replace")
        printable = "".join(character if character.isprintable() else " " for character in text).strip()
        return f"HTTP {self.status}" + (f": {printable}" if printable else "")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Poster:
    """Sync, for the events runner's worker thread; keeps connections to receivers open between requests."""

    def __init__(self, connect_timeout: float, timeout: float) -> None:
        self.timeout = timeout
        # Each wait (connect, send, each read) is bounded by httpx; the answer as a whole by post().
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,  # a redirect is an answer: the configured url is the receiver
            headers={"User-Agent": "fastmta"},
        )

    def post(self, url: str, body: bytes, secret: str = "", headers: dict[str, str] | None = None) -> Answer:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if secret:
            sent[SIGNATURE_HEADER] = signature(secret, int(time.time()), body)
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", url, content=body, headers=sent) as response:
                kept = bytearray()
                for chunk in response.iter_bytes():
                    kept += chunk[: _MAX_ANSWER_BYTES - len(kept)]
                    if time.monotonic() > deadline:
                        raise Unreachable(f"no whole answer within {self.timeout:g} s")
                    if len(kept) >= _MAX_ANSWER_BYTES:
                        break
                return Answer(response.status_code, bytes(kept))
        except httpx.HTTPError as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None

    def close(self) -> None:
        self._client.close()
