"""The console in a real browser, as an operator uses it: Debian's Chromium driven by Playwright against the real `fastmta serve`.

Log in with a token, watch the charts move while mail flows, find a deferred message by its
recipient, retry it from the keyboard, and see the audit entry. Every page is saved as a PNG, in
CONSOLE_SCREENSHOTS when it is set (docs/screenshots/ holds the ones README shows), else in the
test's temporary directory. (Not FASTMTA_…: the server would read that as a config override.)
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin.conftest import wait_until
from tests.conftest import Server, free_port
from tests.fault.load import Load

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency: pip install -e '.[test]'")

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed: apt-get install chromium")

WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
STUCK = "stuck@slow.test"
# The load: at most LOAD_LIMIT messages, LOAD_PACE a second, so that it still runs while the charts are watched.
LOAD_LIMIT = 400
LOAD_PACE = 40


def deferred_in_history(server: Server, token: str) -> str | None:
    """The stuck message's id once history holds its first deferral."""
    with httpx.Client(base_url=server.admin_url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        listed = client.get("/api/v1/messages", params={"to": STUCK})
        if listed.status_code != 200:  # 503 until the events process has made history's database
            return None
        found = listed.json()["data"]["items"]
        if not found:
            return None
        events = client.get(f"/api/v1/messages/{found[0]['id']}").json()["data"]["events"]
    return found[0]["id"] if any(event["type"] == "deferred" for event in events) else None


def test_an_operator_watches_mail_flow_and_retries_a_deferred_message(make_server: Any, tmp_path: Path) -> None:
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    refused = free_port()  # nothing listens there: mail for slow.test is deferred
    server: Server = make_server({
        "admin": {"enabled": True},
        "history": {"enabled": True},
        "delivery": {"workers": 1, "retry_schedule": ["1h"]},
        "routes": [
            {"match": ["slow.test"], "kind": "smarthost", "host": "127.0.0.1", "port": refused, "tls": "none"},
            {"match": ["*"], "kind": "discard"},
        ],
    })
    created = server.cli("token", "create", "--role", "admin", "--name", "ops")
    assert created.returncode == 0, created.stderr
    token = created.stdout.decode().split()[-1]
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.sendmail("alice@example.com", [STUCK], b"Subject: quarterly report\r\n\r\nfigures\r\n")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        context = browser.new_context(viewport=WIDE)
        page = context.new_page()
        page.set_default_timeout(15_000)
        problems: list[str] = []
        page.on("console", lambda entry: problems.append(entry.text) if entry.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))

        page.goto(f"{server.admin_url}/ui")
        assert page.url.endswith("/ui/login")
        page.screenshot(path=shots / "login.png", full_page=True)
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Log in").click()
        sync_api.expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
        sync_api.expect(page.get_by_role("row", name="smtp-0")).to_contain_text("running")

        # The charts move while mail flows: each reading from the event stream is drawn, and the
        # figures beside them show the latest one.
        load = Load(server.port, clients=2)
        started = time.monotonic()
        load.may_send = lambda: len(load.acked) < min(LOAD_LIMIT, LOAD_PACE * (time.monotonic() - started))
        load.start()
        try:
            page.wait_for_function(
                "() => Number(document.getElementById('live').dataset.readings) >= 4"
                " && Number(document.getElementById('now-messages_per_second').textContent) > 0"
                " && Number(document.getElementById('now-sent_per_second').textContent) > 0"
            )
        finally:
            load.stop()
        assert page.locator("#throughput canvas").count() == 1 and page.locator("#depth canvas").count() == 1
        page.screenshot(path=shots / "overview.png", full_page=True)

        message_id = wait_until(lambda: deferred_in_history(server, token), timeout=20)
        assert message_id, f"the message to {STUCK} was never deferred:\n{server.log()}"

        # Find the message by its recipient, from the keyboard.
        page.get_by_role("link", name="Queue", exact=True).click()
        recipient = page.get_by_label("Recipient", exact=True)
        recipient.fill(STUCK)
        recipient.press("Enter")
        sync_api.expect(page).to_have_url(re.compile(r"/ui/queue\?recipient=stuck%40slow\.test"))  # pushed by htmx
        rows = page.locator("table.queue tbody tr")
        sync_api.expect(rows).to_have_count(1)
        sync_api.expect(rows.first).to_contain_text("deferred")
        filters = page.locator("form[role=search]").aria_snapshot()
        for control in ('searchbox "Recipient"', 'searchbox "Sender"', 'searchbox "Recipient domain"', 'searchbox "Workspace"',
                        'combobox "State"', 'combobox "Waiting at least"', 'button "Search"'):
            assert control in filters, filters
        page.screenshot(path=shots / "queue.png", full_page=True)

        page.get_by_role("link", name=message_id).click()
        sync_api.expect(page.get_by_role("row", name=STUCK)).to_contain_text("Connection refused")
        sync_api.expect(page.locator(".timeline").first).to_contain_text("deferred")
        page.screenshot(path=shots / "message.png", full_page=True)

        # Retry: the dialog takes focus (Cancel first), Tab reaches the confirming button, Escape
        # or Cancel gives focus back to the button that opened it.
        opener = page.get_by_role("button", name="Retry…")
        opener.focus()
        page.keyboard.press("Enter")
        dialog = page.get_by_role("dialog", name="Retry?")
        sync_api.expect(dialog).to_be_visible()
        assert page.evaluate("document.activeElement.textContent") == "Cancel"
        page.keyboard.press("Escape")
        sync_api.expect(dialog).to_be_hidden()
        assert page.evaluate("document.activeElement.textContent") == "Retry…"
        page.keyboard.press("Enter")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Retry"
        page.keyboard.press("Enter")
        sync_api.expect(page.get_by_role("status")).to_contain_text("Retried")
        sync_api.expect(page.locator("#message-audit")).to_contain_text("queue.retry by token:ops")

        page.get_by_role("link", name="Audit").click()
        sync_api.expect(page.get_by_role("row", name="queue.retry")).to_contain_text(message_id)
        page.screenshot(path=shots / "audit.png", full_page=True)

        page.get_by_role("link", name="Delivery").click()
        by_domain = page.get_by_role("table", name="By destination domain")
        sync_api.expect(by_domain.get_by_role("row", name="slow.test")).to_contain_text("Connection refused")
        sync_api.expect(by_domain.get_by_role("row", name="example.org")).to_be_visible()
        page.screenshot(path=shots / "delivery.png", full_page=True)

        page.get_by_role("link", name="Users & tokens").click()
        sync_api.expect(page.get_by_role("row", name="ops")).to_contain_text("admin")
        page.screenshot(path=shots / "access.png", full_page=True)

        # On a phone: the same session, nothing wider than the screen.
        phone = browser.new_context(viewport=PHONE, storage_state=context.storage_state(), is_mobile=True, has_touch=True)
        small = phone.new_page()
        small.goto(f"{server.admin_url}/ui/queue/{message_id}")
        assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        small.screenshot(path=shots / "message-phone.png", full_page=True)
        browser.close()

    assert not problems, f"the browser reported errors: {problems}"
    assert server.stop() == 0
