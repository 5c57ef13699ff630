"""Local delivery into path/<recipient>/{tmp,new,cur}, the way every maildir reader expects it.

The file is written under tmp/, fsynced, then renamed into new/ and the directory fsynced, so a
reader never sees half a message and a delivered message survives a power loss.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

_counter = itertools.count()


class MaildirError(Exception):
    pass


def mailbox_name(address: str) -> str:
    """The recipient's directory: the address, lowercased, with nothing that could leave the maildir root."""
    name = address.lower()
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise MaildirError(f"no mailbox for {address!r}")
    return name


def _host_part() -> str:
    """The host in unique names, with "/" and ":" escaped as the maildir specification asks."""
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def _fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def deliver(root: Path, address: str, body: bytes) -> Path:
    mailbox = root / mailbox_name(address)
    created = not (mailbox / "new").is_dir()
    for sub in ("tmp", "new", "cur"):
        (mailbox / sub).mkdir(parents=True, exist_ok=True)
    if created:
        # A new mailbox's directories must survive a power loss as much as the message in them.
        _fsync_directory(mailbox)
        _fsync_directory(root)
    now = time.time()
    unique = f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{_host_part()}"
    temporary = mailbox / "tmp" / unique
    final = mailbox / "new" / unique
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, final)
    _fsync_directory(mailbox / "new")
    return final
