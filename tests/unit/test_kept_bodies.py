"""Bodies of settled mail kept as files by day: found while kept, gone a day at a time, never an error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fastmta.config import load
from fastmta.kept_bodies import KeptBodies

DAY = 86400.0
T0 = 1_700_000_000.0


def test_kept_for_keep_then_removed_a_day_at_a_time(tmp_path: Path) -> None:
    kept = KeptBodies(tmp_path, keep=2 * DAY)
    kept.put("m1", b"Subject: one\r\n\r\n1\r\n", now=T0)
    kept.put("m2", b"Subject: two\r\n\r\n2\r\n", now=T0 + DAY)
    assert kept.get("m1", now=T0 + DAY) == b"Subject: one\r\n\r\n1\r\n"
    assert kept.get("m2", now=T0 + 2 * DAY) is not None and kept.get("m3", now=T0) is None
    assert kept.prune(now=T0 + 2 * DAY) == 0  # m1's day is not yet wholly older than two days
    assert kept.prune(now=T0 + 3 * DAY + 1) == 1
    assert kept.get("m1", now=T0 + 3 * DAY) is None and kept.get("m2", now=T0 + 3 * DAY) is not None
    assert [p.name for p in (tmp_path / "kept").rglob(".*")] == []  # no partial file left behind


def test_nothing_is_kept_with_keep_zero_or_history_off(tmp_path: Path) -> None:
    KeptBodies(tmp_path, keep=0).put("m1", b"x", now=T0)
    assert not (tmp_path / "kept").exists()
    off = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_ENABLED": "false"})
    assert KeptBodies.configured(off).keep == 0
    assert KeptBodies.configured(load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path)})).keep == 7 * DAY
    assert KeptBodies(tmp_path, keep=DAY).get("../../etc/passwd") is None  # ids only, never a path


def test_a_body_that_cannot_be_written_is_logged_once_and_lost_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kept").write_text("a file where the directory should be")
    kept = KeptBodies(tmp_path, keep=DAY)
    with caplog.at_level(logging.ERROR, logger="fastmta.delivery"):
        kept.put("m1", b"x", now=T0)
        kept.put("m2", b"x", now=T0)
    assert kept.failing and len(caplog.records) == 1 and kept.get("m1", now=T0) is None
