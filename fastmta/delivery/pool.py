"""Connections per destination: reused up to a message count, capped in number, paced by a token bucket.

In a cluster ([cluster] redis_url) a route's max_connections and rate hold across every runner of
every node: a new connection first takes one of max_connections slots in Redis, and sending takes
tokens from a sliding window in Redis as well as from the runner's own bucket. Tokens are taken a
tenth of the window's allowance at a time and are not given back, so the cluster's rate is never
exceeded and may fall short by that much per runner sending to the destination.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from fastmta.delivery.outbound import Connection, Destination

# An idle connection is closed after this long: next hops drop idle clients anyway.
IDLE_SECONDS = 10.0
# How often a runner waiting for a slot held on another node asks again: no node can wake it.
CLUSTER_POLL_SECONDS = 0.05


class ClusterLimits(Protocol):
    """The cluster's counters (fastmta.counters.failover.FailoverCounters), as a pool uses them."""

    def acquire(self, kind: str, key: str, limit: int) -> bool: ...

    def release(self, kind: str, key: str) -> None: ...

    def take(self, kind: str, key: str, limit: int, window: float, want: int, now: float | None = None) -> int: ...


class ClusterShare:
    """One destination's share of the cluster-wide limits: its connection slots and its rate's tokens."""

    def __init__(self, cluster: ClusterLimits, destination: Destination, max_connections: int, rate: float) -> None:
        self._cluster = cluster
        self._key = f"{destination.route_index}:{destination.host}:{destination.port}:{destination.source_ip}"
        self._max_connections = max_connections
        # A window long enough to allow one whole message at slow rates ("30/m" is 1 per 2 s).
        self._window = max(1.0, math.ceil(1.0 / rate)) if rate > 0 else 1.0
        self._allowance = round(rate * self._window)
        self._tokens = 0

    async def slot(self) -> None:
        while not self._cluster.acquire("connections", self._key, self._max_connections):
            await asyncio.sleep(CLUSTER_POLL_SECONDS)

    def free_slot(self) -> None:
        self._cluster.release("connections", self._key)

    async def token(self) -> None:
        if not self._allowance:
            return
        while not self._tokens:
            want = max(1, self._allowance // 10)
            self._tokens = self._cluster.take("rate", self._key, self._allowance, self._window, want)
            if not self._tokens:
                await asyncio.sleep(self._window / self._allowance)
        self._tokens -= 1


class TokenBucket:
    """`rate` per second on average, with bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._capacity = max(1.0, rate)
        self._tokens = self._capacity
        self._stamp = time.monotonic()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self.rate)


Opener = Callable[[Destination, str], Awaitable[Connection]]


class DestinationPool:
    """One next hop (route, host, source address): its connections, whichever of the host's addresses they reach."""

    def __init__(
        self,
        destination: Destination,
        opener: Opener,
        max_connections: int,
        max_messages_per_connection: int,
        rate: float,
        cluster: ClusterLimits | None = None,
    ) -> None:
        self.destination = destination
        self._share = None if cluster is None else ClusterShare(cluster, destination, max_connections, rate)
        self._opener = opener
        self._max_connections = max_connections
        self._max_messages = max_messages_per_connection
        self.bucket = TokenBucket(rate)
        self._idle: list[tuple[Connection, float]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self.open_connections = 0
        self.connections_made = 0
        self._turns = 0  # senders between their first wait for a token and handing the connection back

    @asynccontextmanager
    async def turn(self, address: str) -> AsyncIterator[Connection]:
        """A token from the bucket, then a pooled connection (a new one to `address` if none is idle), given back after."""
        self._turns += 1
        try:
            await self.bucket.take()
            if self._share is not None:
                await self._share.token()
            connection = await self.acquire(address)
            try:
                yield connection
            finally:
                await self.release(connection)
        finally:
            self._turns -= 1

    async def acquire(self, address: str) -> Connection:
        while True:
            while self._idle:
                connection, _ = self._idle.pop()
                if connection.usable:
                    return connection
                self._forget()
            if self.open_connections < self._max_connections:
                self.open_connections += 1
                if self._share is not None:
                    try:
                        await self._share.slot()
                    except BaseException:
                        self.open_connections -= 1
                        self._wake_one()
                        raise
                try:
                    connection = await self._opener(self.destination, address)
                except BaseException:
                    self._forget()
                    raise
                self.connections_made += 1
                return connection
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def release(self, connection: Connection) -> None:
        """Back to the idle list, or closed when it is worn out or broken.

        In a cluster it is also closed when no sender of this runner waits for it: idle, it would
        hold a slot that another node's runner may be waiting for.
        """
        wanted = self._share is None or self._turns > 1
        if connection.usable and connection.messages_sent < self._max_messages and wanted:
            self._idle.append((connection, time.monotonic()))
            self._wake_one()
            return
        if connection.usable:
            await connection.quit()
        self._forget()

    def _forget(self) -> None:
        self.open_connections -= 1
        if self._share is not None:
            self._share.free_slot()
        self._wake_one()

    def _wake_one(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close_idle(self, older_than: float = IDLE_SECONDS) -> None:
        limit = time.monotonic() - older_than
        stale = [c for c, since in self._idle if since <= limit]
        self._idle = [(c, since) for c, since in self._idle if since > limit]
        for connection in stale:
            await connection.quit()
            self._forget()

    @property
    def idle(self) -> bool:
        """Nothing open and nobody waiting: dropping the pool forgets no limit that anyone is under."""
        return self.open_connections == 0 and self._turns == 0


class Pools:
    """Every destination's pool in one runner; pools that fall idle are dropped."""

    def __init__(self, opener: Opener, cluster: ClusterLimits | None = None) -> None:
        self._opener = opener
        self._cluster = cluster
        self._pools: dict[Destination, DestinationPool] = {}

    def get(self, destination: Destination, max_connections: int, max_messages: int, rate: float) -> DestinationPool:
        pool = self._pools.get(destination)
        if pool is None:
            pool = DestinationPool(destination, self._opener, max_connections, max_messages, rate, self._cluster)
            self._pools[destination] = pool
        return pool

    async def sweep(self) -> None:
        for destination, pool in list(self._pools.items()):
            await pool.close_idle()
            if pool.idle:
                del self._pools[destination]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close_idle(older_than=-1.0)
        self._pools.clear()

