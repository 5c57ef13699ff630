"""One admin endpoint as data, and the ASGI route that runs it: authenticate, authorize, validate, act, audit.

Endpoints declare their query, body and response types as msgspec Structs; the same declaration
drives validation here and the OpenAPI document (openapi.py), so the two cannot disagree. A write
endpoint names its audit action and returns an Outcome: the audit entry is written here, so no
write can forget it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import msgspec
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from fastmta.access.audit import AuditEntry
from fastmta.access.roles import Role
from fastmta.admin.auth import Principal, authenticate, require
from fastmta.admin.errors import ApiError, AuthRequired, DatabaseUnreachable, validation_failed
from fastmta.admin.state import AdminState

log = logging.getLogger("fastmta.admin")

REQUEST_ID = "fastmta.request_id"
_json = msgspec.json.Encoder()


@dataclass
class Outcome:
    """What a write did: `data` is the response; target, before and after go to the audit log."""

    data: Any
    target: str
    before: Any = None
    after: Any = None


@dataclass
class Call:
    request: Request
    state: AdminState
    principal: Principal | None
    query: Any
    body: Any

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Link:
    """Where a success leads, as an OpenAPI link: `operation` ("METHOD /path"), its path parameter
    `parameter` taken from the response body at the JSON pointer `pointer`."""

    operation: str
    parameter: str
    pointer: str


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    tag: str
    role: Role | None = Role.viewer  # None: no authentication
    query: type | None = None
    body: type | None = None
    returns: Any = None  # the type of the response's `data`
    media_type: str = "application/json"  # for handlers that build their own Response
    status: int = 200
    errors: tuple[int, ...] = ()  # besides the 401, 403, 413 and 422 every such endpoint can give
    # Other statuses answered with the `returns` shape rather than an error, each with what it means.
    alternatives: tuple[tuple[int, str], ...] = ()
    action: str | None = None  # the audit log's name for this write
    links: tuple[Link, ...] = ()  # for clients and stateful tests: what to do with what this made


def json_response(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(content), status, headers, media_type="application/json")


def error_response(error: ApiError, request: Request) -> Response:
    headers = {"WWW-Authenticate": 'Bearer, Basic realm="fastmta"'} if isinstance(error, AuthRequired) else None
    return json_response(error.body(request.scope.get(REQUEST_ID, "")), error.status, headers)


def route(endpoint: Endpoint, state: AdminState) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await _run(endpoint, state, request)
        except ApiError as error:
            return error_response(error, request)
        except sa.exc.OperationalError as error:
            log.warning("%s %s: the database is unreachable: %s", endpoint.method, endpoint.path, error)
            unreachable = DatabaseUnreachable("the database of [history] url is unreachable; try again later")
            return error_response(unreachable, request)
        except Exception:
            log.exception("%s %s failed", endpoint.method, endpoint.path)
            return error_response(ApiError("internal error; the admin log has the details"), request)

    return run


async def _run(endpoint: Endpoint, state: AdminState, request: Request) -> Response:
    principal = None
    if endpoint.role is not None:
        principal = await authenticate(
            request, state.tokens, state.accounts, state.config.admin.basic_auth, state.limits
        )
        require(principal, endpoint.role)
    call = Call(request, state, principal, _query(endpoint, request), await _body(endpoint, request))
    result = await perform(endpoint, call)
    if isinstance(result, Response):
        return result
    return json_response({"success": True, "data": result}, endpoint.status)


async def perform(endpoint: Endpoint, call: Call) -> Any:
    """The handler's answer; a write's Outcome is audited here and its data returned. The web console
    runs the API's endpoints through this too, so a change made there leaves the same audit entry."""
    result = await endpoint.handler(call)
    if isinstance(result, Outcome):
        assert endpoint.action is not None and call.principal is not None
        await _audit(call.state, call.request, call.principal, endpoint.action, result)
        return result.data
    return result


def _query(endpoint: Endpoint, request: Request) -> Any:
    if endpoint.query is None:
        return None
    try:
        return msgspec.convert(dict(request.query_params), endpoint.query, strict=False)
    except msgspec.ValidationError as error:
        raise validation_failed(error, "query") from None


async def _body(endpoint: Endpoint, request: Request) -> Any:
    if endpoint.body is None:
        return None
    try:
        return _decode(await request.body(), endpoint.body)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise validation_failed(error, "body") from None


def _decode(raw: bytes, body_type: type) -> Any:
    try:
        return msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as error:
        # JSON Schema counts 2.0 as an integer, and so may a client where the document says integer,
        # but msgspec takes only 2. JSON does not tell the two apart, so neither do we: read again
        # with every whole float as an int (untyped, so too deep a document fails with the first error).
        try:
            tree = _whole_as_int(msgspec.json.decode(raw))
        except RecursionError:
            raise error from None
        return msgspec.convert(tree, body_type)


def _whole_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_as_int(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_as_int(item) for item in value]
    return value


async def _audit(state: AdminState, request: Request, principal: Principal, action: str, outcome: Outcome) -> None:
    entry = AuditEntry(
        id="",
        at=0.0,
        actor=principal.name,
        action=action,
        target=outcome.target,
        before=msgspec.to_builtins(outcome.before),
        after=msgspec.to_builtins(outcome.after),
        client_ip=request.client.host if request.client else "",
        user_agent=request.headers.get("user-agent", ""),
        request_id=request.scope.get(REQUEST_ID, ""),
    )
    await anyio.to_thread.run_sync(state.audit.append, entry)
