"""The compiled hot-path modules and their pure-Python twins agree byte for byte on generated input."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import pytest
from hypothesis import given, strategies as st

from fastmta._ext import COMPILED, data_ref, headers_ref, lines_ref, received_ref
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


# --- received_json -------------------------------------------------------------------------------------------


@thorough
@given(received_entries)
def test_received_json_agree(entry: bytes) -> None:
    # repr: a time that is NaN equals itself there.
    assert repr(outcome(received.received_json, entry)) == repr(outcome(received_ref.received_json, entry))
