"""The console's forms: each runs the API endpoint of its change, so the role it needs and its audit entry are the API's.

After a change the browser is sent to the page that shows it (`?done=` names what was done), so a
reload never does it twice; a new token is the exception, shown once in the answer itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from starlette.datastructures import FormData
from starlette.responses import Response

from fastmta.admin.api.maintenance import ModeRequest
from fastmta.admin.api.tokens import TokenCreate
from fastmta.admin.api.users import UserCreate
from fastmta.admin.console import pages
from fastmta.admin.console.web import Visit, redirect
from fastmta.admin.errors import ApiError, NotFound, validation_failed

QUEUE_VERBS = ("retry", "hold", "release", "delete")
DELIVERY_VERBS = ("suspend", "activate")
MAINTENANCE_VERBS = {"maintenance-on": True, "maintenance-off": False}


def _verb(visit: Visit, allowed: tuple[str, ...]) -> str:
    verb = str(visit.request.path_params["verb"])
    if verb not in allowed:
        raise NotFound(f"no action {verb}: {', '.join(allowed)}")
    return verb


async def queue_action(visit: Visit, fields: FormData) -> Response:
    verb = _verb(visit, QUEUE_VERBS)
    await visit.act(f"queue.{verb}")
    if verb == "delete":
        return redirect("/ui/queue?done=delete")
    return redirect(f"/ui/queue/{quote(visit.request.path_params['id'], safe='')}?done={verb}")


async def flush(visit: Visit, fields: FormData) -> Response:
    await visit.act("queue.flush")
    return redirect("/ui/queue?done=flush")


async def delivery_switch(visit: Visit, fields: FormData) -> Response:
    verb = _verb(visit, DELIVERY_VERBS)
    await visit.act(f"delivery.{verb}")
    return redirect(f"/ui/delivery?done={verb}")


async def maintenance_switch(visit: Visit, fields: FormData) -> Response:
    verb = _verb(visit, tuple(MAINTENANCE_VERBS))
    await visit.act("maintenance.mode", ModeRequest(MAINTENANCE_VERBS[verb]))
    return redirect(f"/ui?done={verb}")


def _body(fields: dict[str, Any], body_type: type) -> Any:
    try:
        return msgspec.convert(fields, body_type, strict=False)
    except msgspec.ValidationError as error:
        raise validation_failed(error, "body") from None


async def create_token(visit: Visit, fields: FormData) -> Response:
    try:
        body = _body({"name": fields.get("name", ""), "role": fields.get("role", "")}, TokenCreate)
        created = await visit.act("token.create", body)
    except ApiError as error:
        return await pages.access(visit, error.status, form_error=error)
    return await pages.access(visit, created=created)


async def revoke_token(visit: Visit, fields: FormData) -> Response:
    await visit.act("token.revoke")
    return redirect("/ui/access?done=revoke")


async def create_user(visit: Visit, fields: FormData) -> Response:
    asked = {
        "username": fields.get("username", ""),
        "password": fields.get("password", ""),
        "admin": fields.get("admin") == "on",
        "quota": fields.get("quota") or 0,
    }
    try:
        await visit.act("user.create", _body(asked, UserCreate))
    except ApiError as error:
        return await pages.access(visit, error.status, form_error=error)
    return redirect("/ui/access?done=user-create")


async def delete_user(visit: Visit, fields: FormData) -> Response:
    await visit.act("user.delete")
    return redirect("/ui/access?done=user-delete")
