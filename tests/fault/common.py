"""What the fault tests share: seeds, waiting on conditions, reading processes, what arrived at the next hop, figures."""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Server
from tests.integration.nexthop import Arrival

_QUEUE_ID = re.compile(rb"^\tby mx\.test \(fastmta\) with \S+ id (\w+)", re.M)


def seed(test: str) -> int:
    """FAULT_SEED, or a fresh one; printed, so a failing run can be repeated exactly."""
    value = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"{test}: seed {value} (repeat with FAULT_SEED={value})")
    return value


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Polls until predicate() is truthy and returns that value; fails naming what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as exited: it serves nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory from /proc/<pid>/status: VmRSS, or a part of it (RssAnon leaves out mapped files, LMDB's among them)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def queued(server: Server) -> list[dict[str, Any]]:
    """`fastmta queue list --json`: fails if the CLI cannot read the queue."""
    result = server.cli("queue", "list", "--json")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def queue_id(arrival: Arrival) -> str:
    """The fastmta queue id of a relayed message, from the Received header fastmta put on top."""
    found = _QUEUE_ID.search(arrival.content, 0, arrival.content.find(b"\r\n\r\n"))
    assert found, arrival.content[:300]
    return found.group(1).decode()


def arrived(arrivals: list[Arrival]) -> Counter[str]:
    return Counter(queue_id(a) for a in list(arrivals))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, **figures: Any) -> None:
    """Prints the figures (pytest -s shows them); with FAULT_REPORT also appends them there as a JSON line."""
    line = json.dumps({"test": name, **figures})
    print(f"fault figures: {line}")
    path = os.environ.get("FAULT_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")
