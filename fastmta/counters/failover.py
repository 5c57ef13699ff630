"""Redis first, state.lmdb while Redis is unreachable, and what was counted alone told to Redis when it returns.

A node of a cluster never waits for Redis: a command that fails or times out ([cluster]
redis_timeout) makes the process count in its own state.lmdb, as a node without a cluster does,
and Redis is tried again at most once a RETRY_SECONDS (the worker's once-a-second sweep tries it
too, so a return is noticed without traffic). Each process decides alone, so for a moment some
processes of a node may count in Redis and others locally.

What moves at each switch, so that nothing is counted twice or forgotten:
- Open connections: this process's connections move with it. Going local, each one is counted
  in state.lmdb; coming back, they are given back to state.lmdb and written to Redis as this
  process's fields (RedisCounters.republish), which also removes fields of connections that closed
  during the outage.
- Rates (messages, recipients, AUTH failures, connections per minute, quotas): what this process
  counted in state.lmdb during the outage, less what it gave back, is added to Redis's windows
  (those still counting) when it returns, so the cluster's windows include it.
- Holds on destinations: granted without counting while Redis is unreachable (each runner's own
  max_connections still applies); the ones let go meanwhile are written when Redis returns.
- Openings written without waiting (open_soon): going local abandons those still unanswered
  (their counts lowered first, so that they do not move), and answers() counts them in
  state.lmdb instead.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import lmdb
import redis

from fastmta.counters.interface import Opened, Unused, Wanted
from fastmta.counters.redis_counters import Opening, RedisCounters
from fastmta.ratelimit import RateLimiter

log = logging.getLogger("fastmta.cluster")

RETRY_SECONDS = 1.0


def _unchanged(degraded: bool) -> None:
    """Nobody to tell."""


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """One caller at a time: a process calls from its event loop and from threads (a runner's look at
    the switch, the admin's health checks), and a recovery must not run twice at once."""

    @functools.wraps(method)
    def locked(self: FailoverCounters, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return cast(F, locked)


class _Unreachable:
    """What _ask answers when Redis could not be asked."""


_UNREACHABLE = _Unreachable()
T = TypeVar("T")


class FailoverCounters:
    """Counters (fastmta.counters.interface) for one process of a cluster node; `degraded` while on state.lmdb."""

    def __init__(
        self, shared: RedisCounters, local: RateLimiter, name: str, changed: Callable[[bool], None] = _unchanged
    ) -> None:
        self.shared = shared
        self.local = local
        self._name = name
        self._changed = changed
        self._lock = threading.RLock()
        self.degraded = False
        self._retry_at = 0.0
        self._local_open: Counter[str] = Counter()  # connections by IP counted in state.lmdb
        # Rate events counted in state.lmdb alone, by (kind, key, window, window index).
        self._alone: Counter[tuple[str, str, float, int]] = Counter()
        self._unshared_holds: Counter[tuple[str, str]] = Counter()

    # ----- which store ------------------------------------------------------------------------

    def _shared_usable(self) -> bool:
        if not self.degraded:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._recover()
        except (redis.RedisError, lmdb.Error) as error:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            log.debug("%s: Redis still unreachable: %s", self._name, error)
            return False
        return True

    def _ask(self, question: Callable[[], T]) -> T | _Unreachable:
        """Redis's answer, unless it is (or turns out) unreachable."""
        if self._shared_usable():
            try:
                return question()
            except redis.RedisError as error:
                self._failed(error)
        return _UNREACHABLE

    def _failed(self, error: redis.RedisError) -> None:
        self._retry_at = time.monotonic() + RETRY_SECONDS
        self.shared.abandon(error)
        if self.degraded:
            return
        self.degraded = True
        log.warning("%s: Redis unreachable, limits are this node's own (state.lmdb) until it returns: %s", self._name, error)
        moving = self.shared.connections()
        self.shared.forget_connections()
        for ip, count in moving.items():
            for _ in range(count):
                self.local.connection_opened(ip)
            self._local_open[ip] += count
        self._changed(True)

    def _recover(self) -> None:
        self.shared.ping()
        for ip, count in self._local_open.items():
            for _ in range(count):
                self.local.connection_closed(ip)
        self.shared.adopt_connections(self._local_open)
        self._local_open.clear()
        for (kind, key, window, index), amount in self._alone.items():
            if amount > 0:
                self.shared.add(kind, key, window, index * window, amount)
        self._alone.clear()
        self.shared.republish()
        self.degraded = False
        log.info("%s: Redis reachable again, limits are the cluster's", self._name)
        self._changed(False)

    def _counted_alone(self, kind: str, key: str, window: float, now: float | None, amount: int) -> None:
        index = math.floor((time.time() if now is None else now) / window)
        self._alone[(kind, key, window, index)] += amount

    # ----- Counters ---------------------------------------------------------------------------

    @_locked
    def hit(self, kind: str, key: str, limit: int, window: float, now: float | None = None, amount: int = 1) -> bool:
        found = self._ask(lambda: self.shared.hit(kind, key, limit, window, now, amount))
        if not isinstance(found, _Unreachable):
            return found
        counted = self.local.hit(kind, key, limit, window, now, amount)
        if counted and limit > 0:
            self._counted_alone(kind, key, window, now, amount)
        return counted

    @_locked
    def take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None = None) -> int:
        found = self._ask(lambda: self.shared.take(kind, key, limit, window, want, now))
        if not isinstance(found, _Unreachable):
            return found
        granted = self.local.take(kind, key, limit, window, want, now)
        self._counted_alone(kind, key, window, now, granted)
        return granted

    @_locked
    def count(self, kind: str, key: str, window: float, now: float | None = None) -> float:
        found = self._ask(lambda: self.shared.count(kind, key, window, now))
        if not isinstance(found, _Unreachable):
            return found
        return self.local.count(kind, key, window, now)

    @_locked
    def connection_opened(
        self, ip: str, per_minute: int = 0, now: float | None = None, reserve: Sequence[Wanted] = ()
    ) -> Opened | None:
        found = self._ask(lambda: self.shared.connection_opened(ip, per_minute, now, reserve))
        if not isinstance(found, _Unreachable):
            return found
        return self._opened_locally(ip, per_minute, now, reserve)

    def _opened_locally(self, ip: str, per_minute: int, now: float | None, reserve: Sequence[Wanted]) -> Opened | None:
        opened = self.local.connection_opened(ip, per_minute, now, reserve)
        if opened is not None:
            self._local_open[ip] += 1
            if per_minute > 0:
                self._counted_alone("connections", ip, 60.0, now, 1)
            for wanted, granted in zip(reserve, opened.reserved, strict=True):
                self._counted_alone(wanted.kind, wanted.key, wanted.window, now, granted)
        return opened

    @_locked
    def open_soon(self, openings: Sequence[Opening]) -> bool:
        """Writes the openings to Redis without waiting for the answers, which answers() gives.

        False when they were not written because Redis is unreachable: connection_opened() then
        answers each at once, from state.lmdb.
        """
        if not self._shared_usable():
            return False
        try:
            self.shared.open_soon(openings)
        except redis.RedisError as error:
            self._failed(error)
            return False
        return True

    @_locked
    def answers(self, readable: bool = False) -> list[tuple[object, Opened | None | lmdb.Error]]:
        """open_soon's openings answered so far, by token: by Redis, or by state.lmdb when Redis failed meanwhile.

        `readable` as for RedisCounters.answers. An lmdb.Error is state.lmdb's failure to count one
        (the connection goes uncounted).
        """
        answered: list[tuple[object, Opened | None | lmdb.Error]] = []
        try:
            replies = self.shared.answers(readable)
        except redis.RedisError as error:
            self._failed(error)
            replies = self.shared.answers()  # the openings answered meanwhile, and those given up on with it
        for opening, found in replies:
            ip, per_minute, reserve = opening.ip, opening.per_minute, opening.reserve
            try:
                if isinstance(found, redis.RedisError):
                    self._failed(found)
                    answered.append((opening.token, self._opened_locally(ip, per_minute, None, reserve)))
                else:
                    answered.append((opening.token, found))
            except lmdb.Error as error:
                answered.append((opening.token, error))
        return answered

    def listen(self, stop_reading: Callable[[], None], answers_waiting: Callable[[], None]) -> None:
        """Whoever reads answers() on an event loop is told before the counting connection closes
        (`stop_reading`), and when answers wait that no reply of the connection will announce."""
        self.shared.stop_reading = stop_reading
        self.shared.answers_waiting = answers_waiting

    def reply_fd(self) -> int | None:
        """The file descriptor to watch for open_soon's replies, while the counting connection is open."""
        return self.shared.reply_fd()

    @_locked
    def overdue(self, timeout: float) -> float | None:
        """Gives up on Redis (as a command that timed out would) if an opening has waited `timeout` for its
        answer; when to ask again (time.monotonic()), or None if no opening waits."""
        since = self.shared.unanswered_since()
        if since is None:
            return None
        if time.monotonic() < since + timeout:
            return since + timeout
        self._failed(redis.TimeoutError(f"no answer from Redis within {timeout} s"))
        return None

    @_locked
    def connection_closed(self, ip: str, give_back: Iterable[Unused] = (), now: float | None = None) -> None:
        give_back = list(give_back)
        if not self._local_open[ip]:
            closed = self._ask(lambda: self.shared.connection_closed(ip, give_back, now))
            if not isinstance(closed, _Unreachable):
                return
            # Redis failed: this connection moved among those counted locally, with the others.
        self._local_open[ip] -= 1
        if self._local_open[ip] <= 0:
            del self._local_open[ip]
        self.local.connection_closed(ip, give_back, now)
        for kind, key, window, amount in give_back:
            self._counted_alone(kind, key, window, now, -amount)

    @_locked
    def sweep(self, now: float | None = None) -> int:
        swept = self.local.sweep(now)
        self.renew()
        return swept

    @_locked
    def renew(self) -> None:
        """Says this process is alive in Redis, or tries whether Redis is back: once a second."""
        self._ask(self.shared.sweep)

    @_locked
    def forget_dead_processes(self) -> int:
        forgotten = self.local.forget_dead_processes()
        self._ask(self.shared.forget_dead_processes)
        return forgotten

    def close(self) -> None:
        self.shared.close()
        self.local.close()

    # ----- holds on destinations --------------------------------------------------------------

    @_locked
    def acquire(self, kind: str, key: str, limit: int) -> bool:
        """One of at most `limit` held across the cluster; granted uncounted while Redis is unreachable."""
        found = self._ask(lambda: self.shared.acquire(kind, key, limit))
        if not isinstance(found, _Unreachable):
            return found
        self._unshared_holds[(kind, key)] += 1
        return True

    @_locked
    def release(self, kind: str, key: str) -> None:
        if self._unshared_holds[(kind, key)]:
            self._unshared_holds[(kind, key)] -= 1
            if not self._unshared_holds[(kind, key)]:
                del self._unshared_holds[(kind, key)]
            return
        if not self.shared.holds(kind, key) or isinstance(self._ask(lambda: self.shared.release(kind, key)), _Unreachable):
            self.shared.forget_hold(kind, key)

    # ----- switches (fastmta.queue.control.SharedSwitches) ------------------------------------

    @_locked
    def switch(self, name: str) -> tuple[float, bytes] | None:
        found = self._ask(lambda: self.shared.switch(name))
        if not isinstance(found, _Unreachable):
            return found
        return None

    @_locked
    def set_switch(self, name: str, at: float, value: bytes) -> bool:
        found = self._ask(lambda: self.shared.set_switch(name, at, value))
        if not isinstance(found, _Unreachable):
            return found
        return False

    # ----- heartbeats -------------------------------------------------------------------------

    @_locked
    def beat(self, report: bytes, ttl: float) -> bool:
        """This node's heartbeat (RedisCounters.beat); False while Redis is unreachable."""
        return not isinstance(self._ask(lambda: self.shared.beat(report, ttl)), _Unreachable)

    @_locked
    def nodes(self) -> dict[str, bytes] | None:
        """The nodes' last heartbeats (RedisCounters.nodes); None while Redis is unreachable."""
        found = self._ask(lambda: self.shared.nodes())
        if not isinstance(found, _Unreachable):
            return found
        return None

    # ----- health -----------------------------------------------------------------------------

    @_locked
    def check(self) -> bool:
        """Asks Redis now (at most once a RETRY_SECONDS while it is unreachable); True while degraded."""
        self._ask(self.shared.ping)
        return self.degraded
