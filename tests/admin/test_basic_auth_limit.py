"""HTTP Basic guessing counts with SMTP AUTH's failures per address: [limits] auth_failures_per_hour holds for both."""

from __future__ import annotations

import smtplib
from typing import Any

import httpx
import pytest

from tests.admin.conftest import basic
from tests.admin.test_api import error


def test_too_many_wrong_passwords_are_refused_even_with_the_right_one(make_server: Any) -> None:
    server = make_server({
        "admin": {"enabled": True},
        "smtp": {"require_tls_for_auth": False},
        "limits": {"auth_failures_per_hour": 3, "exempt_mynetworks": False},
    })
    assert server.cli("user", "add", "root", "--admin", "--password-stdin", input=b"right\n").returncode == 0
    with httpx.Client(base_url=server.admin_url, timeout=10) as client:
        assert client.get("/stats", headers=basic("root", "right")).status_code == 200
        for _ in range(2):
            error(client.get("/stats", headers=basic("root", "wrong")), 401, "AUTH_REQUIRED")
        # The third failure is over SMTP: one count for both ways in.
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
            smtp.ehlo("guess.test")
            smtp.user, smtp.password = "root", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.auth("PLAIN", smtp.auth_plain)
        error(client.get("/stats", headers=basic("root", "right")), 429, "RATE_LIMITED")
    assert server.stop() == 0
