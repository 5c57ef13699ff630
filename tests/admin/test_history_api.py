"""The history API against a real server with [history] on: messages filtered and paged, one message in full,
events pulled and streamed, and the cleanup. Old history is fed through the history sink, as the events process feeds it."""

from __future__ import annotations

import datetime
import re
import smtplib
import time
from collections.abc import Iterator
from email.message import EmailMessage

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from fastmta.config import load
from fastmta.events.history import HistorySink
from fastmta.events.records import Event
from fastmta.history import db
from fastmta.queue.schedule import Scheduler
from fastmta.queue.store import QueueStore
from tests.admin.conftest import Admin, wait_until
from tests.admin.test_realtime import Stream
from tests.admin.test_schema import CHECKS, HISTORY
from tests.conftest import Server
from tests.unit.test_history_queries import T0, populate, stored_cursor

OLD = T0 - 20 * 365 * 86400  # 2003: what the cleanup test removes, well before T0's history


class History(Admin):
    """The server, tokens, and the sink that feeds its history the way the events process does."""

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        config = load(server.config_path)
        self.sink = HistorySink(db.engine(db.url(config)), config.history.keep)
        self.store = QueueStore.opened(config)
        self.live = self.send_one(b"Subject: first\r\n\r\nhello\r\n")
        # The events process has migrated history and written the message's received event.
        assert wait_until(lambda: self.timeline(self.live), timeout=30), server.log()
        self.story = populate(self.sink)

    def send_one(self, content: bytes, recipient: str = "bob@example.org") -> str:
        with smtplib.SMTP("127.0.0.1", self.server.port, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("alice@example.com")
            smtp.rcpt(recipient)
            code, reply = smtp.data(content)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]

    def get(self, path: str, role: str = "viewer", **params: object) -> httpx.Response:
        with self.client(role) as client:
            return client.get(path, params=params)

    def timeline(self, message_id: str) -> list[str]:
        response = self.get(f"/api/v1/messages/{message_id}")
        return [event["type"] for event in response.json()["data"]["events"]] if response.status_code == 200 else []


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    server = Server(
        tmp_path_factory.mktemp("history"),
        {"smtp": {"workers": 1}, "admin": {"enabled": True}, "history": {"enabled": True}},
    )
    server.start()
    try:
        made = History(server)
        yield made
        made.sink.close()
        made.store.close()
    finally:
        server.stop()


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]["items"]]


def links(response: httpx.Response) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers["link"])}


def test_filters(history: History) -> None:
    old = {"date_to": str(T0 + 1000)}
    assert ids(history.get("/api/v1/messages", workspace_id="ws1")) == ["m-failed", "m-sent"]
    assert ids(history.get("/api/v1/messages", campaign_id="summer")) == ["m-failed"]
    assert ids(history.get("/api/v1/messages", status="sent", **old)) == ["m-sent"]
    assert ids(history.get("/api/v1/messages", status="failed", **old)) == ["m-failed"]
    assert ids(history.get("/api/v1/messages", status="deleted", **old)) == ["m-deleted"]
    assert len(ids(history.get("/api/v1/messages", status="rejected", **old))) == 1
    assert ids(history.get("/api/v1/messages", **{"from": "zed@example.org"})) == ["m-deleted"]
    assert ids(history.get("/api/v1/messages", to="bob@example.com")) == ["m-failed", "m-sent"]
    # ISO 8601 (with and without an offset) and unix seconds name the same moments.
    start = datetime.datetime.fromtimestamp(T0 + 60, datetime.UTC)
    iso = history.get("/api/v1/messages", date_from=start.isoformat(), date_to=str(T0 + 120))
    naive = history.get("/api/v1/messages", date_from=start.replace(tzinfo=None).isoformat(), date_to=str(T0 + 120))
    assert ids(iso) == ids(naive) == ["m-queued", "m-failed"]
    # The live message, sent to this server, is among the queued ones today.
    assert history.live in ids(history.get("/api/v1/messages", status="queued", date_from=str(T0 + 1000)))


