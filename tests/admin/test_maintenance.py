"""Maintenance mode against the real server: new SMTP connections hear 421 4.3.2 within a second or two,
/health and `fastmta status` say so, the change is audited, and ending it lets clients in again."""

from __future__ import annotations

import socket

from tests.admin.conftest import Admin, wait_until


def greeting(admin: Admin) -> bytes:
    with socket.create_connection(("127.0.0.1", admin.server.port), timeout=10) as client:
        return client.recv(512)


def test_maintenance_refuses_new_connections_until_it_ends(admin: Admin) -> None:
    with admin.client("viewer") as viewer, admin.client("operator") as operator:
        assert viewer.post("/api/v1/admin/maintenance/mode", json={"enabled": True}).status_code == 403
        try:
            assert operator.post("/api/v1/admin/maintenance/mode", json={"enabled": True}).json()["data"]["enabled"] is True
            # Every worker reads the switch within a second; the kernel may hand a connection to either.
            assert wait_until(lambda: all(greeting(admin).startswith(b"421 4.3.2 ") for _ in range(6)), timeout=5)
            assert viewer.get("/health").json()["data"]["maintenance"] is True
            assert "MAINTENANCE" in admin.server.cli("status").stdout.decode()
            entries = operator.get("/api/v1/audit", params={"action": "maintenance.mode"}).json()["data"]["items"]
            assert entries and entries[0]["after"] == {"enabled": True}
        finally:
            operator.post("/api/v1/admin/maintenance/mode", json={"enabled": False})
        assert wait_until(lambda: all(greeting(admin).startswith(b"220 ") for _ in range(6)), timeout=5)
        state = viewer.get("/api/v1/admin/maintenance/mode").json()["data"]
        assert state["enabled"] is False and state["changed_by"] == "token:test-operator"
