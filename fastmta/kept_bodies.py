"""Bodies of settled mail, kept as files for [history] keep_bodies so the admin API can still show their parts.

The delivery runner that settles a message writes its body to data_dir/kept/<UTC day>/<id>.eml once
the settlement is stored; runners remove the days older than keep_bodies. Files, not the queue's
LMDB or history's SQL: days of bodies would fill the queue's map (and refuse mail) or weigh on
every history write, while a day of files goes with one directory removal. Best effort: a body is
kept after its message left the queue, so a crash between the two loses the copy, never mail.
Each node keeps the bodies it delivered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

from fastmta.config import Config

_DAY = 86400
log = logging.getLogger("fastmta.delivery")


class KeptBodies:
    def __init__(self, data_dir: Path, keep: float) -> None:
        self.root = data_dir / "kept"
        self.keep = keep  # seconds; 0 keeps none
        self.failing = False

    @classmethod
    def configured(cls, config: Config) -> KeptBodies:
        """Kept while history is: without it nothing would ask for them."""
        return cls(config.data_dir, config.history.keep_bodies if config.history.enabled else 0)

    def put(self, message_id: str, body: bytes, now: float | None = None) -> None:
        if not self.keep:
            return
        day = self.root / _day(time.time() if now is None else now)
        # Whole or not at all for a reader: written aside, then renamed into place.
        partial = day / f".{message_id}.{os.getpid()}"
        try:
            day.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(body)
            partial.rename(day / f"{message_id}.eml")
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            if not self.failing:
                log.error("bodies of settled mail cannot be kept until %s can be written: %s", self.root, exc)
            self.failing = True
            return
        if self.failing:
            log.info("bodies of settled mail are kept again")
            self.failing = False

    def get(self, message_id: str, now: float | None = None) -> bytes | None:
        """The kept body, looking in the days it may have been settled on, newest first."""
        if not self.keep or "/" in message_id or message_id.startswith("."):
            return None
        now = time.time() if now is None else now
        for back in range(int(self.keep // _DAY) + 2):
            try:
                return (self.root / _day(now - back * _DAY) / f"{message_id}.eml").read_bytes()
            except OSError:  # not kept, or the day's directory is not one
                continue
        return None

    def prune(self, now: float | None = None) -> int:
        """Removes the days wholly older than keep; returns how many. Several runners may race: fine."""
        oldest = _day((time.time() if now is None else now) - self.keep)
        try:
            days = [entry for entry in self.root.iterdir() if entry.is_dir() and entry.name < oldest]
        except FileNotFoundError:
            return 0
        for day in days:
            shutil.rmtree(day, ignore_errors=True)
        return len(days)


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))
