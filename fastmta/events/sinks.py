"""What the events process hands the outbox's events to: a sink, and the sinks a config asks for."""

from __future__ import annotations

from typing import Protocol

from fastmta.config import Config
from fastmta.events.history import HistorySink
from fastmta.events.records import Entry
from fastmta.events.report import ReportSink
from fastmta.events.webhooks import WebhookSink
from fastmta.history import db
from fastmta.metrics import EventsMetrics


class Sink(Protocol):
    """One consumer of the outbox, with its own cursor there (named `name`).

    deliver() takes a batch of entries in outbox order (an entry that cannot be decoded has no event) and
    raises when it could not take it all; the same batch is then offered again later, so delivering
    it twice must leave the same result (events carry ids to deduplicate on).

    Three attributes are optional, read by the runner: `max_pause`, the longest pause in seconds
    between offers of a batch that failed (a minute without it); `idle_calls`, true for a sink
    that has work of its own (replays, retries) and wants deliver() called with no events too; and
    `batch_limit`, the most events offered at once (500 at most). The runner offers the sinks
    their batches one after the other and saves cursors between offers, so a sink whose batch takes
    long (a request per event) keeps it small: the others are not held to its pace, and a crash
    offers again less of what it had already sent.
    """

    name: str

    def deliver(self, batch: list[Entry]) -> None: ...

    def close(self) -> None: ...


def configured(config: Config) -> list[Sink]:
    """The sinks the config asks for, in the order each batch reaches them: history, the webhooks, the report."""
    made: list[Sink] = []
    if config.history.enabled:
        made.append(HistorySink.configured(config))
    settings = config.events
    if settings.webhooks or settings.report_url:
        # Dead letters and report retries live beside history, whether history itself is kept or not.
        engine = db.for_writing(config)
        metrics = EventsMetrics("events", config.server.metrics)
        made += [WebhookSink(hook, settings, engine, metrics) for hook in settings.webhooks]
        if settings.report_url:
            made.append(ReportSink(settings, engine, metrics))
    return made
