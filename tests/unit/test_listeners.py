"""The listening sockets open all or nothing: a failure names the address and leaves nothing bound or open."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fastmta.config import Config, load
from fastmta.listeners import ListenError, Listeners
from tests.conftest import free_port


def config(addresses: list[str], workers: int) -> Config:
    return load(environ={"FASTMTA_SMTP_LISTEN": ",".join(addresses), "FASTMTA_SMTP_WORKERS": str(workers)})


@contextmanager
def occupied() -> Iterator[int]:
    """A port held without SO_REUSEPORT, as another program would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_every_slot_listens_on_every_address() -> None:
    ports = [free_port(), free_port()]
    listeners = Listeners.open(config([f"127.0.0.1:{port}" for port in ports], workers=2))
    try:
        assert [[s.address for s in slot] for slot in listeners.per_slot] == [[f"127.0.0.1:{p}" for p in ports]] * 2
        for port in ports:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        listeners.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", ports[0]), timeout=5)


def test_a_busy_address_fails_the_whole_set_and_leaves_nothing_behind() -> None:
    free = free_port()
    before = open_descriptors()
    with occupied() as busy:
        with pytest.raises(ListenError) as raised:
            # The free address binds first, in every slot, before the busy one fails.
            Listeners.open(config([f"127.0.0.1:{free}", f"127.0.0.1:{busy}"], workers=2))
        assert str(raised.value) == f"cannot listen on 127.0.0.1:{busy} (smtp): Address already in use"
    assert open_descriptors() == before
    # Nothing of ours holds the free port: a socket without SO_REUSEPORT can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free))
        sock.listen()


def test_an_unresolvable_name_is_a_listen_error() -> None:
    with pytest.raises(ListenError, match=r"^cannot listen on nonexistent\.invalid:25 \(smtp\): "):
        Listeners.open(config(["nonexistent.invalid:25"], workers=1))
