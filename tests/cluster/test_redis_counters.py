"""What only the Redis store does: owners that die stop counting, switches, heartbeats; and the fall back to state.lmdb."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from fastmta.counters.failover import FailoverCounters
from fastmta.counters.interface import Opened, Unused, Wanted
from fastmta.counters.redis_counters import RedisCounters, client
from fastmta.ratelimit import RateLimiter
from tests.redis_server import RedisServer

IP = "192.0.2.1"
HOUR = 3600.0


def store(server: RedisServer, prefix: str, node: str, timeout: float = 1.0) -> RedisCounters:
    return RedisCounters(client(server.url, timeout), prefix, node)


def test_an_owner_that_stops_renewing_stops_counting_and_tells_again_when_back(
    redis_server: RedisServer, key_prefix: str
) -> None:
    first, second = store(redis_server, key_prefix, "a"), store(redis_server, key_prefix, "b")
    assert first.connection_opened(IP) == Opened(1, 1)
    # As if node a had stalled past its alive key's expiry.
    redis.Redis.from_url(redis_server.url).delete(f"{key_prefix}alive:{first.owner}")
    assert second.connection_opened(IP) == Opened(1, 1)
    first.sweep()  # a notices and writes its count again
    assert second.connection_opened(IP) == Opened(3, 2)


def test_holds_are_limited_across_owners(redis_server: RedisServer, key_prefix: str) -> None:
    first, second = store(redis_server, key_prefix, "a"), store(redis_server, key_prefix, "b")
    assert first.acquire("dest", "mx.example", 2)
    assert second.acquire("dest", "mx.example", 2)
    assert not first.acquire("dest", "mx.example", 2)
    second.release("dest", "mx.example")
    assert first.acquire("dest", "mx.example", 2)
    assert first.holds("dest", "mx.example") == 2


def test_a_switch_keeps_the_later_change(redis_server: RedisServer, key_prefix: str) -> None:
    counters = store(redis_server, key_prefix, "a")
    assert counters.switch("delivery") is None
    assert counters.set_switch("delivery", 100.0, b"on")
    assert not counters.set_switch("delivery", 99.0, b"off")
    assert counters.switch("delivery") == (100.0, b"on")


def test_heartbeats_list_the_nodes_seen_within_their_ttl(redis_server: RedisServer, key_prefix: str) -> None:
    first, second = store(redis_server, key_prefix, "a"), store(redis_server, key_prefix, "b")
    first.beat(b"a-report", ttl=60)
    second.beat(b"b-report", ttl=0.05)
    deadline = time.monotonic() + 5
    while "b" in first.nodes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.nodes() == {"a": b"a-report"}


def test_failover_counts_locally_and_tells_redis_when_it_returns(outage_redis: RedisServer, tmp_path: Path) -> None:
    changes: list[bool] = []
    counters = FailoverCounters(
        store(outage_redis, "t:", "node", timeout=0.2), RateLimiter(tmp_path / "state.lmdb"), "smtp-0", changes.append
    )
    try:
        assert counters.connection_opened(IP) == Opened(1, 1)
        assert counters.take("messages", IP, 100, HOUR, 10) == 10
        outage_redis.stop()
        # The open connection moves to state.lmdb with the first failure; what follows is counted there.
        assert counters.take("messages", IP, 100, HOUR, 10) == 10
        assert counters.degraded and changes == [True]
        assert counters.connection_opened(IP, reserve=[Wanted("messages", IP, 100, HOUR, 3)]) == Opened(2, 2, (3,))
        assert counters.local.count("messages", IP, HOUR) == 13
        counters.connection_closed(IP, [Unused("messages", IP, HOUR, 4)])
        assert counters.check()  # still unreachable

        outage_redis.start()  # empty: it kept nothing
        deadline = time.monotonic() + 10
        while counters.degraded and time.monotonic() < deadline:  # after the retry pause, a sweep recovers
            counters.sweep()
            time.sleep(0.05)
        assert not counters.degraded and changes == [True, False]
        # Redis has what the node counted alone (10 + 3 reserved at the opening - 4 given back) and its one open connection.
        assert counters.count("messages", IP, HOUR) == pytest.approx(9, abs=0.1)
        assert counters.local.open_connections(IP) == 0
        other = store(outage_redis, "t:", "other")
        assert other.connection_opened(IP) == Opened(2, 1)
        other.close()
        counters.connection_closed(IP)
        assert counters.shared.connections() == {}
    finally:
        counters.close()
