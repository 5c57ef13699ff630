"""Admissions answered without blocking the SMTP worker (fastmta.smtp.admissions), against a real redis-server:
together in one write, answered later; a client gone while it waited gives back what was counted; Redis
silent or dying while answers are owed makes the worker count in state.lmdb."""

from __future__ import annotations

import asyncio
import functools
import smtplib
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import redis
import uvloop

from fastmta.config import LimitsConfig
from fastmta.counters.failover import RETRY_SECONDS, FailoverCounters
from fastmta.counters.interface import Opened
from fastmta.counters.redis_counters import Opening, RedisCounters, client
from fastmta.limits import ClientLimits, LimitExceeded
from fastmta.ratelimit import RateLimiter
from fastmta.smtp.admissions import AdmissionOutcome, Admissions
from tests.admin.conftest import wait_until
from tests.redis_server import RedisServer

IP, OTHER_IP = "192.0.2.1", "192.0.2.2"
LIMITS = LimitsConfig(exempt_mynetworks=False, messages_per_hour=3200, recipients_per_hour=3200)
RESERVED = {("messages", IP): 100, ("recipients", IP): 100}  # a chunk is 1/32 of each limit


class Admitting(NamedTuple):
    loop: asyncio.AbstractEventLoop
    counters: FailoverCounters
    limits: ClientLimits
    admissions: Admissions


@contextmanager
def admitting(
    server: RedisServer, prefix: str, state: Path, timeout: float = 1.0, limits_config: LimitsConfig = LIMITS
) -> Iterator[Admitting]:
    """A worker's admissions on a loop of the test's own (uvloop, as the worker's): at most two connections per IP."""
    loop = uvloop.new_event_loop()
    counters = FailoverCounters(
        RedisCounters(client(server.url, timeout), prefix, "node"), RateLimiter(state / "state.lmdb"), "smtp-0"
    )
    limits = ClientLimits(counters, limits_config, 100, 2)
    admissions = Admissions(limits, counters, loop, timeout)
    try:
        yield Admitting(loop, counters, limits, admissions)
    finally:
        admissions.close()
        counters.close()
        loop.close()


def ask(admitting: Admitting, *ips: str) -> dict[int, AdmissionOutcome]:
    """Asks for each address in one turn of the loop; the outcomes, by position, fill in as they are answered."""
    outcomes: dict[int, AdmissionOutcome] = {}
    for number, ip in enumerate(ips):
        admitting.admissions.ask(ip, False, functools.partial(outcomes.__setitem__, number))
    return outcomes


def settle(admitting: Admitting) -> None:
    admitting.loop.run_until_complete(asyncio.wait_for(admitting.admissions.settled(), 10))


def pause(server: RedisServer, milliseconds: int) -> None:
    """Redis answers no client for that long: what was written meanwhile waits."""
    with redis.Redis.from_url(server.url) as connection:
        connection.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")


def unpause(server: RedisServer) -> None:
    """Redis answers again at once, so that the next test finds it answering."""
    with redis.Redis.from_url(server.url) as connection:
        connection.execute_command("CLIENT", "UNPAUSE")


