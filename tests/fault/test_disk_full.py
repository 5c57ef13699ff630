"""A full disk, on a small tmpfs, during ingress and during settle.

Clients hear `452 4.3.1` and nothing else; every record stays readable; acknowledged mail is
kept; once a filler file is deleted the same running server takes mail again and delivers all of it.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.conftest import Server
from tests.fault.common import arrived, queue_id, queued, report, seed, wait_for
from tests.fault.load import Load
from tests.fault.test_durability import check_store
from tests.integration.nexthop import NextHop
from tests.integration.test_ingress import without_received

STORE_FULL = b"452 4.3.1"
SETTLE_FAILED = re.compile(r"could not record the outcome|delivery failed unexpectedly|No space left on device")


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs of its own (root may mount one; anyone else is skipped)."""
    directory = Path(tempfile.mkdtemp(prefix="fastmta-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=False)
        directory.rmdir()


def fill(directory: Path) -> Path:
    """A file that takes every free block; deleting it gives the space back."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0
    return path


def on_disk(make_server: Any, disk: Path, overrides: dict[str, Any]) -> Server:
    server: Server = make_server(overrides, start=False)
    server.data_dir = disk / "data"
    server.settings["server"]["data_dir"] = str(server.data_dir)
    server.config_path.write_text(tomli_w.dumps(server.settings))
    return server.start()


def relay(hop: NextHop, runners: int) -> dict[str, Any]:
    return {
        "smtp": {"workers": 2},
        "delivery": {"workers": runners, "retry_schedule": ["1s", "2s"], "lease_time": "3s"},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
    }


def reload_with_runner(server: Server) -> None:
    server.settings["delivery"]["workers"] = 1
    server.config_path.write_text(tomli_w.dumps(server.settings))
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "delivery-0" in server.children(), 15, "a delivery runner after the reload")


def no_corrupt_record(server: Server) -> list[dict[str, Any]]:
    listing = queued(server)
    assert all(entry["state"] != "corrupt" for entry in listing), [e for e in listing if e["state"] == "corrupt"]
    return listing


def delivered_intact(hop: NextHop, acked: dict[str, bytes]) -> tuple[int, int]:
    """(messages lost, duplicate deliveries) of `acked`, after checking every copy is byte-identical."""
    copies = arrived(hop.recorder.arrivals)
    for arrival in hop.recorder.arrivals:
        message_id = queue_id(arrival)
        if message_id in acked:
            assert without_received(arrival.content) == acked[message_id], message_id
    lost = [message_id for message_id in acked if message_id not in copies]
    return len(lost), sum(copies[m] - 1 for m in acked if copies[m] > 1)


def test_a_worker_that_dies_while_the_disk_is_full_is_restarted(make_server, small_disk: Path) -> None:
    server = on_disk(make_server, small_disk, {"smtp": {"workers": 2}, "delivery": {"workers": 0}})
    before = server.children()
    filler = fill(small_disk)
    os.kill(before["smtp-0"], signal.SIGKILL)
    # children.json cannot be written now; the supervisor still restarts the worker, and says so once.
    restarted = re.compile(r"smtp-0 \(pid \d+\) exited with -9.*smtp-0 serving", re.S)
    wait_for(lambda: restarted.search(server.log()), 15, "smtp-0 restarted")
    assert server.process is not None and server.process.poll() is None
    assert "cannot write children.json" in server.log()
    filler.unlink()
    wait_for(lambda: server.children()["smtp-0"] != before["smtp-0"], 15, "children.json written once space is back")
    assert server.stop() == 0
