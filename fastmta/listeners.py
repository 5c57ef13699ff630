"""The SMTP listening sockets: bound by the supervisor before it forks, one per worker for every configured address.

Opening is all or nothing: every address is bound first and listened on only when all are, so a
failure closes sockets that never took a connection and raises ListenError, which names the address
and the reason. A reload can so try the new config's sockets without disturbing the running ones,
and a failed start says why in one line.
"""

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


class ListenError(Exception):
    """A listener's address cannot be bound (in use, not assigned here, not permitted, not resolvable)."""

    def __init__(self, kind: str, address: str, error: OSError) -> None:
        super().__init__(f"cannot listen on {address} ({kind}): {error.strerror or error}")


def _plan(config: Config) -> list[tuple[str, str]]:
    smtp = config.smtp
    return (
        [("smtp", str(a)) for a in smtp.listen]
        + [("submission", str(a)) for a in smtp.submission_listen]
        + [("smtps", str(a)) for a in smtp.smtps_listen]
    )


def _bind(address: str) -> socket.socket:
    """A socket bound to the address, not yet listening."""
    host, port = parse_hostport(address)
    family, socktype, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # One socket per worker on the same port: the kernel spreads connections across workers
        # without a thundering herd, and a dead worker's queue waits in its own socket until its
        # successor (unless the supervisor closes them while that successor is throttled).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except BaseException:
        # Each failed reload would otherwise leave a descriptor behind, copied into every later child.
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _listen(sockets: list[ListenerSocket]) -> None:
    for listener in sockets:
        try:
            listener.sock.listen(1024)
        except OSError as error:
            raise ListenError(listener.kind, listener.address, error) from error


def _close(sockets: list[ListenerSocket]) -> None:
    for listener in sockets:
        listener.sock.close()


@dataclass
class Listeners:
    """The sockets of every listener, one set per worker slot."""

    plan: list[tuple[str, str]]
    proxy_protocol: bool
    per_slot: list[list[ListenerSocket]] = field(default_factory=list)

    @classmethod
    def open(cls, config: Config) -> Listeners:
        """Every slot's sockets, listening; or ListenError, with nothing left open."""
        listeners = cls(_plan(config), config.smtp.proxy_protocol)
        try:
            for _ in range(config.smtp_workers):
                listeners.per_slot.append(listeners._bind_slot())
            # Only now: a listening socket joins its port's SO_REUSEPORT group and takes a share of
            # new connections, which closing it after a later failure would reset.
            for sockets in listeners.per_slot:
                _listen(sockets)
        except BaseException:
            listeners.close()
            raise
        return listeners

    def _bind_slot(self) -> list[ListenerSocket]:
        """One worker's socket of every listener, bound and not yet listening; all or none."""
        bound: list[ListenerSocket] = []
        try:
            for kind, address in self.plan:
                try:
                    sock = _bind(address)
                except OSError as error:
                    raise ListenError(kind, address, error) from error
                bound.append(ListenerSocket(kind, address, sock, self.proxy_protocol))
        except BaseException:
            _close(bound)
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
        sockets = self._bind_slot()
        try:
            _listen(sockets)
        except BaseException:
            _close(sockets)
            raise
        self.per_slot[slot] = sockets
        return sockets

    def close_except(self, keep: list[ListenerSocket]) -> None:
        """A worker keeps only its own sockets, so closing a listener elsewhere really closes it."""
        for slot in self.per_slot:
            _close([listener for listener in slot if listener not in keep])
