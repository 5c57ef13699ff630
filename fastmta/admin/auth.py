"""Who is calling: a Bearer token with its role, HTTP Basic for an SMTP account flagged admin, or the web console's session.

The console's session cookie holds an API token too; it is taken for reads only (GET, HEAD), such
as the event stream the console's charts follow: a write needs the header, which no other site
can make a browser send, or the console's own forms, which check a CSRF token.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import anyio.to_thread
from starlette.requests import Request

from fastmta.access.accounts import Accounts
from fastmta.access.roles import Role
from fastmta.access.tokens import Tokens
from fastmta.admin.errors import AuthRequired, InsufficientPermissions, TooManyRequests
from fastmta.admin.session import Session
from fastmta.limits import ClientLimits, LimitExceeded

_READS = ("GET", "HEAD")


@dataclass(frozen=True)
class Principal:
    name: str  # as the audit log shows it: "token:<name>" or "user:<username>"
    role: Role


async def authenticate(
    request: Request, tokens: Tokens, accounts: Accounts, basic_auth: bool, limits: ClientLimits
) -> Principal:
    """`limits` are SMTP AUTH's: a wrong Basic password counts as a failed AUTH from that address,
    so the API is no second way to guess, and the same addresses are exempt."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return await token_principal(tokens, credentials.strip())
    session = Session.of(request)
    if not scheme and session is not None and request.method in _READS:
        return await token_principal(tokens, session.token)
    if scheme == "basic" and basic_auth:
        username, password = _basic_credentials(credentials)
        ip = request.client.host if request.client else ""
        try:
            limits.check_auth_allowed(ip)
        except LimitExceeded:
            raise TooManyRequests("too many failed logins from your address; try again later") from None
        # argon2 takes tens of milliseconds: never on the event loop.
        user = await anyio.to_thread.run_sync(accounts.authenticate, username, password)
        if user is None:
            await anyio.to_thread.run_sync(limits.record_auth_failure, ip)
            raise AuthRequired("wrong username or password")
        if not user.admin:
            raise InsufficientPermissions(f"{user.username} is not an admin account")
        return Principal(f"user:{user.username}", Role.admin)
    raise AuthRequired("send Authorization: Bearer <token>" + (" or HTTP Basic" if basic_auth else ""))


async def token_login(text: str, ip: str, tokens: Tokens, limits: ClientLimits) -> Principal:
    """A token typed into the console's login form: a wrong one counts as a failed login from `ip`,
    as a wrong Basic password does, so the form is no way round [limits] auth_failures_per_hour."""
    try:
        limits.check_auth_allowed(ip)
    except LimitExceeded:
        raise TooManyRequests("too many failed logins from your address; try again later") from None
    try:
        return await token_principal(tokens, text)
    except AuthRequired:
        await anyio.to_thread.run_sync(limits.record_auth_failure, ip)
        raise


async def token_principal(tokens: Tokens, text: str) -> Principal:
    # In a cluster the look-up is a PostgreSQL query, which must not stall the event loop: in a
    # thread. queue.lmdb's takes microseconds, less than handing it to a thread (whose arena of
    # memory every request would otherwise keep growing).
    token = await anyio.to_thread.run_sync(tokens.verify, text) if tokens.rows.remote else tokens.verify(text)
    if token is None:
        raise AuthRequired("the token is unknown or revoked")
    return Principal(f"token:{token.name}", Role.named(token.role))


def _basic_credentials(credentials: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise AuthRequired("malformed Basic credentials") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise AuthRequired("malformed Basic credentials")
    return username, password


def require(principal: Principal, role: Role) -> None:
    if principal.role < role:
        raise InsufficientPermissions(f"this needs the {role.name} role; {principal.name} has {principal.role.name}")
