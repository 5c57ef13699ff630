"""Pure-Python twin of lines.pyx: splits pipelined SMTP command lines out of a read buffer."""

from __future__ import annotations


def _as_bytes(buf: bytes | bytearray | memoryview) -> bytes:
    if isinstance(buf, bytes):
        return buf
    with memoryview(buf) as view:
        # The compiled module asks for a simple (C-contiguous) buffer; refuse the same inputs it refuses.
        if not view.c_contiguous:
            raise BufferError("split_lines needs a C-contiguous buffer")
        return view.tobytes()


def split_lines(buf: bytes | bytearray | memoryview, start: int, max_line: int) -> tuple[list[bytes | None], list[int]]:
    """Every complete line of buf[start:] without its LF or CRLF, and the offset just past each.

    A line whose content is longer than max_line comes back as None. So does an unterminated tail
    longer than max_line, a CR at its end not counted (its end is len(buf)): the caller refuses it and discards through the next
    LF. A shorter unterminated tail is left for the next read.
    """
    data = _as_bytes(buf)
    size = len(data)
    if not 0 <= start <= size:
        raise ValueError(f"start {start} outside the buffer of {size} bytes")
    if max_line < 0:
        raise ValueError("max_line must not be negative")
    lines: list[bytes | None] = []
    ends: list[int] = []
    pos = start
    while (newline := data.find(b"\n", pos)) >= 0:
        stop = newline - 1 if newline > pos and data[newline - 1] == 0x0D else newline
        lines.append(data[pos:stop] if stop - pos <= max_line else None)
        ends.append(newline + 1)
        pos = newline + 1
    # A CR that ends the tail may begin the CRLF to come: a complete line is not judged with it either.
    stop = size - 1 if size > pos and data[size - 1] == 0x0D else size
    if stop - pos > max_line:
        lines.append(None)
        ends.append(size)
    return lines, ends
