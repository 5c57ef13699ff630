"""The webhooks sink against a real HTTP receiver and real history databases: signatures, filters,
batches, retries, dead letters after retry_for or a refusal, and replays asked for through the table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import sqlalchemy as sa

from fastmta.config import ConfigError, Duration, EventsConfig, WebhookConfig, load
from fastmta.events import records, sinks
from fastmta.events.history import HistorySink
from fastmta.events.names import WEBHOOK_EVENTS, WEBHOOK_NAMES
from fastmta.events.records import AnyEvent, Entry
from fastmta.events.report import ReportSink
from fastmta.events.runner import EventsRunner
from fastmta.events.webhooks import ReceiverFailing, WebhookSink
from fastmta.history import dead_letters
from fastmta.history.dead_letters import DeadLetter
from fastmta.metrics import EventsMetrics
from fastmta.queue.records import MESSAGE_ENCODER, Message, Recipient
from fastmta.queue.store import QueueStore
from tests.receiver import Receiver, verified

SECRET = "s3cret"
NODE = "node-a"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def settings(url: str, retry_for: float = 3600, timeout: float = 2.0, **hook: Any) -> EventsConfig:
    hook.setdefault("concurrency", 1)  # requests in order, one at a time, unless a test asks for more
    return EventsConfig(
        webhooks=[WebhookConfig(url=url, secret=SECRET, **hook)],
        retry_for=Duration(retry_for),
        timeout=Duration(timeout),
        connect_timeout=Duration(timeout),
    )


def webhook(engine: sa.Engine, events: EventsConfig) -> WebhookSink:
    return WebhookSink(events.webhooks[0], events, engine, EventsMetrics("events", enabled=False), look_every=0)


def message(id: str = "m1", *addresses: str) -> Message:
    now = time.time()
    return Message(id=id, sender="alice@example.org", recipients=[Recipient(address=a) for a in addresses or ("bob@example.com",)],
                   received_at=now, size=10, next_attempt=now)  # fmt: skip


def outcome(kind: type[records.Attempted], msg: Message, reply: str) -> AnyEvent:
    recipient = Recipient(address=msg.recipients[0].address, attempts=1, last_reply=reply, remote_host="mx.example.com")
    return cast(AnyEvent, records.attempted(kind, msg, recipient, NODE, time.time()))


def numbered(events: list[AnyEvent], start: int = 1) -> list[Entry]:
    return [Entry.of(sequence, event) for sequence, event in enumerate(events, start)]


def letters(engine: sa.Engine) -> list[DeadLetter]:
    with engine.connect() as connection:
        return dead_letters.page(connection, None, 1000, 0)[0]


def test_every_event_type_has_a_webhook_name() -> None:
    tags = {kind.__struct_config__.tag for kind in AnyEvent.__args__}  # type: ignore[attr-defined]
    assert set(WEBHOOK_NAMES) == tags
    assert "message.sent" in WEBHOOK_EVENTS and "auth.failed" in WEBHOOK_EVENTS


def test_each_event_is_posted_signed_with_its_id(engine: sa.Engine, receiver: Receiver) -> None:
    sink = webhook(engine, settings(receiver.url))
    msg = message()
    received = records.received(msg, NODE, time.time())
    delivered = outcome(records.Delivered, msg, "250 2.0.0 ok")
    sink.deliver(numbered([received, delivered]))
    first, second = receiver.requests
    assert [first.json()["event"], second.json()["event"]] == ["message.received", "message.sent"]
    body = second.json()
    assert body["id"] == delivered.id and body["timestamp"] == int(delivered.at)
    assert body["data"]["type"] == "delivered" and body["data"]["message_id"] == "m1"
    assert body["data"]["recipient"] == "bob@example.com" and body["data"]["reply"] == "250 2.0.0 ok"
    assert first.json()["data"]["recipients"] == ["bob@example.com"] and first.json()["data"]["id"] == first.json()["id"]
    assert second.headers["x-fastmta-event-id"] == delivered.id
    assert second.headers["content-type"] == "application/json"
    assert verified(first, SECRET, time.time()) and verified(second, SECRET, time.time())
    assert not verified(second, "wrong", time.time())
    assert not verified(second, SECRET, time.time() + 3600)  # outside the replay window
    sink.close()


def test_only_the_events_asked_for_and_in_batches(engine: sa.Engine, receiver: Receiver) -> None:
    sink = webhook(engine, settings(receiver.url, events=["message.sent", "message.failed"], batch=2))
    msg = message()
    events = [
        records.received(msg, NODE, time.time()),
        outcome(records.Delivered, msg, "250 ok"),
        outcome(records.Deferred, msg, "451 later"),
        outcome(records.Failed, msg, "550 no"),
        outcome(records.Expired, msg, "451 still later"),
    ]
    sink.deliver(numbered(events))
    bodies = receiver.bodies()
    assert [[item["event"] for item in body] for body in bodies] == [["message.sent", "message.failed"], ["message.failed"]]
    assert bodies[1][0]["data"]["type"] == "expired"
    assert [item["id"] for item in bodies[0]] == [events[1].id, events[3].id]
    assert "x-fastmta-event-id" not in receiver.requests[0].headers  # 500 ids would be past a server's 8 KB a line
    sink.close()


def test_a_failing_receiver_holds_the_line_until_retry_for_then_its_events_are_dead_letters(
    engine: sa.Engine, receiver: Receiver
) -> None:
    sink = webhook(engine, settings(receiver.url, retry_for=0.5))
    msg = message()
    events = [outcome(records.Delivered, message(f"m{n}"), "250 ok") for n in range(3)]
    receiver.answer = "fail"
    for _ in range(2):
        with pytest.raises(ReceiverFailing, match="HTTP 500: broken"):
            sink.deliver(numbered(events))
    assert [body["id"] for body in receiver.bodies()] == [events[0].id] * 2  # head of line, nothing past it
    assert letters(engine) == []
    time.sleep(0.6)
    sink.deliver(numbered(events))  # past retry_for: one more request, then the batch is given up
    assert len(receiver.requests) == 3
    kept = letters(engine)
    assert [letter.event_id for letter in kept] == [event.id for event in events]
    assert all(letter.sink == sink.name and letter.event == "message.sent" for letter in kept)
    assert kept[0].attempts == 3 and kept[0].reason == "failing for 500ms: HTTP 500: broken"
    assert kept[1].reason.startswith("failing for 500ms") and kept[1].attempts == 0  # not sent at all
    assert kept[0].payload["id"] == events[0].id and kept[0].payload["data"]["message_id"] == "m0"
    # Still down: the next batch gets one request; back up: everything flows, and the clock starts afresh.
    later = [outcome(records.Failed, msg, "550 no"), outcome(records.Failed, msg, "550 no again")]
    sink.deliver(numbered(later, 4))
    assert len(receiver.requests) == 4 and len(letters(engine)) == 5
    receiver.answer = "ok"
    newest = [outcome(records.Delivered, msg, "250 ok")]
    sink.deliver(numbered(newest, 6))
    receiver.answer = "fail"
    with pytest.raises(ReceiverFailing):
        sink.deliver(numbered([outcome(records.Delivered, msg, "250 ok")], 7))
    sink.close()


def test_a_refusal_dead_letters_those_events_at_once_and_the_rest_follow(engine: sa.Engine, receiver: Receiver) -> None:
    sink = webhook(engine, settings(receiver.url))
    msg = message()
    events = [outcome(records.Delivered, msg, "250 ok"), outcome(records.Deferred, msg, "451 later")]
    receiver.script = ["refuse"]
    sink.deliver(numbered(events))
    assert [body["id"] for body in receiver.bodies()] == [events[0].id, events[1].id]
    (letter,) = letters(engine)
    assert (letter.event_id, letter.reason, letter.attempts) == (events[0].id, "refused: HTTP 400: no such customer", 1)
    sink.deliver(numbered(events))  # offered again (a crash before the cursor moved): one letter still
    assert len(letters(engine)) == 1
    sink.close()


@pytest.mark.parametrize("answer", ["hang", "garbage"])
def test_no_answer_in_time_or_no_http_is_a_failure_to_retry(engine: sa.Engine, receiver: Receiver, answer: str) -> None:
    sink = webhook(engine, settings(receiver.url, timeout=0.5))
    receiver.script = [answer]
    event = outcome(records.Delivered, message(), "250 ok")
    started = time.monotonic()
    with pytest.raises(ReceiverFailing, match="Timeout" if answer == "hang" else "Protocol"):
        sink.deliver(numbered([event]))
    assert time.monotonic() - started < 3
    sink.deliver(numbered([event]))  # the same event again, now taken
    assert [body["id"] for body in receiver.bodies()] == [event.id, event.id]
    assert letters(engine) == []
    sink.close()


def test_a_replay_asked_for_in_the_table_is_sent_again_and_returns_there_if_it_fails(
    engine: sa.Engine, receiver: Receiver
) -> None:
    sink = webhook(engine, settings(receiver.url))
    event = outcome(records.Failed, message(), "550 no")
    receiver.script = ["refuse"]
    sink.deliver(numbered([event]))
    (letter,) = letters(engine)
    sink.deliver([])  # nothing asked for: nothing sent
    assert len(receiver.requests) == 1
    with engine.begin() as connection:
        marked = dead_letters.request_replay(connection, letter.id, time.time())
    assert marked is not None and marked.replay_requested_at is not None
    receiver.script = ["fail"]
    sink.deliver([])
    (failed,) = letters(engine)
    assert failed.replay_requested_at is None and failed.replayed_at is None
    assert (failed.reason, failed.attempts) == ("replay: HTTP 500: broken", 2)
    with engine.begin() as connection:
        dead_letters.request_replay(connection, letter.id, time.time())
    sink.deliver([])
    (done,) = letters(engine)
    assert done.replayed_at is not None and done.replay_requested_at is None
    assert [body["id"] for body in receiver.bodies()] == [event.id] * 3
    assert verified(receiver.requests[-1], SECRET, time.time())
    with engine.begin() as connection:
        assert dead_letters.request_replay(connection, 10**6, time.time()) is None
    sink.close()


def test_a_received_event_stored_as_its_record_is_posted_dead_lettered_and_replayed_as_the_same_body(
    engine: sa.Engine, receiver: Receiver
) -> None:
    sink = webhook(engine, settings(receiver.url))
    msg = message("m7", "carol@example.com")
    stored = records.received_entry(MESSAGE_ENCODER.encode(msg), NODE, 1_700_000_000.75, writer=12345)
    entry = Entry(41, stored)
    receiver.script = ["refuse"]
    sink.deliver([entry])
    (first,) = receiver.requests
    assert first.headers["x-fastmta-event-id"] == first.json()["id"] == entry.head.id  # type: ignore[union-attr]
    assert first.json()["event"] == "message.received" and first.json()["timestamp"] == 1_700_000_000
    assert first.json()["data"] == msgspec.json.decode(entry.json())
    assert first.json()["data"]["recipients"] == ["carol@example.com"] and first.json()["data"]["message_id"] == "m7"
    (letter,) = letters(engine)
    assert (letter.event_id, letter.event, letter.payload) == (first.json()["id"], "message.received", first.json())
    with engine.begin() as connection:
        dead_letters.request_replay(connection, letter.id, time.time())
    sink.deliver([])
    assert receiver.requests[1].body == first.body
    only_sent = webhook(engine, settings(receiver.url, events=["message.sent"]))
    only_sent.deliver([Entry(42, stored)])  # not asked for: no request, nothing made
    assert len(receiver.requests) == 2
    sink.close()
    only_sent.close()


class Failing:
    """A sink of the test's own that never takes a batch, with the webhook sinks' longer pause."""

    name = "slow"
    max_pause = 600.0
    idle_calls = True

    def __init__(self) -> None:
        self.offered: list[list[int]] = []

    def deliver(self, batch: list[Entry]) -> None:
        self.offered.append([entry.sequence for entry in batch])
        raise ConnectionError("down")

    def close(self) -> None:
        pass


def test_the_runner_pauses_a_sink_up_to_its_max_pause_and_calls_an_idle_calls_sink_with_nothing(tmp_path: Path) -> None:
    store = QueueStore(tmp_path, 1 << 26, node=NODE)
    sink = Failing()
    runner = EventsRunner(store.outbox, [sink], EventsMetrics("events", enabled=False))
    now = 1_000_000.0
    runner.step(now)
    assert sink.offered == [[]]  # an empty outbox, and still called
    for _ in range(10):  # pauses 1, 2, 4 ... 512 s
        now += 1000
        runner.step(now)
    now += 1000
    runner.step(now)  # the 12th failure: 600 s, past the runner's own 60 s
    runner.step(now + 599)
    assert len(sink.offered) == 12
    runner.step(now + 601)
    assert len(sink.offered) == 13
    store.close()


def test_webhook_config_and_environment(tmp_path: Path) -> None:
    config = load(environ={"SMTP_WEBHOOK_URL": "https://hooks.example/in", "SMTP_WEBHOOK_EVENTS": "message.sent, message.failed",
                           "SMTP_WEBHOOK_SECRET": "k"})  # fmt: skip
    (hook,) = config.events.webhooks
    assert (hook.url, hook.events, hook.secret, hook.batch) == ("https://hooks.example/in", ["message.sent", "message.failed"], "k", 1)
    assert config.events_wanted and not config.history.enabled
    assert config.events_read == {"delivered", "failed", "expired"}  # what the webhook is sent: no received events
    assert (config.events.retry_for, config.events.max_pause, config.events.timeout) == (8 * 3600, 600, 10)
    assert hook.sink_name == load(environ={"SMTP_WEBHOOK_URL": "https://hooks.example/in"}).events.webhooks[0].sink_name
    assert hook.wants("message.sent") and not hook.wants("message.received")
    assert not load(environ={}).events_wanted  # history is off by default, nothing else asks for events
    assert load(environ={"FASTMTA_HISTORY_ENABLED": "true"}).events_read == set(WEBHOOK_NAMES)
    reported = load(environ={"FASTMTA_HISTORY_ENABLED": "false", "FASTMTA_EVENTS_REPORT_URL": "http://r.example/r"}).events_read
    assert reported == {"delivered", "failed", "expired", "deferred"}  # the outcomes of attempts (test_report.py)
    path = tmp_path / "c.toml"
    path.write_text('[events]\nretry_for = "2h"\n[[events.webhooks]]\nurl = "http://a.example/"\nname = "crm"\nevents = ["*"]\n'
                    '[[events.webhooks]]\nurl = "http://a.example/"\nbatch = 50\n')  # fmt: skip
    config = load(path, environ={"SMTP_WEBHOOK_URL": "http://b.example/"})
    assert [hook.sink_name for hook in config.events.webhooks][:1] == ["webhook:crm"] and len(config.events.webhooks) == 3
    assert config.events.retry_for == 7200 and config.events.webhooks[1].batch == 50
    for environ, error in [
        ({"SMTP_WEBHOOK_URL": "ftp://x.example/"}, r"^events\.webhooks\[0\]\.url: not an http:// or https:// URL"),
        ({"SMTP_WEBHOOK_URL": "http://x.example/", "SMTP_WEBHOOK_EVENTS": "message.snt"}, r"^events\.webhooks\[0\]\.events\[0\]: no such event"),
        ({"SMTP_WEBHOOK_EVENTS": "message.sent"}, r"^SMTP_WEBHOOK_EVENTS and SMTP_WEBHOOK_SECRET describe"),
        ({"FASTMTA_EVENTS_TIMEOUT": "0s"}, r"^events\.timeout: must be more than 0s"),
        ({"FASTMTA_EVENTS_REPORT_URL": "report.example"}, r"^events\.report_url: not an http"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=error):
            load(environ=environ)
    path.write_text('[[events.webhooks]]\nurl = "http://a.example/"\n[[events.webhooks]]\nurl = "http://a.example/"\n')
    with pytest.raises(ConfigError, match=r"^events\.webhooks\[1\]: the same name as webhooks\[0\]"):
        load(path, environ={})


def test_configured_sinks_history_then_webhooks_then_report_and_the_database_without_history(tmp_path: Path) -> None:
    environ = {"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "SMTP_WEBHOOK_URL": "http://a.example/",
               "FASTMTA_EVENTS_REPORT_URL": "http://r.example/", "FASTMTA_HISTORY_ENABLED": "false"}  # fmt: skip
    made = sinks.configured(load(environ=environ))
    assert [type(sink) for sink in made] == [WebhookSink, ReportSink] and made[1].name == "report"
    assert not (tmp_path / "history.db").exists()  # made at the first delivery, so a database down at start is waited for
    made[0].deliver([])
    assert (tmp_path / "history.db").exists()  # dead letters need it though history is off
    for sink in made:
        sink.close()
    made = sinks.configured(load(environ={**environ, "FASTMTA_HISTORY_ENABLED": "true"}))
    assert [type(sink) for sink in made] == [HistorySink, WebhookSink, ReportSink]
    for sink in made:
        sink.close()
    assert sinks.configured(load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_ENABLED": "false"})) == []


def test_payload_data_is_the_whole_event() -> None:
    from fastmta.events.webhooks import payload

    event = records.AuthFailed(id=records.new_event_id(), at=1_700_000_000.5, node=NODE, client_ip="192.0.2.1", username="eve")
    made = payload(Entry.of(1, event), {"auth.failed"})
    assert made is not None and made[0] == event.id
    body = msgspec.json.decode(made[1])
    assert (body["id"], body["event"], body["timestamp"]) == (event.id, "auth.failed", 1_700_000_000)
    assert body["data"] == {"type": "auth_failed", "id": event.id, "at": 1_700_000_000.5, "node": NODE, "message_id": "",
                            "recipient": "", "client_ip": "192.0.2.1", "username": "eve", "listener": ""}  # fmt: skip


def test_events_reach_a_receiver_while_the_database_is_unreachable(receiver: Receiver) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = sa.create_engine(f"postgresql+psycopg://fastmta@127.0.0.1:{port}/h")
    sink = webhook(down, settings(receiver.url))
    msg = message()
    sink.deliver(numbered([records.received(msg, NODE, time.time())]))  # no replays looked for, and no failure
    assert [body["event"] for body in receiver.bodies()] == ["message.received"]
    receiver.answer = "refuse"  # a refusal needs the database for its dead letter: offered again later
    with pytest.raises(sa.exc.OperationalError):
        sink.deliver(numbered([outcome(records.Delivered, msg, "250 ok")], start=2))
    sink.close()


def test_requests_go_several_at_once_and_every_event_arrives(engine: sa.Engine, receiver: Receiver) -> None:
    receiver.delay = 0.1
    sink = webhook(engine, settings(receiver.url, concurrency=8))
    msgs = [message(f"m{n}") for n in range(16)]
    started = time.monotonic()
    sink.deliver(numbered([records.received(m, NODE, time.time()) for m in msgs]))
    elapsed = time.monotonic() - started
    assert sorted(body["data"]["message_id"] for body in receiver.bodies()) == sorted(m.id for m in msgs)
    assert elapsed < 16 * 0.1 / 2  # one at a time would take 1.6 s; eight at once about 0.2 s
    sink.close()


def test_a_receiver_that_refuses_connections_is_retried_then_its_events_dead_lettered(engine: sa.Engine) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    event = outcome(records.Delivered, message(), "250 ok")
    sink = webhook(engine, settings(url))
    with pytest.raises(ReceiverFailing, match="ConnectionRefusedError"):
        sink.deliver(numbered([event]))
    sink.close()
    sink = webhook(engine, settings(url, retry_for=0))
    sink.deliver(numbered([event]))
    (letter,) = letters(engine)
    assert letter.event_id == event.id and "ConnectionRefusedError" in letter.reason
    sink.close()


def test_a_proxy_from_the_environment_is_asked_for_the_whole_url(
    engine: sa.Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlsplit

    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"http://user:pa%40ss@127.0.0.1:{urlsplit(receiver.url).port}")  # the receiver plays it
    sink = webhook(engine, settings("http://hooks.example.invalid/hook"))
    event = outcome(records.Delivered, message(), "250 ok")
    sink.deliver(numbered([event]))
    (request,) = receiver.requests
    assert request.path == "http://hooks.example.invalid/hook" and request.json()["id"] == event.id
    assert request.headers["proxy-authorization"] == "Basic dXNlcjpwYUBzcw=="  # user:pa@ss
    sink.close()
