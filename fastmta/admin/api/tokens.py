"""Admin API tokens: list, create (the token text is shown once), revoke."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.access.roles import Role, RoleName
from fastmta.access.tokens import Token, TokenExists
from fastmta.admin.endpoint import Call, Endpoint, Link, Outcome
from fastmta.admin.errors import Conflict, NotFound


class TokenView(msgspec.Struct):
    id: str
    name: str
    role: RoleName
    created_at: float
    created_by: str


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    role: RoleName


class TokenCreated(msgspec.Struct):
    token: str  # shown only in this response
    info: TokenView


def view(token: Token) -> TokenView:
    return TokenView(token.id, token.name, token.role, token.created_at, token.created_by)


async def list_tokens(call: Call) -> list[TokenView]:
    return [view(token) for token in await anyio.to_thread.run_sync(call.state.tokens.list)]


async def create_token(call: Call) -> Outcome:
    assert call.principal is not None
    body: TokenCreate = call.body
    try:
        token, text = await anyio.to_thread.run_sync(call.state.tokens.create, body.name, body.role, call.principal.name)
    except TokenExists as error:
        raise Conflict(str(error)) from None
    return Outcome(TokenCreated(text, view(token)), token.id, after=view(token))


async def revoke_token(call: Call) -> Outcome:
    token = await anyio.to_thread.run_sync(call.state.tokens.revoke, call.path("id"))
    if token is None:
        raise NotFound(f"no token {call.path('id')}")
    return Outcome(view(token), token.id, before=view(token))


_ADMIN = Role.admin
_CREATED = (Link("DELETE /api/v1/tokens/{id}", "id", "/data/info/id"),)
ENDPOINTS = [
    Endpoint("GET", "/api/v1/tokens", "Every API token (never the secret)", list_tokens, "tokens", role=_ADMIN, returns=list[TokenView]),
    Endpoint(
        "POST",
        "/api/v1/tokens",
        "Create an API token",
        create_token,
        "tokens",
        role=_ADMIN,
        body=TokenCreate,
        returns=TokenCreated,
        status=201,
        errors=(409,),
        action="token.create",
        links=_CREATED,
    ),
    Endpoint("DELETE", "/api/v1/tokens/{id}", "Revoke an API token", revoke_token, "tokens", role=_ADMIN, returns=TokenView, errors=(404,), action="token.revoke"),
]
