"""The delivery log: one JSON line per recipient per attempt, appended by every runner to data_dir/delivery.log."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

from fastmta.queue.records import Message, Recipient


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
    def __init__(self, path: Path, runner: str = "") -> None:
        self._runner = runner
        self.failing = False
        # O_APPEND: lines from several runners interleave whole, never mixed within a line.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

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
            os.write(self._fd, _encoder.encode(entry) + b"\n")
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
        os.close(self._fd)
