"""schemathesis against the running admin API: no 5xx, every response matches the OpenAPI document,
and stateful workflows (create, read, change, delete) through the links the document declares."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from fastmta.access.accounts import normalize
from fastmta.admin import openapi
from fastmta.admin.app import endpoints
from tests.admin.conftest import Admin

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
HISTORY = "^/api/v1/(messages|events|admin/maintenance/cleanup)"


@pytest.fixture
def maintenance_off_after(admin: Admin) -> Iterator[None]:
    """Schemathesis may turn maintenance mode on; the tests after it need SMTP to accept connections."""
    yield
    with admin.client("operator") as client:
        assert client.post("/api/v1/admin/maintenance/mode", json={"enabled": False}).status_code == 200


@pytest.mark.usefixtures("maintenance_off_after")
def test_api_matches_its_schema(admin: Admin) -> None:
    schema = schemathesis.openapi.from_dict(httpx.get(f"{admin.url}/openapi.json").json())
    schema.config.update(base_url=admin.url, headers={"Authorization": f"Bearer {admin.tokens['admin']}"})
    # The event stream never ends by itself; test_api covers it. History is off on this server:
    # test_history_api checks its endpoints against the document with history on.
    operations = [
        result.ok()
        for result in schema.exclude(path="/api/v1/stats/realtime").exclude(path_regex=HISTORY).get_all_operations()
    ]
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


@pytest.mark.usefixtures("maintenance_off_after")
def test_stateful_workflows(admin: Admin) -> None:
    """Scenarios of up to ten calls that follow the document's links: a user created is read, changed
    and deleted, a token created is revoked. Each scenario leaves the server as it found it, so the
    same choices meet the same answers, as Hypothesis needs to explore and to replay."""
    schema = schemathesis.openapi.from_dict(httpx.get(f"{admin.url}/openapi.json").json())
    token = admin.create_token("admin", "stateful")
    schema.config.update(base_url=admin.url, headers={"Authorization": f"Bearer {token}"})
    # Only the document's own links: inferred ones would also revoke the run's token from the token list.
    schema.config.phases.stateful.inference.algorithms = []
    # Every endpoint's 401 is test_api's. This check's probe with wrong Basic credentials costs the
    # server an argon2 verification (on purpose) after each step: three quarters of the time.
    schema.config.checks.ignored_auth.enabled = False
    created: list[str] = []
    steps: Counter[tuple[str, int]] = Counter()

    class Workflow(schema.exclude(path="/api/v1/stats/realtime").exclude(path_regex=HISTORY).as_state_machine()):  # type: ignore[misc]
        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            steps[case.operation.label, response.status_code] += 1
            if response.status_code == 201:
                data = response.json()["data"]
                created.append(f"/api/v1/tokens/{data['info']['id']}" if "info" in data else f"/api/v1/users/{data['username']}")

        def teardown(self) -> None:
            with admin.client("admin") as client:
                for path in created:
                    assert client.delete(path).status_code in (200, 404)
            created.clear()

    started = time.monotonic()
    Workflow.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,
            phases=[Phase.generate],
        )
    )
    print(f"{sum(steps.values())} calls in {time.monotonic() - started:.1f} s:", sorted(steps.items()))
    # The links were followed: what was made was found, changed and deleted.
    for done in [
        ("POST /api/v1/users", 201),
        ("GET /api/v1/users/{username}", 200),
        ("PUT /api/v1/users/{username}", 200),
        ("DELETE /api/v1/users/{username}", 200),
        ("POST /api/v1/tokens", 201),
        ("DELETE /api/v1/tokens/{id}", 200),
    ]:
        assert steps[done], f"no {done} in the run"


@given(st.data())
@settings(max_examples=200, database=None, derandomize=True)
def test_every_username_the_document_allows_is_one_accounts_take(data: st.DataObject) -> None:
    # The document once said only "1 to 128 characters", and names it allowed were refused.
    schema = openapi.document(endpoints(), "test")["components"]["schemas"]["UserCreate"]["properties"]["username"]
    name = data.draw(st.from_regex(schema["pattern"]))
    assert normalize(name) == name.strip().lower()
