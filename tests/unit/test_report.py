"""The delivery report sink against a real HTTP receiver and real history databases: entries, batches,
rejected entries sent again and dead-lettered after report_max_attempts, failures retried whole."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from fastmta.config import Duration, EventsConfig
from fastmta.events import records
from fastmta.events.report import ReportFailed, ReportSink
from fastmta.history import dead_letters
from fastmta.history.schema import report_retries
from fastmta.metrics import EventsMetrics
from tests.receiver import Receiver, verified
from tests.unit.test_webhooks import NODE, letters, message, numbered, outcome

SECRET = "report-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def report(engine: sa.Engine, url: str, batch: int = 500, max_attempts: int = 10) -> ReportSink:
    settings = EventsConfig(report_url=url, report_secret=SECRET, report_batch=batch, report_max_attempts=max_attempts,
                            timeout=Duration(2), connect_timeout=Duration(2))  # fmt: skip
    return ReportSink(settings, engine, EventsMetrics("events", enabled=False), retry_after=0, look_every=0)


def retries(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(report_retries.c.event_id, report_retries.c.attempts)).all())


def test_outcomes_are_reported_in_batches_with_their_times_and_replies(engine: sa.Engine, receiver: Receiver) -> None:
    sink = report(engine, receiver.url, batch=2)
    msg = message("m1", "bob@example.com")
    sent = outcome(records.Delivered, msg, "250 2.0.0 ok")
    failed = outcome(records.Failed, msg, "550 5.1.1 no such user")
    deferred = outcome(records.Deferred, msg, "451 4.3.0 later")
    expired = outcome(records.Expired, msg, "451 4.3.0 still later")
    sink.deliver(numbered([records.received(msg, NODE, time.time()), sent, failed, deferred, expired]))
    first, second = receiver.bodies()
    assert first == {"delivery_report": [
        {"id": "m1", "recipient": "bob@example.com", "status": "sent", "ts_send": int(sent.at), "error": "", "event_id": sent.id},
        {"id": "m1", "recipient": "bob@example.com", "status": "error", "ts_error": int(failed.at),
         "error": "550 5.1.1 no such user", "event_id": failed.id},
    ]}  # fmt: skip
    assert [(e["status"], e["error"]) for e in second["delivery_report"]] == [("deferred", "451 4.3.0 later"), ("error", "451 4.3.0 still later")]
    assert all(verified(request, SECRET, time.time()) for request in receiver.requests)
    sink.deliver(numbered([records.received(msg, NODE, time.time())], 6))  # nothing to report: no request
    assert len(receiver.requests) == 2
    sink.close()


def test_rejected_entries_go_again_with_the_next_report_and_to_dead_letters_after_max_attempts(
    engine: sa.Engine, receiver: Receiver
) -> None:
    sink = report(engine, receiver.url, max_attempts=3)
    refused, taken = message("m-refused"), message("m-taken")
    first = [outcome(records.Delivered, refused, "250 ok"), outcome(records.Delivered, taken, "250 ok")]
    receiver.rejected = ["m-refused"]
    sink.deliver(numbered(first))
    assert retries(engine) == {first[0].id: 1}
    later = outcome(records.Failed, taken, "550 no")
    sink.deliver(numbered([later], 3))  # the next cycle: the rejected entry first, then the new one
    assert [e["event_id"] for e in receiver.bodies()[1]["delivery_report"]] == [first[0].id, later.id]
    assert retries(engine) == {first[0].id: 2}
    sink.deliver([])  # the third rejection: given up
    assert retries(engine) == {}
    (letter,) = letters(engine)
    assert (letter.sink, letter.event, letter.event_id, letter.attempts) == ("report", "delivery_report", first[0].id, 3)
    assert letter.reason == "rejected 3 times" and letter.payload["id"] == "m-refused"
    # Accepted at last, when an operator replays it.
    receiver.rejected = []
    with engine.begin() as connection:
        dead_letters.request_replay(connection, letter.id, time.time())
    sink.deliver([])
    assert receiver.bodies()[-1] == {"delivery_report": [letter.payload]}
    (replayed,) = letters(engine)
    assert replayed.replayed_at is not None and replayed.replay_requested_at is None
    sink.close()


def test_a_rejected_entry_accepted_later_leaves_the_retries(engine: sa.Engine, receiver: Receiver) -> None:
    sink = report(engine, receiver.url)
    event = outcome(records.Deferred, message("m1"), "451 later")
    receiver.rejected = ["m1"]
    sink.deliver(numbered([event]))
    receiver.rejected = []
    sink.deliver([])
    assert retries(engine) == {} and letters(engine) == []
    assert [body["delivery_report"][0]["event_id"] for body in receiver.bodies()] == [event.id, event.id]
    sink.close()


@pytest.mark.parametrize(("answer", "error"), [
    ("fail", "HTTP 500"), ("refuse", "HTTP 400"), ("not-json", "not the report's answer"), ("not-ok", "ok is not true"),
    ("garbage", "Protocol"),
])  # fmt: skip
def test_any_other_answer_fails_the_whole_report_and_it_goes_again(
    engine: sa.Engine, receiver: Receiver, answer: str, error: str
) -> None:
    sink = report(engine, receiver.url)
    events = [outcome(records.Delivered, message(f"m{n}"), "250 ok") for n in range(2)]
    receiver.script = [answer]
    with pytest.raises(ReportFailed, match=error):
        sink.deliver(numbered(events))
    sink.deliver(numbered(events))
    first, second = receiver.bodies()
    assert first == second and len(first["delivery_report"]) == 2
    assert retries(engine) == {} and letters(engine) == []
    sink.close()
