"""What a store of shared counters offers: sliding-window rates with reservations, and counts of what is held open.

Two stores keep to it: state.lmdb (fastmta.ratelimit.RateLimiter, one node's processes) and Redis
(fastmta.counters.redis_counters.RedisCounters, every node of a cluster). tests/cluster/test_contract.py
runs the same tests against both. What comes later (a suppression set, tenant budgets, per-source
shaping) belongs here too, as methods every store implements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol


class Unused(NamedTuple):
    """Events reserved with take() and not used: given back when the connection closes."""

    kind: str
    key: str
    window: float
    amount: int


class Wanted(NamedTuple):
    """A reservation asked for as a connection opens, in the same update: take()'s arguments."""

    kind: str
    key: str
    limit: int
    window: float
    want: int


class Opened(NamedTuple):
    """A connection counted: the open connections from its IP and in total, and what each Wanted was granted."""

    from_ip: int
    total: int
    reserved: tuple[int, ...] = ()


class Counters(Protocol):
    def hit(self, kind: str, key: str, limit: int, window: float, now: float | None = None, amount: int = 1) -> bool:
        """Counts `amount` events unless that would exceed `limit` per `window`; False means refused, nothing counted."""
        ...

    def take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None = None) -> int:
        """Counts as many of `want` events as fit under `limit` per `window` and returns how many: a reservation."""
        ...

    def count(self, kind: str, key: str, window: float, now: float | None = None) -> float:
        """The sliding-window estimate of events of `kind` for `key`."""
        ...

    def connection_opened(
        self, ip: str, per_minute: int = 0, now: float | None = None, reserve: Sequence[Wanted] = ()
    ) -> Opened | None:
        """Counts an open connection, this one included in the counts returned.

        With `per_minute`, the connection is also a "connections" event for `ip`, in the same
        update; None means that rate was reached and nothing was counted (nor reserved). Each of
        `reserve` is a take() in the same update too, so that a connection's first reservations
        cost no round trip of their own.
        """
        ...

    def connection_closed(self, ip: str, give_back: Iterable[Unused] = (), now: float | None = None) -> None:
        """Counts a connection closed and returns what it reserved and did not use, in one update."""
        ...

    def sweep(self, now: float | None = None) -> int:
        """Periodic upkeep (about once a second): old windows go, this process says it is alive."""
        ...

    def forget_dead_processes(self) -> int:
        """Gives back the connections counted by this node's processes that no longer exist; returns how many."""
        ...

    def close(self) -> None: ...
