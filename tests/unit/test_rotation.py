"""delivery.log's rotation: by size and by day, with several processes appending, no line lost or split."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from fastmta.rotation import SharedLog

LINE = b"x" * 99 + b"\n"


def _append(path: str, writer: int, lines: int) -> None:
    log = SharedLog(Path(path), max_bytes=20_000, keep=50)
    for n in range(lines):
        log.append(f"{writer:02d} {n:06d} ".encode() + LINE[10:])
        if n % 100 == 0:
            log.rotate_if_due()  # as the once-a-second look would, often enough to rotate while others write
    log.close()


def test_several_writers_rotate_by_size_and_no_line_is_lost_or_split(tmp_path: Path) -> None:
    path = tmp_path / "delivery.log"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_append, args=(str(path), w, 2000)) for w in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    files = [path, *sorted(tmp_path.glob("delivery.log.*[0-9]"), key=lambda p: int(p.suffix[1:]))]
    assert len(files) > 3  # 600 KB in files of about 20 KB
    lines = [line for f in files for line in f.read_bytes().splitlines(keepends=True)]
    assert all(len(line) == len(LINE) for line in lines)
    assert sorted(line[:9] for line in lines) == sorted(f"{w:02d} {n:06d}".encode() for w in range(3) for n in range(2000))


def test_keep_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "delivery.log"
    log = SharedLog(path, max_bytes=len(LINE), keep=2)
    for n in range(5):
        log.append(f"{n}".encode() + LINE[1:])
        log.rotate_if_due()
    log.close()
    assert sorted(p.name for p in tmp_path.glob("delivery.log*")) == [
        "delivery.log", "delivery.log.1", "delivery.log.2", "delivery.log.lock"
    ]
    assert path.read_bytes() == b"" and (tmp_path / "delivery.log.1").read_bytes()[:1] == b"4"
    assert (tmp_path / "delivery.log.2").read_bytes()[:1] == b"3"


def test_daily_rotation_starts_a_new_file_on_a_new_day(tmp_path: Path) -> None:
    path = tmp_path / "delivery.log"
    log = SharedLog(path, daily=True, keep=3)
    log.append(LINE)
    log.rotate_if_due()
    assert not (tmp_path / "delivery.log.1").exists()  # started today
    yesterday = time.time() - 86400
    os.utime(tmp_path / "delivery.log.lock", (yesterday, yesterday))
    log.rotate_if_due()
    log.append(LINE)
    log.close()
    assert (tmp_path / "delivery.log.1").read_bytes() == LINE and path.read_bytes() == LINE
