"""Known answers for the hot path, checked on each implementation, so the twins cannot agree on a wrong result."""

from __future__ import annotations

import uuid

import msgspec
import pytest
from hypothesis import given, strategies as st

from fastmta.events import ids
from fastmta.events.records import EVENT_ENCODER, Entry, received, received_entry
from fastmta.events.webhooks import Payload
from fastmta.queue.records import MESSAGE_ENCODER, Message, Recipient

from tests.ext.implementations import (
    ParseHeaders,
    ReceivedJson,
    ReceivedPayload,
    ReceivedPayloads,
    ScannerClass,
    SplitLines,
    both,
)
from tests.ext.strategies import Read, data_reads, sequences, texts, thorough

with_split_lines = pytest.mark.parametrize("split_lines", both("lines", "split_lines"))
with_scanner = pytest.mark.parametrize("scanner_class", both("data", "DataScanner"))
with_parse_headers = pytest.mark.parametrize("parse_headers", both("headers", "parse_headers"))
with_received_json = pytest.mark.parametrize("received_json", both("received", "received_json"))
with_received_payload = pytest.mark.parametrize("received_payload", both("received", "received_payload"))
with_received_payloads = pytest.mark.parametrize("received_payloads", both("received", "received_payloads"))

NOT_CONTIGUOUS = memoryview(b"EHLO x\r\n" * 2)[::2]


def scan_whole(scanner_class: ScannerClass, stream: bytes, limit: int = 1 << 20) -> tuple[bytes, int, bool]:
    scanner = scanner_class(limit)
    end = scanner.feed(stream)
    return scanner.body, end, scanner.bare_eol


# --- split_lines ---------------------------------------------------------------------------------------------


@with_split_lines
def test_pipelined_commands_split_and_the_partial_tail_waits(split_lines: SplitLines) -> None:
    assert split_lines(b"EHLO a\r\nMAIL FROM:<x>\r\nRCPT", 0, 512) == ([b"EHLO a", b"MAIL FROM:<x>"], [8, 23])


@with_split_lines
def test_a_bare_lf_ends_a_command_and_only_the_cr_right_before_it_is_dropped(split_lines: SplitLines) -> None:
    assert split_lines(b"NOOP\nA\rB\r\n\r\r\n", 0, 512) == ([b"NOOP", b"A\rB", b"\r"], [5, 10, 13])


@with_split_lines
def test_splitting_starts_at_the_offset(split_lines: SplitLines) -> None:
    assert split_lines(b"EHLO a\r\nNOOP\r\n", 8, 512) == ([b"NOOP"], [14])
    assert split_lines(b"EHLO a\r\n", 8, 512) == ([], [])


@with_split_lines
def test_line_length_limit_counts_the_content_without_its_line_break(split_lines: SplitLines) -> None:
    assert split_lines(b"abcd\r\nabcde\r\n", 0, 4) == ([b"abcd", None], [6, 13])


@with_split_lines
def test_a_tail_ending_in_cr_is_judged_without_it_as_the_whole_line_would_be(split_lines: SplitLines) -> None:
    # The CR may begin the CRLF still to come: the line "abcd" is within 4, however the stream was split.
    assert split_lines(b"abcd\r", 0, 4) == ([], [])
    assert split_lines(b"abcd\r\n", 0, 4) == ([b"abcd"], [6])
    assert split_lines(b"abcde\r", 0, 4) == ([None], [6])


@with_split_lines
def test_an_unterminated_tail_is_refused_only_once_it_is_over_the_limit(split_lines: SplitLines) -> None:
    assert split_lines(b"NOOP\r\nabcd", 0, 4) == ([b"NOOP"], [6])
    assert split_lines(b"NOOP\r\nabcde", 0, 4) == ([b"NOOP", None], [6, 11])


@with_split_lines
def test_split_lines_refuses_bad_arguments(split_lines: SplitLines) -> None:
    with pytest.raises(ValueError, match="outside the buffer"):
        split_lines(b"NOOP\r\n", 7, 512)
    with pytest.raises(ValueError, match="outside the buffer"):
        split_lines(b"NOOP\r\n", -1, 512)
    with pytest.raises(ValueError, match="max_line"):
        split_lines(b"NOOP\r\n", 0, -1)
    with pytest.raises(BufferError):
        split_lines(NOT_CONTIGUOUS, 0, 512)


