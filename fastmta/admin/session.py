"""The web console's session: a cookie holding an API token and a nonce, and the CSRF token made from both.

The browser keeps the token it logged in with in an HttpOnly, SameSite=Strict cookie, so page
scripts never see it. Every form that changes something carries `csrf`, an HMAC of the session's
nonce keyed by its token: another site can make the browser send the cookie, never read it, so it
cannot know the value (SameSite alone is not enough on browsers that ignore it). The server keeps
no session state: the cookie and the token store are all there is, and revoking the token ends
every session that holds it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "fastmta_session"
# Before there is a session, the login form's CSRF token is a random value also set as this cookie.
LOGIN_COOKIE = "fastmta_login"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    nonce: str
    token: str

    @classmethod
    def new(cls, token: str) -> Session:
        """A fresh nonce at every login: a CSRF token seen before it is worth nothing after."""
        return cls(secrets.token_urlsafe(16), token)

    @classmethod
    def of(cls, request: Request) -> Session | None:
        nonce, dot, token = request.cookies.get(COOKIE, "").partition(".")
        return cls(nonce, token) if dot and nonce and token else None

    @property
    def csrf(self) -> str:
        return hmac.new(self.token.encode(), self.nonce.encode(), hashlib.sha256).hexdigest()

    def store(self, request: Request, response: Response) -> None:
        _set(request, response, COOKIE, f"{self.nonce}.{self.token}")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(16)


def store_login_csrf(request: Request, response: Response, value: str) -> None:
    _set(request, response, LOGIN_COOKIE, value)


def login_csrf_valid(request: Request, offered: str) -> bool:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected.encode(), offered.encode())


def csrf_valid(session: Session, offered: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), offered.encode())


def end(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")


def _set(request: Request, response: Response, name: str, value: str) -> None:
    # Path "/": the console's pages and the API's event stream, which its charts read, both need it.
    response.set_cookie(
        name, value, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
