"""Maintenance: the node's maintenance mode, and removing settled messages from history.

/api/v1/admin/maintenance/mode: while enabled, SMTP workers answer new connections `421 4.3.2`
(within a second of the change; sessions already open go on), so a load balancer or the sending
MTAs move to other nodes; delivery and the admin API carry on.

POST /api/v1/admin/maintenance/cleanup: settled messages older than N days removed from history, or counted.

Which settled messages: sent ones (include_sent, on unless turned off), failed ones (include_failed),
refusals in the SMTP session (include_rejected) and messages an operator deleted from the queue
(include_deleted); the last three are off unless asked for, since they are what is looked into
when something went wrong. Queued mail is never removed. [history] keep removes everything older
on its own; this is for sooner.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.access.roles import Role
from fastmta.admin import history
from fastmta.admin.endpoint import Call, Endpoint, Outcome
from fastmta.history.cleanup import Removed, remove_settled
from fastmta.history.schema import DELETED, FAILED, REJECTED, SENT
from fastmta.queue.control import MaintenanceState

_DAY = 86400


class CleanupRequest(msgspec.Struct, forbid_unknown_fields=True):
    older_than_days: Annotated[int, msgspec.Meta(ge=0)]  # unchanged for this long; 0: every settled one
    include_sent: bool = True
    include_failed: bool = False
    include_rejected: bool = False
    include_deleted: bool = False
    dry_run: bool = False  # count only


class CleanupResult(msgspec.Struct):
    dry_run: bool
    statuses: list[str]
    before: float  # messages unchanged since this time (seconds since the epoch)
    removed: Removed  # or, on a dry run, that would be


async def cleanup(call: Call) -> Outcome:
    asked: CleanupRequest = call.body
    wanted = (
        (SENT, asked.include_sent), (FAILED, asked.include_failed),
        (REJECTED, asked.include_rejected), (DELETED, asked.include_deleted),
    )
    statuses = [status for status, included in wanted if included]
    before = time.time() - asked.older_than_days * _DAY
    removed = await history.change(call.state, lambda connection: remove_settled(connection, statuses, before, asked.dry_run))
    done = CleanupResult(asked.dry_run, statuses, before, removed)
    return Outcome(done, "history", after=done)


class ModeRequest(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


async def mode(call: Call) -> MaintenanceState:
    return await anyio.to_thread.run_sync(call.state.maintenance.state)


async def set_mode(call: Call) -> Outcome:
    assert call.principal is not None
    asked: ModeRequest = call.body
    control = call.state.maintenance
    before = await anyio.to_thread.run_sync(control.state)
    after = await anyio.to_thread.run_sync(control.set, asked.enabled, call.principal.name)
    return Outcome(after, "maintenance", {"enabled": before.enabled}, {"enabled": after.enabled})


ENDPOINTS = [
    Endpoint("GET", "/api/v1/admin/maintenance/mode", "Whether the node is in maintenance (new SMTP connections refused)", mode, "maintenance", returns=MaintenanceState),
    Endpoint("POST", "/api/v1/admin/maintenance/mode", "Turn maintenance mode on or off", set_mode, "maintenance", role=Role.operator, body=ModeRequest, returns=MaintenanceState, action="maintenance.mode"),
    Endpoint("POST", "/api/v1/admin/maintenance/cleanup", "Remove settled messages older than N days from history", cleanup, "maintenance", role=Role.admin, body=CleanupRequest, returns=CleanupResult, errors=(503,), action="history.cleanup"),
]
