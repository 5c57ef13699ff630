"""The events process under faults, history in a real PostgreSQL and every event posted to a real webhook receiver.

Under load: SIGKILL to the events process, and to the whole server, at seeded random moments;
PostgreSQL stopped for a while; the receiver failing, then hanging. Throughout, SMTP must go on
accepting, and afterwards every message that got `250` must have its `received` and `delivered`
events in history (its row `sent`, its counters counted once) and at the receiver, at least once.
Copies at the receiver are allowed (at-least-once) and counted; in history there must be none.

FAULT_KILLS (default 20) kills of the events process; FAULT_SEED repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import smtplib
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests import postgres
from tests.conftest import Server
from tests.fault.common import env_int, queued, report, seed, wait_for
from tests.fault.load import Load
from tests.integration.nexthop import NextHop
from tests.receiver import Receiver

KILLS = env_int("FAULT_KILLS", 20)
# The supervisor throttles an events process that keeps dying young (0.1 s, doubling): after this
# many kills of it, the whole server is killed (SIGKILL to its process group) and started again.
KILLS_BEFORE_SERVER_KILL = 5
# Acknowledged and not yet at the next hop (or, with the receiver up, its events not yet there):
# beyond this the load waits, so the end is a short catch-up.
BACKLOG = 300
HOOK = "webhook:all"
SINKS = {"history", HOOK}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[postgres.Cluster]:
    if postgres.binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    directory = tmp_path / "postgres"
    directory.mkdir()
    made = postgres.Cluster(directory)
    made.start()
    yield made
    if made.process is not None:
        made.stop(fast=True)


def config(hop: NextHop, history_url: str, receiver: Receiver, **events: Any) -> dict[str, Any]:
    return {
        "server": {"shutdown_grace_seconds": 2},
        "delivery": {"workers": 1, "retry_schedule": ["1s", "2s"], "lease_time": "30s"},
        "admin": {"enabled": True},
        "history": {"enabled": True, "url": history_url},
        "events": {"webhooks": [{"url": receiver.url, "name": "all"}], **events},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
    }


def health(server: Server) -> tuple[int, dict[str, Any]] | None:
    """/health's status and data, or None while the admin process does not answer."""
    try:
        with urllib.request.urlopen(server.admin_url + "/health", timeout=5) as response:
            return response.status, json.load(response)["data"]
    except urllib.error.HTTPError as unhealthy:
        return unhealthy.code, json.load(unhealthy)["data"]
    except OSError:
        return None


def lags(server: Server) -> dict[str, float]:
    answer = health(server)
    return answer[1]["events_lag_seconds"] if answer else {}


def caught_up(server: Server) -> bool:
    """Nothing queued, and then every sink has saved a cursor past every event (lag 0 in /health).

    In that order: a message settled between the two looks would otherwise pass with its last
    events still unread, as the queue's last change and its events commit together.
    """
    if queued(server):
        return False
    found = lags(server)
    return set(found) == SINKS and not any(found.values())


