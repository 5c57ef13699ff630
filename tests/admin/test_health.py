"""GET /health turns 503 for each reason it names: the queue store gone, the disk nearly full."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin.conftest import Admin


def reasons(server: Any) -> tuple[int, list[str]]:
    answer = httpx.get(f"{server.admin_url}/health", timeout=10)
    return answer.status_code, answer.json()["data"]["reasons"]


def test_missing_queue_store_is_unhealthy(admin: Admin) -> None:
    data = admin.server.data_dir / "queue.lmdb" / "data.mdb"
    aside = data.with_name("data.mdb.aside")
    os.rename(data, aside)
    try:
        status, why = reasons(admin.server)
    finally:
        os.rename(aside, data)
    # Only this reason is ours to cause; a nearly full disk on the test machine would add its own.
    assert status == 503 and "queue store unreachable: No such file or directory" in why
    assert "queue store unreachable: No such file or directory" not in reasons(admin.server)[1]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of our own, so the test can fill a disk without filling the machine's."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_nearly_full_disk_is_unhealthy(make_server: Any, small_disk: Path) -> None:
    server = make_server({"server": {"data_dir": str(small_disk / "data"), "queue_max_bytes": 16 << 20},
                          "admin": {"enabled": True}})
    assert reasons(server) == (200, [])
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (60 << 20))
    status, why = reasons(server)
    assert status == 503 and len(why) == 1 and why[0].startswith("free disk space is ") and why[0].endswith("below 10%")
    ballast.unlink()
    assert reasons(server) == (200, [])
    assert server.stop() == 0
