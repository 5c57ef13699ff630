"""CPU per message of a target's events process and of the rest of its server, at a fixed offered rate.

Starts each target in turn (rounds alternate, as in compare.py), offers it `--rate` messages a second of
1 KiB for `--duration` seconds with source.py, and reads the CPU (user and kernel) its processes used
from /proc: the events process (the one child running as SCHED_IDLE) apart from the others. At a rate
the machine keeps up with, the CPU per message is what each part costs, without a closed loop's
contention; prints each round, then the least and the median of each.

    .venv/bin/python bench/role_cpu.py --targets fastmta,fastmta-webhooks --rate 6000 --duration 8 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proctree import wait_until_quiet
from targets import BENCH, TARGETS, free_port

_TICKS = os.sysconf("SC_CLK_TCK")


def offered_load(port: int, rate: float, duration: float, processes: int | None = None) -> list[str]:
    """source.py offering `rate` messages of 1 KiB a second for `duration` seconds, its result printed as JSON."""
    command = [sys.executable, str(BENCH / "source.py"), f"127.0.0.1:{port}", "--sessions", "50", "--size", "1k",
               "--duration", str(duration), "--messages", "100000000", "--rate", str(rate), "--json", "--quiet"]  # fmt: skip
    return command + (["--processes", str(processes)] if processes else [])


def is_events_process(pid: int) -> bool:
    """fastmta's events process is the one that runs as SCHED_IDLE (a process gone meanwhile is not)."""
    try:
        return os.sched_getscheduler(pid) == os.SCHED_IDLE
    except OSError:
        return False


def load_options(parser: argparse.ArgumentParser, rounds: int) -> None:
    """The options of a fixed offered load: its rate, how long each run lasts, and how many rounds."""
    parser.add_argument("--rate", type=float, default=6000, help="messages a second offered (default 6000)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per run (default 8)")
    parser.add_argument("--rounds", type=int, default=rounds)


def _cpu_by_role() -> dict[int, tuple[str, int]]:
    """Each fastmta server process's role ("events" or "server") and CPU ticks so far."""
    found: dict[int, tuple[str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes()
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            role = "events" if is_events_process(int(name)) else "server"
        except OSError:  # gone meanwhile
            continue
        if b"fastmta" in command and b"serve" in command:
            found[int(name)] = (role, int(fields[11]) + int(fields[12]))
    return found


def measure(target: str, rate: float, duration: float) -> dict[str, float]:
    """µs of CPU per message accepted, by role, for one run."""
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        running = TARGETS[target].start(Path(workdir), port)
        try:
            wait_until_quiet(running.pid)  # start-up's CPU is not the messages'
            before = _cpu_by_role()
            sent = subprocess.run(offered_load(port, rate, duration), stdout=subprocess.PIPE, text=True, check=True)
            time.sleep(1.0)  # what the events process still had to send
            after = _cpu_by_role()
        finally:
            running.stop()
    accepted = json.loads(sent.stdout)["messages_accepted"]
    spent = {"events": 0.0, "server": 0.0}
    for pid, (role, ticks) in after.items():
        if pid in before:
            spent[role] += (ticks - before[pid][1]) / _TICKS
    return {role: seconds / max(accepted, 1) * 1e6 for role, seconds in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="fastmta,fastmta-webhooks", help="comma-separated, from compare.py's")
    load_options(parser, rounds=4)
    args = parser.parse_args(argv)
    targets = args.targets.split(",")
    results: dict[str, list[dict[str, float]]] = {target: [] for target in targets}
    for number in range(1, args.rounds + 1):
        for target in targets:
            results[target].append(measure(target, args.rate, args.duration))
            shown = ", ".join(f"{role} {value:.1f}" for role, value in results[target][-1].items())
            print(f"round {number} {target:28s} µs of CPU per message: {shown}", flush=True)
    for target, runs in results.items():
        shown = ", ".join(
            f"{role} {min(run[role] for run in runs):.1f} / {statistics.median(run[role] for run in runs):.1f}"
            for role in ("events", "server")
        )
        print(f"{target:28s} least / median: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
