"""The outbox in queue.lmdb: events appended inside the transaction of the change they describe, read by the events process.

Events are numbered by a sequence kept in the same environment, so the order of numbers is the
order of commits (LMDB has one writer at a time) and a reader that remembers the last number it
handled never skips a later commit. A transaction's events are stored as one record, keyed by the
number of its first event: ingress writes one record per group commit, and the events process reads
and removes one, not one per message. Each sink keeps a cursor (the last event it has); a record is
removed once every sink's cursor has passed all its events. Events written before any sink
registered (the first start of a data directory, before the events process is up) wait for the first one.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import takewhile

import lmdb
import msgspec

from fastmta.events import ids
from fastmta.events.names import EVENT_TYPES
from fastmta.events.records import EVENT_ENCODER, TAGS, Entry, Event

_SEQUENCE = struct.Struct(">Q")
_NEXT = b"next"
# The first byte of a record of several events: a MessagePack array of their entries follows. A record of
# one event is that event's entry itself, which never begins so (JSON, a stored received event, or an
# earlier version's MessagePack map).
_SEVERAL = b"B"
_ENCODE_SEVERAL = msgspec.msgpack.Encoder().encode
_SEVERAL_DECODER = msgspec.msgpack.Decoder(list[bytes])


class Outbox:
    """Opened on a process's own queue.lmdb environment; append() runs inside the caller's write transaction.

    `written` are the types of event appended; others are left out (no sink reads them). `writer` numbers
    this process's writes here: received events stored without an id derive theirs from it (records.received_entry).
    """

    def __init__(self, env: lmdb.Environment, written: Collection[str] = EVENT_TYPES) -> None:
        self.env = env
        self.written = frozenset(written)
        self.writer = ids.new_writer()
        self._entries = env.open_db(b"outbox")
        self._meta = env.open_db(b"outbox_meta")  # the next sequence number
        self._cursors = env.open_db(b"outbox_cursors")  # sink name -> last sequence number it has

    def append(self, txn: lmdb.Transaction, events: Iterable[Event]) -> None:
        self.append_encoded(txn, self.encoded(events))

    def encoded(self, events: Iterable[Event]) -> list[bytes]:
        """The events written, as append_encoded() takes them: encoding them first keeps it out of the write transaction."""
        return [EVENT_ENCODER.encode(event) for event in events if TAGS[type(event)] in self.written]

    def append_encoded(self, txn: lmdb.Transaction, entries: Sequence[bytes]) -> None:
        if not entries:
            return
        first = self._following(txn)
        record = entries[0] if len(entries) == 1 else _SEVERAL + _ENCODE_SEVERAL(entries)
        # Never number an event twice (and have a sink skip one silently): the last record must end before
        # the first new number, and append=True refuses (does not add) a key not past the last one.
        records = txn.cursor(db=self._entries)
        overlaps = records.last() and _SEQUENCE.unpack(records.key())[0] + _count(records.value()) > first
        if overlaps or not txn.put(_SEQUENCE.pack(first), record, append=True, db=self._entries):
            raise lmdb.KeyExistsError(f"outbox entries from {first} are not past the last one")
        txn.put(_NEXT, _SEQUENCE.pack(first + len(entries)), db=self._meta)

    def read(self, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries past `after`, in commit order; each decodes its event when a sink asks for it."""
        found: list[Entry] = []
        with self.env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            wanted = _SEQUENCE.pack(after + 1)
            # The record holding event after + 1 is the last one keyed at or before it (if it holds that many).
            if cursor.set_range(wanted):
                if cursor.key() != wanted and not cursor.prev():
                    cursor.first()
            elif not cursor.last():
                return found
            for key, record in cursor:
                for entry in _entries(_SEQUENCE.unpack(key)[0], record):
                    if entry.sequence > after:
                        found.append(entry)
                        if len(found) == limit:
                            return found
        return found

    def cursor(self, sink: str) -> int:
        with self.env.begin(db=self._cursors) as txn:
            raw = txn.get(sink.encode())
            return 0 if raw is None else _SEQUENCE.unpack(raw)[0]

    def advance(self, cursors: dict[str, int]) -> None:
        """Each named sink has every entry up to its number; records every sink has whole are removed, all in one transaction."""
        with self.env.begin(write=True) as txn:
            for sink, sequence in cursors.items():
                txn.put(sink.encode(), _SEQUENCE.pack(sequence), db=self._cursors)
            done = min(_SEQUENCE.unpack(raw)[0] for _, raw in txn.cursor(db=self._cursors))
            if self._following(txn) <= done + 1:  # every sink has every record whole
                txn.drop(self._entries, delete=False)
                return
            # A record ends where the next one begins: those before the last one to begin by done + 1 are had whole.
            records = txn.cursor(db=self._entries)
            past = _SEQUENCE.pack(done + 1)  # big-endian: bytes order as numbers do
            whole = sum(1 for _ in takewhile(lambda key: key <= past, records.iternext(values=False))) - 1
            records.first()
            for _ in range(whole):
                records.delete()

    def register(self, sinks: Iterable[str]) -> None:
        """The sinks that must see every entry still here; a sink no longer named stops holding entries back."""
        names = {sink.encode() for sink in sinks}
        with self.env.begin(write=True) as txn:
            entries = txn.cursor(db=self._entries)
            start = (_SEQUENCE.unpack(entries.key())[0] if entries.first() else self._following(txn)) - 1
            cursor = txn.cursor(db=self._cursors)
            for key in [key for key, _ in cursor if key not in names]:
                txn.delete(key, db=self._cursors)
            for name in names:
                if txn.get(name, db=self._cursors) is None:
                    txn.put(name, _SEQUENCE.pack(start), db=self._cursors)

    def lags(self, now: float) -> dict[str, float]:
        """lag() of every registered sink, at the cursor it last saved."""
        with self.env.begin(db=self._cursors) as txn:
            cursors = {key.decode(): _SEQUENCE.unpack(raw)[0] for key, raw in txn.cursor()}
        return {sink: self.lag(after, now) for sink, after in cursors.items()}

    def lag(self, after: int, now: float) -> float:
        """How long the oldest event past `after` has waited; 0 when there is none."""
        waiting = self.read(after, 1)
        if not waiting:
            return 0.0
        head = waiting[0].head
        return max(0.0, now - head.at) if head is not None else 0.0

    def pending(self) -> int:
        """The events the outbox holds: a transaction's events leave it together, once every sink has them all."""
        with self.env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                return 0
            return self._following(txn) - int(_SEQUENCE.unpack(cursor.key())[0])

    def last_sequence(self) -> int:
        with self.env.begin() as txn:
            return self._following(txn) - 1

    def _following(self, txn: lmdb.Transaction) -> int:
        """The number the next event appended gets."""
        raw = txn.get(_NEXT, db=self._meta)
        return 1 if raw is None else int(_SEQUENCE.unpack(raw)[0])


def _entries(first: int, record: bytes) -> Iterator[Entry]:
    """The entries of a record keyed `first`; a record of several that does not decode is one entry that has no event."""
    if record[:1] == _SEVERAL:
        try:
            several = _SEVERAL_DECODER.decode(memoryview(record)[1:])
        except msgspec.DecodeError:
            several = [record]
        for offset, entry in enumerate(several):
            yield Entry(first + offset, entry)
    else:
        yield Entry(first, record)


def _count(record: bytes | memoryview) -> int:
    """How many events a record holds, read from its array's header alone."""
    if bytes(record[:1]) != _SEVERAL or len(record) < 2:
        return 1
    kind = record[1]
    if 0x90 <= kind <= 0x9F:
        return kind & 0x0F
    width = {0xDC: 2, 0xDD: 4}.get(kind, 0)
    return int.from_bytes(record[2:2 + width], "big") if width and len(record) >= 2 + width else 1
