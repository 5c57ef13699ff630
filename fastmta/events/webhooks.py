"""The webhooks sink: a webhook's receiver gets the events it asked for as (signed) JSON POSTs.

Requests go in outbox order, up to `concurrency` of them under way at once (so within that window
a receiver may see a later event first; concurrency = 1 keeps strict order).

At least once: events a request carried are sent again until a 2xx says the receiver has them, so
receivers deduplicate on the event id (`id`, and the X-Fastmta-Event-Id header with batch = 1). A receiver that
fails (no answer, 408, 429, 5xx) holds its webhook's later events back: the runner offers the same
batch again after a pause that doubles up to [events] max_pause. Once the receiver has been failing
for [events] retry_for, the events of the batch go to the dead letters and the next batch is tried,
one request per batch while it stays down. A receiver that refuses (any other status) has the
refused events dead-lettered at once, and the rest follow. Letters an operator asked to replay
(admin API) are sent again on the sink's next step; if that fails they wait for another request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import msgspec
import sqlalchemy as sa

from fastmta._ext import received_payload, received_payloads
from fastmta.config import EventsConfig, WebhookConfig, format_duration
from fastmta.events.names import WEBHOOK_EVENTS, WEBHOOK_NAMES
from fastmta.events.posting import EVENT_ID_HEADER, Poster, Unreachable
from fastmta.events.records import Entry
from fastmta.history import db, dead_letters
from fastmta.history.dead_letters import Letter
from fastmta.metrics import EventsMetrics

log = logging.getLogger("fastmta.events")

_JSON = msgspec.json.Encoder()
# Letters to replay are looked for at most this often: a query per idle look (0.2 s) is not worth it.
LOOK_EVERY = 1.0
_REPLAY_BATCH = 100
# Requests per offer from the runner (see Sink.batch_limit), per request under way at once: at a
# receiver's usual few milliseconds each, well under the second between cursor saves.
_REQUESTS_PER_OFFER = 20


class ReceiverFailing(Exception):
    """The receiver did not take the events, and they are still within [events] retry_for."""


class Payload(msgspec.Struct, gc=False):
    """What a receiver is sent for one event; `data` is the whole event, its outbox type included.

    `data` is the outbox entry's JSON as stored, not decoded and encoded again: the events process's
    CPU is taken from ingress, and this is most of what it does per event. A received event's payload
    is written whole by compiled code (fastmta/_ext/received.pyx), these fields in this order.
    """

    id: str
    event: str
    timestamp: int
    data: msgspec.Raw


Made = tuple[str, bytes]  # an event's id and its Payload as JSON
_RECEIVED = WEBHOOK_NAMES["received"]


def payload(entry: Entry, wanted: Container[str]) -> Made | None:
    """The entry's event id and payload, if its name is `wanted`; None too for an entry that cannot be decoded
    or is of a type this version does not know."""
    if entry.stored_received:
        if _RECEIVED not in wanted:
            return None
        try:
            return received_payload(entry.raw, entry.sequence, _RECEIVED)
        except ValueError:
            return None
    head = entry.head
    if head is None or (name := WEBHOOK_NAMES[head.type]) not in wanted:
        return None
    return head.id, _JSON.encode(Payload(head.id, name, int(head.at), msgspec.Raw(entry.json())))


class Chunk(NamedTuple):
    """The events of one request: their payloads as JSON (a run of received events' comma-separated in one),
    how many events, the event id a request of one carries in its header, and the sequence number it settles through."""

    payloads: list[bytes]
    events: int
    event_id: str
    last: int

    def body(self) -> bytes:
        """A JSON array of the payloads, made in one copy."""
        parts = [b"["]
        for made in self.payloads:
            parts += (made, b",")
        parts[-1] = b"]"
        return b"".join(parts)


class WebhookSink:
    # The runner calls deliver() with no events too, so replays go out while the outbox is quiet.
    idle_calls = True

    def __init__(
        self, hook: WebhookConfig, settings: EventsConfig, engine: sa.Engine, metrics: EventsMetrics,
        look_every: float = LOOK_EVERY,
    ) -> None:  # fmt: skip
        self.name = hook.sink_name
        self.hook = hook
        self.wanted = frozenset(name for name in WEBHOOK_EVENTS if hook.wants(name))
        self.retry_for = settings.retry_for
        self.max_pause = settings.max_pause  # for the runner: receivers may be down for hours
        self.batch_limit = hook.batch * hook.concurrency * _REQUESTS_PER_OFFER
        self.engine = engine
        self.metrics = metrics
        self.look_every = look_every
        self._poster = Poster(settings.connect_timeout, settings.timeout)
        self._requests = ThreadPoolExecutor(hook.concurrency, thread_name_prefix=self.name)
        # The runner offers a failed batch again whole; what this process already settled of it is skipped.
        self._settled_through = 0
        self._failing_since: float | None = None
        self._attempts = 0  # failed requests for the events at the head of the line
        self._next_look = 0.0
        self._database_down = False  # said once in the log, not on every look

    def deliver(self, batch: Sequence[Entry]) -> None:
        if time.time() >= self._next_look:
            self._look_for_replays()
            self._next_look = time.time() + self.look_every
        chunks = self._chunks(batch)
        given_up = ""
        while chunks:
            # A receiver that is failing gets one request at a time, not a burst.
            at_once = 1 if self._failing_since is not None else self.hook.concurrency
            group, chunks = chunks[:at_once], chunks[at_once:]
            if given_up:  # the receiver failed past retry_for just now: no request per chunk
                for chunk in group:
                    self._dead_letter(chunk, given_up, 0)
                    self._settled_through = chunk.last
                continue
            # One request goes in this thread: handing it to the pool would cost more than it saves.
            answers = [self._post(group[0])] if len(group) == 1 else self._requests.map(self._post, group)
            # In order: a chunk after one that must be sent again is sent again too (at least once).
            for chunk, answer in zip(group, answers, strict=True):
                given_up = self._settle(chunk, answer)
                self._settled_through = chunk.last

    def _chunks(self, batch: Sequence[Entry]) -> list[Chunk]:
        """The batch's events this webhook wants and has not settled, up to `batch` of them to a request."""
        size = self.hook.batch
        # Runs of received events stored as their records are made in one compiled call, not one per event;
        # a request of one event carries its id in a header, so those are made one by one.
        in_runs = size > 1 and _RECEIVED in self.wanted
        chunks: list[Chunk] = []
        payloads: list[bytes] = []
        count, event_id, index = 0, "", 0
        while index < len(batch):
            entry = batch[index]
            if entry.sequence <= self._settled_through:
                index += 1
                continue
            if in_runs and entry.stored_received:
                run, passed, made = received_payloads(batch, index, size - count, _RECEIVED)
                index += passed
                if made:
                    payloads.append(run)
                    count += made
            else:
                index += 1
                if (one := payload(entry, self.wanted)) is None:
                    continue
                event_id, made_alone = one
                payloads.append(made_alone)
                count += 1
            if count == size:
                chunks.append(Chunk(payloads, count, event_id, batch[index - 1].sequence))
                payloads, count = [], 0
        if count:
            chunks.append(Chunk(payloads, count, event_id, batch[index - 1].sequence))
        return chunks

    def close(self) -> None:
        self._requests.shutdown()
        self._poster.close()
        self.engine.dispose()

    def _settle(self, chunk: Chunk, answer: tuple[str, bool]) -> str:
        """After the chunk's request: delivered, or dead-lettered, or raises to be offered it again; says why it
        gave up on the receiver."""
        problem, transient = answer
        if not problem:
            self._failing_since, self._attempts = None, 0
            self.metrics.sent(self.name, "delivered", chunk.events)
            return ""
        self._attempts += 1
        if not transient:
            self._dead_letter(chunk, f"refused: {problem}", self._attempts)
            self._failing_since, self._attempts = None, 0  # it answers: it is not down
            self.metrics.sent(self.name, "refused", chunk.events)
            return ""
        now = time.time()
        if self._failing_since is None:
            self._failing_since = now
        self.metrics.sent(self.name, "failed", chunk.events)
        if now - self._failing_since < self.retry_for:
            raise ReceiverFailing(f"{self.hook.url}: {problem}")
        # _failing_since stays: until a request succeeds, each later batch gets one request.
        reason = f"failing for {format_duration(self.retry_for)}: {problem}"
        self._dead_letter(chunk, reason, self._attempts)
        self._attempts = 0
        return reason

    def _post(self, chunk: Chunk) -> tuple[str, bool]:
        """One request (of new events, or of dead letters); the problem ("" if none) and whether it is worth retrying."""
        if self.hook.batch == 1:
            body, headers = chunk.payloads[0], {EVENT_ID_HEADER: chunk.event_id}
        else:
            # A batch's ids are in its body only: a header of 500 would be 18 KB, past the 8 KB a line may
            # have at nginx or Apache (whose receivers would refuse every request).
            body, headers = chunk.body(), {}
        try:
            answer = self._poster.post(self.hook.url, body, self.hook.secret, headers)
        except Unreachable as exc:
            return str(exc), True
        return ("", False) if answer.ok else (answer.summary(), answer.transient)

    def _look_for_replays(self) -> None:
        """Sends the letters an operator asked to replay; with the database unreachable, the events go on without."""
        try:
            db.ready(self.engine)  # dead letters live there
            self._replay()
        except sa.exc.OperationalError as exc:
            # History's database being down is no reason to hold back a receiver that is up: only
            # dead-lettering needs it, and that raises (the batch is offered again) while it is down.
            if not self._database_down:
                log.warning("%s: no replays while the database is unreachable: %s", self.name, exc.orig or exc)
            self._database_down = True
            return
        self._database_down = False

    def _dead_letter(self, chunk: Chunk, reason: str, attempts: int) -> None:
        db.ready(self.engine)
        letters = [Letter(sent["id"], sent["event"], sent) for sent in msgspec.json.decode(chunk.body())]
        with self.engine.begin() as connection:
            dead_letters.add(connection, self.name, letters, reason, attempts, time.time())
        self.metrics.dead_lettered(self.name, len(letters))

    def _replay(self) -> None:
        with self.engine.begin() as connection:
            letters = dead_letters.due(connection, self.name, _REPLAY_BATCH)
        for start in range(0, len(letters), self.hook.batch):
            chunk = letters[start:start + self.hook.batch]
            sent = Chunk([_JSON.encode(letter.payload) for letter in chunk], len(chunk), chunk[0].event_id, 0)
            problem, _ = self._post(sent)
            ids = [letter.id for letter in chunk]
            with self.engine.begin() as connection:
                if problem:
                    dead_letters.failed_again(connection, ids, f"replay: {problem}", time.time())
                else:
                    dead_letters.replayed(connection, ids, time.time())
            self.metrics.sent(self.name, "replay_failed" if problem else "replayed", len(chunk))
