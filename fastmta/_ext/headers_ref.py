"""Pure-Python twin of headers.pyx: reads the routing and summary fields out of a message's header block."""

from __future__ import annotations

import re

_WANTED = frozenset(
    {
        "message-id",
        "from",
        "to",
        "subject",
        "date",
        "x-workspace-id",
        "x-campaign-id",
        "x-user-id",
        "x-priority",
    }
)

# A field name is printable ASCII other than ":" (RFC 5322 §2.2); no space is allowed before the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_WHITESPACE = b" \t\r\n"


def _as_bytes(buf: bytes | bytearray | memoryview) -> bytes:
    if isinstance(buf, bytes):
        return buf
    with memoryview(buf) as view:
        # The compiled module asks for a simple (C-contiguous) buffer; refuse the same inputs it refuses.
        if not view.c_contiguous:
            raise BufferError("parse_headers needs a C-contiguous buffer")
        return view.tobytes()


def _store(found: dict[str, str], name: str | None, pieces: list[bytes]) -> None:
    if name is not None:
        found[name] = b"".join(pieces).strip(_WHITESPACE).decode("utf-8", "replace")


def parse_headers(data: bytes | bytearray | memoryview) -> tuple[dict[str, str], int]:
    """The wanted fields of the header block (lowercase name -> unfolded value), and where the block ends.

    The block ends just past the first empty line, at the start of the first line that is neither
    a field nor a continuation (a continuation before any field counts as such), or at len(data).
    The first occurrence of a field wins.
    """
    data = _as_bytes(data)
    size = len(data)
    found: dict[str, str] = {}
    name: str | None = None  # the wanted field being read, if any
    pieces: list[bytes] = []
    in_field = False
    pos = 0
    while pos < size:
        newline = data.find(b"\n", pos)
        if newline < 0:
            stop = next_pos = size
        else:
            next_pos = newline + 1
            stop = newline - 1 if newline > pos and data[newline - 1] == 0x0D else newline
        if stop == pos:
            _store(found, name, pieces)
            return found, next_pos
        if data[pos] in b" \t":
            if not in_field:
                break
            if name is not None:
                # Unfolding removes only the line break; the continuation's leading blank stays.
                pieces.append(data[pos:stop])
        else:
            match = _FIELD_NAME.match(data, pos, stop)
            if match is None:
                break
            _store(found, name, pieces)
            in_field = True
            name = data[pos : match.end() - 1].decode("ascii").lower()
            if name in _WANTED and name not in found:
                pieces = [data[match.end() : stop]]
            else:
                name = None
        pos = next_pos
    _store(found, name, pieces)
    return found, pos
