"""The compiled hot-path modules and their pure-Python twins agree byte for byte on generated input."""

from __future__ import annotations

import importlib
import struct
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, strategies as st

from fastmta._ext import COMPILED, data_ref, headers_ref, lines_ref, received_ref
from fastmta.events.records import Entry
from tests.ext.implementations import NOT_COMPILED, Buffer, ScannerClass, SplitLines
from tests.ext.strategies import (
    Read,
    body_limits,
    buffer_kinds,
    command_buffers,
    command_chunks,
    data_reads,
    header_blocks,
    line_limits,
    received_entries,
    sequences,
    thorough,
)

if not COMPILED:
    pytest.skip(NOT_COMPILED, allow_module_level=True)

lines = importlib.import_module("fastmta._ext.lines")
data = importlib.import_module("fastmta._ext.data")
headers = importlib.import_module("fastmta._ext.headers")
received = importlib.import_module("fastmta._ext.received")


def exact(value: object) -> object:
    """value with every item's type made part of it: b"a" == bytearray(b"a"), and dict equality ignores order."""
    if isinstance(value, list | tuple):
        return type(value).__name__, [exact(item) for item in value]
    if isinstance(value, dict):
        return "dict", [(exact(key), exact(item)) for key, item in value.items()]
    return type(value).__name__, value


def outcome(function: Callable[..., object], *args: object) -> object:
    """What a call gives, its result or its error, in a form the twins can be compared on."""
    try:
        return exact(function(*args))
    except BufferError:
        # Only the type: the compiled module's message is CPython's own.
        return BufferError
    except (ValueError, RuntimeError) as error:
        return type(error), str(error)


# --- split_lines ---------------------------------------------------------------------------------------------


@thorough
@given(command_buffers, st.integers(-2, 60), st.integers(-1, 50), buffer_kinds)
def test_split_lines_agree(raw: bytes, start: int, max_line: int, kind: Callable[[bytes], Buffer]) -> None:
    buf = kind(raw)
    assert outcome(lines.split_lines, buf, start, max_line) == outcome(lines_ref.split_lines, buf, start, max_line)


@thorough
@given(command_buffers, line_limits)
def test_split_lines_agree_wherever_the_buffer_starts_or_ends(stream: bytes, max_line: int) -> None:
    for cut in range(len(stream) + 1):
        for buf, start in ((stream[:cut], 0), (stream, cut)):
            assert outcome(lines.split_lines, buf, start, max_line) == outcome(lines_ref.split_lines, buf, start, max_line)


def consume_commands(split_lines: SplitLines, chunks: list[bytes], max_line: int) -> list[object]:
    """Every batch split_lines returns as reads arrive in a growing buffer, consumed up to the last end, as the session does."""
    buf = bytearray()
    pos = 0
    batches = []
    for chunk in chunks:
        buf += chunk
        found, ends = split_lines(buf, pos, max_line)
        batches.append(exact((found, ends)))
        if ends:
            pos = ends[-1]
    return batches


@thorough
@given(command_chunks, line_limits)
def test_split_lines_agree_on_a_buffer_growing_read_by_read(chunks: list[bytes], max_line: int) -> None:
    assert consume_commands(lines.split_lines, chunks, max_line) == consume_commands(lines_ref.split_lines, chunks, max_line)


# --- DataScanner ---------------------------------------------------------------------------------------------


def scan(scanner_class: ScannerClass, reads: list[Read], limit: int) -> tuple[list[object], bytes]:
    """Everything observable after each feed(), and the bytes left over after the end of data."""
    scanner = scanner_class(limit)
    observed: list[object] = []
    leftover = b""
    for read in reads:
        if scanner.done:
            leftover += read.new
            continue
        end = scanner.feed(read.buffer(), len(read.consumed))
        observed.append(exact((end, scanner.done, scanner.size, scanner.overflow, scanner.bare_eol, scanner.body)))
        if end >= 0:
            leftover = read.new[end - len(read.consumed) :]
    # Once more: the compiled scanner hands out a cached body after the end, and then refuses to go on.
    observed.append(exact(scanner.body))
    observed.append(outcome(scanner.feed, b""))
    return observed, leftover


@thorough
@given(data_reads, body_limits)
def test_data_scanners_agree_however_the_stream_is_read(reads: list[Read], limit: int) -> None:
    assert scan(data.DataScanner, reads, limit) == scan(data_ref.DataScanner, reads, limit)


@thorough
@given(st.integers(-2, 2), st.integers(-2, 6))
def test_data_scanners_refuse_the_same_arguments(limit: int, start: int) -> None:
    def make_and_feed(scanner_class: ScannerClass) -> object:
        return scanner_class(limit).feed(b"abc", start)

    assert outcome(make_and_feed, data.DataScanner) == outcome(make_and_feed, data_ref.DataScanner)


