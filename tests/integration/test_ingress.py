"""Ingress end to end: the real server driven by smtplib, aiosmtplib, swaks and raw sockets."""

from __future__ import annotations

import asyncio
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from fastmta.queue.store import open_env
from tests.admin.conftest import wait_until
from tests.conftest import Server

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"X-Campaign-ID: spring\r\n"
    b"\r\n"
    b"Hi Bob.\r\n"
    b".leading dot\r\n"
)


class Raw:
    """A line-level SMTP client for what the libraries will not send: pipelining, BDAT, broken input."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply, multi-line ones included."""
        while True:
            lines = self.buffer.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if len(line) < 4 or line[3:4] == b" ":
                    reply = b"\r\n".join(lines[: index + 1])
                    self.buffer = b"\r\n".join(lines[index + 1 :])
                    return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                reply, self.buffer = self.buffer, b""
                return reply
            self.buffer += chunk

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def queued_id(reply: bytes | str) -> str:
    text = reply.decode() if isinstance(reply, bytes) else reply
    assert "queued as" in text, text
    return text.rsplit(" ", 1)[1].strip()


def stored_body(server: Server, message_id: str) -> bytes:
    result = server.cli("queue", "show", message_id, "--body")
    assert result.returncode == 0, result.stderr
    return result.stdout


def without_received(body: bytes) -> bytes:
    assert body.startswith(b"Received: from "), body[:80]
    end = body.index(b"\r\n", body.index(b"\r\n\tby ") + 2)
    while body[end + 2 : end + 3] == b"\t":
        end = body.index(b"\r\n", end + 2)
    return body[end + 2 :]


