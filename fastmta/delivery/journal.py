"""The delivery log: one JSON line per recipient per attempt, appended by every runner to data_dir/delivery.log,
and read back from its end for the admin's recent tallies."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
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
_decoder = msgspec.json.Decoder(Entry)
_BLOCK = 1 << 16
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


def read_since(path: Path, since: float, max_bytes: int) -> tuple[list[Entry], bool]:
    """The entries written from `since` on, newest first, read backwards from the end of the log and
    of the one rotated before it; and whether they reached back to `since` within `max_bytes`.

    Runners append in the order they settle, so the first entry older than `since` ends the read.
    A line that is not an entry (cut by a crash mid-write) is passed over.
    """
    found: list[Entry] = []
    budget = max_bytes
    for file in (path, path.with_name(path.name + ".1")):
        try:
            fd = os.open(file, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            for line in _lines_backwards(fd, size, budget):
                try:
                    entry = _decoder.decode(line)
                except msgspec.DecodeError:
                    continue
                if entry.time < since:
                    return found, True
                found.append(entry)
        finally:
            os.close(fd)
        if size > budget:
            return found, False
        budget -= size
    return found, True


def _lines_backwards(fd: int, end: int, max_bytes: int) -> Iterator[bytes]:
    """The lines of the file's first `end` bytes, last first, from at most the last `max_bytes` of them."""
    floor = max(0, end - max_bytes)
    partial = b""
    while end > floor:
        start = max(floor, end - _BLOCK)
        block = os.pread(fd, end - start, start) + partial
        end = start
        lines = block.split(b"\n")
        partial = lines.pop(0)  # may continue in the block before
        yield from (line for line in reversed(lines) if line)
    if partial and floor == 0:
        yield partial
