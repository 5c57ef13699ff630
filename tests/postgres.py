"""A private PostgreSQL for tests: initdb in a temporary directory, the server on an ephemeral port, gone afterwards.

Uses the Debian `postgresql` package (its binaries under /usr/lib/postgresql/*/bin). PostgreSQL
refuses to run as root, so as root the cluster belongs to `nobody`.
"""

from __future__ import annotations

import glob
import os
import shutil
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


@contextmanager
def server(directory: Path) -> Iterator[str]:
    """Runs a cluster in `directory`; yields the URL of its `postgres` database, user postgres, no password."""
    bin_dir = binaries()
    assert bin_dir is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        directory.chmod(0o777)  # nobody must reach its cluster's directory under root's temporary one
        for parent in directory.parents:
            if parent == Path(parent.anchor) or parent.stat().st_mode & 0o001:
                break
            parent.chmod(parent.stat().st_mode | 0o001)
    data, sockets = directory / "data", directory / "sockets"
    sockets.mkdir()
    sockets.chmod(0o777)
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    log = directory / "postgres.log"  # a file, not a pipe nobody reads, which would fill and stall the server
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off"],
            stdout=output, stderr=output,
        )
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(
            [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], timeout=10
        ).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {log.read_text(errors='replace')}")
            time.sleep(0.1)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        process.terminate()  # SIGTERM: smart shutdown, and no client is left
        process.wait(timeout=60)
