"""HTTP Basic guessing is limited per address, as SMTP AUTH is: [limits] auth_failures_per_hour."""

from __future__ import annotations

from typing import Any

import httpx

from tests.admin.conftest import basic
from tests.admin.test_api import error


def test_too_many_wrong_passwords_are_refused_even_with_the_right_one(make_server: Any) -> None:
    server = make_server({"admin": {"enabled": True}, "limits": {"auth_failures_per_hour": 2}})
    assert server.cli("user", "add", "root", "--admin", "--password-stdin", input=b"right\n").returncode == 0
    with httpx.Client(base_url=server.admin_url, timeout=10) as client:
        assert client.get("/stats", headers=basic("root", "right")).status_code == 200
        for _ in range(2):
            error(client.get("/stats", headers=basic("root", "wrong")), 401, "AUTH_REQUIRED")
        error(client.get("/stats", headers=basic("root", "right")), 429, "RATE_LIMITED")
    assert server.stop() == 0
