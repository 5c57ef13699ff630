"""The delivery log: one JSON line per recipient per attempt, appended by every runner to data_dir/delivery.log."""

from __future__ import annotations

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


class DeliveryLog:
    def __init__(self, path: Path, runner: str = "") -> None:
        self._runner = runner
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
        os.write(self._fd, _encoder.encode(entry) + b"\n")

    def close(self) -> None:
        os.close(self._fd)
