"""Writing files that survive a power cut: whole writes, fsync of the file and of the directory that names it."""

from __future__ import annotations

import os
from pathlib import Path

from fastmta.stores.base import Refused


def mailbox_name(address: str) -> str:
    """A recipient's mailbox in a directory of them: the address, lowercased, with nothing that could leave that directory."""
    name = address.lower()
    if not name or name.startswith(".") or "/" in name or "\0" in name:
        raise Refused(f"no mailbox for {address!r}")
    return name


def fsync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def make_directories(root: Path, *parts: str) -> Path:
    """root/parts..., each directory made here fsynced into its parent, so a copy placed in it is not lost with it."""
    chain = [root]
    for part in parts:
        chain.append(chain[-1] / part)
    for path in chain:
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            fsync_directory(path.parent)
    return chain[-1]


def place(temporary: Path, final: Path, data: bytes) -> None:
    """Writes `temporary`, fsyncs it and renames it to `final` (whose directory is fsynced): a reader sees all or nothing."""
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(temporary, final)
    fsync_directory(final.parent)
