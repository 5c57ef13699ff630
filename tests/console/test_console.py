"""The console over HTTP, without a browser: its session, CSRF, roles, audit and security headers."""

from __future__ import annotations

import time
from html.parser import HTMLParser
from pathlib import Path

from fastmta.admin import session
from fastmta.queue.records import Message, Recipient, new_message_id
from tests.console.conftest import Console, csrf_of

PAGES = ("/ui", "/ui/queue", "/ui/delivery", "/ui/access", "/ui/audit")


def queued(recipient: str = "bob@example.org") -> tuple[Message, bytes]:
    now = time.time()
    message = Message(new_message_id(), "alice@example.com", [Recipient(recipient)], now, 40, now + 3600)
    return message, b"Subject: hello\r\n\r\nbody\r\n"


def audit(console: Console, client, **params: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The audit log as the API serves it."""
    answer = client.get("/api/v1/audit", params=params, headers={"Authorization": f"Bearer {console.tokens['admin']}"})
    return answer.json()["data"]["items"]


class Controls(HTMLParser):
    """Every form control of a page and every label's `for`, to check each control is labelled."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("input", "select", "textarea") and found.get("type") != "hidden":
            self.controls.append(found)
        if tag == "label" and found.get("for"):
            self.labelled.add(str(found["for"]))


def test_login_keeps_the_token_in_a_strict_httponly_cookie_and_logout_clears_it(console: Console) -> None:
    with console.client() as client:
        assert client.get("/ui").headers["location"] == "/ui/login"
        form = client.get("/ui/login")
        signed_in = client.post("/ui/login", data={"csrf": csrf_of(form.text), "token": console.tokens["viewer"]})
        cookie = next(c for c in signed_in.headers.get_list("set-cookie") if c.startswith(session.COOKIE))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # served over plain HTTP here; over TLS it is Secure
        overview = client.get("/ui")
        assert overview.status_code == 200 and "token:console-viewer" in overview.text
        out = client.post("/ui/logout", data={"csrf": csrf_of(overview.text)})
        assert out.headers["location"] == "/ui/login" and f'{session.COOKIE}=""' in out.headers["set-cookie"]
        assert client.get("/ui").headers["location"] == "/ui/login"
        # htmx refreshing part of a page when the session is gone: the whole window goes to the login.
        assert client.get("/ui", headers={"HX-Request": "true"}).headers["hx-redirect"] == "/ui/login"
    with console.client(base_url="https://testserver") as secure:
        form = secure.get("/ui/login")
        assert "Secure" in form.headers["set-cookie"]
        signed_in = secure.post("/ui/login", data={"csrf": csrf_of(form.text), "token": console.tokens["viewer"]})
        assert "Secure" in signed_in.headers["set-cookie"]
        assert secure.get("/ui/nothing/here").status_code == 404
        assert secure.get("/ui/").headers["location"] == "/ui"


def test_every_page_labels_its_controls_and_allows_no_inline_script(console: Console) -> None:
    console.store([queued()])
    with console.client() as client:
        console.log_in(client, "admin")
        message_id = client.get("/api/v1/queue", headers={"Authorization": f"Bearer {console.tokens['admin']}"}).json()["data"]["items"][0]["id"]
        for path in (*PAGES, f"/ui/queue/{message_id}"):
            page = client.get(path)
            assert page.status_code == 200, path
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
            assert "<script>" not in page.text and " style=" not in page.text and " on" + "click=" not in page.text
            controls = Controls()
            controls.feed(page.text)
            unlabelled = [c for c in controls.controls if c.get("id") not in controls.labelled and not c.get("aria-label")]
            assert not unlabelled, f"{path}: controls without a label: {unlabelled}"


def test_a_form_without_the_session_csrf_token_changes_nothing(console: Console) -> None:
    message, _ = entry = queued()
    console.store([entry])
    with console.client() as client:
        login_form = client.get("/ui/login")
        client.cookies.delete(session.LOGIN_COOKIE)
        refused_login = client.post("/ui/login", data={"csrf": csrf_of(login_form.text), "token": console.tokens["admin"]})
        assert refused_login.status_code == 403 and session.COOKIE not in refused_login.headers.get("set-cookie", "")

        console.log_in(client, "operator")
        for forged in ({}, {"csrf": "0" * 64}):
            refused = client.post(f"/ui/queue/{message.id}/hold", data=forged)
            assert refused.status_code == 403 and "reload the page" in refused.text
        assert client.get(f"/ui/queue/{message.id}").text.count('class="badge active"') == 1
        assert audit(console, client) == []


def test_a_viewer_sees_no_action_and_is_refused_one(console: Console) -> None:
    message, _ = entry = queued()
    console.store([entry])
    with console.client() as client:
        csrf = console.log_in(client, "viewer")
        page = client.get(f"/ui/queue/{message.id}").text
        assert "data-opens" not in page and "/ui/access" not in page
        assert "data-opens" not in client.get("/ui/queue").text + client.get("/ui/delivery").text
        refused = client.post(f"/ui/queue/{message.id}/retry", data={"csrf": csrf})
        assert refused.status_code == 403 and "operator role" in refused.text
        assert client.get("/ui/access").status_code == 403
        assert audit(console, client) == []


def test_console_actions_leave_the_audit_entries_the_api_writes(console: Console) -> None:
    first, _ = one = queued()
    second, _ = other = queued()
    console.store([one, other])
    with console.client() as client:
        csrf = console.log_in(client, "operator")
        for verb in ("hold", "release", "retry"):
            done = client.post(f"/ui/queue/{first.id}/{verb}", data={"csrf": csrf})
            assert done.status_code == 303 and done.headers["location"] == f"/ui/queue/{first.id}?done={verb}"
        assert client.post(f"/ui/queue/{second.id}/delete", data={"csrf": csrf}).headers["location"] == "/ui/queue?done=delete"
        assert client.post("/ui/queue/flush", data={"csrf": csrf}).status_code == 303
        assert client.post("/ui/delivery/suspend", data={"csrf": csrf}).status_code == 303
        assert "suspended" in client.get("/ui/delivery").text
        # A conflict is the API's, in words: a held message is released, not retried.
        client.post(f"/ui/queue/{first.id}/hold", data={"csrf": csrf})
        conflict = client.post(f"/ui/queue/{first.id}/retry", data={"csrf": csrf})
        assert conflict.status_code == 409 and "release it instead" in conflict.text

        entries = audit(console, client)
        page = client.get(f"/ui/queue/{first.id}").text
    assert [(e["action"], e["target"]) for e in reversed(entries)] == [
        ("queue.hold", first.id), ("queue.release", first.id), ("queue.retry", first.id), ("queue.delete", second.id),
        ("queue.flush", "queue"), ("delivery.suspend", "delivery"), ("queue.hold", first.id),
    ]
    assert all(e["actor"] == "token:console-operator" and e["client_ip"] == "192.0.2.7" for e in entries)
    assert entries[-1]["before"] == {"state": "active", "next_attempt": first.next_attempt}
    assert page.count("queue.hold</strong> by token:console-operator") == 2


def test_wrong_tokens_count_toward_the_login_limit(tmp_path: Path) -> None:
    console = Console(tmp_path, {"limits": {"auth_failures_per_hour": 3}})
    try:
        with console.client() as client:
            for _ in range(3):
                wrong = client.post("/ui/login", data={"csrf": csrf_of(client.get("/ui/login").text), "token": "fmta_0_guess"})
                assert wrong.status_code == 401 and "unknown or revoked" in wrong.text
            right = client.post("/ui/login", data={"csrf": csrf_of(client.get("/ui/login").text), "token": console.tokens["admin"]})
            assert right.status_code == 429 and "too many failed logins" in right.text
    finally:
        console.close()


def test_the_session_reads_the_api_and_never_writes_through_it(console: Console) -> None:
    with console.client() as client:
        console.log_in(client, "admin")
        assert client.get("/api/v1/queue").status_code == 200
        refused = client.post("/api/v1/queue/flush")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "AUTH_REQUIRED"


def test_a_new_token_is_shown_once_and_works(console: Console) -> None:
    with console.client() as client:
        csrf = console.log_in(client, "admin")
        made = client.post("/ui/tokens", data={"csrf": csrf, "name": "grafana", "role": "viewer"})
        assert made.status_code == 200 and "shown this once" in made.text
        token = made.text.split('id="new-token" type="text" readonly value="')[1].split('"')[0]
        assert token.startswith("fmta_") and token not in client.get("/ui/access").text
        assert client.get("/stats", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        invalid = client.post("/ui/tokens", data={"csrf": csrf, "name": "has space", "role": "viewer"})
        assert invalid.status_code == 422 and 'id="name-error"' in invalid.text
        token_id = token.split("_")[1]
        assert client.post(f"/ui/tokens/{token_id}/revoke", data={"csrf": csrf}).status_code == 303
        assert client.get("/stats", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        user = client.post("/ui/users", data={"csrf": csrf, "username": "relay", "password": "pw", "quota": "10", "admin": "on"})
        assert user.status_code == 303 and "relay" in client.get("/ui/access").text
        actions = [e["action"] for e in audit(console, client)]
    assert actions == ["user.create", "token.revoke", "token.create"]
