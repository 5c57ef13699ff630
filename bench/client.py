"""source.py's engine inside one process: SMTP sessions on a raw asyncio protocol, driven by reply callbacks.

Every reply line completes a step, and the callback writes the next step from bytes built before the run:
no futures, no awaits and no parsing beyond the reply code on the message path, so the client's cost per
message stays far below any server's. Coroutines only open connections and park idle sessions.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from workload import Step, Transaction, build_pool

PROGRESS_SECONDS = 0.25
LAST_SUCCESS_DIGIT = 0x33  # b"3": a reply whose first byte is above it is a 4xx/5xx
DASH = 0x2D  # b"-" after the code: a continuation line of a multi-line reply
RSET = Step((b"RSET\r\n",), 1)
QUIT = Step((b"QUIT\r\n",), 1)
STARTTLS = Step((b"STARTTLS\r\n",), 1)
FAR_FUTURE = 1 << 62


@dataclass(frozen=True)
class Load:
    """What one process sends; source.py splits the user's totals across processes."""

    host: str
    port: int
    sessions: int
    messages: int | None  # None: until the deadline
    duration: float | None
    per_connection: int  # 0: reuse a connection until the run ends
    sizes: list[tuple[int, float]]
    domains: list[tuple[str, float]]
    rcpts: int = 1
    rate: float | None = None  # messages/s for open loop; None: closed loop
    starttls: bool = False
    auth: tuple[str, str] | None = None
    bdat: bool = False
    sender: str = "bench@source.example"
    helo: str = "source.example"
    timeout: float = 30.0
    keep_ids: bool = False
    seed: int = 0


@dataclass
class Stats:
    """One process's counts; latencies in microseconds, raw, to keep the hot path to an append."""

    accepted: int = 0
    failed: int = 0
    bytes: int = 0
    connections: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: array = field(default_factory=lambda: array("q"))
    ids: list[bytes] = field(default_factory=list)
    acked_at: array = field(default_factory=lambda: array("d"))  # wall clock of each id's 250
    first_start: float = 0.0
    started_at: float = 0.0  # first_start on the wall clock, to line up with other processes' timestamps
    last_done: float = 0.0

    def fail(self, reason: str) -> None:
        self.failed += 1
        self.errors[reason] += 1


class Parked:
    """A session slot without a connection, waiting for the open-loop clock to hand it a start time."""

    def __init__(self, future: asyncio.Future[float | None]) -> None:
        self.future = future

    def start(self, t0: float) -> None:
        self.future.set_result(t0)

    def quit(self) -> None:
        self.future.set_result(None)


class Runner:
    """Hands out message start times: at once (closed loop) or at scheduled instants (open loop)."""

    def __init__(self, load: Load, stats: Stats) -> None:
        self.load = load
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.left = load.messages if load.messages is not None else FAR_FUTURE
        self.stopped = False
        self.producing = load.rate is not None
        self.tickets: deque[float] = deque()
        self.idle: deque[Parked | Session] = deque()
        self.live: set[Session] = set()
        self.pools: dict[bool, list[Transaction]] = {}
        self.next_tx = 0
        self.fatal: str | None = None

    @property
    def done(self) -> bool:
        if self.stopped:
            return True
        if self.load.rate is None:
            return self.left <= 0
        return not self.producing and not self.tickets

    def take(self) -> float | None:
        """A start time for the next message, or None if none is due now."""
        if self.stopped:
            return None
        if self.load.rate is not None:
            return self.tickets.popleft() if self.tickets else None
        if self.left <= 0:
            return None
        self.left -= 1
        return time.perf_counter()

    async def wait(self) -> float | None:
        """Park a connection-less slot until a ticket is due; None when the run is over."""
        future: asyncio.Future[float | None] = self.loop.create_future()
        self.idle.append(Parked(future))
        return await future

    def transaction(self, pipelining: bool) -> Transaction:
        """The next message from the pre-built pool (one pool per server dialect)."""
        pool = self.pools.get(pipelining)
        if pool is None:
            load = self.load
            pool = build_pool(load.sizes, load.domains, load.rcpts, load.sender, pipelining, load.bdat, load.seed)
            self.pools[pipelining] = pool
        self.next_tx += 1
        return pool[self.next_tx % len(pool)]

    def stop(self, fatal: str | None = None) -> None:
        """End the run: no new messages; parked slots and sessions quit."""
        self.fatal = self.fatal or fatal
        self.stopped = True
        self.producing = False
        self.tickets.clear()
        while self.idle:
            self.idle.popleft().quit()

    def produce(self, start: float) -> None:
        """The open-loop clock: every millisecond, release the tickets whose time has come."""
        rate = self.load.rate
        assert rate is not None
        issued = 0
        budget = self.left

        def tick() -> None:
            nonlocal issued
            if not self.producing:
                return
            due = min(budget, int((time.perf_counter() - start) * rate) + 1)
            for k in range(issued, due):
                when = start + k / rate  # the schedule, not the hand-out time: no coordinated omission
                if self.idle:
                    self.idle.popleft().start(when)
                else:
                    self.tickets.append(when)
            issued = due
            if issued < budget:
                self.loop.call_later(0.001, tick)
                return
            self.producing = False
            if not self.tickets:
                self.stop()

        tick()


