"""One real `fastmta serve` with its admin process for the whole module, and clients for its API."""

from __future__ import annotations

import base64
import smtplib
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server


class Admin:
    """The running server, its admin URL and one token per role."""

    def __init__(self, server: Server, roles: tuple[str, ...] = ("viewer", "operator", "admin")) -> None:
        self.server = server
        self.url = server.admin_url
        self.tokens = {role: self.create_token(role, f"test-{role}") for role in roles}

    def create_token(self, role: str, name: str) -> str:
        result = self.server.cli("token", "create", "--role", role, "--name", name)
        assert result.returncode == 0, result.stderr
        return result.stdout.decode().split()[-1]

    def client(self, role: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def send(self, count: int) -> list[str]:
        """`count` messages, one connection each, so the kernel spreads them over the workers."""
        ids = []
        for number in range(count):
            with smtplib.SMTP("127.0.0.1", self.server.port, timeout=10) as smtp:
                smtp.ehlo("client.test")
                smtp.mail("alice@example.com")
                smtp.rcpt("bob@example.org")
                code, reply = smtp.data(f"Subject: n{number}\r\n\r\nbody\r\n".encode())
                assert code == 250, reply
                ids.append(reply.decode().rsplit(" ", 1)[1])
        return ids


@pytest.fixture(scope="package")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    # Without history: the endpoints that read it have a server of their own (test_history_api.py).
    settings = {"smtp": {"workers": 2}, "admin": {"enabled": True}, "history": {"enabled": False}}
    server = Server(tmp_path_factory.mktemp("admin"), settings)
    server.start()
    try:
        yield Admin(server)
    finally:
        server.stop()


def basic(username: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def wait_until(check, timeout: float = 10.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)
