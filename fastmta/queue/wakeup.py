"""A FIFO next to the queue that says "something became due": ingress, the CLI and the admin poke it, runners wait on it.

A poke is a hint, never the only way work is found: runners also look at the schedule on a timer,
so a poke lost to a full pipe or a runner that is not running yet costs latency, not mail.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

FIFO_NAME = "delivery.wakeup"


def fifo_path(data_dir: Path) -> Path:
    return data_dir / FIFO_NAME


def _ensure_fifo(path: Path) -> None:
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        if not stat.S_ISFIFO(path.stat().st_mode):
            raise RuntimeError(f"{path} exists and is not a FIFO") from None


class Poker:
    """The writing side; keeps its descriptor open between pokes."""

    def __init__(self, data_dir: Path) -> None:
        self._path = fifo_path(data_dir)
        self._fd = -1

    def poke(self) -> None:
        if self._fd < 0:
            try:
                # Fails with ENXIO while no runner has the FIFO open: then there is nobody to wake.
                self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                return
        try:
            os.write(self._fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full of unread pokes: the runners are awake already
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                os.close(self._fd)
                self._fd = -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Waiter:
    """The reading side, for a runner's event loop: a poke sets `event`."""

    def __init__(self, data_dir: Path, loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
        path = fifo_path(data_dir)
        _ensure_fifo(path)
        # Read-write, so the FIFO never reports end-of-file when the last writer goes away.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._event = event
        self._loop = loop
        loop.add_reader(self._fd, self._drain)

    def _drain(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass
        self._event.set()

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
