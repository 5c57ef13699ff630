"""The real server end to end: a message sent and delivered is found by the history API, with its timeline."""

from __future__ import annotations

import smtplib
from typing import Any

import httpx

from tests.admin.conftest import wait_until
from tests.integration.nexthop import NextHop


def test_a_delivered_message_is_sent_in_history_with_its_timeline_and_kept_body(make_server: Any) -> None:
    hop = NextHop().start()
    try:
        server = make_server({
            "delivery": {"workers": 1},
            "admin": {"enabled": True},
            "history": {"enabled": True},
            "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
        })  # fmt: skip
        token = server.cli("token", "create", "--role", "viewer", "--name", "t").stdout.decode().split()[-1]
        api = httpx.Client(base_url=server.admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.test")
            client.mail("alice@example.com")
            client.rcpt("bob@example.org")
            code, reply = client.data(b"Subject: tracked\r\n\r\nhi\r\n")
        assert code == 250
        message_id = reply.decode().rsplit(" ", 1)[1]

        def sent() -> list[str]:
            try:
                response = api.get("/api/v1/messages", params={"status": "sent"})
            except httpx.TransportError:  # the admin process is still starting
                return []
            return [item["id"] for item in response.json()["data"]["items"]] if response.status_code == 200 else []

        assert wait_until(lambda: message_id in sent(), timeout=30), server.log()
        detail = api.get(f"/api/v1/messages/{message_id}").json()["data"]
        assert detail["message"]["subject"] == "tracked" and detail["message"]["settled_at"] is not None
        assert [e["type"] for e in detail["events"]] == ["received", "delivered"]
        [recipient] = detail["recipients"]
        assert recipient["status"] == "sent" and recipient["last_reply"].startswith("250") and recipient["remote_host"]
        # Delivered, it left the queue; its body is kept for [history] keep_bodies, parts and all.
        assert detail["body"]["parts"][0]["content"].rstrip() == "hi"
        api.close()
        assert server.stop() == 0
    finally:
        hop.stop()
