"""The queue store: queue.lmdb's environment, its named databases, and every read and write of them.

Guarantee: a write method returns only after its transaction is committed and fsynced
(the environment is opened with sync and metasync on), and a failed write leaves nothing behind.
"""

from __future__ import annotations

import shutil
import struct
import time
from collections.abc import Collection, Generator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import lmdb
import msgspec

from fastmta.config import Config
from fastmta.events import records as events
from fastmta.events.names import EVENT_TYPES
from fastmta.events.outbox import Outbox
from fastmta.queue.records import ACTIVE, HELD, MESSAGE_DECODER, MESSAGE_ENCODER, Message

_SCHEDULE_TIME = struct.Struct(">Q")


class StoreFullError(Exception):
    """The store reached its configured size; the write was rolled back."""


class CorruptRecord(Exception):
    """A stored record could not be decoded."""

    def __init__(self, message_id: str, reason: str) -> None:
        super().__init__(f"{message_id}: {reason}")
        self.message_id = message_id
        self.reason = reason


class EtrnRequest(msgspec.Struct):
    domain: str
    at: float
    client_ip: str = ""


_ETRN_ENCODER = msgspec.msgpack.Encoder()
_ETRN_DECODER = msgspec.msgpack.Decoder(EtrnRequest)


_MAP_FULL = "queue store is full (queue_max_bytes)"
_DISK_FULL = "no space left on the queue's disk"
# A commit writes more than the bodies (records, index pages, meta): this much free space is "not full".
_COMMIT_HEADROOM = 1 << 20


def open_env(path: Path, map_size: int, readonly: bool = False) -> lmdb.Environment:
    """Each process opens its own environment after fork; LMDB forbids sharing one across fork."""
    path.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=16,
        max_readers=1024,
        sync=True,
        metasync=True,
        readahead=False,
        readonly=readonly,
    )
    # A process killed inside a read transaction leaves its reader slot behind, and a stale slot
    # pins the pages it could see: freed pages are never reused and the file grows to map-full.
    env.reader_check()
    return env


def schedule_key(when: float, message_id: str) -> bytes:
    return _SCHEDULE_TIME.pack(int(when * 1000)) + message_id.encode()


def scheduled_id(key: bytes) -> str:
    return key[_SCHEDULE_TIME.size :].decode()


class NewMessage(NamedTuple):
    """A message made ready to store: everything that can be done before the write transaction is done."""

    key: bytes
    record: bytes
    body: bytes
    schedule: bytes | None  # its schedule key, unless it is held
    events: list[bytes]  # its outbox entries, encoded


