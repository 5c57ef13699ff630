"""The events runner on a real outbox: each sink gets every event at least once, in order, at its own pace."""

from __future__ import annotations

import time
from pathlib import Path

from fastmta.events.records import AnyEvent, Entry
from fastmta.events.runner import BATCH, EventsRunner
from fastmta.metrics import EventsMetrics
from fastmta.queue.records import Message, Recipient, new_message_id
from fastmta.queue.store import QueueStore


class RecordingSink:
    """A sink of the test's own: keeps what it is given, and fails the first `failures` deliveries."""

    def __init__(self, name: str, failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.offered: list[list[int]] = []
        self.kept: list[AnyEvent | None] = []
        self.closed = False

    def deliver(self, batch: list[Entry]) -> None:
        self.offered.append([entry.sequence for entry in batch])
        if self.failures:
            self.failures -= 1
            raise ConnectionError("receiver down")
        self.kept += [entry.event for entry in batch]

    def close(self) -> None:
        self.closed = True


def queue(store: QueueStore, count: int) -> list[str]:
    now = time.time()
    messages = [
        Message(id=new_message_id(now), sender="a@b.example", recipients=[Recipient(address="c@d.example")],
                received_at=now, size=1, next_attempt=now)
        for _ in range(count)
    ]  # fmt: skip
    store.insert([(m, b"body") for m in messages])
    return [m.id for m in messages]


def test_every_sink_gets_every_event_in_order_and_a_failing_one_catches_up(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node="n1")
    history, webhooks = RecordingSink("history"), RecordingSink("webhooks", failures=2)
    runner = EventsRunner(store.outbox, [history, webhooks], EventsMetrics("events", enabled=False))
    ids = queue(store, 3)
    now = time.time()
    assert runner.step(now) == 3  # history took them; webhooks failed
    assert [e.message_id for e in history.kept if e is not None] == ids and webhooks.kept == []
    assert store.outbox.pending() == 3  # held back for the sink that does not have them
    assert runner.step(now + 0.5) == 0 and len(webhooks.offered) == 1  # pausing: not offered again yet
    assert runner.lags(now + 0.5)["history"] == 0.0 and runner.lags(now + 0.5)["webhooks"] > 0.4
    assert runner.step(now + 1.0) == 0  # the second failure doubles the pause
    assert runner.step(now + 2.9) == 0 and len(webhooks.offered) == 2
    assert runner.step(now + 3.1) == 3
    assert webhooks.offered == [[1, 2, 3]] * 3  # the same batch again, not a later one
    assert [e.message_id for e in webhooks.kept if e is not None] == ids
    assert runner.step(now + 4) == 0  # a second after the last save: saved, and the outbox emptied
    assert store.outbox.pending() == 0 and runner.lags(now + 4) == {"history": 0.0, "webhooks": 0.0}
    runner.close()
    assert history.closed and webhooks.closed


def test_batches_are_bounded_and_ingress_never_waits_for_a_sink(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node="n1")
    stuck = RecordingSink("stuck", failures=1_000_000)
    runner = EventsRunner(store.outbox, [stuck], EventsMetrics("events", enabled=False))
    queue(store, BATCH + 10)
    runner.step(time.time())
    assert stuck.offered[0] == list(range(1, BATCH + 1))
    queue(store, 5)  # the store takes mail while the sink is down
    assert store.outbox.pending() == BATCH + 15


def test_a_restarted_runner_resumes_after_the_last_batch_a_sink_took(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node="n1")
    first = RecordingSink("history")
    runner = EventsRunner(store.outbox, [first], EventsMetrics("events", enabled=False))
    queue(store, 2)
    runner.step(time.time())
    queue(store, 2)
    again = RecordingSink("history")
    EventsRunner(store.outbox, [again], EventsMetrics("events", enabled=False)).step(time.time())
    assert first.offered == [[1, 2]] and again.offered == [[3, 4]]


def test_cursors_are_saved_once_a_second_and_a_killed_runner_offers_the_unsaved_again(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node="n1")
    first = RecordingSink("history")
    runner = EventsRunner(store.outbox, [first], EventsMetrics("events", enabled=False))
    now = time.time()
    queue(store, 2)
    runner.step(now)  # the first step saves
    queue(store, 2)
    runner.step(now + 0.5)  # taken, not yet saved: the outbox still holds them
    assert first.offered == [[1, 2], [3, 4]] and store.outbox.cursor("history") == 2 and store.outbox.pending() == 2
    assert runner.lags(now + 0.5) == {"history": 0.0}  # the runner's own view is current
    # Killed here (no close): the next runner offers what was never saved.
    again = RecordingSink("history")
    restarted = EventsRunner(store.outbox, [again], EventsMetrics("events", enabled=False))
    restarted.step(now + 0.6)
    assert again.offered == [[3, 4]]
    restarted.close()  # a clean stop saves
    assert store.outbox.cursor("history") == 4 and store.outbox.pending() == 0


def test_a_sink_with_a_batch_limit_takes_small_batches_and_the_others_keep_their_pace(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node="n1")
    history, webhook = RecordingSink("history"), RecordingSink("webhook")
    webhook.batch_limit = 20  # type: ignore[attr-defined]
    runner = EventsRunner(store.outbox, [history, webhook], EventsMetrics("events", enabled=False))
    queue(store, 50)
    runner.step(time.time())
    assert (len(history.kept), len(webhook.kept)) == (50, 20) and runner.behind  # more waits for the webhook
    runner.step(time.time())
    runner.step(time.time())
    assert webhook.offered[1:] == [list(range(21, 41)), list(range(41, 51))] and not runner.behind
    assert len(history.offered) == 1  # nothing new for history: not offered
    store.close()
