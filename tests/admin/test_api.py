"""Every admin endpoint against the real server: success, 401 without credentials, 403 with too small a role, 422 naming the field."""

from __future__ import annotations


import httpx
import pytest

from fastmta.admin.app import endpoints
from tests.admin.conftest import Admin, basic, wait_until

PLACEHOLDERS = {"{id}": "00000000000000XX", "{username}": "nobody"}
ROLES = ["viewer", "operator", "admin"]


def concrete(path: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        path = path.replace(placeholder, value)
    return path


PROTECTED = [(e.method, e.path, e.role.name) for e in endpoints() if e.role is not None]


def error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code
    assert body["error"]["request_id"] == response.headers["x-request-id"]
    return body["error"]


@pytest.mark.parametrize(("method", "path", "role"), PROTECTED)
def test_without_credentials_is_401(admin: Admin, method: str, path: str, role: str) -> None:
    with admin.client() as client:
        response = client.request(method, concrete(path))
        error(response, 401, "AUTH_REQUIRED")
        assert "Bearer" in response.headers["www-authenticate"]
        bogus = client.request(method, concrete(path), headers={"Authorization": "Bearer fmta_000000000000_" + "x" * 32})
        error(bogus, 401, "AUTH_REQUIRED")


@pytest.mark.parametrize(("method", "path", "role"), [p for p in PROTECTED if p[2] != "viewer"])
def test_too_small_a_role_is_403(admin: Admin, method: str, path: str, role: str) -> None:
    below = ROLES[ROLES.index(role) - 1]
    with admin.client(below) as client:
        message = error(client.request(method, concrete(path)), 403, "INSUFFICIENT_PERMISSIONS")["message"]
        assert role in message


INVALID = [
    ("GET", "/api/v1/queue", {"params": {"limit": "0"}}, "limit"),
    ("GET", "/api/v1/queue", {"params": {"status": "lost"}}, "status"),
    ("GET", "/api/v1/queue", {"params": {"offset": "many"}}, "offset"),
    ("GET", "/api/v1/queue", {"params": {"older_than": "-1"}}, "older_than"),
    ("GET", "/api/v1/queue", {"params": {"after": "x" * 65}}, "after"),
    ("GET", "/api/v1/audit", {"params": {"limit": "100000"}}, "limit"),
    ("GET", "/api/v1/delivery/destinations", {"params": {"minutes": "0"}}, "minutes"),
    ("GET", "/api/v1/stats/realtime", {"params": {"events": "0"}}, "events"),
    ("POST", "/api/v1/users", {"json": {"username": "dora"}}, "password"),
    ("POST", "/api/v1/users", {"json": {"username": "Not A Name!", "password": "pw"}}, "username"),
    ("POST", "/api/v1/users", {"json": {"username": "dora", "password": "pw", "quota": -1}}, "quota"),
    # Past what the account record holds: refused, not a 500 when it is stored.
    ("POST", "/api/v1/users", {"json": {"username": "dora", "password": "pw", "quota": 1 << 64}}, "quota"),
    ("POST", "/api/v1/users", {"json": {"username": "dora", "password": "pw", "quota": 2.5}}, "quota"),
    ("POST", "/api/v1/users", {"content": b"{not json"}, "body"),
    ("PUT", "/api/v1/users/{username}", {"json": {"enabled": "yes"}}, "enabled"),
    ("PUT", "/api/v1/users/{username}", {"json": {"enabeld": True}}, "enabeld"),
    ("POST", "/api/v1/tokens", {"json": {"name": "x", "role": "root"}}, "role"),
    ("POST", "/api/v1/tokens", {"json": {"name": "has space", "role": "viewer"}}, "name"),
    ("GET", "/api/v1/webhooks/dead-letters", {"params": {"limit": "1001"}}, "limit"),
    # Before history is asked (it is off on this server): a malformed request is the client's to fix either way.
    ("GET", "/api/v1/messages", {"params": {"date_from": "last week"}}, "date_from"),
    ("GET", "/api/v1/events", {"params": {"type": "bounced"}}, "type"),
    ("GET", "/api/v1/events/stream", {"headers": {"Last-Event-ID": "42"}}, "Last-Event-ID"),
    ("POST", "/api/v1/admin/maintenance/cleanup", {"json": {"older_than_days": -1}}, "older_than_days"),
    ("POST", "/api/v1/admin/maintenance/mode", {"json": {"enabled": "yes"}}, "enabled"),
    ("GET", "/api/v1/stored", {"params": {"route": "99"}}, "route"),
]


@pytest.mark.parametrize(("method", "path", "request_args", "field"), INVALID)
def test_bad_input_is_422_naming_the_field(admin: Admin, method: str, path: str, request_args: dict, field: str) -> None:
    with admin.client("admin") as client:
        found = error(client.request(method, concrete(path), **request_args), 422, "VALIDATION_ERROR")
    assert found["field"] == field and field in found["message"]


def test_every_endpoint_taking_input_has_a_422_case() -> None:
    taking_input = {(e.method, e.path) for e in endpoints() if e.query or e.body}
    assert taking_input == {(method, path) for method, path, _, _ in INVALID}


def test_health_and_unhealthy_without_smtp_workers(admin: Admin) -> None:
    with admin.client() as client:
        healthy = client.get("/health")
        assert healthy.status_code == 200 and healthy.json()["data"]["status"] == "ok"
        assert healthy.json()["data"]["smtp_workers_alive"] == 2
        children = admin.server.data_dir / "children.json"
        saved = children.read_bytes()
        children.write_bytes(b"[]")
        try:
            sick = client.get("/health")
        finally:
            children.write_bytes(saved)
    assert sick.status_code == 503
    assert sick.json()["data"]["reasons"] == ["no SMTP worker is alive"]


def test_stats_and_metrics(admin: Admin) -> None:
    admin.send(2)
    with admin.client("viewer") as client:
        stats = wait_until(lambda: (s := client.get("/stats").json()["data"])["messages"]["received"] >= 2 and s)
        assert stats["queue"]["active"] >= 2 and stats["messages"]["queued"] >= 2
        assert stats["connections"]["total"] >= 2
        assert 0 < stats["processing"]["p50"] <= stats["processing"]["p99"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "smtp_messages_queued" in metrics.text


def test_realtime_sends_one_metrics_event_a_second(admin: Admin) -> None:
    with admin.client("viewer") as client:
        response = client.get("/api/v1/stats/realtime", params={"events": "2"})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [block for block in response.text.split("\n\n") if block]
    assert len(events) == 2
    for block in events:
        kind, data = block.split("\n")
        assert kind == "event: metrics" and '"messages_per_second"' in data and '"queue_depth"' in data
        assert all(f'"{rate}_per_second"' in data for rate in ("sent", "deferred", "rejected"))


def test_queue_operations_are_audited(admin: Admin) -> None:
    first, second = admin.send(2)
    with admin.client("operator") as client:
        listed = client.get("/api/v1/queue", params={"status": "active", "limit": "1000"}).json()["data"]
        assert {first, second} <= {item["id"] for item in listed["items"]}
        assert client.get(f"/api/v1/queue/{first}").json()["data"]["recipients"][0]["address"] == "bob@example.org"
        held = client.post(f"/api/v1/queue/{first}/hold", headers={"X-Request-ID": "hold-1"})
        assert held.json()["data"]["state"] == "held" and held.headers["x-request-id"] == "hold-1"
        assert first in {i["id"] for i in client.get("/api/v1/queue", params={"status": "held"}).json()["data"]["items"]}
        error(client.post(f"/api/v1/queue/{first}/hold"), 409, "RESOURCE_CONFLICT")
        error(client.post(f"/api/v1/queue/{first}/retry"), 409, "RESOURCE_CONFLICT")
        assert client.post(f"/api/v1/queue/{first}/release").json()["data"]["state"] == "active"
        error(client.post(f"/api/v1/queue/{first}/release"), 409, "RESOURCE_CONFLICT")
        assert client.post(f"/api/v1/queue/{second}/retry").status_code == 200
        assert client.post("/api/v1/queue/flush").json()["data"]["scheduled"] >= 0
        assert client.delete(f"/api/v1/queue/{second}").json()["data"] == {"id": second, "deleted": True}
        error(client.get(f"/api/v1/queue/{second}"), 404, "RESOURCE_NOT_FOUND")
        error(client.delete(f"/api/v1/queue/{second}"), 404, "RESOURCE_NOT_FOUND")
        audit = client.get("/api/v1/audit", params={"limit": "1000", "actor": "token:test-operator"}).json()["data"]
    entries = {(e["action"], e["target"]): e for e in audit["items"]}
    hold = entries[("queue.hold", first)]
    assert hold["request_id"] == "hold-1" and hold["client_ip"] == "127.0.0.1"
    assert hold["user_agent"].startswith("python-httpx")
    assert hold["before"]["state"] == "active" and hold["after"]["state"] == "held" and hold["at"] > 0
    assert entries[("queue.delete", second)]["before"]["id"] == second
    assert {("queue.release", first), ("queue.retry", second), ("queue.flush", "queue")} <= set(entries)


def test_delivery_suspend_and_activate(admin: Admin) -> None:
    with admin.client("operator") as client:
        suspended = client.post("/api/v1/delivery/suspend").json()["data"]
        assert suspended["suspended"] is True and suspended["changed_by"] == "token:test-operator"
        assert client.get("/api/v1/delivery").json()["data"]["suspended"] is True
        assert client.post("/api/v1/delivery/activate").json()["data"]["suspended"] is False
        assert client.get("/api/v1/delivery").json()["data"]["suspended"] is False


def test_users_crud_and_basic_auth_for_admin_accounts(admin: Admin) -> None:
    with admin.client("admin") as client:
        created = client.post("/api/v1/users", json={"username": "Erin", "password": "s3cret", "admin": True})
        assert created.status_code == 201 and created.json()["data"]["username"] == "erin"
        assert "password_hash" not in created.json()["data"]
        error(client.post("/api/v1/users", json={"username": "erin", "password": "x"}), 409, "RESOURCE_CONFLICT")
        assert client.post("/api/v1/users", json={"username": "frank", "password": "pw"}).status_code == 201
        assert {"erin", "frank"} <= {u["username"] for u in client.get("/api/v1/users").json()["data"]}
        assert client.get("/api/v1/users/erin").json()["data"]["admin"] is True
        updated = client.put("/api/v1/users/erin", json={"quota": 50, "password": "n3w"}).json()["data"]
        assert updated["quota"] == 50
        error(client.get("/api/v1/users/nobody"), 404, "RESOURCE_NOT_FOUND")
        error(client.put("/api/v1/users/nobody", json={"quota": 1}), 404, "RESOURCE_NOT_FOUND")
    # The CLI sees what the API wrote: one store.
    assert b"erin" in admin.server.cli("user", "list").stdout
    with httpx.Client(base_url=admin.url, timeout=10) as anonymous:
        assert anonymous.get("/api/v1/users", headers=basic("erin", "n3w")).status_code == 200
        error(anonymous.get("/api/v1/users", headers=basic("erin", "s3cret")), 401, "AUTH_REQUIRED")
        error(anonymous.get("/stats", headers=basic("frank", "pw")), 403, "INSUFFICIENT_PERMISSIONS")
    with admin.client("admin") as client:
        assert client.delete("/api/v1/users/frank").json()["data"]["username"] == "frank"
        error(client.delete("/api/v1/users/frank"), 404, "RESOURCE_NOT_FOUND")
        audit = client.get("/api/v1/audit", params={"action": "user.update"}).json()["data"]["items"]
    change = next(e for e in audit if e["target"] == "erin")
    assert change["before"]["quota"] == 0 and change["after"]["quota"] == 50 and change["after"]["password_changed"]
    assert "n3w" not in str(change)


def test_whole_floats_are_integers(admin: Admin) -> None:
    # JSON Schema's integers include 5.0, and so does the document's quota.
    with admin.client("admin") as client:
        created = client.post("/api/v1/users", json={"username": "gil", "password": "pw", "quota": 5.0})
        assert created.status_code == 201 and created.json()["data"]["quota"] == 5
        assert client.put("/api/v1/users/gil", json={"quota": 7.0}).json()["data"]["quota"] == 7
        assert client.delete("/api/v1/users/gil").status_code == 200


def test_tokens_over_the_api_and_the_cli(admin: Admin) -> None:
    with admin.client("admin") as client:
        created = client.post("/api/v1/tokens", json={"name": "dashboard", "role": "viewer"})
        assert created.status_code == 201
        token, info = created.json()["data"]["token"], created.json()["data"]["info"]
        error(client.post("/api/v1/tokens", json={"name": "dashboard", "role": "admin"}), 409, "RESOURCE_CONFLICT")
        listed = client.get("/api/v1/tokens").json()["data"]
        assert info["id"] in {t["id"] for t in listed} and all("secret_hash" not in t for t in listed)
        with httpx.Client(base_url=admin.url, headers={"Authorization": f"Bearer {token}"}) as dashboard:
            assert dashboard.get("/stats").status_code == 200
            assert client.delete(f"/api/v1/tokens/{info['id']}").status_code == 200
            error(dashboard.get("/stats"), 401, "AUTH_REQUIRED")
        error(client.delete(f"/api/v1/tokens/{info['id']}"), 404, "RESOURCE_NOT_FOUND")
    cli_token = admin.create_token("viewer", "cli-made")
    assert b"cli-made" in admin.server.cli("token", "list").stdout
    with httpx.Client(base_url=admin.url, headers={"Authorization": f"Bearer {cli_token}"}) as client:
        assert client.get("/stats").status_code == 200
        assert admin.server.cli("token", "revoke", "cli-made").returncode == 0
        error(client.get("/stats"), 401, "AUTH_REQUIRED")
    assert admin.server.cli("token", "revoke", "cli-made").returncode == 1


def test_docs_work_offline(admin: Admin) -> None:
    with admin.client() as client:
        spec = client.get("/openapi.json").json()
        page = client.get("/docs")
        error(client.get("/no/such/thing"), 404, "RESOURCE_NOT_FOUND")
    assert {e.path for e in endpoints()} == set(spec["paths"])
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text and "http://" not in page.text and "https://" not in page.text
    assert "/api/v1/queue/{id}/retry" in page.text
