"""GET /health: no authentication; 503 when the store is unreachable, the disk nearly full, or no SMTP worker alive.

In a cluster a node whose Redis is unreachable says "degraded" with 200: it still takes mail,
counting its limits alone (fastmta.counters.failover), so a load balancer should keep it.
"""

from __future__ import annotations

from typing import Literal

import anyio.to_thread
import msgspec
from starlette.responses import Response

from fastmta import overview
from fastmta.admin.endpoint import Call, Endpoint, json_response


class Health(msgspec.Struct):
    status: Literal["ok", "degraded", "unhealthy"]
    reasons: list[str]
    smtp_workers_alive: int
    queue_depth: int | None
    disk_free_percent: float
    # Per events sink, the age in seconds of the oldest event it does not have yet. A sink behind
    # does not make the node unhealthy: mail still flows, the outbox keeps the events meanwhile.
    events_lag_seconds: dict[str, float] = msgspec.field(default_factory=dict)
    # "off" without [cluster] redis_url; "ok" while Redis answers; "degraded" while it does not.
    cluster: Literal["off", "ok", "degraded"] = "off"
    # In maintenance mode new SMTP connections hear 421; still 200, so an orchestrator does not
    # restart the node an operator is working on.
    maintenance: bool = False


async def health(call: Call) -> Response:
    now = overview.read(call.state.config.data_dir, call.state.store)
    cluster = call.state.cluster
    shared: Literal["off", "ok", "degraded"] = "off"
    if cluster is not None:
        shared = "degraded" if await anyio.to_thread.run_sync(cluster.check) else "ok"
    report = Health(
        "unhealthy" if not now.healthy else "degraded" if shared == "degraded" else "ok",
        now.reasons,
        now.smtp_workers_alive,
        now.queue_depth,
        now.disk_free_percent,
        now.events_lag_seconds,
        shared,
        now.maintenance,
    )
    return json_response({"success": now.healthy, "data": report}, 200 if now.healthy else 503)


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
