"""Who sends what when: leasing due messages to a runner, settling their outcomes, and making mail due now.

A lease moves the message's schedule entry to the lease's expiry, so if the runner dies the
message simply becomes due again then: nobody has to notice the death. Settling replaces the
record with the outcome of the attempt, removes the message once every recipient is settled,
and stores its bounce in the same transaction, so a bounce exists exactly when the failure does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import lmdb
import msgspec

from fastmta.events import records as events
from fastmta.events.records import Event
from fastmta.queue.records import ACTIVE, DEFERRED, MESSAGE_ENCODER, QUEUED, SETTLED, Message, Recipient
from fastmta.queue.store import QueueStore, schedule_key, scheduled_id


class Settlement(msgspec.Struct):
    """The outcome of one attempt: the record as the runner left it, and the notices to queue."""

    message: Message
    owner: str
    bounces: list[tuple[Message, bytes]] = msgspec.field(default_factory=list)
    # What the attempt did, per recipient: stored with the outcome, so they exist exactly when it does.
    events: list[Event] = msgspec.field(default_factory=list)


class Scheduler:
    def __init__(self, store: QueueStore) -> None:
        self.store = store

    def lease(self, owner: str, limit: int, lease_seconds: float, now: float | None = None) -> list[Message]:
        """Claims up to `limit` due messages for `owner`, soonest first."""
        now = time.time() if now is None else now
        store = self.store
        due_before = schedule_key(now, "\xff")
        leased: list[Message] = []
        # Looked for under a read transaction first: an idle runner must not take the writer lock from ingress.
        with store.env.begin() as txn:
            keys: list[bytes] = []
            for key in txn.cursor(db=store.schedule).iternext(values=False):
                if key > due_before or len(keys) == limit:
                    break
                keys.append(key)
        if not keys:
            return leased
        with store.env.begin(write=True) as txn:
            for key in keys:
                if not txn.delete(key, db=store.schedule):
                    continue  # another runner was quicker
                message = store.read(txn, scheduled_id(key))
                if message is None or message.state != ACTIVE:
                    continue
                message.lease_owner = owner
                message.lease_until = now + lease_seconds
                message.next_attempt = message.lease_until
                self._put(txn, message)
                leased.append(message)
        return leased

    def renew(self, owner: str, message_ids: list[str], lease_seconds: float, now: float | None = None) -> int:
        """Extends `owner`'s leases on these messages; one it no longer holds is left alone."""
        now = time.time() if now is None else now
        store = self.store
        renewed = 0
        with store.env.begin(write=True) as txn:
            for message_id in message_ids:
                message = store.read(txn, message_id)
                if message is None or message.lease_owner != owner or message.state != ACTIVE:
                    continue
                txn.delete(schedule_key(message.next_attempt, message.id), db=store.schedule)
                message.lease_until = message.next_attempt = now + lease_seconds
                self._put(txn, message)
                renewed += 1
        return renewed

    def settle(self, batch: list[Settlement]) -> None:
        """Applies many attempts' outcomes in one durable transaction."""
        store = self.store
        # Encoded before the write transaction: while one process holds it, the others wait to commit.
        entries = [store.outbox.encoded(settlement.events) if store.events else [] for settlement in batch]
        with store.env.begin(write=True) as txn:
            for settlement, encoded in zip(batch, entries, strict=True):
                self._settle_one(txn, settlement)
                store.outbox.append_encoded(txn, encoded)
                for bounce, body in settlement.bounces:
                    store.put_new(txn, bounce, body)

    def _settle_one(self, txn: lmdb.Transaction, settlement: Settlement) -> None:
        store = self.store
        attempted = settlement.message
        current = store.read(txn, attempted.id)
        if current is None:
            return  # deleted by an operator while it was being sent
        if current.lease_owner not in ("", settlement.owner) and current.lease_until > time.time():
            # This lease ran out and another runner holds the message now: its lease and schedule stay.
            # Of this attempt what is final carries over, so nobody sends those recipients again, and
            # so does a delay notice it queued, so nobody sends a second one.
            final = {r.address: r for r in attempted.recipients if r.state in SETTLED}
            noticed = {r.address for r in attempted.recipients if r.delay_notified}
            current.recipients = [final.get(r.address, r) for r in current.recipients]
            for recipient in current.recipients:
                recipient.delay_notified = recipient.delay_notified or recipient.address in noticed
            self._put(txn, current)
            return
        txn.delete(schedule_key(current.next_attempt, current.id), db=store.schedule)
        outcome = {r.address: r for r in attempted.recipients}
        current.recipients = [outcome.get(r.address, r) for r in current.recipients]
        current.attempts = max(current.attempts, attempted.attempts)
        if current.lease_owner == settlement.owner:
            current.lease_owner = ""
            current.lease_until = 0.0
        if all(r.state in SETTLED for r in current.recipients):
            store.remove(txn, current.id)
            return
        waiting = [r.next_attempt for r in current.recipients if r.state in (QUEUED, DEFERRED)]
        current.next_attempt = min(waiting) if waiting else time.time()
        self._put(txn, current)

    def _put(self, txn: lmdb.Transaction, message: Message) -> None:
        store = self.store
        txn.put(message.id.encode(), MESSAGE_ENCODER.encode(message), db=store.messages)
        if message.state == ACTIVE:
            txn.put(schedule_key(message.next_attempt, message.id), b"", db=store.schedule)

    def reclaim(self, owner_alive: Callable[[str], bool], now: float | None = None) -> int:
        """Messages leased by runners that are gone become due now instead of when their lease ends."""
        now = time.time() if now is None else now
        store = self.store
        with store.env.begin() as txn:
            orphans = [
                message.id
                for message in (store.read(txn, key.decode()) for key in txn.cursor(db=store.messages).iternext(values=False))
                if message is not None and message.lease_until > now and not owner_alive(message.lease_owner)
            ]
        if not orphans:
            return 0
        with store.env.begin(write=True) as txn:
            for message_id in orphans:
                message = store.read(txn, message_id)
                if message is None or message.lease_until <= now or owner_alive(message.lease_owner):
                    continue
                txn.delete(schedule_key(message.next_attempt, message.id), db=store.schedule)
                message.lease_owner, message.lease_until, message.next_attempt = "", 0.0, now
                self._put(txn, message)
        return len(orphans)

    def take_etrn_requests(self, now: float | None = None) -> int:
        """ETRN from ingress: deferred mail for those domains (and their subdomains) becomes due now."""
        store = self.store
        with store.env.begin() as txn:
            if not txn.stat(store.etrn)["entries"]:
                return 0
        with store.env.begin(write=True) as txn:
            requests = list(txn.cursor(db=store.etrn))
            for key, _ in requests:
                txn.delete(key, db=store.etrn)
        domains = {store.decode_etrn(raw).domain.lower() for _, raw in requests}
        suffixes = tuple("." + domain for domain in domains)

        def wanted(recipient: Recipient) -> bool:
            domain = recipient.address.rpartition("@")[2].lower()
            return recipient.state == DEFERRED and (domain in domains or domain.endswith(suffixes))

        with store.env.begin() as txn:
            ids = [
                message.id
                for message in (store.read(txn, key.decode()) for key in txn.cursor(db=store.messages).iternext(values=False))
                if message is not None and any(wanted(r) for r in message.recipients)
            ]
        return self.make_due(ids, now)

    def make_due(self, message_ids: list[str] | None = None, now: float | None = None) -> int:
        """Deferred mail becomes due now (all of it, or the given ids); leased and held mail is left alone."""
        now = time.time() if now is None else now
        store = self.store
        changed = 0
        with store.env.begin(write=True) as txn:
            if message_ids is None:
                message_ids = [scheduled_id(key) for key in txn.cursor(db=store.schedule).iternext(values=False)]
            for message_id in message_ids:
                message = store.read(txn, message_id)
                if message is None or message.state != ACTIVE or message.lease_until > now:
                    continue
                if message.next_attempt <= now:
                    continue
                txn.delete(schedule_key(message.next_attempt, message.id), db=store.schedule)
                message.next_attempt = now
                for recipient in message.recipients:
                    if recipient.state == DEFERRED:
                        recipient.next_attempt = now
                self._put(txn, message)
                if store.events:
                    store.outbox.append(txn, [events.about_message(events.Retried, message.id, store.node)])
                changed += 1
        return changed

    def leased(self, lease_seconds: float, now: float | None = None) -> set[str]:
        """Ids of messages a runner holds now: a lease put each one's schedule entry at its end, at most
        `lease_seconds` ahead, so only that stretch of the schedule is read, never the whole queue."""
        now = time.time() if now is None else now
        store = self.store
        found: set[str] = set()
        with store.env.begin() as txn:
            cursor = txn.cursor(db=store.schedule)
            if not cursor.set_range(schedule_key(now, "")):
                return found
            last = schedule_key(now + lease_seconds, "\xff")
            for key in cursor.iternext(values=False):
                if key > last:
                    break
                message = store.read(txn, scheduled_id(key))
                if message is not None and message.lease_until > now:
                    found.add(message.id)
        return found