# --- parse_headers -------------------------------------------------------------------------------------------


@thorough
@given(header_blocks, buffer_kinds)
def test_parse_headers_agree(raw: bytes, kind: Callable[[bytes], Buffer]) -> None:
    block = kind(raw)
    assert outcome(headers.parse_headers, block) == outcome(headers_ref.parse_headers, block)


@thorough
@given(header_blocks)
def test_parse_headers_agree_wherever_the_buffer_ends(block: bytes) -> None:
    for cut in range(len(block) + 1):
        assert outcome(headers.parse_headers, block[:cut]) == outcome(headers_ref.parse_headers, block[:cut])


# --- received_json, received_payload ------------------------------------------------------------------------


@thorough
@given(received_entries, sequences)
def test_received_json_agree(entry: bytes, sequence: int) -> None:
    # repr: a time of -0.0 differs from 0.0 there.
    assert repr(outcome(received.received_json, entry, sequence)) == repr(outcome(received_ref.received_json, entry, sequence))


@thorough
@given(received_entries, sequences, st.sampled_from(["message.received", "", 'a"\\\u00e9\n']))
def test_received_payload_agree(entry: bytes, sequence: int, name: str) -> None:
    compiled, twin = received.received_payload, received_ref.received_payload
    assert outcome(compiled, entry, sequence, name) == outcome(twin, entry, sequence, name)


@thorough
@given(st.lists(st.tuples(received_entries, sequences), max_size=6), st.integers(0, 7), st.integers(-1, 8))
def test_received_payloads_agree(entries: list[tuple[bytes, int]], start: int, most: int) -> None:
    batch = [Entry(sequence, entry) for entry, sequence in entries]
    compiled, twin = received.received_payloads, received_ref.received_payloads
    assert outcome(compiled, batch, start, most, "e") == outcome(twin, batch, start, most, "e")


def _stored(record: bytes, at: bytes = b"\xcb" + struct.pack(">d", 1.5), tail: bytes = b"") -> bytes:
    """An outbox entry of a received event around a record given as MessagePack bytes."""
    return b"R\x94" + msgspec.msgpack.encode("E1") + at + msgspec.msgpack.encode("n1") + record + tail


def _record(*pairs: bytes, without: str = "") -> bytes:
    """A record map of the required fields (less `without`) and the given extra key and value bytes."""
    fields = {"id": "M1", "sender": "a@b", "recipients": [{"address": "x@y"}], "size": 10}
    encoded = [msgspec.msgpack.encode(k) + msgspec.msgpack.encode(v) for k, v in fields.items() if k != without]
    encoded += pairs
    return bytes([0x80 | len(encoded)]) + b"".join(encoded)


_KEY = msgspec.msgpack.encode
# Inputs random generation rarely makes: keys given twice, keys that are not str, strings that are not
# UTF-8 where the event uses them and where it does not, every width of integer and length, ext values,
# other types where a str, int or float belongs, deep nesting where the event does not look.
EDGE_ENTRIES = [
    _stored(_record(_KEY("id") + _KEY("M2"))),
    _stored(_record(_KEY("size") + _KEY(2**64 - 1))),
    _stored(_record(_KEY("size") + _KEY(-(2**63)))),
    _stored(_record(_KEY("size") + _KEY(1.0))),
    _stored(_record(_KEY("size") + _KEY(True))),
    _stored(_record(b"\xc4\x02id" + _KEY("M2"))),
    _stored(_record(_KEY(5) + _KEY("M2"))),
    _stored(_record(b"\xa2\xff\xfe" + _KEY("M2"))),
    _stored(_record(_KEY("zz") + b"\xa2\xff\xfe")),
    _stored(_record(_KEY("helo") + b"\xa2\xff\xfe")),
    _stored(_record(_KEY("helo") + b"\xa3\xed\xa0\x80")),
    _stored(_record(_KEY("helo") + b"\xc4\x01a")),
    _stored(_record(_KEY("helo") + b"\xc0")),
    _stored(_record(_KEY("helo") + b"\xdb\x00\x00\x00\x01a")),
    _stored(_record(_KEY("helo") + b"\xdb\xff\xff\xff\xff")),
    _stored(_record(_KEY("zz") + b"\xdf\xff\xff\xff\xff")),
    _stored(_record(_KEY("zz") + b"\xd6\xff\x00\x00\x00\x01")),
    _stored(_record(_KEY("zz") + b"\xc7\x03\xff\x00\x00\x00")),
    _stored(_record(_KEY("zz") + b"\xc1")),
    _stored(_record(_KEY("zz") + b"\x91" * 300 + b"\x00")),
    _stored(_record(_KEY("recipients") + b"\x91\x82\xa7address\xa1x\xa7address\xa1y", without="recipients")),
    _stored(_record(_KEY("recipients") + _KEY([["x"]]), without="recipients")),
    _stored(_record(_KEY("recipients") + _KEY([{"address": "q"}, {"address": "r"}]))),
    _stored(_record(without="size")),
    _stored(_KEY(["M1", "a@b", [{"address": "x"}], 10])),
    _stored(_record(), at=b"\xca" + struct.pack(">f", 1.1)),
    _stored(_record(), at=_KEY(2**64 - 1)),
    _stored(_record(), at=_KEY(-(2**63) + 1)),
    _stored(_record(), at=_KEY("1")),
    _stored(_record(), tail=b"\x00"),
    b"R\xdd\x00\x00\x00\x05" + _KEY("E1") + _KEY(1.0) + _KEY("n") + _record() + b"\xc0",
    b"R" + _KEY({"id": "E1"}),
    b"R",
    b"",
    # The id derived from the writer's number: every width of it, the largest, one past it, other types.
    *(b"R\x94" + _KEY(writer) + _KEY(1.5) + _KEY("n1") + _record() for writer in (0, 1, 2**7, 2**15, 2**31, 2**42 - 1)),
    *(b"R\x94" + _KEY(writer) + _KEY(1.5) + _KEY("n1") + _record() for writer in (2**42, 2**64 - 1, -1, True, 1.0, None)),
    # Times at and past the largest, NaN, infinite, negative (derived ids keep the milliseconds' last 48 bits).
    *(_stored(_record(), at=_KEY(at)) for at in (2.0**53, 2.0**53 - 1, -(2.0**53), -(2.0**53) + 1, float("nan"))),
    *(_stored(_record(), at=_KEY(at)) for at in (float("inf"), -float("inf"), -0.0, 2**53 - 1, 2**53)),
    *(b"R\x94" + _KEY(7) + _KEY(at) + _KEY("n1") + _record() for at in (-1.5, -0.0001, 2.0**53 - 1, 1e15 + 0.9)),
]


