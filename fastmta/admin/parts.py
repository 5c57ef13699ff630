"""A message body as the admin API shows it: its headers, and each MIME part with the text of the readable ones.

Parsed by the stdlib `email` package (policy.default), which records what is malformed as defects
rather than failing; the text shown of a part is capped, since a body may be as large as
[smtp] max_message_size.
"""

from __future__ import annotations

import codecs
import email
import email.policy
from email.message import Message

import msgspec

TEXT_CAP = 64 * 1024  # bytes of a text part's decoded content shown
_SHOWN = frozenset({"text/plain", "text/html"})


class Header(msgspec.Struct):
    name: str
    value: str


class Part(msgspec.Struct):
    content_type: str
    size: int  # bytes, after the transfer encoding is undone
    charset: str | None = None
    filename: str | None = None  # for attachments
    attachment: bool = False
    # text/plain and text/html that are not attachments: the first TEXT_CAP bytes, decoded.
    content: str | None = None
    truncated: bool = False


class Body(msgspec.Struct):
    size: int  # bytes as received
    headers: list[Header]  # in order, repeated names repeated
    parts: list[Part]  # the leaves of the MIME tree, depth first


def parse(raw: bytes) -> Body:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return Body(len(raw), _headers(message), [_part(leaf) for leaf in message.walk() if not leaf.is_multipart()])


def _headers(message: Message) -> list[Header]:
    found = []
    for name, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(name, raw))
        except Exception:  # the header parser still has inputs it fails on: show such a header as it came
            value = raw
        found.append(Header(name, value))
    return found


def _part(part: Message) -> Part:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    content_type = part.get_content_type()
    charset = part.get_content_charset()
    attachment = part.get_content_disposition() == "attachment"
    shown = Part(content_type, len(data), charset, part.get_filename() if attachment else None, attachment)
    if content_type in _SHOWN and not attachment:
        shown.content = data[:TEXT_CAP].decode(_codec(charset), errors="replace")
        shown.truncated = len(data) > TEXT_CAP
    return shown


def _codec(charset: str | None) -> str:
    """The charset a part declares if Python knows it; else UTF-8, the likeliest and a superset of ASCII."""
    try:
        return codecs.lookup(charset or "utf-8").name
    except LookupError:
        return "utf-8"
