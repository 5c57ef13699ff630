"""Finds the end of DATA across reads and removes dot-stuffing in the same pass (compiled; twin: data_ref.py)."""

class DataScanner:
    """Reads one DATA body, fed in pieces of any size, up to and including its ".\\r\\n" line.

    The result is the same however the stream is split into feed() calls. Bytes beyond `limit`
    are counted in `size` but not kept. feed() after the end was found raises RuntimeError.
    """

    def __init__(self, limit: int) -> None: ...
    def feed(self, buf: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Consume buf[start:]; return -1, or the offset just past the ".\\r\\n" line (the rest is not consumed)."""
    @property
    def body(self) -> bytes:
        """The unstuffed message up to the CRLF before the final ".", at most `limit` bytes."""
    @property
    def size(self) -> int:
        """Unstuffed bytes seen so far, including those beyond the limit."""
    @property
    def overflow(self) -> bool:
        """size > limit."""
    @property
    def bare_eol(self) -> bool:
        """A CR without LF after it, or an LF without CR before it, occurred in the data."""
    @property
    def done(self) -> bool:
        """The end-of-data line was found."""
