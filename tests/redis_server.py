"""A private Redis for tests: `redis-server` on an ephemeral loopback port in a temporary directory, no persistence.

Uses the Debian `redis-server` package. A fault test may stop it and start it again on the same
port (`RedisServer.stop`, `RedisServer.start`); with no persistence it comes back empty, as a
restarted cache would.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from tests.conftest import free_port, installed


class RedisServer:
    def __init__(self, directory: Path) -> None:
        self.binary = installed("redis-server", "redis-server")
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "no", "--logfile", str(self.log), "--daemonize", "no"],
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.02)
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(15)
        self.process = None
