"""A webhook receiver that answers every POST with 200 at once: what the events process posts to in compare.py.

Usage: webhook_sink.py HOST:PORT. HTTP/1.1 with keep-alive, as the events process's client pools its connections.
It shares the CPUs with the server it measures, so it does as little as a receiver can: each body is
counted off as it arrives and dropped, never gathered into one buffer.
"""

from __future__ import annotations

import asyncio
import sys

_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_END_OF_HEAD = b"\r\n\r\n"


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.head = bytearray()  # of the request being read, until its blank line
        self.body_left = 0  # bytes of its body still to come

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.body_left:
                taken = min(self.body_left, len(view))
                self.body_left -= taken
                view = view[taken:]
                if not self.body_left:
                    self.transport.write(_REPLY)
                continue
            self.head += view
            view = memoryview(b"")
            end = self.head.find(_END_OF_HEAD)
            if end < 0:
                continue
            rest = bytes(self.head[end + len(_END_OF_HEAD):])
            self.body_left = _content_length(bytes(self.head[:end]))
            self.head.clear()
            if not self.body_left:
                self.transport.write(_REPLY)
            view = memoryview(rest)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def main(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Receiver, host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    address, _, port_text = sys.argv[1].rpartition(":")
    asyncio.run(main(address, int(port_text)))