# --- DataScanner ---------------------------------------------------------------------------------------------


@with_scanner
def test_dot_stuffing_is_removed(scanner_class: ScannerClass) -> None:
    stream = b"a\r\n..b\r\n.\r\n"
    assert scan_whole(scanner_class, stream) == (b"a\r\n.b\r\n", len(stream), False)


@with_scanner
def test_a_lone_dot_line_at_the_very_start_is_an_empty_message(scanner_class: ScannerClass) -> None:
    assert scan_whole(scanner_class, b".\r\n") == (b"", 3, False)


@with_scanner
def test_bytes_after_the_terminator_are_not_consumed(scanner_class: ScannerClass) -> None:
    assert scan_whole(scanner_class, b"a\r\n.\r\nQUIT\r\n") == (b"a\r\n", 6, False)


@pytest.mark.parametrize(
    "smuggled",
    [b"a\n.\n", b"a\r\n.\n", b"a\n.\r\n", b"a\r.\r\n", b"a\r\n.\r", b"a\r\n.\rX\r\n"],
    ids=["lf-dot-lf", "crlf-dot-lf", "lf-dot-crlf", "cr-dot-crlf", "crlf-dot-cr", "crlf-dot-cr-x"],
)
@with_scanner
def test_bare_line_endings_never_end_data(scanner_class: ScannerClass, smuggled: bytes) -> None:
    scanner = scanner_class(1 << 20)
    assert scanner.feed(smuggled) == -1
    assert not scanner.done


@with_scanner
def test_bare_lf_is_data_and_is_flagged(scanner_class: ScannerClass) -> None:
    stream = b"a\n.\n\r\n.\r\n"
    assert scan_whole(scanner_class, stream) == (b"a\n.\n\r\n", len(stream), True)


@with_scanner
def test_a_held_back_cr_after_a_line_start_dot_is_kept_when_no_lf_follows(scanner_class: ScannerClass) -> None:
    stream = b"a\r\n.\rX\r\n.\r\n"
    assert scan_whole(scanner_class, stream) == (b"a\r\n\rX\r\n", len(stream), True)


@with_scanner
def test_nul_and_non_ascii_bytes_pass_through(scanner_class: ScannerClass) -> None:
    stream = b"a\x00b\xff\r\n.\r\n"
    assert scan_whole(scanner_class, stream) == (b"a\x00b\xff\r\n", len(stream), False)


@with_scanner
def test_bytes_over_the_limit_are_counted_but_not_kept(scanner_class: ScannerClass) -> None:
    scanner = scanner_class(4)
    assert scanner.feed(b"ab\r\n..cd\r\n.\r\n") == 13
    assert (scanner.body, scanner.size, scanner.overflow, scanner.done) == (b"ab\r\n", 9, True, True)


@with_scanner
def test_a_body_of_exactly_the_limit_does_not_overflow(scanner_class: ScannerClass) -> None:
    scanner = scanner_class(4)
    scanner.feed(b"ab\r\n.\r\n")
    assert (scanner.body, scanner.size, scanner.overflow) == (b"ab\r\n", 4, False)


@with_scanner
def test_the_body_so_far_is_readable_between_feeds(scanner_class: ScannerClass) -> None:
    scanner = scanner_class(1 << 20)
    assert scanner.feed(b"ab\r\n.") == -1
    assert scanner.body == b"ab\r\n"
    assert scanner.feed(b"x\r\n.\r") == -1
    assert scanner.body == b"ab\r\nx\r\n"
    assert scanner.feed(b"\n") == 1
    assert scanner.body == b"ab\r\nx\r\n"


@with_scanner
def test_feeding_starts_at_the_offset(scanner_class: ScannerClass) -> None:
    scanner = scanner_class(1 << 20)
    assert scanner.feed(bytearray(b"DATA\r\nbody\r\n.\r\nQUIT"), 6) == 15
    assert scanner.body == b"body\r\n"