def test_admissions_asked_together_are_answered_later_and_counted_in_redis(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(redis_server, key_prefix, tmp_path) as it:
        outcomes = ask(it, IP, IP, IP, OTHER_IP)
        assert outcomes == {}  # answered in a later turn of the loop (written without waiting: the tests below)
        settle(it)
        third = outcomes.pop(2)
        assert isinstance(third, LimitExceeded) and third.limit == "max_connections_per_ip"
        assert outcomes[0] == outcomes[1] == RESERVED
        assert outcomes[3] == {("messages", OTHER_IP): 100, ("recipients", OTHER_IP): 100}
        assert it.counters.shared.connections() == {IP: 2, OTHER_IP: 1}
        it.counters.sweep()  # the refused one's release goes
        other = RedisCounters(client(redis_server.url, 1.0), key_prefix, "other")
        assert other.connection_opened(IP) == Opened(3, 1)
        other.close()
        assert not it.counters.degraded


def test_an_opening_refused_per_minute_is_taken_out_of_the_counts_written_after_it_in_its_batch(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    one_a_minute = LimitsConfig(exempt_mynetworks=False, connections_per_minute=1)
    with admitting(redis_server, key_prefix, tmp_path, limits_config=one_a_minute) as it:
        outcomes = ask(it, IP, IP, OTHER_IP)  # OTHER_IP's opening is written counting the refused one
        settle(it)
        refused = outcomes[1]
        assert isinstance(refused, LimitExceeded) and refused.limit == "connections_per_minute"
        it.counters.sweep()  # the counts, rewritten without it, go
        with redis.Redis.from_url(redis_server.url) as connection:
            owner = it.counters.shared.owner
            assert connection.hget(f"{key_prefix}conn-total:node", owner) == b"2"
            assert connection.hget(f"{key_prefix}conn:{IP}", owner) == b"1"


def test_an_answer_read_by_a_command_that_waits_is_still_delivered(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(redis_server, key_prefix, tmp_path) as it:
        outcomes = ask(it, IP)
        it.loop.run_until_complete(asyncio.sleep(0))  # written
        # A session's reservation waits for its reply, reading the admission's first, on the same connection.
        assert it.counters.take("messages", OTHER_IP, 3200, 3600.0, 100) == 100
        settle(it)
        assert outcomes == {0: RESERVED}


def test_scripts_redis_forgot_are_told_again_and_nothing_is_lost(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(redis_server, key_prefix, tmp_path) as it:
        first = ask(it, IP)
        settle(it)
        assert first == {0: RESERVED}
        it.limits.release(IP, RESERVED)  # waits for the next write
        with redis.Redis.from_url(redis_server.url) as connection:
            connection.script_flush()
        assert ask(it, IP) == {}
        settle(it)  # refused NOSCRIPT: the opening is written again, behind the scripts
        it.counters.sweep()  # the release, refused with it, goes again
        assert not it.counters.degraded
        other = RedisCounters(client(redis_server.url, 1.0), key_prefix, "other")
        assert other.connection_opened(IP) == Opened(2, 1)  # the second open, the first given back
        other.close()


def test_redis_silent_past_the_timeout_makes_the_waiting_admissions_count_locally(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(redis_server, key_prefix, tmp_path, timeout=0.2) as it:
        ask(it, OTHER_IP)  # connected (the handshake waits for its replies), one other connection counted
        settle(it)
        pause(redis_server, 800)
        outcomes = ask(it, IP, IP)
        it.loop.run_until_complete(asyncio.sleep(0))
        assert it.counters.shared.unanswered_since() is not None  # written to Redis, not counted locally at once
        settle(it)
        assert outcomes == {0: RESERVED, 1: RESERVED}
        assert it.counters.degraded
        assert it.counters.local.open_connections(IP) == 2 and it.counters.local.open_connections(OTHER_IP) == 1
        assert it.counters.shared.connections() == {}
        unpause(redis_server)


def test_answers_come_before_the_timeout_of_a_loop_that_stalled_past_it(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    """uvloop runs due timers before it reads: the replies already there are read before giving up on Redis."""
    with admitting(redis_server, key_prefix, tmp_path, timeout=0.2) as it:
        ask(it, OTHER_IP)  # connected
        settle(it)
        pause(redis_server, 100)
        outcomes = ask(it, IP)
        it.loop.run_until_complete(asyncio.sleep(0))
        assert outcomes == {}  # written, not answered yet
        time.sleep(0.4)  # the loop stalls past the timeout; Redis answers meanwhile
        settle(it)
        assert outcomes == {0: RESERVED}
        assert not it.counters.degraded
        assert it.counters.shared.connections() == {IP: 1, OTHER_IP: 1}


def test_an_answer_that_fails_leaves_none_of_its_batch_unanswered(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    def broken(outcome: AdmissionOutcome) -> None:
        raise RuntimeError("a connection's fault")

    with admitting(redis_server, key_prefix, tmp_path) as it:
        it.admissions.ask(IP, False, broken)
        outcomes = ask(it, OTHER_IP)
        settle(it)
        assert outcomes == {0: {("messages", OTHER_IP): 100, ("recipients", OTHER_IP): 100}}


def test_a_release_redis_fails_in_a_batch_makes_the_worker_count_locally_as_a_command_that_waits_would(
    redis_server: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(redis_server, key_prefix, tmp_path) as it:
        ask(it, IP)
        settle(it)
        it.limits.release(IP, RESERVED)  # waits for the next write
        with redis.Redis.from_url(redis_server.url) as connection:
            connection.set(f"{key_prefix}conn:{IP}", "not a hash")  # the release fails WRONGTYPE
        outcomes = ask(it, OTHER_IP)
        settle(it)
        assert it.counters.degraded
        assert outcomes == {0: {("messages", OTHER_IP): 100, ("recipients", OTHER_IP): 100}}
        assert it.counters.local.open_connections(OTHER_IP) == 1


def test_openings_refused_noscript_are_written_again_behind_the_scripts_without_waiting(
    redis_server: RedisServer, key_prefix: str
) -> None:
    """A restarted Redis lost the scripts: the batch it refuses goes again in one write, the scripts told once."""
    counters = RedisCounters(client(redis_server.url, 1.0), key_prefix, "node")
    counters.connection_opened(OTHER_IP)  # connected, the scripts known
    with redis.Redis.from_url(redis_server.url) as connection:
        connection.script_flush()
        connection.config_resetstat()
    counters.open_soon([Opening("a", IP, 0, ()), Opening("b", IP, 0, ())])
    answered: list[tuple[Opening, object]] = []

    def all_answered() -> bool:
        answered.extend(counters.answers())  # never waits: a NOSCRIPT refusal is written again, answered later
        return len(answered) == 2

    assert wait_until(all_answered)
    assert [(opening.token, found) for opening, found in answered] == [("a", Opened(1, 2)), ("b", Opened(2, 3))]
    with redis.Redis.from_url(redis_server.url) as connection:
        stats = connection.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 4 and stats["cmdstat_evalsha"]["calls"] == 4
    counters.close()


def test_redis_dying_mid_batch_makes_the_batch_count_locally_and_told_to_redis_when_back(
    outage_redis: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    with admitting(outage_redis, key_prefix, tmp_path) as it:
        ask(it, OTHER_IP)  # connected (the handshake waits for its replies), one other connection counted
        settle(it)
        pause(outage_redis, 5000)
        outcomes = ask(it, IP, IP)
        it.loop.run_until_complete(asyncio.sleep(0.05))  # written, not answered
        assert outcomes == {}
        assert outage_redis.process is not None
        outage_redis.process.kill()
        outage_redis.process.wait()
        outage_redis.process = None
        settle(it)
        assert outcomes == {0: RESERVED, 1: RESERVED}
        assert it.counters.degraded
        assert it.counters.local.open_connections(IP) == 2

        outage_redis.start()  # empty
        assert wait_until(lambda: not it.counters.check(), timeout=RETRY_SECONDS * 5)
        other = RedisCounters(client(outage_redis.url, 1.0), key_prefix, "other")
        assert other.connection_opened(IP) == Opened(3, 1)  # the two counted alone, no more
        assert other.connection_opened(OTHER_IP) == Opened(2, 2)
        other.close()


def _open_here(server: RedisServer, prefix: str) -> dict[bytes, bytes]:
    """The connections from 127.0.0.1 counted in Redis, by owner."""
    with redis.Redis.from_url(server.url) as connection:
        return {owner: count for owner, count in connection.hgetall(f"{prefix}conn:127.0.0.1").items() if count != b"0"}


def _scripts_run(server: RedisServer) -> int:
    with redis.Redis.from_url(server.url) as connection:
        return int(connection.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_client_gone_or_talking_early_while_its_admission_waits_is_counted_once(
    make_server: Any, redis_server: RedisServer, key_prefix: str
) -> None:
    node = make_server({
        "smtp": {"workers": 1, "max_connections_per_ip": 1},
        "limits": {"exempt_mynetworks": False},
        "cluster": {"redis_url": redis_server.url, "key_prefix": key_prefix, "redis_timeout": "5s"},
    })  # fmt: skip
    assert wait_until(lambda: not _open_here(redis_server, key_prefix))  # the start-up probe's connection closed
    before = _scripts_run(redis_server)
    pause(redis_server, 500)
    gone = socket.create_connection(("127.0.0.1", node.port))
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    gone.close()  # a reset, before Redis could answer its admission
    # Its opening, then the release of what it counted, and nothing left counted.
    assert wait_until(lambda: _scripts_run(redis_server) >= before + 2 and not _open_here(redis_server, key_prefix))
    with smtplib.SMTP("127.0.0.1", node.port, timeout=10) as smtp:  # the one connection allowed is free
        assert smtp.noop()[0] == 250
    assert wait_until(lambda: not _open_here(redis_server, key_prefix))

    before = _scripts_run(redis_server)
    pause(redis_server, 300)
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as early:
        early.sendall(b"EHLO early.test\r\n")  # before the greeting, while the admission waits for Redis
        replies = b""
        while not replies.endswith(b"250 CHUNKING\r\n"):
            replies += early.recv(4096)
        assert replies.startswith(b"220 ")
        early.sendall(b"QUIT\r\n")
        assert early.recv(4096).startswith(b"221")
    # One opening and its release: nothing counted twice, nothing left counted.
    assert wait_until(lambda: _scripts_run(redis_server) >= before + 2 and not _open_here(redis_server, key_prefix))
    assert "Traceback" not in node.log()
