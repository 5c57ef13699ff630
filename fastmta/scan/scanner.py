"""One SMTP worker's scanner: spamd and clamd look at a message at once, within the timeout and the worker's cap.

It counts every scan in the worker's metrics and says once in the log when a scanner stops
answering and once when it answers again; the verdict (verdict.py) decides what that means.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

from fastmta.config import ScanConfig, format_duration
from fastmta.events import records as events
from fastmta.metrics import SmtpMetrics
from fastmta.scan import clamd, spamd
from fastmta.scan.verdict import (
    BUSY,
    ERROR,
    HOLD,
    REJECT,
    TEMPFAIL,
    TIMEOUT,
    ScanError,
    SpamFinding,
    SpamReport,
    Unavailable,
    Verdict,
    VirusFinding,
    VirusReport,
    decide,
    safe_name,
    spam_found,
    virus_found,
)

log = logging.getLogger("fastmta.scan")

Report = TypeVar("Report", SpamReport, VirusReport)
Check = Callable[[str, int, bytes, float], Awaitable[Report]]

# What became of a message with a finding, as its event and the metrics say it.
_DONE = {REJECT: "rejected", HOLD: "held"}


class Outcome(NamedTuple):
    spam: SpamFinding
    virus: VirusFinding
    verdict: Verdict

    @property
    def done(self) -> str:
        """What became of the message, for its findings: rejected, held, tagged; "" when put off (451)."""
        action = self.verdict.action
        return "" if action == TEMPFAIL else _DONE.get(action, "tagged")


class Scanner:
    def __init__(self, config: ScanConfig, metrics: SmtpMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.active = 0  # messages under scan now
        self._failing: set[str] = set()

    async def scan(self, message: bytes) -> Outcome:
        config = self.config
        wants_spam = config.spamassassin and len(message) <= config.spam_max_size
        if self.active >= config.max_concurrent:
            busy = Unavailable(BUSY, f"max_concurrent ({config.max_concurrent}) messages are under scan")
            spam: SpamFinding = busy if wants_spam else None
            virus: VirusFinding = busy if config.clamav else None
        else:
            self.active += 1
            try:
                spam, virus = await self._both(message, wants_spam)
            finally:
                self.active -= 1
        outcome = Outcome(spam, virus, decide(config, spam, virus))
        self._count(outcome)
        return outcome

    async def _both(self, message: bytes, wants_spam: bool) -> tuple[SpamFinding, VirusFinding]:
        """Each scanner that is on, at once; one alone is awaited as it is (gather would add a task per message)."""
        c = self.config
        spam = self._ask("spamd", spamd.check, c.spamassassin_host, c.spamassassin_port, message) if wants_spam else None
        virus = self._ask("clamd", clamd.check, c.clamav_host, c.clamav_port, message) if c.clamav else None
        if spam is not None and virus is not None:
            return await asyncio.gather(spam, virus)
        return (await spam if spam is not None else None), (await virus if virus is not None else None)

    async def _ask(self, name: str, check: Check[Report], host: str, port: int, message: bytes) -> Report | Unavailable:
        try:
            async with asyncio.timeout(self.config.timeout):
                report = await check(host, port, message, self.config.connect_timeout)
        except TimeoutError:
            failed = Unavailable(TIMEOUT, f"no answer within {format_duration(self.config.timeout)}")
        except (OSError, ScanError) as exc:
            failed = Unavailable(ERROR, str(exc) or type(exc).__name__)
        else:
            if name in self._failing:
                self._failing.discard(name)
                log.info("%s at %s:%d answers again", name, host, port)
            return report
        if name not in self._failing:
            self._failing.add(name)
            log.warning("%s at %s:%d gives no verdict (%s): %s", name, host, port, failed.why, failed.detail)
        return failed

    def _count(self, outcome: Outcome) -> None:
        metrics, done = self.metrics, outcome.done
        spam, virus = outcome.spam, outcome.virus
        if spam is not None:
            metrics.spam_scans[_result(spam, spam_found(spam) is not None)] += 1
            if done and spam_found(spam):
                metrics.spam_detected[done] += 1
        if virus is not None:
            metrics.virus_scans[_result(virus, bool(virus_found(virus)))] += 1
            if done and virus_found(virus):
                metrics.virus_detected[done] += 1


def _result(finding: SpamReport | VirusReport | Unavailable, found: bool) -> str:
    if isinstance(finding, Unavailable):
        return finding.why
    return "detected" if found else "clean"


def detections(outcome: Outcome, message_id: str, node: str, now: float, client_ip: str, sender: str) -> list[events.Event]:
    """The events of what the scanners found in a message that was refused, held or queued (none when put off)."""
    done = outcome.done
    if not done:
        return []
    found: list[events.Event] = []
    spam, virus = spam_found(outcome.spam), virus_found(outcome.virus)
    if spam is not None:
        found.append(events.SpamDetected(
            id=events.new_event_id(now), at=now, node=node, message_id=message_id, action=done, client_ip=client_ip,
            sender=sender, score=spam.score, threshold=spam.threshold, rules=list(spam.rules),
        ))  # fmt: skip
    if virus:
        found.append(events.VirusDetected(
            id=events.new_event_id(now), at=now, node=node, message_id=message_id, action=done, client_ip=client_ip,
            sender=sender, virus=safe_name(virus),
        ))  # fmt: skip
    return found
