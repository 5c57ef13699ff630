"""Two targets served at the same time, each offered the same fixed rate: the CPU per message each costs.

compare.py runs its targets one after another, so a host whose speed changes from one second to the
next (a VM's) moves their ratio by ±10% a round. Here both servers run through the same seconds on the
same CPUs, and what the host does to one it does to the other: the difference of their CPU per message
(the second target's minus the first's) varies by a microsecond or two between rounds, where
compare.py's throughput varies by ten. Each target's CPU is its process tree's and its companions'
(a webhook receiver), threads included, from /proc/PID/task/TID/schedstat (nanoseconds, not clock
ticks); the load generators are alike and not counted. The events process (the SCHED_IDLE child) is
also shown apart. Between them the two must leave some CPU idle (a SCHED_IDLE process that never
gets a CPU costs nothing here), so the rate each is offered is below half what the machine takes.

    .venv/bin/python bench/side_by_side.py --targets fastmta,fastmta-webhooks --rate 6000 --rounds 5
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

from proctree import descendants, wait_until_quiet
from role_cpu import is_events_process, load_options, offered_load
from targets import TARGETS, Running, free_port


def _cpu_ns(pid: int) -> int:
    """The CPU time of every thread of the process, in nanoseconds."""
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:  # gone meanwhile
        return 0
    for thread in threads:
        try:
            total += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _reading(running: Running) -> tuple[int, int]:
    """CPU nanoseconds so far: the target's whole (server tree and companions), and its events process's."""
    server = descendants(running.pid)
    whole = sum(_cpu_ns(pid) for pid in server) + sum(_cpu_ns(c.pid) for c in running.companions)
    return whole, sum(_cpu_ns(pid) for pid in server if is_events_process(pid))


def measure(first: str, second: str, rate: float, duration: float) -> list[tuple[float, float]]:
    """(µs of CPU per message, of which the events process's) for each target, both loaded at once."""
    with tempfile.TemporaryDirectory() as workdir:
        running = [TARGETS[name].start(Path(workdir) / str(i), free_port()) for i, name in enumerate((first, second))]
        try:
            for each in running:
                wait_until_quiet(each.pid)
            before = [_reading(each) for each in running]
            # One generator process each: two loads share the machine's CPUs.
            loads = [subprocess.Popen(offered_load(each.port, rate, duration, processes=1), stdout=subprocess.PIPE,
                                      text=True) for each in running]  # fmt: skip
            accepted = [json.loads(load.communicate()[0])["messages_accepted"] for load in loads]
            time.sleep(1.0)  # what the events processes still had to send
            after = [_reading(each) for each in running]
        finally:
            for each in running:
                each.stop()
    return [
        ((a[0] - b[0]) / 1e3 / max(n, 1), (a[1] - b[1]) / 1e3 / max(n, 1))
        for a, b, n in zip(after, before, accepted, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="fastmta,fastmta-webhooks", help="two, comma-separated, from compare.py's")
    load_options(parser, rounds=5)  # the rate is offered to each
    args = parser.parse_args(argv)
    first, second = args.targets.split(",")
    differences = []
    for number in range(1, args.rounds + 1):
        (one, _), (other, events) = measure(first, second, args.rate, args.duration)
        differences.append(other - one)
        print(f"round {number}: {first} {one:.1f} µs/msg, {second} {other:.1f} (events process {events:.1f}), "
              f"difference {other - one:+.1f}", flush=True)
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    print(f"{second} - {first}: median {statistics.median(differences):+.1f} µs of CPU per message "
          f"(mean {statistics.mean(differences):+.1f}, standard deviation {spread:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
