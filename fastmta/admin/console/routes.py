"""Every route of the console, and its static files (the stylesheet, its script, and the vendored htmx and uPlot)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from fastmta.admin.console import actions, login, pages
from fastmta.admin.console.web import Console, form, not_found, page, redirect
from fastmta.admin.endpoint import Endpoint
from fastmta.admin.state import AdminState

STATIC = Path(__file__).parent / "static"


class _Static(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        # Pages name each file with the release's version (web.py), so a day's caching is never stale.
        response.headers["Cache-Control"] = "max-age=86400"
        return response


async def _home(request: Request) -> Response:
    return redirect("/ui")


def routes(state: AdminState, endpoints: Iterable[Endpoint]) -> list[BaseRoute]:
    console = Console.over(state, endpoints)
    post = ["POST"]
    return [
        Route("/ui", page(pages.overview, console)),
        Route("/ui/", _home),
        Route("/ui/login", login.show),
        Route("/ui/login", login.sign_in(state), methods=post),
        Route("/ui/logout", form(login.sign_out, console), methods=post),
        Route("/ui/queue", page(pages.queue_list, console)),
        Route("/ui/queue/flush", form(actions.flush, console), methods=post),
        Route("/ui/queue/{id}", page(pages.message, console)),
        Route("/ui/queue/{id}/{verb}", form(actions.queue_action, console), methods=post),
        Route("/ui/delivery", page(pages.delivery, console)),
        Route("/ui/delivery/{verb}", form(actions.delivery_switch, console), methods=post),
        Route("/ui/node/{verb}", form(actions.maintenance_switch, console), methods=post),
        Route("/ui/access", page(pages.access, console)),
        Route("/ui/tokens", form(actions.create_token, console), methods=post),
        Route("/ui/tokens/{id}/revoke", form(actions.revoke_token, console), methods=post),
        Route("/ui/users", form(actions.create_user, console), methods=post),
        Route("/ui/users/{username}/delete", form(actions.delete_user, console), methods=post),
        Route("/ui/audit", page(pages.audit, console)),
        Mount("/ui/static", _Static(directory=STATIC)),
        Route("/ui/{anything:path}", page(not_found, console), methods=["GET", "POST"]),
    ]
