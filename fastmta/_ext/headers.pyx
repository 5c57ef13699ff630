"""Reads the routing and summary fields out of a message's header block; the twin is headers_ref.py."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcpy

cdef enum:
    HTAB = 9
    LF = 10
    CR = 13
    SP = 32
    COLON = 58

cdef enum:
    WANTED_COUNT = 9

# Parallel tables: the lowercase name as C bytes for matching, and as str for the dict key.
cdef const char* WANTED_NAMES[WANTED_COUNT]
cdef Py_ssize_t WANTED_LENGTHS[WANTED_COUNT]
cdef tuple _KEYS = (
    "message-id",
    "from",
    "to",
    "subject",
    "date",
    "x-workspace-id",
    "x-campaign-id",
    "x-user-id",
    "x-priority",
)
WANTED_NAMES[:] = [b"message-id", b"from", b"to", b"subject", b"date", b"x-workspace-id", b"x-campaign-id", b"x-user-id", b"x-priority"]
cdef int _i
for _i in range(WANTED_COUNT):
    WANTED_LENGTHS[_i] = len(_KEYS[_i])


cdef struct Value:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity


cdef int _append(Value* value, const char* src, Py_ssize_t count) except -1:
    cdef Py_ssize_t capacity
    cdef char* grown
    if value.length + count > value.capacity:
        capacity = max(value.length + count, 2 * value.capacity, 256)
        grown = <char*>PyMem_Realloc(value.data, <size_t>capacity)
        if grown == NULL:
            raise MemoryError()
        value.data = grown
        value.capacity = capacity
    if count > 0:
        memcpy(value.data + value.length, src, <size_t>count)
    value.length += count
    return 0


cdef inline bint _is_blank(char c) noexcept nogil:
    return c == SP or c == HTAB or c == CR or c == LF


cdef int _lookup(const char* name, Py_ssize_t length) noexcept nogil:
    cdef int index
    cdef Py_ssize_t k
    cdef char c
    for index in range(WANTED_COUNT):
        if WANTED_LENGTHS[index] != length:
            continue
        for k in range(length):
            c = name[k]
            if b'A' <= c <= b'Z':
                c = c + 32
            if c != WANTED_NAMES[index][k]:
                break
        else:
            return index
    return -1


cdef int _store(dict found, int wanted, Value* value) except -1:
    cdef Py_ssize_t first = 0, last = value.length
    if wanted < 0:
        return 0
    while first < last and _is_blank(value.data[first]):
        first += 1
    while last > first and _is_blank(value.data[last - 1]):
        last -= 1
    found[_KEYS[wanted]] = PyUnicode_DecodeUTF8(value.data + first, last - first, "replace")
    return 0


def parse_headers(object data):
    """The wanted fields of the header block (lowercase name -> unfolded value), and where the block ends.

    The block ends just past the first empty line, at the start of the first line that is neither
    a field nor a continuation (a continuation before any field counts as such), or at len(data).
    The first occurrence of a field wins.
    """
    cdef Py_buffer view
    cdef Value value
    value.data = NULL
    value.length = 0
    value.capacity = 0
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _parse(<const char*>view.buf, view.len, &value)
    finally:
        PyMem_Free(value.data)
        PyBuffer_Release(&view)


cdef tuple _parse(const char* p, Py_ssize_t size, Value* value):
    cdef dict found = {}
    cdef int wanted = -1  # index of the wanted field being read, if any
    cdef bint in_field = False
    cdef Py_ssize_t pos = 0, stop, next_pos, name_end
    cdef const char* newline
    cdef unsigned char c
    while pos < size:
        newline = <const char*>memchr(p + pos, LF, <size_t>(size - pos))
        if newline == NULL:
            stop = next_pos = size
        else:
            next_pos = newline - p + 1
            stop = next_pos - 1
            if stop > pos and p[stop - 1] == CR:
                stop -= 1
        if stop == pos:
            _store(found, wanted, value)
            return found, next_pos
        c = <unsigned char>p[pos]
        if c == SP or c == HTAB:
            if not in_field:
                break
            if wanted >= 0:
                # Unfolding removes only the line break; the continuation's leading blank stays.
                _append(value, p + pos, stop - pos)
        else:
            # A field name is printable ASCII other than ":" (RFC 5322 §2.2); no space before the colon.
            name_end = pos
            while name_end < stop:
                c = <unsigned char>p[name_end]
                if c < 33 or c > 126 or c == COLON:
                    break
                name_end += 1
            if name_end == pos or name_end == stop or p[name_end] != COLON:
                break
            _store(found, wanted, value)
            in_field = True
            wanted = _lookup(p + pos, name_end - pos)
            if wanted >= 0 and _KEYS[wanted] in found:
                wanted = -1
            if wanted >= 0:
                value.length = 0
                _append(value, p + name_end + 1, stop - name_end - 1)
        pos = next_pos
    _store(found, wanted, value)
    return found, pos