@pytest.fixture(scope="module", params=["compiled", "twins"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """Every test of this module against the compiled hot path, then against its pure-Python twins."""
    directory = tmp_path_factory.mktemp("ingress")
    env = {"FASTMTA_NO_EXTENSIONS": "1"} if request.param == "twins" else None
    running = Server(directory, {"smtp": {"max_message_size": 100_000, "max_recipients": 3}}, env).start()
    yield running
    assert running.stop() == 0


def test_smtplib_message_is_queued_byte_identical(server: Server) -> None:
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert client.has_extn("pipelining") and client.has_extn("chunking") and client.has_extn("smtputf8")
        assert client.has_extn("size") and client.esmtp_features["size"] == "100000"
        client.mail("alice@example.com", ["SIZE=200", "BODY=8BITMIME"])
        client.rcpt("bob@example.org", ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;bob+2Bx@example.org"])
        code, reply = client.data(MESSAGE)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: queued as ")
    message_id = queued_id(reply)
    body = stored_body(server, message_id)
    # DATA removes the dot-stuffing smtplib added; the stored body is what the client meant to send.
    assert without_received(body) == MESSAGE
    assert b"by mx.test (fastmta) with ESMTP id " + message_id.encode() in body
    record = json.loads(server.cli("queue", "show", message_id).stdout)
    assert record["sender"] == "alice@example.com"
    assert record["recipients"][0]["notify"] == ["FAILURE", "DELAY"]
    assert record["recipients"][0]["orcpt"] == "rfc822;bob+x@example.org"
    assert record["body_type"] == "8BITMIME" and record["declared_size"] == 200
    assert record["message_id"] == "<m1@example.com>" and record["campaign_id"] == "spring"
    assert record["client_ip"] == "127.0.0.1" and record["helo"] == "client.test"
    listed = json.loads(server.cli("queue", "list", "--json").stdout)
    assert message_id in {entry["id"] for entry in listed}


def test_aiosmtplib_send(server: Server) -> None:
    message = EmailMessage()
    message["From"] = "alice@example.com"
    message["To"] = "bob@example.org, carol@example.net"
    message["Subject"] = "async"
    message.set_content("sent with aiosmtplib\n")

    async def send() -> tuple[dict[str, object], str]:
        return await aiosmtplib.send(message, hostname="127.0.0.1", port=server.port, start_tls=False)

    errors, reply = asyncio.run(send())
    assert errors == {}
    record = json.loads(server.cli("queue", "show", queued_id(reply)).stdout)
    assert [r["address"] for r in record["recipients"]] == ["bob@example.org", "carol@example.net"]


def test_pipelined_transactions_answered_in_order(server: Server) -> None:
    client = Raw(server.port)
    client.command(b"EHLO pipe.test")
    client.send(
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad address>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n"
    )
    assert [client.reply()[:9] for _ in range(5)] == [b"250 2.1.0", b"250 2.1.5", b"501 5.1.3", b"250 2.1.5", b"354 End d"]
    # The end of one message and the whole next transaction in one write.
    client.send(b"one\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@example.org>\r\nDATA\r\ntwo\r\n.\r\nQUIT\r\n")
    first = client.reply()
    assert client.reply().startswith(b"250 2.1.0")
    assert client.reply().startswith(b"250 2.1.5")
    assert client.reply().startswith(b"354")
    second = client.reply()
    assert client.reply().startswith(b"221 2.0.0")
    client.close()
    assert without_received(stored_body(server, queued_id(first))) == b"one\r\n"
    assert without_received(stored_body(server, queued_id(second))) == b"two\r\n"
    assert json.loads(server.cli("queue", "show", queued_id(second)).stdout)["sender"] == ""


def _read_by_server(client: socket.socket) -> bool:
    """Whether the server has read everything the client sent (/proc/net/tcp): the client's send queue holds
    nothing unacknowledged, and the server's receive queue is empty."""
    here = f"0100007F:{client.getsockname()[1]:04X}"
    there = f"0100007F:{client.getpeername()[1]:04X}"
    queues = {}  # (local, remote) -> (tx_queue, rx_queue)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        queues[(fields[1], fields[2])] = tuple(int(size, 16) for size in fields[4].split(":"))
    return queues.get((here, there), (1, 0))[0] == 0 and queues.get((there, here), (0, 1))[1] == 0


def test_commands_arriving_while_a_message_is_committed_store_it_once(server: Server) -> None:
    """A pipelined command read while the message is being stored (the store held up by a writer of the test's
    own) must not make the message be stored a second time."""
    client = Raw(server.port)
    client.command(b"EHLO pipe.test")
    transaction = b"MAIL FROM:<once@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    client.send(transaction)
    assert [client.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    env = open_env(server.data_dir / "queue.lmdb", 1 << 26)
    with env.begin(write=True):  # LMDB's one writer: the server's commit waits for this transaction
        client.send(b"first\r\n.\r\n")
        assert wait_until(lambda: _read_by_server(client.sock), interval=0.01)
        client.send(b"NOOP\r\n")  # a read of its own, while the commit waits
        assert wait_until(lambda: _read_by_server(client.sock), interval=0.01)
    env.close()
    first = client.reply()
    assert client.reply().startswith(b"250 2.0.0 Ok")
    # The worker's commits are written in order: once this one is answered, a second copy would be stored.
    client.send(transaction)
    assert [client.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    second = client.command(b"second\r\n.")
    assert client.command(b"QUIT").startswith(b"221")
    client.close()
    listed = json.loads(server.cli("queue", "list", "--json").stdout)
    assert [entry["id"] for entry in listed if entry["sender"] == "once@example.com"] == [queued_id(first), queued_id(second)]


def test_bdat_chunks(server: Server) -> None:
    client = Raw(server.port)
    client.command(b"EHLO chunk.test")
    client.command(b"MAIL FROM:<a@example.com>")
    client.command(b"RCPT TO:<b@example.org>")
    part1 = b"Subject: chunked\r\n\r\nline with\r\n.a dot that stays\r\n"
    part2 = b"and a line that BDAT carries as is\r\n"
    smuggled = b"and a bare\nline feed, refused as in DATA\r\n"
    client.send(b"BDAT " + str(len(part1)).encode() + b"\r\n" + part1)
    assert client.reply() == b"250 2.0.0 Ok: " + str(len(part1)).encode() + b" octets received"
    client.send(b"BDAT " + str(len(smuggled)).encode() + b" LAST\r\n" + smuggled)
    assert client.reply() == b"550 5.6.0 Message contains bare CR or bare LF line endings"
    client.command(b"MAIL FROM:<a@example.com>")
    client.command(b"RCPT TO:<b@example.org>")
    client.send(b"BDAT " + str(len(part1)).encode() + b"\r\n" + part1)
    client.reply()
    client.send(b"BDAT " + str(len(part2)).encode() + b" LAST\r\n" + part2)
    message_id = queued_id(client.reply())
    assert client.command(b"DATA").startswith(b"503")
    client.close()
    assert without_received(stored_body(server, message_id)) == part1 + part2


def test_size_limits(server: Server) -> None:
    client = Raw(server.port)
    client.command(b"EHLO big.test")
    assert client.command(b"MAIL FROM:<a@example.com> SIZE=100001").startswith(b"552 5.3.4")
    assert client.command(b"MAIL FROM:<a@example.com> SIZE=5000").startswith(b"250")
    client.command(b"RCPT TO:<b@example.org>")
    assert client.command(b"DATA").startswith(b"354")
    client.send(b"x" * 1000 + b"\r\n" + (b"y" * 998 + b"\r\n") * 120 + b".\r\n")
    assert client.reply().startswith(b"552 5.3.4")
    # The session stays usable after the refusal.
    assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
    client.command(b"RCPT TO:<b@example.org>")
    client.send(b"BDAT 100001 LAST\r\n" + b"z" * 100001)
    assert client.reply().startswith(b"552 5.3.4")
    assert client.command(b"NOOP").startswith(b"250")
    client.close()


def test_recipient_limit_and_sequence_errors(server: Server) -> None:
    client = Raw(server.port)
    assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"503 5.5.1")
    client.command(b"EHLO rcpt.test")
    assert client.command(b"RCPT TO:<b@example.org>").startswith(b"503 5.5.1")
    client.command(b"MAIL FROM:<a@example.com>")
    for n in range(3):
        assert client.command(f"RCPT TO:<r{n}@example.org>".encode()).startswith(b"250 2.1.5")
    assert client.command(b"RCPT TO:<r4@example.org>").startswith(b"452 4.5.3")
    assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"503 5.5.1")
    assert client.command(b"RSET").startswith(b"250 2.0.0")
    assert client.command(b"DATA").startswith(b"503 5.5.1")
    client.close()


def test_other_commands(server: Server) -> None:
    client = Raw(server.port)
    assert client.greeting.startswith(b"220 mx.test ESMTP")
    assert client.command(b"HELO old.test") == b"250 mx.test"
    assert client.command(b"NOOP") == b"250 2.0.0 Ok"
    assert client.command(b"VRFY bob").startswith(b"252 2.0.0")
    assert client.command(b"EXPN staff").startswith(b"502 5.5.1")
    assert client.command(b"HELP").startswith(b"214-2.0.0")
    assert client.command(b"FOO bar").startswith(b"500 5.5.2")
    assert client.command(b"STARTTLS").startswith(b"454 4.7.0")
    assert client.command(b"ETRN example.org") == b"250 2.0.0 Queuing for node example.org started"
    assert client.command(b"MAIL FROM:<a@example.com> BODY=BINARYMIME").startswith(b"555 5.5.4")
    assert client.command(b"MAIL FROM:<j\xc3\xbcrgen@example.com>").startswith(b"553 5.6.7")
    assert client.command(b"MAIL FROM:<j\xc3\xbcrgen@example.com> SMTPUTF8").startswith(b"250 2.1.0")
    assert client.command(b"QUIT").startswith(b"221")
    client.close()


def test_line_too_long_and_nul(server: Server) -> None:
    client = Raw(server.port)
    client.command(b"EHLO long.test")
    assert client.command(b"NOOP " + b"x" * 5000).startswith(b"500 5.5.2")
    assert client.command(b"NOOP\0").startswith(b"501 5.5.4")
    assert client.command(b"NOOP") == b"250 2.0.0 Ok"
    client.close()


def test_web_requests_are_turned_away(server: Server) -> None:
    client = Raw(server.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.reply().startswith(b"221 2.7.0")
    assert client.sock.recv(100) == b""
    client.close()


@pytest.mark.parametrize(
    "smuggled",
    [
        b"\n.\n",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r.\r",
    ],
)
def test_smuggling_never_ends_data_and_is_refused(server: Server, smuggled: bytes) -> None:
    client = Raw(server.port)
    client.command(b"EHLO smuggle.test")
    client.command(b"MAIL FROM:<a@example.com>")
    client.command(b"RCPT TO:<b@example.org>")
    client.command(b"DATA")
    client.send(
        b"Subject: outer\r\n\r\nouter" + smuggled + b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
        b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    assert client.reply().startswith(b"550 5.6.0")
    assert client.command(b"NOOP") == b"250 2.0.0 Ok"
    client.close()


def test_swaks_pipelining(server: Server) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (.ci/run installs it)")
    result = subprocess.run(
        [swaks, "--server", f"127.0.0.1:{server.port}", "--from", "s@example.com", "--to", "t@example.org",
         "--pipeline", "--header", "Subject: swaks", "--body", "from swaks"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    message_id = queued_id(next(line for line in result.stdout.splitlines() if "queued as" in line))
    assert b"from swaks" in stored_body(server, message_id)


def test_relay_policy(make_server) -> None:
    server = make_server({"smtp": {"mynetworks": ["192.0.2.0/24"], "relay_domains": ["example.org", "*.example.net"]}})
    client = Raw(server.port)
    client.command(b"EHLO outside.test")
    client.command(b"MAIL FROM:<a@example.com>")
    assert client.command(b"RCPT TO:<x@elsewhere.com>") == b"554 5.7.1 Relay access denied"
    assert client.command(b"RCPT TO:<x@example.org>").startswith(b"250 2.1.5")
    assert client.command(b"RCPT TO:<x@sub.example.net>").startswith(b"250 2.1.5")
    assert client.command(b"RCPT TO:<x@example.net>").startswith(b"554 5.7.1")
    client.close()
    assert server.stop() == 0


def test_rate_limit_holds_across_workers(make_server) -> None:
    server = make_server({"smtp": {"workers": 2}, "limits": {"connections_per_minute": 6, "exempt_mynetworks": False}})
    greetings = []
    for _ in range(10):
        client = Raw(server.port)
        greetings.append(client.greeting[:9])
        client.close()
    # The start-up probe was the first of the six allowed connections.
    assert greetings[:5] == [b"220 mx.te"] * 5 and greetings[5:] == [b"421 4.7.0"] * 5
    assert server.stop() == 0


@pytest.mark.parametrize("exempt_mynetworks", [False, True])
def test_connections_per_ip(make_server, exempt_mynetworks: bool) -> None:
    server = make_server(
        {"smtp": {"workers": 2, "max_connections_per_ip": 3}, "limits": {"exempt_mynetworks": exempt_mynetworks}}
    )
    clients = [Raw(server.port) for _ in range(5)]
    assert [c.greeting[:3] for c in clients].count(b"220") == (5 if exempt_mynetworks else 3)
    for client in clients:
        client.close()
    time.sleep(0.3)
    assert Raw(server.port).greeting.startswith(b"220")
    assert server.stop() == 0


def test_message_rate_limit(make_server) -> None:
    server = make_server({"limits": {"messages_per_hour": 2, "exempt_mynetworks": False}})
    client = Raw(server.port)
    client.command(b"EHLO rate.test")
    for _ in range(2):
        assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
        client.command(b"RSET")
    assert client.command(b"MAIL FROM:<a@example.com>").startswith(b"421 4.7.0")
    client.close()
    assert server.stop() == 0


def test_message_rate_limit_holds_across_workers(make_server) -> None:
    server = make_server({"smtp": {"workers": 2}, "limits": {"messages_per_hour": 20, "exempt_mynetworks": False}})
    replies = []
    for n in range(25):
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            try:
                replies.append(client.sendmail("a@example.com", ["b@example.org"], f"Subject: {n}\r\n\r\nx\r\n"))
            except smtplib.SMTPSenderRefused as refused:
                replies.append(refused.smtp_code)
    assert replies[:20] == [{}] * 20 and replies[20:] == [421] * 5
    workers = {entry["worker"] for entry in json.loads(server.cli("queue", "list", "--json").stdout)}
    # Twenty connections, each to either worker: the limit held across both (all on one: 2 in a million).
    assert workers == {"smtp-0", "smtp-1"}
    assert server.stop() == 0


def test_global_connection_limit(make_server) -> None:
    server = make_server({"smtp": {"workers": 1, "max_connections": 2}})
    clients = [Raw(server.port) for _ in range(3)]
    assert [c.greeting[:3] for c in clients] == [b"220", b"220", b"421"]
    assert clients[2].greeting == b"421 4.7.0 Too many connections, try again later"
    for client in clients:
        client.close()
    assert server.stop() == 0


def _add_user(server: Server, name: str, password: str) -> None:
    result = server.cli("user", "add", name, "--password-stdin", input=password.encode() + b"\n")
    assert result.returncode == 0, result.stderr


def test_starttls_and_auth(make_server, tls_files) -> None:
    cert, key = tls_files
    server = make_server(
        {"smtp": {"tls_cert": str(cert), "tls_key": str(key), "mynetworks": ["192.0.2.0/24"]},
         "limits": {"auth_failures_per_hour": 3}}
    )
    _add_user(server, "alice", "s3cret pass")
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("tls.test")
        assert client.has_extn("starttls") and not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldCBwYXNz")[0] == 538
        client.starttls(context=context)
        client.ehlo("tls.test")
        assert not client.has_extn("starttls") and "PLAIN" in client.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "wrong")
        assert refused.value.smtp_code == 535
        client.login("alice", "s3cret pass")
        errors = client.sendmail("alice@example.com", ["far@elsewhere.com"], b"Subject: relayed\r\n\r\nauthenticated\r\n")
        assert errors == {}

    async def send_with_aiosmtplib() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, tls_context=context, start_tls=True)
        await client.connect()
        await client.login("ALICE", "s3cret pass")
        await client.sendmail("alice@example.com", ["far@elsewhere.com"], b"Subject: x\r\n\r\ny\r\n")
        await client.quit()

    asyncio.run(send_with_aiosmtplib())
    expected = 2
    swaks = shutil.which("swaks")
    if swaks is not None:  # AUTH LOGIN, which both Python libraries pass over for PLAIN
        result = subprocess.run(
            [swaks, "--server", f"127.0.0.1:{server.port}", "--tls", "--auth", "LOGIN", "--auth-user", "alice",
             "--auth-password", "s3cret pass", "--from", "alice@example.com", "--to", "far@elsewhere.com"],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 0 and "235 2.7.0" in result.stdout, result.stdout + result.stderr
        expected += 1
    listed = json.loads(server.cli("queue", "list", "--json").stdout)
    assert [entry["auth_user"] for entry in listed] == ["alice"] * expected
    assert all(entry["protocol"] == "ESMTPSA" and entry["tls"].startswith("TLSv1.") for entry in listed)
    assert server.stop() == 0


def test_auth_without_tls_where_the_operator_allows_it(make_server) -> None:
    server = make_server({"smtp": {"require_tls_for_auth": False, "mynetworks": ["192.0.2.0/24"]}})
    _add_user(server, "bert", "pw")
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("plain.test")
        assert "LOGIN" in client.esmtp_features["auth"]
        client.login("bert", "pw")
        assert client.sendmail("bert@example.com", ["far@elsewhere.com"], b"Subject: s\r\n\r\nb\r\n") == {}
    (entry,) = json.loads(server.cli("queue", "list", "--json").stdout)
    assert entry["auth_user"] == "bert" and entry["protocol"] == "ESMTPA"
    assert server.stop() == 0


def test_auth_is_a_temporary_failure_while_the_shared_accounts_are_unreachable(make_server) -> None:
    """With [history] url on PostgreSQL the accounts are there (a cluster's); one that cannot be reached
    is not the client's fault: 454 4.7.0, and mail from mynetworks goes on."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server(
        {"smtp": {"require_tls_for_auth": False, "workers": 1}, "history": {"url": f"postgresql://fastmta@127.0.0.1:{port}/h"}}
    )
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        client.ehlo("plain.test")
        code, text = client.docmd("AUTH", "PLAIN AGJlcnQAcHc=")  # bert, pw
        assert (code, text) == (454, b"4.7.0 Temporary authentication failure, try again later")
        assert client.sendmail("a@example.com", ["b@example.org"], b"Subject: s\r\n\r\nb\r\n") == {}
    assert server.stop() == 0


def test_pipelined_plaintext_after_starttls_is_discarded(make_server, tls_files) -> None:
    cert, key = tls_files
    server = make_server({"smtp": {"tls_cert": str(cert), "tls_key": str(key)}})
    client = Raw(server.port)
    client.command(b"EHLO inject.test")
    client.send(b"STARTTLS\r\nMAIL FROM:<injected@example.com>\r\n")
    assert client.reply().startswith(b"220 2.0.0")
    context = ssl.create_default_context(cafile=str(cert))
    secure = context.wrap_socket(client.sock, server_hostname="mx.test")
    secure.sendall(b"EHLO inject.test\r\n")
    time.sleep(0.2)
    secure.recv(4096)
    # Had the injected MAIL been kept, this would be a nested MAIL (503).
    secure.sendall(b"MAIL FROM:<a@example.com>\r\n")
    assert secure.recv(4096).startswith(b"250 2.1.0")
    secure.close()
    assert server.stop() == 0


def test_submission_requires_auth_and_smtps(make_server, tls_files) -> None:
    cert, key = tls_files
    from tests.conftest import free_port

    submission, smtps = free_port(), free_port()
    server = make_server(
        {"smtp": {"tls_cert": str(cert), "tls_key": str(key), "submission_listen": [f"127.0.0.1:{submission}"],
                  "smtps_listen": [f"127.0.0.1:{smtps}"]}}
    )
    _add_user(server, "bob", "pw")
    client = Raw(submission)
    client.command(b"EHLO sub.test")
    assert client.command(b"MAIL FROM:<bob@example.com>").startswith(b"530 5.7.0")
    client.close()
    context = ssl.create_default_context(cafile=str(cert))
    with smtplib.SMTP_SSL("127.0.0.1", smtps, context=context) as secure:
        secure.ehlo("smtps.test")
        assert not secure.has_extn("starttls")
        secure.login("bob", "pw")
        assert secure.sendmail("bob@example.com", ["x@example.org"], b"Subject: s\r\n\r\nimplicit tls\r\n") == {}
    assert server.stop() == 0


def test_proxy_protocol_sets_client_address(make_server) -> None:
    server = make_server({"smtp": {"proxy_protocol": True, "mynetworks": ["127.0.0.0/8"]}})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 25\r\n")
    client = Raw.__new__(Raw)
    client.sock, client.buffer = sock, b""
    assert client.reply().startswith(b"220")
    client.command(b"EHLO proxied.test")
    client.command(b"MAIL FROM:<a@example.com>")
    # 203.0.113.7 is outside mynetworks, so relaying is refused: the PROXY address is the one used.
    assert client.command(b"RCPT TO:<x@elsewhere.com>").startswith(b"554 5.7.1")
    client.close()
    assert server.stop() == 0


def test_full_store_refuses_without_losing_what_it_has(make_server) -> None:
    server = make_server({"server": {"queue_max_bytes": 4 << 20}, "smtp": {"workers": 1}})
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1000
    replies = []
    with smtplib.SMTP("127.0.0.1", server.port) as client:
        for _ in range(8):
            try:
                client.sendmail("a@example.com", ["b@example.org"], big)
                replies.append(250)
            except smtplib.SMTPDataError as refused:
                replies.append(refused.smtp_code)
                assert refused.smtp_error.startswith(b"4.3.1")
    assert 250 in replies and 452 in replies
    listed = json.loads(server.cli("queue", "list", "--json").stdout)
    assert len(listed) == replies.count(250) and all(m["state"] != "corrupt" for m in listed)
    assert server.stop() == 0


def test_idle_client_is_timed_out(make_server) -> None:
    server = make_server({"smtp": {"timeout_seconds": 1.0}})
    client = Raw(server.port)
    assert client.command(b"EHLO idle.test").startswith(b"250")
    started = time.monotonic()
    assert client.reply().startswith(b"421 4.4.2")
    assert time.monotonic() - started < 5
    assert server.stop() == 0
