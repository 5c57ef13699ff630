"""Delivery end to end: the real server relays to aiosmtpd next hops on loopback, by smarthost, MX and maildir."""

from __future__ import annotations

import email
import json
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from fastmta.queue.records import Message, Recipient, new_message_id
from fastmta.queue.store import QueueStore
from tests.conftest import Server, free_port, wait_for_greeting
from tests.integration.nexthop import Dns, NextHop
from tests.integration.test_ingress import MESSAGE, without_received


@pytest.fixture
def hop() -> Iterator[NextHop]:
    started = NextHop().start()
    yield started
    started.stop()


def relay_config(port: int, **route: Any) -> dict[str, Any]:
    return {
        "delivery": {"workers": 1, "retry_schedule": ["1s"]},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": port, "tls": "none", **route}],
    }


def send(server: Server, body: bytes = MESSAGE, sender: str = "alice@example.com", to: tuple[str, ...] = ("bob@example.org",)) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail(sender, list(to), body)


def journal(server: Server) -> list[dict[str, Any]]:
    path = server.data_dir / "delivery.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def queue_empty(server: Server) -> bool:
    return json.loads(server.cli("queue", "list", "--json").stdout) == []


def test_relayed_byte_identical_with_our_received_header(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port))
    send(server)
    arrival = hop.recorder.wait_for(1)[0]
    assert arrival.sender == "alice@example.com" and arrival.recipients == ["bob@example.org"]
    assert without_received(arrival.content) == MESSAGE
    assert b"by mx.test (fastmta)" in arrival.content.split(b"\r\n\r\n")[0]
    wait_until(lambda: queue_empty(server))
    entry = journal(server)[0]
    assert entry["status"] == "delivered" and entry["attempt"] == 1 and entry["reply"].startswith("250")
    assert server.stop() == 0


DOTTED = b"Subject: dots\r\n\r\n.leading dot\r\n..two\r\nmiddle . dot\r\n.\r\nend\r\n"


def test_dotted_lines_arrive_intact_over_data(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port))
    send(server, body=DOTTED)
    assert without_received(hop.recorder.wait_for(1)[0].content) == DOTTED
    assert server.stop() == 0


def test_dotted_lines_arrive_intact_over_bdat(make_server, tmp_path: Path) -> None:
    """bench/sink.py offers CHUNKING, so the runner sends one BDAT LAST and no dot-stuffing.

    The sink refuses every DATA command for good: only a BDAT transfer can deliver the message.
    """
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(Path(__file__).parents[2] / "bench" / "sink.py"),
                             f"127.0.0.1:{port}", "--capture", str(tmp_path / "got"), "--fault", "data:554:1"])
    try:
        wait_for_greeting(port)
        server = make_server(relay_config(port))
        send(server, body=DOTTED)
        wait_until(lambda: queue_empty(server))
    finally:
        sink.terminate()
        sink.wait(10)
    assert journal(server)[0]["status"] == "delivered"
    (captured,) = (tmp_path / "got").iterdir()
    content = captured.read_bytes().split(b"\r\n", 2)[2]  # after the sink's two envelope lines
    assert without_received(content) == DOTTED
    assert server.stop() == 0


def test_temporary_failures_are_retried(make_server, hop: NextHop) -> None:
    hop.recorder.data_replies = ["451 4.3.0 try later", "451 4.3.0 try later"]
    server = make_server(relay_config(hop.port))
    send(server)
    hop.recorder.wait_for(1, timeout=20)
    wait_until(lambda: len(journal(server)) == 3)
    assert [e["status"] for e in journal(server)] == ["deferred", "deferred", "delivered"]
    assert [e["attempt"] for e in journal(server)] == [1, 2, 3]
    assert server.stop() == 0


def test_permanent_failure_bounces_to_the_sender(make_server, hop: NextHop) -> None:
    hop.recorder.rcpt_replies["nobody@example.org"] = "550 5.1.1 No such user here"
    server = make_server(relay_config(hop.port))
    send(server, to=("nobody@example.org", "bob@example.org"))
    bounce, original = sorted(hop.recorder.wait_for(2), key=lambda a: a.sender)
    assert original.recipients == ["bob@example.org"]
    assert bounce.sender == "<>" and bounce.recipients == ["alice@example.com"]
    report = bounce.content.decode()
    assert "multipart/report; report-type=delivery-status" in report
    assert "Final-Recipient: rfc822; nobody@example.org" in report and "Action: failed" in report
    assert "Status: 5.1.1" in report and "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in report
    assert "Subject: hello" in report and "Message-ID: <m1@example.com>" in report  # the original's headers
    wait_until(lambda: queue_empty(server))
    assert server.stop() == 0


