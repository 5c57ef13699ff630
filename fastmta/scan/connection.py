"""One request and its answer over a fresh TCP connection, as spamd and clamd both serve them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


async def exchange(
    host: str,
    port: int,
    connect_timeout: float,
    request: Iterable[bytes | memoryview],
    read: Callable[[asyncio.StreamReader], Awaitable[bytes]],
) -> bytes:
    """Connects within connect_timeout, writes the request's pieces, returns what `read` reads; always closes."""
    async with asyncio.timeout(connect_timeout):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        # One write of all the pieces: a system call each would cost more than the copying they save.
        writer.writelines(request)
        await writer.drain()
        return await read(reader)
    finally:
        writer.close()
