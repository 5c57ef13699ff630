"""The answers the admin API gives when it says no: one exception type per error code of DESIGN §4."""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: str
    message: str
    request_id: str
    field: str | None = None


class ErrorEnvelope(msgspec.Struct):
    success: bool
    error: ErrorBody


class ApiError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self, request_id: str) -> ErrorEnvelope:
        return ErrorEnvelope(False, ErrorBody(self.code, self.message, request_id, self.field))


class AuthRequired(ApiError):
    status, code = 401, "AUTH_REQUIRED"


class InsufficientPermissions(ApiError):
    status, code = 403, "INSUFFICIENT_PERMISSIONS"


class CsrfRejected(ApiError):
    """A console form without its session's CSRF token: made elsewhere, or before the last login."""

    status, code = 403, "CSRF_REJECTED"


class NotFound(ApiError):
    status, code = 404, "RESOURCE_NOT_FOUND"


class MethodNotAllowed(ApiError):
    status, code = 405, "METHOD_NOT_ALLOWED"


class Conflict(ApiError):
    status, code = 409, "RESOURCE_CONFLICT"


class ValidationFailed(ApiError):
    status, code = 422, "VALIDATION_ERROR"


class PayloadTooLarge(ApiError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class TooManyRequests(ApiError):
    status, code = 429, "RATE_LIMITED"


class TooManyStreams(ApiError):
    status, code = 503, "TOO_MANY_STREAMS"


class HistoryDisabled(ApiError):
    status, code = 503, "HISTORY_DISABLED"


class ClusterUnreachable(ApiError):
    status, code = 503, "CLUSTER_UNREACHABLE"


def validation_failed(error: msgspec.ValidationError | msgspec.DecodeError, where: str) -> ValidationFailed:
    """msgspec says '... - at `$.limit`'; the field named there is the one the client must fix."""
    text = str(error)
    problem, _, path = text.partition(" - at `$")
    field = path.rstrip("`").lstrip(".")
    if "missing required field" in problem or "contains unknown field" in problem:
        # The object is at `path`; the field it lacks or should not have is in the problem.
        inner = problem.rpartition("`")[0].rpartition("`")[2]
        field = f"{field}.{inner}" if field and inner else inner or field
    named = field or where
    return ValidationFailed(f"{named}: {problem}", named)


class DatabaseUnreachable(ApiError):
    """History's database cannot be reached: in a cluster it holds the users, tokens and audit log too."""

    status, code = 503, "DATABASE_UNREACHABLE"
