"""GET /api/v1/cluster/nodes: the nodes of this cluster whose heartbeat is recent, with their health and queue depth.

A node in no cluster ([cluster] redis_url unset) lists itself alone, read now.
"""

from __future__ import annotations

import time

import anyio.to_thread
import msgspec

from fastmta.admin.endpoint import Call, Endpoint
from fastmta.admin.errors import ClusterUnreachable
from fastmta.admin.heartbeat import DECODER, NodeReport, report
from fastmta.admin.state import AdminState


class NodeView(msgspec.Struct):
    report: NodeReport
    age_seconds: float  # since the report was made, by this node's clock


class Nodes(msgspec.Struct):
    this_node: str
    nodes: list[NodeView]


async def seen(state: AdminState) -> Nodes:
    """The nodes heard from within heartbeat_ttl (this node alone outside a cluster); the console shows them too."""
    cluster = state.cluster
    if cluster is None:
        alone = await anyio.to_thread.run_sync(report, state, False)
        return Nodes(state.config.server.node_id, [NodeView(alone, 0.0)])
    found = await anyio.to_thread.run_sync(cluster.nodes)
    if found is None:
        raise ClusterUnreachable("Redis ([cluster] redis_url) is unreachable; this node counts its limits alone meanwhile")
    now = time.time()
    views = []
    for raw in found.values():
        heard = DECODER.decode(raw)
        views.append(NodeView(heard, round(max(0.0, now - heard.at), 3)))
    return Nodes(state.config.server.node_id, views)


async def nodes(call: Call) -> Nodes:
    return await seen(call.state)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/cluster/nodes",
        "The nodes seen within [cluster] heartbeat_ttl, with their health and queue depth",
        nodes,
        "cluster",
        returns=Nodes,
        errors=(503,),
    ),
]
