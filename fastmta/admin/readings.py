"""Reading the metrics every process wrote: the /metrics text, and sums and percentiles for /stats.

Beside the workers' files, a scrape reads what no worker counts: the queue's depth and oldest
message, the delivery switch, the data disk, and each process's CPU and memory (process_readings).

Counters are summed over every pid's file, dead ones included, so a worker's restart never makes
a total go backwards; the live-connections gauge counts living processes only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from fastmta import metrics
from fastmta.admin.process_readings import ProcessReadings
from fastmta.queue.control import DeliveryControl
from fastmta.queue.store import QueueStore


class _QueueReadings(Collector):
    """The queue is the store's to describe, not any worker's: its size, age and switch are read when scraped."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store
        self._delivery = DeliveryControl(store.env)

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("smtp_messages_queued", "Messages in the queue", labels=["worker"])
        depth.add_metric(["admin"], self._store.count())
        oldest = self._store.oldest_received_at()
        age = GaugeMetricFamily(
            "smtp_queue_oldest_message_age_seconds",
            "How long the longest-queued message has waited (0: empty queue)",
            labels=["worker"],
        )
        age.add_metric(["admin"], 0.0 if oldest is None else max(0.0, time.time() - oldest))
        suspended = GaugeMetricFamily(
            "fastmta_delivery_suspended", "1 while delivery is suspended by an operator", labels=["worker"]
        )
        suspended.add_metric(["admin"], float(self._delivery.suspended()))
        yield from (depth, age, suspended)


class _DataDisk(Collector):
    """The data_dir's filesystem: the queue refuses mail with 452 4.3.1 once it is full."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir

    def collect(self) -> Iterator[Metric]:
        try:
            usage = shutil.disk_usage(self._data_dir)
        except OSError:
            return
        size = GaugeMetricFamily("fastmta_data_disk_size_bytes", "Size of the filesystem holding data_dir", labels=["worker"])
        size.add_metric(["admin"], usage.total)
        free = GaugeMetricFamily(
            "fastmta_data_disk_free_bytes", "Space left for fastmta on the filesystem holding data_dir", labels=["worker"]
        )
        free.add_metric(["admin"], usage.free)
        yield from (size, free)


class Snapshot:
    """One reading of every sample, summed over workers where asked."""

    def __init__(self, families: list[Metric]) -> None:
        self._samples = [sample for family in families for sample in family.samples]

    def total(self, name: str, **labels: str) -> float:
        return sum(
            s.value for s in self._samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for sample in self._samples:
            if sample.name == name and label in sample.labels:
                key = sample.labels[label]
                found[key] = found.get(key, 0.0) + sample.value
        return found

    def quantile(self, histogram: str, q: float) -> float | None:
        """As PromQL's histogram_quantile over all workers: linear within the bucket it falls in."""
        buckets = sorted((float(le), count) for le, count in self.by_label(f"{histogram}_bucket", "le").items())
        if not buckets or buckets[-1][1] == 0:
            return None
        rank = q * buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    return lower_bound
                width = count - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 0.0)
            lower_bound, lower_count = bound, count
        return lower_bound


class Readings:
    def __init__(self, data_dir: Path, store: QueueStore) -> None:
        self._registry = CollectorRegistry()
        MultiProcessCollector(self._registry, str(metrics.directory_for(data_dir)))
        self._registry.register(_QueueReadings(store))
        self._registry.register(_DataDisk(data_dir))
        # The admin is the supervisor's child, so its parent is the supervisor.
        self._registry.register(ProcessReadings(data_dir, os.getppid()))

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    def snapshot(self) -> Snapshot:
        return Snapshot(list(self._registry.collect()))
