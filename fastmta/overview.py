"""One reading of a node's state from its data_dir: what /health answers and `fastmta status` prints.

Everything here is read from files the processes already keep (children.json, queue.lmdb, the
disk), never asked of a running process, so it works while the admin process is down or disabled.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import lmdb
import msgspec

from fastmta import children, processes
from fastmta.queue.control import DeliveryControl, MaintenanceControl
from fastmta.queue.store import QueueStore

# Below this share of free space on data_dir's disk the node reports itself unhealthy.
MIN_FREE_DISK = 0.10


class ChildState(msgspec.Struct):
    name: str
    pid: int
    alive: bool
    started_at: float


class Overview(msgspec.Struct):
    reasons: list[str]  # why the node is unhealthy; empty when it is healthy
    children: list[ChildState]
    queue_depth: int | None  # None: the store could not be read
    oldest_message_age_seconds: float | None  # None: an empty queue, or an unreadable store
    delivery_suspended: bool
    disk_free_percent: float
    events_lag_seconds: dict[str, float]
    # queue.lmdb: the pages it has used (freed ones are reused before it grows) of [server] queue_max_bytes.
    store_used_bytes: int | None = None
    store_size_bytes: int | None = None
    maintenance: bool = False  # new SMTP connections are refused (MaintenanceControl)

    @property
    def healthy(self) -> bool:
        return not self.reasons

    @property
    def smtp_workers_alive(self) -> int:
        return sum(1 for child in self.children if child.name.startswith("smtp-") and child.alive)


def read(data_dir: Path, store: QueueStore) -> Overview:
    """Each check is a syscall or a read transaction: cheap enough for the admin's event loop."""
    now = time.time()
    reasons = []
    depth: int | None = None
    oldest_age: float | None = None
    used: int | None = None
    size: int | None = None
    try:
        # The map stays readable after its file is gone; the workers' next open or commit would not.
        os.stat(Path(store.env.path()) / "data.mdb")
        depth = store.count()
        oldest = store.oldest_received_at()
        oldest_age = None if oldest is None else max(0.0, round(now - oldest, 3))
        info = store.env.info()
        used, size = (info["last_pgno"] + 1) * store.env.stat()["psize"], info["map_size"]
    except (OSError, lmdb.Error) as error:
        reasons.append(f"queue store unreachable: {getattr(error, 'strerror', None) or error}")
    try:
        disk = shutil.disk_usage(data_dir)
        free = disk.free / disk.total if disk.total else 0.0
        if free < MIN_FREE_DISK:
            reasons.append(f"free disk space is {free:.1%}, below {MIN_FREE_DISK:.0%}")
    except OSError as error:
        free = 0.0
        reasons.append(f"free disk space unknown: {error.strerror}")
    try:
        lags = {sink: round(lag, 3) for sink, lag in store.outbox.lags(now).items()}
        suspended = DeliveryControl(store.env).suspended()
        maintenance = MaintenanceControl(store.env).enabled()
    except lmdb.Error:
        lags, suspended, maintenance = {}, False, False
    states = [ChildState(c.name, c.pid, processes.alive(c.pid), c.started_at) for c in children.read(data_dir)]
    overview = Overview(reasons, states, depth, oldest_age, suspended, round(free * 100, 2), lags, used, size, maintenance)
    if not overview.smtp_workers_alive:
        reasons.append("no SMTP worker is alive")
    return overview
