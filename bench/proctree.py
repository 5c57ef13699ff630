"""CPU time of a process and all its descendants, read from /proc: how compare.py charges a server."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may contain spaces and parentheses)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:  # the process exited while we looked
        return None
    return text[text.rindex(")") + 2 :].split()


def parents() -> dict[int, int]:
    """Every live process's parent PID."""
    result = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            result[int(entry.name)] = int(fields[1])
    return result


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """User + system time of root's tree, including children that already exited and were reaped.

    A reaped child's time moves into its parent's cutime/cstime, so summing utime+stime+cutime+cstime over
    the live tree counts every process once, whether it is still running or not.
    """
    ticks = 0
    for pid in descendants(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def wait_until_quiet(root: int, window: float = 0.3, longest: float = 10.0) -> None:
    """Until root's tree spends at most a clock tick of CPU in `window` seconds (or `longest` passed): its
    start-up is over. A server answers before all its children are up (fastmta's admin and events processes
    take about a tenth of a CPU second more each), and a load started at once would be charged for that."""
    deadline = time.monotonic() + longest
    before = tree_cpu_seconds(root)
    while time.monotonic() < deadline:
        time.sleep(window)
        now = tree_cpu_seconds(root)
        if now - before <= 1 / CLOCK_TICKS:
            return
        before = now
