"""GET /api/v1/audit: the audit log, newest first."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.access.audit import AuditEntry
from fastmta.admin.endpoint import Call, Endpoint


class AuditQuery(msgspec.Struct):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    actor: str | None = None
    action: str | None = None
    target: str | None = None  # a message id, token id, username, "queue", "delivery"


class AuditPage(msgspec.Struct):
    items: list[AuditEntry]
    total: int
    limit: int
    offset: int


async def audit(call: Call) -> AuditPage:
    query: AuditQuery = call.query
    items, total = await anyio.to_thread.run_sync(
        call.state.audit.newest, query.limit, query.offset, query.actor, query.action, query.target
    )
    return AuditPage(items, total, query.limit, query.offset)


ENDPOINTS = [
    Endpoint("GET", "/api/v1/audit", "Every change made through this API, newest first", audit, "audit", query=AuditQuery, returns=AuditPage),
]