def test_a_multiline_reply_cannot_add_fields_to_the_bounce(make_server, hop: NextHop) -> None:
    """The next hop's second line says 'Action: delivered': it stays inside the one Diagnostic-Code."""
    hop.recorder.rcpt_replies["nobody@example.org"] = "550-5.1.1 No such user here\r\n550 Action: delivered"
    server = make_server(relay_config(hop.port))
    send(server, to=("nobody@example.org",))
    bounce = hop.recorder.wait_for(1)[0]
    assert bounce.sender == "<>" and bounce.recipients == ["alice@example.com"]
    report = email.message_from_bytes(bounce.content)
    text, status, returned = report.get_payload()
    _, fields = status.get_payload()  # the per-message block, then one per recipient: there is one recipient
    assert fields.get_all("Action") == ["failed"] and fields.get_all("Status") == ["5.1.1"]
    assert fields.get_all("Diagnostic-Code") == ["smtp; 550 5.1.1 No such user here; Action: delivered"]
    assert returned.get_content_type() == "text/rfc822-headers" and not report.defects
    assert not any(line.startswith(b"Action: delivered") for line in bounce.content.split(b"\r\n"))
    wait_until(lambda: queue_empty(server))
    (entry,) = [e for e in journal(server) if e["recipient"] == "nobody@example.org"]
    assert entry["reply"] == "550 5.1.1 No such user here; Action: delivered"
    assert server.stop() == 0


def test_a_large_message_bounces_with_its_headers_only(make_server, hop: NextHop) -> None:
    """RET=FULL asks for the whole message; past bounce_size_limit (50000 bytes) it is its headers, as in Postfix."""
    hop.recorder.rcpt_replies["nobody@example.org"] = "550 5.1.1 No such user here"
    server = make_server(relay_config(hop.port))
    large = MESSAGE + (b"0123456789" * 10 + b"\r\n") * 2_000
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["nobody@example.org"], large, mail_options=["RET=FULL"])
    bounce = hop.recorder.wait_for(1)[0]
    _, _, returned = email.message_from_bytes(bounce.content).get_payload()
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Message-ID: <m1@example.com>" in bounce.content and b"0123456789" not in bounce.content
    assert server.stop() == 0


def test_bounces_are_never_bounced(make_server, hop: NextHop) -> None:
    hop.recorder.rcpt_replies["gone@example.org"] = "550 5.1.1 gone"
    server = make_server(relay_config(hop.port))
    send(server, sender="", to=("gone@example.org",))
    wait_until(lambda: queue_empty(server))
    time.sleep(0.3)
    assert hop.recorder.arrivals == [] and journal(server)[0]["status"] == "failed"
    assert server.stop() == 0


def test_next_hop_down_then_back(make_server) -> None:
    hop = NextHop()
    server = make_server(relay_config(hop.port) | {"delivery": {"workers": 1, "retry_schedule": ["1h"]}})
    send(server)
    wait_until(lambda: len(journal(server)) == 1)
    assert journal(server)[0]["status"] == "deferred" and journal(server)[0]["reply"].startswith("451 4.4.1")
    assert journal(server)[0]["host"] == "127.0.0.1"  # the host that was tried, though it never answered
    hop.start()
    try:
        assert server.cli("queue", "flush").returncode == 0
        hop.recorder.wait_for(1)
        wait_until(lambda: queue_empty(server))
    finally:
        hop.stop()
    assert server.stop() == 0


def test_connections_are_reused_and_capped(make_server, hop: NextHop) -> None:
    # A slow next hop, so messages pile up and the runner wants more connections than it may have.
    hop.recorder.data_delay = 0.1
    server = make_server(relay_config(hop.port, max_connections=2, max_messages_per_connection=50))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for n in range(20):
            client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE + f"number {n}\r\n".encode())
    hop.recorder.wait_for(20)
    assert hop.recorder.connections == 2 and hop.recorder.most_open == 2
    assert server.stop() == 0


def test_one_transaction_per_message_to_a_smarthost(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port))
    send(server, to=("bob@example.org", "carol@example.net", "dave@example.org"))
    arrivals = hop.recorder.wait_for(1)
    wait_until(lambda: len(journal(server)) == 3)  # every recipient settled: nothing more will be sent
    assert len(arrivals) == 1 and arrivals[0].recipients == ["bob@example.org", "carol@example.net", "dave@example.org"]
    assert server.stop() == 0


def test_rate_is_respected(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port, rate="5/s"))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for _ in range(12):
            client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE)
    arrivals = hop.recorder.wait_for(12)
    # A burst of five, then five per second: twelve messages take at least 1.4 s at the sink.
    assert arrivals[-1].at - arrivals[0].at >= 1.2
    assert server.stop() == 0


