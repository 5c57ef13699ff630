"""maildir: path/<recipient>/{tmp,new,cur}, one file per message, the way every maildir reader expects it.

The file is written under tmp/, fsynced, then renamed into new/ and the directory fsynced, so a
reader never sees half a message and a delivered message survives a power loss.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from fastmta.stores import files
from fastmta.stores.base import Copy

_counter = itertools.count()


def _host_part() -> str:
    """The host in unique names, with "/" and ":" escaped as the maildir specification asks."""
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072")


class MaildirStore:
    per_recipient = True

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, copy: Copy) -> None:
        [address] = copy.recipients
        self.deliver(address, copy.body)

    def deliver(self, address: str, body: bytes) -> Path:
        mailbox = files.make_directories(self.root, files.mailbox_name(address))
        for sub in ("tmp", "new", "cur"):
            files.make_directories(mailbox, sub)
        now = time.time()
        unique = f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(_counter)}.{_host_part()}"
        final = mailbox / "new" / unique
        files.place(mailbox / "tmp" / unique, final, body)
        return final

    def close(self) -> None:
        pass