def test_pages_with_total_and_link_headers(history: History) -> None:
    first = history.get("/api/v1/messages", date_to=str(T0 + 1000), limit=2)
    body = first.json()
    assert body["success"] is True and first.headers["x-total-count"] == "5"
    assert {k: body["data"][k] for k in ("total", "limit", "offset", "has_more")} == {
        "total": 5, "limit": 2, "offset": 0, "has_more": True
    }
    assert set(links(first)) == {"first", "next"}
    with history.client("viewer") as client:
        second = client.get(links(first)["next"])
        assert "date_to=" in links(first)["next"]  # the filters go along
        assert set(links(second)) == {"first", "next", "prev"} and second.json()["data"]["offset"] == 2
        third = client.get(links(second)["next"])
        assert ids(third) == ["m-sent"] and third.json()["data"]["has_more"] is False
        assert set(links(third)) == {"first", "prev"}
        assert ids(client.get(links(third)["first"])) == ids(first)
    assert len(set(ids(first) + ids(second) + ids(third))) == 5


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/messages", {"date_from": "yesterday"}, "date_from"),
        ("/api/v1/messages", {"date_to": "2024-13-45"}, "date_to"),
        ("/api/v1/messages", {"status": "lost"}, "status"),
        ("/api/v1/messages", {"limit": "1001"}, "limit"),
        ("/api/v1/events", {"type": "delivered,bounced"}, "type"),
        ("/api/v1/events", {"after": "not-a-cursor"}, "after"),
        ("/api/v1/events/stream", {"type": "opened"}, "type"),
    ],
)
def test_bad_input_names_the_field(history: History, path: str, params: dict[str, str], field: str) -> None:
    response = history.get(path, **params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and field in error["message"] and error["code"] == "VALIDATION_ERROR"


def test_processing_is_a_queued_message_a_runner_holds(history: History) -> None:
    message_id = history.send_one(b"Subject: lease me\r\n\r\nhi\r\n", "processing@example.org")
    assert wait_until(lambda: history.timeline(message_id))
    recent = {"date_from": str(time.time() - 600)}
    assert message_id not in ids(history.get("/api/v1/messages", status="processing", **recent))
    # This server has no delivery runner: the test takes the lease one would.
    leased = Scheduler(history.store).lease("test-runner", 1000, 600)
    assert message_id in {m.id for m in leased}
    assert message_id in ids(history.get("/api/v1/messages", status="processing", **recent))
    assert message_id not in ids(history.get("/api/v1/messages", status="queued", **recent))
    assert history.get(f"/api/v1/messages/{message_id}").json()["data"]["message"]["status"] == "processing"


def multipart() -> bytes:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "alice@example.com", "bob@example.org", "Report attached"
    mail.set_content("Plain text, naïve.\n")
    mail.add_alternative("<p>HTML text</p>\n", subtype="html")
    mail.add_attachment(b"\x00\x01" * 100, maintype="application", subtype="octet-stream", filename="data.bin")
    return mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))


def test_one_message_with_its_body_parts_recipients_and_timeline(history: History) -> None:
    message_id = history.send_one(multipart())
    assert wait_until(lambda: history.timeline(message_id))
    data = history.get(f"/api/v1/messages/{message_id}").json()["data"]
    assert data["message"]["subject"] == "Report attached" and data["message"]["status"] == "queued"
    assert [(r["address"], r["status"], r["attempts"]) for r in data["recipients"]] == [("bob@example.org", "queued", 0)]
    assert [e["type"] for e in data["events"]] == ["received"] and data["events"][0]["message_id"] == message_id
    body = data["body"]
    assert ("Subject", "Report attached") in [(h["name"], h["value"]) for h in body["headers"]]
    parts = {part["content_type"]: part for part in body["parts"]}
    assert list(parts) == ["text/plain", "text/html", "application/octet-stream"]
    assert parts["text/plain"]["content"] == "Plain text, naïve.\r\n" and parts["text/plain"]["charset"] == "utf-8"
    assert parts["text/html"]["content"] == "<p>HTML text</p>\r\n" and parts["text/html"]["truncated"] is False
    attachment = parts["application/octet-stream"]
    assert (attachment["filename"], attachment["size"], attachment["attachment"]) == ("data.bin", 200, True)
    assert attachment["content"] is None
    # A message settled long ago: history without a body.
    old = history.get("/api/v1/messages/m-failed").json()["data"]
    assert old["body"] is None and [e["type"] for e in old["events"]] == ["received", "delivered", "failed"]
    assert [(r["status"], r["remote_host"]) for r in old["recipients"]] == [("sent", "mx.example.com"), ("failed", "mx.example.com")]
    missing = history.get("/api/v1/messages/0000000000NOPE00")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "RESOURCE_NOT_FOUND"


def failed_events(history: History) -> list[Event]:
    return [e for e in history.story if e.message_id == "m-failed"]


def test_events_pulled_in_pages_past_a_cursor(history: History) -> None:
    failed = failed_events(history)
    expected = [e.id for e in failed]
    first = history.get("/api/v1/events", message_id="m-failed", limit=2).json()["data"]
    assert [e["id"] for e in first["items"]] == expected[:2] and first["has_more"] is True
    assert first["next_cursor"] == stored_cursor(failed[1])
    rest = history.get("/api/v1/events", message_id="m-failed", after=first["next_cursor"]).json()["data"]
    assert [e["id"] for e in rest["items"]] == expected[2:] and rest["has_more"] is False
    assert rest["next_cursor"] == stored_cursor(failed[2])
    chosen = history.get("/api/v1/events", message_id="m-failed", type="received,failed").json()["data"]["items"]
    assert [(e["type"], e.get("reply")) for e in chosen] == [("received", None), ("failed", "550 5.1.1 unknown")]
    # Without a filter, from the oldest: the story of T0 before anything sent today.
    everything = history.get("/api/v1/events", limit=10).json()["data"]["items"]
    assert [e["id"] for e in everything] == sorted(e.id for e in history.story)


