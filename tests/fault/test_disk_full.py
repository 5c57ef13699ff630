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
LEASE_SECONDS = 3
SETTLE_FAILED = re.compile(r"outcomes wait until it can|delivery.log cannot be written")


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
        "delivery": {"workers": runners, "retry_schedule": ["1s", "2s"], "lease_time": f"{LEASE_SECONDS}s"},
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


@pytest.mark.slow
def test_disk_full_during_ingress(make_server, small_disk: Path) -> None:
    rng = random.Random(seed("disk full during ingress"))
    hop = NextHop().start()
    try:
        # Ingress only for now: the runner comes with a reload once space is back.
        server = on_disk(make_server, small_disk, relay(hop, runners=0))
        load = Load(server.port, clients=4, seed=rng.randrange(1 << 30)).start()
        wait_for(lambda: len(load.acked) >= 100, 30, "100 messages acknowledged")
        filler = fill(small_disk)
        wait_for(lambda: load.refusals[STORE_FULL] >= 50, 60, "50 refusals with 452 4.3.1")
        acked_when_full = len(load.acked)
        # While full: every refusal is 452 4.3.1, nothing is half-written, every acknowledged message is kept.
        assert set(load.refusals) == {STORE_FULL}, load.refusals
        listing = no_corrupt_record(server)
        assert set(load.acked) <= {entry["id"] for entry in listing}
        check_store(server, dict(load.acked))
        refused_when_full = sum(load.refusals.values())

        filler.unlink()
        resumed = len(load.acked) + 50
        wait_for(lambda: len(load.acked) >= resumed, 30, "50 more messages acknowledged once space is back")
        load.stop()
        reload_with_runner(server)
        wait_for(lambda: not queued(server), 60, "the queue to drain", every=0.5)
        lost, duplicates = delivered_intact(hop, load.acked)
        report(
            "disk full during ingress", acknowledged_before_refusals=acked_when_full, refused_452=refused_when_full,
            other_refusals=sum(n for reply, n in load.refusals.items() if reply != STORE_FULL),
            acknowledged=len(load.acked), lost=lost, duplicates=duplicates, corrupt=0,
        )
        assert lost == 0
        assert server.stop() == 0
    finally:
        hop.stop()


@pytest.mark.slow
def test_disk_full_during_settle(make_server, small_disk: Path) -> None:
    rng = random.Random(seed("disk full during settle"))
    hop = NextHop().start()
    hop.recorder.data_delay = 0.05  # slow enough that a batch is still being sent when the disk fills
    try:
        server = on_disk(make_server, small_disk, relay(hop, runners=1))
        first = Load(server.port, clients=2, seed=rng.randrange(1 << 30)).start()
        wait_for(lambda: len(first.acked) >= 150, 30, "150 messages acknowledged")
        first.stop()
        wait_for(lambda: len(hop.recorder.arrivals) >= 10, 30, "deliveries under way")

        filler = fill(small_disk)
        full_since = time.monotonic()
        # Settlements of messages the next hop took cannot be written now.
        wait_for(lambda: SETTLE_FAILED.search(server.log()), 30, "a settlement that failed for want of space")
        during = Load(server.port, clients=2, seed=rng.randrange(1 << 30)).start()
        wait_for(lambda: during.refusals[STORE_FULL] >= 10, 60, "new mail refused with 452 4.3.1 while full")
        during.stop()
        assert set(during.refusals) == {STORE_FULL}, during.refusals
        # While the disk stays full, past two lease times: the runner keeps what it sent and waits,
        # neither sending anything again when its leases run out nor exiting.
        wait_for(lambda: time.monotonic() - full_since > 2 * LEASE_SECONDS, 30, "two lease times on a full disk")
        assert max(arrived(hop.recorder.arrivals).values()) == 1
        assert "delivery-0 (pid" not in server.log()
        no_corrupt_record(server)
        acked = {**first.acked, **during.acked}
        sent = set(arrived(hop.recorder.arrivals))
        check_store(server, {m: body for m, body in acked.items() if m not in sent})
        full_seconds = time.monotonic() - full_since

        filler.unlink()
        space_back = time.monotonic()
        wait_for(lambda: not queued(server), 90, "the queue to drain once space is back", every=0.5)
        drained_seconds = time.monotonic() - space_back
        lost, duplicates = delivered_intact(hop, acked)
        bounces = [a for a in hop.recorder.arrivals if a.sender == ""]
        report(
            "disk full during settle", acknowledged=len(acked), refused_452=sum(during.refusals.values()),
            full_seconds=round(full_seconds, 1), drained_seconds_after_space_back=round(drained_seconds, 1),
            runner_exits=server.log().count("delivery-0 (pid"), lost=lost, duplicates=duplicates, bounces=len(bounces),
        )
        assert lost == 0 and duplicates == 0 and not bounces
        assert server.stop() == 0
    finally:
        hop.stop()


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
