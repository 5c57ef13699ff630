"""A cluster's SMTP worker admits connections without waiting for Redis: asked together each loop turn, answered as replies come.

Every connection that asks within one turn of the event loop goes to Redis in one write
(FailoverCounters.open_soon, which sends the closes waiting too); the replies are read when the
socket has them, and each connection hears its answer then. A connection that went away while it
waited gives back what its admission counted as soon as the answer comes. With Redis unreachable,
or failing or silent for [cluster] redis_timeout while answers are owed, the connections are
counted in state.lmdb as FailoverCounters does for any command; local mode (no cluster) never comes
here and counts synchronously (ClientLimits.admit).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, cast

import lmdb

from fastmta.counters.failover import FailoverCounters
from fastmta.counters.interface import Opened
from fastmta.counters.redis_counters import Opening
from fastmta.limits import Admission, ClientLimits, LimitExceeded

# An admission's outcome: what it reserved, by (kind, key); the limit that refused it; or state.lmdb's
# failure to count it (the connection is let in uncounted).
AdmissionOutcome = Mapping[tuple[str, str], int] | LimitExceeded | lmdb.Error
Answer = Callable[[AdmissionOutcome], None]

log = logging.getLogger("fastmta.smtp")


class _Asked(NamedTuple):
    admission: Admission
    answer: Answer


def counted(count: Callable[..., Mapping[tuple[str, str], int]], *arguments: object) -> AdmissionOutcome:
    """The outcome of counting a connection now: `count` (ClientLimits.admit or .admitted) called with `arguments`."""
    try:
        return count(*arguments)
    except (LimitExceeded, lmdb.Error) as refusal:
        return refusal


class Admissions:
    """One SMTP worker's admissions in a cluster: asks Redis for each loop turn's new connections in one write,
    watches the counting connection for the replies, and answers each connection once."""

    def __init__(
        self, limits: ClientLimits, counters: FailoverCounters, loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._limits = limits
        self._counters = counters
        self._loop = loop
        self._timeout = timeout
        self._asked: list[_Asked] = []
        self._unanswered = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._reading: int | None = None  # the file descriptor watched for replies
        self._timer: asyncio.TimerHandle | None = None
        self._delivering = False
        self._closed = False
        counters.listen(self._stop_reading, self._answers_waiting)

    def ask(self, ip: str, exempt: bool, answer: Answer) -> None:
        """Counts a new connection (ClientLimits.admit); `answer` hears the outcome, in a later turn of the loop."""
        if not self._asked:
            self._loop.call_soon(self._flush)
        self._asked.append(_Asked(self._limits.admission(ip, exempt), answer))
        self._unanswered += 1
        self._settled.clear()

    async def settled(self) -> None:
        """Until every admission asked has been answered."""
        await self._settled.wait()

    def _flush(self) -> None:
        asked, self._asked = self._asked, []
        openings = [Opening(item, item.admission.ip, item.admission.per_minute, item.admission.reserve) for item in asked]
        try:
            written = self._counters.open_soon(openings)
        except lmdb.Error as error:  # going local, the open connections could not be moved to state.lmdb
            for _, answer in asked:
                self._answer(answer, error)
            return
        if not written:
            for admission, answer in asked:  # Redis unreachable: counted at once, in state.lmdb
                self._answer(answer, self._counted_now(admission))
            return
        self._watch()

    def _watch(self) -> None:
        """Reads replies when they come (the connection stays watched while open), and gives up on them after the timeout."""
        reading = self._counters.reply_fd()
        if reading != self._reading:
            self._stop_reading()
            if reading is not None:
                self._loop.add_reader(reading, self._deliver, True)
                self._reading = reading
        if self._timer is None and self._unanswered:
            self._timer = self._loop.call_at(self._loop.time() + self._timeout, self._overdue)

    def _stop_reading(self) -> None:
        if self._reading is not None:
            self._loop.remove_reader(self._reading)
            self._reading = None

    def _answers_waiting(self) -> None:
        """Answers were read (or given up on) outside _deliver: delivered in the next turn."""
        if not self._delivering and not self._closed:
            self._delivering = True
            self._loop.call_soon(self._deliver)

    def _deliver(self, readable: bool = False) -> None:
        self._delivering = False
        self._answer_arrived(readable)
        self._watch()

    def _answer_arrived(self, readable: bool = False) -> None:
        """Answers the connections whose replies have come (reading what is there, never waiting)."""
        for token, opened in self._counters.answers(readable):
            admission, answer = cast(_Asked, token)
            self._answer(answer, self._outcome(admission, opened))

    def _counted_now(self, admission: Admission) -> AdmissionOutcome:
        """Counts a connection Redis was not asked about (unreachable): in state.lmdb, reusing its Admission."""
        try:
            opened = self._counters.connection_opened(admission.ip, admission.per_minute, reserve=admission.reserve)
        except lmdb.Error as error:
            return error
        return self._outcome(admission, opened)

    def _outcome(self, admission: Admission, opened: Opened | None | lmdb.Error) -> AdmissionOutcome:
        if isinstance(opened, lmdb.Error):
            return opened
        return counted(self._limits.admitted, admission, opened)

    def _answer(self, answer: Answer, outcome: AdmissionOutcome) -> None:
        self._unanswered -= 1
        if not self._unanswered:
            self._settled.set()
        try:
            answer(outcome)
        except Exception:  # one connection's fault must not leave the others of its batch unanswered
            log.exception("an admission's answer failed")

    def _overdue(self) -> None:
        self._timer = None
        # Replies that came while the loop was busy are read first: uvloop runs due timers before it
        # polls, and an opening Redis did count must not be given up on (and counted again locally).
        self._answer_arrived()
        due = self._counters.overdue(self._timeout)
        if due is not None:  # the oldest is not overdue yet: looked at again when it would be
            self._timer = self._loop.call_at(self._loop.time() + max(0.0, due - time.monotonic()), self._overdue)

    def close(self) -> None:
        """Stops watching the counting connection and the clock; answers still owed are not delivered."""
        self._closed = True
        self._stop_reading()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