@with_scanner
def test_every_split_of_a_stream_gives_the_same_body_and_leftover(scanner_class: ScannerClass) -> None:
    stream = b"a\r\n..b\r\n.c\r\n.\r\nQUIT\r\n"
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            scanner = scanner_class(1 << 20)
            leftover = b""
            for chunk in (stream[:first], stream[first:second], stream[second:]):
                if scanner.done:
                    leftover += chunk
                elif (end := scanner.feed(chunk)) >= 0:
                    leftover = chunk[end:]
            assert (scanner.body, leftover, scanner.bare_eol) == (b"a\r\n.b\r\nc\r\n", b"QUIT\r\n", False), (first, second)


@thorough
@given(data_reads)
@with_scanner
def test_any_split_of_a_stream_gives_what_one_read_gives(scanner_class: ScannerClass, reads: list[Read]) -> None:
    stream = b"".join(read.new for read in reads)
    whole = scanner_class(1 << 20)
    end = whole.feed(stream)
    pieces = scanner_class(1 << 20)
    leftover = b""
    for read in reads:
        if pieces.done:
            leftover += read.new
        elif (read_end := pieces.feed(read.buffer(), len(read.consumed))) >= 0:
            leftover = read.new[read_end - len(read.consumed) :]
    assert (pieces.body, pieces.size, pieces.bare_eol, pieces.done) == (whole.body, whole.size, whole.bare_eol, whole.done)
    assert leftover == (stream[end:] if end >= 0 else b"")


@with_scanner
def test_a_large_body_is_kept_up_to_the_limit(scanner_class: ScannerClass) -> None:
    line = b"x" * 998 + b"\r\n"
    scanner = scanner_class(50_000)
    for _ in range(100):
        assert scanner.feed(line) == -1
    assert scanner.feed(b".\r\n") == 3
    assert (scanner.body, scanner.size, scanner.overflow) == ((line * 50)[:50_000], 100_000, True)


@with_scanner
def test_scanner_refuses_bad_arguments_and_feeding_past_the_end(scanner_class: ScannerClass) -> None:
    with pytest.raises(ValueError, match="limit"):
        scanner_class(-1)
    scanner = scanner_class(100)
    with pytest.raises(ValueError, match="outside the buffer"):
        scanner.feed(b"abc", 4)
    with pytest.raises(BufferError):
        scanner.feed(NOT_CONTIGUOUS)
    scanner.feed(b".\r\n")
    with pytest.raises(RuntimeError):
        scanner.feed(b"more")


# --- parse_headers -------------------------------------------------------------------------------------------


@with_parse_headers
def test_wanted_fields_are_read_up_to_the_empty_line(parse_headers: ParseHeaders) -> None:
    block = b"Received: by mx\r\nFrom: a@b\r\nTo: c@d\r\nSubject: hi\r\n\r\n"
    assert parse_headers(block + b"To: body@not.header\r\n") == ({"from": "a@b", "to": "c@d", "subject": "hi"}, len(block))


@with_parse_headers
def test_names_match_in_any_case(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b"MESSAGE-id: <x@y>\r\nX-Priority: 1\r\n\r\n")[0] == {"message-id": "<x@y>", "x-priority": "1"}


@with_parse_headers
def test_unfolding_drops_the_line_break_and_keeps_the_leading_blank(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b"Subject: one\r\n two\r\n\tthree \r\n\r\n")[0] == {"subject": "one two\tthree"}


@with_parse_headers
def test_the_first_occurrence_wins_and_a_later_ones_continuation_is_ignored(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b"To: a\r\nTo: b\r\n c\r\n\r\n")[0] == {"to": "a"}


@with_parse_headers
def test_values_are_decoded_as_utf8_with_replacement(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b"Subject: caf\xc3\xa9 \xff\r\n\r\n")[0] == {"subject": "caf\u00e9 \ufffd"}


