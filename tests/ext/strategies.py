"""Hypothesis inputs for the hot path: command buffers, DATA streams cut into reads, header blocks and stored received
events, all rich in edge bytes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import msgspec
from hypothesis import settings, strategies as st

from tests.ext.implementations import Buffer

# Deterministic so that a failure seen once is seen on every run; no example database for the same reason.
thorough = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _offset_view(raw: bytes) -> memoryview:
    # A view that does not start at its object's first byte, as a slice of a read buffer would be.
    return memoryview(b"#" + raw)[1:]


BUFFER_KINDS: list[Callable[[bytes], Buffer]] = [bytes, bytearray, memoryview, _offset_view]
buffer_kinds = st.sampled_from(BUFFER_KINDS)


def _joined(pieces: list[bytes], max_pieces: int) -> st.SearchStrategy[bytes]:
    # Mostly hand-picked pieces, where the edge cases are; some raw bytes for what nobody thought of.
    return st.one_of(st.lists(st.sampled_from(pieces), max_size=max_pieces).map(b"".join), st.binary(max_size=60))


COMMAND_PIECES = [b"\r\n", b"\n", b"\r", b"EHLO mx", b"MAIL FROM:<a@b>", b" ", b"\x00", b"\xff", b"x" * 40]
command_buffers = _joined(COMMAND_PIECES, 16)
line_limits = st.integers(0, 50)

DATA_PIECES = [
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\r\n..",
    b"\n.\n",
    b".\r",
    b"\x00",
    b"\xff",
    b"text",
    b"L" * 5000,  # past the compiled scanner's first 4 KiB allocation
]
# Most streams end their data somewhere, so that what follows the end is exercised too.
data_streams = st.tuples(
    _joined(DATA_PIECES, 24), st.sampled_from([b"\r\n.\r\n", b".\r\n", b""]), _joined(DATA_PIECES, 4)
).map(b"".join)
# Small limits cut the body short inside the interesting bytes, middle ones around the compiled scanner's
# buffer growth, and the large one never cuts.
body_limits = st.one_of(st.integers(0, 40), st.integers(4000, 11000), st.just(1 << 20))


@dataclass(frozen=True)
class Read:
    """One feed() call: the new bytes after some already-consumed ones, in one kind of buffer."""

    consumed: bytes
    new: bytes
    kind: Callable[[bytes], Buffer]

    def buffer(self) -> Buffer:
        return self.kind(self.consumed + self.new)


@st.composite
def chunks_of(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    """The stream cut at arbitrary points, empty chunks included."""
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
    return [stream[start:stop] for start, stop in pairwise([0, *sorted(cuts), len(stream)])]


@st.composite
def reads_of(draw: st.DrawFn, stream: bytes) -> list[Read]:
    """The stream cut at arbitrary points, each piece fed after some consumed bytes, in an arbitrary kind of buffer."""
    return [
        Read(draw(st.sampled_from([b"", b".", b"\r\n.\r\n", b"MAIL"])), chunk, draw(buffer_kinds))
        for chunk in draw(chunks_of(stream))
    ]


command_chunks = command_buffers.flatmap(chunks_of)
data_reads = data_streams.flatmap(reads_of)

WANTED_NAMES = ["message-id", "from", "to", "subject", "date", "x-workspace-id", "x-campaign-id", "x-user-id", "x-priority"]
OTHER_NAMES = ["received", "content-type", "x-priority-extra", "to-", "dkim-signature"]
BAD_NAMES = [b"", b"Bad Name", b"To ", b" To", b"Subj\xc3\xa9ct", b"\x7fTo"]
FIELD_VALUES = [
    b"",
    b" ",
    b" <id@example.org>",
    b"<id@example.org>",
    b" two  words\t",
    b" trailing blanks \t\r",
    b" caf\xc3\xa9",
    b" bad \xff utf-8",
    b" cut \xe2\x82",
    b" a: colon",
    b" nul\x00",
    b"\r",
]


def _alternating_case(name: str) -> str:
    return "".join(char.upper() if index % 2 else char for index, char in enumerate(name))


field_names = st.builds(
    lambda name, case: case(name).encode(),
    st.sampled_from(WANTED_NAMES + OTHER_NAMES),
    st.sampled_from([str.lower, str.upper, str.title, _alternating_case]),
)
field_values = st.one_of(st.sampled_from(FIELD_VALUES), st.binary(max_size=8))
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])  # mostly CRLF
continuations = st.tuples(st.sampled_from([b" ", b"\t"]), field_values, line_ends).map(b"".join)
fields = st.tuples(field_names, field_values, line_ends, st.lists(continuations, max_size=2)).map(
    lambda field: field[0] + b":" + field[1] + field[2] + b"".join(field[3])
)
# What stops the block: its empty line, the end of the buffer, or a line that is no field.
block_ends = st.one_of(
    st.sampled_from([b"\r\n", b"\n", b""]),
    st.tuples(st.sampled_from(BAD_NAMES), field_values, line_ends).map(lambda field: field[0] + b":" + field[1] + field[2]),
    continuations,  # ends the block only when no field came before it
    st.binary(max_size=12),
)
header_blocks = st.one_of(
    st.tuples(st.lists(fields, max_size=10).map(b"".join), block_ends, st.binary(max_size=10)).map(b"".join),
    st.binary(max_size=60),
)


# --- received events as the outbox stores them (b"R" + MessagePack [id, time, node, queue record]) -----------

# Mostly what JSON must escape or pass through untouched; some text nobody thought of.
texts = st.one_of(
    st.text(alphabet=st.sampled_from(["a", '"', "\\", "\n", "\b", "\x00", "\x1f", "\x7f", "é", "\u2028", "😀"]), max_size=6),
    st.text(max_size=8),
)
# Any MessagePack value, of every width msgspec writes: what a field the event does not use may hold.
any_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), texts, st.binary(max_size=4),
        st.builds(msgspec.msgpack.Ext, st.integers(0, 127), st.sampled_from([b"", b"x", b"xy", b"abcd", b"a" * 16, b"a" * 300])),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
_STRING_KEYS = ["id", "sender", "client_ip", "helo", "auth_user", "listener", "tls", "message_id", "header_from",
                "header_to", "subject", "workspace_id", "campaign_id", "user_id", "priority"]  # fmt: skip


def _mostly(right: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Values of the right type, now and then of any other."""
    return st.one_of(right, right, right, any_values)


