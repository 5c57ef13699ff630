"""The audit log: one entry per change made through the admin API, in the `audit` database of queue.lmdb.

Keys are the entry's time in nanoseconds plus random bytes, so a cursor walks the log in order
and two admin processes (during a reload) never overwrite each other.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

import lmdb
import msgspec

_AUDIT_DB = b"audit"
_TIME = struct.Struct(">Q")


class AuditEntry(msgspec.Struct, omit_defaults=True):
    """Fields may be added with defaults; none may be removed or retyped."""

    id: str
    at: float
    actor: str
    action: str
    target: str
    before: Any = None
    after: Any = None
    client_ip: str = ""
    user_agent: str = ""
    request_id: str = ""


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(AuditEntry)


class AuditLog:
    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(_AUDIT_DB)

    def append(self, entry: AuditEntry) -> AuditEntry:
        """Stores the entry with its id and time set; returns it as stored."""
        now = time.time_ns()
        key = _TIME.pack(now) + os.urandom(4)
        entry = msgspec.structs.replace(entry, id=key.hex(), at=now / 1e9)
        with self._env.begin(write=True, db=self._db) as txn:
            txn.put(key, _ENCODER.encode(entry))
        return entry

    def newest(
        self, limit: int, offset: int, actor: str | None = None, action: str | None = None, target: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """A page of entries, newest first, and how many entries match in all."""
        page: list[AuditEntry] = []
        matched = 0
        with self._env.begin(db=self._db) as txn:
            cursor = txn.cursor()
            if not cursor.last():
                return page, 0
            for raw in cursor.iterprev(keys=False):
                entry = _DECODER.decode(raw)
                if (actor and entry.actor != actor) or (action and entry.action != action) or (target and entry.target != target):
                    continue
                if offset <= matched < offset + limit:
                    page.append(entry)
                matched += 1
        return page, matched
