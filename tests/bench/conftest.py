"""bench/ holds scripts, not a package: its modules import each other by bare name, so the tests do too."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
