"""mbox: path/<recipient>, one file per mailbox, messages appended mboxrd-style under the locks other mbox readers take.

Each message is a "From sender date" line, the message with LF line endings and every line that
matches ^>*From  given one more ">" (mboxrd, which a reader undoes exactly), then an empty line.
The append runs under both locks mutt, procmail and Python's mailbox take: fcntl (lockf) on the
file and the dot-lock <mbox>.lock, made with O_EXCL. It is fsynced before put() returns; a write
that fails half-way (a full disk) is cut off again, so the mailbox never holds half a message.
Python's mailbox.mbox is not used for writing: it reads the whole file before every append.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastmta.stores import files
from fastmta.stores.base import Copy, Failed, Refused

# A reader holds the locks while it reads or rewrites the mailbox: wait this long, then defer.
_LOCK_WAIT = 10.0
_LOCK_PAUSE = 0.02
# As procmail's locktimeout: a dot-lock this old was left by a writer that died.
_STALE_DOT_LOCK = 1024.0
_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
# Appends of this process to one mailbox take turns on one of these (by the mailbox's name): a few
# fixed locks rather than one per mailbox ever written, which would grow with every new recipient.
_TURNS = 64


def framed(copy: Copy, now: float) -> bytes:
    """The copy as one mboxrd entry: separator line, escaped message with LF endings, empty line."""
    text = copy.body.replace(b"\r\n", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    sender = copy.sender or "MAILER-DAEMON"
    separator = f"From {sender} {time.asctime(time.localtime(now))}\n".encode()
    return separator + _FROM_LINE.sub(rb">\1", text) + b"\n"


class MboxStore:
    per_recipient = True

    def __init__(self, root: Path) -> None:
        self.root = root
        # fcntl locks belong to the process, so they do not keep this process's threads apart: these do.
        self._turns = [threading.Lock() for _ in range(_TURNS)]

    def put(self, copy: Copy) -> None:
        [address] = copy.recipients
        name = files.mailbox_name(address)
        if name.endswith(".lock"):
            raise Refused(f"no mailbox for {address!r}: its name is another mailbox's dot-lock")
        entry = framed(copy, time.time())
        with self._turns[hash(name) % _TURNS]:
            self._append(files.make_directories(self.root) / name, entry)

    def close(self) -> None:
        pass

    def _append(self, path: Path, entry: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with _locked(fd, path):
                size = os.fstat(fd).st_size
                try:
                    files.write_all(fd, entry)
                    os.fsync(fd)
                except OSError as exc:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
                    raise Failed(f"mbox write failed: {exc.strerror}") from exc
            if size == 0:
                files.fsync_directory(path.parent)  # a new mailbox: its name must survive as its first message does
        finally:
            os.close(fd)


@contextmanager
def _locked(fd: int, path: Path) -> Iterator[None]:
    """fcntl then the dot-lock, as Python's mailbox takes them; neither is waited on while the other is held."""
    dot_lock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        if _try_lockf(fd):
            if _try_dot_lock(dot_lock):
                break
            fcntl.lockf(fd, fcntl.LOCK_UN)
        if time.monotonic() > deadline:
            raise Failed(f"mbox {path.name} stayed locked by another process for {_LOCK_WAIT:g}s")
        time.sleep(_LOCK_PAUSE)
    try:
        yield
    finally:
        dot_lock.unlink(missing_ok=True)
        fcntl.lockf(fd, fcntl.LOCK_UN)


def _try_lockf(fd: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _try_dot_lock(dot_lock: Path) -> bool:
    try:
        os.close(os.open(dot_lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        try:
            if time.time() - dot_lock.stat().st_mtime > _STALE_DOT_LOCK:
                dot_lock.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    return True
