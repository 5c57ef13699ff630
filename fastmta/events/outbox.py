"""The outbox in queue.lmdb: events appended inside the transaction of the change they describe, read by the events process.

Entries are keyed by a sequence number kept in the same environment, so the order of keys is the
order of commits (LMDB has one writer at a time) and a reader that remembers the last number it
handled never skips a later commit. Each sink keeps such a cursor; an entry is removed once
every sink's cursor has passed it. Events written before any sink registered (the first start of a
data directory, before the events process is up) wait for the first one.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Iterable, Sequence
from itertools import islice

import lmdb

from fastmta.events import ids
from fastmta.events.names import EVENT_TYPES
from fastmta.events.records import EVENT_ENCODER, TAGS, Entry, Event

_SEQUENCE = struct.Struct(">Q")
_NEXT = b"next"


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
        raw = txn.get(_NEXT, db=self._meta)
        first = 1 if raw is None else _SEQUENCE.unpack(raw)[0]
        items = [(_SEQUENCE.pack(sequence), entry) for sequence, entry in enumerate(entries, first)]
        # append=True refuses (does not add) a key not past the last one: never drop an event silently.
        _, added = txn.cursor(db=self._entries).putmulti(items, append=True)
        if added != len(items):
            raise lmdb.KeyExistsError(f"outbox entries from {first} are not past the last one")
        txn.put(_NEXT, _SEQUENCE.pack(first + len(items)), db=self._meta)

    def read(self, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries past `after`, in commit order; each decodes its event when a sink asks for it."""
        with self.env.begin(db=self._entries) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(_SEQUENCE.pack(after + 1)):
                return []
            unpack = _SEQUENCE.unpack
            return [Entry(unpack(key)[0], raw) for key, raw in islice(cursor, limit)]

    def cursor(self, sink: str) -> int:
        with self.env.begin(db=self._cursors) as txn:
            raw = txn.get(sink.encode())
            return 0 if raw is None else _SEQUENCE.unpack(raw)[0]

    def advance(self, cursors: dict[str, int]) -> None:
        """Each named sink has every entry up to its number; entries every sink has are removed, all in one transaction."""
        with self.env.begin(write=True) as txn:
            for sink, sequence in cursors.items():
                txn.put(sink.encode(), _SEQUENCE.pack(sequence), db=self._cursors)
            done = min(raw for _, raw in txn.cursor(db=self._cursors))  # big-endian: bytes order as numbers do
            entries = txn.cursor(db=self._entries)
            entries.first()
            # delete() moves to the next entry; past the last one the cursor has no key (b"").
            while (key := entries.key()) and key <= done:
                entries.delete()

    def register(self, sinks: Iterable[str]) -> None:
        """The sinks that must see every entry still here; a sink no longer named stops holding entries back."""
        names = {sink.encode() for sink in sinks}
        with self.env.begin(write=True) as txn:
            entries = txn.cursor(db=self._entries)
            if entries.first():
                start = _SEQUENCE.unpack(entries.key())[0] - 1
            else:
                raw = txn.get(_NEXT, db=self._meta)
                start = 0 if raw is None else _SEQUENCE.unpack(raw)[0] - 1
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
        with self.env.begin(db=self._entries) as txn:
            return int(txn.stat(self._entries)["entries"])

    def last_sequence(self) -> int:
        with self.env.begin(db=self._meta) as txn:
            raw = txn.get(_NEXT)
            return 0 if raw is None else _SEQUENCE.unpack(raw)[0] - 1
