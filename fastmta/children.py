"""The children file: the supervisor writes which children it runs into data_dir, the admin process reads it.

Children share nothing but data_dir, so this file is how the admin learns which workers are alive
without importing or talking to the supervisor.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

FILE_NAME = "children.json"


class ChildRecord(msgspec.Struct):
    name: str
    pid: int
    started_at: float  # wall clock


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[ChildRecord])


def write(data_dir: Path, records: list[ChildRecord]) -> None:
    """Replaces the file whole, so a reader never sees half of it."""
    path = data_dir / FILE_NAME
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(_encoder.encode(records))
    os.replace(temporary, path)


def read(data_dir: Path) -> list[ChildRecord]:
    """The children last written; none when the file is missing or unreadable, as nothing is then known to run."""
    try:
        return _decoder.decode((data_dir / FILE_NAME).read_bytes())
    except (OSError, msgspec.DecodeError):
        return []
