"""deploy/'s dashboard and alerting rules: promtool checks and unit-tests the rules, and every metric
they name is one a real `fastmta serve` exports, read from its /metrics after mail went through it."""

from __future__ import annotations

import base64
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, free_port
from tests.deploy import promql
from tests.integration.nexthop import NextHop

# Series Prometheus makes itself for every target, not read from /metrics.
PROMETHEUS_OWN = {"up"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian package prometheus; .ci/run installs it)"
)


def wait_until(check, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every sample name of a server's /metrics once one recipient was delivered, one deferred, one
    bounced, a login failed, a client went over its connection limit, and a webhook that refuses
    connections gave its events up as dead letters."""
    hop = NextHop().start()
    hop.recorder.rcpt_replies = {"later@example.org": "451 4.2.0 try later", "gone@example.org": "550 5.1.1 no such user"}
    settings = {
        "smtp": {"workers": 1, "require_tls_for_auth": False},
        "limits": {"connections_per_minute": 2, "exempt_mynetworks": False},
        "delivery": {"workers": 1, "retry_schedule": ["1h"]},
        "admin": {"enabled": True},
        "routes": [{"match": ["*"], "kind": "smarthost", "host": "127.0.0.1", "port": hop.port, "tls": "none"}],
        "events": {"retry_for": "1s", "webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook"}]},
    }
    server = Server(tmp_path_factory.mktemp("monitoring"), settings).start()
    try:
        token = server.cli("token", "create", "--role", "viewer", "--name", "scraper").stdout.decode().split()[-1]
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            client.ehlo("client.test")
            assert client.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0nobody\0wrong").decode())[0] == 535
            client.sendmail("alice@example.com", ["bob@example.org", "later@example.org", "gone@example.org"], b"Subject: x\r\n\r\nhi\r\n")
        for _ in range(2):  # the second and third connection of the minute: the third is refused
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.recv(512)

        def scrape() -> set[str] | None:
            try:
                text = httpx.get(f"{server.admin_url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
            except httpx.ConnectError:
                return None
            names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
            # Worker counts reach the files once a second; the dead letters once the webhook gave up.
            awaited = {"smtp_messages_sent_total", "smtp_connections_rejected_total", "fastmta_dead_letters_total"}
            return names if awaited <= names else None

        yield wait_until(scrape)
        assert server.stop() == 0
    finally:
        server.kill()
        hop.stop()


def test_the_dashboard_reads_only_metrics_fastmta_exports(exported: set[str]) -> None:
    expressions = [promql.as_promql(e) for e in promql.dashboard_expressions()]
    named = set().union(*map(promql.metric_names, expressions))
    assert named - exported - PROMETHEUS_OWN == set()
    # The panels the dashboard promises are there: throughput, latency, queue, processes, events.
    for wanted in (
        "smtp_messages_received_total",
        "smtp_messages_sent_total",
        "smtp_processing_duration_seconds_bucket",
        "smtp_delivery_duration_seconds_bucket",
        "smtp_messages_queued",
        "smtp_queue_oldest_message_age_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "fastmta_events_lag_seconds",
        "fastmta_dead_letters_total",
    ):
        assert wanted in named, wanted


def test_the_alerting_rules_read_only_metrics_fastmta_exports(exported: set[str]) -> None:
    named = set().union(*map(promql.metric_names, promql.rule_expressions()))
    assert named - exported - PROMETHEUS_OWN == set()


def test_metric_names_are_found_in_promql() -> None:
    expression = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{instance=~"x", status="y and z"}[5m])))'
        ' / on (instance) group_left b unless count by (instance) (c{worker=~"smtp-.*"}) > 2 * 3600'
    )
    assert promql.metric_names(expression) == {"a_bucket", "b", "c"}


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(promql.RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass() -> None:
    tests = promql.RULES.with_name("fastmta-rules.test.yml")
    result = subprocess.run(["promtool", "test", "rules", tests.name], capture_output=True, text=True, cwd=tests.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has a test that makes it fire.
    alerts = {rule["alert"] for group in yaml.safe_load(promql.RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {
        case["alertname"]
        for test in yaml.safe_load(tests.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query, Grafana's variables filled in, as a recording rule: promtool parses them all."""
    rules = [{"record": f"dashboard:query{n}", "expr": promql.as_promql(e)} for n, e in enumerate(promql.dashboard_expressions())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
