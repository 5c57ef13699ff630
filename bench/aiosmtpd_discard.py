"""compare.py's plain-Python baseline: aiosmtpd under uvloop, reading every message and throwing it away."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session


class Discard:
    """No queue, no fsync: 250 as soon as the message has been read."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: discarded"


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Discard(), hostname="aiosmtpd.bench.invalid"), host, port)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    print(f"aiosmtpd listening on {host}:{port}", flush=True)
    await stop
    server.close()


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    uvloop.run(serve(host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
