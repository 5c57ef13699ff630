"""What every child process does right after fork, once: signals, logging, then its role's run(), then exit."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import NoReturn

from fastmta import logs
from fastmta.config import Config

log = logging.getLogger("fastmta.child")

_SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def run(name: str, config: Config, role: Callable[..., int], *args: object) -> NoReturn:
    """Never returns into the supervisor's code: the child's fate ends in os._exit."""
    code = 1
    try:
        # The supervisor blocks these to wait for them synchronously; a child handles its own.
        for signum in _SUPERVISOR_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # Ctrl-C in a terminal reaches the whole process group; the supervisor decides for the children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        logs.setup(config.server.log_level, config.server.log_format, name)
        code = role(config, name, *args)
    except BaseException:
        log.exception("%s failed", name)
    finally:
        logging.shutdown()
        os._exit(code)
