"""Reading delivery.log back from its end, and the admin's tallies of it per destination and source IP."""

from __future__ import annotations

from pathlib import Path

import msgspec

from fastmta.admin.api.destinations import DestinationsQuery, read
from fastmta.delivery.journal import Entry, read_since


def entry(at: float, recipient: str, status: str, source_ip: str = "", reply: str = "250 ok") -> Entry:
    return Entry(at, "ID", "a@example.com", recipient, status, reply, "mx", 1, "mx", source_ip, 0.1, 1.0)


def write(path: Path, entries: list[Entry]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in entries))


def test_reads_back_to_the_window_across_a_rotation_and_past_a_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "delivery.log"
    write(log.with_name("delivery.log.1"), [entry(t, f"old{t}@x.test", "delivered") for t in range(90, 100)])
    write(log, [entry(t, f"new{t}@x.test", "delivered") for t in range(100, 5000)])
    with log.open("ab") as torn:
        torn.write(b'{"time": 5001, "message_id"')  # a runner died mid-line
    found, complete = read_since(log, 95.0, 8 << 20)
    assert complete and [e.time for e in found] == list(range(4999, 94, -1))

    found, complete = read_since(log, 0.0, 4096)
    assert not complete and found and found[0].time == 4999 and len(found) < 4900
    assert read_since(tmp_path / "none.log", 0.0, 4096) == ([], True)


def test_tallies_per_domain_and_source_ip(tmp_path: Path) -> None:
    now = 10_000.0
    write(tmp_path / "delivery.log", [
        entry(now - 900, "early@slow.test", "deferred"),  # before the window
        entry(now - 50, "a@slow.test", "deferred", "192.0.2.1", "421 4.7.0 try later"),
        entry(now - 40, "b@Slow.Test", "deferred", "192.0.2.1", "451 4.3.0 busy"),
        entry(now - 30, "c@fast.test", "delivered", "192.0.2.2"),
        entry(now - 20, "d@fast.test", "failed"),
        entry(now - 10, "e@fast.test", "delivered"),
    ])
    tallies = read(tmp_path, DestinationsQuery(minutes=5), now)
    assert tallies.complete and tallies.attempts == 5
    fast, slow = tallies.domains
    assert (fast.name, fast.attempts, fast.delivered, fast.failed, fast.deferral_rate) == ("fast.test", 3, 2, 1, 0.0)
    assert (slow.name, slow.deferred, slow.deferral_rate, slow.last_deferral) == ("slow.test", 2, 1.0, "451 4.3.0 busy")
    assert slow.per_minute == 0.4
    assert [(t.name, t.attempts) for t in tallies.source_ips] == [("192.0.2.1", 2), ("default", 2), ("192.0.2.2", 1)]
