"""Runs a fuzz target under atheris, and runs target modules in subprocesses for `make fuzz` and the smoke test.

The fuzzing process itself imports nothing of fastmta before the target's instrumented() block,
because atheris instruments only modules first imported inside it. atheris is imported where it
is used: the smoke test imports this module on machines where atheris has no wheel, and skips.
"""

from __future__ import annotations

import gc
import os
import random
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fuzz import TARGETS

CORPUS = Path(__file__).parent / "corpus"
ROOT = Path(__file__).parents[2]


def corpus_dir(target: str) -> Path:
    return CORPUS / TARGETS[target]


@contextmanager
def instrumented(*stdlib: str) -> Iterator[None]:
    """fastmta modules first imported inside the block report coverage to the fuzzer, and so do the
    functions of the named standard modules the code under test leans on.

    Those are named one by one: instrumenting everything loaded (atheris.instrument_all) takes
    20 s at every start, and some (ipaddress, by pathlib) are imported at start-up, too early for
    the import hook.
    """
    import atheris

    # str.startswith/endswith arguments feed the mutator's dictionary. Not the "RegEx" hook: it
    # swaps compiled patterns for proxies whose match/search take no pos/endpos, which fastmta uses.
    atheris.enabled_hooks.add("str")
    with atheris.instrument_imports(include=["fastmta"]):
        yield
    for item in gc.get_objects():
        if isinstance(item, types.FunctionType) and item.__module__ in stdlib:
            atheris.instrument_func(item)


def choose_seed() -> int:
    """FUZZ_SEED when set, to repeat a run; otherwise a new one."""
    return int(os.environ.get("FUZZ_SEED") or random.randrange(1, 2**32))


def fuzz(target: str, test_one_input: Callable[[bytes], None]) -> None:
    """libFuzzer's main loop over test_one_input, with sys.argv's libFuzzer flags and inputs.

    Without a -seed flag the seed comes from FUZZ_SEED or is drawn, and is printed either way so a
    run can be repeated. Without corpus directories or input files the target's own corpus
    directory is used, and libFuzzer adds the new interesting inputs it finds there.
    """
    import atheris

    # libFuzzer runs argv[0] through the shell for -merge and -fork; `python -m` leaves the module's
    # file there, which is not executable.
    argv = [f"{shlex.quote(sys.executable)} -m tests.fuzz.{target}", *sys.argv[1:]]
    flags = argv[1:]
    seeds = [arg for arg in flags if arg.startswith("-seed=")]
    if seeds:
        seed = int(seeds[-1].partition("=")[2])
    else:
        seed = choose_seed()
        argv.append(f"-seed={seed}")
    print(f"fuzz target {target}: seed {seed}", flush=True)
    if all(arg.startswith("-") for arg in flags):
        argv.append(str(corpus_dir(target)))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


@dataclass
class Run:
    target: str
    seed: int
    returncode: int
    executions: int
    seconds: int
    log: str

    @property
    def crashed(self) -> bool:
        return self.returncode != 0

    def summary(self) -> str:
        rate = self.executions / max(self.seconds, 1)
        verdict = f"FAILED (exit {self.returncode})" if self.crashed else "ok"
        return f"{self.target}: {self.executions} executions in {self.seconds} s, {rate:.0f}/s, seed {self.seed}: {verdict}"


_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def run_target(target: str, seconds: int, corpora: list[Path], artifacts: Path, seed: int | None = None) -> Run:
    """Fuzzes `target` in a subprocess for about `seconds`; new inputs go to corpora[0], a crashing one to `artifacts`.

    -timeout: one input that takes 10 s is a hang worth reporting, not a slow machine.
    """
    seed = choose_seed() if seed is None else seed
    command = [
        sys.executable, "-m", f"tests.fuzz.{target}",
        f"-max_total_time={seconds}", "-timeout=10", f"-seed={seed}", f"-artifact_prefix={artifacts}/",
        *map(str, corpora),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, errors="replace", timeout=seconds + 120, check=False
    )
    log = done.stdout + done.stderr
    found = _DONE.search(log)
    executions, elapsed = (int(found.group(1)), int(found.group(2))) if found else (0, seconds)
    return Run(target, seed, done.returncode, executions, elapsed, log)
