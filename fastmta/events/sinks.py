"""What the events process hands the outbox's events to: a sink, and the sinks a config asks for."""

from __future__ import annotations

from typing import Protocol

from fastmta.config import Config
from fastmta.events.history import HistorySink
from fastmta.events.records import AnyEvent


class Sink(Protocol):
    """One consumer of the outbox, with its own cursor there (named `name`).

    deliver() takes a batch in outbox order (an entry that could not be decoded comes as None) and
    raises when it could not take it all; the same batch is then offered again later, so delivering
    it twice must leave the same result (events carry ids to deduplicate on).
    """

    name: str

    def deliver(self, batch: list[tuple[int, AnyEvent | None]]) -> None: ...

    def close(self) -> None: ...


def configured(config: Config) -> list[Sink]:
    """The sinks the config asks for, in the order each batch reaches them."""
    return [HistorySink.configured(config)]
