"""GET /health: no authentication; 503 when the store is unreachable, the disk nearly full, or no SMTP worker alive."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Literal

import lmdb
import msgspec
from starlette.responses import Response

from fastmta import children, processes
from fastmta.admin.endpoint import Call, Endpoint, json_response

_MIN_FREE_DISK = 0.10


class Health(msgspec.Struct):
    status: Literal["ok", "unhealthy"]
    reasons: list[str]
    smtp_workers_alive: int
    queue_depth: int | None
    disk_free_percent: float
    # Per events sink, the age in seconds of the oldest event it does not have yet. A sink behind
    # does not make the node unhealthy: mail still flows, the outbox keeps the events meanwhile.
    events_lag_seconds: dict[str, float] = msgspec.field(default_factory=dict)


async def health(call: Call) -> Response:
    # Each check is a syscall or a read transaction: cheap enough to stay on the event loop.
    data_dir = call.state.config.data_dir
    reasons = []
    store = call.state.store
    try:
        # The map stays readable after its file is gone; the workers' next open or commit would not.
        os.stat(Path(store.env.path()) / "data.mdb")
        depth: int | None = store.count()
    except (OSError, lmdb.Error) as error:
        depth = None
        reasons.append(f"queue store unreachable: {getattr(error, 'strerror', None) or error}")
    try:
        disk = shutil.disk_usage(data_dir)
        free = disk.free / disk.total if disk.total else 0.0
        if free < _MIN_FREE_DISK:
            reasons.append(f"free disk space is {free:.1%}, below {_MIN_FREE_DISK:.0%}")
    except OSError as error:
        free = 0.0
        reasons.append(f"free disk space unknown: {error.strerror}")
    try:
        lags = {sink: round(lag, 3) for sink, lag in store.outbox.lags(time.time()).items()}
    except lmdb.Error:
        lags = {}
    alive = _smtp_workers_alive(data_dir)
    if not alive:
        reasons.append("no SMTP worker is alive")
    report = Health("unhealthy" if reasons else "ok", reasons, alive, depth, round(free * 100, 2), lags)
    return json_response({"success": not reasons, "data": report}, 503 if reasons else 200)


def _smtp_workers_alive(data_dir: Path) -> int:
    return sum(1 for child in children.read(data_dir) if child.name.startswith("smtp-") and processes.alive(child.pid))


ENDPOINTS = [
    Endpoint(
        "GET",
        "/health",
        "Whether this node can take mail",
        health,
        "monitoring",
        role=None,
        returns=Health,
        alternatives=((503, "Unhealthy; data.reasons says why"),),
    ),
]
