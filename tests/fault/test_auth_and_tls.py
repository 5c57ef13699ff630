"""AUTH brute force is limited, plaintext pipelined after STARTTLS is discarded, and TLS means 1.2 or later."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Server, free_port
from tests.fault.common import queued, report
from tests.integration.test_ingress import _add_user

LIMIT = 10
PASSWORD = "correct horse battery staple"


class Line:
    """A line-level client over a plain or TLS socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, port: int, source: str = "127.0.0.1") -> Line:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)))

    def reply(self) -> bytes:
        """One whole reply (multi-line ones joined); b"" once the server has closed."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return b"".join(lines)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode())


def tls_server(make_server, tls_files: tuple[Path, Path], **smtp: object) -> Server:
    cert, key = tls_files
    return make_server({"smtp": {"tls_cert": str(cert), "tls_key": str(key), **smtp}})


def test_auth_brute_force_is_limited_across_connections_and_workers(make_server) -> None:
    server = make_server(
        {"smtp": {"workers": 2, "require_tls_for_auth": False, "mynetworks": ["192.0.2.0/24"]},
         "limits": {"auth_failures_per_hour": LIMIT}}
    )
    _add_user(server, "alice", PASSWORD)

    def guess(n: int) -> list[bytes]:
        """Up to five wrong passwords on one connection, until the server stops answering 535."""
        client = Line.connect(server.port)
        try:
            assert client.reply().startswith(b"220")
            assert client.command(b"EHLO guesser.test").startswith(b"250")
            answers = []
            for attempt in range(5):
                answer = client.command(plain("alice", f"guess-{n}-{attempt}"))
                answers.append(answer[:9])
                if not answer.startswith(b"535"):
                    break
            return answers
        finally:
            client.close()

    # Twenty connections in parallel, spread over both workers: 100 guesses at most.
    with ThreadPoolExecutor(20) as pool:
        answers = Counter(answer for answers in pool.map(guess, range(20)) for answer in answers)
    # The right password from the same address is refused too; another address is not locked out.
    locked = Line.connect(server.port)
    locked.reply()
    locked.command(b"EHLO owner.test")
    after_lockout = locked.command(plain("alice", PASSWORD))
    locked.close()
    other = Line.connect(server.port, source="127.0.0.2")
    other.reply()
    other.command(b"EHLO owner.test")
    from_elsewhere = other.command(plain("alice", PASSWORD))
    other.close()
    report(
        "auth brute force", limit=LIMIT, guesses=sum(answers.values()), answers={k.decode(): v for k, v in answers.items()},
        right_password_after_lockout=after_lockout[:9].decode(), right_password_from_another_address=from_elsewhere[:9].decode(),
    )
    assert answers[b"535 5.7.8"] == LIMIT, answers
    assert set(answers) == {b"535 5.7.8", b"421 4.7.0"}, answers
    assert after_lockout.startswith(b"421 4.7.0 Too many authentication failures")
    assert from_elsewhere.startswith(b"235")
    assert server.stop() == 0


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "before-the-220"])
def test_plaintext_pipelined_after_starttls_is_discarded(make_server, tls_files, split: bool) -> None:
    server = tls_server(make_server, tls_files)
    client = Line.connect(server.port)
    client.reply()
    client.command(b"EHLO inject.test")
    injected = b"MAIL FROM:<injected@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: x\r\n\r\ny\r\n.\r\n"
    if split:
        client.sock.sendall(b"STARTTLS\r\n")
        client.sock.sendall(injected)
    else:
        client.sock.sendall(b"STARTTLS\r\n" + injected)
    assert client.reply().startswith(b"220 2.0.0")
    assert client.buffer == b""  # no plaintext answer to the injected commands
    context = ssl.create_default_context(cafile=str(tls_files[0]))
    try:
        secure = Line(context.wrap_socket(client.sock, server_hostname="mx.test"))
    except (ssl.SSLError, ConnectionError):
        # Plaintext that reached the server after its buffer was dropped went to the TLS layer as a
        # handshake, which failed: the connection ends, and the injection with it.
        outcome = "handshake failed on the injected bytes"
    else:
        # Replies come in order: had anything injected been kept, its replies would come before EHLO's.
        assert secure.command(b"EHLO inject.test").startswith(b"250-mx.test")
        assert secure.command(b"MAIL FROM:<a@example.com>").startswith(b"250 2.1.0")  # not 503: no MAIL was kept
        assert secure.command(b"QUIT").startswith(b"221")
        secure.close()
        outcome = "discarded; TLS session starts clean"
    assert queued(server) == []
    report(f"starttls injection ({'split' if split else 'one write'})", outcome=outcome, kept=0, queued=0)
    assert server.stop() == 0


def _client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Old protocols need old ciphers (and security level 0) on the client side to be offered at all.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def _offered(version: ssl.TLSVersion, tls_files: tuple[Path, Path]) -> bool:
    """Whether this client can speak `version` at all: a handshake with a local server that allows it."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*tls_files)
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = version
        server_context.maximum_version = version
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    theirs.settimeout(10)

    def serve() -> None:
        try:
            server_context.wrap_socket(ours, server_side=True).close()
        except (ssl.SSLError, OSError):
            ours.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _client_context(version).wrap_socket(theirs, server_hostname="mx.test").close()
        return True
    except (ssl.SSLError, OSError):
        return False
    finally:
        theirs.close()
        thread.join(10)


def _handshake(port: int, version: ssl.TLSVersion, starttls: bool) -> str:
    """The protocol agreed on, or the reason the handshake failed."""
    client = Line.connect(port)
    try:
        if starttls:
            client.reply()
            client.command(b"EHLO tls.test")
            assert client.command(b"STARTTLS").startswith(b"220")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            secure = _client_context(version).wrap_socket(client.sock, server_hostname="mx.test")
        try:
            return secure.version() or "?"
        finally:
            secure.close()
    except ssl.SSLError as failure:
        return f"refused: {failure.reason}"
    finally:
        client.close()


def test_tls_is_1_2_or_later(make_server, tls_files) -> None:
    smtps = free_port()
    server = tls_server(make_server, tls_files, smtps_listen=[f"127.0.0.1:{smtps}"])
    results = {}
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        for kind, port in (("starttls", server.port), ("smtps", smtps)):
            results[f"{version.name} {kind}"] = _handshake(port, version, kind == "starttls")
    refusals = server.log().count("UNSUPPORTED_PROTOCOL")
    report("tls versions", **results, server_logged_unsupported_protocol=refusals)
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        if not _offered(old, tls_files):
            pytest.skip(f"this OpenSSL cannot offer {old.name} even to a server that allows it")
    for name, outcome in results.items():
        if name.startswith(("TLSv1 ", "TLSv1_1 ")):
            assert outcome.startswith("refused: "), (name, outcome)
        else:
            assert outcome == name.split()[0].replace("_", "."), (name, outcome)
    # The STARTTLS refusals were the server's: it names the protocol it would not speak.
    assert refusals >= 2
    assert server.stop() == 0