class Tally:
    """What reached history and the receiver, checked against what the load had acknowledged."""

    def __init__(self, history_url: str, receiver: Receiver, acked: set[str]) -> None:
        self.acked = acked
        self.figures: dict[str, Any] = {"acknowledged": len(acked)}
        self.problems: dict[str, list[str]] = {}
        self._history(history_url)
        self._receiver(receiver)
        self._explain_history_losses()

    def _history(self, url: str) -> None:
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.connect() as connection:
            events = connection.execute(sa.text("SELECT type, message_id, recipient, data, id, seq FROM events")).all()
            messages = {row.id: row for row in connection.execute(sa.text("SELECT id, status, attempts, deferred FROM messages"))}
            recipients = {
                (row.message_id, row.address): row
                for row in connection.execute(sa.text("SELECT message_id, address, attempts, deferred FROM recipients"))
            }
        engine.dispose()
        per_type: Counter[tuple[str, str]] = Counter()
        deferrals: Counter[tuple[str, str]] = Counter()
        most_attempts: dict[tuple[str, str], int] = {}
        self._history_rows = {row.id: row for row in events}
        for kind, message_id, recipient, data, _, _ in events:
            per_type[kind, message_id] += 1
            if kind in ("delivered", "deferred", "failed", "expired"):
                attempts = (json.loads(data) if isinstance(data, str) else data)["attempts"]
                key = (message_id, recipient)
                deferrals[key] += kind == "deferred"
                most_attempts[key] = max(most_attempts.get(key, 0), attempts)
        self.figures["history_events"] = len(events)
        self.figures["history_deferrals"] = sum(deferrals.values())
        # Each message is received once and delivered once (its one recipient): another row would be
        # an event written twice under two ids.
        self.figures["history_duplicates"] = sum(n - 1 for (kind, _), n in per_type.items() if kind in ("received", "delivered"))
        # Which of a message's two events history lacks, to tell a write that never reached the outbox
        # (the receiver lacks it too) from one the history sink passed over.
        self.problems["history lost"] = [
            f"{m} (lacks {' and '.join(kind for kind in ('received', 'delivered') if not per_type[kind, m])})"
            for m in sorted(self.acked) if not per_type["received", m] or not per_type["delivered", m]
        ]
        self.problems["history not sent"] = [m for m in sorted(self.acked) if m not in messages or messages[m].status != "sent"]
        # A batch written twice must not count a message's attempts or deferrals twice.
        self.problems["history miscounted"] = [
            f"{message_id} {recipient}" for (message_id, recipient), row in recipients.items()
            if message_id in self.acked
            and (row.deferred, row.attempts) != (deferrals[message_id, recipient], most_attempts.get((message_id, recipient), 0))
        ] + [
            message_id for message_id in self.acked if message_id in messages
            and messages[message_id].deferred != sum(n for (m, _), n in deferrals.items() if m == message_id)
        ]  # fmt: skip

    def _receiver(self, receiver: Receiver) -> None:
        copies: Counter[str] = Counter()
        seen: set[tuple[str, str]] = set()
        taken = [request.json() for request in list(receiver.requests) if request.answer == "ok"]
        self._received_ids: dict[tuple[str, str], set[str]] = {}
        for event in taken:
            copies[event["id"]] += 1
            seen.add((event["event"], event["data"]["message_id"]))
            self._received_ids.setdefault((event["event"], event["data"]["message_id"]), set()).add(event["id"])
        self.figures["receiver_events"] = len(copies)
        self.figures["receiver_duplicates"] = sum(n - 1 for n in copies.values())
        self.figures["receiver_requests"] = len(receiver.requests)
        self.problems["receiver lost"] = [
            m for m in sorted(self.acked) if ("message.received", m) not in seen or ("message.sent", m) not in seen
        ]

    def _explain_history_losses(self) -> None:
        """For each event history lacks: the id the receiver got it under, and what history holds under that id."""
        explained = []
        for problem in self.problems["history lost"]:
            message_id = problem.split()[0]
            for hook_type in ("message.received", "message.sent"):
                for event_id in sorted(self._received_ids.get((hook_type, message_id), ())):
                    row = self._history_rows.get(event_id)
                    held = f"{row.type} of {row.message_id} seq {row.seq}" if row else "nothing"
                    explained.append(f"{message_id} {hook_type} {event_id}: history holds {held}")
        self.figures["history_lost_explained"] = explained

    def lost(self) -> int:
        history = {problem.split()[0] for problem in self.problems["history lost"]}
        return len(history | set(self.problems["receiver lost"]))

    def check(self) -> None:
        for problem, which in self.problems.items():
            assert not which, f"{problem}: {len(which)}, {which[:10]}"


