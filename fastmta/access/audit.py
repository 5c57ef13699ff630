"""The audit log: one entry per change made through the admin API, kept by an AuditRows (queue.lmdb's
`audit` database, or SQL).

An entry's id is its time in nanoseconds plus random bytes, so the log walks in order by id, and
two admin processes (during a reload, or on two nodes) never overwrite each other.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any, Protocol

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


class AuditRows(Protocol):
    """Where entries are kept: LmdbAudit below on one node, access/sql.py's SqlAudit in a cluster."""

    def put(self, entry: AuditEntry) -> bool:
        """False, and nothing changed, when an entry of that id is kept already."""
        ...

    def newest(
        self, limit: int, offset: int, actor: str | None, action: str | None, target: str | None
    ) -> tuple[list[AuditEntry], int]:
        """A page of the entries that match every filter given, newest (highest id) first, and how many match in all."""
        ...


class LmdbAudit:
    """Entries in the `audit` database of queue.lmdb, keyed by their id's bytes: this node's own."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._db = env.open_db(_AUDIT_DB)

    def put(self, entry: AuditEntry) -> bool:
        with self._env.begin(write=True, db=self._db) as txn:
            return bool(txn.put(bytes.fromhex(entry.id), _ENCODER.encode(entry), overwrite=False))

    def newest(
        self, limit: int, offset: int, actor: str | None, action: str | None, target: str | None
    ) -> tuple[list[AuditEntry], int]:
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


class AuditLog:
    def __init__(self, rows: AuditRows) -> None:
        self.rows = rows

    def append(self, entry: AuditEntry) -> AuditEntry:
        """Stores the entry with its id and time set; returns it as stored."""
        now = time.time_ns()
        entry = msgspec.structs.replace(entry, id=(_TIME.pack(now) + os.urandom(4)).hex(), at=now / 1e9)
        self.rows.put(entry)
        return entry

    def newest(
        self, limit: int, offset: int, actor: str | None = None, action: str | None = None, target: str | None = None
    ) -> tuple[list[AuditEntry], int]:
        """A page of entries, newest first, and how many entries match in all."""
        return self.rows.newest(limit, offset, actor, action, target)
