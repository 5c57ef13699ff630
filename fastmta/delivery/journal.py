"""The delivery log: one JSON line per recipient per attempt, appended by every runner to data_dir/delivery.log."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from fastmta.queue.records import Message, Recipient
from fastmta.rotation import SharedLog


class Entry(msgspec.Struct):
    time: float
    message_id: str
    sender: str
    recipient: str
    status: str  # delivered | deferred | failed
    reply: str
    host: str
    attempt: int
    route: str
    source_ip: str
    seconds: float
    queued_seconds: float
    runner: str = ""


_encoder = msgspec.json.Encoder()
log = logging.getLogger("fastmta.delivery")


class DeliveryLog:
    def __init__(self, path: Path, runner: str = "", max_bytes: int = 0, daily: bool = False, keep: int = 7) -> None:
        self._runner = runner
        self.failing = False
        self._file = SharedLog(path, max_bytes, daily, keep)

    def write(
        self, message: Message, recipient: Recipient, host: str, seconds: float, route: str = "", source_ip: str = ""
    ) -> None:
        now = time.time()
        entry = Entry(
            time=now,
            message_id=message.id,
            sender=message.sender,
            recipient=recipient.address,
            status=recipient.state,
            reply=recipient.last_reply,
            host=host,
            attempt=recipient.attempts,
            route=route,
            source_ip=source_ip,
            seconds=round(seconds, 6),
            queued_seconds=round(now - message.received_at, 6),
            runner=self._runner,
        )
        try:
            self._file.append(_encoder.encode(entry) + b"\n")
        except OSError as exc:
            # The queue holds the outcome; a log line lost to a full disk must not lose the attempt too.
            if not self.failing:
                log.error("delivery.log cannot be written, entries are lost until it can: %s", exc)
            self.failing = True
            return
        if self.failing:
            self.failing = False
            log.info("delivery.log is written again")

    def close(self) -> None:
        self._file.close()