def backlog_bound(load: Load, hop: NextHop, receiver: Receiver) -> None:
    """The load waits while too much is acknowledged and not yet delivered, or not yet at the receiver (two events a message)."""
    load.may_send = lambda: len(load.acked) - min(len(hop.recorder.arrivals), len(receiver.requests) // 2) < BACKLOG


@pytest.mark.slow
def test_sigkill_events_and_whole_server_under_load_loses_no_event(make_server, cluster: postgres.Cluster) -> None:
    rng = random.Random(seed("events sigkill"))
    hop, receiver = NextHop().start(), Receiver().start()
    server: Server = make_server(config(hop, cluster.url, receiver))
    load = Load(server.port, clients=6, seed=rng.randrange(1 << 30))
    backlog_bound(load, hop, receiver)
    load.start()
    started = time.monotonic()
    server_kills = 0
    try:
        for kill in range(1, KILLS + 1):
            # A random number of events (posted to the receiver) later; each is also a history write.
            target = len(receiver.requests) + rng.randint(1, 100)
            wait_for(lambda target=target: len(receiver.requests) >= target, 60, f"{target} events at the receiver")
            victim = server.children()["events"]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda victim=victim: server.children().get("events", victim) != victim, 30, "the events process to restart")
            if kill % KILLS_BEFORE_SERVER_KILL == 0:
                target = len(load.acked) + rng.randint(1, 100)
                wait_for(lambda target=target: len(load.acked) >= target, 60, f"{target} messages acknowledged")
                server.kill()  # the supervisor and every child at once, like a power cut
                server_kills += 1
                server.start()
        load.stop()
        wait_for(lambda: caught_up(server), 120, "the queue to drain and every sink to catch up", every=0.5)
        elapsed = time.monotonic() - started
        tally = Tally(cluster.url, receiver, set(load.acked))
        report(
            "events sigkill", events_kills=KILLS, server_kills=server_kills, **tally.figures, lost=tally.lost(),
            refused=load.refused, seconds=round(elapsed, 1),
        )
        tally.check()
        assert server.stop() == 0
    finally:
        load.stop()
        receiver.stop()
        hop.stop()


def test_mail_a_killed_server_was_sending_goes_after_its_lease_with_every_event(make_server, cluster: postgres.Cluster) -> None:
    """The whole server killed while its runner waits on the next hop: after the restart the lease runs out,
    another runner sends the mail, and history and the receiver get its delivered events."""
    hop, receiver = NextHop().start(), Receiver().start()
    hop.recorder.data_delay = 30.0  # the runner is still waiting for DATA's reply when the server dies
    settings = config(hop, cluster.url, receiver)
    settings["delivery"]["lease_time"] = "3s"
    server: Server = make_server(settings)
    try:
        with smtplib.SMTP("127.0.0.1", server.port) as client:
            for number in range(3):
                client.sendmail("alice@example.com", ["bob@example.org"], f"Subject: {number}\r\n\r\nhi\r\n")
        acked = {row["id"] for row in queued(server)}
        wait_for(lambda: hop.recorder.connections >= 1, 30, "the runner to be at the next hop")
        server.kill()
        hop.recorder.data_delay = 0.0
        server.start()
        wait_for(lambda: caught_up(server), 60, "the leases to run out, the mail to go and every sink to catch up", every=0.5)
        tally = Tally(cluster.url, receiver, acked)
        assert len(acked) == 3 and tally.figures["history_events"] == 6, tally.figures
        tally.check()
        assert server.stop() == 0
    finally:
        receiver.stop()
        hop.stop()


class Watch:
    """Reads /health while a fault lasts: the most lag each sink showed, and every status it answered with."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.most_lag: dict[str, float] = dict.fromkeys(SINKS, 0.0)
        self.statuses: Counter[str] = Counter()

    def lag(self, sink: str) -> float:
        """Reads /health once; the sink's lag now (infinite while /health does not answer)."""
        answer = health(self.server)
        if answer is None:
            return float("inf")
        status, data = answer
        self.statuses[f"{status} {data['status']}"] += 1
        found = data["events_lag_seconds"]
        for name, seconds in found.items():
            self.most_lag[name] = max(self.most_lag.get(name, 0.0), seconds)
        return found.get(sink, float("inf"))


def unbounded_by_events(load: Load, hop: NextHop) -> None:
    """The load waits only for the next hop: the sink held up must not hold ingress back."""
    load.may_send = lambda: len(load.acked) - len(hop.recorder.arrivals) < BACKLOG


