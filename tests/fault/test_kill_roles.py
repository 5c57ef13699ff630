"""A killed supervisor takes its children with it, and `fastmta serve` started again serves and delivers."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import Server
from tests.fault.common import arrived, gone, wait_for
from tests.fault.load import Load
from tests.integration.nexthop import NextHop


def config(role: str, hop_port: int) -> dict:
    return {
        "server": {"shutdown_grace_seconds": 2},
        "smtp": {"workers": 2},
        "delivery": {"workers": 1, "retry_schedule": ["1s", "2s"], "lease_time": "30s"},
        "admin": {"enabled": True},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop_port, "tls": "none"}],
    }


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
