"""The counters' contract, one test body run against each store: state.lmdb (RateLimiter) and Redis (RedisCounters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastmta.counters.interface import Counters, Opened, Unused, Wanted
from fastmta.counters.redis_counters import RedisCounters, client
from fastmta.ratelimit import RateLimiter
from tests.redis_server import RedisServer

WINDOW = 10.0
T0 = 1_700_000_000.0  # a window boundary; every `now` below is exactly representable
IP = "192.0.2.1"

Make = Callable[[], Counters]


@pytest.fixture(params=["lmdb", "redis"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Stores that share their counts: for Redis each is another node; a node's processes share one state.lmdb."""
    opened: list[Counters] = []
    if request.param == "lmdb":
        shared = RateLimiter(tmp_path / "state.lmdb")
        opened.append(shared)

        def make() -> Counters:
            return shared
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("key_prefix")

        def make() -> Counters:
            store = RedisCounters(client(server.url, 1.0), prefix, f"node{len(opened)}")
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


def test_hit_refuses_past_the_limit_and_counts_no_refusal(make: Make) -> None:
    counters = make()
    assert [counters.hit("msg", IP, 3, WINDOW, now=T0 + 1) for _ in range(5)] == [True, True, True, False, False]
    assert counters.count("msg", IP, WINDOW, now=T0 + 9.5) == 3
    assert counters.hit("msg", IP, 5, WINDOW, now=T0 + 9.5, amount=2)
    assert not counters.hit("msg", IP, 5, WINDOW, now=T0 + 9.5)
    assert counters.hit("msg", IP, 0, WINDOW, now=T0, amount=1000)  # 0: unlimited, not counted
    assert counters.count("msg", IP, WINDOW, now=T0 + 9.5) == 5


def test_the_previous_window_counts_by_its_overlap(make: Make) -> None:
    counters = make()
    assert counters.take("msg", IP, 10, WINDOW, 10, now=T0 + 2) == 10
    assert counters.count("msg", IP, WINDOW, now=T0 + 12.5) == 7.5
    assert counters.take("msg", IP, 10, WINDOW, 5, now=T0 + 12.5) == 2
    assert counters.count("msg", IP, WINDOW, now=T0 + 20) == 2
    assert counters.count("msg", IP, WINDOW, now=T0 + 40) == 0


def test_take_reserves_what_fits_and_counts_are_per_kind_and_key(make: Make) -> None:
    counters = make()
    assert counters.take("rcpt", IP, 10, WINDOW, 4, now=T0) == 4
    assert counters.take("rcpt", IP, 10, WINDOW, 4, now=T0) == 4
    assert counters.take("rcpt", IP, 10, WINDOW, 4, now=T0) == 2
    assert counters.take("rcpt", IP, 10, WINDOW, 4, now=T0) == 0
    assert counters.take("rcpt", "192.0.2.10", 10, WINDOW, 4, now=T0) == 4
    assert counters.take("msg", IP, 10, WINDOW, 4, now=T0) == 4


def test_limits_hold_across_stores_sharing_counts(make: Make) -> None:
    first, second = make(), make()
    granted = [store.take("msg", IP, 10, WINDOW, 3, now=T0 + 1) for store in (first, second, first, second)]
    assert granted == [3, 3, 3, 1]
    assert second.count("msg", IP, WINDOW, now=T0 + 1) == 10


def test_connections_are_counted_per_ip_and_in_total(make: Make) -> None:
    first, second = make(), make()
    assert first.connection_opened(IP) == Opened(1, 1)
    assert first.connection_opened("192.0.2.2") == Opened(1, 2)
    opened = second.connection_opened(IP)
    assert opened is not None and opened[0] == 2
    second.connection_closed(IP)
    # A close reaches the others with the closing store's next command or sweep (Redis sends it then).
    second.sweep(now=T0)
    first.connection_closed(IP)
    opened = first.connection_opened(IP)
    assert opened == Opened(1, 2)


def test_an_opening_takes_its_reservations_in_the_same_update_unless_refused(make: Make) -> None:
    first, second = make(), make()
    wanted = [Wanted("msg", IP, 10, WINDOW, 4), Wanted("rcpt", IP, 5, WINDOW, 4)]
    assert first.connection_opened(IP, now=T0, reserve=wanted) == Opened(1, 1, (4, 4))
    opened = second.connection_opened(IP, now=T0, reserve=wanted)
    assert opened is not None and (opened.from_ip, opened.reserved) == (2, (4, 1))
    one = [Wanted("msg", IP, 10, WINDOW, 1)]
    opened = first.connection_opened(IP, per_minute=1, now=T0, reserve=one)
    assert opened is not None and opened.reserved == (1,)
    assert first.connection_opened(IP, per_minute=1, now=T0, reserve=one) is None  # refused: nothing taken
    assert first.count("msg", IP, WINDOW, now=T0) == 9
    assert first.count("rcpt", IP, WINDOW, now=T0) == 5


def test_connections_per_minute_refuse_and_count_nothing(make: Make) -> None:
    counters = make()
    assert counters.connection_opened(IP, per_minute=2, now=T0) == Opened(1, 1)
    assert counters.connection_opened(IP, per_minute=2, now=T0) == Opened(2, 2)
    assert counters.connection_opened(IP, per_minute=2, now=T0) is None
    counters.connection_closed(IP, now=T0)
    assert counters.connection_opened(IP, now=T0) == Opened(2, 2)  # no rate asked: counted
    assert counters.count("connections", IP, 60.0, now=T0) == 2


def test_closing_gives_back_what_was_reserved_and_not_used(make: Make) -> None:
    counters = make()
    counters.connection_opened(IP, now=T0)
    assert counters.take("msg", IP, 10, WINDOW, 8, now=T0) == 8
    counters.connection_closed(IP, [Unused("msg", IP, WINDOW, 5)], now=T0)
    assert counters.count("msg", IP, WINDOW, now=T0) == 3
    # Never below nothing, whatever comes back.
    counters.connection_opened(IP, now=T0)
    counters.connection_closed(IP, [Unused("msg", IP, WINDOW, 50)], now=T0)
    assert counters.count("msg", IP, WINDOW, now=T0) == 0
