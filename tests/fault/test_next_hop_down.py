"""The next hop down for a while, refusing connections or greeting with 421, then back.

Everything is deferred meanwhile (never failed, never bounced) and delivered once it answers again.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest

from tests.fault.common import arrived, queue_id, queued, report, seed, wait_for
from tests.fault.load import Load
from tests.integration.nexthop import NextHop
from tests.integration.test_delivery import journal
from tests.integration.test_ingress import without_received

COUNT = 60
ATTEMPTS_WHILE_DOWN = 3


class Busy:
    """A next hop that greets every client with 421 and hangs up (as a server shedding load does)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                client.sendall(b"421 4.3.2 Service not available, closing transmission channel\r\n")
            except OSError:
                pass
            client.close()

    def stop(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.mark.parametrize("how", ["refusing", "421"])
def test_next_hop_down_then_back_delivers_everything_and_bounces_nothing(make_server, how: str) -> None:
    rng = random.Random(seed(f"next hop down ({how})"))
    hop = NextHop()
    busy = Busy(hop.port) if how == "421" else None
    try:
        server = make_server(
            {
                "delivery": {"workers": 1, "retry_schedule": ["1s", "2s"]},
                "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
            }
        )
        load = Load(server.port, clients=2, seed=rng.randrange(1 << 30)).start()
        wait_for(lambda: len(load.acked) >= COUNT, 30, f"{COUNT} messages acknowledged")
        load.stop()
        down_since = time.monotonic()

        def tried_enough() -> list[dict[str, Any]] | None:
            listing = queued(server)
            return listing if all(m["attempts"] >= ATTEMPTS_WHILE_DOWN for m in listing) else None

        listing = wait_for(tried_enough, 60, f"{ATTEMPTS_WHILE_DOWN} attempts of every message", every=0.5)
        statuses = Counter(entry["status"] for entry in journal(server))
        # Nothing failed and no notice was queued: only the messages themselves are in the queue.
        assert set(statuses) == {"deferred"}, statuses
        assert set(load.acked) <= {m["id"] for m in listing} and all(m["sender"] for m in listing)
        down_seconds = time.monotonic() - down_since

        if busy is not None:
            busy.stop()
        hop.start()
        back = time.monotonic()
        wait_for(lambda: not queued(server), 60, "the queue to drain once the next hop is back", every=0.5)
        drained = time.monotonic() - back
        copies = arrived(hop.recorder.arrivals)
        lost = [m for m in load.acked if m not in copies]
        for arrival in hop.recorder.arrivals:
            assert arrival.sender == "load@example.com", arrival.sender  # no bounce, no delay notice
        statuses = Counter(entry["status"] for entry in journal(server))
        report(
            f"next hop down ({how})", messages=len(load.acked), stored=len(listing), down_seconds=round(down_seconds, 1),
            deferrals=statuses["deferred"], delivered=statuses["delivered"], failed=statuses["failed"],
            drained_seconds_after_back=round(drained, 1), lost=len(lost),
            duplicates=sum(n - 1 for n in copies.values()), bounces=0,
            refused_with_421=busy.connections if busy else None,
        )
        assert not lost and statuses["failed"] == 0
        for arrival in hop.recorder.arrivals:
            message_id = queue_id(arrival)
            if message_id in load.acked:
                assert without_received(arrival.content) == load.acked[message_id]
        assert server.stop() == 0
    finally:
        if busy is not None and busy.sock.fileno() >= 0:
            busy.stop()
        hop.stop()
