"""GET /metrics: every process's series in the Prometheus text format, labelled by worker."""

from __future__ import annotations

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from fastmta.admin.endpoint import Call, Endpoint


async def metrics(call: Call) -> Response:
    # Reads one file per metric type and process: off the event loop.
    text = await anyio.to_thread.run_sync(call.state.readings.exposition)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


ENDPOINTS = [
    Endpoint("GET", "/metrics", "Prometheus metrics of every worker", metrics, "monitoring", media_type="text/plain"),
]
