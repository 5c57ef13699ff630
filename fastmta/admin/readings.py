"""Reading the metrics every process wrote: the /metrics text, and sums and percentiles for /stats.

Counters are summed over every pid's file, dead ones included, so a worker's restart never makes
a total go backwards; the live-connections gauge counts living processes only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from fastmta import metrics
from fastmta.queue.store import QueueStore


class _QueueDepth(Collector):
    """The queue's size is the store's to say, not any worker's: read when scraped."""

    def __init__(self, store: QueueStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("smtp_messages_queued", "Messages in the queue", labels=["worker"])
        gauge.add_metric(["admin"], self._store.count())
        yield gauge


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
        self._registry.register(_QueueDepth(store))

    def exposition(self) -> bytes:
        return generate_latest(self._registry)

    def snapshot(self) -> Snapshot:
        return Snapshot(list(self._registry.collect()))
