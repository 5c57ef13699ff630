"""`python -m tests.fuzz [target ...]`: fuzzes each target (all by default) for FUZZ_SECONDS (60) against its corpus.

New interesting inputs stay in tests/fuzz/corpus/<corpus>/; minimise them before committing
(README.md here). A crashing input is written to a fresh directory named in the summary.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from tests.fuzz import TARGETS
from tests.fuzz.harness import corpus_dir, run_target


def main(targets: list[str]) -> int:
    unknown = [target for target in targets if target not in TARGETS]
    if unknown:
        print(f"no such fuzz target: {', '.join(unknown)} (targets: {', '.join(TARGETS)})", file=sys.stderr)
        return 2
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    artifacts = Path(tempfile.mkdtemp(prefix="fastmta-fuzz-"))
    failed = 0
    for target in targets or list(TARGETS):
        run = run_target(target, seconds, [corpus_dir(target)], artifacts)
        print(run.summary(), flush=True)
        if run.crashed:
            failed += 1
            print(run.log[-6000:], f"crashing input in {artifacts}", sep="\n", file=sys.stderr)
    if not failed:
        artifacts.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
