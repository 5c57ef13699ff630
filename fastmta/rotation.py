"""A log file that several processes append to, rotated by size or at midnight, the newest `keep` old ones kept.

Every writer appends with O_APPEND (whole lines never interleave) and, at most once a second, looks
whether the file is due: past `max_bytes`, or started on an earlier day than today. The first to
see it takes an exclusive lock, looks again (another writer may have just done it), renames
`name` to `name.1` (and `name.1` to `name.2`, up to `name.<keep>`, the oldest dropped), and starts
a new file; the others notice the path names another file and reopen it. The day a file started
is the modification time of its lock file, touched at every rotation.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

_LOOK_SECONDS = 1.0


class SharedLog:
    def __init__(self, path: Path, max_bytes: int = 0, daily: bool = False, keep: int = 7) -> None:
        self.path = path
        self.max_bytes = max_bytes  # 0: no size limit
        self.daily = daily
        self.keep = keep
        self._lock_path = path.with_name(path.name + ".lock")
        if not self._lock_path.exists():
            self._lock_path.touch()
        self._fd = self._open()
        self._looked_at = time.monotonic()

    def append(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._looked_at >= _LOOK_SECONDS:
            self._looked_at = now
            self.rotate_if_due()
        os.write(self._fd, data)

    def rotate_if_due(self) -> None:
        if self._replaced():
            self._reopen()
        if not self._due():
            return
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self._replaced() and self._due():
                for number in range(self.keep - 1, 0, -1):
                    older = self._numbered(number)
                    if older.exists():
                        older.rename(self._numbered(number + 1))
                if self.keep:
                    self.path.rename(self._numbered(1))
                else:
                    self.path.unlink()
                os.utime(self._lock_path)
        self._reopen()

    def close(self) -> None:
        os.close(self._fd)

    def _due(self) -> bool:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return False
        if self.max_bytes and size >= self.max_bytes:
            return True
        started = time.localtime(self._lock_path.stat().st_mtime)
        today = time.localtime()
        return self.daily and (started.tm_year, started.tm_yday) != (today.tm_year, today.tm_yday)

    def _replaced(self) -> bool:
        """Another writer rotated: the path names another file than the one this writer has open."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return True

    def _numbered(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def _reopen(self) -> None:
        fd = self._open()
        os.close(self._fd)
        self._fd = fd
