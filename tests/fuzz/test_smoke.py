"""Each fuzz target runs for FUZZ_SMOKE_SECONDS (6) without a crash: what CI runs of the fuzzing.

The committed corpus is read, not written: what a run finds goes to a temporary directory. On a
failure the message holds the crashing input (as libFuzzer prints it) and the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz import TARGETS
from tests.fuzz.harness import corpus_dir, run_target

SECONDS = int(os.environ.get("FUZZ_SMOKE_SECONDS", "6"))

pytest.importorskip("atheris", reason="atheris is in the test extras: pip install -e '.[test]'")


@pytest.mark.timeout(SECONDS + 150)
@pytest.mark.parametrize("target", list(TARGETS))
def test_target_runs_without_a_crash(target: str, tmp_path: Path) -> None:
    found = tmp_path / "found"
    found.mkdir()
    run = run_target(target, SECONDS, [found, corpus_dir(target)], tmp_path)
    assert not run.crashed, f"{run.summary()}\n{run.log[-6000:]}"
    assert run.executions > 0, f"{run.summary()}: the target ran no input\n{run.log[-3000:]}"
    print(run.summary())