def extensions(lines: list[bytes]) -> set[str]:
    """EHLO keywords, upper-cased: {"PIPELINING", "CHUNKING", ...}."""
    return {line[4:].split(b" ", 1)[0].decode(errors="replace").upper() for line in lines[1:]}


def tls_context() -> ssl.SSLContext:
    """Benchmarks talk to self-signed loopback servers, so the certificate is not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def reply_code(line: bytes) -> str:
    code = line[:3]
    return code.decode() if code.isdigit() else "garbled"


class Session(asyncio.Protocol):
    """One SMTP connection. `on_reply` is called when the last reply a step is owed arrives."""

    def __init__(self, runner: Runner, t0: float) -> None:
        self.runner = runner
        self.stats = runner.stats
        self.keep_ids = runner.load.keep_ids
        self.per_connection = runner.load.per_connection
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.closed: asyncio.Future[None] = runner.loop.create_future()
        self.buf = b""
        self.on_reply: Callable[[bytes], None] = self.greeted
        self.expect = 1  # the greeting
        self.collect: list[bytes] | None = None  # lines of a multi-line reply, only while setting up
        self.first_error: bytes | None = None
        self.pipelining = False
        self.tls = False
        self.tx: Transaction | None = None
        self.owes_message = True  # a start time was taken for this session; losing it fails a message
        self.t0 = t0  # the first message's clock starts before the connection
        self.step = 0
        self.sent = 0
        self.replies = 0  # for the watchdog
        self.seen = -1
        self.timed_out = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.runner.live.add(self)
        self.stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner.live.discard(self)
        if self.owes_message:
            reason = "timeout" if self.timed_out else "disconnect"
            self.stats.fail(reply_code(self.first_error) if self.first_error else reason)
        if self in self.runner.idle:
            self.runner.idle.remove(self)
        self.on_reply = self.closing
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        start = 0
        while (end := data.find(b"\r\n", start)) >= 0:
            line = data[start:end]
            start = end + 2
            if len(line) > 3 and line[3] == DASH:
                if self.collect is not None:
                    self.collect.append(line)
                continue
            self.replies += 1
            if line[0] > LAST_SUCCESS_DIGIT and self.first_error is None:
                self.first_error = line
            self.expect -= 1
            if not self.expect:
                self.on_reply(line)
        self.buf = data[start:]

    # sending messages: the hot path

    def send(self, step: Step, then: Callable[[bytes], None]) -> None:
        self.expect = step.replies
        self.on_reply = then
        self.transport.writelines(step.chunks)

    def start(self, t0: float) -> None:
        """Begin a message whose latency counts from t0."""
        self.tx = self.runner.transaction(self.pipelining)
        self.owes_message = True
        self.t0 = t0
        self.step = 0
        self.first_error = None
        self.send(self.tx.steps[0], self.stepped)

    def stepped(self, line: bytes) -> None:
        tx = self.tx
        assert tx is not None
        if line[0] > LAST_SUCCESS_DIGIT:
            return self.rejected()
        self.step += 1
        if self.step < len(tx.steps):
            self.send(tx.steps[self.step], self.stepped)
            return
        now = time.perf_counter()
        stats = self.stats
        stats.latencies.append(int((now - self.t0) * 1_000_000))
        stats.accepted += 1
        stats.bytes += tx.size
        stats.last_done = now
        if self.first_error is not None:  # a recipient refused among accepted ones
            stats.errors[reply_code(self.first_error)] += 1
        if self.keep_ids:
            stats.ids.append(line.rsplit(b" ", 1)[-1])
            stats.acked_at.append(stats.started_at + (now - stats.first_start))
        self.finished()

    def rejected(self) -> None:
        assert self.first_error is not None
        self.owes_message = False
        self.stats.fail(reply_code(self.first_error))
        if self.first_error.startswith(b"421"):
            self.on_reply = self.closing
            self.transport.close()
            return
        self.first_error = None
        self.send(RSET, self.reset)

    def reset(self, line: bytes) -> None:
        self.first_error = None
        self.finished()

    def finished(self) -> None:
        """After a message: the next one, a parked wait for a ticket, or QUIT."""
        self.tx = None
        self.owes_message = False
        self.sent += 1
        if self.per_connection and self.sent >= self.per_connection:
            return self.quit()
        self.next()

    def next(self) -> None:
        t0 = self.runner.take()
        if t0 is not None:
            self.start(t0)
        elif self.runner.done:
            self.quit()
        else:
            self.runner.idle.append(self)

    def quit(self) -> None:
        self.send(QUIT, self.closing)

    def closing(self, line: bytes) -> None:
        self.transport.close()

    # setting up, once per connection

    def greeted(self, line: bytes) -> None:
        if not line.startswith(b"220"):
            return self.setup_failed(line)
        self.ehlo()

    def ehlo(self) -> None:
        self.collect = []
        self.send(Step((f"EHLO {self.runner.load.helo}\r\n".encode(),), 1), self.ehloed)

    def ehloed(self, line: bytes) -> None:
        if not line.startswith(b"250"):
            return self.setup_failed(line)
        assert self.collect is not None
        offered = extensions([*self.collect, line])
        self.collect = None
        load = self.runner.load
        if load.starttls and not self.tls:
            if "STARTTLS" not in offered:
                return self.unsupported("the server does not offer STARTTLS")
            return self.send(STARTTLS, self.tls_ready)
        if load.bdat and "CHUNKING" not in offered:
            return self.unsupported("the server does not offer CHUNKING (BDAT)")
        self.pipelining = "PIPELINING" in offered
        if load.auth:
            secret = base64.b64encode(f"\0{load.auth[0]}\0{load.auth[1]}".encode())
            return self.send(Step((b"AUTH PLAIN " + secret + b"\r\n",), 1), self.authenticated)
        self.ready()

    def tls_ready(self, line: bytes) -> None:
        if not line.startswith(b"220"):
            return self.setup_failed(line)
        self.runner.loop.create_task(self.upgrade())

    async def upgrade(self) -> None:
        try:
            transport = await self.runner.loop.start_tls(
                self.transport, self, tls_context(), server_hostname=self.runner.load.host
            )
        except (OSError, ssl.SSLError):
            self.give_up("tls")
            return
        self.transport = transport  # type: ignore[assignment]
        self.tls = True
        self.ehlo()

    def authenticated(self, line: bytes) -> None:
        if not line.startswith(b"235"):
            return self.setup_failed(line)
        self.ready()

    def ready(self) -> None:
        self.first_error = None
        self.start(self.t0)

    def setup_failed(self, line: bytes) -> None:
        self.give_up(reply_code(line))

    def unsupported(self, reason: str) -> None:
        """No message can succeed: fail this one and stop the run."""
        self.give_up("unsupported")
        self.runner.stop(reason)

    def give_up(self, reason: str) -> None:
        self.owes_message = False
        self.stats.fail(reason)
        self.on_reply = self.closing
        self.transport.close()

    @property
    def busy(self) -> bool:
        return self.expect > 0


async def session_slot(runner: Runner) -> None:
    """One of the concurrent sessions: connect, send until the connection must close, repeat."""
    load = runner.load
    while True:
        t0 = runner.take()
        if t0 is None and not runner.done:
            t0 = await runner.wait()
        if t0 is None:
            return
        try:
            async with asyncio.timeout(load.timeout):
                _, session = await runner.loop.create_connection(lambda: Session(runner, t0), load.host, load.port)
        except TimeoutError:
            runner.stats.fail("timeout")
            continue
        except OSError:
            runner.stats.fail("connect")
            await asyncio.sleep(0.01)  # a refused connection costs nothing: do not spin through the budget
            continue
        await session.closed


def watchdog(runner: Runner) -> None:
    """Abort sessions that got no reply for a whole timeout period."""
    for session in list(runner.live):
        if session.busy and session.replies == session.seen:
            session.timed_out = True
            session.transport.abort()
        session.seen = session.replies
    runner.loop.call_later(runner.load.timeout / 2, watchdog, runner)


async def run(load: Load, progress: array | None = None, slot: int = 0) -> tuple[Stats, str | None]:
    """Send the load; returns the counts and, if the run could not proceed, why."""
    stats = Stats()
    runner = Runner(load, stats)
    loop = runner.loop
    if load.duration is not None:
        loop.call_later(load.duration, runner.stop)
    loop.call_later(load.timeout / 2, watchdog, runner)
    if progress is not None:
        report_progress(runner, progress, slot)
    stats.first_start = time.perf_counter()
    stats.started_at = time.time()
    if load.rate is not None:
        runner.produce(stats.first_start)
    await asyncio.gather(*(session_slot(runner) for _ in range(load.sessions)))
    if progress is not None:
        copy_progress(stats, progress, slot)
    return stats, runner.fatal


def report_progress(runner: Runner, progress: array, slot: int) -> None:
    copy_progress(runner.stats, progress, slot)
    runner.loop.call_later(PROGRESS_SECONDS, report_progress, runner, progress, slot)


def copy_progress(stats: Stats, progress: array, slot: int) -> None:
    progress[slot * 3] = stats.accepted
    progress[slot * 3 + 1] = stats.failed
    progress[slot * 3 + 2] = stats.bytes