class QueueStore:
    """Every change it writes appends its events to the outbox in the same transaction; `node` names this node in them."""

    def __init__(self, data_dir: Path, map_size: int, node: str = "", events: Collection[str] = EVENT_TYPES) -> None:
        self.node = node
        # The types of event changes write: those something reads from the outbox (Config.events_read).
        self.event_types = frozenset(events)
        self.events = bool(self.event_types)
        self.env = open_env(data_dir / "queue.lmdb", map_size)
        self.messages = self.env.open_db(b"messages")
        self.bodies = self.env.open_db(b"bodies")
        self.schedule = self.env.open_db(b"schedule")
        self.etrn = self.env.open_db(b"etrn")
        self.outbox = Outbox(self.env, self.event_types)

    @classmethod
    def opened(cls, config: Config) -> QueueStore:
        return cls(config.data_dir, config.server.queue_max_bytes, config.server.node_id, config.events_read)

    def close(self) -> None:
        self.env.close()

    def insert(
        self,
        batch: list[tuple[Message, bytes]],
        session_events: Sequence[events.Event] = (),
        message_events: Mapping[str, Sequence[events.Event]] | None = None,
    ) -> list[StoreFullError | None]:
        """Stores messages with their bodies and schedule entries in one durable transaction.

        Each message's outcome: None when stored, StoreFullError when it did not fit (and nothing
        of it was written). When the whole batch does not fit, each message goes into a nested
        transaction of one outer one, so those that fit still share a single fsync. The sessions'
        refusals ride along as events; `message_events` (by queue id) are stored exactly when
        their message is.
        """
        about = message_events or {}
        # Encoded before the write transaction: while one worker holds it, the others wait to commit.
        ready = [self.new_message(message, body, about.get(message.id, ())) for message, body in batch]
        refusals = self.outbox.encoded(session_events) if self.events else []
        try:
            with self.env.begin(write=True) as txn:
                for new in ready:
                    self.put_message(txn, new)
                if self.events:
                    self.outbox.append_encoded(txn, [entry for new in ready for entry in new.events] + refusals)
            return [None] * len(batch)
        except lmdb.MapFullError:
            if len(batch) == 1:
                raise StoreFullError(_MAP_FULL) from None
        except lmdb.Error as exc:
            raise self._disk_full(exc, batch) from None
        outcomes: list[StoreFullError | None] = []
        try:
            with self.env.begin(write=True) as txn:
                for new in ready:
                    try:
                        with self.env.begin(write=True, parent=txn) as child:
                            self.put_message(child, new)
                            self.outbox.append_encoded(child, new.events)
                        outcomes.append(None)
                    except lmdb.MapFullError:
                        outcomes.append(StoreFullError(_MAP_FULL))
                try:
                    with self.env.begin(write=True, parent=txn) as child:
                        if self.events:
                            self.outbox.append_encoded(child, refusals)
                except lmdb.MapFullError:
                    pass  # refusals of a full store: nothing was queued, and there is no room to say so
        except lmdb.MapFullError:  # the commit itself needed pages there were none of: nothing was stored
            raise StoreFullError(_MAP_FULL) from None
        except lmdb.Error as exc:
            raise self._disk_full(exc, batch) from None
        return outcomes

    def _disk_full(self, error: lmdb.Error, batch: list[tuple[Message, bytes]]) -> Exception:
        """A failed commit is "store full" when the disk is: LMDB reports ENOSPC as DiskError, or as EIO
        from a short write at commit, so the free space decides what the client hears."""
        if isinstance(error, lmdb.DiskError):
            return StoreFullError(_DISK_FULL)
        try:
            free = shutil.disk_usage(self.env.path()).free
        except OSError:
            return error
        needed = sum(len(body) for _, body in batch) + _COMMIT_HEADROOM
        return StoreFullError(_DISK_FULL) if free < needed else error

    # The building blocks of write transactions, for this class and the scheduler.

    def put_new(
        self, txn: lmdb.Transaction, message: Message, body: bytes, also: Sequence[events.Event] = ()
    ) -> None:
        """A new message; held (quarantined by a scanner), it waits for a release instead of the schedule."""
        new = self.new_message(message, body, also)
        self.put_message(txn, new)
        self.outbox.append_encoded(txn, new.events)

    def new_message(self, message: Message, body: bytes, also: Sequence[events.Event] = ()) -> NewMessage:
        """What put_message() writes: the message's record, body, schedule entry and (with events on) its events."""
        schedule = schedule_key(message.next_attempt, message.id) if message.state == ACTIVE else None
        record = MESSAGE_ENCODER.encode(message)
        entries: list[bytes] = []
        if "received" in self.event_types:
            entries.append(events.received_entry(record, self.node, time.time(), self.outbox.writer))
        if self.events and (also or message.state == HELD):
            held = [events.about_message(events.Held, message.id, self.node)] if message.state == HELD else []
            entries += self.outbox.encoded([*held, *also])
        return NewMessage(message.id.encode(), record, body, schedule, entries)

    def put_message(self, txn: lmdb.Transaction, new: NewMessage) -> None:
        """Writes a new message made ready by new_message(), except its events."""
        txn.put(new.key, new.record, db=self.messages)
        txn.put(new.key, new.body, db=self.bodies)
        if new.schedule is not None:
            txn.put(new.schedule, b"", db=self.schedule)

    def read(self, txn: lmdb.Transaction, message_id: str) -> Message | None:
        """The record, or None when it is missing or corrupt (corrupt ones are for `scan` to report)."""
        raw = txn.get(message_id.encode(), db=self.messages)
        if raw is None:
            return None
        try:
            return self._decode(message_id.encode(), raw)
        except CorruptRecord:
            return None

    def remove(self, txn: lmdb.Transaction, message_id: str) -> None:
        """Record, body and (if the record is readable) schedule entry."""
        message = self.read(txn, message_id)
        if message is not None:
            txn.delete(schedule_key(message.next_attempt, message_id), db=self.schedule)
        key = message_id.encode()
        txn.delete(key, db=self.messages)
        txn.delete(key, db=self.bodies)

    def _decode(self, key: bytes, raw: bytes | memoryview) -> Message:
        try:
            return MESSAGE_DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise CorruptRecord(key.decode(errors="replace"), str(exc)) from None

    def get(self, message_id: str) -> Message | None:
        with self.env.begin() as txn:
            raw = txn.get(message_id.encode(), db=self.messages)
            return None if raw is None else self._decode(message_id.encode(), raw)

    def body(self, message_id: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(message_id.encode(), db=self.bodies)

    def scan(self, after: str | None = None) -> Generator[Message | CorruptRecord, None, None]:
        """Every record in id (so arrival) order, or those past the id `after`: a page starts where the
        last one ended without reading what came before. Corrupt ones are yielded as CorruptRecord, not skipped."""
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self.messages)
            if after is not None:
                # An unpositioned cursor would start again at the first record: past the end is the end.
                found = cursor.set_range(after.encode())
                if found and cursor.key() == after.encode():
                    found = cursor.next()
                if not found:
                    return
            for key, raw in cursor.iternext():
                try:
                    yield self._decode(key, raw)
                except CorruptRecord as corrupt:
                    yield corrupt

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.messages)["entries"]

    def oldest_received_at(self) -> float | None:
        """When the longest-queued message arrived (None: an empty queue).

        Ids sort by arrival, so that is the first readable record: one read, however long the queue.
        """
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self.messages):
                try:
                    return self._decode(key, raw).received_at
                except CorruptRecord:
                    continue
        return None

    def due(self, now: float | None = None) -> list[str]:
        """Ids whose next attempt is at or before now, soonest first."""
        limit = schedule_key(time.time() if now is None else now, "\xff")
        with self.env.begin() as txn:
            ids = []
            for key in txn.cursor(db=self.schedule).iternext(values=False):
                if key > limit:
                    break
                ids.append(scheduled_id(key))
            return ids

    def delete(self, message_id: str) -> bool:
        """An operator's delete; a settled message's removal is the settlement's own."""
        with self.env.begin(write=True) as txn:
            if txn.get(message_id.encode(), db=self.messages) is None:
                return False
            self.remove(txn, message_id)
            if self.events:
                self.outbox.append(txn, [events.about_message(events.Deleted, message_id, self.node)])
            return True

    def set_held(self, message_id: str, held: bool) -> Message | None:
        """Hold takes a message out of the schedule; release puts it back, due now.

        A runner sending the message when it is held finishes that attempt; it takes no new one.
        """
        key = message_id.encode()
        with self.env.begin(write=True) as txn:
            raw = txn.get(key, db=self.messages)
            if raw is None:
                return None
            message = self._decode(key, raw)
            txn.delete(schedule_key(message.next_attempt, message_id), db=self.schedule)
            if self.events:
                self.outbox.append(txn, [events.about_message(events.Held if held else events.Released, message_id, self.node)])
            if held:
                message.state = HELD
            else:
                message.state = ACTIVE
                # Released while a runner still sends it: due when that lease ends, not twice at once.
                message.next_attempt = max(time.time(), message.lease_until)
                txn.put(schedule_key(message.next_attempt, message_id), b"", db=self.schedule)
            txn.put(key, MESSAGE_ENCODER.encode(message), db=self.messages)
            return message

    def record_etrn(self, request: EtrnRequest) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(_SCHEDULE_TIME.pack(time.time_ns()), _ETRN_ENCODER.encode(request), db=self.etrn)

    def etrn_requests(self) -> list[EtrnRequest]:
        with self.env.begin() as txn:
            return [self.decode_etrn(raw) for _, raw in txn.cursor(db=self.etrn)]

    @staticmethod
    def decode_etrn(raw: bytes) -> EtrnRequest:
        return _ETRN_DECODER.decode(raw)
