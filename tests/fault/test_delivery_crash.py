"""A delivery runner killed mid-batch: after its restart every message arrives at least once, none is lost,
and the delivery log never claims a delivery the next hop did not get."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib

from tests.integration.nexthop import NextHop
from tests.integration.test_delivery import journal, queue_empty, relay_config, wait_until

COUNT = 40


def test_sigkill_runner_mid_batch(make_server) -> None:
    hop = NextHop().start()
    hop.recorder.data_delay = 0.05
    try:
        server = make_server(relay_config(hop.port, max_connections=4))
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            for n in range(COUNT):
                client.sendmail("alice@example.com", ["bob@example.org"], f"Subject: {n}\r\n\r\nbody {n}\r\n".encode())
        hop.recorder.wait_for(5)
        leased = [m["lease_owner"] for m in json.loads(server.cli("queue", "list", "--json").stdout) if m["lease_owner"]]
        assert leased, "nothing was in flight"
        runner_pid = int(leased[0].rpartition(":")[2])
        os.kill(runner_pid, signal.SIGKILL)

        wait_until(lambda: queue_empty(server), timeout=60)
        arrived = {re.search(rb"^Subject: (\d+)", a.content, re.M).group(1) for a in hop.recorder.arrivals}
        assert arrived == {str(n).encode() for n in range(COUNT)}
        received_ids = {re.search(rb"id (\w+)", a.content).group(1).decode() for a in hop.recorder.arrivals}
        delivered = {e["message_id"] for e in journal(server) if e["status"] == "delivered"}
        assert delivered <= received_ids and len(delivered) == COUNT
        assert "took over" in server.log()
        assert server.stop() == 0
    finally:
        hop.stop()
