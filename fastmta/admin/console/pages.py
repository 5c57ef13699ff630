"""The console's pages, each read through the functions the JSON API answers from.

Overview, queue, message, delivery, users and tokens, audit.
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
import msgspec
from starlette.responses import Response

from fastmta import overview as node
from fastmta.access.roles import Role
from fastmta.admin.api import cluster, destinations, messages, queue, tokens, users
from fastmta.admin.auth import require
from fastmta.admin.console.web import Visit
from fastmta.admin.errors import ApiError, validation_failed
from fastmta.queue.store import CorruptRecord
from fastmta.status_text import listeners

PAGE = 50
# The queue filters a person sets in the form; the page sets the rest.
QUEUE_FILTERS = ("status", "sender", "recipient", "domain", "workspace_id", "older_than", "after")
AGES = ((300, "5 minutes"), (3600, "1 hour"), (86400, "1 day"), (3 * 86400, "3 days"))
WINDOWS = (5, 15, 60)


async def overview(visit: Visit) -> Response:
    state = visit.state
    now = await anyio.to_thread.run_sync(node.read, state.config.data_dir, state.store)
    snapshot = await anyio.to_thread.run_sync(state.readings.snapshot)
    nodes: cluster.Nodes | None = None
    if state.cluster is not None:
        try:
            nodes = await cluster.seen(state)
        except ApiError:
            nodes = None  # the page says Redis is unreachable
    return visit.render(
        "overview.html",
        in_cluster=state.cluster is not None,
        nodes=nodes,
        page="overview",
        node=now,
        listeners=listeners(state.config),
        memory=snapshot.by_label("process_resident_memory_bytes", "worker"),
        cpu=snapshot.by_label("process_cpu_seconds_total", "worker"),
        delivery=state.delivery.state(),
        maintenance=state.maintenance.state(),
    )


async def queue_list(visit: Visit) -> Response:
    asked = {key: value for key, value in visit.request.query_params.items() if key in QUEUE_FILTERS and value}
    error: ApiError | None = None
    try:
        query = msgspec.convert({**asked, "count": False, "limit": PAGE}, queue.QueueQuery, strict=False)
    except msgspec.ValidationError as invalid:
        error = validation_failed(invalid, "query")
        query = queue.QueueQuery(count=False, limit=PAGE)
    found = await anyio.to_thread.run_sync(queue.page, visit.state.store, query)
    url = visit.request.url
    return visit.render(
        "queue.html",
        422 if error else 200,
        page="queue",
        found=found,
        asked=asked,
        error=error,
        queued=visit.state.store.count(),
        ages=AGES,
        now=time.time(),
        next_url=str(url.include_query_params(after=found.next_after)) if found.next_after else "",
        first_url=str(url.remove_query_params("after")) if query.after else "",
    )


async def message(visit: Visit) -> Response:
    state, message_id = visit.state, visit.request.path_params["id"]
    found = await messages.detail(state, message_id)
    try:
        queued = await anyio.to_thread.run_sync(state.store.get, message_id)
    except CorruptRecord:
        queued = None
    audit, _ = await anyio.to_thread.run_sync(state.audit.newest, PAGE, 0, None, None, message_id)
    return visit.render(
        "message.html",
        page="queue",
        found=found,
        queued=queued,
        queue_status=queue.status_of(queued) if queued else None,
        timeline=[msgspec.to_builtins(event) for event in found.events],
        audit=audit,
    )


async def delivery(visit: Visit) -> Response:
    state = visit.state
    minutes = visit.request.query_params.get("minutes", "")
    query = destinations.DestinationsQuery(minutes=int(minutes) if minutes.isdigit() and int(minutes) in WINDOWS else 15)
    tallies = await anyio.to_thread.run_sync(destinations.read, state.config.data_dir, query, time.time())
    return visit.render(
        "delivery.html",
        page="delivery",
        switch=state.delivery.state(),
        tallies=tallies,
        windows=WINDOWS,
        routes=state.config.routes,
    )


async def access(visit: Visit, status: int = 200, **shown: Any) -> Response:
    """Users and tokens; `shown` is what a form just did: the token made (its only showing) or the error."""
    require(visit.principal, Role.admin)
    state = visit.state
    return visit.render(
        "access.html",
        status,
        page="access",
        tokens=[tokens.view(token) for token in await anyio.to_thread.run_sync(state.tokens.list)],
        users=[users.view(user) for user in await anyio.to_thread.run_sync(state.accounts.list)],
        created=shown.get("created"),
        form_error=shown.get("form_error"),
    )


async def audit(visit: Visit) -> Response:
    params = visit.request.query_params
    action, target = params.get("action") or None, params.get("target") or None
    offset = int(params["offset"]) if params.get("offset", "").isdigit() else 0
    entries, total = await anyio.to_thread.run_sync(visit.state.audit.newest, PAGE, offset, None, action, target)
    url = visit.request.url
    return visit.render(
        "audit.html",
        page="audit",
        entries=entries,
        total=total,
        action=action or "",
        target=target or "",
        actions=sorted(visit.writes),
        next_url=str(url.include_query_params(offset=offset + PAGE)) if offset + PAGE < total else "",
        previous_url=str(url.include_query_params(offset=max(0, offset - PAGE))) if offset else "",
    )
