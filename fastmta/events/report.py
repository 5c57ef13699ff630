"""The delivery report sink: the outcome of every delivery attempt, POSTed in batches to [events] report_url.

The body is `{"delivery_report": [entry, ...]}`, an entry `{"id": <queue id>, "recipient": ...,
"status": "sent" | "error" | "deferred", "ts_send" (sent) or "ts_error" (error, deferred): <unix
seconds>, "error": <the remote reply, "" when sent>, "event_id": ...}`, at most [events]
report_batch entries. The receiver answers `{"ok": true, "rejected": [queue ids]}`: the entries of
a rejected id are kept (report_retries) and go out again with a report RETRY_AFTER later, up to
report_max_attempts times in all, then to the dead letters. Any other answer (not 2xx, not that
JSON, `ok` not true) fails the whole report, and the runner offers the same batch again later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import msgspec
import sqlalchemy as sa

from fastmta.config import EventsConfig
from fastmta.events.names import REPORTED_TYPES
from fastmta.events.posting import Poster, Unreachable
from fastmta.events.records import AnyEvent, Deferred, Delivered, Entry, Expired, Failed
from fastmta.events.webhooks import LOOK_EVERY
from fastmta.history import db, dead_letters, report_retries
from fastmta.history.dead_letters import Letter
from fastmta.history.report_retries import Retry
from fastmta.metrics import EventsMetrics

NAME = "report"
# A rejected entry goes out again with the first report this long after the rejection.
RETRY_AFTER = 60.0
_JSON = msgspec.json.Encoder()
_LETTER_EVENT = "delivery_report"


class _Reply(msgspec.Struct):
    ok: bool
    rejected: list[str] = []


_REPLY = msgspec.json.Decoder(_Reply)


class ReportFailed(Exception):
    """The receiver did not take the report; the same entries go out again."""


def entry(event: AnyEvent) -> dict[str, Any] | None:
    """The report's entry for an outcome of delivery; None for any other event."""
    common = {"id": event.message_id, "recipient": event.recipient}
    match event:
        case Delivered():
            return {**common, "status": "sent", "ts_send": int(event.at), "error": "", "event_id": event.id}
        case Failed() | Expired() | Deferred():
            status = "deferred" if isinstance(event, Deferred) else "error"
            return {**common, "status": status, "ts_error": int(event.at), "error": event.reply, "event_id": event.id}
    return None


class ReportSink:
    name = NAME
    # The runner calls deliver() with no events too, so retries and replays go out while the outbox is quiet.
    idle_calls = True

    def __init__(
        self, settings: EventsConfig, engine: sa.Engine, metrics: EventsMetrics, retry_after: float = RETRY_AFTER,
        look_every: float = LOOK_EVERY,
    ) -> None:  # fmt: skip
        self.url = settings.report_url
        self.secret = settings.report_secret
        self.size = settings.report_batch
        self.max_attempts = settings.report_max_attempts
        self.max_pause = settings.max_pause
        self.engine = engine
        self.metrics = metrics
        self.retry_after = retry_after
        self.look_every = look_every
        self._poster = Poster(settings.connect_timeout, settings.timeout)
        # The runner offers a failed batch again whole; entries this process already reported are skipped.
        self._reported_through = 0
        self._next_look = 0.0

    def deliver(self, batch: Sequence[Entry]) -> None:
        db.ready(self.engine)  # dead letters and retries live there
        now = time.time()
        retries: list[Retry] = []
        if now >= self._next_look:
            self._next_look = now + self.look_every
            self._replay()
            with self.engine.begin() as connection:
                retries = report_retries.due(connection, now, self.size)
        pending = [(0, retry) for retry in retries] + [
            (item.sequence, Retry(event.id, found, 0))
            for item in batch
            if item.sequence > self._reported_through and (head := item.head) is not None and head.type in REPORTED_TYPES
            and (event := item.event) is not None and (found := entry(event)) is not None
        ]
        for start in range(0, len(pending), self.size):
            chunk = pending[start:start + self.size]
            rejected = self._send([retry.entry for _, retry in chunk])
            self._settle([retry for _, retry in chunk], rejected)
            self._reported_through = max(self._reported_through, *(sequence for sequence, _ in chunk))

    def close(self) -> None:
        self._poster.close()
        self.engine.dispose()

    def _send(self, entries: list[dict[str, Any]]) -> set[str]:
        """Posts one report; returns the queue ids the receiver rejected, or raises when it took none."""
        try:
            answer = self._poster.post(self.url, _JSON.encode({"delivery_report": entries}), self.secret)
        except Unreachable as exc:
            raise ReportFailed(f"{self.url}: {exc}") from None
        if not answer.ok:
            raise ReportFailed(f"{self.url}: {answer.summary()}")
        try:
            reply = _REPLY.decode(answer.body)
        except msgspec.DecodeError as exc:
            raise ReportFailed(f"{self.url}: not the report's answer ({exc}): {answer.summary()}") from None
        if reply.ok is not True:
            raise ReportFailed(f"{self.url}: ok is not true: {answer.summary()}")
        return set(reply.rejected)

    def _settle(self, sent: list[Retry], rejected: set[str]) -> None:
        now = time.time()
        again: list[Retry] = []
        given_up: list[Retry] = []
        through: list[str] = []  # earlier rejections that got through now
        for retry in sent:
            if retry.entry["id"] not in rejected:
                if retry.attempts:
                    through.append(retry.event_id)
                continue
            tried = Retry(retry.event_id, retry.entry, retry.attempts + 1)
            (given_up if tried.attempts >= self.max_attempts else again).append(tried)
        with self.engine.begin() as connection:
            report_retries.keep(connection, again, now + self.retry_after, now)
            report_retries.forget(connection, through + [retry.event_id for retry in given_up])
            letters = [Letter(retry.event_id, _LETTER_EVENT, retry.entry) for retry in given_up]
            dead_letters.add(connection, NAME, letters, f"rejected {self.max_attempts} times", self.max_attempts, now)
        self.metrics.sent(NAME, "delivered", len(sent) - len(again) - len(given_up))
        self.metrics.sent(NAME, "rejected", len(again) + len(given_up))
        self.metrics.dead_lettered(NAME, len(given_up))

    def _replay(self) -> None:
        with self.engine.begin() as connection:
            letters = dead_letters.due(connection, NAME, self.size)
        if not letters:
            return
        try:
            rejected = self._send([letter.payload for letter in letters])
        except ReportFailed as exc:
            failed, reason, took = letters, f"replay: {exc}", []
        else:
            failed = [letter for letter in letters if letter.payload["id"] in rejected]
            reason, took = "replay: rejected", [letter for letter in letters if letter.payload["id"] not in rejected]
        now = time.time()
        with self.engine.begin() as connection:
            dead_letters.failed_again(connection, [letter.id for letter in failed], reason, now)
            dead_letters.replayed(connection, [letter.id for letter in took], now)
        self.metrics.sent(NAME, "replayed", len(took))
        self.metrics.sent(NAME, "replay_failed", len(failed))
