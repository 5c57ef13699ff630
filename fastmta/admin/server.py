"""The admin process: granian, embedded in this process's uvloop, serving the admin app on [admin] listen.

Embedded rather than granian's own process manager: the supervisor already forks, watches and
restarts this process, and one process keeps one LMDB environment and one set of signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from granian.constants import Interfaces
from granian.log import LogLevels
from granian.server.embed import Server

from fastmta import metrics
from fastmta.admin.api.realtime import Feed
from fastmta.admin.app import create_app
from fastmta.config import Config, parse_hostport

log = logging.getLogger("fastmta.admin")

# granian's own messages go through our handlers; only its errors are worth a line.
_GRANIAN_LOGGING = {"loggers": {"_granian": {"handlers": [], "propagate": True}}}


def run(config: Config, name: str) -> int:
    async def main() -> None:
        host, port = parse_hostport(config.admin.listen, 8080)
        if config.server.metrics:
            metrics.node_seen(config.server.node_id)
        feed = Feed()
        server = Server(
            create_app(config, feed),
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            backlog=1024,
            log_level=LogLevels.error,
            log_dictconfig=_GRANIAN_LOGGING,
        )
        loop = asyncio.get_running_loop()

        def stop() -> None:
            # granian stops once every response has ended; the event streams end only when told.
            feed.close()
            server.stop()

        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)
        log.info("%s serving http://%s", name, config.admin.listen)
        await server.serve()
        log.info("%s stopped", name)

    uvloop.run(main())
    return 0
