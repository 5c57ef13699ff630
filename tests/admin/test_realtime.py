"""The event stream against a real admin process: [admin] max_stream_clients holds, and a client
that leaves takes nothing with it."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.admin.conftest import wait_until
from tests.conftest import Server

CAP = 50


class Stream:
    """One HTTP/1.1 client of an event stream on a raw socket, so the test decides when it leaves."""

    def __init__(self, port: int, token: str, path: str = "/api/v1/stats/realtime", headers: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n{headers}\r\n".encode()
        )
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        self.head = head.decode("latin-1").lower()

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed before {marker!r}: {self.buffer!r}"
            self.buffer += chunk
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def event(self) -> bytes:
        return self._read_until(b"\n\n")

    def body(self) -> dict:
        length = int(self.head.split("content-length:")[1].split("\r\n")[0])
        while len(self.buffer) < length:
            self.buffer += self.sock.recv(65536)
        return json.loads(self.buffer[:length])

    def close(self) -> None:
        self.sock.close()


class Admin:
    def __init__(self, server: Server) -> None:
        self.server = server
        result = server.cli("token", "create", "--role", "viewer", "--name", "streams")
        assert result.returncode == 0, result.stderr
        self.token = result.stdout.decode().split()[-1]
        self.pid = server.children()["admin"]
        self.idle_files = self.open_files()

        self.opened = 0

    def streams(self, count: int) -> list[Stream]:
        self.opened += count
        return [Stream(self.server.admin_port, self.token) for _ in range(count)]

    def join_all(self) -> list[Stream] | None:
        """CAP new clients if every one of them gets in, which means the stream counts none of those that left."""
        streams = self.streams(CAP)
        if all(stream.status == 200 for stream in streams):
            return streams
        for stream in streams:
            stream.close()
        return None

    def cycle(self) -> None:
        """CAP clients join as soon as there is room for all of them, each reads an event, all leave."""
        streams = wait_until(self.join_all)
        assert streams, "clients that left still hold their places"
        for stream in streams:
            assert b"event: metrics\ndata: {" in stream.event()
            stream.close()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    server = Server(
        tmp_path_factory.mktemp("realtime"),
        {"smtp": {"workers": 1}, "admin": {"enabled": True, "max_stream_clients": CAP}},
    )
    server.start()
    try:
        yield Admin(server)
    finally:
        server.stop()


def test_past_max_stream_clients_is_503_until_clients_leave(admin: Admin) -> None:
    streams = admin.streams(CAP)
    try:
        assert [stream.status for stream in streams] == [200] * CAP
        refused = Stream(admin.server.admin_port, admin.token)
        assert refused.status == 503 and "application/json" in refused.head
        error = refused.body()["error"]
        refused.close()
        assert error["code"] == "TOO_MANY_STREAMS"
        assert "max_stream_clients" in error["message"] and str(CAP) in error["message"]
        # The clients in are not disturbed by the one turned away.
        assert all(b"event: metrics\ndata: {" in stream.event() for stream in streams)
    finally:
        for stream in streams:
            stream.close()
    # All of them left: a full CAP gets in again.
    admin.cycle()


def test_departed_clients_leave_nothing_behind(admin: Admin) -> None:
    assert wait_until(lambda: admin.open_files() == admin.idle_files), "sockets of clients that left are still open"
    # The first rounds grow the allocator's pools to what CAP clients need (about 100 KB each, once);
    # later rounds must reuse them. Before the feed was shared, RSS crept on by about 400 B a client.
    for _ in range(4):
        admin.cycle()
    rss, opened = admin.rss_kib(), admin.opened
    for _ in range(8):
        admin.cycle()
    departed = admin.opened - opened
    grown = admin.rss_kib() - rss
    print(f"admin RSS {rss} KiB, {rss + grown} KiB after {departed} more clients left: {grown * 1024 // departed} B each")
    assert grown * 1024 / departed < 1024
    assert wait_until(lambda: admin.open_files() == admin.idle_files), "sockets of clients that left are still open"


def test_stopping_ends_open_streams(make_server: Callable[..., Server]) -> None:
    server = make_server({"smtp": {"workers": 1}, "admin": {"enabled": True}})
    stream = Admin(server).streams(1)[0]
    assert stream.status == 200 and b"event: metrics" in stream.event()
    # Without the streams ended, the admin process would wait for this client forever.
    assert server.stop(timeout=15) == 0
    rest = b""
    while chunk := stream.sock.recv(65536):
        rest += chunk
    assert rest.endswith(b"0\r\n\r\n")  # the last chunk: the response ended, it was not cut