def test_mx_routing_with_fallback_and_null_mx(make_server) -> None:
    hop = NextHop().start()
    dns = Dns(
        mx={
            "example.org": [(10, "mx1.example.org"), (20, "mx2.example.org")],
            "example.com": [(10, "mx.example.com")],
            "null.example": [(0, ".")],
        },
        # mx1 has an address where nothing listens: the runner falls back to mx2.
        a={"mx1.example.org": "127.0.0.3", "mx2.example.org": "127.0.0.1", "mx.example.com": "127.0.0.1", "bare.example": "127.0.0.1"},
    ).start()
    try:
        server = make_server(
            {
                "delivery": {"workers": 1, "dns_servers": [f"127.0.0.1:{dns.port}"], "connect_timeout": "2s"},
                "routes": [{"match": ["*"], "kind": "mx", "port": hop.port, "tls": "none"}],
            }
        )
        send(server, to=("bob@example.org",))
        send(server, to=("carol@bare.example",))  # no MX: the domain's own address
        send(server, to=("dave@null.example",))  # null MX: fails at once, bounce to alice (example.com MX)
        arrivals = hop.recorder.wait_for(3)
        by_rcpt = {tuple(a.recipients): a for a in arrivals}
        assert ("bob@example.org",) in by_rcpt and ("carol@bare.example",) in by_rcpt
        bounce = by_rcpt[("alice@example.com",)]
        assert bounce.sender == "<>" and b"Status: 5.1.10" in bounce.content
        wait_until(lambda: queue_empty(server))
        assert server.stop() == 0
    finally:
        hop.stop()
        dns.stop()


def test_maildir_delivery(make_server, tmp_path: Path) -> None:
    root = tmp_path / "maildirs"
    server = make_server(
        {"delivery": {"workers": 1}, "routes": [{"match": ["example.org"], "kind": "maildir", "path": str(root)}]}
    )
    send(server)
    wait_until(lambda: any((root / "bob@example.org" / "new").glob("*")) if (root / "bob@example.org" / "new").exists() else False)
    delivered = next((root / "bob@example.org" / "new").iterdir()).read_bytes()
    assert without_received(delivered) == MESSAGE
    assert list((root / "bob@example.org" / "tmp").iterdir()) == []
    assert server.stop() == 0


def test_unroutable_domain_fails(make_server, hop: NextHop) -> None:
    server = make_server(
        {"delivery": {"workers": 1}, "routes": [{"match": ["example.com"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}]}
    )
    send(server, to=("bob@elsewhere.test",))
    bounce = hop.recorder.wait_for(1)[0]  # the bounce itself routes to example.com
    assert b"Status: 5.4.4" in bounce.content
    assert server.stop() == 0


def test_smtputf8_needs_a_capable_next_hop(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port))
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "bob@example.org"
    message["Subject"] = "héllo"
    message.set_content("ça va")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.send_message(message, from_addr="alice@example.com", to_addrs=["bob@example.org"], mail_options=["SMTPUTF8"])
    hop.recorder.wait_for(1)
    assert server.stop() == 0


def test_smtputf8_to_a_next_hop_without_it_only_when_the_message_needs_it(make_server) -> None:
    hop = NextHop(smtputf8=False).start()
    try:
        server = make_server(relay_config(hop.port))
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            # Asked for, but plain ASCII after all: delivered without SMTPUTF8.
            client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE, mail_options=["SMTPUTF8"])
            client.sendmail("alice@example.com", ["bob@example.org"], "Subject: héllo\r\n\r\nça\r\n".encode(),
                            mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        hop.recorder.wait_for(1)
        wait_until(lambda: len(journal(server)) >= 2)
        outcomes = sorted((e["status"], e["reply"][:9]) for e in journal(server) if e["sender"] == "alice@example.com")
        assert outcomes == [("delivered", "250 2.0.0"), ("failed", "553 5.6.7")]
        assert server.stop() == 0
    finally:
        hop.stop()


def test_credentials_never_go_out_unencrypted_unless_the_route_says_so(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port, tls="opportunistic", username="relay", password="secret"))
    send(server)
    wait_until(lambda: journal(server))
    entry = journal(server)[0]
    assert entry["status"] == "deferred" and "not sending credentials in clear text" in entry["reply"]
    assert hop.recorder.arrivals == []
    assert server.stop() == 0


