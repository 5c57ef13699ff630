"""A webhook receiver that answers every POST with 200 at once: what the events process posts to in compare.py.

Usage: webhook_sink.py HOST:PORT. HTTP/1.1 with keep-alive, as the events process's client pools its connections.
"""

from __future__ import annotations

import asyncio
import sys

_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(_REPLY)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(_serve, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    address, _, port_text = sys.argv[1].rpartition(":")
    asyncio.run(main(address, int(port_text)))
