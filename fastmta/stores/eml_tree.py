"""eml-tree: path/YYYY/MM/DD/<id>.eml, one file per message, filed under the (UTC) day it was received.

The file is written under a temporary name in the same directory, fsynced, renamed, and the
directory fsynced. The day and the name come from the message, not the clock: a message stored
again (a retry, or a runner that died before settling it) replaces its own file with the same bytes.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from fastmta.stores import files
from fastmta.stores.base import Copy

_counter = itertools.count()


def day_parts(received_at: float) -> tuple[str, str, str]:
    """('2025', '03', '07'): the UTC day a message was received, as archives file it."""
    day = time.gmtime(received_at)
    return f"{day.tm_year:04d}", f"{day.tm_mon:02d}", f"{day.tm_mday:02d}"


class EmlTreeStore:
    per_recipient = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, copy: Copy) -> Path:
        return self.root.joinpath(*day_parts(copy.received_at), f"{copy.message_id}.eml")

    def put(self, copy: Copy) -> None:
        final = self.path_of(copy)
        files.make_directories(self.root, *day_parts(copy.received_at))
        files.place(final.with_name(f".{final.name}.{os.getpid()}.{next(_counter)}.tmp"), final, copy.body)

    def close(self) -> None:
        pass