def test_delay_notice_once_then_failure_past_max_age(make_server, hop: NextHop) -> None:
    hop.recorder.rcpt_replies["slow@example.org"] = "451 4.3.0 try later"
    config = relay_config(hop.port)
    config["delivery"] |= {"delay_warning": "1s", "max_age": "4s"}
    server = make_server(config)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["slow@example.org"], MESSAGE, rcpt_options=["NOTIFY=DELAY,FAILURE"])
    delayed, failed = hop.recorder.wait_for(2, timeout=20)
    assert delayed.recipients == failed.recipients == ["alice@example.com"]
    assert b"Action: delayed" in delayed.content and b"Action: failed" in failed.content
    assert b"Status: 4.4.7" in failed.content
    attempts = [e for e in journal(server) if e["recipient"] == "slow@example.org"]
    # At least: a deferral too young for a notice, one old enough for it, the failure. How many more
    # fit in max_age depends on the retry jitter and on when the runner looks at the schedule.
    statuses = [e["status"] for e in attempts]
    assert statuses[-1] == "failed" and statuses[:-1] == ["deferred"] * (len(statuses) - 1) and len(statuses) >= 3
    wait_until(lambda: queue_empty(server))
    assert len(hop.recorder.arrivals) == 2  # one delay notice, however many deferrals
    assert server.stop() == 0


def test_source_ips_take_turns(make_server, hop: NextHop) -> None:
    server = make_server(relay_config(hop.port, source_ips=["127.0.0.2", "127.0.0.3"], max_messages_per_connection=1))
    for n in range(4):
        send(server, body=MESSAGE + f"number {n}\r\n".encode())
    arrivals = hop.recorder.wait_for(4)
    assert sorted(a.peer[0] for a in arrivals) == ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
    wait_until(lambda: len(journal(server)) == 4)
    assert {e["source_ip"] for e in journal(server)} == {"127.0.0.2", "127.0.0.3"}
    assert server.stop() == 0


def test_two_runners_send_each_message_once(make_server, hop: NextHop) -> None:
    hop.recorder.data_delay = 0.02
    config = relay_config(hop.port, max_connections=4)
    config["delivery"] |= {"workers": 2, "batch_size": 5}
    server = make_server(config)
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for n in range(40):
            client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE + f"number {n}\r\n".encode())
    arrivals = hop.recorder.wait_for(40)
    wait_until(lambda: queue_empty(server))
    time.sleep(0.3)
    bodies = [without_received(a.content) for a in hop.recorder.arrivals]
    assert len(bodies) == len(set(bodies)) == 40
    entries = journal(server)
    assert len(entries) == len({e["message_id"] for e in entries}) == 40
    assert {e["runner"] for e in entries} <= {"delivery-0", "delivery-1"}
    assert server.stop() == 0


def test_success_reports_where_the_mail_ends_or_leaves_dsn_behind(make_server, hop: NextHop, tmp_path: Path) -> None:
    mailboxes = tmp_path / "maildir"
    server = make_server({
        "delivery": {"workers": 1},
        "routes": [
            {"match": ["example.org"], "kind": "maildir", "path": str(mailboxes)},
            {"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"},
        ],
    })
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.sendmail("alice@example.com", ["bob@example.org"], MESSAGE, rcpt_options=["NOTIFY=SUCCESS"])
        # aiosmtpd offers no DSN, so fastmta is the last to report on carol.
        client.sendmail("alice@example.com", ["carol@example.net"], MESSAGE, rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        client.sendmail("alice@example.com", ["dave@example.net"], MESSAGE)  # no NOTIFY: no report of success
    hop.recorder.wait_for(4)
    wait_until(lambda: queue_empty(server))
    time.sleep(0.3)
    reports = sorted(a.content for a in hop.recorder.arrivals if a.sender == "<>")
    assert len(reports) == 2 and len(hop.recorder.arrivals) == 4
    assert all(b"Successful Mail Delivery Report" in r for r in reports)
    assert [b"Action: delivered" in r for r in reports].count(True) == 1
    assert [b"Action: relayed" in r for r in reports].count(True) == 1
    assert len(list((mailboxes / "bob@example.org" / "new").iterdir())) == 1
    assert server.stop() == 0


def test_a_record_without_its_body_is_held_not_retried_forever(make_server) -> None:
    server = make_server({"delivery": {"workers": 1}, "routes": [{"match": ["*"], "kind": "discard"}]}, start=False)
    store = QueueStore(server.data_dir, 1 << 26)
    now = time.time()
    orphan = Message(id=new_message_id(now), sender="a@example.com", recipients=[Recipient("b@example.org")],
                     received_at=now, size=3, next_attempt=now)
    store.insert([(orphan, b"hi\r\n")])
    with store.env.begin(write=True) as txn:
        txn.delete(orphan.id.encode(), db=store.bodies)
    store.close()
    server.start()
    wait_until(lambda: json.loads(server.cli("queue", "show", orphan.id).stdout)["state"] == "held")
    record = json.loads(server.cli("queue", "show", orphan.id).stdout)
    assert record["lease_owner"] == "" and "has no body; holding it" in server.log()
    assert server.stop() == 0
