"""The real server's events reach a webhook receiver, signed: with history off, a webhook alone starts the events process."""

from __future__ import annotations

import smtplib
import time
from typing import Any

from tests.conftest import Server
from tests.integration.nexthop import NextHop
from tests.receiver import Receiver, verified

SECRET = "integration-secret"


def test_a_message_received_and_sent_arrives_signed_at_the_webhook(make_server: Any) -> None:
    hop, receiver = NextHop().start(), Receiver().start()
    try:
        server: Server = make_server({
            "delivery": {"workers": 1},
            "events": {"webhooks": [{"url": receiver.url, "secret": SECRET, "events": ["message.received", "message.sent"]}]},
            "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
        })  # fmt: skip
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.test")
            assert client.mail("a@b@example.org")[0] == 501  # a refusal: not asked for, not sent
            assert client.sendmail("alice@example.com", ["bob@example.org"], b"Subject: hi\r\n\r\nhello\r\n") == {}
        receiver.wait_for(lambda: len(receiver.requests) >= 2)
        time.sleep(0.5)  # anything more would arrive by now
        # Two requests may be under way at once (concurrency 8), so the sent event may arrive first.
        by_event = {body["event"]: body for body in receiver.bodies()}
        assert sorted(by_event) == ["message.received", "message.sent"] and len(receiver.requests) == 2
        received, sent = by_event["message.received"], by_event["message.sent"]
        assert received["data"]["sender"] == "alice@example.com" and received["data"]["subject"] == "hi"
        assert sent["data"]["message_id"] == received["data"]["message_id"] and sent["data"]["recipient"] == "bob@example.org"
        assert sent["data"]["reply"].startswith("250")
        for request in receiver.requests:
            assert verified(request, SECRET, time.time())
            assert request.headers["x-fastmta-event-id"] == request.json()["id"]
        assert "events" in server.children()
        assert (server.data_dir / "history.db").exists()  # where dead letters would go, history or not
        assert server.stop() == 0
    finally:
        receiver.stop()
        hop.stop()
