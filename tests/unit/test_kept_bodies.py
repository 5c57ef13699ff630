"""Bodies of settled mail kept for keep_bodies: found while kept, pruned after, never an error that loses mail."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fastmta.config import load
from fastmta.kept_bodies import KeptBodies

DAY = 86400.0
T0 = 1_700_000_000.0


def test_kept_for_keep_then_pruned(tmp_path: Path) -> None:
    kept = KeptBodies(tmp_path, keep=2 * DAY)
    kept.put_many([("m1", b"Subject: one\r\n\r\n1\r\n")], now=T0)
    kept.put_many([("m2", b"Subject: two\r\n\r\n2\r\n"), ("m1", b"again")], now=T0 + DAY)
    assert kept.get("m1") == b"Subject: one\r\n\r\n1\r\n"  # the first copy stays
    assert kept.get("m2") is not None and kept.get("m3") is None
    assert kept.prune(now=T0 + 2 * DAY) == 0
    assert kept.prune(now=T0 + 2 * DAY + 1) == 1
    assert kept.get("m1") is None and kept.get("m2") is not None
    kept.close()


def test_nothing_is_kept_with_keep_zero_or_history_off(tmp_path: Path) -> None:
    KeptBodies(tmp_path, keep=0).put_many([("m1", b"x")], now=T0)
    assert not (tmp_path / "kept.db").exists()
    off = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_ENABLED": "false"})
    assert KeptBodies.configured(off).keep == 0
    on = load(environ={"FASTMTA_SERVER_DATA_DIR": str(tmp_path), "FASTMTA_HISTORY_ENABLED": "true"})
    assert KeptBodies.configured(on).keep == 7 * DAY
    assert KeptBodies(tmp_path, keep=DAY).get("m1") is None  # no store yet: none made by asking


def test_a_body_that_cannot_be_kept_is_logged_once_and_lost_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "kept.db").mkdir()  # a directory where the database should be
    kept = KeptBodies(tmp_path, keep=DAY)
    with caplog.at_level(logging.ERROR, logger="fastmta.delivery"):
        kept.put_many([("m1", b"x")], now=T0)
        kept.put_many([("m2", b"x")], now=T0)
    assert kept.failing and len(caplog.records) == 1
