"""What every console page and form shares: who is signed in, the CSRF check, templates, and the answers to errors.

A page is `async def (Visit) -> Response`; `page()` and `form()` make it a route: the session
cookie must name a live token (else the browser is sent to the login page), a form must carry the
session's CSRF token, and an ApiError raised anywhere becomes an HTML page with its status.
"""

from __future__ import annotations

import datetime
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jinja2
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from fastmta.access.roles import Role
from fastmta.admin import session as sessions
from fastmta.admin.auth import Principal, require, token_principal
from fastmta.admin.endpoint import Call, Endpoint, perform
from fastmta.admin.errors import ApiError, AuthRequired, CsrfRejected, NotFound
from fastmta.admin.state import AdminState
from fastmta.status_text import duration, size

log = logging.getLogger("fastmta.admin")

# Scripts and styles come from the package only, so an injected <script> or style attribute does nothing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY}
# What a page says after a form sent the browser to it with ?done=; any other value shows nothing.
DONE = {
    "retry": "Retried: the message is due now.",
    "hold": "Held: delivery leaves the message alone until it is released.",
    "release": "Released: the message is due now.",
    "delete": "Deleted: the message left the queue undelivered.",
    "flush": "Flushed: all deferred mail is due now.",
    "suspend": "Delivery suspended: runners take no new work; mail is still accepted and queued.",
    "activate": "Delivery is active again.",
    "maintenance-on": "Maintenance mode: new SMTP connections are refused with 421 within a second; open sessions go on.",
    "maintenance-off": "Maintenance mode is off: SMTP accepts new connections again.",
    "revoke": "Token revoked: every session and client using it is signed out.",
    "user-create": "User created.",
    "user-delete": "User deleted.",
}
_VERSION = version("fastmta")


def _when(seconds: float | None) -> str:
    if not seconds:
        return "–"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float | None) -> str:
    return "–" if not seconds else duration(max(0.0, time.time() - seconds))


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(when=_when, ago=_ago, duration=duration, size=size)
    # ?v= changes with each release, so a browser never runs an old script against new pages.
    environment.globals["static"] = lambda path: f"/ui/static/{path}?v={_VERSION}"
    return environment


templates = Jinja2Templates(env=_environment())


@dataclass(frozen=True)
class Console:
    """What the console's routes share: the admin state, and the API's writes by audit action, which its forms run."""

    state: AdminState
    writes: Mapping[str, Endpoint]

    @classmethod
    def over(cls, state: AdminState, endpoints: Iterable[Endpoint]) -> Console:
        return cls(state, {endpoint.action: endpoint for endpoint in endpoints if endpoint.action})


@dataclass
class Visit:
    """One request of a signed-in browser."""

    request: Request
    state: AdminState
    principal: Principal
    session: sessions.Session
    writes: Mapping[str, Endpoint]

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("page", "")
        context.update(
            principal=self.principal,
            csrf=self.session.csrf,
            can_operate=self.principal.role >= Role.operator,
            can_administer=self.principal.role >= Role.admin,
            hostname=self.state.config.server.hostname,
            done=DONE.get(self.request.query_params.get("done", ""), ""),
        )
        return render(self.request, template, context, status)

    async def act(self, action: str, body: Any = None) -> Any:
        """The API's write of that audit action, run as the signed-in principal: its role check, its audit entry."""
        endpoint = self.writes[action]
        assert endpoint.role is not None
        require(self.principal, endpoint.role)
        return await perform(endpoint, Call(self.request, self.state, self.principal, None, body))


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    return templates.TemplateResponse(request, template, context, status_code=status, headers=_HEADERS)


def redirect(url: str) -> Response:
    return RedirectResponse(url, 303, headers=_HEADERS)


Handler = Callable[[Visit], Awaitable[Response]]
FormHandler = Callable[[Visit, FormData], Awaitable[Response]]


def page(handler: Handler, console: Console) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        visit = await _visit(request, console)
        if visit is None:
            return _to_login(request)
        return await _answer(visit, handler(visit))

    return run


def form(handler: FormHandler, console: Console) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        visit = await _visit(request, console)
        if visit is None:
            return _to_login(request)
        fields = await read_form(request)
        offered = fields.get(sessions.CSRF_FIELD, "")
        if not isinstance(offered, str) or not sessions.csrf_valid(visit.session, offered):
            return _error_page(visit, CsrfRejected("the form is stale or came from another site: reload the page and try again"))
        return await _answer(visit, handler(visit, fields))

    return run


def _to_login(request: Request) -> Response:
    if request.headers.get("hx-request"):
        # htmx would put the login page's part into the page it refreshes; the whole window goes instead.
        return Response(status_code=204, headers={"HX-Redirect": "/ui/login", **_HEADERS})
    return redirect("/ui/login")


async def not_found(visit: Visit) -> Response:
    raise NotFound(f"no page {visit.request.url.path}")


async def read_form(request: Request) -> FormData:
    """The console's forms are all urlencoded (no uploads): the standard library reads them."""
    body = (await request.body()).decode("utf-8", errors="replace")
    pairs: list[tuple[str, str | UploadFile]] = list(urllib.parse.parse_qsl(body, keep_blank_values=True))
    return FormData(pairs)


async def _visit(request: Request, console: Console) -> Visit | None:
    session = sessions.Session.of(request)
    if session is None:
        return None
    try:
        principal = await token_principal(console.state.tokens, session.token)
    except AuthRequired:
        return None  # revoked since the login
    return Visit(request, console.state, principal, session, console.writes)


async def _answer(visit: Visit, work: Awaitable[Response]) -> Response:
    try:
        return await work
    except ApiError as error:
        return _error_page(visit, error)
    except Exception:
        log.exception("console %s %s failed", visit.request.method, visit.request.url.path)
        return _error_page(visit, ApiError("internal error; the admin log has the details"))


def _error_page(visit: Visit, error: ApiError) -> Response:
    return visit.render("error.html", error.status, error=error)
