"""Metric definitions (DESIGN §4) and their multiprocess plumbing.

Every process writes its samples to its own files in one directory per data_dir, on tmpfs where
there is one (prometheus_client's multiprocess mode), and the admin process merges them for /metrics. prometheus_client decides
between in-memory and file-backed values when it is first imported, so the supervisor calls
prepare() before anything imports it, and this module imports it only on first use.

A worker does not touch the files per event: it counts in plain Python attributes and flush()
moves the differences to the files once a second. A message costs a few integer increments;
a worker killed with SIGKILL loses at most its last second of counts, never what it flushed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from bisect import bisect_left
from collections import defaultdict
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Receipt to "250" is dominated by the group commit's fsync: milliseconds, seconds when the disk stalls.
PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = tuple(float(1 << shift) for shift in range(10, 27, 2))  # 1 KiB .. 64 MiB
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def directory_for(data_dir: Path) -> Path:
    """Where the files of this data_dir's processes go: tmpfs when the machine has one.

    The files are rewritten through mmap every second; on the data disk each queue fsync drags
    their dirty pages into the same journal commit (measured: ingress 25% slower). They hold
    nothing worth keeping across a restart, so memory is the right place.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
        return shm / f"fastmta-metrics-{os.getuid()}-{digest}"
    return data_dir / "metrics"


def prepare(data_dir: Path) -> Path:
    """Empties this data_dir's metrics directory and points prometheus_client at it; the supervisor runs this before forking."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    directory = directory_for(data_dir)
    # Files of a previous run would be summed into this run's counters.
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def process_dead(pid: int) -> None:
    """Drops a reaped child's live gauges; its counters stay, so totals never go backwards."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


@cache
def families() -> SimpleNamespace:
    """Every metric of DESIGN §4, created once per process, unregistered: /metrics reads the files instead."""
    from prometheus_client import Counter, Gauge, Histogram

    def counter(name: str, text: str, *labels: str) -> Counter:
        return Counter(name, text, ["worker", *labels], registry=None)

    def histogram(name: str, text: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, text, ["worker"], buckets=buckets, registry=None)

    return SimpleNamespace(
        connections_active=Gauge(
            "smtp_connections_active", "Open SMTP connections", ["worker"], registry=None, multiprocess_mode="livesum"
        ),
        connections_total=counter("smtp_connections", "SMTP connections accepted"),
        connections_rejected=counter("smtp_connections_rejected", "SMTP connections refused at greeting", "reason"),
        messages_received=counter("smtp_messages_received", "Messages received over SMTP by outcome", "status"),
        messages_sent=counter("smtp_messages_sent", "Recipients settled by delivery, by outcome", "status"),
        auth_attempts=counter("smtp_auth_attempts", "SMTP AUTH credential checks", "result"),
        ratelimit_hits=counter("smtp_ratelimit_hits", "Requests refused by a per-client limit", "limit"),
        spam_scans=counter(
            "smtp_spam_scans", "Messages given to spamd, by result (clean, detected, error, timeout, busy)", "result"
        ),
        virus_scans=counter(
            "smtp_virus_scans", "Messages given to clamd, by result (clean, detected, error, timeout, busy)", "result"
        ),
        spam_detected=counter("smtp_spam_detected", "Spam found, by what became of it (rejected, held, tagged)", "action"),
        virus_detected=counter("smtp_virus_detected", "Viruses found, by what became of the message (rejected, held)", "action"),
        processing=histogram(
            "smtp_processing_duration_seconds", "End of DATA to the 250 reply", PROCESSING_BUCKETS
        ),
        message_size=histogram("smtp_message_size_bytes", "Size of accepted messages", SIZE_BUCKETS),
        delivery=histogram("smtp_delivery_duration_seconds", "One delivery attempt", DELIVERY_BUCKETS),
        events_lag=Gauge(
            "fastmta_events_lag_seconds",
            "Age of the oldest outbox event a sink does not have yet (0: it has them all)",
            ["worker", "sink"],
            registry=None,
            multiprocess_mode="liveall",
        ),
        events_sent=counter(
            "fastmta_events_sent",
            "Events sent to a webhook or the delivery report, by result"
            " (delivered, failed and retried, refused, rejected by the report, replayed, replay_failed)",
            "sink",
            "result",
        ),
        dead_letters=counter("fastmta_dead_letters", "Events a sink gave up on, kept as dead letters", "sink"),
        tls_policy_failures=counter(
            "fastmta_tls_policy_failures",
            "Connections that failed a recipient domain's TLS policy (dane, mta-sts), refused (enforce) or reported"
            " (testing), and deliveries a policy left no host for",
            "policy",
            "mode",
        ),
        cluster_degraded=Gauge(
            "fastmta_cluster_degraded",
            "1 while this process counts limits in state.lmdb because Redis ([cluster] redis_url) is unreachable",
            ["worker"],
            registry=None,
            multiprocess_mode="livemax",
        ),
        node_info=Gauge(
            "fastmta_node_info",
            "Always 1; its node label is [server] node_id, to join with the other series of this node",
            ["node"],
            registry=None,
            multiprocess_mode="max",
        ),
    )


