"""The admin app in this process over a temporary data_dir, for console tests that need no browser;
and the pieces of a console page a test reads: its CSRF value, its links."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from starlette.testclient import TestClient

from fastmta import config, metrics
from fastmta.access.stores import Access
from fastmta.admin.api.realtime import Feed
from fastmta.admin.app import create_app
from fastmta.queue.records import Message
from fastmta.queue.store import QueueStore

# Not in mynetworks, so its failed logins count ([limits] exempt_mynetworks spares only those).
CLIENT = ("192.0.2.7", 40000)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


class Console:
    """A data_dir with tokens (one per role) and what the test stored, then the admin app over it."""

    def __init__(self, tmp: Path, settings: dict[str, Any] | None = None) -> None:
        self.data_dir = tmp / "data"
        path = tmp / "fastmta.toml"
        path.write_text(tomli_w.dumps({"server": {"hostname": "mx.test", "data_dir": str(self.data_dir)}, **(settings or {})}))
        self.config = config.load(path, {})
        metrics.directory_for(self.data_dir).mkdir(parents=True, exist_ok=True)
        store = QueueStore.opened(self.config)
        try:
            tokens = Access.opened(self.config, store.env).tokens
            self.tokens = {role: tokens.create(f"console-{role}", role)[1] for role in ("viewer", "operator", "admin")}
        finally:
            store.close()

    def store(self, batch: list[tuple[Message, bytes]]) -> None:
        """Straight into the queue, before the app opens it (one environment per process)."""
        store = QueueStore.opened(self.config)
        try:
            assert store.insert(batch) == [None] * len(batch)
        finally:
            store.close()

    def client(self, base_url: str = "http://testserver") -> TestClient:
        return TestClient(create_app(self.config, Feed()), base_url=base_url, client=CLIENT, follow_redirects=False)

    def log_in(self, client: TestClient, role: str) -> str:
        """Signs the client in with the role's token; returns the session's CSRF value."""
        form = client.get("/ui/login")
        signed_in = client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": self.tokens[role]})
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui", signed_in.text
        return csrf_of(client.get("/ui").text)

    def close(self) -> None:
        shutil.rmtree(metrics.directory_for(self.data_dir), ignore_errors=True)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = Console(tmp_path)
    yield made
    made.close()
