"""SMTP AUTH accounts, the same store as `fastmta user`: list, get, create, update, delete."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
import msgspec

from fastmta.access.accounts import AccountExists, AccountNotFound, InvalidUsername, User
from fastmta.access.roles import Role
from fastmta.admin.endpoint import Call, Endpoint, Link, Outcome
from fastmta.admin.errors import Conflict, NotFound, ValidationFailed

Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
# Messages a day; the bound is what an account record (msgpack) can hold.
Quota = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class UserView(msgspec.Struct):
    """An account as the API shows it: never its password hash."""

    username: str
    enabled: bool
    admin: bool
    quota: int
    created_at: float
    updated_at: float


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    # accounts' rule for names, in either case (stored lower-case): in the schema, so that clients
    # and the OpenAPI document know it before they are refused.
    username: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")]
    password: Password
    admin: bool = False
    quota: Quota = 0


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    password: Password | None = None
    enabled: bool | None = None
    admin: bool | None = None
    quota: Quota | None = None


def view(user: User) -> UserView:
    return UserView(user.username, user.enabled, user.admin, user.quota, user.created_at, user.updated_at)


async def _existing(call: Call) -> User:
    user = await anyio.to_thread.run_sync(call.state.accounts.get, call.path("username"))
    if user is None:
        raise NotFound(f"no user {call.path('username')}")
    return user


async def list_users(call: Call) -> list[UserView]:
    return [view(user) for user in await anyio.to_thread.run_sync(call.state.accounts.list)]


async def get_user(call: Call) -> UserView:
    return view(await _existing(call))


async def create_user(call: Call) -> Outcome:
    body: UserCreate = call.body
    try:
        # argon2 hashing takes tens of milliseconds: in a thread.
        user = await anyio.to_thread.run_sync(
            lambda: call.state.accounts.add(body.username, body.password, admin=body.admin, quota=body.quota)
        )
    except InvalidUsername as error:
        raise ValidationFailed(f"username: {error}", "username") from None
    except AccountExists:
        raise Conflict(f"user {body.username} already exists") from None
    return Outcome(view(user), user.username, after=view(user))


async def update_user(call: Call) -> Outcome:
    body: UserUpdate = call.body
    accounts = call.state.accounts
    before = await _existing(call)

    def change() -> User:
        user = accounts.update(before.username, enabled=body.enabled, admin=body.admin, quota=body.quota)
        return accounts.set_password(before.username, body.password) if body.password is not None else user

    try:
        after = await anyio.to_thread.run_sync(change)
    except AccountNotFound:
        raise NotFound(f"no user {before.username}") from None
    # The audit log says a password changed, never what it became.
    changed = {"password_changed": body.password is not None}
    return Outcome(view(after), after.username, msgspec.to_builtins(view(before)), {**msgspec.to_builtins(view(after)), **changed})


async def delete_user(call: Call) -> Outcome:
    before = await _existing(call)
    try:
        await anyio.to_thread.run_sync(call.state.accounts.delete, before.username)
    except AccountNotFound:
        raise NotFound(f"no user {before.username}") from None
    return Outcome(view(before), before.username, before=view(before))


_ADMIN = Role.admin
# What a client can do with the account it created, under the name the response gives (lower-cased).
_CREATED = tuple(
    Link(f"{method} /api/v1/users/{{username}}", "username", "/data/username") for method in ("GET", "PUT", "DELETE")
)
ENDPOINTS = [
    Endpoint("GET", "/api/v1/users", "Every SMTP account", list_users, "users", role=_ADMIN, returns=list[UserView]),
    Endpoint(
        "POST",
        "/api/v1/users",
        "Create an SMTP account",
        create_user,
        "users",
        role=_ADMIN,
        body=UserCreate,
        returns=UserView,
        status=201,
        errors=(409,),
        action="user.create",
        links=_CREATED,
    ),
    Endpoint("GET", "/api/v1/users/{username}", "One SMTP account", get_user, "users", role=_ADMIN, returns=UserView, errors=(404,)),
    Endpoint("PUT", "/api/v1/users/{username}", "Change an account's password, flags or quota", update_user, "users", role=_ADMIN, body=UserUpdate, returns=UserView, errors=(404,), action="user.update"),
    Endpoint("DELETE", "/api/v1/users/{username}", "Delete an SMTP account", delete_user, "users", role=_ADMIN, returns=UserView, errors=(404,), action="user.delete"),
]
