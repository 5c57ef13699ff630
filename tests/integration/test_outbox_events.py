"""The real server's events reach history through the outbox: what it queued, what it refused, and what became of it."""

from __future__ import annotations

import os
import smtplib
import sqlite3
import time
from contextlib import closing
from typing import Any

import httpx
import msgspec

from fastmta.events import records as events
from tests.conftest import Server
from tests.integration.nexthop import NextHop


def history_events(server: Server) -> list[events.Event]:
    """What the events process wrote to history.db: every event, as the outbox held it."""
    path = server.data_dir / "history.db"
    if not path.exists():
        return []
    with closing(sqlite3.connect(path)) as db:
        try:
            rows = db.execute("SELECT data FROM events ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return []
    return [msgspec.json.decode(row[0], type=events.AnyEvent) for row in rows]


def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_received_rejected_and_delivered_events_with_the_rejected_count(make_server: Any) -> None:
    hop = NextHop().start()
    try:
        server = make_server({
            "server": {"node_id": "node-a"},
            "delivery": {"workers": 1},
            "admin": {"enabled": True},
            "history": {"enabled": True},
            "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
        })  # fmt: skip
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            client.ehlo("client.test")
            assert client.mail("a@b@example.org")[0] == 501
            client.mail("alice@example.com")
            assert client.rcpt("bad..dots@example.org")[0] == 501
            client.rcpt("bob@example.org")
            code, _ = client.data(b"Subject: hello\r\nX-Campaign-ID: spring\r\n\r\nhi\r\n")
            assert code == 250
        wait_until(lambda: any(isinstance(e, events.Delivered) for e in history_events(server)))
        # The events process, and it alone, runs on what the others leave of the CPUs.
        idle = {name for name, pid in server.children().items() if os.sched_getscheduler(pid) == os.SCHED_IDLE}
        assert idle == {"events"}, server.children()
        found = history_events(server)
        # Refusals ride whichever group commit comes next, so only their own order is fixed.
        kinds = sorted(type(e).__name__ for e in found)
        assert kinds == ["Delivered", "Received", "Rejected", "Rejected"], kinds
        bad_sender, bad_recipient = [e for e in found if isinstance(e, events.Rejected)]
        (received,) = [e for e in found if isinstance(e, events.Received)]
        (delivered,) = [e for e in found if isinstance(e, events.Delivered)]
        assert isinstance(bad_sender, events.Rejected) and bad_sender.stage == "mail"
        assert bad_sender.reply.startswith("501 5.1.7") and bad_sender.command == "mail FROM:<a@b@example.org>"  # as smtplib sends it
        assert isinstance(bad_recipient, events.Rejected) and bad_recipient.stage == "rcpt"
        assert bad_recipient.sender == "alice@example.com" and bad_recipient.helo == "client.test"
        assert isinstance(received, events.Received) and received.campaign_id == "spring" and received.subject == "hello"
        assert isinstance(delivered, events.Delivered) and delivered.recipient == "bob@example.org"
        assert delivered.message_id == received.message_id and delivered.reply.startswith("250")
        assert {e.node for e in found} == {"node-a"} and len({e.id for e in found}) == 4

        token = server.cli("token", "create", "--role", "viewer", "--name", "t").stdout.decode().split()[-1]

        def rejected_count() -> float:
            try:
                text = httpx.get(f"{server.admin_url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
            except httpx.ConnectError:  # the admin process is still starting
                return 0.0
            lines = [line for line in text.splitlines() if line.startswith("smtp_messages_received_total{") and 'status="rejected"' in line]
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

        wait_until(lambda: rejected_count() == 2)
        assert server.stop() == 0
    finally:
        hop.stop()
