"""Signing in to the console with an API token, and out again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from fastmta.admin import session as sessions
from fastmta.admin.auth import token_login
from fastmta.admin.console.web import Visit, read_form, redirect, render
from fastmta.admin.errors import ApiError, CsrfRejected
from fastmta.admin.state import AdminState


def _form(request: Request, error: ApiError | None = None) -> Response:
    # Each showing of the form has a CSRF value of its own, in the page and in a cookie.
    value = sessions.new_login_csrf()
    response = render(request, "login.html", {"error": error, "login_csrf": value}, error.status if error else 200)
    sessions.store_login_csrf(request, response, value)
    return response


async def show(request: Request) -> Response:
    return _form(request)


def sign_in(state: AdminState) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        fields = await read_form(request)
        offered, typed = fields.get(sessions.CSRF_FIELD, ""), fields.get("token", "")
        if not isinstance(offered, str) or not sessions.login_csrf_valid(request, offered):
            return _form(request, CsrfRejected("the login form is stale or came from another site: try again"))
        token = typed.strip() if isinstance(typed, str) else ""
        ip = request.client.host if request.client else ""
        try:
            await token_login(token, ip, state.tokens, state.limits)
        except ApiError as error:
            return _form(request, error)
        response = redirect("/ui")
        sessions.Session.new(token).store(request, response)
        response.delete_cookie(sessions.LOGIN_COOKIE, path="/")
        return response

    return run


async def sign_out(visit: Visit, fields: FormData) -> Response:
    response = redirect("/ui/login")
    sessions.end(response)
    return response
