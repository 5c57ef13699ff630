"""SIGKILL at seeded random moments of each process role under load, mail flowing to a next hop throughout.

Every message that got `250` must reach the next hop (none lost); a message sent again after a
kill between the next hop's `250` and our settle is a duplicate, allowed (at-least-once) and
counted. A killed supervisor takes its children with it, and `fastmta serve` started again
delivers what the old one left.

FAULT_KILLS (default 20) kills per role; FAULT_SEED repeats a run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from tests.conftest import Server
from tests.fault.common import arrived, env_int, gone, queue_id, queued, report, seed, wait_for
from tests.fault.load import Load
from tests.integration.nexthop import NextHop
from tests.integration.test_ingress import without_received

KILLS = env_int("FAULT_KILLS", 20)
# Acknowledged and not yet at the next hop: the load waits beyond this, so the end is a short drain.
BACKLOG = 300
# The supervisor throttles a child that keeps dying young (0.1 s, doubling); past this many kills of
# one child the server is restarted (SIGTERM, start) to begin afresh, so a run stays short.
KILLS_BEFORE_THROTTLE = 5
ROLES = ["smtp", "delivery", "admin", "supervisor"]


class AdminTraffic:
    """Reads and writes through the admin API in a loop: health, the queue listing, a flush (a queue.lmdb write)."""

    def __init__(self, server: Server) -> None:
        created = server.cli("token", "create", "--role", "operator", "--name", "fault")
        assert created.returncode == 0, created.stderr
        self.token = created.stdout.decode().rsplit(" ", 1)[1].strip()
        self.url = server.admin_url
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AdminTraffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        requests = [("GET", "/health"), ("GET", "/api/v1/queue?limit=5"), ("POST", "/api/v1/queue/flush")]
        turn = 0
        while not self._stop.is_set():
            method, path = requests[turn % len(requests)]
            turn += 1
            request = urllib.request.Request(
                self.url + path, method=method, headers={"Authorization": f"Bearer {self.token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                self.answered += 1
            except urllib.error.HTTPError as refused:
                assert refused.code == 503, refused  # /health while a worker restarts; nothing else may fail
                self.answered += 1
            except OSError:  # down, or killed while answering
                self._stop.wait(0.02)


def config(role: str, hop_port: int) -> dict:
    return {
        "server": {"shutdown_grace_seconds": 2},
        # Four of the killed kind, so each is killed only KILLS_BEFORE_THROTTLE times in twenty.
        "smtp": {"workers": 4 if role == "smtp" else 2},
        "delivery": {"workers": 4 if role == "delivery" else 1, "retry_schedule": ["1s", "2s"], "lease_time": "30s"},
        "admin": {"enabled": True},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop_port, "tls": "none"}],
    }


def role_children(server: Server, role: str) -> dict[str, int]:
    return {name: pid for name, pid in server.children().items() if name == role or name.startswith(f"{role}-")}


def kill_supervisor(server: Server) -> float:
    """SIGKILL to the supervisor alone; returns how long its children took to end."""
    assert server.process is not None
    children = list(server.children().values())
    killed = time.monotonic()
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(10)
    server._log.close()
    wait_for(lambda: all(gone(pid) for pid in children), 15, f"the children {children} to end with their supervisor")
    return time.monotonic() - killed


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_sigkill_role_under_load_loses_nothing_acknowledged(make_server, role: str) -> None:
    rng = random.Random(seed(f"sigkill {role}"))
    hop = NextHop().start()
    server: Server = make_server(config(role, hop.port))
    admin = AdminTraffic(server).start()
    load = Load(server.port, clients=6, seed=rng.randrange(1 << 30))
    load.may_send = lambda: len(load.acked) - len(hop.recorder.arrivals) < BACKLOG
    load.start()
    progress: Callable[[], int] = {
        "smtp": lambda: len(load.acked),
        "delivery": lambda: len(hop.recorder.arrivals),
        "admin": lambda: admin.answered,
        "supervisor": lambda: len(load.acked),
    }[role]
    started = time.monotonic()
    kills: Counter[str] = Counter()
    killed: set[int] = set()
    restarts = 0
    orphan_seconds: list[float] = []
    try:
        for _ in range(KILLS):
            expected = len(role_children(server, role)) if role != "supervisor" else 0
            # Some progress first: the moment is a random number of messages (or admin answers) later.
            target = progress() + rng.randint(1, 10 if role == "admin" else 40)
            wait_for(lambda target=target: progress() >= target, 60, f"{target} of progress ({role})")
            if role == "supervisor":
                orphan_seconds.append(kill_supervisor(server))
                server.start()
                continue
            running = role_children(server, role)
            candidates = sorted(name for name in running if kills[name] < KILLS_BEFORE_THROTTLE)
            if not candidates:
                assert server.stop() == 0
                server.start()
                kills.clear()
                restarts += 1
                running = role_children(server, role)
                candidates = sorted(running)
            victim = rng.choice(candidates)
            os.kill(running[victim], signal.SIGKILL)
            killed.add(running[victim])
            kills[victim] += 1

            def replaced(expected: int = expected) -> bool:
                now = role_children(server, role)
                return len(now) == expected and not killed & set(now.values())

            wait_for(replaced, 30, f"{victim} to be restarted")
        load.stop()
        admin.stop()
        wait_for(lambda: not queued(server), 90, "the queue to drain", every=0.5)
        elapsed = time.monotonic() - started
        copies = arrived([a for a in hop.recorder.arrivals if a.sender == "load@example.com"])
        lost = sorted(set(load.acked) - set(copies))
        contents: dict[str, set[bytes]] = {}
        for arrival in hop.recorder.arrivals:
            contents.setdefault(queue_id(arrival), set()).add(without_received(arrival.content))
        report(
            f"sigkill {role}", kills=KILLS, acknowledged=len(load.acked), delivered=len(copies), lost=len(lost),
            duplicates=sum(n - 1 for n in copies.values()), restarts=restarts, seconds=round(elapsed, 1),
            children_gone_seconds=round(max(orphan_seconds), 2) if orphan_seconds else None,
            admin_answers=admin.answered,
        )
        assert not lost, f"{len(lost)} acknowledged messages never arrived: {lost[:10]}"
        for message_id, body in load.acked.items():
            assert contents[message_id] == {body}, message_id
        assert server.stop() == 0
    finally:
        load.stop()
        admin.stop()
        hop.stop()


def test_children_end_with_a_killed_supervisor_and_a_restart_serves(make_server) -> None:
    hop = NextHop().start()
    try:
        server: Server = make_server(config("supervisor", hop.port))
        children = server.children()
        assert set(children) == {"smtp-0", "smtp-1", "delivery-0", "admin"}
        seconds = kill_supervisor(server)
        assert seconds < 5
        server.start()
        assert not set(children.values()) & set(server.children().values())
        load = Load(server.port, clients=2).start()
        wait_for(lambda: len(load.acked) >= 20, 30, "20 messages acknowledged")
        load.stop()
        wait_for(lambda: set(load.acked) <= set(arrived(hop.recorder.arrivals)), 30, "every message delivered")
        assert server.stop() == 0
    finally:
        hop.stop()
