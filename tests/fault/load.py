"""A small load source for fault tests: concurrent SMTP clients that remember exactly what got `250`."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Load:
    port: int
    clients: int = 16
    seed: int = 1
    acked: dict[str, bytes] = field(default_factory=dict)
    refused: int = 0
    refusals: Counter[bytes] = field(default_factory=Counter)  # end-of-data replies other than 250, by code
    # Asked before each message: while it says no, the client waits (a backlog bound, say).
    may_send: Callable[[], bool] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    async def _client(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        sequence = 0
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            try:
                if not (await reader.readline()).startswith(b"220"):
                    raise ConnectionError
                writer.write(b"EHLO load.test\r\n")
                while True:
                    line = await reader.readline()
                    if line.startswith(b"250 "):
                        break
                    if not line.startswith(b"250-"):  # a refusal, or the end of the connection
                        raise ConnectionError
                for _ in range(rng.randint(1, 20)):
                    while self.may_send is not None and not self.may_send() and not self._stop.is_set():
                        await asyncio.sleep(0.01)
                    if self._stop.is_set():
                        break
                    sequence += 1
                    body = self._body(rng, number, sequence)
                    writer.write(b"MAIL FROM:<load@example.com>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\n")
                    replies = [await reader.readline() for _ in range(3)]
                    if not all(r.startswith((b"250", b"354")) for r in replies):
                        raise ConnectionError
                    writer.write(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
                    reply = await reader.readline()
                    if b"queued as" in reply:
                        self.acked[reply.split()[-1].decode()] = body
                    elif not reply:
                        raise ConnectionError
                    else:
                        self.refused += 1
                        self.refusals[reply[:9]] += 1
                writer.write(b"QUIT\r\n")
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.02)
            finally:
                writer.close()

    @staticmethod
    def _body(rng: random.Random, client: int, sequence: int) -> bytes:
        filler = os.urandom(rng.choice((50, 700, 3000, 30000))).hex().encode()
        lines = [filler[i : i + 76] for i in range(0, len(filler), 76)]
        return (
            f"Subject: load {client}-{sequence}\r\n\r\n".encode()
            + b"\r\n".join(lines)
            + b"\r\n.dotted line\r\n"
        )
