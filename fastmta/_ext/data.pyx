"""Finds the end of DATA across reads and removes dot-stuffing in the same pass; the twin is data_ref.py."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from libc.string cimport memchr, memcpy

cdef enum:
    LF = 10
    CR = 13
    PERIOD = 46

# Where the scanner stands between two bytes of the stream. Only CRLF starts a line (RFC 5321
# §4.5.2); a bare CR or LF is data, so "\n.\n" and friends can never end a message (SMTP smuggling).
cdef enum State:
    LINE_START  # just after CRLF, or at the very beginning
    AFTER_DOT  # a line-start "." was seen and dropped
    DOT_CR  # ".\r" at a line start; the CR is held back until we know it is not the terminator
    MID  # inside a line
    AFTER_CR  # inside a line, just after a CR (already kept) whose LF may be the next byte
    DONE

cdef const char* HELD_CR = b"\r"


cdef class DataScanner:
    """Reads one DATA body, fed in pieces of any size, up to and including its ".\\r\\n" line.

    The result is the same however the stream is split into feed() calls. Bytes beyond `limit`
    are counted in `size` but not kept, so the caller can read the whole message before answering
    552. feed() after the end was found raises RuntimeError.
    """

    cdef Py_ssize_t _limit
    cdef Py_ssize_t _size
    cdef char* _kept
    cdef Py_ssize_t _kept_len
    cdef Py_ssize_t _kept_cap
    cdef State _state
    cdef bint _bare_eol
    cdef bytes _body  # built once the end is found, then the C buffer is freed

    def __init__(self, Py_ssize_t limit):
        if limit < 0:
            raise ValueError("limit must not be negative")
        PyMem_Free(self._kept)
        self._kept = NULL
        self._kept_len = 0
        self._kept_cap = 0
        self._limit = limit
        self._size = 0
        self._state = LINE_START
        self._bare_eol = False
        self._body = None

    def __dealloc__(self):
        PyMem_Free(self._kept)

    @property
    def body(self):
        """The unstuffed message up to the CRLF before the final ".", at most `limit` bytes."""
        if self._body is not None:
            return self._body
        body = PyBytes_FromStringAndSize(self._kept, self._kept_len)
        if self._state == DONE:
            self._body = body
            PyMem_Free(self._kept)
            self._kept = NULL
            self._kept_cap = 0
        return body

    @property
    def size(self):
        return self._size

    @property
    def overflow(self):
        return self._size > self._limit

    @property
    def bare_eol(self):
        return self._bare_eol

    @property
    def done(self):
        return self._state == DONE

    cdef int _keep(self, const char* src, Py_ssize_t count) except -1:
        cdef Py_ssize_t take, capacity
        cdef char* grown
        self._size += count
        take = min(count, self._limit - self._kept_len)
        if take <= 0:
            return 0
        if self._kept_len + take > self._kept_cap:
            # Grow geometrically but never past the limit: a large max_message_size costs nothing up front.
            capacity = max(self._kept_len + take, 2 * self._kept_cap, 4096)
            capacity = min(capacity, self._limit)
            grown = <char*>PyMem_Realloc(self._kept, <size_t>capacity)
            if grown == NULL:
                raise MemoryError()
            self._kept = grown
            self._kept_cap = capacity
        memcpy(self._kept + self._kept_len, src, <size_t>take)
        self._kept_len += take
        return 0

    def feed(self, object buf, Py_ssize_t start=0):
        """Consume buf[start:]; return -1, or the offset just past the ".\\r\\n" line (the rest is not consumed)."""
        cdef Py_buffer view
        if self._state == DONE:
            raise RuntimeError("DataScanner.feed() after the end of data")
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            if start < 0 or start > view.len:
                raise ValueError(f"start {start} outside the buffer of {view.len} bytes")
            return self._scan(<const char*>view.buf, view.len, start)
        finally:
            PyBuffer_Release(&view)

    cdef Py_ssize_t _scan(self, const char* p, Py_ssize_t size, Py_ssize_t pos) except -2:
        cdef State state = self._state
        cdef bint bare = self._bare_eol
        cdef Py_ssize_t run = pos  # kept bytes from here to pos are copied in one go, at a dropped dot or the end
        cdef Py_ssize_t newline, stop
        cdef const char* found
        while pos < size:
            if state == MID:
                found = <const char*>memchr(p + pos, LF, <size_t>(size - pos))
                if found == NULL:
                    stop = size - 1 if p[size - 1] == CR else size
                    if stop < size:
                        state = AFTER_CR
                    newline = size - 1  # so that pos becomes size
                else:
                    newline = found - p
                    if newline > pos and p[newline - 1] == CR:
                        stop = newline - 1
                        state = LINE_START
                    else:
                        stop = newline
                        bare = True
                # Every CR before the first LF, except one right before it, is followed by something else.
                if not bare and memchr(p + pos, CR, <size_t>(stop - pos)) != NULL:
                    bare = True
                pos = newline + 1
            elif state == LINE_START:
                if p[pos] == PERIOD:
                    self._keep(p + run, pos - run)
                    pos += 1
                    run = pos
                    state = AFTER_DOT
                else:
                    state = MID
            elif state == AFTER_DOT:
                if p[pos] == CR:
                    pos += 1
                    run = pos
                    state = DOT_CR
                else:
                    state = MID
            elif state == DOT_CR:
                if p[pos] == LF:
                    self._state = DONE
                    self._bare_eol = bare
                    return pos + 1
                self._keep(HELD_CR, 1)
                bare = True
                state = MID
            else:  # AFTER_CR
                if p[pos] == LF:
                    pos += 1
                    state = LINE_START
                else:
                    bare = True
                    state = MID
        self._keep(p + run, size - run)
        self._state = state
        self._bare_eol = bare
        return -1
