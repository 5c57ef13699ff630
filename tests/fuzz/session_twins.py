"""Fuzz target: the session target (session.py) on the pure-Python twins of fastmta._ext."""

from __future__ import annotations

import os

# fastmta._ext chooses between the compiled modules and the twins when it is first imported.
os.environ["FASTMTA_NO_EXTENSIONS"] = "1"

from fastmta import _ext  # noqa: E402
from tests.fuzz import harness, session  # noqa: E402

assert not _ext.COMPILED, "fastmta._ext was imported before the switch was set"

if __name__ == "__main__":
    harness.fuzz("session_twins", session.test_one_input)
