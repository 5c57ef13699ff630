"""Splits pipelined SMTP command lines out of a read buffer; the twin is lines_ref.py."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

cdef enum:
    LF = 10
    CR = 13


def split_lines(object buf, Py_ssize_t start, Py_ssize_t max_line):
    """Every complete line of buf[start:] without its LF or CRLF, and the offset just past each.

    A line longer than max_line, or an unterminated tail longer than max_line (end = len(buf); a CR
    at its end not counted), comes back as None. A shorter unterminated tail is not consumed.
    """
    cdef Py_buffer view
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        if start < 0 or start > view.len:
            raise ValueError(f"start {start} outside the buffer of {view.len} bytes")
        if max_line < 0:
            raise ValueError("max_line must not be negative")
        return _split(<const char*>view.buf, view.len, start, max_line)
    finally:
        PyBuffer_Release(&view)


cdef tuple _split(const char* p, Py_ssize_t size, Py_ssize_t pos, Py_ssize_t max_line):
    cdef list lines = []
    cdef list ends = []
    cdef const char* newline
    cdef Py_ssize_t at, stop
    while pos < size:
        newline = <const char*>memchr(p + pos, LF, <size_t>(size - pos))
        if newline == NULL:
            break
        at = newline - p
        stop = at - 1 if at > pos and p[at - 1] == CR else at
        if stop - pos <= max_line:
            lines.append(PyBytes_FromStringAndSize(p + pos, stop - pos))
        else:
            lines.append(None)
        ends.append(at + 1)
        pos = at + 1
    # A CR that ends the tail may begin the CRLF to come: a complete line is not judged with it either.
    stop = size - 1 if size > pos and p[size - 1] == CR else size
    if stop - pos > max_line:
        lines.append(None)
        ends.append(size)
    return lines, ends
