"""The queries behind the history API, on SQLite and PostgreSQL, over rows the history sink wrote from events."""

from __future__ import annotations

from pathlib import Path

import msgspec
import sqlalchemy as sa

from fastmta.events import records
from fastmta.events.history import HistorySink
from fastmta.history import cleanup, events, messages
from fastmta.history.messages import Filter
from fastmta.queue.schedule import Scheduler
from fastmta.queue.store import QueueStore
from tests.unit.test_history import NODE, T0, message, numbered, outcome

LATER = T0 + 10_000  # every event's id is older than SETTLE at this time
STORED = 400  # seconds after t0: when populate() has history store its events


def stored_cursor(event: records.Event, t0: float = T0) -> str:
    """The cursor of an event populate() stored."""
    return f"{int((t0 + STORED) * 1_000_000)}_{event.id}"


def populate(sink: HistorySink, t0: float = T0, prefix: str = "m") -> list[records.Event]:
    """Five messages received a minute apart from `t0`, with ids from `prefix`: sent, failed, queued
    (deferred), one deleted, and a refusal; returns the events, ten, in the order they were fed."""
    made = {
        "sent": message(f"{prefix}-sent", "bob@example.com", workspace_id="ws1", campaign_id="spring"),
        "failed": message(f"{prefix}-failed", "carol@example.net", "bob@example.com", workspace_id="ws1", campaign_id="summer"),
        "queued": message(f"{prefix}-queued", "dave@example.com", workspace_id="ws2"),
        "deleted": msgspec.structs.replace(message(f"{prefix}-deleted", "erin@example.com"), sender="zed@example.org"),
    }
    batch: list[records.Event] = [records.received(msg, NODE, t0 + 60 * minute) for minute, msg in enumerate(made.values())]
    batch += [
        outcome(records.Delivered, made["sent"], "bob@example.com", t0 + 300, "250 ok", 1),
        outcome(records.Delivered, made["failed"], "bob@example.com", t0 + 301, "250 ok", 1),
        outcome(records.Failed, made["failed"], "carol@example.net", t0 + 302, "550 5.1.1 unknown", 1),
        outcome(records.Deferred, made["queued"], "dave@example.com", t0 + 303, "451 later", 1),
        records.Deleted(id=records.new_event_id(t0 + 304), at=t0 + 304, node=NODE, message_id=f"{prefix}-deleted"),
        records.Rejected(id=records.new_event_id(t0 + 305), at=t0 + 305, node=NODE, reply="554 5.7.1 relay denied",
                         stage="rcpt", recipient="x@elsewhere.test", sender="mallory@example.org"),
    ]
    sink.clock = lambda: t0 + STORED
    sink.deliver(numbered(batch))
    return batch


def ids(sink: HistorySink, chosen: Filter, limit: int = 50, offset: int = 0) -> tuple[list[str], int]:
    with sink.engine.connect() as connection:
        rows, total = messages.page(connection, chosen, limit, offset)
    return [row.id for row in rows], total


def test_filters_newest_first_with_their_total(sink: HistorySink) -> None:
    populate(sink)
    everything, total = ids(sink, Filter())
    # The refusal first: it is keyed by its event id, and came last.
    assert total == 5 and everything[0].count("-") == 4 and everything[1:] == ["m-deleted", "m-queued", "m-failed", "m-sent"]
    assert ids(sink, Filter(status="sent")) == (["m-sent"], 1)
    assert ids(sink, Filter(status="failed")) == (["m-failed"], 1)
    assert ids(sink, Filter(status="deleted")) == (["m-deleted"], 1)
    assert ids(sink, Filter(status="rejected"))[1] == 1
    assert ids(sink, Filter(workspace_id="ws1")) == (["m-failed", "m-sent"], 2)
    assert ids(sink, Filter(campaign_id="summer")) == (["m-failed"], 1)
    assert ids(sink, Filter(sender="zed@example.org")) == (["m-deleted"], 1)
    assert ids(sink, Filter(recipient="bob@example.com")) == (["m-failed", "m-sent"], 2)
    assert ids(sink, Filter(received_from=T0 + 60, received_to=T0 + 120)) == (["m-queued", "m-failed"], 2)
    assert ids(sink, Filter(status="queued", ids={"m-queued"})) == (["m-queued"], 1)
    assert ids(sink, Filter(status="queued", not_ids={"m-queued"})) == ([], 0)
    assert ids(sink, Filter(workspace_id="ws1", status="sent", recipient="bob@example.com")) == (["m-sent"], 1)
    # A page beyond the first, and the total of all pages.
    assert ids(sink, Filter(), limit=2, offset=1) == (["m-deleted", "m-queued"], 5)


