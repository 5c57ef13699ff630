"""deploy/fastmta.service: systemd-analyze verifies it and scores its hardening; where systemd runs
(it is PID 1 on a real host, not in this project's CI container), the real server starts under it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import Server, wait_for_greeting

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "fastmta.service"
INSTALLED_FASTMTA = "/opt/fastmta/.venv/bin/fastmta"
# The figure deploy/README.md gives; the issue asks for 3.0 or better.
MOST_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian package systemd; .ci/run installs it)"
)


def systemd_runs_units() -> bool:
    if shutil.which("systemctl") is None:
        return False
    state = subprocess.run(["systemctl", "is-system-running"], capture_output=True, text=True).stdout.strip()
    return state in ("running", "degraded")


def unit_here(tmp_path: Path) -> Path:
    """The unit with its commands pointing at this checkout's fastmta: verify checks they exist."""
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace(INSTALLED_FASTMTA, str(Path(sys.executable).with_name("fastmta"))))
    return local


@needs_analyze
def test_the_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(unit_here(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@needs_analyze
def test_the_unit_is_hardened(tmp_path: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_here(tmp_path))], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    score = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert score is not None, result.stdout
    assert float(score.group(1)) <= MOST_EXPOSURE, result.stdout
    # What fastmta needs stays granted: port 25 as an unprivileged user.
    text = UNIT.read_text()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text and "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text


@pytest.mark.skipif(not systemd_runs_units(), reason="systemd is not running as PID 1 here (systemctl is-system-running)")
def test_the_server_runs_under_systemd_as_type_notify(tmp_path: Path) -> None:
    """READY once the workers are forked (systemd-run returns only then), reload on SIGHUP, a clean stop."""
    server = Server(tmp_path, {"admin": {"enabled": False}})
    name = f"fastmta-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        ["systemd-run", f"--unit={name}", "--property=Type=notify", "--property=NotifyAccess=main",
         "--property=ExecReload=/bin/kill -HUP $MAINPID", "--property=KillMode=mixed",
         str(Path(sys.executable).with_name("fastmta")), "serve", "--config", str(server.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        wait_for_greeting(server.port)

        def show(prop: str) -> str:
            return subprocess.run(["systemctl", "show", "-p", prop, "--value", name], capture_output=True, text=True).stdout.strip()

        assert show("ActiveState") == "active"
        assert subprocess.run(["systemctl", "reload", name], timeout=60).returncode == 0
        assert show("ActiveState") == "active"
        wait_for_greeting(server.port)
        assert subprocess.run(["systemctl", "stop", name], timeout=90).returncode == 0
        assert show("Result") in ("success", "")
    finally:
        subprocess.run(["systemctl", "stop", name], capture_output=True)
        subprocess.run(["systemctl", "reset-failed", name], capture_output=True)
