"""Per-IP counters in state.lmdb shared by every worker: sliding-window rate limits and open connections.

The state.lmdb store of fastmta.counters.interface; in a cluster it stands in while Redis is unreachable.

Rates use the sliding-window counter (the previous fixed window weighted by how much of it still
overlaps the sliding one, plus the current window): two keys per client and limit, no per-event
records. Open connections are counted per process as well as in total, so the connections of a
worker that died can be given back by whoever notices.

The environment is opened without fsync: after a power loss the counters may be a little behind,
which only makes the limits briefly more lenient; no mail depends on them.
"""

from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import lmdb

from fastmta.counters.interface import Opened, Unused, Wanted
from fastmta.processes import alive

_RATE = struct.Struct(">Qd")  # count, expires_at
_COUNT = struct.Struct(">q")
_WINDOW_INDEX = struct.Struct(">Q")
_TOTAL = b"\0total"
MAP_SIZE = 256 * 1024 * 1024


class RateLimiter:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, sync=False, metasync=False, readahead=False)
        self._rates = self._env.open_db(b"rates")
        self._open = self._env.open_db(b"connections")  # per ip, plus _TOTAL
        self._owners = self._env.open_db(b"connection_owners")  # pid \0 ip -> count
        self._pid = os.getpid()

    def hit(self, kind: str, key: str, limit: int, window: float, now: float | None = None, amount: int = 1) -> bool:
        """Counts `amount` events unless that would exceed `limit` per `window`; False means refused."""
        if limit <= 0:
            return True
        with self._env.begin(write=True, db=self._rates) as txn:
            return self._take(txn, kind, key, limit, window, now, amount, partial=False) == amount

    def take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None = None) -> int:
        """Counts as many of `want` events as fit under `limit` per `window`, and returns how many: a reservation."""
        with self._env.begin(write=True, db=self._rates) as txn:
            return self._take(txn, kind, key, limit, window, now, want, partial=True)

    def _take(
        self, txn: lmdb.Transaction, kind: str, key: str, limit: int, window: float, now: float | None, want: int, partial: bool
    ) -> int:
        now = time.time() if now is None else now
        index = math.floor(now / window)
        current, estimate = self._estimate(txn, kind, key, index, now, window)
        room = max(0, math.floor(limit - estimate))
        granted = min(want, room) if partial else (want if want <= room else 0)
        if granted:
            txn.put(_rate_key(kind, key, index), _RATE.pack(current + granted, (index + 2) * window), db=self._rates)
        return granted

    def count(self, kind: str, key: str, window: float, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self._env.begin(db=self._rates) as txn:
            return self._estimate(txn, kind, key, math.floor(now / window), now, window)[1]

    def _estimate(
        self, txn: lmdb.Transaction, kind: str, key: str, index: int, now: float, window: float
    ) -> tuple[int, float]:
        current = _rate_count(txn.get(_rate_key(kind, key, index), db=self._rates))
        previous = _rate_count(txn.get(_rate_key(kind, key, index - 1), db=self._rates))
        overlap = 1.0 - (now / window - index)
        return current, current + previous * overlap

    def sweep(self, now: float | None = None) -> int:
        """Deletes windows that no longer count; returns how many."""
        now = time.time() if now is None else now
        with self._env.begin(write=True, db=self._rates) as txn:
            # Collected first: deleting under a cursor leaves it unpositioned after the last record.
            expired = [key for key, raw in txn.cursor() if _RATE.unpack(raw)[1] < now]
            for key in expired:
                txn.delete(key)
        return len(expired)

    def connection_opened(
        self, ip: str, per_minute: int = 0, now: float | None = None, reserve: Sequence[Wanted] = ()
    ) -> Opened | None:
        """Counts an open connection and takes what `reserve` asks for, in one transaction (Counters.connection_opened)."""
        owner = _owner_key(self._pid, ip)
        with self._env.begin(write=True) as txn:
            if per_minute > 0 and not self._take(txn, "connections", ip, per_minute, 60.0, now, 1, partial=False):
                return None
            _add(txn, self._owners, owner, 1)
            from_ip = _add(txn, self._open, ip.encode(), 1)
            total = _add(txn, self._open, _TOTAL, 1)
            reserved = tuple(
                self._take(txn, wanted.kind, wanted.key, wanted.limit, wanted.window, now, wanted.want, partial=True)
                for wanted in reserve
            )
        return Opened(from_ip, total, reserved)

    def connection_closed(self, ip: str, give_back: Iterable[Unused] = (), now: float | None = None) -> None:
        """Counts a connection closed, and returns what it reserved and did not use, in one transaction.

        Unused events go back to the current window: a reservation made in the previous one is
        returned there at its full weight, at most the reserved amount more lenient for a moment.
        """
        owner = _owner_key(self._pid, ip)
        with self._env.begin(write=True) as txn:
            _add(txn, self._owners, owner, -1)
            _add(txn, self._open, ip.encode(), -1)
            _add(txn, self._open, _TOTAL, -1)
            for kind, key, window, amount in give_back:
                index = math.floor((time.time() if now is None else now) / window)
                rate_key = _rate_key(kind, key, index)
                raw = txn.get(rate_key, db=self._rates)
                if raw is not None:
                    count, expires = _RATE.unpack(raw)
                    txn.put(rate_key, _RATE.pack(max(0, count - amount), expires), db=self._rates)

    def open_connections(self, ip: str | None = None) -> int:
        with self._env.begin(db=self._open) as txn:
            return _count(txn.get(_TOTAL if ip is None else ip.encode()))

    def forget_dead_processes(self) -> int:
        """Gives back the connections counted by processes that no longer exist; returns how many."""
        forgotten = 0
        with self._env.begin(write=True) as txn:
            owners = list(txn.cursor(db=self._owners))
            for key, raw in owners:
                pid_text, _, ip = key.decode().partition("\0")
                if alive(int(pid_text)):
                    continue
                held = _count(raw)
                _add(txn, self._open, ip.encode(), -held)
                _add(txn, self._open, _TOTAL, -held)
                txn.delete(key, db=self._owners)
                forgotten += held
        return forgotten

    def close(self) -> None:
        self._env.close()


def _rate_key(kind: str, key: str, index: int) -> bytes:
    return f"{kind}\0{key}\0".encode() + _WINDOW_INDEX.pack(index)


def _rate_count(raw: bytes | memoryview | None) -> int:
    return 0 if raw is None else _RATE.unpack(raw)[0]


def _owner_key(pid: int, ip: str) -> bytes:
    return f"{pid}\0{ip}".encode()


def _count(raw: bytes | memoryview | None) -> int:
    return 0 if raw is None else _COUNT.unpack(raw)[0]


def _add(txn: lmdb.Transaction, db: lmdb._Database, key: bytes, delta: int) -> int:
    value = max(0, _count(txn.get(key, db=db)) + delta)
    if value:
        txn.put(key, _COUNT.pack(value), db=db)
    else:
        txn.delete(key, db=db)
    return value