def settle_and_check(
    name: str, server: Server, load: Load, cluster: postgres.Cluster, receiver: Receiver, watch: Watch,
    caught_up_after: float, **figures: Any,
) -> None:
    """After an outage: the queue drained and every sink caught up, the figures reported, nothing lost or
    refused, and mail was taken while it lasted (figures' acked_while_* count)."""
    wait_for(lambda: caught_up(server), 90, "the queue to drain and every sink to catch up", every=0.5)
    tally = Tally(cluster.url, receiver, set(load.acked))
    report(
        name, **figures, most_lag={sink: round(lag, 1) for sink, lag in watch.most_lag.items()},
        health=dict(watch.statuses), caught_up_seconds=round(caught_up_after, 1), **tally.figures,
        lost=tally.lost(), refused=load.refused,
    )  # fmt: skip
    acked_during = next(value for key, value in figures.items() if key.startswith("acked_while_"))
    assert acked_during > 0 and not load.refused, load.refusals
    tally.check()
    assert server.stop() == 0


# How far the history sink falls behind while PostgreSQL is down: the outage, measured on the lag itself.
HISTORY_DOWN_SECONDS = 10.0


def test_history_database_down_under_load(make_server, cluster: postgres.Cluster) -> None:
    rng = random.Random(seed("history down"))
    hop, receiver = NextHop().start(), Receiver().start()
    server: Server = make_server(config(hop, cluster.url, receiver))
    load = Load(server.port, clients=4, seed=rng.randrange(1 << 30))
    unbounded_by_events(load, hop)
    load.start()
    try:
        wait_for(lambda: len(receiver.requests) >= 100, 30, "events to flow")
        watch = Watch(server)
        cluster.stop(fast=True)  # as `pg_ctl stop -m fast`: the events process's connections are cut
        stopped, acked_before = time.monotonic(), len(load.acked)
        wait_for(lambda: watch.lag("history") >= HISTORY_DOWN_SECONDS, 60, "the history sink to fall behind", every=0.2)
        down = time.monotonic() - stopped
        acked_while_down = len(load.acked) - acked_before
        cluster.start()
        back = time.monotonic()
        backlog_bound(load, hop, receiver)  # the load goes on at the pace the events process keeps
        wait_for(lambda: watch.lag("history") < 1, 90, "the history sink to catch up", every=0.2)
        caught_up_after = time.monotonic() - back
        load.stop()
        settle_and_check(
            "history database down", server, load, cluster, receiver, watch, caught_up_after,
            down_seconds=round(down, 1), acked_while_down=acked_while_down,
        )
    finally:
        load.stop()
        receiver.stop()
        hop.stop()


# How far the webhook falls behind while its receiver fails, then hangs.
RECEIVER_FAILING_SECONDS = 5.0
HANGS = 2


def test_webhook_receiver_failing_then_hanging_under_load(make_server, cluster: postgres.Cluster) -> None:
    rng = random.Random(seed("receiver failing"))
    hop, receiver = NextHop().start(), Receiver().start()
    # Short pauses and timeout, so the outage is seconds long and the catch-up quick.
    server: Server = make_server(config(hop, cluster.url, receiver, max_pause="2s", timeout="1s"))
    load = Load(server.port, clients=4, seed=rng.randrange(1 << 30))
    unbounded_by_events(load, hop)
    load.start()
    try:
        wait_for(lambda: len(receiver.requests) >= 100, 30, "events to flow")
        watch = Watch(server)
        failing, acked_before = time.monotonic(), len(load.acked)
        receiver.answer = "fail"
        wait_for(lambda: watch.lag(HOOK) >= RECEIVER_FAILING_SECONDS, 60, "the webhook to fall behind", every=0.2)
        receiver.answer = "hang"
        wait_for(lambda: sum(r.answer == "hang" for r in receiver.requests) >= HANGS, 60, f"{HANGS} requests hanging")
        receiver.answer = "ok"
        back = time.monotonic()
        acked_while_failing = len(load.acked) - acked_before
        # A request per event is the receiver's pace, slower than ingress here: the catch-up is timed without load.
        load.stop()
        wait_for(lambda: watch.lag(HOOK) < 1, 90, "the webhook to catch up", every=0.2)
        caught_up_after = time.monotonic() - back
        settle_and_check(
            "webhook receiver failing", server, load, cluster, receiver, watch, caught_up_after,
            failing_seconds=round(back - failing, 1), acked_while_failing=acked_while_failing,
        )
    finally:
        load.stop()
        receiver.stop()
        hop.stop()
