"""A received event stored as its message's queue record, as the event's JSON; the twin is received_ref.py.

The record's MessagePack is read in place and the JSON written from it, without making the record, the
event or their strings Python objects: the events process does this for every message received, on the
CPUs ingress runs on.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy, strlen

import msgspec

from fastmta._ext.received_ref import NEGATIVE_START, SEQUENCE_RANGE, UNDECODABLE

from fastmta.events.ids import WRITER_BITS

# Floats are written as msgspec writes them: the JSON must be the event's, byte for byte.
cdef object _float_json = msgspec.json.Encoder().encode

# The record's string fields, by index: where each is found (its key) and what it is called in the event.
cdef enum:
    ID = 0
    SENDER = 1
    FIRST_PLAIN = 2  # from here on, written in this order under the same name, except message_id
    STRINGS = 15

cdef const char* RECORD_KEYS[STRINGS]
RECORD_KEYS[:] = [
    b"id", b"sender", b"client_ip", b"helo", b"auth_user", b"listener", b"tls", b"message_id", b"header_from",
    b"header_to", b"subject", b"workspace_id", b"campaign_id", b"user_id", b"priority",
]
_EVENT_KEYS = [
    b"", b"", b',"client_ip":', b',"helo":', b',"auth_user":', b',"listener":', b',"tls":', b',"header_message_id":',
    b',"header_from":', b',"header_to":', b',"subject":', b',"workspace_id":', b',"campaign_id":', b',"user_id":',
    b',"priority":',
]
# Message's defaults: an omitted field (queue records omit defaults) has the default's value. Each is
# written whole with its key, in one copy (no default needs an escape).
_ABSENT_FIELDS = [
    key + b'"' + default + b'"'
    for key, default in zip(_EVENT_KEYS, [b"", b"", b"", b"", b"", b"smtp", b"", b"", b"", b"", b"", b"", b"", b"", b""])
]
cdef const char* EVENT_KEYS[STRINGS]
cdef const char* ABSENT_FIELDS[STRINGS]
cdef Py_ssize_t EVENT_KEY_LENGTHS[STRINGS]
cdef Py_ssize_t ABSENT_FIELD_LENGTHS[STRINGS]
# The record's keys by length, each the head of a list (-1 ends it) that NEXT_OF_LENGTH goes on with: a key
# read from the entry is compared with the few of its length, not with all of them.
cdef enum:
    LONGEST_KEY = 16
cdef int FIRST_OF_LENGTH[LONGEST_KEY]
cdef int NEXT_OF_LENGTH[STRINGS]
cdef int _index
cdef size_t _length
for _index in range(LONGEST_KEY):
    FIRST_OF_LENGTH[_index] = -1
for _index in range(STRINGS - 1, -1, -1):
    EVENT_KEYS[_index] = _EVENT_KEYS[_index]
    ABSENT_FIELDS[_index] = _ABSENT_FIELDS[_index]
    _length = strlen(RECORD_KEYS[_index])
    if _length >= LONGEST_KEY:
        raise ImportError(f"the record's key {RECORD_KEYS[_index]!r} is longer than LONGEST_KEY allows")
    EVENT_KEY_LENGTHS[_index] = <Py_ssize_t>strlen(EVENT_KEYS[_index])
    ABSENT_FIELD_LENGTHS[_index] = len(_ABSENT_FIELDS[_index])
    NEXT_OF_LENGTH[_index] = FIRST_OF_LENGTH[_length]
    FIRST_OF_LENGTH[_length] = _index


# The bytes JSON escapes (msgspec's choice): control characters, the quote and the backslash. Each one's
# escape is a backslash and this letter, or (0) the \u form.
cdef bint NEEDS_ESCAPE[256]
cdef char ESCAPE_LETTER[256]
for _index in range(256):
    NEEDS_ESCAPE[_index] = _index < 0x20 or _index == 0x22 or _index == 0x5c
    ESCAPE_LETTER[_index] = 0
for _index, _letter in ((0x22, b'"'), (0x5c, b"\\"), (0x08, b"b"), (0x09, b"t"), (0x0a, b"n"), (0x0c, b"f"), (0x0d, b"r")):
    ESCAPE_LETTER[_index] = _letter[0]


cdef struct Reader:
    const unsigned char* data
    Py_ssize_t pos
    Py_ssize_t end


cdef struct Span:  # a string inside the entry
    Py_ssize_t start
    Py_ssize_t length


cdef struct Out:
    char* data
    Py_ssize_t length
    Py_ssize_t capacity


cdef struct Identity:  # the event's id and time
    Span stored  # the id as stored, unless derived
    bint derived
    char text[36]  # the derived id (events.ids.derived)
    double at


# Not within this far either way, an entry's time is refused: its milliseconds then fit 63 bits.
cdef double LATEST = 9007199254740992.0  # 2**53
cdef uint64_t WRITERS = (<uint64_t>1) << WRITER_BITS
cdef const char* HEX_DIGITS = b"0123456789abcdef"
cdef char RECEIVED_MARK = 0x52  # "R", events.records.received_entry's first byte
SEQUENCES = 1 << 64


class _Malformed(ValueError):
    pass


cdef int _fail() except -1:
    raise _Malformed()


cdef inline int _need(Reader* r, uint64_t count) except -1:
    """At least `count` bytes are left: compared unsigned, so no length read from the entry can overflow it."""
    if <uint64_t>(r.end - r.pos) < count:
        _fail()
    return 0


cdef inline uint64_t _big_endian(Reader* r, int count) noexcept:
    cdef uint64_t value = 0
    cdef int i
    for i in range(count):
        value = (value << 8) | r.data[r.pos + i]
    r.pos += count
    return value


cdef int _string(Reader* r, Span* out, bint checked=True) except -1:
    """A str; `checked`, its UTF-8 is valid (msgspec refuses an invalid one where a field is a str, not in a key)."""
    cdef unsigned char kind
    cdef uint64_t length
    _need(r, 1)
    kind = r.data[r.pos]
    r.pos += 1
    if 0xa0 <= kind <= 0xbf:
        length = kind & 0x1f
    elif 0xd9 <= kind <= 0xdb:  # str 8, 16, 32
        _need(r, 1 << (kind - 0xd9))
        length = _big_endian(r, 1 << (kind - 0xd9))
    else:
        return _fail()
    _need(r, length)
    out.start = r.pos
    out.length = <Py_ssize_t>length
    r.pos += out.length
    if checked and not _ascii(r.data + out.start, out.length):
        PyUnicode_DecodeUTF8(<const char*>r.data + out.start, out.length, NULL)
    return 0


cdef bint _ascii(const unsigned char* text, Py_ssize_t length) noexcept:
    cdef Py_ssize_t i = 0
    cdef uint64_t word
    while i + 8 <= length:
        memcpy(&word, text + i, 8)
        if word & 0x8080808080808080ULL:
            return False
        i += 8
    while i < length:
        if text[i] >= 0x80:
            return False
        i += 1
    return True


cdef uint64_t _container(Reader* r, bint is_map) except? 0xffffffffffffffff:
    """The number of items of the array (or of pairs of the map) that starts here."""
    cdef unsigned char kind
    _need(r, 1)
    kind = r.data[r.pos]
    r.pos += 1
    if is_map:
        if 0x80 <= kind <= 0x8f:
            return kind & 0x0f
        if kind == 0xde or kind == 0xdf:  # map 16, 32
            _need(r, 2 << (kind - 0xde))
            return _big_endian(r, 2 << (kind - 0xde))
    else:
        if 0x90 <= kind <= 0x9f:
            return kind & 0x0f
        if kind == 0xdc or kind == 0xdd:  # array 16, 32
            _need(r, 2 << (kind - 0xdc))
            return _big_endian(r, 2 << (kind - 0xdc))
    _fail()
    return 0xffffffffffffffff


cdef int _skip(Reader* r) except -1:
    """Past one value of any type, checking only that it is whole: a field the event does not use.

    A loop over the values still to pass, not a recursion: nesting however deep takes no stack (each
    level takes a byte of the entry, so the entry's size bounds the work).
    """
    cdef unsigned char kind
    cdef uint64_t pending = 1, count
    while pending:
        pending -= 1
        _need(r, 1)
        kind = r.data[r.pos]
        if kind <= 0x7f or kind >= 0xe0 or kind == 0xc0 or kind == 0xc2 or kind == 0xc3:
            r.pos += 1
            continue
        if 0x80 <= kind <= 0x8f or kind == 0xde or kind == 0xdf:
            pending += 2 * _container(r, True)
            continue
        if 0x90 <= kind <= 0x9f or kind == 0xdc or kind == 0xdd:
            pending += _container(r, False)
            continue
        r.pos += 1
        if 0xa0 <= kind <= 0xbf:
            count = kind & 0x1f
        elif kind == 0xc4 or kind == 0xd9:  # bin 8, str 8
            _need(r, 1)
            count = _big_endian(r, 1)
        elif kind == 0xc5 or kind == 0xda:
            _need(r, 2)
            count = _big_endian(r, 2)
        elif kind == 0xc6 or kind == 0xdb:
            _need(r, 4)
            count = _big_endian(r, 4)
        elif 0xc7 <= kind <= 0xc9:  # ext 8, 16, 32: a length, a type byte, the data
            _need(r, 1 << (kind - 0xc7))
            count = _big_endian(r, 1 << (kind - 0xc7)) + 1
        elif kind == 0xca or kind == 0xce or kind == 0xd2:
            count = 4
        elif kind == 0xcb or kind == 0xcf or kind == 0xd3:
            count = 8
        elif kind == 0xcc or kind == 0xd0:
            count = 1
        elif kind == 0xcd or kind == 0xd1:
            count = 2
        elif 0xd4 <= kind <= 0xd8:  # fixext 1, 2, 4, 8, 16: a type byte, the data
            count = 1 + (1 << (kind - 0xd4))
        else:  # 0xc1: never used
            return _fail()
        _need(r, count)
        r.pos += <Py_ssize_t>count
    return 0


cdef int _integer(Reader* r, uint64_t* magnitude, bint* negative) except -1:
    """An integer, as its magnitude and sign: msgspec takes any MessagePack integer for an int, and nothing else."""
    cdef unsigned char kind
    cdef uint64_t bits
    cdef int64_t value
    _need(r, 1)
    kind = r.data[r.pos]
    r.pos += 1
    if kind <= 0x7f or 0xcc <= kind <= 0xcf:  # positive fixint, uint 8, 16, 32, 64
        if kind > 0x7f:
            _need(r, 1 << (kind - 0xcc))
        magnitude[0] = kind if kind <= 0x7f else _big_endian(r, 1 << (kind - 0xcc))
        negative[0] = False
        return 0
    if kind >= 0xe0:  # negative fixint
        value = <signed char>kind
    elif 0xd0 <= kind <= 0xd3:  # int 8, 16, 32, 64
        _need(r, 1 << (kind - 0xd0))
        bits = _big_endian(r, 1 << (kind - 0xd0))
        if kind == 0xd0:
            value = <signed char>bits
        elif kind == 0xd1:
            value = <short>bits
        elif kind == 0xd2:
            value = <int>bits
        else:
            value = <int64_t>bits
    else:
        return _fail()
    negative[0] = value < 0
    magnitude[0] = (<uint64_t>0 - <uint64_t>value) if value < 0 else <uint64_t>value
    return 0


cdef double _float(Reader* r) except? -1.0:
    """A float; msgspec takes an integer for a float too."""
    cdef unsigned char kind
    cdef uint64_t bits, magnitude
    cdef unsigned int bits32
    cdef double value
    cdef float value32
    cdef bint negative
    _need(r, 1)
    kind = r.data[r.pos]
    if kind == 0xcb:
        r.pos += 1
        _need(r, 8)
        bits = _big_endian(r, 8)
        memcpy(&value, &bits, 8)
        return value
    if kind == 0xca:
        r.pos += 1
        _need(r, 4)
        bits32 = <unsigned int>_big_endian(r, 4)
        memcpy(&value32, &bits32, 4)
        return value32
    _integer(r, &magnitude, &negative)
    return -<double>magnitude if negative else <double>magnitude


cdef int _grow(Out* out, Py_ssize_t count) except -1:
    cdef Py_ssize_t capacity = max(out.length + count, 2 * out.capacity)
    cdef char* grown = <char*>PyMem_Realloc(out.data, <size_t>capacity)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    out.capacity = capacity
    return 0


cdef inline int _append(Out* out, const char* src, Py_ssize_t count) except -1:
    if out.length + count > out.capacity:
        _grow(out, count)
    memcpy(out.data + out.length, src, <size_t>count)
    out.length += count
    return 0


cdef inline bint _plain(uint64_t word) noexcept:
    """None of the 8 bytes needs an escape: none is below 0x20, a quote or a backslash. (x - n per byte) & ~x
    has a byte's high bit set for some byte exactly when some byte of x is below n (n at most 0x80)."""
    cdef uint64_t ones = 0x0101010101010101ULL
    cdef uint64_t quotes = word ^ (ones * 0x22), backslashes = word ^ (ones * 0x5c)
    return ((word - ones * 0x20) & ~word | (quotes - ones) & ~quotes | (backslashes - ones) & ~backslashes) & (ones * 0x80) == 0


cdef int _json_string(Out* out, const unsigned char* src, Py_ssize_t length) except -1:
    """A JSON string, escaped as msgspec escapes: the quote, the backslash and control characters."""
    cdef Py_ssize_t run = 0, i = 0
    cdef unsigned char c
    cdef uint64_t word
    cdef char escape[8]
    _append(out, b'"', 1)
    while i < length:
        if i + 8 <= length:  # most text needs no escape: passed over 8 bytes at a time
            memcpy(&word, src + i, 8)
            if _plain(word):
                i += 8
                continue
        c = src[i]
        if NEEDS_ESCAPE[c]:
            _append(out, <const char*>src + run, i - run)
            run = i + 1
            if ESCAPE_LETTER[c]:
                escape[0] = 0x5c
                escape[1] = ESCAPE_LETTER[c]
                _append(out, escape, 2)
            else:
                snprintf(escape, sizeof(escape), "\\u%04x", c)
                _append(out, escape, 6)
        i += 1
    _append(out, <const char*>src + run, length - run)
    _append(out, b'"', 1)
    return 0


cdef int _decimal(Out* out, uint64_t magnitude, bint negative) except -1:
    """An integer in decimal, as msgspec (and Python) write it."""
    cdef char digits[21]
    cdef int start = 21
    while True:
        start -= 1
        digits[start] = 0x30 + <char>(magnitude % 10)
        magnitude //= 10
        if magnitude == 0:
            break
    if negative:
        _append(out, b"-", 1)
    return _append(out, digits + start, 21 - start)


cdef inline int _span_string(Out* out, Reader* r, Span* span) except -1:
    return _json_string(out, r.data + span.start, span.length)


cdef int _key_index(Reader* r, Span* key) noexcept:
    if key.length >= LONGEST_KEY:
        return -1
    cdef int index = FIRST_OF_LENGTH[key.length]
    while index >= 0 and memcmp(RECORD_KEYS[index], r.data + key.start, <size_t>key.length) != 0:
        index = NEXT_OF_LENGTH[index]
    return index


cdef bint _key_is(Reader* r, Span* key, const char* name, Py_ssize_t length) noexcept:
    return key.length == length and memcmp(name, r.data + key.start, <size_t>length) == 0


cdef int _recipients(Reader* r, Out* out) except -1:
    """The recipients' array, as the list of their addresses; with out NULL, only checked and passed over."""
    cdef uint64_t count = _container(r, False), fields, i, j
    cdef Span key, address
    cdef bint found
    if out != NULL:
        _append(out, b"[", 1)
    for i in range(count):
        fields = _container(r, True)
        found = False
        for j in range(fields):
            _string(r, &key, False)
            if _key_is(r, &key, b"address", 7):
                _string(r, &address, out == NULL)  # checked on the first pass
                found = True
            else:
                _skip(r)
        if not found:
            return _fail()
        if out != NULL:
            if i:
                _append(out, b",", 1)
            _span_string(out, r, &address)
    if out != NULL:
        _append(out, b"]", 1)
    return 0


cdef int _identity(Reader* r, Identity* identity, uint64_t sequence) except -1:
    """The entry's first two fields: the stored id or the writer's number it is derived from, and the time."""
    cdef uint64_t writer, millis
    cdef bint negative
    cdef unsigned char kind
    _need(r, 1)
    kind = r.data[r.pos]
    identity.derived = not (0xa0 <= kind <= 0xbf or 0xd9 <= kind <= 0xdb)
    if identity.derived:
        _integer(r, &writer, &negative)
        if negative or writer >= WRITERS:
            return _fail()
    else:
        _string(r, &identity.stored)
    identity.at = _float(r)
    if not -LATEST < identity.at < LATEST:
        return _fail()
    if identity.derived:
        # As ids.uuid7 writes them: the text's groups are the milliseconds (32 and 16 bits), the version
        # and the writer's top 12 bits, the variant and its next 14, then its last 16 and the sequence's low 32.
        millis = <uint64_t>(<int64_t>(identity.at * 1000.0)) & 0xFFFFFFFFFFFFULL
        _hex(identity.text, millis >> 16, 8)
        _hex(identity.text + 9, millis & 0xFFFFULL, 4)
        _hex(identity.text + 14, 0x7000ULL | writer >> 30, 4)
        _hex(identity.text + 19, 0x8000ULL | (writer >> 16) & 0x3FFFULL, 4)
        _hex(identity.text + 24, (writer & 0xFFFFULL) << 32 | sequence & 0xFFFFFFFFULL, 12)
        identity.text[8] = identity.text[13] = identity.text[18] = identity.text[23] = 0x2d  # "-"
    return 0


cdef inline void _hex(char* into, uint64_t value, int digits) noexcept:
    """value's last `digits` hex digits, lower case and zero-padded, as Python's format() writes them."""
    cdef int i
    for i in range(digits - 1, -1, -1):
        into[i] = HEX_DIGITS[value & 0xF]
        value >>= 4


cdef inline int _identity_string(Out* out, Reader* r, Identity* identity) except -1:
    if identity.derived:
        return _json_string(out, <const unsigned char*>identity.text, 36)
    return _span_string(out, r, &identity.stored)


cdef str _identifier(Reader* r, Identity* identity):
    if identity.derived:
        return PyUnicode_DecodeUTF8(identity.text, 36, NULL)
    return PyUnicode_DecodeUTF8(<const char*>r.data + identity.stored.start, identity.stored.length, NULL)


cdef uint64_t _head(Reader* r, Identity* identity, uint64_t sequence) except? 0xffffffffffffffff:
    """The entry's id and time into identity; returns the number of its fields."""
    cdef uint64_t count = _container(r, False)
    if count < 4:
        _fail()
    _identity(r, identity, sequence)
    return count


cdef int _event(Reader* r, Out* out, Identity* identity, uint64_t count) except -1:
    """The event's JSON into out, from the rest of the entry (after _head)."""
    cdef Span node, key
    cdef Span strings[STRINGS]
    cdef bint present[STRINGS]
    cdef uint64_t fields, i
    cdef Py_ssize_t recipients_at = -1
    cdef uint64_t size = 0
    cdef bint sized = False, size_negative = False
    cdef int index
    cdef Reader again
    _string(r, &node)
    for i in range(STRINGS):
        present[i] = False
    fields = _container(r, True)
    for i in range(fields):
        _string(r, &key, False)
        index = _key_index(r, &key)
        if index >= 0:
            _string(r, &strings[index])
            present[index] = True
        elif _key_is(r, &key, b"recipients", 10):
            recipients_at = r.pos  # a key given twice: the last one counts, as in msgspec
            _recipients(r, NULL)
        elif _key_is(r, &key, b"size", 4):
            _integer(r, &size, &size_negative)
            sized = True
        else:
            _skip(r)
    if not (present[ID] and present[SENDER] and recipients_at >= 0 and sized):
        return _fail()
    for i in range(4, count):
        _skip(r)
    if r.pos != r.end:
        return _fail()
    _append(out, b'{"type":"received","sender":', 28)
    _span_string(out, r, &strings[SENDER])
    _append(out, b',"recipients":', 14)
    again = r[0]
    again.pos = recipients_at
    _recipients(&again, out)
    _append(out, b',"size":', 8)
    _decimal(out, size, size_negative)
    for index in range(FIRST_PLAIN, STRINGS):
        if present[index]:
            _append(out, EVENT_KEYS[index], EVENT_KEY_LENGTHS[index])
            _span_string(out, r, &strings[index])
        else:
            _append(out, ABSENT_FIELDS[index], ABSENT_FIELD_LENGTHS[index])
    _append(out, b',"id":', 6)
    _identity_string(out, r, identity)
    _append(out, b',"at":', 6)
    formatted = _float_json(identity.at)
    _append(out, PyBytes_AS_STRING(formatted), PyBytes_GET_SIZE(formatted))
    _append(out, b',"node":', 8)
    _span_string(out, r, &node)
    _append(out, b',"message_id":', 14)
    _span_string(out, r, &strings[ID])
    _append(out, b',"recipient":""}', 16)
    return 0


cdef void _read(Reader* r, bytes entry) noexcept:
    """The reader at the entry's MessagePack, past its mark byte."""
    r.data = <const unsigned char*>PyBytes_AS_STRING(entry)
    r.pos = 1 if PyBytes_GET_SIZE(entry) else 0
    r.end = PyBytes_GET_SIZE(entry)


cdef int _open(Out* out, Py_ssize_t capacity) except -1:
    out.length = 0
    out.capacity = capacity
    out.data = <char*>PyMem_Malloc(<size_t>capacity)
    if out.data == NULL:
        raise MemoryError()
    return 0


cdef int _start(Reader* r, Out* out, bytes entry) except -1:
    _read(r, entry)
    # The JSON is about as long as the entry: its keys are longer, the record's fields it leaves out make up for that.
    return _open(out, 2 * r.end + 512)


cdef int _payload(Reader* r, Out* out, Identity* identity, uint64_t sequence, const char* name, Py_ssize_t name_length) except -1:
    """What a webhook's receiver is sent for the entry (events.webhooks.Payload) into out, `name` being its event name there."""
    cdef uint64_t count = _head(r, identity, sequence)
    cdef int64_t timestamp
    _append(out, b'{"id":', 6)
    _identity_string(out, r, identity)
    _append(out, b',"event":', 9)
    _json_string(out, <const unsigned char*>name, name_length)
    _append(out, b',"timestamp":', 13)
    timestamp = <int64_t>identity.at  # toward zero, as int() does; _head refused what does not fit
    _decimal(out, <uint64_t>(-timestamp if timestamp < 0 else timestamp), timestamp < 0)
    _append(out, b',"data":', 8)
    _event(r, out, identity, count)
    return _append(out, b"}", 1)


cdef const char* _name_text(object name, Py_ssize_t* length) except NULL:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    return PyUnicode_AsUTF8AndSize(name, length)


cdef uint64_t _sequence(object sequence) except? 0xffffffffffffffff:
    """An outbox sequence number, checked as the twin checks it."""
    number = PyNumber_Index(sequence)
    if not 0 <= number < SEQUENCES:
        raise OverflowError(SEQUENCE_RANGE)
    return number


cdef int _check_entry(object entry) except -1:
    if not isinstance(entry, bytes):
        raise TypeError(f"entry must be bytes, not {type(entry).__name__}")
    return 0


def received_json(entry, sequence):
    """The event's id, time and JSON, from the outbox entry numbered `sequence` written by events.records.received_entry."""
    cdef Reader reader
    cdef Out out
    cdef Identity identity
    _check_entry(entry)
    cdef uint64_t number = _sequence(sequence)
    _start(&reader, &out, entry)
    try:
        _event(&reader, &out, &identity, _head(&reader, &identity, number))
        return _identifier(&reader, &identity), identity.at, PyBytes_FromStringAndSize(out.data, out.length)
    except ValueError:  # malformed, or a string that is not UTF-8
        raise ValueError(UNDECODABLE) from None
    finally:
        PyMem_Free(out.data)


def received_payload(entry, sequence, name):
    """The event's id and what a webhook's receiver is sent for it (events.webhooks.Payload, as JSON)."""
    cdef Reader reader
    cdef Out out
    cdef Identity identity
    cdef Py_ssize_t name_length
    _check_entry(entry)
    cdef uint64_t number = _sequence(sequence)
    cdef const char* name_text = _name_text(name, &name_length)
    _start(&reader, &out, entry)
    try:
        _payload(&reader, &out, &identity, number, name_text, name_length)
        return _identifier(&reader, &identity), PyBytes_FromStringAndSize(out.data, out.length)
    except ValueError:  # malformed, or a string that is not UTF-8
        raise ValueError(UNDECODABLE) from None
    finally:
        PyMem_Free(out.data)


def received_payloads(entries, start, most, name):
    """The payloads of the stored received events from entries[start] on, comma-separated, in one buffer."""
    cdef Reader reader
    cdef Out out
    cdef Identity identity
    cdef Py_ssize_t name_length, mark
    cdef const char* name_text = _name_text(name, &name_length)
    first, limit = PyNumber_Index(start), PyNumber_Index(most)
    if first < 0:
        raise ValueError(NEGATIVE_START)
    cdef Py_ssize_t count = len(entries)
    cdef Py_ssize_t index = min(first, count)
    cdef Py_ssize_t wanted = max(0, min(limit, count - index))
    cdef Py_ssize_t passed = 0, made = 0
    _open(&out, 4096)
    try:
        while made < wanted and index < count:
            entry = entries[index]
            raw = entry.raw
            if not isinstance(raw, bytes) or PyBytes_GET_SIZE(raw) == 0 or PyBytes_AS_STRING(raw)[0] != RECEIVED_MARK:
                break
            number = _sequence(entry.sequence)
            mark = out.length
            if made:
                _append(&out, b",", 1)
            _read(&reader, raw)
            try:
                _payload(&reader, &out, &identity, number, name_text, name_length)
                made += 1
            except ValueError:  # not decodable: passed over, as received_payload's refusal is
                out.length = mark
            index += 1
            passed += 1
        return PyBytes_FromStringAndSize(out.data, out.length), passed, made
    finally:
        PyMem_Free(out.data)
