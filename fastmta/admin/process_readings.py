"""Per-process CPU, memory and start time of the supervisor and each child, read from /proc when scraped.

prometheus_client's multiprocess mode exports no process_* series (its ProcessCollector describes
only the process that serves /metrics), so the admin reads them itself for every process the
supervisor lists in children.json, labelled by the child's name as the `worker` label. A restarted
child shows as a new process_start_time_seconds, which is what alerts count restarts by.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fastmta import children

SUPERVISOR = "supervisor"
_PROC = Path("/proc")


class ProcessStat:
    """The few fields of /proc/<pid>/stat that matter here, in seconds and bytes."""

    __slots__ = ("cpu_seconds", "resident_bytes", "started_at")

    def __init__(self, cpu_seconds: float, resident_bytes: int, started_at: float) -> None:
        self.cpu_seconds = cpu_seconds
        self.resident_bytes = resident_bytes
        self.started_at = started_at


def _boot_time() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def read_stat(pid: int, boot_time: float) -> ProcessStat | None:
    """None when the process is gone (or this is no Linux)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name, field 2, may hold spaces and parentheses: the fields after it start past the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    utime, stime, starttime, rss_pages = int(fields[11]), int(fields[12]), int(fields[19]), int(fields[21])
    return ProcessStat((utime + stime) / ticks, rss_pages * os.sysconf("SC_PAGE_SIZE"), boot_time + starttime / ticks)


class ProcessReadings(Collector):
    """process_cpu_seconds_total, process_resident_memory_bytes, process_start_time_seconds, each by `worker`."""

    def __init__(self, data_dir: Path, supervisor_pid: int) -> None:
        self._data_dir = data_dir
        self._supervisor_pid = supervisor_pid

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily("process_cpu_seconds_total", "User and system CPU time of a fastmta process", labels=["worker"])
        memory = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of a fastmta process", labels=["worker"])
        started = GaugeMetricFamily(
            "process_start_time_seconds", "When a fastmta process started, in seconds since the epoch", labels=["worker"]
        )
        try:
            boot_time = _boot_time()
        except OSError:
            return
        processes = [(SUPERVISOR, self._supervisor_pid)] + [(child.name, child.pid) for child in children.read(self._data_dir)]
        for name, pid in processes:
            stat = read_stat(pid, boot_time)
            if stat is None:
                continue
            cpu.add_metric([name], stat.cpu_seconds)
            memory.add_metric([name], stat.resident_bytes)
            started.add_metric([name], stat.started_at)
        yield from (cpu, memory, started)
