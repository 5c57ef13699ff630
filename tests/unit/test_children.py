"""The children file: what the supervisor writes the admin reads back; a missing or broken file is no children."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fastmta import children
from fastmta.children import ChildRecord


def test_written_records_read_back(tmp_path: Path) -> None:
    records = [ChildRecord("smtp-0", 101, 1700000000.5), ChildRecord("admin", 102, 1700000001.0)]
    children.write(tmp_path, records)
    assert children.read(tmp_path) == records
    children.write(tmp_path, records[1:])
    assert children.read(tmp_path) == records[1:]
    assert sorted(path.name for path in tmp_path.iterdir()) == [children.FILE_NAME]


def test_missing_or_broken_file_reads_as_no_children(tmp_path: Path) -> None:
    assert children.read(tmp_path) == []
    (tmp_path / children.FILE_NAME).write_bytes(b'[{"name": "smtp-0"')
    assert children.read(tmp_path) == []
    (tmp_path / children.FILE_NAME).write_bytes(b'[{"name": "smtp-0", "pid": "x", "started_at": 0}]')
    assert children.read(tmp_path) == []


def test_the_admin_reads_it_without_the_supervisor_or_the_smtp_stack() -> None:
    """Role boundary: the admin process imports shared modules, never the supervisor's or the SMTP worker's code."""
    found = subprocess.run(
        [sys.executable, "-c", "import sys, fastmta.admin.app, fastmta.admin.server; "
         "print(sorted(m for m in sys.modules if m.startswith(('fastmta.supervisor', 'fastmta.smtp'))))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert found.stdout.strip() == "[]"
