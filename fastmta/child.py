"""What every child process does right after fork, once: signals, logging, the node in its ids, then its role's run(), then exit.

A child never outlives its supervisor: the kernel sends it SIGTERM when the supervisor dies
(PR_SET_PDEATHSIG), and it drains and stops as on any SIGTERM. Otherwise a SIGKILLed supervisor
would leave workers serving headless, unrestarted when they crash, holding the port and the
leases of a successor's queue.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from fastmta import logs
from fastmta.config import Config
from fastmta.queue import records

log = logging.getLogger("fastmta.child")

_SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
_PR_SET_PDEATHSIG = 1


def _end_with(supervisor: int) -> bool:
    """Asks for SIGTERM when the supervisor dies; False if it already has (before the request could count)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    return os.getppid() == supervisor


def run(name: str, config: Config, role: Callable[..., int], supervisor: int, *args: object) -> NoReturn:
    """Never returns into the supervisor's code: the child's fate ends in os._exit.

    `supervisor` is the pid of the process that forked this one; if it is gone already, the child
    exits at once, as nobody would watch or restart it.
    """
    code = 1
    try:
        code = _start(name, config, role, args) if _end_with(supervisor) else 0
    except BaseException:
        log.exception("%s failed", name)
    finally:
        logging.shutdown()
        os._exit(code)


def _start(name: str, config: Config, role: Callable[..., int], args: tuple[object, ...]) -> int:
    # The supervisor blocks these to wait for them synchronously; a child handles its own.
    for signum in _SUPERVISOR_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    # Ctrl-C in a terminal reaches the whole process group; the supervisor decides for the children.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(config.server.log_level, config.server.log_format, name)
    # Queue ids name their node, so that nodes sharing one history never make the same id.
    records.name_node(config.server.node_id)
    return role(config, name, *args)
