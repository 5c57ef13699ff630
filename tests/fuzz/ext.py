"""Fuzz target: the compiled line splitter, DATA scanner and header parser against their pure-Python twins.

Input: byte 0 picks the function (mod 3) and how the buffer is passed (bytes, bytearray or
memoryview); the rest is read per function (see each _function below). Both implementations get
the same calls and must give the same results, exceptions included, with the types of the
items. Only the twins carry coverage (the compiled modules are not built for libFuzzer), so the
search is guided by the twins' branches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tests.fuzz import harness

with harness.instrumented():
    from fastmta._ext import data_ref, headers_ref, lines_ref

lines = importlib.import_module("fastmta._ext.lines")
data = importlib.import_module("fastmta._ext.data")
headers = importlib.import_module("fastmta._ext.headers")

Buffer = bytes | bytearray | memoryview
KINDS: tuple[Callable[[bytes], Buffer], ...] = (bytes, bytearray, memoryview)


def exact(value: object) -> tuple[str, object]:
    """value with every item's type made part of it, so b"a" and bytearray(b"a") differ."""
    if isinstance(value, list | tuple):
        return type(value).__name__, [exact(item) for item in value]
    if isinstance(value, dict):
        return "dict", [(exact(key), exact(item)) for key, item in value.items()]
    return type(value).__name__, value


def outcome(function: Callable[..., object], *args: object) -> tuple[str, object]:
    try:
        return exact(function(*args))
    except Exception as exc:  # the exception's type is the result to compare
        return "raised", type(exc).__name__


def split_lines(buf: bytes, kind: Callable[[bytes], Buffer]) -> None:
    """Bytes 1-2: max_line (0..1023); byte 3: start (mod len + 1); then the buffer."""
    max_line = int.from_bytes(buf[:2], "big") % 1024
    start = buf[2] % (len(buf) - 2) if len(buf) > 2 else 0
    text = buf[3:]
    expected = outcome(lines_ref.split_lines, kind(text), start, max_line)
    assert outcome(lines.split_lines, kind(text), start, max_line) == expected, (text, start, max_line)


def scan_data(buf: bytes, kind: Callable[[bytes], Buffer]) -> None:
    """Bytes 1-2: the limit (0..4095); then pieces, each a length byte, a start byte (mod length + 1) and the bytes.

    Each piece is fed as feed(piece, start), as the session feeds its buffer from its read
    position; the scanned stream is every piece[start:]. A twin fed that stream whole must end
    in the same state: the result does not depend on the split.
    """
    limit = int.from_bytes(buf[:2], "big") % 4096
    compiled, twin, whole = data.DataScanner(limit), data_ref.DataScanner(limit), data_ref.DataScanner(limit)
    stream = b""
    consumed = 0  # bytes of the stream the twin consumed
    pos = 2
    while pos + 1 < len(buf):
        size, skip = buf[pos], buf[pos + 1]
        piece = buf[pos + 2 : pos + 2 + size]
        pos += 2 + size
        start = skip % (len(piece) + 1)
        was_done = twin.done
        expected = outcome(twin.feed, kind(piece), start)
        assert outcome(compiled.feed, kind(piece), start) == expected, (piece, start)
        assert state(compiled) == state(twin), (piece, start)
        if not was_done:
            stream += piece[start:]
            end = expected[1]
            consumed += end - start if isinstance(end, int) and end >= 0 else len(piece) - start
    if stream:
        assert whole.feed(stream) == (consumed if twin.done else -1), stream
        assert state(whole) == state(twin), stream


def state(scanner: data_ref.DataScanner) -> tuple[bytes, int, bool, bool, bool]:
    return scanner.body, scanner.size, scanner.overflow, scanner.bare_eol, scanner.done


def parse_headers(buf: bytes, kind: Callable[[bytes], Buffer]) -> None:
    """The buffer is the message."""
    assert outcome(headers.parse_headers, kind(buf)) == outcome(headers_ref.parse_headers, kind(buf)), buf


FUNCTIONS = (split_lines, scan_data, parse_headers)


def test_one_input(buf: bytes) -> None:
    if not buf:
        return
    choice = buf[0] % (len(FUNCTIONS) * len(KINDS))
    FUNCTIONS[choice % len(FUNCTIONS)](buf[1:], KINDS[choice // len(FUNCTIONS)])


if __name__ == "__main__":
    harness.fuzz("ext", test_one_input)