@pytest.mark.parametrize("entry", EDGE_ENTRIES)
@pytest.mark.parametrize("sequence", [0, 1, 2**32 - 1, 2**32, 2**64 - 1])
def test_received_json_and_payload_agree_on_edge_entries(entry: bytes, sequence: int) -> None:
    compiled, twin = outcome(received.received_json, entry, sequence), outcome(received_ref.received_json, entry, sequence)
    assert repr(compiled) == repr(twin)
    named = "message.received"
    assert outcome(received.received_payload, entry, sequence, named) == outcome(received_ref.received_payload, entry, sequence, named)


def raised(function: Callable[..., object], *args: object) -> object:
    """The result of a call, or the type and message of whatever it raised."""
    try:
        return exact(function(*args))
    except Exception as error:  # noqa: BLE001 (the point is to compare any of them)
        return type(error), str(error)


class _Name(str):
    pass


# Arguments that are not an entry and a sequence number (and a name), each with a valid or a damaged entry.
_BAD_CALLS = [
    (entry, *others)
    for entry in (EDGE_ENTRIES[0], b"R")
    for others in ((1.0,), (None,), (-1,), (2**64,), (2**64 - 1,), (True,))
] + [(None, 1), (bytearray(EDGE_ENTRIES[0]), 1), (memoryview(EDGE_ENTRIES[0]), 1), (None, -1)]


@pytest.mark.parametrize("arguments", _BAD_CALLS)
def test_received_json_refuses_the_same_arguments(arguments: tuple[object, ...]) -> None:
    assert raised(received.received_json, *arguments) == raised(received_ref.received_json, *arguments)


@pytest.mark.parametrize("name", ["message.received", _Name("message.received"), None, 5, "\ud800"])
@pytest.mark.parametrize("arguments", [*_BAD_CALLS, (EDGE_ENTRIES[0], 1), (b"R", 1)])
def test_received_payload_refuses_the_same_arguments(arguments: tuple[object, ...], name: object) -> None:
    assert raised(received.received_payload, *arguments, name) == raised(received_ref.received_payload, *arguments, name)


@pytest.mark.parametrize("name", ["e", _Name("e"), None, "\ud800"])
@pytest.mark.parametrize("sequence", [1, -1, 2**64, 1.0, None, True])
@pytest.mark.parametrize("bounds", [(0, 5), (-1, 5), (2**70, 5), (0, -(2**70)), (0, 2**70), (1.0, 5), (0, None)])
def test_received_payloads_refuse_the_same_arguments(bounds: tuple[object, object], sequence: object, name: object) -> None:
    batch = [Entry(1, EDGE_ENTRIES[0]), Entry(sequence, EDGE_ENTRIES[0])]  # type: ignore[arg-type]
    compiled, twin = received.received_payloads, received_ref.received_payloads
    assert raised(compiled, batch, *bounds, name) == raised(twin, batch, *bounds, name)
