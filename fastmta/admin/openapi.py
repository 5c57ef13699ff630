"""The OpenAPI 3.1 document, built from the endpoint declarations and their msgspec types."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from fastmta.admin.endpoint import Endpoint
from fastmta.admin.errors import ErrorEnvelope

_REF = "#/components/schemas/{name}"
_ERROR_TEXT = {
    401: "No valid credentials (AUTH_REQUIRED)",
    403: "The caller's role is too small (INSUFFICIENT_PERMISSIONS)",
    404: "No such resource (RESOURCE_NOT_FOUND)",
    409: "The resource is not in a state that allows this (RESOURCE_CONFLICT)",
    413: "The body is larger than [admin] max_body_bytes (PAYLOAD_TOO_LARGE)",
    422: "Invalid input; error.field names it (VALIDATION_ERROR)",
    429: "Too many failed HTTP Basic logins from this address (RATE_LIMITED)",
    503: "As many clients as [admin] max_stream_clients are on the event streams (TOO_MANY_STREAMS), "
    "or history is off, [history] enabled = false (HISTORY_DISABLED), or the database of [history] url, "
    "which in a cluster holds the tokens, is unreachable (DATABASE_UNREACHABLE)",
}


def document(endpoints: list[Endpoint], version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorEnvelope]
    for endpoint in endpoints:
        types += [t for t in (endpoint.query, endpoint.body, endpoint.returns) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = {id(t): schema for t, schema in zip(types, schemas, strict=True)}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint, schema_of, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fastmta admin API",
            "version": version,
            "description": "Errors are {\"success\": false, \"error\": {\"code\", \"message\", \"request_id\"}}; "
            "every response echoes X-Request-ID.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "fastmta token create --role ROLE --name NAME"},
                "basic": {"type": "http", "scheme": "basic", "description": "An SMTP account flagged admin"},
            },
        },
    }


def _operation(endpoint: Endpoint, schema_of: dict[int, Any], components: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "tags": [endpoint.tag],
        "operationId": _operation_id(endpoint.method, endpoint.path),
        "description": f"Needs the {endpoint.role.name} role." if endpoint.role else "No authentication.",
        "security": [{"bearer": []}, {"basic": []}] if endpoint.role else [],
        "responses": {str(endpoint.status): _success(endpoint, schema_of)},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", endpoint.path)
    ]
    if endpoint.query is not None:
        query = components[schema_of[id(endpoint.query)]["$ref"].rsplit("/", 1)[1]]
        required = set(query.get("required", []))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": schema}
            for name, schema in query["properties"].items()
        ]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of[id(endpoint.body)]}},
        }
    targets = [(_operation_id(*link.operation.split(" ", 1)), link) for link in endpoint.links]
    if targets:
        operation["responses"][str(endpoint.status)]["links"] = {
            target: {"operationId": target, "parameters": {link.parameter: f"$response.body#{link.pointer}"}}
            for target, link in targets
        }
    for status, meaning in endpoint.alternatives:
        operation["responses"][str(status)] = {**_success(endpoint, schema_of), "description": meaning}
    errors = list(endpoint.errors)
    if endpoint.role is not None:
        errors += [401, 403, 429, 503]  # 503: in a cluster the caller's token is looked up in PostgreSQL
    if endpoint.query is not None or endpoint.body is not None:
        errors.append(422)
    if endpoint.body is not None:
        errors.append(413)
    for status in sorted(set(errors)):
        operation["responses"][str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": schema_of[id(ErrorEnvelope)]}},
        }
    return operation


def _operation_id(method: str, path: str) -> str:
    return f"{method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}"


def _success(endpoint: Endpoint, schema_of: dict[int, Any]) -> dict[str, Any]:
    if endpoint.media_type != "application/json" or endpoint.returns is None:
        schema = {"type": "object"} if endpoint.media_type == "application/json" else {"type": "string"}
        return {"description": "OK", "content": {endpoint.media_type: {"schema": schema}}}
    envelope = {
        "type": "object",
        "properties": {"success": {"type": "boolean"}, "data": schema_of[id(endpoint.returns)]},
        "required": ["success", "data"],
    }
    return {"description": "OK", "content": {"application/json": {"schema": envelope}}}
