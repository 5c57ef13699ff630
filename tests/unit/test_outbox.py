"""The outbox: events written in the transaction of their change, read in commit order, kept until every sink has them."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import lmdb
import msgspec
import pytest

from fastmta.events import records as events
from fastmta.events.outbox import Outbox
from fastmta.events.records import EVENT_DECODER, EVENT_ENCODER, Entry
from fastmta.queue.records import DEFERRED, HELD, MESSAGE_ENCODER, Message, Recipient, new_message_id
from fastmta.queue.schedule import Scheduler, Settlement
from fastmta.queue.store import QueueStore, StoreFullError


def message(recipients: tuple[str, ...] = ("b@example.org",)) -> Message:
    now = time.time()
    return Message(
        id=new_message_id(now), sender="a@example.com", recipients=[Recipient(address=r) for r in recipients],
        received_at=now, size=10, next_attempt=now, subject="hi", campaign_id="c1",
    )  # fmt: skip


def rejected(stage: str = "rcpt") -> events.Rejected:
    return events.Rejected(id=events.new_event_id(), at=time.time(), node="n1", reply="554 5.7.1 Relay access denied", stage=stage)


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    store = QueueStore(tmp_path, 1 << 24, node="n1")
    store.outbox.register(["history"])
    return store


def types(outbox: Outbox, after: int = 0) -> list[str]:
    return [type(entry.event).__name__ for entry in outbox.read(after, 1000)]


def test_every_kind_of_event_round_trips_through_json() -> None:
    m = message()
    for event in (
        events.received(m, "n1", 1.0),
        events.attempted(events.Deferred, m, m.recipients[0], "n1", 2.0, "0:mx"),
        events.about_message(events.Held, m.id, "n1"),
        rejected(),
        events.AuthFailed(id=events.new_event_id(), at=3.0, node="n1", client_ip="192.0.2.1", username="u"),
    ):
        assert EVENT_DECODER.decode(EVENT_ENCODER.encode(event)) == event


def test_a_received_event_is_stored_as_the_queue_record_and_read_as_the_event(store: QueueStore) -> None:
    arrived = message(("b@example.org", "c@example.org"))
    store.insert([(arrived, b"body")])
    (entry,) = store.outbox.read(0, 10)
    assert entry.raw.endswith(MESSAGE_ENCODER.encode(arrived))  # the worker encoded it once, for the queue
    head = entry.head
    assert head is not None and head.type == "received"
    expected = events.received(arrived, "n1", head.at, head.id)
    assert entry.event == expected
    assert EVENT_DECODER.decode(entry.json()) == expected and entry.json() == EVENT_ENCODER.encode(expected)
    # As an earlier version stored it, as JSON, it reads the same.
    assert Entry.of(1, expected).event == expected and Entry.of(1, expected).head == head


def test_a_received_event_whose_record_is_damaged_has_no_head_and_no_event(store: QueueStore) -> None:
    store.insert([(message(("b@example.org",)), b"body")])
    (entry,) = store.outbox.read(0, 10)
    damaged = Entry(entry.sequence, entry.raw.replace(b"sender", b"senDer"))  # a required field gone
    assert damaged.head is None and damaged.event is None


def test_event_ids_are_unique_and_sort_by_time() -> None:
    ids = [events.new_event_id(1000.0 + n / 1000) for n in range(2000)]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i).version == 7 for i in ids)
    assert ids[0] < ids[-1] and [i[:13] for i in ids] == sorted(i[:13] for i in ids)


def test_a_stored_message_and_the_refusals_that_rode_along(store: QueueStore) -> None:
    arrived = message()
    assert store.insert([(arrived, b"body")], [rejected(), rejected("mail")]) == [None]
    found = store.outbox.read(0, 10)
    assert [type(entry.event).__name__ for entry in found] == ["Received", "Rejected", "Rejected"]
    assert [entry.sequence for entry in found] == [1, 2, 3]
    first = found[0].event
    assert isinstance(first, events.Received)
    assert (first.message_id, first.sender, first.recipients, first.subject, first.campaign_id, first.node) == (
        arrived.id, "a@example.com", ["b@example.org"], "hi", "c1", "n1",
    )  # fmt: skip


def test_no_event_for_a_message_the_store_had_no_room_for(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 20, node="n1")
    store.outbox.register(["history"])
    with pytest.raises(StoreFullError):
        store.insert([(message(), b"x" * (2 << 20))])
    assert store.outbox.read(0, 10) == []


def test_operator_actions_and_settlements_write_their_events(store: QueueStore) -> None:
    scheduler = Scheduler(store)
    queued = message(("b@example.org", "c@example.org"))
    store.insert([(queued, b"body")])
    (leased,) = scheduler.lease("runner", 10, 60)
    first, second = leased.recipients
    first.state, first.last_reply, first.attempts = "delivered", "250 2.0.0 Ok", 1
    second.state, second.last_reply, second.attempts = DEFERRED, "451 4.3.0 Try later", 1
    second.next_attempt = time.time() + 600
    happened = [events.attempted(kind, leased, r, "n1", time.time()) for kind, r in ((events.Delivered, first), (events.Deferred, second))]
    scheduler.settle([Settlement(leased, "runner", events=happened)])
    assert scheduler.make_due([queued.id]) == 1
    store.set_held(queued.id, True)
    store.set_held(queued.id, False)
    store.delete(queued.id)
    assert types(store.outbox) == ["Received", "Delivered", "Deferred", "Retried", "Held", "Released", "Deleted"]
    deferred = store.outbox.read(2, 1)[0].event
    assert isinstance(deferred, events.Deferred) and deferred.recipient == "c@example.org" and deferred.reply == "451 4.3.0 Try later"


@pytest.mark.parametrize("gone_back_to", [1, 2])
def test_an_entry_not_past_the_last_one_is_refused_not_dropped(store: QueueStore, gone_back_to: int) -> None:
    store.insert([(message(), b"1"), (message(), b"2")])  # one record: events 1 and 2
    with pytest.raises(lmdb.KeyExistsError), store.env.begin(write=True) as txn:
        meta = store.env.open_db(b"outbox_meta", txn=txn)
        txn.put(b"next", gone_back_to.to_bytes(8, "big"), db=meta)  # a sequence gone back, to the record or into it
        store.outbox.append_encoded(txn, [b"{}", b"{}"])
    assert [entry.sequence for entry in store.outbox.read(0, 10)] == [1, 2] and store.outbox.last_sequence() == 2


def test_a_transactions_events_are_one_record_read_from_any_of_them_and_removed_together(store: QueueStore) -> None:
    outbox = store.outbox
    store.insert([(message(), b"1"), (message(), b"2"), (message(), b"3")])
    store.insert([(message(), b"4")])
    store.insert([(message(), b"5"), (message(), b"6")])
    with store.env.begin() as txn:
        assert [key for key, _ in txn.cursor(db=store.env.open_db(b"outbox", txn=txn))] == [
            n.to_bytes(8, "big") for n in (1, 4, 5)
        ]  # fmt: skip
    for after in range(7):
        assert [entry.sequence for entry in outbox.read(after, 10)] == list(range(after + 1, 7))
        assert [entry.sequence for entry in outbox.read(after, 2)] == list(range(after + 1, min(after + 3, 7)))
    assert all(entry.head is not None and entry.head.type == "received" for entry in outbox.read(0, 10))
    outbox.advance({"history": 2})  # within the first record: it stays whole
    assert outbox.pending() == 6 and [entry.sequence for entry in outbox.read(2, 10)] == [3, 4, 5, 6]
    outbox.advance({"history": 4})
    assert outbox.pending() == 2 and [entry.sequence for entry in outbox.read(0, 10)] == [5, 6]
    outbox.advance({"history": 6})
    assert outbox.pending() == 0 and outbox.read(0, 10) == []
    store.insert([(message(), b"7"), (message(), b"8")])
    assert [entry.sequence for entry in outbox.read(6, 10)] == [7, 8]


def test_a_damaged_record_of_several_is_one_entry_without_an_event(store: QueueStore) -> None:
    store.insert([(message(), b"1"), (message(), b"2")])
    entries = store.env.open_db(b"outbox")
    with store.env.begin(write=True) as txn:
        txn.put((3).to_bytes(8, "big"), b"B\x93\xc1 damaged", db=entries)
        txn.put(b"next", (6).to_bytes(8, "big"), db=store.env.open_db(b"outbox_meta", txn=txn))
    store.insert([(message(), b"6")])
    found = store.outbox.read(0, 10)
    assert [(entry.sequence, entry.head is None) for entry in found] == [(1, False), (2, False), (3, True), (6, False)]
    store.outbox.advance({"history": 3})  # its numbers 4 and 5 are not passed yet: it stays, and is not offered again
    assert [entry.sequence for entry in store.outbox.read(3, 10)] == [6] and store.outbox.pending() == 4
    store.outbox.advance({"history": 6})
    assert store.outbox.pending() == 0


def test_entries_leave_only_when_every_sink_has_them(store: QueueStore) -> None:
    outbox = store.outbox
    outbox.register(["history", "webhooks"])
    for body in (b"1", b"2", b"3"):  # a transaction each: a record each
        store.insert([(message(), body)])
    outbox.advance({"history": 3})
    assert outbox.pending() == 3
    outbox.advance({"webhooks": 2})
    assert outbox.pending() == 1 and [entry.sequence for entry in outbox.read(0, 10)] == [3]
    assert outbox.cursor("history") == 3 and outbox.cursor("webhooks") == 2
    outbox.register(["history"])  # a sink no longer configured holds nothing back
    outbox.advance({"history": 3})
    assert outbox.pending() == 0
    store.insert([(message(), b"4")])
    assert [entry.sequence for entry in outbox.read(outbox.cursor("history"), 10)] == [4]  # numbers never start over


def test_a_new_sink_sees_what_is_still_waiting(store: QueueStore) -> None:
    store.insert([(message(), b"1"), (message(), b"2")])
    store.outbox.register(["history", "webhooks"])
    assert store.outbox.cursor("webhooks") == 0 and len(store.outbox.read(0, 10)) == 2


def test_events_from_before_the_first_sink_wait_for_it(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 24, node="n1")
    store.insert([(message(), b"1")], [rejected()])
    assert store.outbox.pending() == 2
    store.outbox.register(["history"])
    assert [entry.sequence for entry in store.outbox.read(store.outbox.cursor("history"), 10)] == [1, 2]


def test_an_undecodable_entry_is_reported_not_skipped(store: QueueStore) -> None:
    store.insert([(message(), b"1")])
    entries = store.env.open_db(b"outbox")
    with store.env.begin(write=True) as txn:
        txn.put((2).to_bytes(8, "big"), b"{not json", db=entries)
        txn.put((3).to_bytes(8, "big"), b"\xc1not msgpack", db=entries)
        txn.put((4).to_bytes(8, "big"), b"R\xc1not a record", db=entries)
        unreadable_record = events.received_entry(b"\xc1not a record", "n1", time.time(), store.outbox.writer)
        txn.put((5).to_bytes(8, "big"), unreadable_record, db=entries)
    found = store.outbox.read(0, 10)
    assert [(entry.sequence, entry.event is None, entry.head is None) for entry in found] == [
        (1, False, False), (2, True, True), (3, True, True), (4, True, True), (5, True, True),
    ]  # fmt: skip


def test_an_aborted_transaction_leaves_no_event(store: QueueStore) -> None:
    with pytest.raises(RuntimeError), store.env.begin(write=True) as txn:
        store.put_new(txn, message(), b"body")
        raise RuntimeError("the change did not commit")
    assert store.outbox.read(0, 10) == [] and store.count() == 0


def test_the_lag_of_each_sink_is_the_age_of_its_oldest_missing_event(store: QueueStore) -> None:
    store.outbox.register(["history", "webhooks"])
    assert store.outbox.lags(time.time()) == {"history": 0.0, "webhooks": 0.0}
    store.insert([(message(), b"1")])
    (entry,) = store.outbox.read(0, 1)
    assert entry.event is not None
    store.outbox.advance({"history": entry.sequence})
    lags = store.outbox.lags(entry.event.at + 5)
    assert lags["history"] == 0.0 and lags["webhooks"] == pytest.approx(5)


def test_events_no_sink_reads_are_not_written(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 24, "n1", events={"delivered", "held"})
    held = msgspec.structs.replace(message(), state=HELD)
    store.insert([(message(), b"1"), (held, b"2")], [rejected()])
    assert types(store.outbox) == ["Held"]  # no received or rejected events: nobody reads them
    store.close()


def test_received_events_have_distinct_ids_within_a_millisecond_and_across_outboxes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)  # every event in the same millisecond
    stores = [QueueStore(tmp_path / name, 1 << 24, node="n1") for name in ("a", "b")]
    assert stores[0].outbox.writer != stores[1].outbox.writer
    found = []
    for store in stores:
        store.insert([(message(), b"1") for _ in range(50)])
        heads = [entry.head for entry in store.outbox.read(0, 100)]
        assert len(heads) == 50 and all(head is not None and head.type == "received" for head in heads)
        found += [head.id for head in heads if head is not None]
        store.close()
    assert len(set(found)) == 100
