"""A client of ClamAV's clamd: the message streamed with zINSTREAM, in chunks each led by its 4-byte length.

No library: aioclamd, the asyncio client on PyPI, reads the message through a thread 1 KiB at a
time, a thread hop per KiB of mail.
"""

from __future__ import annotations

import struct

from fastmta.scan.connection import exchange
from fastmta.scan.verdict import ScanError, VirusReport

# Well under clamd's StreamMaxLength (100M by default), which bounds the whole stream, not a chunk.
_CHUNK = 1 << 20
_LENGTH = struct.Struct(">I")
_END = _LENGTH.pack(0)
_MAX_REPLY = 4096


async def check(host: str, port: int, message: bytes, connect_timeout: float) -> VirusReport:
    """clamd's verdict on `message`; raises OSError, ScanError (the caller bounds the whole call in time)."""
    reply = await exchange(host, port, connect_timeout, _stream(message), _ends_with_nul, _MAX_REPLY)
    return parse_reply(reply)


def _stream(message: bytes) -> list[bytes | memoryview]:
    pieces: list[bytes | memoryview] = [b"zINSTREAM\0"]
    view = memoryview(message)
    for start in range(0, len(view), _CHUNK):
        chunk = view[start : start + _CHUNK]
        pieces += (_LENGTH.pack(len(chunk)), chunk)
    pieces.append(_END)
    return pieces


def _ends_with_nul(answer: bytes) -> bool:
    """One answer, ended by NUL (the z in zINSTREAM asks for that)."""
    return answer.endswith(b"\0")


def parse_reply(reply: bytes) -> VirusReport:
    """stream: OK, stream: <name> FOUND, or <reason> ERROR (what came before clamd closed, if it did)."""
    text = reply.rstrip(b"\0").decode("ascii", "replace").strip()
    if text == "stream: OK":
        return VirusReport("")
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        return VirusReport(text[len("stream: ") : -len(" FOUND")])
    raise ScanError(f"clamd did not scan the message: {text[:80]!r}")