@with_parse_headers
def test_an_empty_value_is_an_empty_string(parse_headers: ParseHeaders) -> None:
    block = b"To:\r\nFrom: \r\n\r\n"
    assert parse_headers(block) == ({"to": "", "from": ""}, len(block))


@with_parse_headers
def test_bare_lf_line_endings_are_accepted(parse_headers: ParseHeaders) -> None:
    block = b"To: a\nFrom: b\n\n"
    assert parse_headers(block + b"body") == ({"to": "a", "from": "b"}, len(block))


@with_parse_headers
def test_a_block_without_an_empty_line_ends_at_the_buffer_end(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b"To: a\r\nSubject: b") == ({"to": "a", "subject": "b"}, 17)
    assert parse_headers(b"") == ({}, 0)


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"To: a\r\nnot a header\r\nSubject: b\r\n", 7),
        (b"To: a\r\nSubject : b\r\n", 7),
        (b"To: a\r\nSubj\xc3\xa9ct: b\r\n", 7),
        (b"To: a\r\n: b\r\n", 7),
    ],
    ids=["no-colon", "space-before-colon", "non-ascii-name", "empty-name"],
)
@with_parse_headers
def test_the_block_ends_at_the_first_line_that_is_not_a_field(parse_headers: ParseHeaders, data: bytes, end: int) -> None:
    assert parse_headers(data) == ({"to": "a"}, end)


@with_parse_headers
def test_a_continuation_before_any_field_ends_the_block_at_once(parse_headers: ParseHeaders) -> None:
    assert parse_headers(b" folded\r\nTo: a\r\n\r\n") == ({}, 0)


@with_parse_headers
def test_parse_headers_refuses_a_non_contiguous_buffer(parse_headers: ParseHeaders) -> None:
    with pytest.raises(BufferError):
        parse_headers(NOT_CONTIGUOUS)


# --- received_json -------------------------------------------------------------------------------------------

messages = st.builds(
    Message,
    id=texts, sender=texts, recipients=st.lists(st.builds(Recipient, address=texts, attempts=st.integers(0, 9)), max_size=3),
    received_at=st.floats(0, 2e9), size=st.integers(0, 2**40), next_attempt=st.floats(0, 2e9),
    client_ip=texts, helo=texts, listener=st.sampled_from(["smtp", "submission", ""]), auth_user=texts, tls=texts,
    message_id=texts, header_from=texts, header_to=texts, subject=texts, workspace_id=texts, campaign_id=texts,
    user_id=texts, priority=texts, lease_owner=texts,
)  # fmt: skip


writers = st.integers(0, 2**ids.WRITER_BITS - 1)


@with_received_json
@thorough
@given(messages, texts, st.floats(0, 2e9), writers, sequences)
def test_a_stored_received_event_becomes_the_received_events_json(
    received_json: ReceivedJson, message: Message, node: str, now: float, writer: int, sequence: int
) -> None:
    entry = received_entry(MESSAGE_ENCODER.encode(message), node, now, writer)
    event_id, at, made = received_json(entry, sequence)
    assert event_id == ids.derived(now, writer, sequence) and at == now
    assert made == EVENT_ENCODER.encode(received(message, node, now, event_id))


@with_received_payload
@thorough
@given(messages, texts, st.floats(0, 2e9), writers, sequences, st.sampled_from(["message.received", 'a"\\é']))
def test_a_stored_received_event_becomes_a_webhook_payload(
    received_payload: ReceivedPayload, message: Message, node: str, now: float, writer: int, sequence: int, name: str
) -> None:
    entry = received_entry(MESSAGE_ENCODER.encode(message), node, now, writer)
    event_id, made = received_payload(entry, sequence, name)
    event = EVENT_ENCODER.encode(received(message, node, now, event_id))
    assert made == EVENT_ENCODER.encode(Payload(event_id, name, int(now), msgspec.Raw(event)))


def _webhook_payload(message: Message, now: float, writer: int, sequence: int, name: str) -> bytes:
    """What a receiver is sent for a message's received event, made the slow way (events.webhooks.Payload)."""
    event = EVENT_ENCODER.encode(received(message, "n1", now, ids.derived(now, writer, sequence)))
    return EVENT_ENCODER.encode(Payload(ids.derived(now, writer, sequence), name, int(now), msgspec.Raw(event)))


