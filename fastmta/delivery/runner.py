"""A delivery runner process: lease due messages, send each recipient group along its route, settle the outcomes.

DKIM signing happens here, just before a message leaves over SMTP, not at commit: ingress (the `250`)
stays free of the private-key operation (0.8 ms for RSA-2048 here, four times an SMTP worker's whole
cost per message); a rotated key signs queued mail at once, so a retired key need stay published only
for mail already sent; each attempt's signature carries its own time; and mail a storing route keeps
(maildir, mbox, ...) is not signed at all. The price is a signature per attempt rather than per message: retries sign
again. The copies of one attempt (one per next hop) are the same bytes and share one signature.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lmdb
import uvloop

from fastmta import stores
from fastmta.config import Config, RouteConfig
from fastmta.counters import configured
from fastmta.delivery import dsn, retry
from fastmta.delivery.mx import DnsFailure, MxResolver
from fastmta.delivery.outbound import Connection, ConnectionFailed, Destination, Reply, crlf_lines, one_line
from fastmta.delivery.pool import Pools
from fastmta.delivery.routes import Router
from fastmta.delivery.tlspolicy.policy import TlsPolicies
from fastmta.delivery_log import DeliveryLog
from fastmta.dkim.signer import Signer
from fastmta.events import records as events
from fastmta.events.records import Event
from fastmta.kept_bodies import KeptBodies
from fastmta.metrics import DeliveryMetrics
from fastmta.processes import alive
from fastmta.queue.commit import GroupCommit
from fastmta.queue.control import DeliveryControl
from fastmta.queue.records import DEFERRED, DELIVERED, FAILED, QUEUED, SETTLED, Message, Recipient
from fastmta.queue.schedule import Scheduler, Settlement
from fastmta.queue.store import QueueStore
from fastmta.queue.wakeup import Poker, Waiter
from fastmta.stores.base import Copy, Failed, Refused, Store

log = logging.getLogger("fastmta.delivery")

# Without a poke, the schedule is still looked at this often: deferred mail comes due on its own.
_IDLE_LOOK_SECONDS = 1.0
# A settlement that could not be stored is tried again after these pauses (doubling).
_RECORD_RETRY_FIRST = 0.1
_RECORD_RETRY_MAX = 5.0
_SWEEP_SECONDS = 5.0
_PRUNE_SECONDS = 3600.0  # how often kept bodies older than keep_bodies go
_NO_ROUTE = Reply(550, "5.4.4 No route is configured for this domain")
_NO_MAILBOX = Reply(550, "5.1.1 No such mailbox")
_DISCARDED = Reply(250, "2.0.0 Discarded by route")
# Threads of the stores (maildir, mbox, …, s3) apart from asyncio's: an mbox lock waited on or a slow
# PUT holds one of these, never a thread the runner's own queue work (leases, settlements) needs.
_STORE_THREADS = 8
_LOCAL_FAULT = Reply(451, "4.3.0 Local error while sending")
_OVER_SMTP = ("mx", "smarthost")  # the route kinds whose mail leaves, and is DKIM-signed


@dataclass(frozen=True)
class Outcome:
    """What one attempt did for one recipient, and where."""

    reply: Reply
    route: str
    host: str = ""
    source_ip: str = ""
    # The report a NOTIFY=SUCCESS sender gets when this delivery succeeds: "delivered" where the
    # mail ends here, "relayed" to a next hop without DSN, none where the next hop reports itself.
    success_notice: str = ""


def _kept_or_not(_error: BaseException | None) -> None:
    """Nothing waits for a body to be kept (put_many logs its own failures)."""


def owner_alive(owner: str) -> bool:
    """Leases are owned by 'name:pid'; a pid that no longer exists holds nothing."""
    pid = owner.rpartition(":")[2]
    return pid.isdigit() and alive(int(pid))


class Runner:
    def __init__(self, config: Config, name: str, loop: asyncio.AbstractEventLoop) -> None:
        delivery = config.delivery
        self.config = config
        self.name = name
        self.owner = f"{name}:{os.getpid()}"
        self.store = QueueStore.opened(config)
        self.scheduler = Scheduler(self.store)
        # In a cluster: the delivery switch and the destinations' limits are the cluster's.
        self.cluster = configured.shared(config, name)
        self.control = DeliveryControl(self.store.env, self.cluster)
        self.router = Router(config.routes)
        self.signer = Signer.configured(config)
        self.pools = Pools(self._open, self.cluster)
        # MX hosts come through TlsPolicies: where DANE may apply, a DNSSEC-signed MX RRset names them, not this resolver.
        resolver = MxResolver(delivery.dns_servers, delivery.connect_timeout)
        self.tls_policies = TlsPolicies(
            config.tls_policy, resolver, config.data_dir, delivery.connect_timeout, self._tls_policy_failed
        )
        self.settler: GroupCommit[Settlement] = GroupCommit(self.scheduler.settle, loop)
        self.journal = DeliveryLog(
            config.data_dir / "delivery.log", name, config.delivery.log_max_bytes, config.delivery.log_daily,
            config.delivery.log_keep,
        )
        self.metrics = DeliveryMetrics(name, config.server.metrics)
        self.kept = KeptBodies.configured(config)
        self.keeper: GroupCommit[tuple[str, bytes]] = GroupCommit(self.kept.put_many, loop)
        self.retry_schedule: list[float] = list(delivery.retry_schedule)
        self.max_age = delivery.max_age
        self.delay_warning = delivery.delay_warning
        self.lease_seconds = delivery.lease_time
        self.connect_timeout = delivery.connect_timeout
        self.command_timeout = delivery.command_timeout
        self._wake = asyncio.Event()
        self._waiter = Waiter(config.data_dir, loop, self._wake)
        self._poker = Poker(config.data_dir)
        # Each attempt under way, by the id of the message it sends.
        self._in_flight: dict[asyncio.Task[None], str] = {}
        self._source_turn: dict[int, itertools.cycle[str]] = {}
        self._store_failing = False
        self.stores = {
            index: stores.opened(route, config.store)
            for index, route in enumerate(config.routes)
            if route.kind in stores.STORE_KINDS
        }
        self._store_threads = ThreadPoolExecutor(_STORE_THREADS, thread_name_prefix="store")
        self.delivered = 0

    # ----- the loop ---------------------------------------------------------------------------

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_sigterm() -> None:
            stop.set()
            self._wake.set()

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        reclaimed = await asyncio.to_thread(self.scheduler.reclaim, owner_alive)
        if reclaimed:
            log.info("%s took over %d messages from runners that died", self.name, reclaimed)
        log.info("%s delivering", self.name)
        flusher = asyncio.ensure_future(self._flush_metrics())
        last_sweep = last_renewal = time.monotonic()
        last_prune = 0.0
        while not stop.is_set():
            free = self.config.delivery.concurrency - len(self._in_flight)
            limit = min(self.config.delivery.batch_size, free)
            try:
                leased = await asyncio.to_thread(self._look, limit)
            except lmdb.Error as exc:  # a full disk, say: attempts under way go on, new ones wait for space
                self._store_trouble(exc)
                leased = []
            sending = set(self._in_flight.values()) if leased else set()
            for message in leased:
                if message.id in sending:
                    # Its lease ran out while its outcome waited to be stored (a full disk): this lease is
                    # a renewal, not a second attempt.
                    continue
                task = asyncio.ensure_future(self._deliver(message))
                self._in_flight[task] = message.id
                task.add_done_callback(self._finished)
            if leased and len(leased) == limit:
                self._poker.poke()  # there may be more: let a sibling runner help
            if self._in_flight and time.monotonic() - last_renewal > self.lease_seconds / 3:
                # A slow attempt (a paced or stalled next hop) keeps its messages: nobody else may send them meanwhile.
                try:
                    await asyncio.to_thread(self.scheduler.renew, self.owner, list(self._in_flight.values()), self.lease_seconds)
                    last_renewal = time.monotonic()
                except lmdb.Error as exc:
                    self._store_trouble(exc)
            if time.monotonic() - last_sweep > _SWEEP_SECONDS:
                await self.pools.sweep()
                last_sweep = time.monotonic()
            if time.monotonic() - last_prune > _PRUNE_SECONDS:
                await asyncio.to_thread(self.kept.prune)
                last_prune = time.monotonic()
            if leased and free > len(leased):
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), _IDLE_LOOK_SECONDS)
            except TimeoutError:
                pass
            self._wake.clear()
        await self._drain()
        flusher.cancel()
        self.metrics.flush()

    def _store_trouble(self, error: BaseException | None) -> None:
        """queue.lmdb refuses writes (a full disk): said when it starts and when it ends, not per message."""
        if error is not None and not self._store_failing:
            self._store_failing = True
            log.error("%s: queue.lmdb cannot be written, outcomes wait until it can: %s", self.name, error)
        elif error is None and self._store_failing:
            self._store_failing = False
            log.info("%s: queue.lmdb is written again", self.name)

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.metrics.flush()
            if self.cluster is not None:
                self.cluster.renew()

    def _look(self, limit: int) -> list[Message]:
        """In a thread: ETRN requests first (a read transaction when there are none; ETRN pokes too), then a lease.

        While delivery is suspended attempts under way finish and no new ones start; activation pokes the runners.
        """
        self.scheduler.take_etrn_requests()
        if not limit or self.control.suspended():
            return []
        return self.scheduler.lease(self.owner, limit, self.lease_seconds)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery failed unexpectedly", exc_info=task.exception())
        self._wake.set()

    async def _drain(self) -> None:
        """Attempts under way may finish within the grace period; the rest come back when their lease ends."""
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=self.config.server.shutdown_grace_seconds)
        for task in self._in_flight:
            task.cancel()
        await self.settler.wait_idle()
        await self.keeper.wait_idle()
        await self.pools.close()
        await self.tls_policies.close()
        log.info("%s stopped after %d deliveries", self.name, self.delivered)

    def close(self) -> None:
        self.settler.close()
        self.keeper.close()
        self.kept.close()
        self._store_threads.shutdown()  # a copy being written finishes first
        for store in self.stores.values():
            store.close()
        self._waiter.close()
        self._poker.close()
        self.journal.close()
        if self.cluster is not None:
            self.cluster.close()
        self.store.close()

    # ----- one message ------------------------------------------------------------------------

    async def _deliver(self, message: Message) -> None:
        body = self.store.body(message.id)
        if body is None:
            # A record without its body cannot be sent; held, it waits for an operator instead of circling.
            log.error("message %s has no body; holding it", message.id)
            await asyncio.to_thread(self.store.set_held, message.id, True)
            await self._record(Settlement(message, self.owner))  # gives up the lease, changes nothing else
            return
        started = time.time()
        due = [r for r in message.recipients if r.state in (QUEUED, DEFERRED) and r.next_attempt <= started + 1.0]
        groups: dict[tuple[int, str], list[Recipient]] = defaultdict(list)
        outcomes: dict[str, Outcome] = {}
        for recipient in due:
            domain = recipient.address.rpartition("@")[2].lower()
            found = self.router.route_for(domain)
            if found is None:
                outcomes[recipient.address] = Outcome(_NO_ROUTE, "none")
            else:
                # One transaction per next hop: a smarthost takes every domain at once, MX is per domain.
                index, route = found
                groups[(index, domain if route.kind == "mx" else "")].append(recipient)
        routes = self.router.routes
        outgoing = body
        if self.signer is not None and any(routes[index].kind in _OVER_SMTP for index, _ in groups):
            outgoing = self.signer.signed(crlf_lines(body), message.header_from, message.workspace_id, started)
        results = await asyncio.gather(
            *(
                self._send_group(
                    routes[index], index, domain, message, group, outgoing if routes[index].kind in _OVER_SMTP else body
                )
                for (index, domain), group in groups.items()
            ),
            return_exceptions=True,
        )
        for ((index, _), group), result in zip(groups.items(), results, strict=True):
            if isinstance(result, BaseException):
                # A fault of ours, not of the next hop: try again later rather than leave the lease to expire.
                log.error("sending %s failed unexpectedly", message.id, exc_info=result)
                result = {r.address: Outcome(_LOCAL_FAULT, f"{index}:{routes[index].kind}") for r in group}
            outcomes.update(result)
        await self._settle(message, body, outcomes, started)

    async def _settle(self, message: Message, body: bytes, outcomes: dict[str, Outcome], started: float) -> None:
        now = time.time()
        failed_now: list[Recipient] = []
        delayed_now: list[Recipient] = []
        succeeded_now: dict[str, list[Recipient]] = defaultdict(list)
        logged: list[tuple[Recipient, Outcome]] = []
        happened: list[Event] = []
        node = self.store.node
        message.attempts += 1
        for recipient in message.recipients:
            if recipient.address not in outcomes:
                continue
            outcome = outcomes[recipient.address]
            reply = outcome.reply
            recipient.attempts += 1
            # The record, the delivery log and any bounce quote the reply: flattened once, here, for all three.
            recipient.last_reply = one_line(str(reply))
            recipient.remote_host = outcome.host
            recipient.updated_at = now
            kind: type[events.Attempted]
            if reply.accepted:
                recipient.state, kind = DELIVERED, events.Delivered
                if outcome.success_notice and dsn.wants_notice(recipient, outcome.success_notice):
                    succeeded_now[outcome.success_notice].append(recipient)
            elif reply.permanent:
                recipient.state, kind = FAILED, events.Failed
                failed_now.append(recipient)
            elif retry.expired(message.received_at, self.max_age, now):
                recipient.state, kind = FAILED, events.Expired
                recipient.last_reply = one_line(f"{reply.code} 4.4.7 Gave up after {recipient.attempts} attempts: {reply.text}")
                failed_now.append(recipient)
            else:
                recipient.state, kind = DEFERRED, events.Deferred
                recipient.next_attempt = retry.next_attempt(recipient.attempts, self.retry_schedule, now)
                old_enough = 0 < self.delay_warning <= now - message.received_at
                if old_enough and not recipient.delay_notified and dsn.wants_notice(recipient, "delayed"):
                    recipient.delay_notified = True
                    delayed_now.append(recipient)
                    if self.store.events:
                        happened.append(events.attempted(events.DelayNotified, message, recipient, node, now, outcome.route))
            if self.store.events:
                happened.append(events.attempted(kind, message, recipient, node, now, outcome.route))
            logged.append((recipient, outcome))
        bounces = []
        hostname = self.config.server.hostname
        bounce_from = self.config.delivery.bounce_from
        bounce_size_limit = self.config.delivery.bounce_size_limit
        for action, recipients in (("failed", failed_now), ("delayed", delayed_now), *succeeded_now.items()):
            notice = (
                dsn.build(message, body, recipients, action, hostname, bounce_from, now, size_limit=bounce_size_limit)
                if recipients
                else None
            )
            if notice is not None:
                bounces.append(notice)
        settlement = Settlement(message, self.owner, bounces, happened)
        pause = _RECORD_RETRY_FIRST
        # The next hop has the mail: until the outcome is stored, this runner keeps the lease (renewing
        # it) and tries again, rather than let the lease run out and the message be sent twice.
        while (error := await self._record(settlement)) is not None:
            self._store_trouble(error)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RECORD_RETRY_MAX)
        self._store_trouble(None)
        # Written once the outcome is stored, so the log never tells of one the queue does not hold.
        for recipient, outcome in logged:
            self.journal.write(message, recipient, outcome.host, now - started, outcome.route, outcome.source_ip)
        if self.kept.keep and all(r.state in SETTLED for r in message.recipients):
            self.keeper.submit((message.id, body), _kept_or_not)
        attempted = [r for r in message.recipients if r.address in outcomes]
        for recipient in attempted:
            self.metrics.sent[recipient.state] += 1
        self.metrics.duration.observe(now - started)
        self.delivered += sum(1 for r in attempted if r.state == DELIVERED)
        if bounces:
            self._poker.poke()

    async def _record(self, settlement: Settlement) -> BaseException | None:
        """The settlement, through the group commit; the error if it could not be stored."""
        done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.settler.submit(settlement, done.set_result)
        return await done

    # ----- one route --------------------------------------------------------------------------

    async def _send_group(
        self, route: RouteConfig, index: int, domain: str, message: Message, recipients: list[Recipient], body: bytes
    ) -> dict[str, Outcome]:
        name = f"{index}:{route.kind}"
        if route.kind == "discard":
            return {r.address: Outcome(_DISCARDED, name) for r in recipients}
        if route.kind in stores.STORE_KINDS:
            return await self._store_copies(self.stores[index], name, route.kind, message, recipients, body)
        if route.kind == "smarthost":
            candidates = [(route.host, route.host)]
        else:
            try:
                candidates = await self.tls_policies.destinations(route, domain)
            except DnsFailure as failure:
                code = 550 if failure.permanent else 451
                if failure.status == "5.1.10":
                    code = 556
                return {r.address: Outcome(Reply(code, f"{failure.status} {failure}"), name) for r in recipients}
        hops, refusal = await self.tls_policies.plan(route, domain, candidates)
        if not hops:
            # No host the policy allows: "4.7.5 Cryptographic failure" (RFC 5248), with the policy's reason.
            refused = Reply(451, f"4.7.5 {refusal}")
            return {r.address: Outcome(refused, name, candidates[0][0] if candidates else "") for r in recipients}
        last_error, last_status, last_destination = "no mail exchanger tried", "4.4.1", None
        for hop in hops:
            destination = last_destination = Destination(index, hop.host, route.port, hop.tls, self._source_ip(index, route))
            pool = self.pools.get(destination, route.max_connections, route.max_messages_per_connection, route.rate)
            try:
                async with pool.turn(hop.address) as connection:
                    replies = await connection.send(message, recipients, body)
                    notice = "" if connection.offers_dsn else "relayed"
            except ConnectionFailed as exc:
                last_error, last_status = str(exc), exc.status
                continue
            return {rcpt: Outcome(reply, name, hop.host, destination.source_ip, notice) for rcpt, reply in replies.items()}
        deferral = Reply(451, f"{last_status} {last_error}")
        # The log and a later bounce name the last host tried, as Postfix's "delivery temporarily suspended" does.
        host, source_ip = (last_destination.host, last_destination.source_ip) if last_destination else ("", "")
        return {r.address: Outcome(deferral, name, host, source_ip) for r in recipients}

    def _source_ip(self, index: int, route: RouteConfig) -> str:
        if not route.source_ips:
            return ""
        turn = self._source_turn.get(index)
        if turn is None:
            turn = self._source_turn[index] = itertools.cycle(route.source_ips)
        return next(turn)

    async def _open(self, destination: Destination, address: str) -> Connection:
        connection = Connection(destination, address, self.config.server.hostname, self.connect_timeout, self.command_timeout)
        await connection.open(destination.tls)
        return connection

    def _tls_policy_failed(self, policy: str, mode: str, problem: str) -> None:
        """A next hop failed a recipient domain's TLS policy: refused (enforce) or, in testing mode, only reported."""
        self.metrics.tls_policy_failures[(policy, mode)] += 1
        if mode == "testing":
            log.warning("%s testing: %s; delivering anyway", policy, problem)

    async def _store_copies(
        self, store: Store, name: str, kind: str, message: Message, recipients: list[Recipient], body: bytes
    ) -> dict[str, Outcome]:
        """A copy per recipient (mailboxes) or one for all (archives); each recipient settles by what became of its copy."""
        groups = [[r] for r in recipients] if store.per_recipient else [recipients]
        outcomes = {}
        for group in groups:
            copy = Copy(message.id, message.sender, tuple(r.address for r in group), message.received_at, body)
            reply = await self._put(store, kind, copy)
            outcomes.update({r.address: Outcome(reply, name, success_notice="delivered") for r in group})
        return outcomes

    async def _put(self, store: Store, kind: str, copy: Copy) -> Reply:
        """250 only once put() returned: the copy is durable before its recipients are settled."""
        try:
            await asyncio.get_running_loop().run_in_executor(self._store_threads, store.put, copy)
        except Refused:
            return _NO_MAILBOX
        except Failed as exc:
            return Reply(451, f"4.3.0 {exc}")
        except OSError as exc:
            return Reply(451, f"4.3.0 {kind} write failed: {exc.strerror}")
        return Reply(250, f"2.0.0 Delivered to {kind}")


def run(config: Config, name: str) -> int:
    async def main() -> None:
        runner = Runner(config, name, asyncio.get_running_loop())
        try:
            await runner.serve()
        finally:
            runner.close()

    uvloop.run(main())
    return 0
