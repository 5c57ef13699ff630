"""The shared rate limiter on a real LMDB environment: sliding windows, sweeping, open connections, processes."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fastmta.counters.interface import Opened
from fastmta.ratelimit import RateLimiter

WINDOW = 10.0
# A window boundary, far from the epoch; every `now` below is exactly representable, so overlaps are exact.
T0 = 1_700_000_000.0
IP = "192.0.2.1"


@pytest.fixture
def limiter(tmp_path: Path) -> Iterator[RateLimiter]:
    limiter = RateLimiter(tmp_path / "state.lmdb")
    yield limiter
    limiter.close()


def hits(limiter: RateLimiter, n: int, limit: int, now: float, key: str = IP, kind: str = "msg") -> int:
    return sum(limiter.hit(kind, key, limit, WINDOW, now=now) for _ in range(n))


# --- rates -----------------------------------------------------------------------------------------


def test_hit_refuses_past_the_limit(limiter: RateLimiter) -> None:
    assert [limiter.hit("msg", IP, 3, WINDOW, now=T0 + 1) for _ in range(5)] == [True, True, True, False, False]
    assert limiter.count("msg", IP, WINDOW, now=T0 + 1) == 3
    # Refusals are not counted: still exactly the limit, later in the same window too.
    assert limiter.count("msg", IP, WINDOW, now=T0 + 9.5) == 3
    assert not limiter.hit("msg", IP, 3, WINDOW, now=T0 + 9.5)
    # A higher limit for the same counter admits the difference and no more.
    assert hits(limiter, 5, limit=5, now=T0 + 9.5) == 2


def test_first_hit_is_refused_only_if_it_alone_exceeds_the_limit(limiter: RateLimiter) -> None:
    assert limiter.hit("msg", IP, 1, WINDOW, now=T0)
    assert not limiter.hit("msg", IP, 1, WINDOW, now=T0)


def test_sliding_window_weights_the_previous_window_by_its_overlap(limiter: RateLimiter) -> None:
    assert hits(limiter, 10, limit=10, now=T0 + 2) == 10
    assert hits(limiter, 1, limit=10, now=T0 + 9.5) == 0
    # 2.5 s into the next window 75% of the sliding window still overlaps the previous one: 10 * 0.75 = 7.5.
    assert limiter.count("msg", IP, WINDOW, now=T0 + 12.5) == 7.5
    # 7.5 + 1 and 7.5 + 2 fit in 10; 7.5 + 3 does not.
    assert hits(limiter, 5, limit=10, now=T0 + 12.5) == 2
    assert limiter.count("msg", IP, WINDOW, now=T0 + 12.5) == 9.5
    # 7.5 s in, 25% overlaps: 2.5 + 2 = 4.5, room for 5 more.
    assert limiter.count("msg", IP, WINDOW, now=T0 + 17.5) == 4.5
    assert hits(limiter, 10, limit=10, now=T0 + 17.5) == 5
    assert limiter.count("msg", IP, WINDOW, now=T0 + 17.5) == 9.5
    # Right at the next boundary the previous window (7 hits) counts in full, the one before not at all.
    assert limiter.count("msg", IP, WINDOW, now=T0 + 20) == 7
    assert hits(limiter, 10, limit=10, now=T0 + 20) == 3
    # Two windows on, everything has slid out.
    assert limiter.count("msg", IP, WINDOW, now=T0 + 40) == 0
    assert hits(limiter, 20, limit=10, now=T0 + 40) == 10


def test_a_full_previous_window_blocks_the_start_of_the_next(limiter: RateLimiter) -> None:
    """A burst at the end of one window cannot be repeated at the start of the next (the fixed-window flaw)."""
    assert hits(limiter, 10, limit=10, now=T0 + 9.9) == 10
    assert hits(limiter, 10, limit=10, now=T0 + 10.0) == 0
    assert hits(limiter, 10, limit=10, now=T0 + 10.5) == 0  # 10 * 0.95 = 9.5; 9.5 + 1 > 10
    assert hits(limiter, 10, limit=10, now=T0 + 12.5) == 2  # 10 * 0.75 = 7.5; 7.5 + 2 <= 10


def test_amount_greater_than_one(limiter: RateLimiter) -> None:
    assert limiter.hit("rcpt", IP, 10, WINDOW, now=T0, amount=4)
    assert limiter.hit("rcpt", IP, 10, WINDOW, now=T0, amount=4)
    assert limiter.count("rcpt", IP, WINDOW, now=T0) == 8
    # 8 + 3 > 10: refused whole, nothing counted, and a smaller amount still fits.
    assert not limiter.hit("rcpt", IP, 10, WINDOW, now=T0, amount=3)
    assert limiter.count("rcpt", IP, WINDOW, now=T0) == 8
    assert limiter.hit("rcpt", IP, 10, WINDOW, now=T0, amount=2)
    assert limiter.count("rcpt", IP, WINDOW, now=T0) == 10
    assert not limiter.hit("rcpt", IP, 10, WINDOW, now=T0, amount=1)


def test_amount_larger_than_the_limit_is_always_refused(limiter: RateLimiter) -> None:
    assert not limiter.hit("rcpt", IP, 5, WINDOW, now=T0, amount=6)
    assert limiter.count("rcpt", IP, WINDOW, now=T0) == 0
    assert limiter.hit("rcpt", IP, 5, WINDOW, now=T0, amount=5)


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_of_zero_or_less_is_unlimited_and_not_counted(limiter: RateLimiter, limit: int) -> None:
    assert all(limiter.hit("msg", IP, limit, WINDOW, now=T0, amount=1000) for _ in range(100))
    assert limiter.count("msg", IP, WINDOW, now=T0) == 0
    # Switching the limit on later starts from nothing.
    assert hits(limiter, 5, limit=3, now=T0) == 3


def test_counters_are_per_kind_and_per_key(limiter: RateLimiter) -> None:
    assert hits(limiter, 3, limit=2, now=T0, kind="msg", key=IP) == 2
    assert hits(limiter, 3, limit=2, now=T0, kind="rcpt", key=IP) == 2
    assert hits(limiter, 3, limit=2, now=T0, kind="msg", key="192.0.2.10") == 2
    assert hits(limiter, 3, limit=2, now=T0, kind="msg", key="2001:db8::1") == 2
    # A key that is a prefix of another does not share its counter.
    assert hits(limiter, 3, limit=2, now=T0, kind="msg", key="192.0.2.1 ") == 2
    assert limiter.count("msg", IP, WINDOW, now=T0) == 2
    assert limiter.count("auth", IP, WINDOW, now=T0) == 0


def test_count_of_an_unknown_key_is_zero(limiter: RateLimiter) -> None:
    assert limiter.count("msg", "198.51.100.7", WINDOW, now=T0 + 3) == 0


def test_without_now_the_clock_is_used(limiter: RateLimiter) -> None:
    # A window of 10^9 s: no boundary falls between these calls in this century.
    assert limiter.hit("conn", IP, 2, 1e9) and limiter.hit("conn", IP, 2, 1e9)
    assert not limiter.hit("conn", IP, 2, 1e9)
    assert limiter.count("conn", IP, 1e9) == 2


def test_counts_survive_reopening(tmp_path: Path) -> None:
    first = RateLimiter(tmp_path / "state.lmdb")
    assert hits(first, 4, limit=10, now=T0) == 4
    first.close()
    second = RateLimiter(tmp_path / "state.lmdb")
    try:
        assert second.count("msg", IP, WINDOW, now=T0) == 4
    finally:
        second.close()


# --- sweep ---------------------------------------------------------------------------------------

def test_sweep_removes_only_windows_that_no_longer_count(limiter: RateLimiter) -> None:
    hits(limiter, 4, limit=100, now=T0 + 1, key="old")  # window 0: counts until T0 + 20
    hits(limiter, 3, limit=100, now=T0 + 11, key="new")  # window 1: counts until T0 + 30
    hits(limiter, 2, limit=100, now=T0 + 5, key="both")
    hits(limiter, 1, limit=100, now=T0 + 15, key="both")

    # While window 0 is still the previous window of the current one, nothing goes.
    assert limiter.sweep(now=T0 + 17.5) == 0
    assert limiter.count("msg", "old", WINDOW, now=T0 + 17.5) == 4 * 0.25
    assert limiter.count("msg", "both", WINDOW, now=T0 + 17.5) == 1 + 2 * 0.25

    assert limiter.sweep(now=T0 + 22.5) == 2  # "old" and the first window of "both"
    assert limiter.count("msg", "old", WINDOW, now=T0 + 22.5) == 0
    assert limiter.count("msg", "new", WINDOW, now=T0 + 22.5) == 3 * 0.75
    assert limiter.count("msg", "both", WINDOW, now=T0 + 22.5) == 1 * 0.75
    assert limiter.sweep(now=T0 + 22.5) == 0

    assert limiter.sweep(now=T0 + 32.5) == 2
    assert limiter.count("msg", "new", WINDOW, now=T0 + 32.5) == 0
    assert limiter.sweep(now=T0 + 1000) == 0


@pytest.mark.parametrize("at", [T0 + 0.5, T0 + 10, T0 + 14.5, T0 + 19.75, T0 + 20, T0 + 25, T0 + 29.75, T0 + 30.5])
def test_sweep_never_changes_a_count(tmp_path: Path, at: float) -> None:
    limiter = RateLimiter(tmp_path / "state.lmdb")
    try:
        for offset in (0.0, 3.0, 9.0, 10.0, 12.0, 19.0):
            hits(limiter, 2, limit=1000, now=T0 + offset)
        before = limiter.count("msg", IP, WINDOW, now=at)
        limiter.sweep(now=at)
        assert limiter.count("msg", IP, WINDOW, now=at) == before
    finally:
        limiter.close()


def test_sweep_with_different_windows(limiter: RateLimiter) -> None:
    limiter.hit("day", IP, 10, 86400.0, now=T0)
    limiter.hit("min", IP, 10, 60.0, now=T0)
    assert limiter.sweep(now=T0 + 3600) == 1
    assert limiter.count("day", IP, 86400.0, now=T0 + 3600) == 1
    assert limiter.count("min", IP, 60.0, now=T0 + 3600) == 0


def test_sweep_when_the_last_window_has_expired(limiter: RateLimiter) -> None:
    """Regression: deleting under a cursor once left it unpositioned past the last record (struct.error)."""
    limiter.hit("msg", IP, 10, WINDOW, now=T0)
    assert limiter.sweep(now=T0 + 100) == 1
    assert limiter.count("msg", IP, WINDOW, now=T0) == 0
    # Expired records first, last and in between, around live ones.
    for key in ("a", "b", "c", "d", "e"):
        limiter.hit("msg", key, 10, WINDOW, now=T0 if key in "ace" else T0 + 100)
    assert limiter.sweep(now=T0 + 50) == 3
    assert [limiter.count("msg", key, WINDOW, now=T0 + 100) for key in "abcde"] == [0, 1, 0, 1, 0]
    assert limiter.sweep(now=T0 + 1000) == 2
    assert limiter.sweep(now=T0 + 1000) == 0


# --- open connections ------------------------------------------------------------------------------


def test_connections_per_ip_and_in_total(limiter: RateLimiter) -> None:
    assert limiter.open_connections() == 0 and limiter.open_connections(IP) == 0
    assert limiter.connection_opened(IP) == Opened(1, 1)
    assert limiter.connection_opened(IP) == Opened(2, 2)
    assert limiter.connection_opened("2001:db8::1") == Opened(1, 3)
    assert limiter.connection_opened(IP) == Opened(3, 4)
    assert limiter.open_connections(IP) == 3
    assert limiter.open_connections("2001:db8::1") == 1
    assert limiter.open_connections("198.51.100.1") == 0
    assert limiter.open_connections() == 4

    limiter.connection_closed(IP)
    assert (limiter.open_connections(IP), limiter.open_connections()) == (2, 3)
    limiter.connection_closed("2001:db8::1")
    assert (limiter.open_connections("2001:db8::1"), limiter.open_connections()) == (0, 2)
    limiter.connection_closed(IP)
    limiter.connection_closed(IP)
    assert (limiter.open_connections(IP), limiter.open_connections()) == (0, 0)
    assert limiter.connection_opened(IP) == Opened(1, 1)


def test_closing_more_than_opened_never_goes_negative(limiter: RateLimiter) -> None:
    limiter.connection_closed(IP)
    assert limiter.open_connections(IP) == 0 and limiter.open_connections() == 0
    assert limiter.connection_opened(IP) == Opened(1, 1)


class Holder:
    """A forked process that opens connections, then on request either closes them or dies holding them."""

    def __init__(self, path: Path, opened: list[str], closed: tuple[str, ...] = ()) -> None:
        ctx = multiprocessing.get_context("fork")
        self._ready, self._orders = ctx.Event(), ctx.Queue()
        self.held = list(opened)
        for ip in closed:
            self.held.remove(ip)
        self.process = ctx.Process(target=self._run, args=(path, opened, closed))
        self.process.start()
        assert self._ready.wait(10)
        assert self.process.pid is not None
        self.pid = self.process.pid

    def _run(self, path: Path, opened: list[str], closed: tuple[str, ...]) -> None:
        limiter = RateLimiter(path)
        for ip in opened:
            limiter.connection_opened(ip)
        for ip in closed:
            limiter.connection_closed(ip)
        self._ready.set()
        if self._orders.get(timeout=30) == "die":
            os._exit(0)  # as a crashed worker would: nothing closed
        for ip in self.held:
            limiter.connection_closed(ip)
        limiter.close()

    def finish(self, order: str) -> None:
        if self.process.exitcode is None:
            self._orders.put(order)
            self.process.join(10)
        # Joined, so reaped: the pid no longer exists (not even as a zombie).
        assert self.process.exitcode == 0


def in_key_order(first: Holder, second: Holder, dies: str) -> tuple[Holder, Holder]:
    """(dead, alive): the one to die is the one of the two whose owner records sort first, or last."""
    ordered = sorted([first, second], key=lambda holder: str(holder.pid))
    return (ordered[0], ordered[1]) if dies == "sorts-first" else (ordered[1], ordered[0])


@pytest.mark.parametrize("dies", ["sorts-first", "sorts-last"])
def test_forget_dead_processes_gives_back_their_connections(tmp_path: Path, dies: str) -> None:
    path = tmp_path / "state.lmdb"
    first = Holder(path, [IP, IP, "2001:db8::1"])
    second = Holder(path, [IP, IP, "2001:db8::1"])
    dead, alive = in_key_order(first, second, dies)
    limiter = RateLimiter(path)
    try:
        dead.finish("die")
        assert limiter.open_connections() == 6
        assert limiter.connection_opened(IP) == Opened(5, 7)

        assert limiter.forget_dead_processes() == 3
        assert limiter.open_connections(IP) == 3
        assert limiter.open_connections("2001:db8::1") == 1
        assert limiter.open_connections() == 4
        # Given back once only; the living keep theirs.
        assert limiter.forget_dead_processes() == 0
        assert limiter.open_connections() == 4

        alive.finish("close")
        assert (limiter.open_connections(IP), limiter.open_connections()) == (1, 1)
    finally:
        limiter.close()
        first.finish("close")
        second.finish("close")


@pytest.mark.parametrize("dies", ["sorts-first", "sorts-last"])
def test_forget_dead_processes_counts_only_what_is_still_open(tmp_path: Path, dies: str) -> None:
    path = tmp_path / "state.lmdb"
    first = Holder(path, [IP, IP, IP, "2001:db8::1"], closed=(IP, "2001:db8::1"))
    second = Holder(path, ["198.51.100.1"])
    dead, alive = in_key_order(first, second, dies)
    limiter = RateLimiter(path)
    try:
        assert limiter.open_connections() == 3
        dead.finish("die")
        assert limiter.forget_dead_processes() == len(dead.held)
        assert limiter.open_connections() == len(alive.held)
        for ip in (IP, "2001:db8::1", "198.51.100.1"):
            assert limiter.open_connections(ip) == alive.held.count(ip)
        alive.finish("close")
        assert limiter.open_connections() == 0
    finally:
        limiter.close()
        first.finish("close")
        second.finish("close")


def test_forget_dead_processes_keeps_live_ones(limiter: RateLimiter) -> None:
    limiter.connection_opened(IP)
    limiter.connection_opened(IP)
    assert limiter.forget_dead_processes() == 0
    assert limiter.open_connections(IP) == 2 and limiter.open_connections() == 2


def test_forget_dead_processes_when_only_the_dead_hold_connections(tmp_path: Path) -> None:
    """Regression: the dead owner's record was the last one, and deleting it under a cursor raised ValueError."""
    path = tmp_path / "state.lmdb"
    Holder(path, [IP, "2001:db8::1"]).finish("die")
    limiter = RateLimiter(path)
    try:
        assert limiter.forget_dead_processes() == 2
        assert limiter.open_connections() == 0
    finally:
        limiter.close()


