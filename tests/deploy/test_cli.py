"""The operator's commands: --version, completion scripts, `status` against a real server, `token import`."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from importlib.metadata import version
from typing import Any

import httpx

from tests.admin.conftest import wait_until


def fastmta(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmta", *args], capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = fastmta("--version")
    assert result.returncode == 0 and result.stdout == f"fastmta {version('fastmta')}\n"


def test_the_bash_completion_is_bash_and_knows_the_commands() -> None:
    script = fastmta("completion", "bash").stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for word in ("status", "queue", "completion", "--config", "--json"):
        assert word in script
    assert "#compdef fastmta" in fastmta("completion", "zsh").stdout


def test_status_of_a_running_node_and_of_a_stopped_one(make_server: Any) -> None:
    server = make_server({"admin": {"enabled": True}, "history": {"enabled": True}})
    server.cli("queue", "list")  # the store exists
    assert wait_until(lambda: len(server.children()) == 4)  # 2 SMTP workers, events (history is on), admin

    result = server.cli("status")
    text = result.stdout.decode()
    assert result.returncode == 0, text + result.stderr.decode()
    assert "mx.test: healthy" in text
    assert f"smtp 127.0.0.1:{server.port}" in text and f"admin http://127.0.0.1:{server.admin_port}" in text
    assert "2 SMTP alive" in text and "smtp-0 (pid" in text and "smtp-1 (pid" in text
    assert "queue       empty" in text and "delivery    active" in text
    assert "of 8.0 GiB used" in text  # the store, of queue_max_bytes

    document = json.loads(server.cli("status", "--json").stdout)
    assert document["healthy"] and {child["name"] for child in document["children"]} == {"smtp-0", "smtp-1", "events", "admin"}
    assert document["queue_depth"] == 0 and document["delivery_suspended"] is False

    assert server.stop() == 0
    stopped = server.cli("status")
    assert stopped.returncode == 1
    assert "UNHEALTHY: no SMTP worker is alive" in stopped.stdout.decode()


def test_one_token_imported_on_every_node_opens_its_metrics(make_server: Any) -> None:
    token = f"fmta_{secrets.token_hex(6)}_{secrets.token_urlsafe(24)}"
    for server in (make_server({"admin": {"enabled": True}}), make_server({"admin": {"enabled": True}})):
        first = server.cli("token", "import", "--role", "viewer", "--name", "prometheus", input=token.encode() + b"\n")
        assert first.returncode == 0 and first.stdout.startswith(b"imported viewer token prometheus"), first.stderr
        again = server.cli("token", "import", "--role", "viewer", "--name", "prometheus", input=token.encode() + b"\n")
        assert again.returncode == 0 and again.stdout.startswith(b"already present")

        def scraped() -> bool:
            try:
                response = httpx.get(f"{server.admin_url}/metrics", headers={"Authorization": f"Bearer {token}"})
            except httpx.ConnectError:
                return False
            return response.status_code == 200 and "smtp_messages_queued" in response.text

        assert wait_until(scraped)
        other = server.cli("token", "import", "--role", "admin", "--name", "prometheus", input=token.encode())
        assert other.returncode == 1  # the same token with another role is refused, not changed
    assert make_server().cli("token", "import", "--role", "viewer", "--name", "x", input=b"not-a-token").returncode == 1
