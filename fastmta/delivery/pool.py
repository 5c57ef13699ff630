"""Connections per destination: reused up to a message count, capped in number, paced by a token bucket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastmta.delivery.outbound import Connection, Destination

# An idle connection is closed after this long: next hops drop idle clients anyway.
IDLE_SECONDS = 10.0


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
    ) -> None:
        self.destination = destination
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
        """Back to the idle list, or closed when it is worn out or broken."""
        if connection.usable and connection.messages_sent < self._max_messages:
            self._idle.append((connection, time.monotonic()))
            self._wake_one()
            return
        if connection.usable:
            await connection.quit()
        self._forget()

    def _forget(self) -> None:
        self.open_connections -= 1
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

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self._pools: dict[Destination, DestinationPool] = {}

    def get(self, destination: Destination, max_connections: int, max_messages: int, rate: float) -> DestinationPool:
        pool = self._pools.get(destination)
        if pool is None:
            pool = DestinationPool(destination, self._opener, max_connections, max_messages, rate)
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