# --- several processes -----------------------------------------------------------------------------


def _hammer(path: Path, limit: int, attempts: int, now: float, start: Any, out: Any) -> None:
    limiter = RateLimiter(path)
    start.wait(10)
    accepted = 0
    for n in range(attempts):
        accepted += limiter.hit("msg", IP, limit, WINDOW, now=now)
        if n % 7 == 0:
            os.sched_yield()
    out.put(accepted)
    limiter.close()


@pytest.mark.parametrize(
    ("processes", "attempts", "limit", "previous", "expected"),
    [
        (6, 60, 97, 0, 97),
        # 20 hits in the previous window, half of it overlapping: 10 count, 190 more fit.
        (4, 60, 200, 20, 190),
    ],
)
def test_limit_holds_across_processes(
    tmp_path: Path, processes: int, attempts: int, limit: int, previous: int, expected: int
) -> None:
    path = tmp_path / "state.lmdb"
    setup = RateLimiter(path)
    assert hits(setup, previous, limit=1000, now=T0 + 5) == previous
    setup.close()
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(processes)
    out = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(path, limit, attempts, T0 + 15, start, out)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    accepted = [out.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(10)
        assert worker.exitcode == 0
    assert processes * attempts > expected  # every process kept trying after the limit was reached
    assert sum(accepted) == expected
    limiter = RateLimiter(path)
    try:
        assert limiter.count("msg", IP, WINDOW, now=T0 + 15) == previous * 0.5 + expected
    finally:
        limiter.close()


def test_connections_are_shared_across_processes(tmp_path: Path) -> None:
    """Each process sees the others' open connections in the totals it is given."""
    path = tmp_path / "state.lmdb"
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()

    def hold() -> None:
        limiter = RateLimiter(path)
        limiter.connection_opened(IP)
        limiter.connection_opened("198.51.100.1")
        ready.set()
        done.wait(10)
        limiter.connection_closed(IP)
        limiter.connection_closed("198.51.100.1")
        limiter.close()

    child = ctx.Process(target=hold)
    child.start()
    try:
        assert ready.wait(10)
        limiter = RateLimiter(path)
        try:
            assert limiter.connection_opened(IP) == Opened(2, 3)
            # The holder is alive: nothing to give back.
            assert limiter.forget_dead_processes() == 0
            done.set()
            child.join(10)
            assert child.exitcode == 0
            assert limiter.open_connections(IP) == 1 and limiter.open_connections() == 1
        finally:
            limiter.close()
    finally:
        done.set()
        child.join(10)
