"""The SMTP listening sockets: bound by the supervisor before it forks, one per worker for every configured address."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from fastmta.config import Config, parse_hostport


@dataclass(frozen=True)
class ListenerSocket:
    """One worker's socket for one listener."""

    kind: str  # "smtp", "submission" or "smtps"
    address: str
    sock: socket.socket
    proxy_protocol: bool


def _plan(config: Config) -> list[tuple[str, str]]:
    smtp = config.smtp
    return (
        [("smtp", a) for a in smtp.listen]
        + [("submission", a) for a in smtp.submission_listen]
        + [("smtps", a) for a in smtp.smtps_listen]
    )


def _bind(address: str) -> socket.socket:
    host, port = parse_hostport(address)
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # One socket per worker on the same port: the kernel spreads connections across workers
    # without a thundering herd, and a dead worker's queue waits in its own socket until its
    # successor (unless the supervisor closes them while that successor is throttled).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(sockaddr)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@dataclass
class Listeners:
    """The sockets of every listener, one set per worker slot."""

    plan: list[tuple[str, str]]
    proxy_protocol: bool
    per_slot: list[list[ListenerSocket]] = field(default_factory=list)

    @classmethod
    def open(cls, config: Config) -> Listeners:
        listeners = cls(_plan(config), config.smtp.proxy_protocol)
        listeners.per_slot = [listeners._bind_slot() for _ in range(config.smtp_workers)]
        return listeners

    def _bind_slot(self) -> list[ListenerSocket]:
        """One worker's socket of every listener; all or none (a failure closes what it opened)."""
        bound: list[ListenerSocket] = []
        try:
            for kind, address in self.plan:
                bound.append(ListenerSocket(kind, address, _bind(address), self.proxy_protocol))
        except BaseException:
            for listener in bound:
                listener.sock.close()
            raise
        return bound

    def fits(self, config: Config) -> bool:
        return (
            self.plan == _plan(config)
            and self.proxy_protocol == config.smtp.proxy_protocol
            and len(self.per_slot) == config.smtp_workers
        )

    def describe(self) -> str:
        return ", ".join(f"{kind} {address}" for kind, address in self.plan)

    def close(self) -> None:
        self.close_except([])

    def rebind(self, slot: int) -> list[ListenerSocket]:
        """New sockets for one worker slot, in place of ones closed while its worker was down."""
        self.per_slot[slot] = self._bind_slot()
        return self.per_slot[slot]

    def close_except(self, keep: list[ListenerSocket]) -> None:
        """A worker keeps only its own sockets, so closing a listener elsewhere really closes it."""
        for slot in self.per_slot:
            for listener in slot:
                if listener not in keep:
                    listener.sock.close()