_addresses = st.fixed_dictionaries({"address": texts}, optional={"state": any_values, "notify": any_values})
_others = {"received_at": any_values, "attempts": any_values, "unknown": any_values}
# Records as a queue writes them (what a field is missing takes its default), and others with any field
# missing or of another type.
records = st.one_of(
    st.fixed_dictionaries(
        {"id": texts, "sender": texts, "recipients": st.lists(_addresses, max_size=3), "size": st.integers(-(2**63), 2**64 - 1)},
        optional={**{key: texts for key in _STRING_KEYS[2:]}, **_others},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            **{key: _mostly(texts) for key in _STRING_KEYS},
            "recipients": _mostly(st.lists(_mostly(_addresses), max_size=3)),
            "size": _mostly(st.integers(-(2**63), 2**64 - 1)),
            **_others,
        },
    ),
)  # fmt: skip
_times = st.one_of(st.floats(), st.floats(-2e9, 2e9), st.integers(-(2**63), 2**64 - 1))
# What a received event's id is stored as: the id (earlier versions), or the writer's number it is derived
# from, now and then out of range.
_ids = st.one_of(texts, st.integers(0, 2**42 - 1), st.integers(-(2**63), 2**64 - 1))
stored_received = st.tuples(
    st.one_of(
        st.tuples(_ids, _times, texts, records).map(list),
        st.tuples(_ids, _times, texts, records).map(list),
        st.tuples(_mostly(_ids), _mostly(_times), _mostly(texts), _mostly(records)).map(list),
        st.lists(any_values, max_size=4),
    ),
    st.lists(any_values, max_size=2),  # later fields: a reader skips them
).map(lambda parts: b"R" + msgspec.msgpack.encode(parts[0] + parts[1]))


@st.composite
def _damaged(draw: st.DrawFn, entry: bytes) -> bytes:
    """The entry cut short, a byte of it changed, or bytes after it."""
    how = draw(st.sampled_from(["cut", "change", "append"]))
    if how == "cut":
        return entry[: draw(st.integers(0, len(entry)))]
    if how == "append":
        return entry + draw(st.binary(min_size=1, max_size=3))
    at = draw(st.integers(0, len(entry) - 1))
    return entry[:at] + bytes([draw(st.integers(0, 255))]) + entry[at + 1 :]


received_entries = st.one_of(stored_received, stored_received, stored_received.flatmap(_damaged), st.binary(max_size=40))
# Outbox sequence numbers: small ones, and any of their 64 bits.
sequences = st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1))
