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
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), connect_timeout)
    try:
        for piece in request:
            writer.write(piece)
            await writer.drain()
        return await read(reader)
    finally:
        writer.close()