def node_seen(node: str) -> None:
    """fastmta_node_info{node} 1, written by the admin process, which serves /metrics."""
    families().node_info.labels(node).set(1)


def cluster_degraded(worker: str, degraded: bool) -> None:
    families().cluster_degraded.labels(worker).set(1 if degraded else 0)


class Tally:
    """A histogram kept in process memory: observe() is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = (*bounds, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def move_to(self, child: Any) -> None:
        """Adds the tally to a labelled prometheus Histogram and empties it.

        prometheus_client has no public "observe n values at once"; its per-bucket values are the
        only way to write a second's worth in a few operations instead of one locked write each.
        """
        if not any(self.counts):
            return
        child._sum.inc(self.total)
        for bucket, count in zip(child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0


def _move_counts(counts: defaultdict[str, int], family: Any, worker: str) -> None:
    for label, count in counts.items():
        if count:
            family.labels(worker, label).inc(count)
    counts.clear()


class SmtpMetrics:
    """One SMTP worker's counts since the last flush, with its `worker` label.

    With `enabled` false ([server] metrics = false) nothing reaches the files: the counting
    itself is a handful of integer additions per message, the files are what cost.
    """

    def __init__(self, worker: str, enabled: bool = True) -> None:
        self.worker = worker
        self.enabled = enabled
        self.connections = 0
        self.rejected: defaultdict[str, int] = defaultdict(int)
        self.received: defaultdict[str, int] = defaultdict(int)
        self.auth: defaultdict[str, int] = defaultdict(int)
        self.ratelimit: defaultdict[str, int] = defaultdict(int)
        # Content scanning: scans by result, findings by action.
        self.spam_scans: defaultdict[str, int] = defaultdict(int)
        self.virus_scans: defaultdict[str, int] = defaultdict(int)
        self.spam_detected: defaultdict[str, int] = defaultdict(int)
        self.virus_detected: defaultdict[str, int] = defaultdict(int)
        self.processing = Tally(PROCESSING_BUCKETS)
        self.size = Tally(SIZE_BUCKETS)

    def limit_hit(self, limit: str) -> None:
        self.ratelimit[limit] += 1

    def flush(self, active_connections: int) -> None:
        if not self.enabled:
            return
        found = families()
        worker = self.worker
        found.connections_active.labels(worker).set(active_connections)
        if self.connections:
            found.connections_total.labels(worker).inc(self.connections)
            self.connections = 0
        _move_counts(self.rejected, found.connections_rejected, worker)
        _move_counts(self.received, found.messages_received, worker)
        _move_counts(self.auth, found.auth_attempts, worker)
        _move_counts(self.ratelimit, found.ratelimit_hits, worker)
        _move_counts(self.spam_scans, found.spam_scans, worker)
        _move_counts(self.virus_scans, found.virus_scans, worker)
        _move_counts(self.spam_detected, found.spam_detected, worker)
        _move_counts(self.virus_detected, found.virus_detected, worker)
        self.processing.move_to(found.processing.labels(worker))
        self.size.move_to(found.message_size.labels(worker))


class DeliveryMetrics:
    """One delivery runner's counts since the last flush: recipients settled by outcome, attempt durations."""

    def __init__(self, worker: str, enabled: bool = True) -> None:
        self.worker = worker
        self.enabled = enabled
        self.sent: defaultdict[str, int] = defaultdict(int)
        self.duration = Tally(DELIVERY_BUCKETS)
        self.tls_policy_failures: defaultdict[tuple[str, str], int] = defaultdict(int)  # by (policy, mode)

    def flush(self) -> None:
        if not self.enabled:
            return
        found = families()
        _move_counts(self.sent, found.messages_sent, self.worker)
        self.duration.move_to(found.delivery.labels(self.worker))
        for (policy, mode), count in self.tls_policy_failures.items():
            found.tls_policy_failures.labels(self.worker, policy, mode).inc(count)
        self.tls_policy_failures.clear()


class EventsMetrics:
    """The events process's readings: how far behind each sink is, what webhooks and the report did.

    Counted as they happen: a request to a receiver costs far more than a write to the files.
    """

    def __init__(self, worker: str, enabled: bool = True) -> None:
        self.worker = worker
        self.enabled = enabled

    def lag(self, sink: str, seconds: float) -> None:
        if self.enabled:
            families().events_lag.labels(self.worker, sink).set(seconds)

    def sent(self, sink: str, result: str, events: int) -> None:
        if self.enabled and events:
            families().events_sent.labels(self.worker, sink, result).inc(events)

    def dead_lettered(self, sink: str, events: int) -> None:
        if self.enabled and events:
            families().dead_letters.labels(self.worker, sink).inc(events)