def stream_ids(stream: Stream, count: int) -> list[str]:
    found: list[str] = []
    while len(found) < count:
        found += re.findall(rb"^id: (\S+)$", stream.event(), re.MULTILINE)
    return [value.decode() for value in found]


def test_the_stream_resumes_after_last_event_id(history: History) -> None:
    expected = [stored_cursor(e) for e in failed_events(history)]
    token, port = history.tokens["viewer"], history.server.admin_port
    path = "/api/v1/events/stream?message_id=m-failed"
    stream = Stream(port, token, path, f"Last-Event-ID: {expected[0]}\r\n")
    try:
        assert stream.status == 200 and "text/event-stream" in stream.head
        assert stream_ids(stream, 2) == expected[1:]
    finally:
        stream.close()
    again = Stream(port, token, path, f"Last-Event-ID: {expected[1]}\r\n")
    try:
        assert stream_ids(again, 1) == expected[2:]
    finally:
        again.close()


def test_the_stream_without_a_cursor_follows_new_events(history: History) -> None:
    stream = Stream(history.server.admin_port, history.tokens["viewer"], "/api/v1/events/stream?type=received")
    try:
        assert stream.status == 200
        message_id = history.send_one(b"Subject: followed\r\n\r\nhi\r\n")
        while True:
            event = stream.event()
            if b"event: received" in event:
                break
        assert f'"message_id":"{message_id}"'.encode() in event
    finally:
        stream.close()


def test_cleanup_counts_on_a_dry_run_then_removes_and_is_audited(history: History) -> None:
    populate(history.sink, OLD, "old")
    days = int((time.time() - (OLD + 86400)) // 86400)  # the old story is older, T0's is not
    asked = {"older_than_days": days, "include_sent": True, "include_failed": True, "include_rejected": True}
    with history.client("admin") as client:
        dry = client.post("/api/v1/admin/maintenance/cleanup", json={**asked, "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert dry.json()["data"]["removed"] == {"messages": 3, "recipients": 3, "events": 6}
        assert dry.json()["data"]["statuses"] == ["sent", "failed", "rejected"]
        assert len(ids(client.get("/api/v1/messages", params={"date_to": str(OLD + 1000)}))) == 5
        done = client.post("/api/v1/admin/maintenance/cleanup", json=asked)
        assert done.json()["data"]["removed"] == {"messages": 3, "recipients": 3, "events": 6}
        # The queued and the deleted message stay; T0's story is untouched.
        assert ids(client.get("/api/v1/messages", params={"date_to": str(OLD + 1000)})) == ["old-deleted", "old-queued"]
        assert client.get("/api/v1/messages", params={"date_to": str(T0 + 1000)}).json()["data"]["total"] == 7
        audit = client.get("/api/v1/audit", params={"action": "history.cleanup"}).json()["data"]["items"]
        operator = client.post(
            "/api/v1/admin/maintenance/cleanup", json=asked, headers={"Authorization": f"Bearer {history.tokens['operator']}"}
        )
    assert operator.status_code == 403
    assert [(entry["after"]["dry_run"], entry["after"]["removed"]["messages"]) for entry in audit] == [(False, 3), (True, 3)]
    assert {entry["actor"] for entry in audit} == {"token:test-admin"} and audit[0]["target"] == "history"


def test_history_off_is_503_and_the_queue_still_answers(admin: Admin) -> None:
    """The package's server runs without history."""
    [message_id] = admin.send(1)
    with admin.client("viewer") as client:
        for path in ("/api/v1/messages", "/api/v1/events", "/api/v1/events/stream"):
            response = client.get(path)
            assert response.status_code == 503 and response.json()["error"]["code"] == "HISTORY_DISABLED", path
        found = client.get(f"/api/v1/messages/{message_id}").json()["data"]
    assert found["message"]["id"] == message_id and found["message"]["status"] in ("queued", "processing")
    assert found["events"] == [] and [r["address"] for r in found["recipients"]] == ["bob@example.org"]
    assert found["body"]["parts"][0]["content"].rstrip() == "body"


def test_last_the_history_endpoints_match_the_document(history: History) -> None:
    """Last: schemathesis's cleanups remove what the tests above read."""
    schema = schemathesis.openapi.from_dict(httpx.get(f"{history.url}/openapi.json").json())
    schema.config.update(base_url=history.url, headers={"Authorization": f"Bearer {history.tokens['admin']}"})
    # The stream never ends by itself; the tests above read it.
    chosen = schema.include(path_regex=HISTORY).exclude(path="/api/v1/events/stream")
    operations = [result.ok() for result in chosen.get_all_operations()]
    assert len(operations) == 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS)

        check()
