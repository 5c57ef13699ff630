"""Pure-Python twin of data.pyx: finds the end of DATA across reads and removes dot-stuffing in the same pass."""

from __future__ import annotations

# Where the scanner stands between two bytes of the stream. Only CRLF starts a line (RFC 5321
# §4.5.2); a bare CR or LF is data, so "\n.\n" and friends can never end a message (SMTP smuggling).
_LINE_START = 0  # just after CRLF, or at the very beginning
_DOT = 1  # a line-start "." was seen and dropped
_DOT_CR = 2  # ".\r" at a line start; the CR is held back until we know it is not the terminator
_MID = 3  # inside a line
_CR = 4  # inside a line, just after a CR (already kept) whose LF may be the next byte
_DONE = 5


def _as_bytes(buf: bytes | bytearray | memoryview) -> bytes | bytearray:
    if isinstance(buf, (bytes, bytearray)):
        return buf
    with memoryview(buf) as view:
        # The compiled module asks for a simple (C-contiguous) buffer; refuse the same inputs it refuses.
        if not view.c_contiguous:
            raise BufferError("DataScanner needs a C-contiguous buffer")
        return view.tobytes()


class DataScanner:
    """Reads one DATA body, fed in pieces of any size, up to and including its ".\\r\\n" line.

    The result is the same however the stream is split into feed() calls. Bytes beyond `limit`
    are counted in `size` but not kept, so the caller can read the whole message before answering
    552. feed() after the end was found raises RuntimeError.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._limit = limit
        self._kept = bytearray()
        self._size = 0
        self._bare_eol = False
        self._state = _LINE_START

    @property
    def body(self) -> bytes:
        """The unstuffed message up to the CRLF before the final ".", at most `limit` bytes."""
        return bytes(self._kept)

    @property
    def size(self) -> int:
        return self._size

    @property
    def overflow(self) -> bool:
        return self._size > self._limit

    @property
    def bare_eol(self) -> bool:
        return self._bare_eol

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def _keep(self, data: bytes | bytearray, start: int, stop: int) -> None:
        self._size += stop - start
        room = self._limit - len(self._kept)
        if room > 0 and stop > start:
            self._kept += data[start : min(stop, start + room)]

    def feed(self, buf: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Consume buf[start:]; return -1, or the offset just past the ".\\r\\n" line (the rest is not consumed)."""
        if self._state == _DONE:
            raise RuntimeError("DataScanner.feed() after the end of data")
        data = _as_bytes(buf)
        size = len(data)
        if not 0 <= start <= size:
            raise ValueError(f"start {start} outside the buffer of {size} bytes")
        state = self._state
        bare = self._bare_eol
        pos = start
        run = start  # kept bytes from here to pos are copied in one go, at a dropped dot or the end
        while pos < size:
            if state == _MID:
                newline = data.find(b"\n", pos)
                if newline < 0:
                    stop = size - 1 if data[size - 1] == 0x0D else size
                    if stop < size:
                        state = _CR
                    newline = size - 1  # so that pos becomes size
                elif newline > pos and data[newline - 1] == 0x0D:
                    stop = newline - 1
                    state = _LINE_START
                else:
                    stop = newline
                    bare = True
                # Every CR before the first LF, except one right before it, is followed by something else.
                if not bare and data.find(b"\r", pos, stop) >= 0:
                    bare = True
                pos = newline + 1
            elif state == _LINE_START:
                if data[pos] == 0x2E:
                    self._keep(data, run, pos)
                    pos += 1
                    run = pos
                    state = _DOT
                else:
                    state = _MID
            elif state == _DOT:
                if data[pos] == 0x0D:
                    pos += 1
                    run = pos
                    state = _DOT_CR
                else:
                    state = _MID
            elif state == _DOT_CR:
                if data[pos] == 0x0A:
                    self._state = _DONE
                    self._bare_eol = bare
                    return pos + 1
                self._keep(b"\r", 0, 1)
                bare = True
                state = _MID
            else:  # _CR
                if data[pos] == 0x0A:
                    pos += 1
                    state = _LINE_START
                else:
                    bare = True
                    state = _MID
        self._keep(data, run, size)
        self._state = state
        self._bare_eol = bare
        return -1
