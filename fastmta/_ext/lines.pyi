"""Splits pipelined SMTP command lines out of a read buffer (compiled; twin: lines_ref.py)."""

def split_lines(buf: bytes | bytearray | memoryview, start: int, max_line: int) -> tuple[list[bytes | None], list[int]]:
    """Every complete line of buf[start:] without its LF or CRLF, and the offset just past each.

    A line longer than max_line, or an unterminated tail longer than max_line (end = len(buf)),
    comes back as None. A shorter unterminated tail is not consumed.
    """