@with_received_payloads
@thorough
@given(st.lists(messages, max_size=6), st.floats(0, 2e9), writers, st.integers(0, 7), st.integers(0, 8))
def test_a_run_of_stored_received_events_becomes_their_payloads(
    received_payloads: ReceivedPayloads, batch: list[Message], now: float, writer: int, start: int, most: int
) -> None:
    entries = [Entry(number, received_entry(MESSAGE_ENCODER.encode(m), "n1", now, writer)) for number, m in enumerate(batch, 1)]
    made, passed, count = received_payloads(entries, start, most, "message.received")
    expected = [_webhook_payload(m, now, writer, number, "message.received") for number, m in enumerate(batch, 1)][start:start + most]
    assert (made, passed, count) == (b",".join(expected), len(expected), len(expected))


@with_received_payloads
def test_a_run_stops_before_another_event_and_passes_over_a_damaged_one(received_payloads: ReceivedPayloads) -> None:
    message = Message(id="q1", sender="a@b", recipients=[Recipient(address="c@d")], received_at=1.0, size=1, next_attempt=1.0)
    stored = received_entry(MESSAGE_ENCODER.encode(message), "n1", 1.5, 3)
    other = EVENT_ENCODER.encode(received(message, "n1", 1.5))  # stored as JSON: not made here
    entries = [Entry(1, stored), Entry(2, b"R\x94damaged"), Entry(3, stored), Entry(4, other), Entry(5, stored)]
    first, third = (_webhook_payload(message, 1.5, 3, number, "e") for number in (1, 3))
    assert received_payloads(entries, 0, 10, "e") == (first + b"," + third, 3, 2)
    assert received_payloads(entries, 1, 1, "e") == (third, 2, 1)  # the damaged one passed, making nothing
    assert received_payloads(entries, 3, 10, "e") == (b"", 0, 0)
    assert received_payloads(entries, 9, 10, "e") == (b"", 0, 0)
    with pytest.raises(ValueError, match="start must not be negative"):
        received_payloads(entries, -1, 10, "e")
    with pytest.raises(TypeError, match="name must be a str"):
        received_payloads(entries, 0, 10, b"e")  # type: ignore[arg-type]


@with_received_json
def test_an_id_stored_by_an_earlier_version_is_kept(received_json: ReceivedJson) -> None:
    record = MESSAGE_ENCODER.encode(Message(id="q1", sender="a@b", recipients=[], received_at=1.0, size=1, next_attempt=1.0))
    entry = b"R" + msgspec.msgpack.encode(["0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b", 1.5, "n1", msgspec.Raw(record)])
    assert received_json(entry, 9)[0] == "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"


def test_derived_ids_are_uuid7_of_the_time_writer_and_sequence() -> None:
    assert ids.derived(1.5, 1, 2) == "00000000-05dc-7000-8000-000100000002"
    made = uuid.UUID(ids.derived(1_700_000_000.123, 2**42 - 1, 2**64 - 1))
    assert (made.version, made.variant, made.int >> 80) == (7, uuid.RFC_4122, 1_700_000_000_123)
    # Within a millisecond the sequence tells a writer's events apart, and the writer another outbox's.
    same_time = {ids.derived(1.0, writer, sequence) for writer in (5, 6) for sequence in range(1000, 3000)}
    assert len(same_time) == 4000


@with_received_json
def test_a_record_without_a_sender_is_no_received_event(received_json: ReceivedJson) -> None:
    whole = received_entry(MESSAGE_ENCODER.encode(Message(id="q1", sender="a@b", recipients=[], received_at=1.0, size=1,
                                                          next_attempt=1.0)), "n1", 1.0, 3)  # fmt: skip
    received_json(whole, 1)
    without = whole.replace(b"\xa6sender\xa3a@b", b"\xa6unused\xa3a@b")
    with pytest.raises(ValueError, match="undecodable received event"):
        received_json(without, 1)