def test_one_message_with_its_recipients_and_timeline(sink: HistorySink) -> None:
    populate(sink)
    with sink.engine.connect() as connection:
        found = messages.one(connection, "m-failed")
        timeline = events.timeline(connection, "m-failed")
        assert messages.one(connection, "m-nothing") is None
    assert found is not None
    row, recipients = found
    assert (row.status, row.recipients, row.campaign_id, row.held) == ("failed", 2, "summer", False)
    assert [(r.address, r.status, r.last_reply, r.remote_host) for r in recipients] == [
        ("bob@example.com", "sent", "250 ok", "mx.example.com"),
        ("carol@example.net", "failed", "550 5.1.1 unknown", "mx.example.com"),
    ]
    assert [type(e).__name__ for e in timeline] == ["Received", "Delivered", "Failed"]


def test_events_past_a_cursor_in_the_order_history_stored_them(sink: HistorySink) -> None:
    populate(sink)

    def pull(
        cursor: str | None, limit: int, now: float = LATER, **filters: object
    ) -> tuple[list[records.AnyEvent], str | None, bool]:
        with sink.engine.connect() as connection:
            found, cursor, more = events.after(connection, cursor, limit, now=now, **filters)  # type: ignore[arg-type]
        return [event for _, event in found], cursor, more

    everything, last, more = pull(None, 100)
    assert len(everything) == 10 and not more and last == stored_cursor(everything[-1])
    assert [e.id for e in everything] == sorted(e.id for e in everything)  # one batch: by id within it
    paged: list[records.AnyEvent] = []
    cursor = None
    while True:
        page, cursor, more = pull(cursor, 3)
        paged += page
        if not more:
            break
    assert paged == everything
    assert pull(last, 10) == ([], last, False)  # nothing new: the same cursor back
    delivered, _, _ = pull(None, 10, types={"delivered", "failed"})
    assert [type(e).__name__ for e in delivered] == ["Delivered", "Delivered", "Failed"]
    assert [e.message_id for e in pull(None, 10, message_id="m-queued")[0]] == ["m-queued", "m-queued"]
    # Events that happened long ago but reach history now (an events process that was down) come after
    # what a follower has read, not before it, and only once stored SETTLE seconds ago.
    late = message("m-late", "late@example.com")
    sink.clock = lambda: LATER
    sink.deliver(numbered([records.received(late, NODE, T0 - 86400)], 11))
    assert pull(last, 10, now=LATER + events.SETTLE / 2)[0] == []
    [arrived], _, _ = pull(last, 10, now=LATER + events.SETTLE * 2)
    assert arrived.message_id == "m-late"


def test_cleanup_counts_then_removes_only_settled_messages(sink: HistorySink) -> None:
    populate(sink)
    statuses = ["sent", "failed", "rejected", "deleted"]
    with sink.engine.begin() as connection:
        assert cleanup.remove_settled(connection, ["sent"], LATER, dry_run=True) == cleanup.Removed(1, 1, 2)
        assert cleanup.remove_settled(connection, statuses, T0 + 300, dry_run=True) == cleanup.Removed(0, 0, 0)
        assert cleanup.remove_settled(connection, statuses, LATER, dry_run=True) == cleanup.Removed(4, 4, 8)
    assert ids(sink, Filter())[1] == 5  # a dry run removes nothing
    with sink.engine.begin() as connection:
        assert cleanup.remove_settled(connection, statuses, LATER, dry_run=False) == cleanup.Removed(4, 4, 8)
    assert ids(sink, Filter()) == (["m-queued"], 1)
    with sink.engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(events.events)) == 2  # m-queued's


def test_leased_messages_are_those_a_runner_holds(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 24, NODE, events=())
    try:
        for name in ("a", "b", "c"):
            store.insert([(message(f"m-{name}", "bob@example.com"), b"body")])
        scheduler = Scheduler(store)
        leased = scheduler.lease("runner-1", 2, 600, now=T0 + 1)
        assert scheduler.leased(600, now=T0 + 2) == {m.id for m in leased} and len(leased) == 2
        assert scheduler.leased(600, now=T0 + 602) == set()  # the leases ran out
    finally:
        store.close()
