"""This node's heartbeat in Redis ([cluster] redis_url): its health and queue depth, every third of heartbeat_ttl.

The admin process beats, as it is the one that reads the node's overview; a node whose admin is
disabled is not listed. GET /api/v1/cluster/nodes lists the nodes whose last beat is younger
than heartbeat_ttl.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import anyio.to_thread
import msgspec

from fastmta import overview
from fastmta.admin.state import AdminState
from fastmta.queue.records import node_tag

if TYPE_CHECKING:
    from fastmta.counters.failover import FailoverCounters


class NodeReport(msgspec.Struct):
    node: str
    status: str  # as /health says: "ok", "degraded" (Redis was unreachable a moment ago), "unhealthy"
    reasons: list[str]
    queue_depth: int | None
    smtp_workers_alive: int
    delivery_suspended: bool
    admin: str  # [admin] listen
    at: float  # when the report was made, by the node's clock
    # Fields from here on have defaults: nodes of an older fastmta leave them out of their beats.
    queue_id_tag: str = ""  # characters 10-14 of the queue ids this node makes


_ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(NodeReport)


def report(state: AdminState, degraded: bool) -> NodeReport:
    now = overview.read(state.config.data_dir, state.store)
    status = "unhealthy" if not now.healthy else "degraded" if degraded else "ok"
    return NodeReport(
        state.config.server.node_id, status, now.reasons, now.queue_depth, now.smtp_workers_alive,
        now.delivery_suspended, state.config.admin.listen, time.time(), node_tag(state.config.server.node_id),
    )  # fmt: skip


def _beat(state: AdminState, cluster: FailoverCounters) -> None:
    """Nothing is written while Redis is unreachable: the report would have nowhere to go."""
    if not cluster.check():
        cluster.beat(_ENCODER.encode(report(state, False)), state.config.cluster.heartbeat_ttl)


async def beat_forever(state: AdminState, cluster: FailoverCounters) -> None:
    """Beats at once, then every third of the ttl, so that one lost beat does not drop the node from the list."""
    pause = state.config.cluster.heartbeat_ttl / 3
    while True:
        await anyio.to_thread.run_sync(_beat, state, cluster)
        await asyncio.sleep(pause)
