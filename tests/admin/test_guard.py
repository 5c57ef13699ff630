"""The admin API's perimeter against the real server: the body size limit, security headers on every answer, no CORS."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket

import httpx
import pytest

from tests.admin.conftest import Admin

LIMIT = 1 << 20  # [admin] max_body_bytes by default


def raw_response(admin: Admin, head: str, body: bytes = b"") -> tuple[int, dict[str, str], dict]:
    """Sends `head` and `body` on a raw socket and reads the answer: status, headers, JSON body."""
    port = int(admin.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        status_line, _, rest = received.partition(b"\r\n")
        header_block, _, content = rest.partition(b"\r\n\r\n")
        headers = dict(line.decode().lower().split(": ", 1) for line in header_block.split(b"\r\n"))
        while len(content) < int(headers["content-length"]):
            content += sock.recv(65536)
    return int(status_line.split()[1]), headers, json.loads(content)


def request_head(admin: Admin, framing: str) -> str:
    return (
        f"POST /api/v1/users HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {admin.tokens['admin']}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    )


def assert_too_large(status: int, headers: dict[str, str], body: dict) -> None:
    assert status == 413
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE" and body["error"]["request_id"] == headers["x-request-id"]
    assert "max_body_bytes" in body["error"]["message"] and str(LIMIT) in body["error"]["message"]


def test_a_declared_length_over_the_limit_is_413_before_any_body(admin: Admin) -> None:
    # Not a byte of the 10 GB follows: the answer cannot have waited for it.
    status, headers, body = raw_response(admin, request_head(admin, "Content-Length: 10000000000"))
    assert_too_large(status, headers, body)
    assert headers["x-content-type-options"] == "nosniff"


def test_a_chunked_body_is_refused_once_it_passes_the_limit(admin: Admin) -> None:
    # One 64 KiB chunk past the limit and no last chunk: the body never ends, yet the answer comes.
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b"x" * (1 << 16))
    body_past_the_limit = chunk * (LIMIT // (1 << 16) + 1)
    status, headers, body = raw_response(admin, request_head(admin, "Transfer-Encoding: chunked"), body_past_the_limit)
    assert_too_large(status, headers, body)


def test_bodies_up_to_the_limit_are_read(admin: Admin) -> None:
    with admin.client("admin") as client:
        at_limit = b'{"username": "' + b"a" * (LIMIT - 60) + b'", "password": "pw"}'
        at_limit += b" " * (LIMIT - len(at_limit))
        # Read whole and judged on its content: the name is too long, which is a 422, not a 413.
        assert client.post("/api/v1/users", content=at_limit).status_code == 422
        assert client.post("/api/v1/users", content=at_limit + b" ").status_code == 413


PAGES = [
    ("GET", "/health", None, 200),
    ("GET", "/stats", "viewer", 200),
    ("GET", "/stats", None, 401),
    ("GET", "/api/v1/users", "viewer", 403),
    ("GET", "/api/v1/queue?limit=0", "viewer", 422),
    ("GET", "/no/such/thing", None, 404),
    ("DELETE", "/stats", "viewer", 405),
    ("GET", "/metrics", "viewer", 200),
    ("GET", "/openapi.json", None, 200),
    ("GET", "/docs", None, 200),
    ("GET", "/api/v1/stats/realtime?events=1", "viewer", 200),
]


@pytest.mark.parametrize(("method", "path", "role", "status"), PAGES)
def test_every_answer_carries_the_security_headers(admin: Admin, method: str, path: str, role: str | None, status: int) -> None:
    with admin.client(role) as client:
        response = client.request(method, path)
    assert response.status_code == status
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy


def test_the_docs_page_may_use_its_own_style_and_nothing_else(admin: Admin) -> None:
    with admin.client() as client:
        page = client.get("/docs")
    style = re.search(r"<style>(.*?)</style>", page.text, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    directives = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert directives["style-src"] == f"'sha256-{digest}'"
    assert directives["default-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in page.headers["content-security-policy"]


def test_no_cors_for_other_origins(admin: Admin) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    with admin.client("admin") as client:
        plain = client.get("/stats", headers=origin)
        preflight = client.options(
            "/api/v1/users",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert plain.status_code == 200
    assert preflight.status_code == 405 and preflight.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    for response in (plain, preflight):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]


def test_the_spec_documents_the_limits(admin: Admin) -> None:
    spec = httpx.get(f"{admin.url}/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert ("413" in operation["responses"]) == ("requestBody" in operation), (method, path)
    realtime = spec["paths"]["/api/v1/stats/realtime"]["get"]["responses"]["503"]
    assert "max_stream_clients" in realtime["description"]
    assert realtime["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    health = spec["paths"]["/health"]["get"]["responses"]["503"]
    assert "data" in health["content"]["application/json"]["schema"]["properties"]
