"""The searchable text of a message: its decoded Subject and the text of its body (text/plain, else HTML without tags)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from html.parser import HTMLParser

# Text indexed of one body: enough for any letter, bounded for a message of many megabytes.
TEXT_LIMIT = 1 << 20


class _HtmlText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._hidden -= tag in ("script", "style") and self._hidden > 0

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(data)


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return " ".join(" ".join(parser.chunks).split())


def _subject(message: EmailMessage) -> str:
    for name, raw in message.raw_items():
        if name.lower() == "subject":
            try:
                return str(message.policy.header_fetch_parse(name, raw))
            except Exception:  # the header parser still has inputs it fails on: take the subject as it came
                return str(raw)
    return ""


def _body_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = body.get_content()
    except (LookupError, ValueError):  # an unknown charset, a malformed transfer encoding
        payload = body.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    return _html_text(content) if body.get_content_type() == "text/html" else content


def subject_and_text(raw: bytes) -> tuple[str, str]:
    """Whatever a client sent: a message whose text cannot be found is stored with an empty one, never refused."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    try:
        text = _body_text(message)
    except Exception:  # as for headers: malformed MIME the parser trips on must not keep the message from its store
        text = ""
    return _subject(message), text[:TEXT_LIMIT]
