"""A private PostgreSQL for tests: initdb in a temporary directory, the server on an ephemeral port, gone afterwards.

Uses the Debian `postgresql` package (its binaries under /usr/lib/postgresql/*/bin). PostgreSQL
refuses to run as root, so as root the cluster belongs to `nobody`. A fault test may stop the
server and start it again on the same port and data (`Cluster.stop`, `Cluster.start`).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import free_port


def binaries() -> Path | None:
    """The directory holding initdb and postgres, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


class Cluster:
    """One cluster in `directory`: its `postgres` database, user postgres, no password, at `url`."""

    def __init__(self, directory: Path) -> None:
        bin_dir = binaries()
        assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
        self.bin_dir = bin_dir
        self.as_user: list[str] = []
        self.directory = directory
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "nobody", "--"]
            directory.chmod(0o777)
        self._reachable()
        self.data, self.sockets = directory / "data", directory / "sockets"
        self.sockets.mkdir()
        self.sockets.chmod(0o777)
        self.log = directory / "postgres.log"  # a file, not a pipe nobody reads, which would fill and stall the server
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        made = subprocess.run(
            [*self.as_user, str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.decode(errors='replace')}")

    def _reachable(self) -> None:
        """As root, lets nobody reach the cluster's directory under root's temporary one. Again before each
        start: a pytest session started meanwhile makes its pytest-of-root private again."""
        if not self.as_user:
            return
        for parent in self.directory.parents:
            if parent == Path(parent.anchor) or parent.stat().st_mode & 0o001:
                break
            parent.chmod(parent.stat().st_mode | 0o001)

    def start(self) -> None:
        """Starts the server and returns once it accepts connections."""
        self._reachable()
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [*self.as_user, str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "full_page_writes=off"],
                stdout=output, stderr=output,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self.accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.1)

    def accepting(self) -> bool:
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, timeout=10).returncode == 0

    def stop(self, fast: bool = False) -> None:
        """SIGTERM waits for clients to leave (smart); fast (SIGINT, as `pg_ctl stop -m fast`) ends their sessions."""
        assert self.process is not None
        # To the postmaster itself: as root, `process` is runuser, in front of it.
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT if fast else signal.SIGTERM)
        self.process.wait(timeout=60)
        self.process = None


@contextmanager
def server(directory: Path) -> Iterator[str]:
    """Runs a cluster in `directory`; yields the URL of its `postgres` database, user postgres, no password."""
    cluster = Cluster(directory)
    cluster.start()
    try:
        yield cluster.url
    finally:
        if cluster.process is not None:
            cluster.stop()  # no client is left
