"""Delivery suspend/activate: runners stop taking new work while suspended; ingress keeps accepting."""

from __future__ import annotations

import anyio.to_thread

from fastmta.access.roles import Role
from fastmta.admin.endpoint import Call, Endpoint, Outcome
from fastmta.queue.control import DeliveryState


async def status(call: Call) -> DeliveryState:
    return call.state.delivery.state()


def _switch(suspended: bool):  # type: ignore[no-untyped-def]
    async def change(call: Call) -> Outcome:
        assert call.principal is not None
        control = call.state.delivery
        before = control.state()
        after = await anyio.to_thread.run_sync(control.set, suspended, call.principal.name)
        if not suspended:
            call.state.wake_runners()
        return Outcome(after, "delivery", {"suspended": before.suspended}, {"suspended": after.suspended})

    return change


ENDPOINTS = [
    Endpoint("GET", "/api/v1/delivery", "Whether delivery is suspended", status, "delivery", returns=DeliveryState),
    Endpoint("POST", "/api/v1/delivery/suspend", "Stop delivery runners taking new work", _switch(True), "delivery", role=Role.operator, returns=DeliveryState, action="delivery.suspend"),
    Endpoint("POST", "/api/v1/delivery/activate", "Let delivery runners take work again", _switch(False), "delivery", role=Role.operator, returns=DeliveryState, action="delivery.activate"),
]
