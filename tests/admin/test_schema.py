"""schemathesis against the running admin API: no 5xx, and every response matches the OpenAPI document."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fastmta.accounts import normalize
from fastmta.admin import openapi
from fastmta.admin.app import endpoints
from tests.admin.conftest import Admin

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_matches_its_schema(admin: Admin) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{admin.url}/openapi.json").json())
    schema.config.update(base_url=admin.url, headers={"Authorization": f"Bearer {admin.tokens['admin']}"})
    # The event stream never ends by itself; test_api covers it.
    operations = [result.ok() for result in schema.exclude(path="/api/v1/stats/realtime").get_all_operations()]
    assert len(operations) > 20
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=CHECKS)

        check()
    # The token was sent: schemathesis got past authentication and its writes were audited.
    with admin.client("admin") as client:
        audit = client.get("/api/v1/audit", params={"actor": "token:test-admin", "limit": "1000"}).json()["data"]
    assert any(entry["user_agent"].startswith("schemathesis") for entry in audit["items"])


@given(st.data())
@settings(max_examples=200, database=None, derandomize=True)
def test_every_username_the_document_allows_is_one_accounts_take(data: st.DataObject) -> None:
    # The document once said only "1 to 128 characters", and names it allowed were refused.
    schema = openapi.document(endpoints(), "test")["components"]["schemas"]["UserCreate"]["properties"]["username"]
    name = data.draw(st.from_regex(schema["pattern"]))
    assert normalize(name) == name.strip().lower()
