"""A private HAProxy for tests: TCP mode on an ephemeral loopback port, PROXY protocol v2 to each backend.

Uses the Debian `haproxy` package, run in the foreground (-db) with a config written to a
temporary directory. Health checks every 200 ms take a dead backend out at its first failed
check; a connection refused by a backend is retried on another (redispatch).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import free_port, installed, wait_for_listener


class Haproxy:
    def __init__(self, directory: Path, backends: list[int]) -> None:
        self.binary = installed("haproxy", "haproxy")
        self.port = free_port()
        servers = "\n".join(
            f"    server node{number} 127.0.0.1:{port} send-proxy-v2 check inter 200ms fall 1 rise 2"
            for number, port in enumerate(backends)
        )
        self.config = directory / "haproxy.cfg"
        self.config.write_text(
            "global\n    maxconn 2000\n"
            "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n"
            "    retries 3\n    option redispatch\n"
            f"frontend smtp\n    bind 127.0.0.1:{self.port}\n    default_backend nodes\n"
            f"backend nodes\n    balance roundrobin\n{servers}\n"
        )
        self.log = directory / "haproxy.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        with self.log.open("ab") as output:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdout=output, stderr=output)
        wait_for_listener(self.port)
        return self

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(15)
        self.process = None
