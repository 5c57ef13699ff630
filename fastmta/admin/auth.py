"""Who is calling: a Bearer token with its role, or HTTP Basic for an SMTP account flagged admin."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import anyio.to_thread
from starlette.requests import Request

from fastmta.accounts import Accounts
from fastmta.admin.errors import AuthRequired, InsufficientPermissions, TooManyRequests
from fastmta.admin.roles import Role
from fastmta.admin.tokens import Tokens
from fastmta.ratelimit import RateLimiter

_HOUR = 3600.0


@dataclass(frozen=True)
class Principal:
    name: str  # as the audit log shows it: "token:<name>" or "user:<username>"
    role: Role


class FailedLogins:
    """Wrong HTTP Basic passwords per client address, counted in state.lmdb: [limits] auth_failures_per_hour
    holds here as it does for SMTP AUTH, so the API is no faster a way to guess an admin's password."""

    def __init__(self, limiter: RateLimiter, per_hour: int) -> None:
        self._limiter = limiter
        self._per_hour = per_hour

    def check(self, ip: str) -> None:
        if self._per_hour and self._limiter.count("admin_auth_failures", ip, _HOUR) >= self._per_hour:
            raise TooManyRequests("too many failed logins from your address; try again later")

    def record(self, ip: str) -> None:
        self._limiter.hit("admin_auth_failures", ip, self._per_hour, _HOUR)


async def authenticate(
    request: Request, tokens: Tokens, accounts: Accounts, basic_auth: bool, failed_logins: FailedLogins
) -> Principal:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        token = tokens.verify(credentials.strip())
        if token is None:
            raise AuthRequired("the token is unknown or revoked")
        return Principal(f"token:{token.name}", Role.named(token.role))
    if scheme == "basic" and basic_auth:
        username, password = _basic_credentials(credentials)
        ip = request.client.host if request.client else ""
        failed_logins.check(ip)
        # argon2 takes tens of milliseconds: never on the event loop.
        user = await anyio.to_thread.run_sync(accounts.authenticate, username, password)
        if user is None:
            await anyio.to_thread.run_sync(failed_logins.record, ip)
            raise AuthRequired("wrong username or password")
        if not user.admin:
            raise InsufficientPermissions(f"{user.username} is not an admin account")
        return Principal(f"user:{user.username}", Role.admin)
    raise AuthRequired("send Authorization: Bearer <token>" + (" or HTTP Basic" if basic_auth else ""))


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
