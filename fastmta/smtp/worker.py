"""An SMTP worker process: serves its share of every listener with uvloop until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import lmdb
import uvloop

from fastmta.access.stores import Access
from fastmta.config import Config
from fastmta.counters.configured import opened
from fastmta.counters.failover import FailoverCounters
from fastmta.events.records import Event
from fastmta.limits import ClientLimits
from fastmta.listeners import ListenerSocket
from fastmta.metrics import SmtpMetrics
from fastmta.queue.commit import GroupCommit
from fastmta.queue.control import MaintenanceControl
from fastmta.queue.records import Message
from fastmta.queue.store import QueueStore, StoreFullError
from fastmta.queue.wakeup import Poker
from fastmta.scan.scanner import Scanner
from fastmta.smtp.admissions import Admissions
from fastmta.smtp.protocol import SmtpProtocol
from fastmta.smtp.session import SMTPS, Settings
from fastmta.smtp.tls import server_context

log = logging.getLogger("fastmta.smtp")


# A message to commit: its record, its stored bytes, and the events of what the scanners found in it.
Incoming = tuple[Message, bytes, Sequence[Event]]


def _ignore(error: BaseException | None) -> None:
    if error is not None:
        log.warning("an event of a refused session was not recorded: %s", error)


class Worker:
    """Everything the connections of one worker share: stores, limits, settings, the group commit."""

    def __init__(self, config: Config, name: str, loop: asyncio.AbstractEventLoop) -> None:
        smtp = config.smtp
        self.config = config
        self.name = name
        self.store = QueueStore.opened(config)
        self.metrics = SmtpMetrics(name, config.server.metrics)
        self.limiter = opened(config, name)  # state.lmdb, or Redis before it in a cluster
        # Connections closed while state.lmdb could not be written: given back by the sweep.
        self._unreleased: list[tuple[str, Mapping[tuple[str, str], int]]] = []
        self._state_failing = False
        self._commit_failing = False
        try:
            self.limiter.forget_dead_processes()
        except lmdb.Error as exc:
            self.state_failed(exc)
        # Looked up in the blocking pool with the password check (protocol.py): in a cluster, a PostgreSQL query.
        self.access = Access.opened(config, self.store.env)
        self.accounts = self.access.accounts
        # Read once a second (the sweep), not per connection: in a cluster it may be a Redis round trip.
        self._maintenance = MaintenanceControl(
            self.store.env, self.limiter if isinstance(self.limiter, FailoverCounters) else None
        )
        self.in_maintenance = self._maintenance.enabled()
        self.limits = ClientLimits.configured(self.limiter, config, refused=self.metrics.limit_hit)
        # In a cluster a new connection's admission is answered when Redis replies, without blocking the loop.
        self.admissions = (
            Admissions(self.limits, self.limiter, loop, config.cluster.redis_timeout)
            if isinstance(self.limiter, FailoverCounters)
            else None
        )
        self.tls_context: ssl.SSLContext | None = (
            server_context(smtp.tls_cert, smtp.tls_key) if smtp.tls_cert else None
        )
        self.settings = Settings.configured(config, name, tls_available=self.tls_context is not None)
        self._poker = Poker(config.data_dir) if config.delivery.workers else None
        self.scanner = Scanner(config.scan, self.metrics) if config.scan.enabled else None
        self.committer: GroupCommit[Incoming | Event] = GroupCommit(self._insert, loop)
        self.connections: set[SmtpProtocol] = set()
        self._loop = loop
        # Password hashing takes tens of milliseconds; it must not stall other clients.
        self._blocking = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blocking")

    def _insert(self, batch: list[Incoming | Event]) -> list[StoreFullError | None]:
        """Runs in the commit thread: store the messages with the sessions' refusal events, then wake a delivery runner."""
        messages: list[tuple[Message, bytes]] = []
        refusals: list[Event] = []
        findings: dict[str, Sequence[Event]] = {}
        for item in batch:
            if isinstance(item, tuple):
                message, body, found = item
                messages.append((message, body))
                if found:
                    findings[message.id] = found
            else:
                refusals.append(item)
        stored = iter(self.store.insert(messages, refusals, findings))
        self.wake_runners()
        return [next(stored) if isinstance(item, tuple) else None for item in batch]

    def record(self, event: Event) -> None:
        """An event of the session's (a refusal, a failed login): it rides the next group commit, nobody waits for it."""
        self.committer.submit(event, _ignore)

    def release(self, ip: str, unused: Mapping[tuple[str, str], int]) -> None:
        """A counted connection closed: its count and what it reserved and did not use go back."""
        try:
            self.limits.release(ip, unused)
        except lmdb.Error as exc:
            self.state_failed(exc)
            self._unreleased.append((ip, unused))

    def commit_outcome(self, error: BaseException | None) -> None:
        """A full store refuses every message until space returns: said once when it starts and once when it ends."""
        if error is not None and not self._commit_failing:
            self._commit_failing = True
            log.error("%s: messages cannot be stored, clients are told to try later: %s", self.name, error)
        elif error is None and self._commit_failing:
            self._commit_failing = False
            log.info("%s: messages are stored again", self.name)

    def state_failed(self, error: lmdb.Error) -> None:
        """state.lmdb cannot be written (a full disk): limits go uncounted meanwhile; said once."""
        if not self._state_failing:
            self._state_failing = True
            log.warning("%s: state.lmdb cannot be written, per-client limits are not counted until it can: %s", self.name, error)

    def _sweep_state(self) -> None:
        try:
            while self._unreleased:
                self.limits.release(*self._unreleased[0])
                self._unreleased.pop(0)
            self.limiter.sweep()
        except lmdb.Error as exc:
            self.state_failed(exc)
            return
        if self._state_failing:
            self._state_failing = False
            log.info("%s: state.lmdb can be written again", self.name)

    def wake_runners(self) -> None:
        if self._poker is not None:
            self._poker.poke()

    def run_blocking(self, function: Callable[..., Any], args: tuple[Any, ...], done: Callable[[object], None]) -> None:
        """Runs function in a thread; done receives its result, or the exception it raised."""
        future = self._loop.run_in_executor(self._blocking, function, *args)
        future.add_done_callback(lambda f: done(f.exception() or f.result()))

    async def serve(self, sockets: list[ListenerSocket]) -> None:
        stop = asyncio.Event()
        self._loop.add_signal_handler(signal.SIGTERM, stop.set)
        self._loop.add_signal_handler(signal.SIGHUP, lambda: None)
        servers = []
        for listener in sockets:
            servers.append(
                await self._loop.create_server(
                    lambda kind=listener.kind, proxy=listener.proxy_protocol: SmtpProtocol(self, kind, proxy),
                    sock=listener.sock,
                    ssl=self.tls_context if listener.kind == SMTPS else None,
                    backlog=1024,
                )
            )
        sweeper = asyncio.ensure_future(self._sweep())
        log.info("%s serving %s", self.name, ", ".join(f"{s.kind} {s.address}" for s in sockets))
        await stop.wait()
        sweeper.cancel()
        await self._drain(servers)

    async def _sweep(self) -> None:
        """Once a second: sessions past their deadline end, old rate windows go, metrics are written."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for connection in list(self.connections):
                session = connection.session
                if session is not None and now >= session.deadline:
                    connection.expire(now)
            self._sweep_state()
            self.in_maintenance = self._maintenance.enabled()
            self.metrics.flush(len(self.connections))

    async def _drain(self, servers: Sequence[asyncio.AbstractServer]) -> None:
        """Stop accepting; idle clients hear 421 now; open transactions get the grace period to finish."""
        for server in servers:
            server.close()
        for connection in list(self.connections):
            connection.shutdown()
        deadline = time.monotonic() + self.config.server.shutdown_grace_seconds
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.committer.wait_idle()
        for connection in list(self.connections):
            connection.shutdown(now=True)
        if self.admissions is not None:  # what the connections that waited for one counted goes back
            await self.admissions.settled()
        self.committer.close()
        self.metrics.flush(0)
        log.info("%s stopped", self.name)

    def close(self) -> None:
        if self.admissions is not None:
            self.admissions.close()
        self._blocking.shutdown(wait=False)
        if self._poker is not None:
            self._poker.close()
        self.access.close()
        self.limiter.close()
        self.store.close()


def run(config: Config, name: str, sockets: list[ListenerSocket]) -> int:
    async def main() -> None:
        worker = Worker(config, name, asyncio.get_running_loop())
        try:
            await worker.serve(sockets)
        finally:
            worker.close()

    uvloop.run(main())
    return 0
